"""Credentials: API keys for management calls, session tokens for self-service calls."""

from __future__ import annotations

import hmac
from http.cookies import CookieError, SimpleCookie

from aiohttp import hdrs, web

from service.errors import InvalidToken, Unauthorized
from service.tokens import ParsedToken, parse_token

# A bearer credential longer than this is not ours; reject before hashing.
_MAX_CREDENTIAL_LENGTH = 512
# Session cookies tried per request: browsers send one per matching path
# or domain, a handful at most, and each costs a Redis round trip.
MAX_COOKIE_TOKENS = 5


def bearer_credential(request: web.Request) -> str | None:
    """Return the credential of an "Authorization: Bearer" header (any scheme case)."""
    header = request.headers.get(hdrs.AUTHORIZATION)
    if header is None:
        return None
    scheme, _, credential = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    credential = credential.strip()
    if not credential or len(credential) > _MAX_CREDENTIAL_LENGTH:
        return None
    return credential


class ApiKeys:
    """Configured API keys, compared in constant time."""

    def __init__(self, keys: list[str]) -> None:
        self._keys = [key.encode("utf-8") for key in keys]

    def __repr__(self) -> str:
        return f"ApiKeys(<{len(self._keys)} keys>)"

    def contains(self, candidate: str) -> bool:
        encoded = candidate.encode("utf-8")
        matched = False
        for key in self._keys:
            # Compare with every key, so the time taken does not tell which matched.
            matched |= hmac.compare_digest(encoded, key)
        return matched

    def found_in(self, text: str) -> bool:
        """Return whether any key occurs inside text (for scrubbing, not authentication)."""
        encoded = text.encode("utf-8")
        return any(key in encoded for key in self._keys)

    def require(self, request: web.Request) -> None:
        """Raise Unauthorized unless the request carries a configured API key.

        Keys are only read from the Authorization header, never from the URL.
        """
        credential = bearer_credential(request)
        if credential is None:
            raise Unauthorized("missing API key: send Authorization: Bearer <api key>")
        if not self.contains(credential):
            raise Unauthorized("invalid API key")


def session_tokens(request: web.Request, cookie_name: str) -> list[ParsedToken]:
    """Return the request's candidate session tokens, in the order to try them.

    The Authorization header wins; otherwise every cookie named cookie_name,
    in the order the browser sent them. Raise InvalidToken when none parses.
    """
    bearer = bearer_credential(request)
    candidates = [bearer] if bearer is not None else _cookie_values(request, cookie_name)
    if not candidates:
        raise InvalidToken("no session token: send Authorization: Bearer <token> or the session cookie")

    parsed = [token for token in map(parse_token, candidates) if token is not None][:MAX_COOKIE_TOKENS]
    if not parsed:
        raise InvalidToken("the token is malformed")
    return parsed


def _cookie_values(request: web.Request, cookie_name: str) -> list[str]:
    """Every value of one cookie name; aiohttp's request.cookies keeps only one."""
    values = []
    for header in request.headers.getall(hdrs.COOKIE, []):
        for pair in header.split(";"):
            name, sep, value = pair.strip().partition("=")
            if sep and name == cookie_name:
                values.append(_unquote(value.strip()))
    return values


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        try:
            cookie: SimpleCookie = SimpleCookie()
            cookie.load(f"v={value}")
            return cookie["v"].value
        except CookieError:
            return value
    return value
