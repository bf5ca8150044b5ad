"""Memory per session at scale (`bench/capacity`).

Loads sessions through the service (POST /v1/sessions, 3 per user) into
a Debian redis-server (jemalloc) without persistence, and measures Redis
`used_memory` two ways:

- deltas: used_memory before the load and after it, then after deleting
  each kind of key in turn (creation counters, the global event stream,
  the users' event lists, markers, device registries, indexes, records).
  Each step's drop is exactly what that kind of key costs, overheads of
  the key space and expiry table included.
- sampling: MEMORY USAGE (SAMPLES 0, every element) of every key of a
  random sample of users, as a cross-check per key kind.

It also measures GET /v1/validate with 1 thousand sessions loaded and
again at the full count, with the same wrk settings as `bench/run raw`
(one worker pinned to core 0, wrk and Redis on core 1). Last, it projects
the measured bytes to 100 million sessions.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import redis

from bench import loadgen
from bench.harness import (
    machine_facts,
    managed_children,
    require_tool,
    results_dir,
    start_redis,
    start_service,
    write_service_config,
)
from bench.seed import SeedPlan, seed_sessions
from service.keys import HASH_MAX_LISTPACK_VALUE, global_events_key, user_keys
from service.tokens import SID_LENGTH, TAG_LENGTH

SESSIONS_PER_USER = 3
SMALL_SESSION_COUNT = 1000
# wrk builds every request up front, so at scale it rotates over a random sample.
WRK_TOKEN_SAMPLE = 100_000
SAMPLED_USERS = 2000
PROJECTED_SESSIONS = 100_000_000
STATE_TARGET_BYTES = 300
FRESH_SESSION_TARGET_BYTES = 450
# Key kinds in deletion order, creation counters first; the last three are the session state.
KEY_KINDS = ("c", "global_stream", "e", "x", "d", "i", "s")
KIND_LABELS = {
    "s": "session records ss:{tag}:s", "i": "per-user index ss:{tag}:i",
    "d": "device registry ss:{tag}:d", "x": "markers ss:{tag}:x", "e": "user events ss:{tag}:e",
    "c": "creation counters ss:{tag}:c", "global_stream": "global stream ss:events",
}
WRK_KEYS = ("rps", "p50_us", "p99_us", "p999_us", "errors")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sessions", type=int, default=1_000_000,
                        help="sessions to load, 3 per user (default 1000000)")
    parser.add_argument("--loader-processes", type=int, default=2, help="loader processes (default 2)")
    parser.add_argument("--concurrency", type=int, default=128,
                        help="requests in flight per loader process (default 128)")
    parser.add_argument("--workers", type=int, default=2, help="service workers used for loading (default 2)")
    parser.add_argument("--duration-s", type=int, default=10, help="seconds per wrk run (default 10)")
    parser.add_argument("--repeats", type=int, default=3, help="wrk runs per figure (default 3)")
    parser.add_argument("--log-level", default="info", help="service log level (default info)")
    parser.add_argument("--hash-max-listpack-value", type=int, default=HASH_MAX_LISTPACK_VALUE,
                        help=f"Redis setting of that name in bytes (default {HASH_MAX_LISTPACK_VALUE}, "
                             "as the embedded server; Redis's own default is 64)")


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def run(args: argparse.Namespace) -> Path:
    for tool in ("wrk", "taskset"):
        require_tool(tool)
    folder = results_dir("capacity")
    print(f"bench: results in {folder}", flush=True)
    summary: dict[str, Any] = {"kind": "capacity", "machine": machine_facts(), "settings": vars(args)}
    limit = args.hash_max_listpack_value
    with managed_children() as children:
        config = write_service_config(folder / "service.toml", log_level=args.log_level)
        small_url, _ = start_redis(children, folder, cpus="1", hash_max_listpack_value=limit, name="redis-1k")
        small_probe = start_service(children, folder, small_url, workers=1, config=config, cpus="0",
                                    name="service-probe-1k")
        small_tokens = folder / "tokens-1k.tsv"
        seed_sessions(SeedPlan(small_probe, math.ceil(SMALL_SESSION_COUNT / SESSIONS_PER_USER),
                               SESSIONS_PER_USER, 64), small_tokens)

        redis_url, _ = start_redis(children, folder, cpus="1", hash_max_listpack_value=limit)
        client = redis.Redis.from_url(redis_url)
        loader = start_service(children, folder, redis_url, workers=args.workers, config=config,
                               name="service-loader")
        probe = start_service(children, folder, redis_url, workers=1, config=config, cpus="0",
                              name="service-probe")
        summary["used_memory_empty"] = used_memory(client)
        users = math.ceil(args.sessions / SESSIONS_PER_USER)
        print(f"bench: loading {users * SESSIONS_PER_USER} sessions", flush=True)
        tokens = folder / "tokens.tsv"
        summary["load"] = seed_sessions(SeedPlan(loader, users, SESSIONS_PER_USER, args.concurrency), tokens,
                                        processes=args.loader_processes, seed=1000)
        summary["load"]["load_average_after"] = machine_facts()["load_average"]
        print(f"bench: loaded at {summary['load']['sessions_per_s']} sessions/s", flush=True)
        children.stop_all_named("service-loader")

        summary["sessions"] = summary["load"]["sessions"]
        summary["used_memory_loaded"] = used_memory(client)
        info = client.info("memory")
        summary["memory_info_loaded"] = {key: info[key] for key in (
            "used_memory", "used_memory_rss", "mem_fragmentation_ratio", "allocator_frag_ratio")}
        # Counters live 60 s, so they are measured before the later steps outlast them.
        counters = delete_and_measure(client, ("c",))
        summary["sampled"] = sample_memory_usage(client, [tokens])

        sample = folder / "tokens-sample.tsv"
        _write_sample(tokens, sample, WRK_TOKEN_SAMPLE)
        print("bench: validate latency, 1 thousand and all sessions, runs interleaved", flush=True)
        summary["validate_at_1k"], summary["validate_at_full"] = _validate_interleaved(
            (small_probe, small_tokens), (probe, sample), args)
        children.stop_all_named("service-probe")

        summary["deltas"] = {**counters, **delete_and_measure(client, KEY_KINDS[1:])}
        client.close()
    summary["per_session"] = per_session(summary)
    summary["projection"] = project(summary["per_session"], summary["deltas"])
    (folder / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    (folder / "results.md").write_text(render(summary), encoding="utf-8")
    print(render(summary), flush=True)
    return folder


def _validate_interleaved(small: tuple[str, Path], large: tuple[str, Path],
                          args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run wrk against the 1-thousand and the full store in turn, so drifting load hits both alike."""
    runs: dict[int, list[dict[str, Any]]] = {0: [], 1: []}

    # One unmeasured second each warms connections and caches.
    for base, tokens in (small, large):
        loadgen.run_wrk(base + "/v1/validate", tokens, connections=64, duration_s=1, cpus="1")
    for _ in range(args.repeats):
        for index, (base, tokens) in enumerate((small, large)):
            runs[index].append(loadgen.run_wrk(base + "/v1/validate", tokens, connections=64,
                                               duration_s=args.duration_s, cpus="1"))
    return loadgen.medians(runs[0], WRK_KEYS), loadgen.medians(runs[1], WRK_KEYS)


def _write_sample(tokens: Path, sample: Path, count: int) -> None:
    lines = tokens.read_text(encoding="utf-8").splitlines()
    chosen = random.Random(7).sample(lines, min(count, len(lines)))
    sample.write_text("\n".join(chosen) + "\n", encoding="utf-8")


def _sessions_by_tag(token_files: list[Path]) -> dict[str, list[str]]:
    by_tag: dict[str, list[str]] = defaultdict(list)
    for path in token_files:
        for line in path.read_text(encoding="utf-8").splitlines():
            if line:
                by_tag[line[:TAG_LENGTH]].append(line[TAG_LENGTH:TAG_LENGTH + SID_LENGTH])
    return by_tag


def sample_memory_usage(client: redis.Redis, token_files: list[Path]) -> dict[str, Any]:
    """Return MEMORY USAGE per key kind over every key of SAMPLED_USERS random users."""
    by_tag = _sessions_by_tag(token_files)
    tags = random.Random(11).sample(sorted(by_tag), min(SAMPLED_USERS, len(by_tag)))
    totals: dict[str, int] = defaultdict(int)
    counts: dict[str, int] = defaultdict(int)
    sessions = 0
    pipeline = client.pipeline(transaction=False)
    names: list[str] = []
    for tag in tags:
        keys = user_keys("ss:", tag)
        sessions += len(by_tag[tag])
        for kind, key in (("s", keys.sessions), ("i", keys.index), ("d", keys.devices), ("x", keys.markers),
                          ("e", keys.events), ("c", keys.creations)):
            pipeline.memory_usage(key, samples=0)
            names.append(kind)
    for kind, usage in zip(names, pipeline.execute(), strict=True):
        if usage is not None:
            totals[kind] += usage
            counts[kind] += 1
    encodings = _encodings(client, tags)
    return {
        "users": len(tags), "sessions": sessions,
        "bytes_per_session": {kind: round(totals[kind] / sessions, 1) for kind in totals},
        "bytes_per_key": {kind: round(totals[kind] / counts[kind], 1) for kind in totals},
        "keys_found": dict(counts), "encodings": encodings,
    }


def _encodings(client: redis.Redis, tags: list[str]) -> dict[str, dict[str, int]]:
    """Count OBJECT ENCODING per key kind: a hash whose values pass hash-max-listpack-value is a hashtable."""
    pipeline = client.pipeline(transaction=False)
    names: list[str] = []
    for tag in tags:
        keys = user_keys("ss:", tag)
        for kind, key in (("s", keys.sessions), ("i", keys.index), ("d", keys.devices), ("x", keys.markers),
                          ("e", keys.events)):
            pipeline.object("encoding", key)
            names.append(kind)
    found: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for kind, encoding in zip(names, pipeline.execute(raise_on_error=False), strict=True):
        if isinstance(encoding, bytes):
            found[kind][encoding.decode()] += 1
    return {kind: dict(counts) for kind, counts in found.items()}


def _kind_of(key: bytes) -> str | None:
    if key == global_events_key("ss:").encode():
        return "global_stream"
    if not key.startswith(b"ss:{"):
        return None
    kind = key.rsplit(b"}:", 1)[-1].decode()
    return kind if kind in KIND_LABELS else None


def delete_and_measure(client: redis.Redis, kinds: tuple[str, ...]) -> dict[str, Any]:
    """Delete each key kind in turn; return the used_memory drop and key count of each."""
    keys: dict[str, list[bytes]] = defaultdict(list)
    for key in client.scan_iter(match="ss:*", count=10_000):
        kind = _kind_of(key)
        if kind is not None:
            keys[kind].append(key)
    deltas: dict[str, Any] = {}
    for kind in kinds:
        before = used_memory(client)
        batch = keys.get(kind, [])
        for start in range(0, len(batch), 1000):
            client.delete(*batch[start:start + 1000])
        # DEL frees synchronously; a short pause lets INFO settle.
        time.sleep(0.5)
        deltas[kind] = {"keys": len(batch), "bytes": before - used_memory(client)}
    deltas["used_memory_left"] = used_memory(client)
    return deltas


def per_session(summary: dict[str, Any]) -> dict[str, Any]:
    sessions = summary["sessions"]
    deltas = summary["deltas"]
    per = {kind: round(deltas[kind]["bytes"] / sessions, 1) for kind in ("s", "i", "d", "e", "x")}
    state = per["s"] + per["i"] + per["d"]
    counters = deltas["c"]
    counter_bytes = counters["bytes"] / counters["keys"] if counters["keys"] else 0.0
    # A user who signed in has a counter for 60 s, shared by that user's sessions.
    counter_per_session = counter_bytes / SESSIONS_PER_USER
    fresh = state + per["e"] + per["x"] + counter_per_session
    return {
        **per, "state": round(state, 1), "counter_bytes_per_user": round(counter_bytes, 1),
        "counter_per_fresh_session": round(counter_per_session, 1), "fresh_session_total": round(fresh, 1),
        "used_memory_delta_per_session": round(
            (summary["used_memory_loaded"] - summary["used_memory_empty"]) / sessions, 1),
        "state_target_met": state <= STATE_TARGET_BYTES,
        "fresh_session_target_met": fresh <= FRESH_SESSION_TARGET_BYTES,
    }


def project(per: dict[str, Any], deltas: dict[str, Any]) -> dict[str, Any]:
    """Project to PROJECTED_SESSIONS; the global stream is capped, so it does not grow."""
    steady = per["state"] + per["e"] + per["x"]
    total = steady * PROJECTED_SESSIONS + deltas["global_stream"]["bytes"]
    return {"sessions": PROJECTED_SESSIONS, "bytes_per_session_steady": round(steady, 1),
            "total_bytes": int(total), "total_gib": round(total / 2**30, 1)}


def render(summary: dict[str, Any]) -> str:
    per = summary["per_session"]
    deltas = summary["deltas"]
    sampled = summary["sampled"]["bytes_per_session"]
    fragmentation = summary["memory_info_loaded"]["mem_fragmentation_ratio"]
    lines = [
        f"{summary['sessions']} sessions loaded at {summary['load']['sessions_per_s']} sessions/s "
        f"({summary['load']['seconds']} s, {summary['settings']['loader_processes']} loader processes x "
        f"{summary['settings']['concurrency']} in flight, {summary['settings']['workers']} service workers); "
        f"load average at start {summary['machine']['load_average']}, after loading "
        f"{summary['load']['load_average_after']}.",
        "",
        "| Key kind | Keys | used_memory drop on delete | Bytes per session | "
        "MEMORY USAGE sample per session | Encodings in the sample |",
        "|---|---|---|---|---|---|",
    ]
    encodings = summary["sampled"]["encodings"]
    for kind in ("s", "i", "d", "x", "e", "c", "global_stream"):
        found = ", ".join(f"{name} {count}" for name, count in encodings.get(kind, {}).items())
        lines.append(f"| {KIND_LABELS[kind]} | {deltas[kind]['keys']} | {deltas[kind]['bytes']} | "
                     f"{per.get(kind, '')} | {sampled.get(kind, '')} | {found} |")
    lines += [
        "",
        f"Session state (records + index + devices): {per['state']} bytes/session "
        f"(target 300: {'met' if per['state_target_met'] else 'not met'}).",
        f"Freshly signed-in session, events, marker and counter share included: {per['fresh_session_total']} "
        f"bytes (target 450: {'met' if per['fresh_session_target_met'] else 'not met'}).",
        f"used_memory before and after the load: {per['used_memory_delta_per_session']} bytes/session; "
        f"after the load mem_fragmentation_ratio was {fragmentation}.",
        f"Projection to {summary['projection']['sessions']:,} sessions: "
        f"{summary['projection']['total_gib']} GiB of used_memory.",
        "",
        "| Sessions loaded | wrk -c64, req/s | p50 ms | p99 ms | p99.9 ms | load average (1 min) | "
        "cores busy with other work |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, key in (("1 thousand", "validate_at_1k"), (f"{summary['sessions']:,}", "validate_at_full")):
        figures = summary[key]
        lines.append(f"| {label} | {figures['rps']:.0f} | {figures['p50_us'] / 1000:.2f} | "
                     f"{figures['p99_us'] / 1000:.2f} | {figures['p999_us'] / 1000:.2f} | "
                     f"{loadgen.load_cell(figures)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/capacity", description=__doc__.split("\n")[0])
    add_arguments(parser)
    started = time.monotonic()
    folder = run(parser.parse_args(argv))
    print(f"bench: done in {time.monotonic() - started:.0f} s; results in {folder}")
    return 0
