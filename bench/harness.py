"""Processes a benchmark starts: Redis, the service, load generators.

Every child listens on 127.0.0.1 only and runs in its own session, so a
Ctrl-C in the terminal reaches only the benchmark script. The script then
stops each child by PID (SIGTERM, then SIGKILL after a grace period), and
also any descendants it forked, such as the service's worker processes.
"""

from __future__ import annotations

import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import psutil

from service.embedded import free_port
from service.keys import HASH_MAX_LISTPACK_VALUE

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_ROOT = REPO_ROOT / "bench" / "results"
# Debian's apt-installed server (7.0, jemalloc): the benchmarks' Redis.
DEFAULT_REDIS_SERVER = "/usr/bin/redis-server"
BENCH_API_KEY = "bench-api-key-0123456789abcdef"
# A stopping child gets this long after SIGTERM before SIGKILL, seconds.
STOP_GRACE_S = 15.0


def results_dir(kind: str) -> Path:
    """Create and return bench/results/<UTC timestamp>-<kind>/."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    folder = RESULTS_ROOT / f"{stamp}-{kind}"
    folder.mkdir(parents=True, exist_ok=False)
    return folder


def load_average() -> list[float]:
    """Return the 1, 5 and 15 minute load averages, as `uptime` shows them."""
    return [round(value, 2) for value in os.getloadavg()]


def _busy_s(times: Any) -> float:
    """Return the CPU seconds of a psutil cpu_times() entry spent outside idle and iowait."""
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


def _busy_cpu_s() -> float:
    return _busy_s(psutil.cpu_times())


def _per_core_busy_s() -> list[float]:
    return [_busy_s(times) for times in psutil.cpu_times(percpu=True)]


def _own_cpu_s() -> float:
    """Return CPU seconds of this process and every descendant, waited-for ones included."""
    me = psutil.Process()
    times = me.cpu_times()
    total = times.user + times.system + times.children_user + times.children_system
    for child in me.children(recursive=True):
        try:
            child_times = child.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += child_times.user + child_times.system
    return total


class CpuMeter:
    """Cores kept busy by this benchmark and by everything else on the machine, over an interval.

    Other developers' work on a shared machine takes cores away from the
    benchmark, and the load average shows that only slowly. other_cores
    is the machine's busy CPU time minus this process tree's, per second.
    """

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.busy_s = _busy_cpu_s()
        self.own_s = _own_cpu_s()
        self.per_core_busy_s = _per_core_busy_s()

    def read(self) -> dict[str, Any]:
        elapsed_s = max(time.monotonic() - self.started, 1e-6)
        busy_s = _busy_cpu_s() - self.busy_s
        own_s = _own_cpu_s() - self.own_s
        per_core = [round((now - then) / elapsed_s, 2)
                    for now, then in zip(_per_core_busy_s(), self.per_core_busy_s, strict=True)]
        # A core near 1.0 was saturated, whichever process kept it busy.
        return {"own_cores": round(own_s / elapsed_s, 2),
                "other_cores": round(max(busy_s - own_s, 0.0) / elapsed_s, 2), "core_busy": per_core}


class CpuSampler:
    """A thread that reads a CpuMeter once a second: (UTC seconds, own cores, other cores)."""

    def __init__(self, interval_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self.samples: list[tuple[float, float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            meter = CpuMeter()
            if self._stop.wait(self.interval_s):
                return
            reading = meter.read()
            self.samples.append((time.time(), reading["own_cores"], reading["other_cores"]))

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()


def uptime_line() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


class Children:
    """Child processes started by one benchmark run, stopped in reverse order."""

    def __init__(self) -> None:
        self._started: list[tuple[str, subprocess.Popen[bytes]]] = []
        self._cleanups: list[Callable[[], None]] = []

    def add_cleanup(self, cleanup: Callable[[], None]) -> None:
        """Run cleanup after every child process has stopped (for servers started elsewhere)."""
        self._cleanups.append(cleanup)

    def start(self, name: str, args: list[str], *, log_path: Path, cpus: str | None = None,
              env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start args in a new session, pinned to cpus (taskset list) when given."""
        if cpus is not None:
            args = ["taskset", "-c", cpus, *args]
        with log_path.open("ab") as log:
            process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                       env=env, cwd=REPO_ROOT, start_new_session=True)
        self._started.append((name, process))
        return process

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        """Stop one child and its descendants by PID."""
        try:
            descendants = psutil.Process(process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            descendants = []
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        # A supervisor stops its own workers; any left behind are ended here.
        for child in descendants:
            try:
                child.terminate()
                child.wait(timeout=STOP_GRACE_S)
            except psutil.TimeoutExpired:
                child.kill()
            except psutil.NoSuchProcess:
                pass
        self._started = [(name, started) for name, started in self._started if started is not process]

    def stop_all(self) -> None:
        for _, process in reversed(list(self._started)):
            self.stop(process)
        while self._cleanups:
            self._cleanups.pop()()

    def stop_all_named(self, name: str) -> None:
        for started_name, process in reversed(list(self._started)):
            if started_name == name:
                self.stop(process)

    def pid_of(self, name: str) -> int:
        """Return the PID of the running child started under name."""
        for started_name, process in self._started:
            if started_name == name and process.poll() is None:
                return process.pid
        raise LookupError(f"no running child named {name}")


def _raise_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


@contextmanager
def managed_children() -> Iterator[Children]:
    """Yield a Children registry whose processes stop on exit, error, Ctrl-C or SIGTERM."""
    previous = signal.signal(signal.SIGTERM, _raise_on_sigterm)
    # A shell starts background jobs with SIGINT ignored; a benchmark still stops on it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    children = Children()
    try:
        yield children
    finally:
        # A second Ctrl-C during cleanup must not leave children running.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            children.stop_all()
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, previous)


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout_s: float = 20.0) -> None:
    """Wait until 127.0.0.1:port accepts connections; raise if the process exits first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            program = os.fsdecode(process.args[0]) if isinstance(process.args, list) else str(process.args)
            raise RuntimeError(f"{program} exited with code {process.returncode} before "
                               f"listening on port {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listened on 127.0.0.1:{port} within {timeout_s}s")


def wait_for_http(url: str, process: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    """Poll url until it returns 200; raise if the process exits or timeout_s passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not return 200 within {timeout_s}s")


def start_redis(children: Children, folder: Path, *, binary: str = DEFAULT_REDIS_SERVER,
                cpus: str | None = None, hash_max_listpack_value: int = HASH_MAX_LISTPACK_VALUE,
                name: str = "redis") -> tuple[str, int]:
    """Start a redis-server without persistence, set up like the embedded one; return its URL and port."""
    port = free_port()
    data_dir = folder / name
    data_dir.mkdir(exist_ok=True)
    process = children.start(name, [
        binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(data_dir),
        "--save", "", "--appendonly", "no", "--protected-mode", "yes", "--logfile", "redis.log",
        "--hash-max-listpack-value", str(hash_max_listpack_value),
    ], log_path=folder / f"{name}.out", cpus=cpus)
    wait_for_port(port, process)
    return f"redis://127.0.0.1:{port}/0", port


def service_command() -> list[str]:
    """Return the command for `session-store` from this checkout, the one the benchmark code is in.

    `python -m service` is the console script's equivalent; run from
    REPO_ROOT it imports this tree's service package even when another
    checkout is installed in editable mode.
    """
    return [sys.executable, "-m", "service"]


def source_facts() -> dict[str, Any]:
    """Return the commit benchmarked and the files of service/ and lua/ that differ from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                              check=False).stdout.strip()

    changed = git("status", "--porcelain", "--", "service", "lua").splitlines()
    return {"commit": git("rev-parse", "--short", "HEAD") or "unknown",
            "uncommitted_service_changes": [line[3:] for line in changed]}


def write_service_config(path: Path, *, log_level: str, extra: str = "") -> Path:
    path.write_text(f'[service]\nlog_level = "{log_level}"\n{extra}', encoding="utf-8")
    return path


def start_service(children: Children, folder: Path, redis_url: str, *, workers: int, config: Path,
                  cpus: str | None = None, cluster: bool = False, name: str = "service") -> str:
    """Start `session-store serve` on a free 127.0.0.1 port; return its base URL once ready."""
    port = free_port()
    args = [*service_command(), "serve", "--host", "127.0.0.1", "--port", str(port),
            "--redis-url", redis_url, "--workers", str(workers), "--config", str(config)]
    if cluster:
        args.append("--redis-cluster")
    env = {**os.environ, "SESSION_STORE_API_KEYS": BENCH_API_KEY, "PYTHONPATH": str(REPO_ROOT)}
    env.pop("SESSION_STORE_REDIS_URL", None)
    process = children.start(name, args, log_path=folder / f"{name}.log", cpus=cpus, env=env)
    base_url = f"http://127.0.0.1:{port}"
    wait_for_http(base_url + "/readyz", process)
    return base_url


def require_tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"bench: {name} is not installed; see docs/benchmarks.md for the apt line")
    return found


def machine_facts(redis_binary: str = DEFAULT_REDIS_SERVER) -> dict[str, Any]:
    """Return the facts every result file records: CPU, kernel, versions, load."""
    redis_version = subprocess.run([redis_binary, "--version"], capture_output=True, text=True,
                                   check=False).stdout.strip()
    model = ""
    for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines():
        if line.startswith("Model name:"):
            model = line.split(":", 1)[1].strip()
    return {
        "cpu": model, "cpus": os.cpu_count(), "kernel": platform.release(),
        "python": platform.python_version(), "redis": redis_version,
        "memory_bytes": psutil.virtual_memory().total, "load_average": load_average(),
        "uptime": uptime_line(), "source": source_facts(),
    }
