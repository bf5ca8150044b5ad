"""Service errors, each mapped to one RFC 9457 problem type and stable code."""

from __future__ import annotations

from http import HTTPStatus


class ServiceError(Exception):
    """Base of every error the HTTP layer turns into a problem-details body."""

    status: int = 500
    code: str = "internal_error"
    title: str = "Internal error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def headers(self) -> dict[str, str]:
        return {}


class InvalidRequest(ServiceError):
    status, code, title = 400, "invalid_request", "Invalid request"


class Unauthorized(ServiceError):
    """Management call without a valid API key."""

    status, code, title = 401, "unauthorized", "Unauthorized"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="session-store"'}


class TokenRejected(ServiceError):
    """Self-service call whose session token does not authenticate."""

    status = 401

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer error="invalid_token"'}


class InvalidToken(TokenRejected):
    code, title = "invalid_token", "Invalid token"


class SessionExpired(TokenRejected):
    code, title = "session_expired", "Session expired"


class SessionRevoked(TokenRejected):
    code, title = "session_revoked", "Session revoked"


class ReauthRequired(TokenRejected):
    code, title = "reauth_required", "Re-authentication required"


class DeviceNotTrusted(ServiceError):
    status, code, title = 403, "device_not_trusted", "Device not trusted"


class NotFound(ServiceError):
    status, code, title = 404, "not_found", "Not found"


class MethodNotAllowed(ServiceError):
    status, code, title = 405, "method_not_allowed", "Method not allowed"

    def __init__(self, detail: str, *, allowed: list[str]) -> None:
        super().__init__(detail)
        self.allowed = allowed

    def headers(self) -> dict[str, str]:
        return {"Allow": ", ".join(self.allowed)}


class SessionLimitReached(ServiceError):
    status, code, title = 409, "session_limit_reached", "Session limit reached"

    def __init__(self, detail: str, *, user_id: str, live_count: int) -> None:
        super().__init__(detail)
        self.user_id = user_id
        self.live_count = live_count


class PayloadTooLarge(ServiceError):
    status, code, title = 413, "payload_too_large", "Payload too large"


class RateLimited(ServiceError):
    status, code, title = 429, "rate_limited", "Too many requests"

    def __init__(self, detail: str, *, retry_after_s: int) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class StoreUnavailable(ServiceError):
    """Redis is unreachable, timed out, or cannot run the scripts."""

    status, code, title = 503, "store_unavailable", "Session store unavailable"

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "1"}


def problem(status: int, code: str, title: str, detail: str) -> dict[str, object]:
    """Build an RFC 9457 problem-details body."""
    return {"type": "about:blank", "title": title, "status": status, "detail": detail, "code": code}


def status_title(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
