"""Gateways for tests: nginx and Caddy run from the shipped deploy/ configs, and a recording app.

Every server here listens on 127.0.0.1 only. The configs under deploy/ are
rendered by replacing their addresses with test ports, each replaced text
occurring exactly once, so the tested config is the shipped one.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from service.embedded import free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
DEPLOY_DIR = REPO_ROOT / "deploy"
# A gateway whose port does not accept connections by then has failed to start.
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0


def find_binary(name: str) -> str | None:
    """Return the path of a gateway binary, also looking in /usr/sbin (nginx), which may not be on PATH."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")


def render(template: str, replacements: dict[str, str]) -> str:
    """Replace each key of replacements, which must occur exactly once in template."""
    for old, new in replacements.items():
        count = template.count(old)
        if count != 1:
            raise ValueError(f"expected {old!r} once in the template, found it {count} times")
        template = template.replace(old, new)
    return template


# -- the application behind the gateway ---------------------------------------

@dataclasses.dataclass
class Received:
    """One request as the recorder saw it, headers as raw bytes in wire order."""

    method: str
    path_qs: str
    raw_headers: tuple[tuple[bytes, bytes], ...]
    body: bytes

    def values(self, name: str) -> list[str]:
        target = name.lower().encode("ascii")
        return [value.decode("utf-8", "surrogateescape") for key, value in self.raw_headers
                if key.lower() == target]

    def header(self, name: str) -> str | None:
        """Return the value of a header that occurs at most once, or None if it is missing."""
        values = self.values(name)
        assert len(values) <= 1, f"{name} sent {len(values)} times: {values}"
        return values[0] if values else None


class Recorder:
    """An aiohttp app on 127.0.0.1 that records every request and returns a fixed response.

    It is the application behind a gateway, or replaces the session store
    when a test checks exactly what a gateway sends to it.
    """

    def __init__(self, *, status: int = 200, headers: dict[str, str] | None = None,
                 delay_s: float = 0.0) -> None:
        self.status = status
        self.delay_s = delay_s
        self.reply_headers = dict(headers or {})
        self.requests: list[Received] = []
        self.port = free_port()
        # Set by stop(), so a delayed reply does not hold up the shutdown.
        self._stopping = asyncio.Event()
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append(Received(request.method, request.path_qs, tuple(request.raw_headers), body))
        if self.delay_s:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.delay_s)
        return web.json_response({"recorded": True}, status=self.status, headers=self.reply_headers)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


# -- gateway processes ---------------------------------------------------------

class GatewayProcess:
    """One gateway child process on a free 127.0.0.1 port, its output in a log file.

    Subclasses write their config into workdir and name the command to run.
    """

    name = "gateway"

    def __init__(self, workdir: Path, *, session_store_port: int, app_port: int) -> None:
        self.workdir = workdir
        self.session_store_port = session_store_port
        self.app_port = app_port
        self.port = free_port()
        self.log_path = workdir / f"{self.name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write_config(self) -> list[str]:
        """Write the config files and return the command line."""
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return dict(os.environ)

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = self.write_config()
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(args, cwd=self.workdir, env=self.environment(),
                                            stdin=subprocess.DEVNULL, stdout=log, stderr=log)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def wait_ready(self) -> None:
        """Wait until the gateway port accepts connections.

        Raise RuntimeError if the child exits or START_TIMEOUT_S passes first.
        """
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with code {self.process.returncode}:\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                await asyncio.sleep(0.05)
        raise RuntimeError(f"{self.name} did not listen within {START_TIMEOUT_S}s:\n{self.log()}")

    def stop(self) -> None:
        """Terminate the child by its PID, then kill it if it is still running after STOP_TIMEOUT_S."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=STOP_TIMEOUT_S)


# Wraps the shipped file, which belongs inside http {}, as Debian's nginx.conf
# does. One process (no workers to leave behind), and every path under the
# prefix, the test's folder.
NGINX_MAIN_CONF = """\
master_process off;
pid nginx.pid;
events {
    worker_connections 64;
}
http {
    access_log access.log;
    client_body_temp_path temp/body;
    proxy_temp_path temp/proxy;
    fastcgi_temp_path temp/fastcgi;
    uwsgi_temp_path temp/uwsgi;
    scgi_temp_path temp/scgi;
    include session-store.conf;
}
"""


class NginxGateway(GatewayProcess):
    name = "nginx"
    template_path = DEPLOY_DIR / "nginx" / "session-store.conf"

    def rendered(self) -> str:
        return render(self.template_path.read_text(), {
            "listen 127.0.0.1:8000;": f"listen 127.0.0.1:{self.port};",
            "server 127.0.0.1:8080;": f"server 127.0.0.1:{self.session_store_port};",
            "server 127.0.0.1:9000;": f"server 127.0.0.1:{self.app_port};",
        })

    def write_config(self) -> list[str]:
        (self.workdir / "temp").mkdir(exist_ok=True)
        (self.workdir / "session-store.conf").write_text(self.rendered())
        main_conf = self.workdir / "nginx.conf"
        main_conf.write_text(NGINX_MAIN_CONF)
        binary = find_binary("nginx")
        if binary is None:
            pytest.skip("nginx is not installed (apt-get install nginx-light)")
        return [binary, "-p", f"{self.workdir}/", "-c", str(main_conf),
                "-g", "daemon off; error_log stderr;"]


class CaddyGateway(GatewayProcess):
    name = "caddy"
    template_path = DEPLOY_DIR / "caddy" / "Caddyfile"

    def __init__(self, workdir: Path, *, session_store_port: int, app_port: int) -> None:
        super().__init__(workdir, session_store_port=session_store_port, app_port=app_port)
        self.admin_port = free_port()

    def rendered(self) -> str:
        return render(self.template_path.read_text(), {
            "admin 127.0.0.1:2019": f"admin 127.0.0.1:{self.admin_port}",
            "http://:8000 {": f"http://:{self.port} {{",
            "forward_auth 127.0.0.1:8080 {": f"forward_auth 127.0.0.1:{self.session_store_port} {{",
            "reverse_proxy 127.0.0.1:9000": f"reverse_proxy 127.0.0.1:{self.app_port}",
        })

    def environment(self) -> dict[str, str]:
        # Caddy keeps an autosaved config and its data under these folders:
        # the test's folder, never the user's home.
        environ = dict(os.environ)
        for name in ("HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME"):
            environ[name] = str(self.workdir)
        return environ

    def write_config(self) -> list[str]:
        config = self.workdir / "Caddyfile"
        config.write_text(self.rendered())
        binary = find_binary("caddy")
        if binary is None:
            pytest.skip("caddy is not installed (apt-get install caddy)")
        return [binary, "run", "--config", str(config), "--adapter", "caddyfile"]


GATEWAYS: dict[str, type[GatewayProcess]] = {"nginx": NginxGateway, "caddy": CaddyGateway}


# -- a YAML subset, for configs of gateways that are not installed ------------

class YamlSubsetError(ValueError):
    pass


_KEY = re.compile(r"""\A("(?:[^"\\]|\\.)*"|'[^']*'|[^\s'"#:][^:#]*?)\s*:(?:\s+|\Z)(.*)\Z""")


def load_yaml_subset(text: str) -> Any:
    """Parse the block YAML our deploy/ configs use: maps, lists, scalars, [a, b] and {}.

    Anchors, tags, multi-line scalars, multiple documents and flow maps with
    entries are not supported and raise YamlSubsetError, so a config that
    grows beyond the subset fails loudly rather than being misread.
    """
    lines = []
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = _strip_comment(raw).rstrip()
        if not stripped.strip() or stripped.strip() == "---":
            continue
        if "\t" in raw[: len(raw) - len(raw.lstrip())]:
            raise YamlSubsetError(f"line {number}: tab in indentation")
        lines.append((len(stripped) - len(stripped.lstrip(" ")), stripped.strip(), number))
    value, end = _parse_block(lines, 0, lines[0][0] if lines else 0)
    if end != len(lines):
        raise YamlSubsetError(f"line {lines[end][2]}: unexpected indentation")
    return value


def _strip_comment(line: str) -> str:
    quote = ""
    for index, char in enumerate(line):
        if quote:
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1] in " \t"):
            return line[:index]
    return line


def _parse_block(lines: list[tuple[int, str, int]], start: int, indent: int) -> tuple[Any, int]:
    if start >= len(lines):
        return None, start
    if lines[start][1].startswith("- ") or lines[start][1] == "-":
        return _parse_list(lines, start, indent)
    return _parse_map(lines, start, indent)


def _parse_list(lines: list[tuple[int, str, int]], index: int, indent: int) -> tuple[list[Any], int]:
    items: list[Any] = []
    while index < len(lines) and lines[index][0] == indent and (
            lines[index][1].startswith("- ") or lines[index][1] == "-"):
        _, text, number = lines[index]
        rest = text[1:].strip()
        if not rest:
            value, index = _parse_block(lines, index + 1, _child_indent(lines, index, indent))
            items.append(value)
            continue
        if _KEY.match(rest) and not rest.startswith(("[", "{")):
            # "- key: value" opens a map whose keys are indented past the dash.
            item_indent = indent + (len(text) - len(rest))
            lines[index] = (item_indent, rest, number)
            value, index = _parse_map(lines, index, item_indent)
            items.append(value)
            continue
        items.append(_scalar(rest, number))
        index += 1
    return items, index


def _parse_map(lines: list[tuple[int, str, int]], index: int, indent: int) -> tuple[dict[str, Any], int]:
    mapping: dict[str, Any] = {}
    while index < len(lines) and lines[index][0] == indent:
        _, text, number = lines[index]
        match = _KEY.match(text)
        if match is None or text.startswith("- "):
            raise YamlSubsetError(f"line {number}: expected 'key: value'")
        key = _unquote(match.group(1).strip(), number)
        if key in mapping:
            raise YamlSubsetError(f"line {number}: duplicate key {key!r}")
        rest = match.group(2).strip()
        if rest:
            mapping[key] = _scalar(rest, number)
            index += 1
            continue
        child = _child_indent(lines, index, indent)
        if child is None:
            mapping[key] = None
            index += 1
            continue
        mapping[key], index = _parse_block(lines, index + 1, child)
    if index < len(lines) and lines[index][0] > indent:
        raise YamlSubsetError(f"line {lines[index][2]}: unexpected indentation")
    return mapping, index


def _child_indent(lines: list[tuple[int, str, int]], index: int, indent: int) -> Any:
    """Return the indentation of the block under lines[index], or None if there is none.

    A list may sit at the same indentation as its parent key.
    """
    if index + 1 >= len(lines):
        return None
    next_indent, next_text = lines[index + 1][0], lines[index + 1][1]
    if next_indent > indent or (next_indent == indent and next_text.startswith("- ")
                                and not lines[index][1].startswith("- ")):
        return next_indent
    return None


def _scalar(text: str, number: int) -> Any:
    if text in ("{}", "[]"):
        return {} if text == "{}" else []
    if text.startswith("["):
        if not text.endswith("]"):
            raise YamlSubsetError(f"line {number}: flow sequences must fit on one line")
        inner = text[1:-1].strip()
        return [_scalar(part.strip(), number) for part in _split_flow(inner, number)] if inner else []
    if text.startswith(("{", "&", "*", "!", "|", ">")):
        raise YamlSubsetError(f"line {number}: unsupported YAML: {text!r}")
    if text[0] in "'\"":
        return _unquote(text, number)
    if text in ("true", "false"):
        return text == "true"
    if text in ("null", "~"):
        return None
    if re.fullmatch(r"-?[0-9]+", text):
        return int(text)
    if re.fullmatch(r"-?[0-9]+\.[0-9]+", text):
        return float(text)
    return text


def _split_flow(inner: str, number: int) -> list[str]:
    parts, current, quote = [], "", ""
    for char in inner:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[]{}":
            raise YamlSubsetError(f"line {number}: nested flow collections are not supported")
        elif char == ",":
            parts.append(current)
            current = ""
            continue
        current += char
    parts.append(current)
    return parts


def _unquote(text: str, number: int) -> str:
    if text.startswith('"'):
        if len(text) < 2 or not text.endswith('"'):
            raise YamlSubsetError(f"line {number}: unterminated string")
        inner = text[1:-1]
        if "\\" in inner:
            raise YamlSubsetError(f"line {number}: escapes in double-quoted strings are not supported")
        return inner
    if text.startswith("'"):
        if len(text) < 2 or not text.endswith("'"):
            raise YamlSubsetError(f"line {number}: unterminated string")
        return text[1:-1].replace("''", "'")
    return text
