"""Virtual Token Counter (Sheng et al., OSDI'24), as its artifact does it.

Counter per client, served in increasing counter order. A request's prompt is charged at admission
(w_p * prompt / weight) and each output token as it is produced (w_q / weight), w_p = 1, w_q = 2.
Counter lift: when a client's queue becomes non-empty, its counter is raised to the minimum counter of the
other clients with waiting requests (so idle time does not bank credit). When no other client is waiting,
it is raised to the minimum counter of the clients with requests running; with nobody waiting or running
it keeps its counter. (The artifact lifts against its active set; the no-other-client case is our definition.)
"""

from __future__ import annotations

from serving.policies.base import ClientHeap, EngineBehaviour, Policy

W_P = 1.0
W_Q = 2.0


class VTCPolicy(Policy):
    name = "vtc"

    def __init__(self, behaviour: EngineBehaviour | None = None, w_p: float = W_P, w_q: float = W_Q):
        super().__init__(behaviour)
        self.w_p, self.w_q = w_p, w_q
        self.counter: dict[str, float] = {}
        self.heap = ClientHeap()
        self._dirty: set[str] = set()   # clients whose priority changed since the heap was last brought up to date

    # the artifact's engine: admission every 10 decode steps, whole-prompt prefill, full KV reservation
    @classmethod
    def default_behaviour(cls):
        return EngineBehaviour(chunked_prefill=False, admit_every=10, reserve="full")

    def priority(self, client: str) -> float:
        return self.counter.get(client, 0.0)

    def _refresh(self, client: str) -> None:
        # charges arrive every iteration for every client with a running request; the heap is brought up to date
        # only when a decision is taken (amortised O(log clients) per charge, and nothing while nobody waits)
        self._dirty.add(client)

    def next_client(self):
        if self._dirty:
            q, heap = self.queues, self.heap
            for c in self._dirty:
                if q.get(c):
                    heap.set(c, self.priority(c))
            self._dirty.clear()
        return self.heap.peek()

    def on_arrival(self, req, now, newly_backlogged, running):
        c = req.client
        self.counter.setdefault(c, 0.0)
        if newly_backlogged:
            peers = self.lift_peers(c, running)
            if peers:
                self.lift(c, peers)
            self.on_backlogged(c)

    def lift(self, c: str, peers: list[str]) -> None:
        """Raise c's counter to the minimum of its peers' (lift_peers)."""
        self.counter[c] = max(self.counter[c], min(self.counter.get(k, 0.0) for k in peers))

    preempt_margin = 1024.0  # counter units (weighted tokens) a running client must lead the head by

    def preempt_candidate(self, head_client, running):
        others = [k for k in running if k != head_client]
        if not others:
            return None
        top = max(others, key=self.priority)
        return top if self.priority(top) - self.priority(head_client) > self.preempt_margin else None

    def lift_peers(self, c: str, running: dict[str, int]) -> list[str]:
        """Whose counters VTC's lift looks at when client c's queue becomes non-empty: the other clients with
        waiting requests, else the other clients with requests running (else nobody)."""
        peers = [k for k in self.heap.key if k != c]   # the heap holds exactly the clients with waiting requests
        return peers or [k for k, n in running.items() if n > 0 and k != c]

    def on_backlogged(self, client):
        self.counter.setdefault(client, 0.0)
        self.heap.set(client, self.priority(client))

    def on_drained(self, client):
        self.heap.discard(client)

    def charge(self, client: str, amount: float) -> None:
        self.counter[client] = self.counter.get(client, 0.0) + amount
        self._refresh(client)

    def on_admit(self, req, now):
        if req.preemptions:
            return  # readmitted after a preemption: its prompt was charged the first time (the user gets it once)
        self.charge(req.client, self.w_p * req.prompt_tokens / req.weight)

    def on_tokens(self, req, n, now):
        self.charge(req.client, self.w_q * n / req.weight)

    def on_step(self, tokens, gpu_seconds, now):
        # on_tokens for every client at once (the hot path: called every engine step)
        cnt, rep, w_q = self.counter, self.rep, self.w_q
        for c, n in tokens.items():
            cnt[c] += w_q * n / rep[c].weight  # every client with tokens has arrived: its counter exists
        self._dirty.update(tokens)
        self.on_iteration(gpu_seconds, now)


    def counters(self):
        return {"vtc": dict(self.counter)}

    def restore_counters(self, saved):
        super().restore_counters(saved)
        for c, v in saved.get("vtc", {}).items():
            self.charge(c, float(v) - self.counter.get(c, 0.0))


class VTCPredictedPolicy(VTCPolicy):
    """VTC charging the predicted output at admission, corrected to the actual count at completion."""

    name = "vtc-pred"

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.charged: dict[int, float] = {}  # rid -> the output prediction charged at first admission

    def on_admit(self, req, now):
        if req.rid in self.charged:
            return  # readmitted after a preemption: charged at its first admission
        self.charged[req.rid] = req.predicted_output
        self.charge(req.client, (self.w_p * req.prompt_tokens + self.w_q * req.predicted_output) / req.weight)

    def on_tokens(self, req, n, now):
        pass

    def on_step(self, tokens, gpu_seconds, now):
        self.on_iteration(gpu_seconds, now)  # output is charged from the prediction, corrected at completion

    def on_finish(self, req, now):
        self.charge(req.client, self.w_q * (req.output_tokens - self.charged.pop(req.rid)) / req.weight)
