"""Open-loop HTTP load at a fixed rate, for latency below saturation.

wrk is closed-loop: a slow reply delays the next request, so it hides
queueing (coordinated omission), and wrk2 is not available here. This
generator schedules request i at start + i / rate whatever the replies
do, sends it on an idle keep-alive connection (or queues it until one is
free) and measures latency from the scheduled time. It speaks just enough
HTTP/1.1 for GET requests whose responses carry Content-Length, on uvloop.

Usage: python -m bench.pacer URL TOKENS_FILE --rate R --duration-s S
Prints one JSON object: target and achieved rate, latency percentiles
in microseconds, errors and the largest send lag.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import uvloop

from bench.seed import read_tokens

# Requests in the first second warm connections and caches; not measured.
WARMUP_S = 1.0


class _Connection(asyncio.Protocol):
    def __init__(self, pacer: Pacer) -> None:
        self.pacer = pacer
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.scheduled_at = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, request: bytes, scheduled_at: float) -> None:
        assert self.transport is not None
        self.scheduled_at = scheduled_at
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        head_end = self.buffer.find(b"\r\n\r\n")
        if head_end < 0:
            return
        head = self.buffer[:head_end].lower()
        length_at = head.find(b"content-length:")
        length = int(head[length_at + 15:head.find(b"\r\n", length_at)]) if length_at >= 0 else 0
        if len(self.buffer) < head_end + 4 + length:
            return
        status = int(self.buffer[9:12])
        self.buffer = self.buffer[head_end + 4 + length:]
        self.pacer.completed(self, status, self.scheduled_at)

    def connection_lost(self, exc: Exception | None) -> None:
        self.pacer.lost(self)


class Pacer:
    def __init__(self, host: str, port: int, requests: list[bytes], rate: float, connections: int) -> None:
        self.host, self.port = host, port
        self.requests = requests
        self.rate = rate
        self.connection_count = connections
        self.idle: list[_Connection] = []
        self.backlog: collections.deque[float] = collections.deque()
        self.latencies_us: list[int] = []
        self.errors = 0
        self.lost_connections = 0
        self.max_lag_s = 0.0
        self.measure_from = 0.0
        self.sent = 0
        self.done = 0
        self.finished: asyncio.Future[None] | None = None
        self.total = 0

    def _next_request(self) -> bytes:
        request = self.requests[self.sent % len(self.requests)]
        self.sent += 1
        return request

    def _dispatch(self, scheduled_at: float) -> None:
        if self.idle:
            connection = self.idle.pop()
            self.max_lag_s = max(self.max_lag_s, time.perf_counter() - scheduled_at)
            connection.send(self._next_request(), scheduled_at)
        else:
            self.backlog.append(scheduled_at)

    def completed(self, connection: _Connection, status: int, scheduled_at: float) -> None:
        now = time.perf_counter()
        if scheduled_at >= self.measure_from:
            self.latencies_us.append(int((now - scheduled_at) * 1e6))
            if status != 200:
                self.errors += 1
        self.done += 1
        if self.backlog:
            queued_at = self.backlog.popleft()
            self.max_lag_s = max(self.max_lag_s, now - queued_at)
            connection.send(self._next_request(), queued_at)
        else:
            self.idle.append(connection)
        if self.done == self.total and self.finished is not None and not self.finished.done():
            self.finished.set_result(None)

    def lost(self, connection: _Connection) -> None:
        self.lost_connections += 1
        if connection in self.idle:
            self.idle.remove(connection)

    async def run(self, duration_s: float) -> dict[str, object]:
        loop = asyncio.get_running_loop()
        for _ in range(self.connection_count):
            _, protocol = await loop.create_connection(lambda: _Connection(self), self.host, self.port)
            self.idle.append(protocol)
        self.finished = loop.create_future()
        self.total = int((WARMUP_S + duration_s) * self.rate)
        start = time.perf_counter()
        cpu_started_s = time.process_time()
        self.measure_from = start + WARMUP_S
        scheduled = 0
        while scheduled < self.total:
            due = min(int((time.perf_counter() - start) * self.rate) + 1, self.total)
            while scheduled < due:
                self._dispatch(start + scheduled / self.rate)
                scheduled += 1
            await asyncio.sleep(0.0005)
        # Replies still due get a bounded wait: the run stops by itself.
        try:
            await asyncio.wait_for(self.finished, timeout=10)
        except TimeoutError:
            pass
        elapsed_s = time.perf_counter() - self.measure_from
        summary = self._summary(duration_s, elapsed_s)
        # Near 1.0 the generator itself was the bottleneck, not the server.
        cpu_used_s = time.process_time() - cpu_started_s
        summary["pacer_cpu_cores"] = round(cpu_used_s / (time.perf_counter() - start), 2)
        return summary

    def _summary(self, duration_s: float, elapsed_s: float) -> dict[str, object]:
        latencies = sorted(self.latencies_us)

        def percentile(p: float) -> int:
            return latencies[min(int(len(latencies) * p / 100), len(latencies) - 1)] if latencies else 0

        return {
            "target_rps": round(self.rate, 1), "achieved_rps": round(len(latencies) / elapsed_s, 1),
            "duration_s": duration_s, "measured": len(latencies), "unanswered": self.total - self.done,
            "errors": self.errors, "lost_connections": self.lost_connections,
            "max_send_lag_ms": round(self.max_lag_s * 1000, 2), "connections": self.connection_count,
            "p50_us": percentile(50), "p90_us": percentile(90), "p99_us": percentile(99),
            "p999_us": percentile(99.9), "max_us": latencies[-1] if latencies else 0,
        }


def build_requests(url: str, tokens: list[tuple[str, str]]) -> list[bytes]:
    parts = urlsplit(url)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return [
        (f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUser-Agent: {agent}\r\n"
         f"Authorization: Bearer {token}\r\n\r\n").encode("ascii")
        for token, agent in tokens
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pacer", description=__doc__.split("\n")[0])
    parser.add_argument("url", help="http://127.0.0.1:PORT/v1/validate")
    parser.add_argument("tokens", help="tokens file written by the seeding step")
    parser.add_argument("--rate", type=float, required=True, help="requests per second to schedule")
    parser.add_argument("--duration-s", type=float, default=10.0, help="measured seconds (default 10)")
    parser.add_argument("--connections", type=int, default=64, help="keep-alive connections (default 64)")
    args = parser.parse_args(argv)

    parts = urlsplit(args.url)
    if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        parser.error("the pacer only sends to loopback addresses")
    requests = build_requests(args.url, read_tokens(Path(args.tokens)))
    pacer = Pacer(parts.hostname, parts.port or 80, requests, args.rate, args.connections)
    summary = uvloop.run(pacer.run(args.duration_s))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
