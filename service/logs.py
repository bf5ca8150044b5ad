"""Structured logging: one JSON object per line on stderr.

Loggers are named per subsystem (session_store.http, session_store.store,
session_store.redis, session_store.cli, session_store.metrics). Nothing here ever formats request
headers or bodies, so tokens and API keys cannot reach a log line.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson

# Extra attributes a record may carry that belong in the JSON line.
_EXTRA_FIELDS = (
    "request_id", "method", "route", "status", "duration_ms", "session_id", "user_id",
    "error", "code", "pid", "redis", "attempt", "retry_in_s", "version", "workers", "redis_kind",
    "host", "port", "metrics_dir", "exit_code",
)

# Bytes of log lines held between flushes; a full buffer is written at once.
LOG_BUFFER_BYTES = 64 * 1024

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


class TurnBufferedHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that writes the lines of one event-loop turn with one system call.

    Under load a worker logs a line per request, and a line-buffered
    stream would make each line its own write. Records at WARNING and above, and
    records logged outside a running event loop, are written at once, so
    errors are never held back. A process killed by SIGKILL loses at most
    the lines of its last loop turn.
    """

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._flush_scheduled = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(self.format(record) + self.terminator)
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)
            return
        if record.levelno >= logging.WARNING or not self._schedule_flush():
            self.flush()

    def _schedule_flush(self) -> bool:
        """Flush at the end of this loop turn; return False when no loop is running here."""
        if self._flush_scheduled:
            return True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        self._flush_scheduled = True
        loop.call_soon(self._flush_turn)
        return True

    def _flush_turn(self) -> None:
        self._flush_scheduled = False
        self.flush()


def _buffered_stderr() -> Any:
    """Return a block-buffered text stream on stderr's file descriptor, or sys.stderr itself.

    sys.stderr is line-buffered, so it would still write each line on its own.
    """
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return sys.stderr
    return open(fd, "w", buffering=LOG_BUFFER_BYTES, encoding="utf-8",  # noqa: SIM115 - lives with the process
                errors="backslashreplace", closefd=False)


def configure_logging(level: str) -> None:
    # Per-record work that no line uses: thread, process and caller lookups.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging._srcfile = None  # noqa: SLF001 - logging skips caller lookups when this is None
    handler = TurnBufferedHandler(_buffered_stderr())
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
