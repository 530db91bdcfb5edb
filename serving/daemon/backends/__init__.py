"""Engine backends of the daemon (a plug point: ``BackendName`` + ``REGISTRY``).

A backend owns the one ``serving.scheduler.Scheduler`` of the daemon (the same code the simulator runs, with a
policy from ``serving.policies``) and the engine it drives:
  * ``sim``      - the engine simulator run in real time: tokens paced by the profile's iteration times;
  * ``upstream`` - one or more OpenAI-compatible servers; the scheduler decides admission and how many requests
                   run on each replica, with health checks and failover.
"""

from __future__ import annotations

import abc
import enum
from typing import TYPE_CHECKING

from serving.daemon.job import Job
from serving.scheduler import Scheduler

if TYPE_CHECKING:
    from serving.daemon.config import DaemonConfig
    from serving.daemon.metrics import DaemonMetrics


class BackendUnavailable(RuntimeError):
    """No engine can take the request now (503 with Retry-After)."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class Backend(abc.ABC):
    """What the HTTP layer needs from an engine."""

    scheduler: Scheduler
    usage_source = "tokenizer"        # where the usage counts come from

    @abc.abstractmethod
    async def start(self) -> None:
        """Start the engine loop (inside the running event loop)."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Stop the engine loop; jobs still running are failed first by the caller (graceful shutdown)."""

    @abc.abstractmethod
    def submit(self, job: Job) -> None:
        """Queue a job; raises BackendUnavailable when nothing can serve it."""

    @abc.abstractmethod
    def cancel(self, job: Job, reason: str = "cancelled") -> None:
        """The job ends now (client gone, shutdown): its client is charged for what was produced."""

    @abc.abstractmethod
    def ready(self) -> bool:
        """Can the engine take work (for /ready)?"""

    def kv_capacity_tokens(self) -> int:
        return self.scheduler.kv_capacity

    def status(self) -> dict:
        """Backend-specific state for /admin/counters and /metrics (replicas, health)."""
        return {}


class BackendName(str, enum.Enum):
    SIM = "sim"
    UPSTREAM = "upstream"


def _registry():
    from serving.daemon.backends.sim import SimBackend
    from serving.daemon.backends.upstream import UpstreamBackend

    return {BackendName.SIM: SimBackend, BackendName.UPSTREAM: UpstreamBackend}


def make_backend(name: str, cfg: "DaemonConfig", metrics: "DaemonMetrics") -> Backend:
    try:
        key = BackendName(name)
    except ValueError:
        raise ValueError(f"unknown backend: {name!r} (known: {', '.join(b.value for b in BackendName)})") from None
    return _registry()[key](cfg, metrics)
