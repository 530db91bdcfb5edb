"""Equinox: holistic fairness = alpha * user fairness + beta * resource fairness (docs/equinox.md).

User Fairness Counter (UFC): the VTC weighted-token counter (same charges, same lift) minus a credit for the
latency the client's requests have experienced (seconds waited before admission, converted to tokens at the
engine's single-stream decode rate), so clients that waited long move forward.
Resource Fairness Counter (RFC): GPU-seconds consumed by the client: the MoPE prediction is charged at
admission (before execution) and replaced by the measured attribution of iteration time as tokens are produced.
Both are normalised by running per-request scales (typical tokens and GPU-seconds of one request), and the
client with the lowest HF = alpha * UFC' + beta * RFC' is served next. With beta = 0 and no latency term the
order is the VTC order, so Equinox reduces to VTC (tests/test_serving.py shows identical schedules).
"""

from __future__ import annotations

from dataclasses import dataclass

from serving.policies.base import EngineBehaviour
from serving.policies.vtc import VTCPolicy


@dataclass
class EquinoxConfig:
    """Weights of the holistic score."""

    alpha: float = 1.0             # user fairness weight
    beta: float = 1.0              # resource fairness weight
    latency_weight: float = 0.5    # tokens credited per token-time waited (0: no latency term)

    def __post_init__(self) -> None:
        for k in ("alpha", "beta", "latency_weight"):
            if getattr(self, k) < 0:
                raise ValueError(f"{k} must be >= 0, got {getattr(self, k)!r}")
        if self.alpha == 0 and self.beta == 0:
            raise ValueError("alpha and beta cannot both be 0")


class EquinoxPolicy(VTCPolicy):
    name = "equinox"

    def __init__(self, behaviour: EngineBehaviour | None = None, config: EquinoxConfig | None = None,
                 token_rate: float = 25.0, **kw):
        super().__init__(behaviour, **kw)
        self.cfg = config or EquinoxConfig()
        self.token_rate = token_rate          # tokens/s of one stream: converts waiting seconds to tokens
        self.wait_credit: dict[str, float] = {}
        self.rfc: dict[str, float] = {}
        self.scale_u = 256.0                  # typical tokens charged per request (running mean)
        self.scale_r = 1.0                    # typical GPU-seconds per request (running mean)
        self._scales_at_build = (self.scale_u, self.scale_r)
        self._n = 0

    @classmethod
    def default_behaviour(cls):
        return EngineBehaviour(chunked_prefill=True, token_budget=512, reserve="predicted", adaptive=True)

    def ufc(self, client: str) -> float:
        return self.counter.get(client, 0.0) - self.cfg.latency_weight * self.wait_credit.get(client, 0.0)

    def priority(self, client: str) -> float:
        return (self.cfg.alpha * self.ufc(client) / self.scale_u
                + self.cfg.beta * self.rfc.get(client, 0.0) / self.scale_r)

    def _rescale(self, tokens: float, gpu_s: float) -> None:
        """Update the normalisation scales; rebuild the heap only when they drift (keeps decisions O(log n))."""
        self._n += 1
        a = 1.0 / min(self._n, 100)
        self.scale_u += a * (max(tokens, 1.0) - self.scale_u)
        self.scale_r += a * (max(gpu_s, 1e-6) - self.scale_r)
        u0, r0 = self._scales_at_build
        if abs(self.scale_u / u0 - 1) > 0.05 or abs(self.scale_r / r0 - 1) > 0.05:
            self._scales_at_build = (self.scale_u, self.scale_r)
            for c, q in self.queues.items():
                if q:
                    self.heap.set(c, self.priority(c))

    def on_admit(self, req, now):
        wait = now - req.arrival
        self.wait_credit[req.client] = self.wait_credit.get(req.client, 0.0) + wait * self.token_rate / req.weight
        self.rfc[req.client] = self.rfc.get(req.client, 0.0) + req.predicted_gpu_s / req.weight
        self._rescale(self.w_p * req.prompt_tokens + self.w_q * req.predicted_output, req.predicted_gpu_s)
        super().on_admit(req, now)

    def on_iteration(self, gpu_seconds, now):
        for c, g in gpu_seconds.items():
            self.rfc[c] = self.rfc.get(c, 0.0) + g
            self._refresh(c)

    def on_finish(self, req, now):
        # the measured attribution has been charged: take the admission-time prediction back out
        self.rfc[req.client] = self.rfc.get(req.client, 0.0) - req.predicted_gpu_s / req.weight
        self._refresh(req.client)
