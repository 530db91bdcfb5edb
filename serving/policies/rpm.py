"""Requests-per-minute limits (the VTC artifact's `LShare` baseline, slora/server/router/lshare_req_queue.py).

A request whose client already had `limit` requests accepted in the last 60 seconds is rejected at arrival
(aborted, never queued); accepted requests are served first come, first served."""

from __future__ import annotations

from collections import deque

from serving.policies.fcfs import FCFSPolicy

DEFAULT_RPM = 20


class RPMPolicy(FCFSPolicy):
    name = "rpm"

    def __init__(self, behaviour=None, limit: int = DEFAULT_RPM, window_s: float = 60.0):
        super().__init__(behaviour)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"rpm limit must be a positive integer (requests per minute), got {limit!r}")
        self.limit, self.window_s = limit, window_s
        self.accepted: dict[str, deque[float]] = {}
        self.rejected = 0

    def accept(self, req, now):
        times = self.accepted.setdefault(req.client, deque())
        while times and now - times[0] > self.window_s:  # the artifact counts arrivals within <= 60 s
            times.popleft()
        if len(times) >= self.limit:
            self.rejected += 1
            return False
        times.append(now)
        return True
