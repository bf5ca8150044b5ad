"""The admin commands, run as `python -m service ...` against the fixtures' Redis."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from service.config import REDIS_URL_ENV
from service.embedded import free_port
from service.keys import user_keys
from service.tokens import user_tag
from tests.conftest import TEST_CONFIG, Api, Backend, ServiceFactory

REPO_ROOT = Path(__file__).resolve().parent.parent
# A CLI run that takes longer has hung.
CLI_TIMEOUT_S = 30.0
# A well-formed session id (sess_ + 16-char user tag + 8-char sid) that no test creates.
MISSING_ID = "sess_AAAAAAAAAAAAAAAABBBBBBBB"
ITEM_FIELDS = {
    "session_id", "user_id", "device", "created_at", "last_active_at", "expires_at", "max_expires_at",
    "expires_in", "extend_on_activity", "policy", "client", "metadata",
}
LIST_COLUMNS = ["SESSION ID", "DEVICE", "NAME", "TRUSTED", "POLICY", "LAST ACTIVE", "EXPIRES", "CLIENT IP"]
COMMANDS = {
    "sessions list": ["sessions", "list", "u-1"],
    "sessions revoke": ["sessions", "revoke", MISSING_ID],
    "users revoke": ["users", "revoke", "u-1"],
    "stats": ["stats"],
}


@dataclasses.dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


async def run_cli(*args: str, environ: dict[str, str] | None = None) -> Result:
    """Run `python -m service ARGS` with no SESSION_STORE_* variable but those in environ."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("SESSION_STORE_")}
    env.update(environ or {})
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service", *args, cwd=REPO_ROOT, env=env,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), CLI_TIMEOUT_S)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return Result(process.returncode, stdout.decode(), stderr.decode())


def redis_args(backend: Backend) -> list[str]:
    return ["--redis-url", backend.url, *(["--redis-cluster"] if backend.cluster else [])]


async def admin(backend: Backend, *args: str) -> Result:
    return await run_cli(*args, *redis_args(backend))


def table_rows(stdout: str) -> list[dict[str, str]]:
    """Cut each row of the first table at the header's column starts, so misaligned cells show."""
    lines = stdout.splitlines()
    header = lines[0]
    names = re.split(r"\s{2,}", header.strip())
    starts = [header.index(name) for name in names]
    ends: list[int | None] = [*starts[1:], None]
    rows = []
    for line in lines[1:]:
        if not line.strip():
            break
        cells = zip(names, starts, ends, strict=True)
        rows.append({name: line[start:end].strip() for name, start, end in cells})
    return rows


async def validate_code(api: Api, token: str) -> str | None:
    """Return the problem code of a non-extending validation, or None when it passes."""
    status, body, _ = await api.validate(token, params={"extend": "false"})
    return None if status == 200 else body["code"]


# -- sessions list -----------------------------------------------------------------

async def test_list_table_aligned_columns(api: Api, backend: Backend) -> None:
    phone = await api.create("u-list", "dev-phone", device={"id": "dev-phone", "name": "Sarah's iPhone"},
                             client={"ip": "203.0.113.7"})
    laptop = await api.create("u-list", "dev-laptop", device={"id": "dev-laptop", "name": "Work laptop"})

    result = await admin(backend, "sessions", "list", "u-list")

    assert result.code == 0, result.stderr
    assert result.stdout.splitlines()[0].split("  ")[0] == "SESSION ID"
    expected = [
        [laptop["session_id"], "dev-laptop", "Work laptop", "no", "standard", laptop["last_active_at"],
         laptop["expires_at"], "-"],
        [phone["session_id"], "dev-phone", "Sarah's iPhone", "no", "standard", phone["last_active_at"],
         phone["expires_at"], "203.0.113.7"],
    ]
    assert table_rows(result.stdout) == [dict(zip(LIST_COLUMNS, row, strict=True)) for row in expected]
    assert result.stdout.splitlines()[-1] == "2 live sessions of user u-list"


async def test_list_json_matches_api(api: Api, backend: Backend) -> None:
    await api.create("u-json", "dev-1", device={"id": "dev-1", "type": "iPhone_13_Pro", "name": "Phone"},
                     client={"ip": "203.0.113.7", "user_agent": "Agent/1.0"}, metadata={"k": "v"})
    await api.create("u-json", "dev-2")

    result = await admin(backend, "sessions", "list", "u-json", "--json")

    assert result.code == 0, result.stderr
    _, listed, _ = await api.manage("GET", "/v1/users/u-json/sessions")
    assert result.json() == {"user_id": "u-json", "sessions": listed["sessions"], "device_count": 2}
    assert [set(item) for item in result.json()["sessions"]] == [ITEM_FIELDS, ITEM_FIELDS]


async def test_list_escapes_format_characters(api: Api, backend: Backend) -> None:
    # U+202E reverses the text after it on a terminal; the API accepts it in a name.
    await api.create("u-bidi", "dev-1", device={"id": "dev-1", "name": "evil\u202eenoh"})

    table = await admin(backend, "sessions", "list", "u-bidi")
    listed = await admin(backend, "sessions", "list", "u-bidi", "--json")

    assert "\u202e" not in table.stdout
    assert table_rows(table.stdout)[0]["NAME"] == "evil\\u202eenoh"
    assert listed.json()["sessions"][0]["device"]["name"] == "evil\u202eenoh"


async def test_list_shortens_long_names(api: Api, backend: Backend) -> None:
    name = "A device name that is far too long for one column"
    await api.create("u-long", "dev-1", device={"id": "dev-1", "name": name})

    table = await admin(backend, "sessions", "list", "u-long")
    listed = await admin(backend, "sessions", "list", "u-long", "--json")

    assert table_rows(table.stdout)[0]["NAME"] == name[:31] + "…"
    assert listed.json()["sessions"][0]["device"]["name"] == name


async def test_list_unknown_user_exits_1(api: Api, backend: Backend) -> None:
    result = await admin(backend, "sessions", "list", "u-nobody", "--json")

    assert result.code == 1
    assert result.stdout == ""
    assert result.stderr == "session-store: no live sessions found for user 'u-nobody'\n"


# -- sessions revoke ---------------------------------------------------------------

async def test_revoke_token_gets_session_revoked(api: Api, backend: Backend) -> None:
    revoked = await api.create("u-rev", "dev-a")
    kept = await api.create("u-rev", "dev-b")

    result = await admin(backend, "sessions", "revoke", revoked["session_id"])

    assert result.code == 0, result.stderr
    assert result.stdout == f"revoked {revoked['session_id']}\n"
    assert await validate_code(api, revoked["token"]) == "session_revoked"
    assert await validate_code(api, kept["token"]) is None


async def test_revoke_reason_is_admin_cli(api: Api, backend: Backend) -> None:
    created = await api.create("u-reason", "dev-a")

    result = await admin(backend, "sessions", "revoke", created["session_id"], "--json")

    assert result.json() == {"session_id": created["session_id"], "revoked": True}
    _, body, _ = await api.manage("GET", "/v1/users/u-reason/events")
    last = body["events"][-1]
    assert last["type"] == "session_revoked"
    assert last["session_id"] == created["session_id"]
    assert last["detail"] == {"reason": "admin_cli"}


async def test_revoke_twice_exits_1(api: Api, backend: Backend) -> None:
    created = await api.create("u-twice", "dev-a")
    await admin(backend, "sessions", "revoke", created["session_id"])

    result = await admin(backend, "sessions", "revoke", created["session_id"])

    assert result.code == 1
    assert result.stdout == ""
    assert result.stderr == (f"session-store: session {created['session_id']} not found "
                             "(revoked, expired or never created)\n")


async def test_revoke_missing_session_exits_1(api: Api, backend: Backend) -> None:
    result = await admin(backend, "sessions", "revoke", MISSING_ID)

    assert result.code == 1
    assert result.stdout == ""
    assert MISSING_ID in result.stderr


async def test_revoke_malformed_id_exits_2() -> None:
    # Checked before any Redis call: the port is closed.
    result = await run_cli("sessions", "revoke", "sess_short", "--redis-url", f"redis://127.0.0.1:{free_port()}")

    assert result.code == 2
    assert result.stderr.startswith("session-store: invalid SESSION_ID 'sess_short': expected sess_ ")


# -- users revoke ------------------------------------------------------------------

async def test_users_revoke_counts_sessions(api: Api, backend: Backend) -> None:
    created = [await api.create("u-all", f"dev-{index}") for index in range(3)]
    other = await api.create("u-other", "dev-0")

    result = await admin(backend, "users", "revoke", "u-all", "--json")

    assert result.code == 0, result.stderr
    body = result.json()
    assert body["user_id"] == "u-all"
    assert body["revoked"] == 3
    assert sorted(body["session_ids"]) == sorted(session["session_id"] for session in created)
    assert [await validate_code(api, session["token"]) for session in created] == ["session_revoked"] * 3
    assert await validate_code(api, other["token"]) is None


async def test_users_revoke_table_lists_ids(api: Api, backend: Backend) -> None:
    created = [await api.create("u-table", f"dev-{index}") for index in range(2)]

    result = await admin(backend, "users", "revoke", "u-table")

    assert result.code == 0, result.stderr
    rows = table_rows(result.stdout)
    assert sorted(row["REVOKED SESSION ID"] for row in rows) == sorted(s["session_id"] for s in created)
    assert result.stdout.splitlines()[-1] == "revoked 2 sessions of user u-table"


async def test_users_revoke_unknown_user_exits_1(api: Api, backend: Backend) -> None:
    result = await admin(backend, "users", "revoke", "u-nobody")

    assert result.code == 1
    assert result.stdout == ""
    assert result.stderr == "session-store: no live sessions found for user 'u-nobody'\n"


# -- stats -------------------------------------------------------------------------

async def master_names(redis: Any, backend: Backend, user_ids: list[str]) -> set[str]:
    """Return the masters that hold the users' index keys (one name on a single node)."""
    if not backend.cluster:
        return {"single"}
    keys = [user_keys("ss:", user_tag(user_id)).index for user_id in user_ids]
    return {redis.get_node_from_key(key).name for key in keys}


async def test_stats_counts_live_sessions(api: Api, backend: Backend, redis: Any) -> None:
    user_ids = [f"u-stats-{index}" for index in range(9)]
    created = {user_id: [await api.create(user_id, f"dev-{n}") for n in range(index % 3 + 1)]
               for index, user_id in enumerate(user_ids)}
    await api.manage("DELETE", f"/v1/sessions/{created[user_ids[2]][0]['session_id']}")
    await api.manage("DELETE", f"/v1/users/{user_ids[0]}/sessions")

    result = await admin(backend, "stats", "--json")

    assert result.code == 0, result.stderr
    body = result.json()
    masters = 3 if backend.cluster else 1
    # 18 created, 1 revoked, user 0's one session revoked with the user.
    assert body["sessions"] == 16
    assert body["users"] == 8
    assert body["masters"] == masters
    assert len(await master_names(redis, backend, user_ids)) == masters
    assert body["bytes_per_session_source"] == "memory_usage"
    assert body["memory_sample_users"] == 8
    # Index entry, record, device, marker and event of each session, a few hundred bytes each.
    assert 200 < body["bytes_per_session"] < 20_000
    assert body["used_memory"] > 0


async def test_stats_skips_expired_sessions(api: Api, backend: Backend, redis: Any) -> None:
    await api.create("u-expiry", "dev-live")
    await api.create("u-expiry", "dev-short", policy="short", expires_in=1)
    await api.create("u-gone", "dev-short", policy="short", expires_in=1)
    await asyncio.sleep(1.5)

    result = await admin(backend, "stats", "--json")

    # Nothing listed the users, so the index still contains the expired session.
    assert await redis.zcard(user_keys("ss:", user_tag("u-expiry")).index) == 2
    assert result.json()["sessions"] == 1
    assert result.json()["users"] == 1


async def test_stats_table_labels(api: Api, backend: Backend) -> None:
    await api.create("u-figures", "dev-1")
    await api.create("u-figures", "dev-2")

    result = await admin(backend, "stats")

    assert result.code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["live", "sessions", "2"]
    assert lines[1].split() == ["users", "1"]
    assert re.fullmatch(r"bytes per session  \d+ \(MEMORY USAGE of the keys of 1 user\)", lines[2])
    assert re.fullmatch(r"used memory {8}\d+\.\d MiB \(\d+ bytes, \d masters?\)", lines[3])


async def test_stats_empty_store(api: Api, backend: Backend) -> None:
    result = await admin(backend, "stats", "--json")

    assert result.code == 0, result.stderr
    body = result.json()
    assert body["sessions"] == 0
    assert body["users"] == 0
    assert body["bytes_per_session"] is None


async def test_stats_key_prefix_from_config(make_service: ServiceFactory, backend: Backend,
                                                  tmp_path: Path) -> None:
    # '*' in the prefix is escaped in SCAN MATCH, so "ab:" keys do not count as "a*:" keys.
    for prefix, count in (("a*:", 2), ("ab:", 1)):
        config = copy.deepcopy(TEST_CONFIG)
        config["service"]["key_prefix"] = prefix
        service = await make_service(config)
        for index in range(count):
            await service.create("u-prefix", f"dev-{index}")
    config_path = tmp_path / "admin.toml"
    config_path.write_text('[service]\nkey_prefix = "a*:"\n', encoding="utf-8")

    with_config = await admin(backend, "stats", "--json", "--config", str(config_path))
    listed = await admin(backend, "sessions", "list", "u-prefix", "--json", "--config", str(config_path))
    default = await admin(backend, "stats", "--json")

    assert with_config.json()["sessions"] == 2
    assert len(listed.json()["sessions"]) == 2
    assert default.json()["sessions"] == 0


# -- usage and outages -------------------------------------------------------------

@pytest.mark.parametrize("command", COMMANDS.values(), ids=COMMANDS.keys())
async def test_missing_redis_url_exits_2(command: list[str]) -> None:
    result = await run_cli(*command)

    assert result.code == 2
    assert result.stdout == ""
    assert result.stderr == (f"session-store: missing Redis URL: pass --redis-url or set {REDIS_URL_ENV} "
                             "(admin commands never start an embedded Redis)\n")


async def test_redis_url_from_environment(api: Api, backend: Backend) -> None:
    await api.create("u-env", "dev-1")

    result = await run_cli("stats", "--json", *(["--redis-cluster"] if backend.cluster else []),
                           environ={REDIS_URL_ENV: backend.url})

    assert result.code == 0, result.stderr
    assert result.json()["sessions"] == 1


@pytest.mark.parametrize("cluster", [False, True], ids=["single", "cluster"])
@pytest.mark.parametrize("command", COMMANDS.values(), ids=COMMANDS.keys())
async def test_unreachable_redis_exits_3(command: list[str], cluster: bool) -> None:
    port = free_port()  # bound and released: nothing listens there

    result = await run_cli(*command, "--redis-url", f"redis://127.0.0.1:{port}",
                           *(["--redis-cluster"] if cluster else []))

    assert result.code == 3
    assert result.stdout == ""
    assert result.stderr.startswith(f"session-store: Redis at 127.0.0.1:{port} is unavailable: ")
    assert result.stderr.endswith(". Check --redis-url and --redis-cluster.\n")


async def test_unsupported_redis_url_exits_2() -> None:
    result = await run_cli("stats", "--redis-url", "http://127.0.0.1:6379")

    assert result.code == 2
    assert result.stderr.startswith("session-store: invalid --redis-url: ")


async def test_invalid_config_exits_2(tmp_path: Path) -> None:
    config_path = tmp_path / "bad.toml"
    config_path.write_text('[service]\nkey_prefix = "{x}"\n', encoding="utf-8")

    result = await run_cli("stats", "--config", str(config_path), "--redis-url", "redis://127.0.0.1:1")

    assert result.code == 2
    assert result.stderr.startswith("session-store: invalid configuration: service.key_prefix: ")


async def test_unknown_action_exits_2() -> None:
    result = await run_cli("sessions", "purge", "u-1")

    assert result.code == 2
    assert "invalid choice: 'purge'" in result.stderr
