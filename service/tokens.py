"""Session ids and tokens.

A session id is ``sess_`` + user tag (16 chars) + sid (8 chars). The user
tag is derived from the user id by SHA-256, so the id, and the token that
contains it, name the user's Redis hash slot without a lookup and without
carrying the user id in clear. A token is the id's last 24 characters, a
dot, and a 43-character secret of 256 bits from the OS CSPRNG. Only the
first 16 bytes of SHA-256(secret) are ever stored.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets

import msgspec

SESSION_ID_PREFIX = "sess_"
TAG_LENGTH = 16
SID_LENGTH = 8
SECRET_BYTES = 32
SECRET_LENGTH = 43

_URLSAFE = "[A-Za-z0-9_-]"
_SESSION_ID = re.compile(rf"^sess_({_URLSAFE}{{{TAG_LENGTH}}})({_URLSAFE}{{{SID_LENGTH}}})$")
_TOKEN = re.compile(
    rf"^({_URLSAFE}{{{TAG_LENGTH}}})({_URLSAFE}{{{SID_LENGTH}}})\.({_URLSAFE}{{{SECRET_LENGTH}}})$"
)


class SessionRef(msgspec.Struct, frozen=True):
    """Location of a session: its user's tag and its id within the user."""

    tag: str
    sid: str

    @property
    def session_id(self) -> str:
        return f"{SESSION_ID_PREFIX}{self.tag}{self.sid}"


class ParsedToken(msgspec.Struct, frozen=True):
    ref: SessionRef
    secret_hash: bytes

    def __repr__(self) -> str:
        return f"ParsedToken(session_id={self.ref.session_id!r})"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def user_tag(user_id: str) -> str:
    """Return the hash tag shared by every key of the user (96 bits of SHA-256)."""
    return _b64(hashlib.sha256(user_id.encode("utf-8")).digest()[:12])


def hash_secret(secret: str) -> bytes:
    """Return the stored form of a token secret: 128 bits of SHA-256."""
    return hashlib.sha256(secret.encode("ascii")).digest()[:16]


def new_session(user_id: str) -> tuple[SessionRef, str, bytes]:
    """Create a fresh session id, its token and the hash of the token's secret."""
    ref = SessionRef(user_tag(user_id), _b64(secrets.token_bytes(6)))
    secret = secrets.token_urlsafe(SECRET_BYTES)
    token = f"{ref.tag}{ref.sid}.{secret}"
    return ref, token, hash_secret(secret)


def parse_session_id(session_id: str) -> SessionRef | None:
    match = _SESSION_ID.fullmatch(session_id)
    if match is None:
        return None
    return SessionRef(match.group(1), match.group(2))


def parse_token(token: str) -> ParsedToken | None:
    """Split a token into its session and secret hash; None if malformed."""
    match = _TOKEN.fullmatch(token)
    if match is None:
        return None
    return ParsedToken(SessionRef(match.group(1), match.group(2)), hash_secret(match.group(3)))
