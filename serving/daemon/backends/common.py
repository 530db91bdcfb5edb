"""What both backends share: the scheduler they own, the job table, cancellation between iterations, counters."""

from __future__ import annotations

import asyncio
import collections
import logging
import time

from serving.daemon.job import Failed, Job
from serving.policies import make_policy
from serving.request import Request
from serving.scheduler import Scheduler

log = logging.getLogger(__name__)


class SchedulerHost:
    """Holds the Scheduler and the jobs it runs; arrivals and cancellations are applied between iterations, so
    the scheduler never sees a change while an iteration it planned is in flight."""

    def __init__(self, policy_name: str, profile, behaviour=None):
        self.policy_name = policy_name
        self.profile = profile
        self.behaviour = behaviour
        self.scheduler = self._new_scheduler()
        self.jobs: dict[int, Job] = {}            # rid -> job, while the scheduler holds its request
        self._arrivals: list[Job] = []
        self._cancels: list[tuple[Job, str]] = []
        self.wake = asyncio.Event()
        self.overhead = collections.deque(maxlen=200_000)   # seconds per scheduler decision (exact quantiles)
        self._rid = 0

    def _new_scheduler(self) -> Scheduler:
        pol = make_policy(self.policy_name)
        if self.behaviour is not None:
            pol.behaviour = self.behaviour
        return Scheduler(pol, self.profile)   # its own MoPE predictor

    def now(self) -> float:
        raise NotImplementedError

    def enqueue(self, job: Job, output_tokens: int) -> None:
        self._rid += 1
        job.req = Request(self._rid, job.client, self.now(), job.prompt_tokens, output_tokens, weight=job.weight,
                          max_new_tokens=job.max_tokens)
        self._arrivals.append(job)
        self.wake.set()

    def request_cancel(self, job: Job, reason: str) -> None:
        if job.req is None or job.cancelled:
            return
        job.cancelled = True
        self._cancels.append((job, reason))
        self.wake.set()

    def apply_pending(self, metrics) -> list[tuple[Job, str]]:
        """Arrivals into the scheduler, cancellations out of it (charged what they produced)."""
        now = self.now()
        unseen = set()
        for job in self._arrivals:
            if job.cancelled:
                unseen.add(job.req.rid)   # gone before the scheduler saw it: nothing to charge
                continue
            self.jobs[job.req.rid] = job
            self.scheduler.add_request(job.req, job.req.arrival)
        self._arrivals.clear()
        done = []
        for job, reason in self._cancels:
            rid = job.req.rid
            if rid in self.jobs:
                self.scheduler.release(job.req, now)
                del self.jobs[rid]
            elif rid not in unseen:
                continue   # it ended in the engine before the cancellation got here: not cancelled
            metrics.cancelled.labels(job.client, reason).inc()
            done.append((job, reason))
        self._cancels.clear()
        return done

    def fail_all(self, status: int, message: str, retry_after: int | None = None) -> int:
        """Answer every job still held with an error and release it (shutdown, engine fault)."""
        now = self.now()
        n = 0
        for job in list(self.jobs.values()) + self._arrivals:
            if job.answer(Failed(status, message, retry_after=retry_after)):
                n += 1
            if job.req is not None and job.req.rid in self.jobs:
                self.scheduler.release(job.req, now)
                del self.jobs[job.req.rid]
        self._arrivals.clear()
        return n

    def rebuild_after_fault(self) -> None:
        """A fault inside the engine loop: fail what was held, keep the fairness counters, start clean."""
        self.scheduler.settle()
        saved = self.scheduler.policy.counters()
        self.fail_all(500, "internal engine error; the request was not completed")
        self.scheduler = self._new_scheduler()
        self.scheduler.policy.restore_counters(saved)

    def record_overhead(self, metrics, seconds: float) -> None:
        self.overhead.append(seconds)
        metrics.overhead.observe(seconds)


def perf() -> float:
    return time.perf_counter()
