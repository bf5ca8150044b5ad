"""The Locust traffic-mix run (`bench/run` or `bench/run locust`).

Starts Redis (single node, or a local 3-master cluster with --cluster),
the service with --workers N, seeds sessions through the API, runs
bench/locustfile.py headless for --run-time, and writes to
bench/results/<timestamp>-locust/: Locust's CSV files and HTML report,
summary.json, results.md and throughput-latency.png. With --repeats N it
runs N times, each in its own folder, and the last folder's results.md
also has the median of every figure over the N runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench import report
from bench.cluster import start_cluster
from bench.harness import (
    BENCH_API_KEY,
    REPO_ROOT,
    CpuSampler,
    machine_facts,
    managed_children,
    results_dir,
    start_redis,
    start_service,
    write_service_config,
)
from bench.seed import SeedPlan, seed_sessions
from service.durations import parse_duration_s

# The policy ChurnUser signs in under: a small limit that rejects, and a
# creation rate limit high enough that churn measures the limit, not 429s.
CHURN_POLICY = """
[policies.bench_churn]
expires_in = "1h"
max_sessions = 3
on_limit = "reject"
max_creates_per_minute = 100000
"""
# Locust gets this long past --run-time to stop its users and write its files.
LOCUST_SLACK_S = 90


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, default=2, help="service worker processes (default 2)")
    parser.add_argument("--cluster", action="store_true", help="a local 3-master Redis Cluster, not one node")
    parser.add_argument("--users", type=int, default=64, help="simulated Locust users (default 64)")
    parser.add_argument("--spawn-rate", type=float, default=16, help="users started per second (default 16)")
    parser.add_argument("--run-time", default="60s", help='Locust run time: "90s", "5m" (default 60s)')
    parser.add_argument("--processes", type=int, default=1,
                        help="Locust worker processes; -1 for one per core (default 1)")
    parser.add_argument("--sessions", type=int, default=20000,
                        help="sessions seeded for ValidateUser, 3 per user (default 20000)")
    parser.add_argument("--validate-weight", type=int, default=8, help="ValidateUser weight (default 8)")
    parser.add_argument("--churn-weight", type=int, default=1, help="ChurnUser weight (default 1)")
    parser.add_argument("--self-service-weight", type=int, default=1,
                        help="SelfServiceUser weight (default 1)")
    parser.add_argument("--log-level", default="info", help="service log level (default info)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs, each from a fresh Redis and service; medians reported (default 1)")


def run(args: argparse.Namespace) -> Path:
    run_time_s = parse_duration_s(args.run_time)
    folder = results_dir("locust")
    print(f"bench: results in {folder}", flush=True)
    summary: dict[str, Any] = {"kind": "locust", "machine": machine_facts(), "settings": vars(args)}
    with managed_children() as children:
        if args.cluster:
            redis_url = start_cluster(children, folder)
        else:
            redis_url, _ = start_redis(children, folder)
        config = write_service_config(folder / "service.toml", log_level=args.log_level, extra=CHURN_POLICY)
        base = start_service(children, folder, redis_url, workers=args.workers, config=config,
                             cluster=args.cluster)

        tokens = folder / "tokens.tsv"
        summary["seeding"] = seed_sessions(SeedPlan(base, -(-args.sessions // 3), 3, 64), tokens)
        print(f"bench: seeded {summary['seeding']['sessions']} sessions; running Locust for {args.run_time}",
              flush=True)

        summary["load_average_before_locust"] = machine_facts()["load_average"]
        locust = children.start("locust", _locust_command(args, base, folder, tokens),
                                log_path=folder / "locust.log")
        with CpuSampler() as sampler:
            try:
                summary["locust_exit_code"] = locust.wait(timeout=run_time_s + LOCUST_SLACK_S)
            except subprocess.TimeoutExpired:
                raise RuntimeError(f"Locust did not stop within {LOCUST_SLACK_S}s after --run-time; "
                                   f"see {folder / 'locust.log'}") from None
        summary["cpu_samples"] = sampler.samples
    summary["load_average_after"] = machine_facts()["load_average"]
    prefix = folder / "locust"
    summary["locust"] = report.locust_summary(prefix)
    if not summary["locust"]["requests"]:
        raise RuntimeError(f"Locust recorded no requests (exit code {summary['locust_exit_code']}); "
                           f"see {folder / 'locust.log'}")
    title = f"Locust mix, {args.workers} worker(s), {'cluster' if args.cluster else 'single Redis'}"
    summary["plot"] = "throughput-latency.png" if report.plot_history(
        prefix, folder / "throughput-latency.png", title, summary["cpu_samples"]) else None
    (folder / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return folder


def _locust_command(args: argparse.Namespace, base: str, folder: Path, tokens: Path) -> list[str]:
    command = [
        sys.executable, "-m", "locust", "-f", str(REPO_ROOT / "bench" / "locustfile.py"), "--headless",
        "--host", base, "--users", str(args.users), "--spawn-rate", str(args.spawn_rate),
        "--run-time", args.run_time, "--stop-timeout", "5", "--csv", str(folder / "locust"),
        "--csv-full-history", "--html", str(folder / "report.html"), "--only-summary",
        "--tokens-file", str(tokens), "--api-key", BENCH_API_KEY,
        "--validate-weight", str(args.validate_weight), "--churn-weight", str(args.churn_weight),
        "--self-service-weight", str(args.self_service_weight),
    ]
    if args.processes != 1:
        command += ["--processes", str(args.processes)]
    return command


def _request_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| Request | Count | Failures | req/s | p50 ms | p95 ms | p99 ms |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        request = f"{row['type']} {row['name']}".strip()
        lines.append(f"| {request} | {row['requests']:g} | {row['failures']:g} | "
                     f"{row['rps']:.1f} | {row['p50_ms']:g} | {row['p95_ms']:g} | {row['p99_ms']:g} |")
    return lines


def _run_line(summary: dict[str, Any]) -> str:
    samples = summary["cpu_samples"]
    own = statistics.fmean(sample[1] for sample in samples) if samples else float("nan")
    other = statistics.fmean(sample[2] for sample in samples) if samples else float("nan")
    return (f"load average before Locust {summary['load_average_before_locust'][0]}, after "
            f"{summary['load_average_after'][0]}; cores busy with this run {own:.2f}, "
            f"with other work {other:.2f} (means)")


def _median_rows(summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return one row per request name with the median of each figure over the runs that had it."""
    by_name: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for summary in summaries:
        for row in summary["locust"]["requests"]:
            by_name.setdefault((row["type"], row["name"]), []).append(row)
    medians = []
    for (kind, name), rows in by_name.items():
        median: dict[str, Any] = {"type": kind, "name": name}
        for field in ("requests", "failures", "rps", "p50_ms", "p95_ms", "p99_ms"):
            median[field] = statistics.median(row[field] or 0 for row in rows)
        medians.append(median)
    return medians


def write_results(folder: Path, summaries: list[dict[str, Any]]) -> str:
    """Write folder/results.md for the last run, with medians when there are several; return the text."""
    lines = [f"Run {folder.name}:", "", *_request_table(summaries[-1]["locust"]["requests"]), "",
             _run_line(summaries[-1])]
    if len(summaries) > 1:
        lines += ["", f"Medians over {len(summaries)} runs:", "", *_request_table(_median_rows(summaries)),
                  "", *(f"- {_run_line(summary)}" for summary in summaries)]
    text = "\n".join(lines) + "\n"
    (folder / "results.md").write_text(text, encoding="utf-8")
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/run locust", description=__doc__.split("\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    summaries = []
    for _ in range(max(1, args.repeats)):
        folder = run(args)
        summaries.append(json.loads((folder / "summary.json").read_text(encoding="utf-8")))
        print(write_results(folder, summaries[-1:]), flush=True)
    if len(summaries) > 1:
        print(write_results(folder, summaries), flush=True)
    print(f"bench: done; results in {folder}")
    return 0
