"""Virtual Token Counter (Sheng et al., OSDI'24), as its artifact does it.

Counter per client, served in increasing counter order. A request's prompt is charged at admission
(w_p * prompt / weight) and each output token as it is produced (w_q / weight), w_p = 1, w_q = 2.
Counter lift: when a client's queue becomes non-empty, its counter is raised to the minimum counter of the
other clients with waiting requests (so idle time does not bank credit); with no other client waiting it keeps
its counter (slora/server/router/vtc_req_queue.py: append()). Ties go to the client seen first.

Variants of the artifact: `vtc-oracle` charges the whole output (max_new_tokens, the true length in the
artifact's runs) at admission and nothing per token (vtc_oracle_req_queue.py); `vtc-pred` charges a per-client
predicted length at admission, output tokens beyond it as they come, and refunds the excess at completion, the
prediction being a window-5 running average of the client's output lengths (vtc_pred_len_req_queue.py);
`lcf` (least counter first, the paper's baseline) is VTC's counter without the lift.
"""

from __future__ import annotations

from serving.policies.base import ClientHeap, EngineBehaviour, Policy

W_P = 1.0
W_Q = 2.0


class VTCPolicy(Policy):
    name = "vtc"
    head_moves_on_decode = True

    def __init__(self, behaviour: EngineBehaviour | None = None, w_p: float = W_P, w_q: float = W_Q):
        super().__init__(behaviour)
        self.w_p, self.w_q = w_p, w_q
        self.counter: dict[str, float] = {}
        self.heap = ClientHeap()
        self._dirty: set[str] = set()   # clients whose priority changed since the heap was last brought up to date

    def priority(self, client: str) -> float:
        return self.counter.get(client, 0.0)

    def _refresh(self, client: str) -> None:
        # charges arrive every iteration for every client with a running request; the heap is brought up to date
        # only when a decision is taken (amortised O(log clients) per charge, and nothing while nobody waits)
        self._dirty.add(client)

    def next_client(self):
        # the engine delivers decode charges lazily (Policy.on_step): a running client's key may be a lower bound
        # of its priority. Charges only raise it, so the top is the answer once its own owed charges are in
        q, heap, settle = self.queues, self.heap, self.settle_owed
        while True:
            if self._dirty:
                for c in self._dirty:
                    if q.get(c):
                        heap.set(c, self.priority(c))
                self._dirty.clear()
            top = heap.peek()
            if top is None or settle is None or not settle(top):
                return top

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
        waiting requests (the heap holds exactly those)."""
        return [k for k in self.heap.key if k != c]

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
    """The artifact's VTC with predicted length: at admission the prompt plus the client's predicted output are
    charged; output tokens beyond the prediction are charged as produced; at completion the unused part of the
    prediction is refunded and the prediction updated (window-5 running average; the first output sets it).

    The prepaid tokens are pooled per client (the scheduler reports tokens per client, not per request): a
    request running past its prediction uses up what another of the client's running requests prepaid before it
    is charged. With one request running per client this is the artifact's per-request rule."""

    name = "vtc-pred"
    WINDOW = 5

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.predict_len: dict[str, float] = {}
        self.charged: dict[int, float] = {}    # rid -> the prediction charged at its first admission
        self.prepaid: dict[str, float] = {}    # client -> predicted tokens charged and not yet produced

    def on_admit(self, req, now):
        if req.rid in self.charged:
            return  # readmitted after a preemption: charged at its first admission
        pred = self.predict_len.get(req.client, 0.0)
        self.charged[req.rid] = pred
        self.prepaid[req.client] = self.prepaid.get(req.client, 0.0) + pred
        self.charge(req.client, (self.w_p * req.prompt_tokens + self.w_q * pred) / req.weight)

    def on_step(self, tokens, gpu_seconds, now):
        for c, n in tokens.items():
            left = self.prepaid.get(c, 0.0)
            used = min(float(n), left)
            self.prepaid[c] = left - used
            if n > used:
                self.charge(c, self.w_q * (n - used) / self.rep[c].weight)
        self.on_iteration(gpu_seconds, now)

    def on_finish(self, req, now):
        pred = self.charged.pop(req.rid)
        c = req.client
        refund = min(max(pred - req.output_tokens, 0.0), self.prepaid.get(c, 0.0))
        if refund:
            self.prepaid[c] -= refund
            self.charge(c, -self.w_q * refund / req.weight)
        old = self.predict_len.get(c, 0.0)
        self.predict_len[c] = float(req.output_tokens) if old == 0 else \
            (old * (self.WINDOW - 1) + req.output_tokens) / self.WINDOW


class VTCOraclePolicy(VTCPolicy):
    """The artifact's oracle VTC: prompt plus the whole output (max_new_tokens) charged at admission."""

    name = "vtc-oracle"

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.charged: set[int] = set()

    def on_admit(self, req, now):
        if req.rid in self.charged:
            return
        self.charged.add(req.rid)
        self.charge(req.client, (self.w_p * req.prompt_tokens + self.w_q * req.max_output) / req.weight)

    def on_step(self, tokens, gpu_seconds, now):
        self.on_iteration(gpu_seconds, now)


class LCFPolicy(VTCPolicy):
    """Least counter first: VTC's counter without the lift (a returning client has banked its idle time)."""

    name = "lcf"

    def lift_peers(self, c, running):
        return []
