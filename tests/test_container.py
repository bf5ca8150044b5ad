"""Dockerfile, .dockerignore and deploy/compose.yaml agree with the CLI and the config.

No Docker engine runs here. The files are parsed and checked against
service.cli.build_parser(), service.config and pyproject.toml, and the
HEALTHCHECK command itself runs against a real service process.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import re
import subprocess
import sys
import time
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from service.cli import build_parser
from service.config import API_KEYS_ENV, REDIS_URL_ENV, build_settings
from service.embedded import free_port
from service.keys import HASH_MAX_LISTPACK_VALUE
from tests.redis_server import RedisServer
from tests.service_process import ServiceProcess, ensure_redis_running

REPO_ROOT = Path(__file__).resolve().parent.parent
DEPLOY = REPO_ROOT / "deploy"
NGINX_CONF = DEPLOY / "nginx" / "session-store.conf"
BASE_IMAGE = "python:3.11-slim"
CONFIG_ENV = {API_KEYS_ENV, REDIS_URL_ENV}
# A healthcheck that has not passed by then never will.
HEALTHY_TIMEOUT_S = 20.0


# -- parsing -----------------------------------------------------------------------

def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """Return the Dockerfile's stages, each a list of (INSTRUCTION, arguments)."""
    text = (REPO_ROOT / "Dockerfile").read_text(encoding="utf-8")
    joined = re.sub(r"\\\n\s*", " ", "\n".join(
        line for line in text.splitlines() if not line.lstrip().startswith("#")))
    stages: list[list[tuple[str, str]]] = []
    for line in filter(str.strip, joined.splitlines()):
        instruction, _, arguments = line.strip().partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        stages[-1].append((instruction.upper(), arguments.strip()))
    return stages


def final_stage() -> list[tuple[str, str]]:
    return dockerfile_stages()[-1]


def instruction(stage: list[tuple[str, str]], name: str) -> str:
    """Return the arguments of the stage's last NAME instruction, which is the one in force."""
    values = [arguments for found, arguments in stage if found == name]
    assert values, f"the final stage has no {name}"
    return values[-1]


def exec_form(arguments: str) -> list[str]:
    value = json.loads(arguments)
    assert isinstance(value, list) and all(isinstance(item, str) for item in value), arguments
    return value


def healthcheck_command() -> list[str]:
    _, separator, command = instruction(final_stage(), "HEALTHCHECK").partition(" CMD ")
    assert separator, "HEALTHCHECK needs a CMD in exec form"
    return exec_form(command)


def parse_cli(argv: list[str]) -> argparse.Namespace:
    """Parse a container command with the service's own parser; fail on anything it rejects."""
    assert argv[0] == "session-store", argv
    try:
        return build_parser().parse_args(argv[1:])
    except SystemExit:
        pytest.fail(f"session-store rejects {argv[1:]}")


def compose() -> dict[str, Any]:
    document = yaml.safe_load((DEPLOY / "compose.yaml").read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


def compose_service(role: str) -> tuple[str, dict[str, Any]]:
    """Return the name and definition of the compose service that plays role."""
    found = [(name, service) for name, service in compose()["services"].items() if _role(service) == role]
    assert len(found) == 1, f"expected one {role} service, found {[name for name, _ in found]}"
    return found[0]


def _role(service: dict[str, Any]) -> str:
    if "build" in service:
        return "session-store"
    return str(service.get("image", "")).split(":")[0]


def pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def cmd_port() -> int:
    port: int = parse_cli(exec_form(instruction(final_stage(), "CMD"))).port
    return port


# -- Dockerfile --------------------------------------------------------------------

def test_dockerfile_stages_use_python_slim() -> None:
    bases = [stage[0][1].split()[0] for stage in dockerfile_stages()]

    assert bases and set(bases) == {BASE_IMAGE}


def test_dockerfile_cmd_serves_all_addresses() -> None:
    argv = exec_form(instruction(final_stage(), "CMD"))

    args = parse_cli(argv)

    assert (args.command, args.host, args.port) == ("serve", "0.0.0.0", 8080)
    assert pyproject()["project"]["scripts"][argv[0]] == "service.launch:main"


def test_dockerfile_cmd_flags_are_serve_options() -> None:
    serve_options = {option for action in _serve_parser()._actions for option in action.option_strings}
    flags = [item for item in exec_form(instruction(final_stage(), "CMD")) if item.startswith("--")]

    assert flags and set(flags) <= serve_options


def _serve_parser() -> argparse.ArgumentParser:
    commands = next(action for action in build_parser()._actions
                    if isinstance(action, argparse._SubParsersAction))
    serve: argparse.ArgumentParser = commands.choices["serve"]
    return serve


def test_dockerfile_exposes_cmd_port() -> None:
    assert instruction(final_stage(), "EXPOSE").split() == [str(cmd_port())]


def test_dockerfile_healthcheck_uses_cmd_port() -> None:
    command = healthcheck_command()

    assert command[:2] == ["python", "-c"]
    assert "urllib.request" in command[2]
    assert re.findall(r"http://[^'\"]+", command[2]) == [f"http://127.0.0.1:{cmd_port()}/healthz"]


def test_dockerfile_user_not_root() -> None:
    user = instruction(final_stage(), "USER").split(":")[0]

    assert user not in ("root", "0")


def test_dockerfile_user_set_before_cmd() -> None:
    names = [name for name, _ in final_stage()]

    assert names.index("USER") < names.index("CMD")
    assert "USER" not in names[names.index("USER") + 1:]


def test_dockerfile_pip_installs_project() -> None:
    runs = [arguments for name, arguments in final_stage() if name == "RUN"]

    assert any("pip install" in run and pyproject()["project"]["name"] in run.split() for run in runs)


def test_dockerfile_copies_wheel_sources() -> None:
    project = pyproject()
    sources = {part for stage in dockerfile_stages() for name, arguments in stage if name == "COPY"
               for part in arguments.split()[:-1] if not part.startswith("--")}
    needed = {"pyproject.toml", project["project"]["readme"],
              *project["tool"]["setuptools"]["packages"][:1],
              *project["tool"]["setuptools"]["package-dir"].values()}

    assert needed <= sources


def test_dockerfile_env_names_match_config() -> None:
    text = (REPO_ROOT / "Dockerfile").read_text(encoding="utf-8")

    assert set(re.findall(r"SESSION_STORE_[A-Z_]+", text)) == CONFIG_ENV


# -- .dockerignore -----------------------------------------------------------------

def dockerignore_rules() -> list[tuple[bool, str]]:
    lines = (REPO_ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    rules = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    return [(rule.startswith("!"), rule.lstrip("!").rstrip("/")) for rule in rules]


def ignored(path: str) -> bool:
    """Apply the rules as Docker does: the last rule matching the path or a parent decides."""
    parts = PurePosixPath(path).parts
    result = False
    for negated, pattern in dockerignore_rules():
        if any(_matches(parts[:length], pattern) for length in range(1, len(parts) + 1)):
            result = not negated
    return result


def _matches(parts: tuple[str, ...], pattern: str) -> bool:
    pattern_parts = PurePosixPath(pattern).parts
    if pattern_parts[0] == "**":
        return fnmatch.fnmatchcase(parts[-1], pattern_parts[-1])
    return len(parts) == len(pattern_parts) and all(
        fnmatch.fnmatchcase(part, wanted) for part, wanted in zip(parts, pattern_parts, strict=True))


@pytest.mark.parametrize("path", ["pyproject.toml", "README.md", "service/cli.py", "lua/_prelude.lua"])
def test_dockerignore_keeps_build_inputs(path: str) -> None:
    assert not ignored(path)


@pytest.mark.parametrize("path", [".git/HEAD", ".venv/bin/python", "tests/conftest.py", "build/lib",
                                  "session-store-data/appendonly.aof", "service/__pycache__/cli.pyc"])
def test_dockerignore_excludes_the_rest(path: str) -> None:
    assert ignored(path)


# -- compose -----------------------------------------------------------------------

def test_compose_runs_two_replicas() -> None:
    _, service = compose_service("session-store")

    assert service["deploy"]["replicas"] == 2


def test_compose_builds_this_repository() -> None:
    _, service = compose_service("session-store")

    assert (DEPLOY / service["build"]["context"]).resolve() == REPO_ROOT
    assert service["build"]["dockerfile"] == "Dockerfile"


def test_compose_command_matches_dockerfile_cmd() -> None:
    _, service = compose_service("session-store")

    args = parse_cli(service["command"])
    image_args = parse_cli(exec_form(instruction(final_stage(), "CMD")))

    assert args.command == image_args.command
    assert args.host == image_args.host
    assert args.port == image_args.port


def test_compose_redis_keeps_hashes_compact() -> None:
    _, service = compose_service("redis")
    command = service["command"]

    limit = int(command[command.index("--hash-max-listpack-value") + 1])

    assert limit >= HASH_MAX_LISTPACK_VALUE


def test_compose_config_is_valid() -> None:
    _, service = compose_service("session-store")
    (mount,) = service["configs"]

    content = compose()["configs"][mount["source"]]["content"]

    assert build_settings(tomllib.loads(content), {}).service.trusted_proxies


def test_compose_config_mounted_at_config_path() -> None:
    _, service = compose_service("session-store")
    (mount,) = service["configs"]

    assert parse_cli(service["command"]).config == mount["target"]


def test_compose_environment_matches_config() -> None:
    redis_name, _ = compose_service("redis")
    _, service = compose_service("session-store")
    environment = service["environment"]

    assert set(environment) == CONFIG_ENV
    assert environment[REDIS_URL_ENV] == f"redis://{redis_name}:6379/0"
    # The keys come from the caller's environment; compose refuses to start without them.
    assert environment[API_KEYS_ENV].startswith(f"${{{API_KEYS_ENV}:?")


def test_compose_redis_appends_every_second() -> None:
    _, redis = compose_service("redis")
    command = redis["command"]

    options = dict(zip(command[1::2], command[2::2], strict=True))

    assert options["--appendonly"] == "yes"
    assert options["--appendfsync"] == "everysec"


def test_compose_redis_data_on_volume() -> None:
    _, redis = compose_service("redis")

    volume, target = redis["volumes"][0].split(":")[:2]

    assert volume in compose()["volumes"]
    assert target == "/data"


def test_compose_gateway_mounts_nginx_conf() -> None:
    _, gateway = compose_service("nginx")
    source = gateway["volumes"][0].split(":")[0]

    assert (DEPLOY / source).resolve() == NGINX_CONF
    assert "session-store" in gateway["depends_on"]


def test_compose_gateway_conf_reaches_service() -> None:
    """The conf as compose rewrites it listens on the published port and proxies to the replicas."""
    if not NGINX_CONF.is_file():
        pytest.skip("deploy/nginx/session-store.conf is not written yet")
    service_name, _ = compose_service("session-store")
    _, gateway = compose_service("nginx")
    conf = NGINX_CONF.read_text(encoding="utf-8")

    for pattern, replacement in re.findall(r"-e 's/(.+?)/(.+?)/'", gateway["command"][-1]):
        conf, count = re.subn(pattern, replacement, conf)
        assert count == 1, f"the conf has {count} lines matching {pattern}"

    container_port = gateway["ports"][0].split(":")[-1]
    assert re.search(rf"^\s*listen {container_port};", conf, re.MULTILINE)
    assert re.search(rf"^\s*server {service_name}:{cmd_port()};", conf, re.MULTILINE)


# -- the healthcheck, for real -----------------------------------------------------

def run_healthcheck(port: int) -> int:
    """Run the Dockerfile's HEALTHCHECK command against 127.0.0.1:port; return its exit code."""
    _, flag, code = healthcheck_command()
    code = code.replace(f":{cmd_port()}/", f":{port}/")
    return subprocess.run([sys.executable, flag, code], capture_output=True, timeout=10).returncode


def test_healthcheck_fails_without_service() -> None:
    assert run_healthcheck(free_port()) == 1


def test_healthcheck_passes_on_running_service(single_redis: RedisServer, tmp_path: Path) -> None:
    ensure_redis_running(single_redis)
    service = ServiceProcess(single_redis.url, tmp_path / "service.log")
    service.start()
    try:
        deadline = time.monotonic() + HEALTHY_TIMEOUT_S
        while run_healthcheck(service.port) != 0:
            assert time.monotonic() < deadline, f"never healthy, see {service.log_path}"
            time.sleep(0.2)
    finally:
        exit_code = service.terminate(15)
        service.kill()

    assert exit_code == 0
