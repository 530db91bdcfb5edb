"""Run the daemon under uvicorn with a graceful shutdown: the first SIGTERM/SIGINT drains (no new requests,
in-flight ones get ``shutdown_grace_s`` to finish, then are failed with 503), the second one forces."""

from __future__ import annotations

import asyncio
import logging
import resource

import uvicorn

from serving.daemon.app import Daemon

log = logging.getLogger(__name__)


class GracefulServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, daemon: Daemon):
        super().__init__(config)
        self.daemon = daemon
        self._draining = False
        self._loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets=None):
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)

    def handle_exit(self, sig, frame):
        if self._draining or self._loop is None:
            return super().handle_exit(sig, frame)
        self._draining = True
        log.info("signal %s: draining (grace %.1f s); a second signal forces", sig, self.daemon.cfg.shutdown_grace_s)
        self._loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._drain()))

    async def _drain(self) -> None:
        try:
            await self.daemon.drain(self.daemon.cfg.shutdown_grace_s)
        finally:
            self.should_exit = True


def raise_fd_limit() -> None:
    """1,000 concurrent streams need more than the common default of 1,024 descriptors: take the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run_server(cfg, config_path=None) -> int:
    raise_fd_limit()
    daemon = Daemon(cfg, config_path)
    config = uvicorn.Config(daemon.app(), host=cfg.host, port=cfg.port, log_level=cfg.log_level, access_log=False,
                            loop="uvloop", http="httptools", lifespan="on", backlog=4096,
                            timeout_graceful_shutdown=cfg.shutdown_grace_s + 10, timeout_keep_alive=30)
    server = GracefulServer(config, daemon)
    server.run()
    return 0 if server.started else 1
