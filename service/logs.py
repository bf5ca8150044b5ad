"""Structured logging: one JSON object per line on stderr.

Loggers are named per subsystem (session_store.http, session_store.store,
session_store.redis, session_store.cli, session_store.metrics). Nothing here ever formats request
headers or bodies, so tokens and API keys cannot reach a log line.
"""

from __future__ import annotations

import logging
import sys
import time
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson

# Extra attributes a record may carry that belong in the JSON line.
_EXTRA_FIELDS = (
    "request_id", "method", "route", "status", "duration_ms", "session_id", "user_id",
    "error", "code", "pid", "redis", "attempt", "retry_in_s", "version", "workers", "redis_kind",
    "host", "port", "metrics_dir", "exit_code",
)

# Query parameters of a Redis URL that carry a secret (redis-py reads them).
_SECRET_QUERY_KEYS = frozenset({"password"})
_REDACTED = "***"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in _EXTRA_FIELDS:
            value = record.__dict__.get(field)
            if value is not None:
                line[field] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode("utf-8")


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("session_store")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    # aiohttp's own access log would print the request line; ours replaces it.
    logging.getLogger("aiohttp.access").disabled = True


def redact_url(url: str) -> str:
    """Return url with its password, and any credential query parameter, replaced by ***.

    The user name stays, so an operator can still tell which account is used.
    """
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return _REDACTED
    netloc = parts.netloc
    if password is not None:
        userinfo, _, hostinfo = netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        netloc = f"{user}:{_REDACTED}@{hostinfo}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(key, _REDACTED if key.lower() in _SECRET_QUERY_KEYS else value)
                           for key, value in pairs], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
