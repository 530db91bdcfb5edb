"""The policy contract: the policy owns every fairness decision and the engine behaviour it runs with."""

from __future__ import annotations

import abc
import heapq
from collections import deque
from collections.abc import Callable
from serving.engine.behaviour import ENGINES, EngineBehaviour, EngineName
from serving.request import Request


class ClientHeap:
    """Clients with waiting requests ordered by a priority key; O(log clients) updates (lazy invalidation).
    Ties go to the client seen first (the artifact's min() over a dict in insertion order)."""

    def __init__(self):
        self.heap: list[tuple[float, int, str]] = []
        self.key: dict[str, float] = {}
        self.order: dict[str, int] = {}

    def set(self, client: str, key: float) -> None:
        self.key[client] = key
        o = self.order.get(client)
        if o is None:
            o = self.order[client] = len(self.order)
        heapq.heappush(self.heap, (key, o, client))

    def discard(self, client: str) -> None:
        self.key.pop(client, None)

    def peek(self) -> str | None:
        h = self.heap
        while h:
            k, _, c = h[0]
            if self.key.get(c) == k:
                return c
            heapq.heappop(h)
        return None

    def __contains__(self, client: str) -> bool:
        return client in self.key

    def __len__(self) -> int:
        return len(self.key)


class Policy(abc.ABC):
    """Holds the waiting requests per client and decides who goes next."""

    name = "base"
    head_moves_on_decode = False  # does the next request change while decodes run (counters charged per token)?

    def __init__(self, behaviour: EngineBehaviour | None = None):
        self.behaviour = behaviour or self.default_behaviour()
        self.queues: dict[str, deque[Request]] = {}
        self.waiting = 0
        self.rep: dict[str, Request] = {}   # a request of each client seen (a client's requests share its weight)
        self.backlog_log: list[tuple[float, str, bool]] = []  # (time, client, queue now non-empty / empty)
        self.heads_version = 0              # changes whenever some client's head request may have changed
        # the engine's lazily delivered charges (serving.scheduler): settle_owed(client) delivers what is owed to
        # the client through on_step and says whether anything was; None: every charge arrives eagerly
        self.settle_owed: Callable[[str], bool] | None = None

    @classmethod
    def default_behaviour(cls) -> EngineBehaviour:
        """The engine this policy is run on in its authors' system (the VTC artifact's S-LoRA for baselines)."""
        return ENGINES[EngineName.ARTIFACT]

    def accept(self, req: Request, now: float) -> bool:
        """Admission control at arrival: False rejects the request (it is never queued)."""
        return True

    # queue management (shared) ------------------------------------------------------------------
    def add(self, req: Request, now: float, running: dict[str, int]) -> None:
        q = self.queues.get(req.client)
        newly_backlogged = not q
        if req.client not in self.rep:
            self.rep[req.client] = req
        if q is None:
            q = self.queues[req.client] = deque()
        q.append(req)
        self.waiting += 1
        if newly_backlogged:
            self.heads_version += 1
            self.backlog_log.append((now, req.client, True))
        self.on_arrival(req, now, newly_backlogged, running)

    def requeue_front(self, req: Request, running: dict[str, int], now: float) -> None:
        """A preempted request goes back to the head of its client's queue."""
        q = self.queues.setdefault(req.client, deque())
        newly = not q
        q.appendleft(req)
        self.waiting += 1
        self.heads_version += 1
        if newly:
            self.backlog_log.append((now, req.client, True))
            self.on_backlogged(req.client)

    def remove(self, req: Request, now: float) -> bool:
        """Take a waiting request out of its client's queue (cancelled before admission: nothing was charged for
        it, nothing is). False: it is not waiting."""
        q = self.queues.get(req.client)
        if not q or req not in q:
            return False
        q.remove(req)
        self.waiting -= 1
        if q:
            self.on_backlogged(req.client)   # re-key the client: its head request may have changed (FCFS keys on it)
        else:
            self.backlog_log.append((now, req.client, False))
            self.on_drained(req.client)
        return True

    def peek(self) -> Request | None:
        c = self.next_client()
        return self.queues[c][0] if c is not None else None

    def pop(self, now: float) -> Request:
        c = self.next_client()
        q = self.queues[c]
        req = q.popleft()
        self.waiting -= 1
        self.heads_version += 1
        if not q:
            self.backlog_log.append((now, c, False))
            self.on_drained(c)
        return req

    # fairness state that outlives a process (the daemon persists it) -------------------------------------
    def counters(self) -> dict[str, dict[str, float]]:
        """The policy's per-client fairness counters by kind ({kind: {client: value}}); none for FCFS."""
        return {}

    def restore_counters(self, saved: dict[str, dict[str, float]]) -> None:
        """Take up counters saved by counters() (the daemon's restart); a kind this policy does not keep is an
        error, so a state file of another policy is not silently ignored."""
        unknown = set(saved) - set(self.counters())
        if unknown:
            raise ValueError(f"policy {self.name!r} keeps no {', '.join(sorted(unknown))} counters")

    # decisions ------------------------------------------------------------------------------------
    @abc.abstractmethod
    def next_client(self) -> str | None:
        """The client whose head request is served next (None when nothing waits)."""

    def on_arrival(self, req: Request, now: float, newly_backlogged: bool, running: dict[str, int]) -> None:
        if newly_backlogged:
            self.on_backlogged(req.client)

    def on_backlogged(self, client: str) -> None:
        """A client's queue became non-empty."""

    def on_drained(self, client: str) -> None:
        """A client's queue became empty."""

    def on_admit(self, req: Request, now: float) -> None:
        """The request enters the running batch."""

    def on_tokens(self, req: Request, n: int, now: float) -> None:
        """The request produced n output tokens."""

    def on_finish(self, req: Request, now: float) -> None:
        """The request completed (req.gpu_s: the GPU-seconds measured for it in this residency)."""

    def on_evict(self, req: Request) -> None:
        """The request was evicted from the batch (it is requeued next; req.gpu_s as in on_finish)."""

    def on_iteration(self, gpu_seconds: dict[str, float], now: float) -> None:
        """Measured GPU time attributed to each client in the last iteration(s)."""

    def preempt_candidate(self, head_client: str, running: dict[str, int]) -> str | None:
        """A running client so far ahead of head_client that one of its requests should make room (None: no one)."""
        return None

    def on_step(self, tokens: dict[str, int], gpu_seconds: dict[str, float], now: float) -> None:
        """Output tokens and measured (weighted) GPU-seconds per client, as the engine delivers them: the
        scheduler delivers prefill charges every step and decode charges lazily (before any event of the client
        and whenever `settle_owed` is called), so charges may arrive later than the tokens were made, never
        after an event of their client. A policy that orders clients by counters these charges raise must call
        `settle_owed` on the client it is about to choose (a client's owed charges only raise its priority: a
        key computed before them is a lower bound). The default hands each client's tokens to on_tokens."""
        for c, n in tokens.items():
            self.on_tokens(self.rep[c], n, now)
        self.on_iteration(gpu_seconds, now)
