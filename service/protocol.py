"""aiohttp's handling of requests it cannot parse, made safe for credentials.

When a request line or header is malformed or too long, aiohttp answers
with a plain-text 400 that repeats part of the offending header and logs
the same text. For an Authorization or Cookie header that text contains
a token. This handler answers with a problem-details body instead and
logs only the error's type.
"""

from __future__ import annotations

import logging

import orjson
from aiohttp import web, web_protocol, web_server
from aiohttp.web_request import BaseRequest

from service.errors import problem, status_title

logger = logging.getLogger("session_store.http")


class SafeRequestHandler(web_protocol.RequestHandler):
    def handle_error(self, request: BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        logger.warning("could not handle request from %s: %s", request.remote,
                       type(exc).__name__ if exc else "error", extra={"status": status})
        if request.writer.output_size > 0:
            raise ConnectionError("response already started, cannot send the error")

        code = "invalid_request" if status < 500 else "internal_error"
        detail = ("the request line or a header is malformed or too long" if status < 500
                  else "the server failed to handle the request")
        body = problem(status, code, status_title(status), detail)
        response = web.Response(status=status, body=orjson.dumps(body),
                                content_type="application/problem+json")
        response.force_close()
        return response


def install() -> None:
    """Make aiohttp's servers in this process use SafeRequestHandler.

    aiohttp offers no option to choose the handler class, so this replaces
    the name web_server.Server instantiates per connection.
    """
    web_server.RequestHandler = SafeRequestHandler  # type: ignore[misc]
