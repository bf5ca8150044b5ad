"""Load generator runs shared by the raw and memory benchmarks: wrk, the pacer, redis-benchmark.

Each run records the load average before it started, since other work
on the machine changes what one core can do. Figures are summarized as
the median of the repeated runs.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.harness import REPO_ROOT, CpuMeter, load_average

WRK_SCRIPT = REPO_ROOT / "bench" / "wrk_tokens.lua"
# A run that has not finished this long after its nominal duration is stopped.
RUN_SLACK_S = 60
# Seconds between runs, so one run's tail does not overlap the next.
PAUSE_S = 2.0


def run_wrk(url: str, tokens: Path, *, connections: int, duration_s: int, cpus: str | None,
            mode: str = "bearer", threads: int = 1) -> dict[str, Any]:
    """Run wrk once with the token-rotating script; return its counts and latencies (us)."""
    args = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration_s}s", "--timeout", "5s",
            "-s", str(WRK_SCRIPT), url, "--", str(tokens), mode]
    if cpus is not None:
        args = ["taskset", "-c", cpus, *args]
    load = load_average()
    meter = CpuMeter()
    result = subprocess.run(args, capture_output=True, text=True, timeout=duration_s + RUN_SLACK_S,
                            check=False)
    cpu = meter.read()
    marked = [line for line in result.stdout.splitlines() if line.startswith("WRK_JSON ")]
    if result.returncode != 0 or not marked:
        raise RuntimeError(f"wrk failed with code {result.returncode}: {result.stderr.strip()[-500:]}")
    run = json.loads(marked[-1].removeprefix("WRK_JSON "))
    run["rps"] = round(run["requests"] / (run["duration_us"] / 1e6), 1)
    run["errors"] = sum(run[key] for key in ("connect_errors", "read_errors", "write_errors",
                                             "status_errors", "timeouts"))
    run["connections"] = connections
    run["load_before"] = load
    run.update(cpu)
    time.sleep(PAUSE_S)
    return run


def run_pacer(url: str, tokens: Path, *, rate: float, duration_s: int, cpus: str | None,
              connections: int = 64) -> dict[str, Any]:
    """Run the open-loop pacer once at rate requests/s; return its summary."""
    args = [sys.executable, "-m", "bench.pacer", url, str(tokens), "--rate", f"{rate:.0f}",
            "--duration-s", str(duration_s), "--connections", str(connections)]
    if cpus is not None:
        args = ["taskset", "-c", cpus, *args]
    load = load_average()
    meter = CpuMeter()
    result = subprocess.run(args, capture_output=True, text=True, cwd=REPO_ROOT,
                            timeout=duration_s + RUN_SLACK_S, check=False)
    cpu = meter.read()
    if result.returncode != 0:
        raise RuntimeError(f"pacer failed with code {result.returncode}: {result.stderr.strip()[-500:]}")
    run: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    run["load_before"] = load
    run.update(cpu)
    time.sleep(PAUSE_S)
    return run


def run_redis_benchmark(port: int, command: list[bytes], *, connections: int, requests: int,
                        pipeline: int, cpus: str | None) -> dict[str, Any]:
    """Run redis-benchmark once with one custom command; return requests/s and latencies (ms)."""
    args: list[bytes | str] = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-c", str(connections),
                               "-n", str(requests), "-P", str(pipeline), "--csv", *command]
    if cpus is not None:
        args = ["taskset", "-c", cpus, *args]
    load = load_average()
    meter = CpuMeter()
    result = subprocess.run(args, capture_output=True, timeout=600, check=False)
    cpu = meter.read()
    text = result.stdout.decode("utf-8", "replace")
    rows = list(csv.reader(io.StringIO(text)))
    if result.returncode != 0 or len(rows) < 2:
        raise RuntimeError(f"redis-benchmark failed with code {result.returncode}: "
                           f"{result.stderr.decode('utf-8', 'replace')[-500:]}")
    # The first column repeats the command, whose binary arguments can break
    # the CSV quoting; the figures are the last columns.
    header, values = rows[0][1:], rows[-1][-(len(rows[0]) - 1):]
    row = dict(zip(header, values, strict=True))
    time.sleep(PAUSE_S)
    return {
        "rps": float(row["rps"]), "p50_ms": float(row["p50_latency_ms"]),
        "p99_ms": float(row["p99_latency_ms"]), "max_ms": float(row["max_latency_ms"]),
        "connections": connections, "pipeline": pipeline, "requests": requests, "load_before": load, **cpu,
    }


def medians(runs: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, Any]:
    """Return the median of each key over runs, with the runs and their load averages."""
    summary: dict[str, Any] = {key: round(statistics.median(run[key] for run in runs), 1) for key in keys}
    summary["runs"] = len(runs)
    summary["load_1m_range"] = [min(run["load_before"][0] for run in runs),
                                max(run["load_before"][0] for run in runs)]
    summary["other_cores_range"] = [min(run["other_cores"] for run in runs),
                                    max(run["other_cores"] for run in runs)]
    summary["core_busy"] = [round(statistics.median(cores), 2)
                            for cores in zip(*(run["core_busy"] for run in runs), strict=True)]
    summary["all_runs"] = runs
    return summary


def load_cell(figures: dict[str, Any]) -> str:
    """Return the load columns of a results table: 1-minute load average and other processes' cores."""
    load_low, load_high = figures["load_1m_range"]
    other_low, other_high = figures["other_cores_range"]
    return f"{load_low}–{load_high} | {other_low}–{other_high}"
