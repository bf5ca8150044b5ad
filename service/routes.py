"""HTTP handlers of the /v1 API, one per route of the contract."""

from __future__ import annotations

import ipaddress

import msgspec
from aiohttp import web

from service import views
from service.auth import session_tokens
from service.bodies import json_response, read_json
from service.context import client_context, network_of
from service.errors import InvalidRequest, NotFound, TokenRejected
from service.models import CreateSessionRequest, UserId
from service.policies import apply_policy
from service.state import API_KEYS, REQUEST_SESSION_ID, REQUEST_USER_ID, SETTINGS, STORE
from service.store import MODE_ACTIVITY, MODE_CHECK, MODE_EXTEND, Validation
from service.tokens import SessionRef, parse_session_id

NO_CONTENT_HEADERS = {"Cache-Control": "no-store"}


# -- helpers -----------------------------------------------------------------

def path_user_id(request: web.Request) -> str:
    user_id = request.match_info["user_id"]
    try:
        return msgspec.convert(user_id, UserId)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(f"user_id: {exc}") from None


def _path_session(request: web.Request) -> SessionRef:
    """Parse the path's session id; a malformed one is simply not found."""
    ref = parse_session_id(request.match_info["session_id"])
    if ref is None:
        raise NotFound("no live session with that id")
    return ref


def _flag(request: web.Request, name: str, default: bool) -> bool:
    value = request.query.get(name)
    if value is None:
        return default
    if value.lower() in ("true", "1"):
        return True
    if value.lower() in ("false", "0"):
        return False
    raise InvalidRequest(f"{name}: expected true or false")


async def current_session(request: web.Request, *, mode: int, device_count: bool = False) -> Validation:
    """Authenticate a self-service request by its token; the first valid candidate wins."""
    store = request.app[STORE]
    settings = request.app[SETTINGS]
    candidates = session_tokens(request, settings.service.session_cookie)
    context = client_context(request, settings.trusted_networks)
    first_error: TokenRejected | None = None
    for token in candidates:
        try:
            result = await store.validate(token, mode=mode, device_count=device_count, context=context)
        except TokenRejected as exc:
            first_error = first_error or exc
            continue
        request[REQUEST_SESSION_ID] = result.ref.session_id
        request[REQUEST_USER_ID] = result.record.user_id
        return result
    assert first_error is not None
    raise first_error


# -- management --------------------------------------------------------------

async def create_session(request: web.Request) -> web.Response:
    request.app[API_KEYS].require(request)
    body = await read_json(request, CreateSessionRequest)
    settings = request.app[SETTINGS]

    policy_name = body.policy or settings.service.default_policy
    policy = settings.policies.get(policy_name)
    if policy is None:
        raise InvalidRequest(f"policy: no policy named {policy_name!r}")
    client_ip = _client_ip(body)
    new = apply_policy(policy, body, client_ip, network_of(client_ip))

    created = await request.app[STORE].create_session(new)
    request[REQUEST_SESSION_ID] = created.ref.session_id
    request[REQUEST_USER_ID] = body.user_id
    payload = views.created_body(created, body, new.window_s, policy.name, new.extend_on_activity)
    return json_response(payload, status=201)


def _client_ip(body: CreateSessionRequest) -> str:
    if body.client is None or body.client.ip is None:
        return ""
    try:
        return str(ipaddress.ip_address(body.client.ip))
    except ValueError:
        raise InvalidRequest("client.ip: expected an IPv4 or IPv6 address") from None


async def get_session(request: web.Request) -> web.Response:
    request.app[API_KEYS].require(request)
    ref = _path_session(request)
    found = await request.app[STORE].read_session(ref)
    if found is None:
        raise NotFound("no live session with that id")
    return json_response(views.session_item(*found))


async def revoke_session(request: web.Request) -> web.Response:
    request.app[API_KEYS].require(request)
    ref = _path_session(request)
    if not await request.app[STORE].revoke_session(ref):
        raise NotFound("no live session with that id")
    return web.Response(status=204, headers=NO_CONTENT_HEADERS)


async def list_user_sessions(request: web.Request) -> web.Response:
    request.app[API_KEYS].require(request)
    user_id = path_user_id(request)
    sessions, _ = await request.app[STORE].list_sessions(user_id)
    items = [views.session_item(*session) for session in sessions]
    return json_response({"sessions": items, "device_count": len(items)})


async def revoke_user_sessions(request: web.Request) -> web.Response:
    request.app[API_KEYS].require(request)
    user_id = path_user_id(request)
    except_sid = ""
    except_id = request.query.get("except")
    if except_id is not None:
        ref = parse_session_id(except_id)
        if ref is None:
            raise InvalidRequest("except: expected a session id (sess_...)")
        except_sid = ref.sid
    revoked = await request.app[STORE].revoke_user_sessions(user_id, except_sid=except_sid)
    return json_response({"revoked": len(revoked)})


# -- self-service ------------------------------------------------------------

async def validate(request: web.Request) -> web.Response:
    mode = MODE_ACTIVITY if _flag(request, "extend", True) else MODE_CHECK
    result = await current_session(request, mode=mode)
    record = result.record
    headers = {
        "X-Session-Id": result.ref.session_id,
        "X-User-Id": record.user_id,
        "X-Device-Id": record.device_id,
        "X-Session-Expires-At": views.rfc3339(record.expires_ms),
    }
    return json_response(views.validation_body(result), headers=headers)


async def my_session(request: web.Request) -> web.Response:
    result = await current_session(request, mode=MODE_CHECK, device_count=True)
    return json_response(views.status_body(result))


async def extend_my_session(request: web.Request) -> web.Response:
    result = await current_session(request, mode=MODE_EXTEND)
    return json_response(views.extend_body(result))


async def sign_out(request: web.Request) -> web.Response:
    result = await current_session(request, mode=MODE_CHECK)
    await request.app[STORE].revoke_session(result.ref, user_id=result.record.user_id, reason="sign_out")
    return web.Response(status=204, headers=NO_CONTENT_HEADERS)


async def my_sessions(request: web.Request) -> web.Response:
    current = await current_session(request, mode=MODE_CHECK)
    sessions, _ = await request.app[STORE].list_sessions(current.record.user_id)
    items = []
    for session in sessions:
        item = views.session_item(*session)
        item["current"] = session.ref == current.ref
        items.append(item)
    return json_response({"sessions": items, "device_count": len(items)})


async def revoke_my_session(request: web.Request) -> web.Response:
    current = await current_session(request, mode=MODE_CHECK)
    ref = _path_session(request)
    # A foreign id is reported exactly as a missing one, so ids cannot be probed.
    if ref.tag != current.ref.tag:
        raise NotFound("no live session with that id")
    if not await request.app[STORE].revoke_session(ref, user_id=current.record.user_id, reason="user"):
        raise NotFound("no live session with that id")
    return web.Response(status=204, headers=NO_CONTENT_HEADERS)


async def revoke_my_sessions(request: web.Request) -> web.Response:
    scope = request.query.get("scope")
    if scope not in ("others", "all"):
        raise InvalidRequest("scope: required, expected 'others' or 'all'")
    current = await current_session(request, mode=MODE_CHECK)
    except_sid = current.ref.sid if scope == "others" else ""
    revoked = await request.app[STORE].revoke_user_sessions(current.record.user_id, except_sid=except_sid,
                                                            reason="user")
    return json_response({"revoked": len(revoked)})
