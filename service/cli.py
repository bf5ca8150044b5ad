"""Command line of the session store: run the service (also python -m service)."""

from __future__ import annotations

import argparse
import gc
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from service import __version__, admin
from service.config import REDIS_URL_ENV, ConfigError, Settings, load_settings
from service.launch import MULTIPROC_DIR_ENV
from service.logs import configure_logging, redact_url

logger = logging.getLogger("session_store.cli")

# Seconds a stopping server waits for in-flight requests.
SHUTDOWN_TIMEOUT_S = 10.0
# A worker that keeps crashing is restarted at most this often, seconds.
RESTART_BACKOFF_S = 1.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="session-store", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8080, help="TCP port (default 8080)")
    serve.add_argument("--redis-url", default=None,
                       help=f"redis://, rediss:// or unix:// URL (env {REDIS_URL_ENV}); "
                            "without one, a private redis-server is started")
    serve.add_argument("--redis-cluster", action="store_true",
                       help="the Redis URL names one node of a Redis Cluster")
    serve.add_argument("--config", default=None, help="TOML config file")
    serve.add_argument("--workers", type=int, default=1,
                       help="worker processes sharing the port (SO_REUSEPORT, default 1)")
    serve.add_argument("--data-dir", default="session-store-data",
                       help="folder for the embedded Redis's data (default ./session-store-data)")
    admin.add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command != "serve":
        return admin.run(args)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"session-store: invalid configuration: {exc}", file=sys.stderr)
        return 2
    if args.workers < 1:
        print("session-store: --workers must be at least 1", file=sys.stderr)
        return 2

    configure_logging(settings.service.log_level)
    if not settings.service.api_keys:
        logger.warning("no API keys configured: management endpoints return 401 "
                       "(set SESSION_STORE_API_KEYS or [service] api_keys)")
    return serve(args, settings)


def serve(args: argparse.Namespace, settings: Settings) -> int:
    redis_url = args.redis_url or os.environ.get(REDIS_URL_ENV)
    embedded = None
    if not redis_url:
        from service.embedded import EmbeddedRedis  # noqa: PLC0415 - only for the embedded default

        embedded = EmbeddedRedis(Path(args.data_dir))
        embedded.start()
        redis_url = embedded.url
        logger.info("no Redis URL configured: using the embedded redis-server at %s", redis_url)
    redis_kind = "cluster" if args.redis_cluster else "single"
    if embedded is not None:
        redis_kind = "embedded"
    logger.info("session-store %s starting with %d worker(s), %s Redis at %s", __version__, args.workers,
                redis_kind, redact_url(redis_url),
                extra={"version": __version__, "workers": args.workers, "redis_kind": redis_kind,
                       "redis": redact_url(redis_url), "host": args.host, "port": args.port,
                       "pid": os.getpid()})
    try:
        if args.workers == 1:
            run_worker(settings, redis_url, args.redis_cluster, args.host, args.port, False)
        else:
            supervise_with_metrics_dir(settings, redis_url, args)
    finally:
        if embedded is not None:
            embedded.stop()
    return 0


def run_worker(settings: Settings, redis_url: str, cluster: bool, host: str, port: int,
               reuse_port: bool) -> None:
    """Serve until SIGINT or SIGTERM, then drain in-flight requests."""
    import uvloop  # noqa: PLC0415 - keeps `import service.cli` light for the SDK
    from aiohttp import web  # noqa: PLC0415

    from service.app import create_app  # noqa: PLC0415

    configure_logging(settings.service.log_level)
    app = create_app(settings, redis_url, cluster=cluster)
    # Everything created so far (modules, the app, its routes) lives as long
    # as the process. Frozen, it is left out of every full garbage
    # collection, whose pauses were most of the p99 under load.
    gc.freeze()
    logger.info("listening on http://%s:%d", host, port, extra={"pid": os.getpid()})
    web.run_app(app, host=host, port=port, reuse_port=reuse_port or None,
                shutdown_timeout=SHUTDOWN_TIMEOUT_S, print=None, access_log=None,
                loop=uvloop.new_event_loop(), handle_signals=True)
    logger.info("stopped", extra={"pid": os.getpid()})


def supervise_with_metrics_dir(settings: Settings, redis_url: str, args: argparse.Namespace) -> None:
    """Supervise the workers with a private metrics folder, removed when they have stopped.

    Workers inherit PROMETHEUS_MULTIPROC_DIR and write their metric values
    there, so a scrape served by any worker sums every worker's values.
    """
    metrics_dir = tempfile.mkdtemp(prefix="session-store-metrics-")
    os.environ[MULTIPROC_DIR_ENV] = metrics_dir
    logger.info("workers share metrics through %s", metrics_dir, extra={"metrics_dir": metrics_dir})
    try:
        supervise(settings, redis_url, args)
    finally:
        del os.environ[MULTIPROC_DIR_ENV]
        shutil.rmtree(metrics_dir, ignore_errors=True)


def supervise(settings: Settings, redis_url: str, args: argparse.Namespace) -> None:
    """Run N workers on one port and restart any that exits unexpectedly."""
    context = multiprocessing.get_context("spawn")
    worker_args = (settings, redis_url, args.redis_cluster, args.host, args.port, True)
    workers = [context.Process(target=run_worker, args=worker_args) for _ in range(args.workers)]
    for worker in workers:
        worker.start()

    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for worker in workers:
            if worker.is_alive() and worker.pid is not None:
                os.kill(worker.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not stopping:
        time.sleep(0.2)
        for index, worker in enumerate(workers):
            if worker.is_alive() or stopping:
                continue
            logger.warning("worker %d exited with code %s; restarting", worker.pid, worker.exitcode,
                           extra={"pid": worker.pid})
            time.sleep(RESTART_BACKOFF_S)
            workers[index] = context.Process(target=run_worker, args=worker_args)
            workers[index].start()
    for worker in workers:
        worker.join(SHUTDOWN_TIMEOUT_S + 5)
        if worker.exitcode is None:
            logger.error("worker %d did not stop within %.0fs; killing it", worker.pid,
                         SHUTDOWN_TIMEOUT_S + 5, extra={"pid": worker.pid})
            worker.kill()
            worker.join()
    logger.info("stopped %d workers", len(workers),
                extra={"pid": os.getpid(), "exit_code": [worker.exitcode for worker in workers]})
