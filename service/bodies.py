"""Reading and writing JSON bodies: size limit, UTF-8, msgspec validation."""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec
import orjson
from aiohttp import web

from service.errors import InvalidRequest, PayloadTooLarge
from service.state import SETTINGS

T = TypeVar("T")

NO_STORE = {"Cache-Control": "no-store"}


async def read_json(request: web.Request, model: type[T]) -> T:
    """Decode the body into model; raise InvalidRequest naming the field and rule."""
    content_type = request.headers.get("Content-Type", "application/json")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise InvalidRequest("body: Content-Type must be application/json")

    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(
            f"body: larger than the limit of {request.app[SETTINGS].service.max_body_bytes} bytes"
        ) from None
    if not body:
        raise InvalidRequest("body: required, expected a JSON object")

    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"body: invalid UTF-8 at byte {exc.start}") from None

    try:
        return msgspec.json.decode(body, type=model)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(_field_message(str(exc))) from None
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"body: malformed JSON ({exc})") from None


def _field_message(message: str) -> str:
    """Turn msgspec's "Expected ... - at `$.device.id`" into "device.id: Expected ..."."""
    text, _, path = message.partition(" - at `$")
    if "matching regex" in text:
        # The only pattern on request strings is the control-character rule.
        text = "must not contain control characters (CR, LF, NUL, tab and other C0/C1 codes)"
    field = path.rstrip("`").lstrip(".")
    return f"{field}: {text}" if field else f"body: {text}"


def json_response(body: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    merged = dict(NO_STORE)
    if headers:
        merged.update(headers)
    return web.Response(body=orjson.dumps(body), status=status, headers=merged,
                        content_type="application/json")
