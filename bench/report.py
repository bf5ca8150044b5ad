"""Summaries and plots of a Locust run, from its CSV files (--csv PREFIX --csv-full-history)."""

from __future__ import annotations

import csv
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib
import psutil

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first


def _rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _number(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def locust_summary(prefix: Path) -> dict[str, Any]:
    """Return per-request-name totals and the failures from PREFIX_stats.csv and PREFIX_failures.csv."""
    requests = []
    for row in _rows(prefix.with_name(prefix.name + "_stats.csv")):
        requests.append({
            "type": row["Type"], "name": row["Name"], "requests": int(row["Request Count"]),
            "failures": int(row["Failure Count"]), "rps": _number(row["Requests/s"]),
            "p50_ms": _number(row["50%"]), "p95_ms": _number(row["95%"]), "p99_ms": _number(row["99%"]),
            "max_ms": _number(row["Max Response Time"]),
        })
    failures = [
        {"method": row["Method"], "name": row["Name"], "error": row["Error"],
         "occurrences": int(row["Occurrences"])}
        for row in _rows(prefix.with_name(prefix.name + "_failures.csv"))
    ]
    return {"requests": requests, "failures": failures}


def plot_history(prefix: Path, output: Path, title: str,
                 cpu_samples: list[tuple[float, float, float]] | None = None) -> bool:
    """Plot aggregated throughput, p50/p95/p99 and busy cores over time; return False without history."""
    rows = [row for row in _rows(prefix.with_name(prefix.name + "_stats_history.csv"))
            if row["Name"] == "Aggregated"]
    if not rows:
        return False
    start = int(rows[0]["Timestamp"])
    seconds = [int(row["Timestamp"]) - start for row in rows]
    figure, (throughput, latency, cores) = plt.subplots(
        3, 1, sharex=True, figsize=(9, 8), constrained_layout=True, gridspec_kw={"height_ratios": [3, 3, 2]})

    throughput.plot(seconds, [_number(row["Requests/s"]) or 0 for row in rows], label="requests/s")
    throughput.plot(seconds, [_number(row["Failures/s"]) or 0 for row in rows], label="failures/s")
    throughput.set_ylabel("requests/s")
    throughput.legend(loc="lower right")
    throughput.grid(alpha=0.3)
    users = throughput.twinx()
    users.plot(seconds, [int(row["User Count"]) for row in rows], color="grey", linestyle=":", label="users")
    users.set_ylabel("simulated users")

    for column, label in (("50%", "p50"), ("95%", "p95"), ("99%", "p99")):
        latency.plot(seconds, [_number(row[column]) for row in rows], label=label)
    latency.set_ylabel("response time, ms (Locust's rolling window)")
    latency.legend(loc="upper right")
    latency.set_ylim(bottom=0)
    latency.grid(alpha=0.3)

    samples = cpu_samples or []
    cores.plot([at - start for at, _, _ in samples], [own for _, own, _ in samples],
               label="this benchmark (service, Redis, Locust)")
    cores.plot([at - start for at, _, _ in samples], [other for _, _, other in samples],
               label="other processes on the machine")
    cores.set_ylabel("cores busy")
    cores.set_ylim(0, psutil.cpu_count())
    cores.set_xlabel("seconds since start")
    cores.legend(loc="lower left", fontsize="small")
    cores.grid(alpha=0.3)

    started = datetime.fromtimestamp(start, UTC).strftime("%Y-%m-%d %H:%M UTC")
    figure.suptitle(f"{title} ({started})")
    figure.savefig(output, dpi=110)
    plt.close(figure)
    return True


def plot_raw(summary: dict[str, Any], output: Path) -> None:
    """Plot a raw capacity summary: requests/s of each setup, and latency below and at the ceiling."""
    single_worker = summary["service_1_worker"]
    bars = [("service, 1 worker (core 0)", single_worker["ceiling"]["rps"]),
            ("service, 2 workers (cores 0+1)", summary["service_2_workers"]["ceiling"]["rps"])]
    baselines = summary.get("baselines")
    if baselines:
        bars += [("aiohttp minimal JSON (core 0)", baselines["aiohttp_minimal"]["rps"]),
                 ("aiohttp-session + Redis (core 0)", baselines["aiohttp_session"]["rps"]),
                 ("Redis alone: script, -P1 (core 1)", baselines["redis_script"]["pipeline_1"]["rps"]),
                 ("Redis alone: script, -P16 (core 1)", baselines["redis_script"]["pipeline_16"]["rps"])]
    figure, (throughput, latency) = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True,
                                                 gridspec_kw={"width_ratios": [3, 2]})
    labels = [label for label, _ in bars]
    throughput.barh(labels, [value for _, value in bars], color="tab:blue")
    throughput.invert_yaxis()
    throughput.set_xlabel("requests/s (median of runs)")
    for index, (_, value) in enumerate(bars):
        throughput.annotate(f"{value:,.0f}", (value, index), xytext=(4, 0), textcoords="offset points",
                            va="center")
    throughput.set_xlim(right=max(value for _, value in bars) * 1.15)
    throughput.grid(alpha=0.3, axis="x")

    points = [("50 %\nopen loop", single_worker["paced_50"])]
    for share in (50, 90):
        fixed = single_worker.get(f"fixed_{share}")
        if fixed:
            points.append((f"{share} %\nwrk -c{fixed['all_runs'][0]['connections']}", fixed))
    points += [("90 %\nopen loop", single_worker["paced_90"]),
               ("saturation\nwrk -c64", single_worker["ceiling"])]
    positions = range(len(points))
    width = 0.38
    latency.bar([p - width / 2 for p in positions], [figures["p50_us"] / 1000 for _, figures in points],
                width, label="p50")
    latency.bar([p + width / 2 for p in positions], [figures["p99_us"] / 1000 for _, figures in points],
                width, label="p99")
    latency.set_xticks(list(positions), [label for label, _ in points], fontsize="small")
    latency.set_yscale("log")
    latency.set_ylabel("ms (median of runs, log scale)")
    latency.set_title("service, 1 worker: latency by load")
    latency.legend()
    latency.grid(alpha=0.3, axis="y", which="both")
    load = summary["machine"]["load_average"]
    figure.suptitle(f"GET /v1/validate capacity, load average at start {load[0]}")
    figure.savefig(output, dpi=110)
    plt.close(figure)
