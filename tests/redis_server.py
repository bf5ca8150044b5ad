"""A real redis-server for tests: loopback port, private folder, AOF on."""

from __future__ import annotations

from service.embedded import EmbeddedRedis


class RedisServer(EmbeddedRedis):
    """One redis-server process that tests may stop, restart or kill."""

    # Every write on disk before it is acknowledged, so a restart in a test
    # never loses a session the test just created.
    appendfsync = "always"

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()
