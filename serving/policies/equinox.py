"""Equinox: holistic fairness = alpha * user fairness + beta * resource fairness (docs/equinox.md).

User Fairness Counter (UFC): the VTC weighted-token counter (same charges, same lift) minus a bounded credit for
latency: the client's recent mean wait before admission relative to the mean over all clients, clipped to
[-1, 1] and scaled by latency_weight typical requests, so clients that have waited longer than others move
forward without loosening the counter's fairness bound by more than 2 * latency_weight requests' worth of tokens.
Resource Fairness Counter (RFC): weighted GPU-seconds of the client: measured for its requests that have left the
batch, plus max(measured so far, MoPE prediction made at admission) for those running, so the prediction counts
before execution and the measurement replaces it once it passes it; lifted like VTC's counter.
Both are normalised by running per-request scales (typical tokens and GPU-seconds of one request), and the
client with the lowest HF = alpha * UFC' + beta * RFC' is served next. With beta = 0 and no latency term the
order is the VTC order, so Equinox reduces to VTC (tests/test_serving.py shows identical schedules).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from serving.engine.behaviour import ENGINES, EngineBehaviour, EngineName
from serving.policies.vtc import VTCPolicy


@dataclass
class EquinoxConfig:
    """Weights of the holistic score."""

    alpha: float = 1.0             # user fairness weight
    beta: float = 3.0              # resource fairness weight (3: measured on the shape-skewed workloads, docs/equinox.md)
    latency_weight: float = 0.5    # at most this many typical requests' worth of tokens credited for waiting
    preempt_margin: float = 1.0    # fair preemption: a running client must lead the head by this many requests' worth

    def __post_init__(self) -> None:
        for k in ("alpha", "beta", "latency_weight", "preempt_margin"):
            if getattr(self, k) < 0:
                raise ValueError(f"{k} must be >= 0, got {getattr(self, k)!r}")
        if self.alpha == 0 and self.beta == 0:
            raise ValueError("alpha and beta cannot both be 0")


class EquinoxPolicy(VTCPolicy):
    name = "equinox"

    def __init__(self, behaviour: EngineBehaviour | None = None, config: EquinoxConfig | None = None, **kw):
        super().__init__(behaviour, **kw)
        self.cfg = config or EquinoxConfig()
        self.preempt_margin = self.cfg.preempt_margin  # HF is in requests' worth
        self.wait: dict[str, float] = {}      # per-client running mean wait before admission (s)
        self.wait_all = 0.0                   # running mean over everyone
        # RFC(c) = rfc_base[c] + max(gpu_meas_run[c], gpu_pred_run[c])  (weighted GPU-seconds)
        self.rfc_base: dict[str, float] = defaultdict(float)      # measured for requests that left, plus lifts
        self.gpu_meas_run: dict[str, float] = defaultdict(float)  # measured for the requests now running
        self.gpu_pred_run: dict[str, float] = defaultdict(float)  # predicted for the requests now running
        self.scale_u = 256.0                  # typical tokens charged per request (running mean)
        self.scale_r = 1.0                    # typical GPU-seconds per request (running mean)
        # the scales priority() uses: frozen between full re-keyings of the heap, so that every key in the heap
        # was computed with the same scales (a key from older scales would compare wrongly with a fresh one)
        self.key_scales = (self.scale_u, self.scale_r, self.wait_all)
        self._n = 0

    @classmethod
    def default_behaviour(cls):
        return ENGINES[EngineName.EQUINOX]

    def rfc(self, client: str) -> float:
        """Weighted GPU-seconds: measured for the client's requests that have left the batch, plus, for those
        running, the larger of what was predicted at admission and what has been measured so far (the
        prediction stands until the measurement passes it), plus lifts."""
        return self.rfc_base[client] + max(self.gpu_meas_run[client], self.gpu_pred_run[client])

    def latency_credit(self, client: str) -> float:
        """Tokens subtracted from the client's counter for having waited longer than others (negative when it
        waited less): lambda * U * clip(wait(c) / wait_all - 1, -1, 1), with the key scales (0 before any wait
        is measured)."""
        u, _, wall = self.key_scales
        if wall <= 0:
            return 0.0
        # waits are >= 0, so wait / wall - 1 >= -1 already: only the upper clip can bind
        rel = self.wait.get(client, wall) / wall - 1.0
        return self.cfg.latency_weight * u * (1.0 if rel > 1.0 else rel)

    def priority(self, client: str) -> float:
        """HF = alpha * UFC / U + beta * RFC / G, UFC = VTC counter - latency credit (module doc), with the
        key scales. rfc() and latency_credit() are inlined: this runs for every charged client before each
        decision."""
        cfg = self.cfg
        su, sr, wall = self.key_scales
        hf = 0.0
        if cfg.alpha:
            u = self.counter.get(client, 0.0)
            if cfg.latency_weight and wall > 0:
                rel = self.wait.get(client, wall) / wall - 1.0  # >= -1: waits are >= 0
                u -= cfg.latency_weight * su * (1.0 if rel > 1.0 else rel)
            hf = cfg.alpha * u / su
        if cfg.beta:
            m, p = self.gpu_meas_run[client], self.gpu_pred_run[client]
            hf += cfg.beta * (self.rfc_base[client] + (m if m > p else p)) / sr
        return hf

    def _rescale(self, tokens: float, gpu_s: float) -> None:
        """Update the running scales; when they have drifted by more than 5 % from the key scales, adopt them
        and re-key every waiting client (so decisions stay O(log clients) between re-keyings, and the heap never
        mixes keys of different scales)."""
        self._n += 1
        a = 1.0 / min(self._n, 100)
        self.scale_u += a * (max(tokens, 1.0) - self.scale_u)
        self.scale_r += a * (max(gpu_s, 1e-6) - self.scale_r)
        u0, r0, w0 = self.key_scales
        drift = abs(self.scale_u / u0 - 1) > 0.05 or abs(self.scale_r / r0 - 1) > 0.05
        if self.cfg.latency_weight and self.wait_all > 0:
            drift = drift or w0 <= 0 or abs(self.wait_all / w0 - 1) > 0.05
        if drift:
            self.key_scales = (self.scale_u, self.scale_r, self.wait_all)
            self._dirty.update(self.heap.key)  # the heap holds exactly the clients with requests waiting

    def lift(self, c, peers):
        super().lift(c, peers)
        # the resource counter is lifted like VTC's: idle time banks no GPU credit either
        t = min(self.rfc(k) for k in peers)
        self.rfc_base[c] += max(0.0, t - self.rfc(c))

    def on_admit(self, req, now):
        wait = now - req.arrival
        self.wait[req.client] = 0.8 * self.wait.get(req.client, wait) + 0.2 * wait
        self.wait_all = 0.95 * self.wait_all + 0.05 * wait if self.wait_all else wait
        self.gpu_pred_run[req.client] += req.predicted_gpu_s / req.weight
        self._rescale(self.w_p * req.prompt_tokens + self.w_q * req.predicted_output, req.predicted_gpu_s)
        super().on_admit(req, now)

    def record_measured(self, req, gpu_seconds: float) -> None:
        """A measured GPU-time cost of a running request (e.g. from NVML or an engine's own timers): it counts in
        the client's RFC at once (replacing the request's prediction once past it) and stays there when the
        request finishes. For engines that measure; construct the Scheduler with attribute_gpu=False so the cost
        model's attribution is not counted as well."""
        if not gpu_seconds >= 0:
            raise ValueError(f"request {req.rid}: measured GPU-seconds must be >= 0, got {gpu_seconds!r}")
        g = gpu_seconds / req.weight
        req.gpu_s += g
        self.gpu_meas_run[req.client] += g
        self._dirty.add(req.client)

    def on_iteration(self, gpu_seconds, now):
        run = self.gpu_meas_run
        for c, g in gpu_seconds.items():
            run[c] += g
        self._dirty.update(gpu_seconds)

    def _leave(self, req, kept: bool) -> None:
        # the request's prediction leaves; its measurement moves to the base if the work was kept
        c = req.client
        self.gpu_pred_run[c] -= req.predicted_gpu_s / req.weight
        self.gpu_meas_run[c] -= req.gpu_s
        if kept:
            self.rfc_base[c] += req.gpu_s
        self._refresh(c)

    def on_finish(self, req, now):
        self._leave(req, kept=True)

    def on_evict(self, req):
        # the engine threw the work away (its KV is dropped and will be recomputed): the client is not charged
        # for it, or every eviction would raise its counter and make it the next victim
        self._leave(req, kept=False)

    def counters(self):
        return {**super().counters(), "rfc": {c: self.rfc(c) for c in set(self.rfc_base) | set(self.gpu_pred_run)}}

    def restore_counters(self, saved):
        super().restore_counters(saved)
        for c, v in saved.get("rfc", {}).items():
            self.rfc_base[c] += float(v) - self.rfc(c)
            self._refresh(c)
