"""Raw capacity of GET /v1/validate on one pinned core, with baselines (`bench/run raw`).

Layout on the 2-core machine: the service worker is pinned to core 0
(taskset -c 0); Redis and the load generator share core 1. Steps, each
repeated `--repeats` times and summarized by the median:

1. Ceiling: wrk, closed loop, 64 connections, tokens rotating over every
   seeded session. Its requests/s is the validate-and-extend capacity of
   one service core; its p99 is the latency at saturation.
2. Latency below the ceiling: the open-loop pacer (bench/pacer.py) at
   50 % and 90 % of the measured ceiling, latency from the scheduled time.
3. `--workers 2` on cores 0 and 1: wrk, Redis and the second worker then
   share core 1.
4. Baselines on core 0 with the same wrk settings: a minimal aiohttp JSON
   handler, and aiohttp-session with RedisStorage (load and save per
   request). Then redis-benchmark runs validate_session.lua by EVALSHA
   against a real seeded session (Redis on core 1, redis-benchmark on
   core 0).
5. Optionally (`--profile`), a py-spy profile of the pinned worker at
   saturation.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis

from bench import loadgen, profile, report
from bench.harness import (
    Children,
    machine_facts,
    managed_children,
    require_tool,
    results_dir,
    start_redis,
    start_service,
    wait_for_port,
    write_service_config,
)
from bench.seed import SeedPlan, read_tokens, seed_sessions
from service.config import ServiceSettings
from service.embedded import free_port
from service.keys import user_keys
from service.scripts import script_source
from service.store import EXTEND_MIN_STEP_RATIO, MODE_ACTIVITY
from service.tokens import SID_LENGTH, TAG_LENGTH, hash_secret

SERVICE_CORE = "0"
LOAD_CORE = "1"
BOTH_CORES = "0,1"
WRK_KEYS = ("rps", "p50_us", "p99_us", "p999_us", "errors")
PACER_KEYS = ("achieved_rps", "p50_us", "p90_us", "p99_us", "p999_us", "max_send_lag_ms", "errors",
              "pacer_cpu_cores")
# Connection counts tried when looking for a closed-loop load near a target rate.
PROBE_CONNECTIONS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48)
REDIS_BENCH_KEYS = ("rps", "p50_ms", "p99_ms")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sessions", type=int, default=30000,
                        help="sessions to seed, 3 per user; wrk rotates over all (default 30000)")
    parser.add_argument("--duration-s", type=int, default=10, help="seconds per measured run (default 10)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs per figure; medians reported (default 3)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    parser.add_argument("--log-level", default="info",
                        help="service log level; the service default, info, logs every request")
    parser.add_argument("--skip-baselines", action="store_true", help="measure the service only")
    parser.add_argument("--profile", action="store_true",
                        help="also record a py-spy profile of the pinned worker at saturation")


def run(args: argparse.Namespace) -> Path:
    for tool in ("wrk", "taskset", "redis-benchmark"):
        require_tool(tool)
    folder = results_dir("raw")
    summary: dict[str, Any] = {"kind": "raw", "machine": machine_facts(), "settings": vars(args)}
    print(f"bench: results in {folder}", flush=True)
    with managed_children() as children:
        redis_url, redis_port = start_redis(children, folder, cpus=LOAD_CORE)
        summary["service_1_worker"] = _one_worker(children, folder, redis_url, args)
        tokens = folder / "tokens.tsv"
        summary["service_2_workers"] = _two_workers(children, folder, redis_url, tokens, args)
        if not args.skip_baselines:
            summary["baselines"] = _baselines(children, folder, redis_url, redis_port, tokens, args)
    summary["machine"]["load_average_end"] = machine_facts()["load_average"]
    summary["ratios"] = _ratios(summary)
    (folder / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    (folder / "results.md").write_text(render(summary), encoding="utf-8")
    report.plot_raw(summary, folder / "capacity.png")
    print(render(summary), flush=True)
    return folder


def _one_worker(children: Children, folder: Path, redis_url: str, args: argparse.Namespace) -> dict[str, Any]:
    config = write_service_config(folder / "service.toml", log_level=args.log_level)
    base = start_service(children, folder, redis_url, workers=1, config=config, cpus=SERVICE_CORE,
                         name="service-1w")
    tokens = folder / "tokens.tsv"
    seeding = seed_sessions(SeedPlan(base, -(-args.sessions // 3), 3, 64), tokens)
    url = base + "/v1/validate"
    print(f"bench: seeded {seeding['sessions']} sessions; measuring the ceiling", flush=True)
    ceiling = _wrk_runs(url, tokens, args, cpus=LOAD_CORE)
    result: dict[str, Any] = {"seeding": seeding, "ceiling": ceiling}
    for share in (0.5, 0.9):
        rate = ceiling["rps"] * share
        print(f"bench: open loop at {share:.0%} of the ceiling ({rate:.0f} requests/s)", flush=True)
        runs = [loadgen.run_pacer(url, tokens, rate=rate, duration_s=args.duration_s, cpus=LOAD_CORE)
                for _ in range(args.repeats)]
        result[f"paced_{int(share * 100)}"] = loadgen.medians(runs, PACER_KEYS)
        connections = _connections_for(url, tokens, rate)
        print(f"bench: closed loop near {share:.0%} of the ceiling: wrk -c{connections}", flush=True)
        result[f"fixed_{int(share * 100)}"] = _wrk_runs(url, tokens, args, cpus=LOAD_CORE,
                                                         connections=connections)
    if args.profile:
        pid = _worker_pid(children)
        result["profile"] = profile.record_during(
            pid, folder / "profile-validate", lambda: loadgen.run_wrk(
                url, tokens, connections=args.connections, duration_s=args.duration_s, cpus=LOAD_CORE))
    children.stop_all_named("service-1w")
    return result


def _two_workers(children: Children, folder: Path, redis_url: str, tokens: Path,
                 args: argparse.Namespace) -> dict[str, Any]:
    config = folder / "service.toml"
    base = start_service(children, folder, redis_url, workers=2, config=config, cpus=BOTH_CORES,
                         name="service-2w")
    print("bench: two workers on both cores; wrk shares core 1 with Redis and a worker", flush=True)
    ceiling = _wrk_runs(base + "/v1/validate", tokens, args, cpus=LOAD_CORE)
    children.stop_all_named("service-2w")
    return {"ceiling": ceiling}


def _wrk_runs(url: str, tokens: Path, args: argparse.Namespace, *, cpus: str,
              mode: str = "bearer", connections: int | None = None) -> dict[str, Any]:
    connections = connections or args.connections
    # One unmeasured second warms connections, caches and the allocator.
    loadgen.run_wrk(url, tokens, connections=connections, duration_s=1, cpus=cpus, mode=mode)
    runs = [loadgen.run_wrk(url, tokens, connections=connections, duration_s=args.duration_s,
                            cpus=cpus, mode=mode) for _ in range(args.repeats)]
    return loadgen.medians(runs, WRK_KEYS)


def _connections_for(url: str, tokens: Path, target_rps: float) -> int:
    """Return the wrk connection count whose closed-loop throughput comes nearest target_rps.

    Probes of 3 s each go from 1 connection up and stop at the first count
    that reaches the target, because the count just below it may be nearer.
    """
    best, best_gap = 1, float("inf")
    for connections in PROBE_CONNECTIONS:
        rps = loadgen.run_wrk(url, tokens, connections=connections, duration_s=3, cpus=LOAD_CORE)["rps"]
        if abs(rps - target_rps) < best_gap:
            best, best_gap = connections, abs(rps - target_rps)
        if rps >= target_rps:
            break
    return best


def _worker_pid(children: Children) -> int:
    """Return the PID of the pinned single worker (taskset execs the service in place)."""
    return children.pid_of("service-1w")


def _baselines(children: Children, folder: Path, redis_url: str, redis_port: int, tokens: Path,
               args: argparse.Namespace) -> dict[str, Any]:
    baselines: dict[str, Any] = {}
    print("bench: baseline: minimal aiohttp JSON handler", flush=True)
    port = _start_baseline(children, folder, "minimal", [])
    baselines["aiohttp_minimal"] = _wrk_runs(f"http://127.0.0.1:{port}/v1/validate", tokens, args,
                                             cpus=LOAD_CORE)
    children.stop_all_named("baseline-minimal")

    print("bench: baseline: aiohttp-session with RedisStorage", flush=True)
    cookies = folder / "aiohttp-session-cookies.tsv"
    subprocess.run([sys.executable, "-m", "bench.baselines", "seed-aiohttp-session", "--redis-url", redis_url,
                    "--sessions", str(args.sessions), "--tokens", str(cookies)], check=True, timeout=600)
    port = _start_baseline(children, folder, "aiohttp-session", ["--redis-url", redis_url])
    baselines["aiohttp_session"] = _wrk_runs(f"http://127.0.0.1:{port}/v1/validate", cookies, args,
                                             cpus=LOAD_CORE, mode="cookie:AIOHTTP_SESSION")
    children.stop_all_named("baseline-aiohttp-session")

    print("bench: baseline: redis-benchmark running validate_session.lua", flush=True)
    baselines["redis_script"] = _redis_script_baseline(redis_url, redis_port, tokens, args)
    return baselines


def _start_baseline(children: Children, folder: Path, kind: str, extra: list[str]) -> int:
    port = free_port()
    process = children.start(f"baseline-{kind}", [sys.executable, "-m", "bench.baselines", kind,
                                                  "--port", str(port), *extra],
                             log_path=folder / f"baseline-{kind}.log", cpus=SERVICE_CORE)
    wait_for_port(port, process)
    return port


def validate_command(redis_url: str, tokens: Path) -> list[bytes]:
    """Build EVALSHA of validate_session.lua for a real seeded session, as the service sends it.

    The secret hash travels in argv, which cannot carry a NUL byte, and
    redis-benchmark echoes it into its CSV output, so the first session
    whose hash has no NUL, line break, quote or comma is used. The call is checked once to
    take the success path before it is handed to redis-benchmark.
    """
    client = redis.Redis.from_url(redis_url)
    sha = client.script_load(script_source("validate_session"))
    defaults = ServiceSettings()
    shared = [defaults.expiry_grace * 1000, defaults.events_max_length, defaults.event_retention * 1000,
              defaults.device_retention * 1000]
    for token, user_agent in read_tokens(tokens):
        tag, sid = token[:TAG_LENGTH], token[TAG_LENGTH:TAG_LENGTH + SID_LENGTH]
        secret_hash = hash_secret(token.split(".", 1)[1])
        if any(byte in secret_hash for byte in b'\0\r\n",'):
            continue
        keys = user_keys(defaults.key_prefix, tag).script_keys()
        script_args: list[Any] = [
            *shared, sid, secret_hash, MODE_ACTIVITY, EXTEND_MIN_STEP_RATIO, 0, "127.0.0.0/24",
            user_agent, defaults.invalid_secret_window * 1000, defaults.invalid_secret_threshold]
        reply = client.evalsha(sha, len(keys), *keys, *script_args)
        if reply[0] != 0:
            raise RuntimeError(f"validate_session.lua returned status {reply[0]} for a seeded session")
        client.close()
        return [_arg(part) for part in ("EVALSHA", sha, len(keys), *keys, *script_args)]
    raise RuntimeError(f"no session in {tokens} has a secret hash that argv and CSV can carry")


def _arg(value: object) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode("utf-8")


def _redis_script_baseline(redis_url: str, redis_port: int, tokens: Path,
                           args: argparse.Namespace) -> dict[str, Any]:
    command = validate_command(redis_url, tokens)
    result = {}
    for pipeline in (1, 16):
        runs = [loadgen.run_redis_benchmark(redis_port, command, connections=args.connections,
                                            requests=300_000 if pipeline == 1 else 1_000_000,
                                            pipeline=pipeline, cpus=SERVICE_CORE)
                for _ in range(args.repeats)]
        result[f"pipeline_{pipeline}"] = loadgen.medians(runs, REDIS_BENCH_KEYS)
    return result


def _ratios(summary: dict[str, Any]) -> dict[str, float]:
    service_rps = summary["service_1_worker"]["ceiling"]["rps"]
    ratios = {"two_workers_over_one": round(summary["service_2_workers"]["ceiling"]["rps"] / service_rps, 2)}
    baselines = summary.get("baselines")
    if baselines:
        ratios["service_over_aiohttp_minimal"] = round(service_rps / baselines["aiohttp_minimal"]["rps"], 2)
        ratios["service_over_aiohttp_session"] = round(service_rps / baselines["aiohttp_session"]["rps"], 2)
        for name in ("pipeline_1", "pipeline_16"):
            ratios[f"redis_script_{name}_over_service"] = round(
                baselines["redis_script"][name]["rps"] / service_rps, 2)
    return ratios


def _ms(microseconds: float) -> str:
    return f"{microseconds / 1000:.2f}"


def render(summary: dict[str, Any]) -> str:
    """Render the medians as Markdown tables."""
    single_worker = summary["service_1_worker"]
    lines = [
        f"Load average at start {summary['machine']['load_average']}, "
        f"at end {summary['machine'].get('load_average_end')}; medians of "
        f"{single_worker['ceiling']['runs']} runs of {summary['settings']['duration_s']} s.",
        "",
        "| Setup | Load generator | req/s | p50 ms | p99 ms | p99.9 ms | errors | load average (1 min) | "
        "cores busy with other work |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def wrk_row(name: str, generator: str, figures: dict[str, Any]) -> None:
        lines.append(f"| {name} | {generator} | {figures['rps']:.0f} | {_ms(figures['p50_us'])} | "
                     f"{_ms(figures['p99_us'])} | {_ms(figures['p999_us'])} | {figures['errors']:.0f} | "
                     f"{loadgen.load_cell(figures)} |")

    connections = summary["settings"]["connections"]
    wrk_row("service, 1 worker, core 0", f"wrk -c{connections} (saturation)", single_worker["ceiling"])
    for share in (50, 90):
        paced = single_worker[f"paced_{share}"]
        lines.append(
            f"| service, 1 worker, core 0 | pacer, open loop at {share} % ({paced['achieved_rps']:.0f} req/s "
            f"achieved) | {paced['achieved_rps']:.0f} | {_ms(paced['p50_us'])} | {_ms(paced['p99_us'])} | "
            f"{_ms(paced['p999_us'])} | {paced['errors']:.0f} (pacer used {paced['pacer_cpu_cores']} core, "
            f"cores 0 and 1 busy {paced['core_busy'][0]} and {paced['core_busy'][1]}) | "
            f"{loadgen.load_cell(paced)} |")
    for share in (50, 90):
        fixed = single_worker.get(f"fixed_{share}")
        if fixed:
            connections_used = fixed["all_runs"][0]["connections"]
            wrk_row("service, 1 worker, core 0",
                    f"wrk -c{connections_used}, closed loop near {share} %", fixed)
    wrk_row("service, 2 workers, cores 0+1", f"wrk -c{connections}, shares core 1",
            summary["service_2_workers"]["ceiling"])
    baselines = summary.get("baselines")
    if baselines:
        wrk_row("aiohttp minimal JSON, core 0", f"wrk -c{connections}", baselines["aiohttp_minimal"])
        wrk_row("aiohttp-session + RedisStorage, core 0", f"wrk -c{connections}",
                baselines["aiohttp_session"])
        for script in baselines["redis_script"].values():
            pipeline = script["all_runs"][0]["pipeline"]
            lines.append(
                f"| Redis alone, validate_session.lua by EVALSHA, core 1 | redis-benchmark -c{connections} "
                f"-P{pipeline}, core 0 | {script['rps']:.0f} | {script['p50_ms']:.2f} | "
                f"{script['p99_ms']:.2f} | | | {loadgen.load_cell(script)} |")
    lines += ["", "| Ratio | Value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in summary["ratios"].items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/run raw", description=__doc__.split("\n")[0])
    add_arguments(parser)
    started = time.monotonic()
    folder = run(parser.parse_args(argv))
    print(f"bench: done in {time.monotonic() - started:.0f} s; results in {folder}")
    return 0
