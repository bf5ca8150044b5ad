"""py-spy profiles of a service worker under load, and their summaries.

py-spy samples the worker's Python stacks while a load run goes on, with
--nonblocking (it does not pause the process, so it costs the worker
little) and --idle (samples where the event loop waits in epoll count too,
so "idle" shows how much of the core was left). The summary gives each
function's share of all samples, inclusive of what it calls, and the
leaf functions where the time is spent.
"""

from __future__ import annotations

import collections
import json
import re
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.harness import load_average

# Profile one load run plus this margin, seconds.
MARGIN_S = 2
SAMPLES_PER_S = 200
_FRAME = re.compile(r"^(?P<function>.+?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def record_during(pid: int, prefix: Path, action: Callable[[], dict[str, Any]], *,
                  duration_s: int = 10, cpus: str = "1") -> dict[str, Any]:
    """Run action (one load run) while py-spy samples pid; write and return the summary."""
    raw_path = prefix.with_suffix(".txt")
    args = ["taskset", "-c", cpus, _py_spy(), "record", "--pid", str(pid), "--duration", str(duration_s),
            "--rate", str(SAMPLES_PER_S), "--format", "raw", "--nonblocking", "--idle", "--function",
            "--output", str(raw_path)]
    outcome: dict[str, Any] = {}

    def load() -> None:
        outcome.update(action())

    load_before = load_average()
    spy = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    runner = threading.Thread(target=load)
    runner.start()
    try:
        _, error = spy.communicate(timeout=duration_s + 60)
    finally:
        runner.join()
        if spy.poll() is None:
            spy.kill()
            spy.wait()
    if spy.returncode != 0 or not raw_path.exists():
        raise RuntimeError(f"py-spy failed with code {spy.returncode}: {error.decode()[-500:]}")
    summary = summarize(raw_path)
    summary["load_run"] = {key: outcome.get(key) for key in ("rps", "p50_us", "p99_us")}
    summary["load_before"] = load_before
    prefix.with_suffix(".json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary


def _py_spy() -> str:
    """Return py-spy from this interpreter's environment, else from PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else "py-spy"


def _short(frame: str) -> str:
    """Return "function (package/file.py)" from a py-spy frame, without line numbers."""
    match = _FRAME.match(frame)
    if match is None:
        return frame
    path = match["file"]
    for marker in ("site-packages/", "/work/main/", "python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{match['function']} ({path})"


# Leaf frames are attributed to the first area whose path marker they contain.
# A leaf in run_app is time inside uvloop's C code: epoll, socket reads and
# writes, callbacks that have no Python frame of their own.
AREAS = (
    ("logging (logging, service/logs.py)", ("logging/", "service/logs.py")),
    ("Prometheus metrics", ("prometheus_client/",)),
    ("Redis client (service/pipeline.py, redis-py)", ("service/pipeline.py", "redis/")),
    ("service code (service/)", ("service/",)),
    ("aiohttp HTTP server", ("aiohttp/", "multidict/", "yarl/")),
    ("asyncio", ("asyncio/",)),
)
EVENT_LOOP_AREA = "uvloop event loop and socket I/O (C)"


def _area(frame: str) -> str:
    if frame.startswith("run_app ("):
        return EVENT_LOOP_AREA
    for name, markers in AREAS:
        if any(marker in frame for marker in markers):
            return name
    return "other"


def summarize(raw_path: Path, top: int = 25) -> dict[str, Any]:
    """Return area, inclusive and leaf shares (percent of samples) from py-spy's raw output.

    Stacks of coroutines resumed by the event loop start at the coroutine,
    not at run_app, so no single root frame covers 100 %.
    """
    inclusive: collections.Counter[str] = collections.Counter()
    leaf: collections.Counter[str] = collections.Counter()
    areas: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw_path.read_text(encoding="utf-8").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = [_short(frame) for frame in stack.split(";")]
        total += count
        leaf[frames[-1]] += count
        areas[_area(frames[-1])] += count
        for frame in set(frames):
            inclusive[frame] += count

    def shares(counter: collections.Counter[str]) -> list[tuple[str, float]]:
        return [(name, round(100 * count / total, 1)) for name, count in counter.most_common(top)]

    return {"samples": total, "area_percent": shares(areas), "inclusive_percent": shares(inclusive),
            "leaf_percent": shares(leaf)}
