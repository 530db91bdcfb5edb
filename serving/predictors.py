"""MoPE: a deterministic Mixture of Prediction Experts for output length, latency, throughput and GPU use.

Experts (each trained online from observed history, no randomness anywhere):
  * ClientHistory  - median output length of the client's recent requests;
  * PromptRegression - least-squares fit of output length on (1, log prompt length) over recent history;
  * RegimeQuantile - median output length of recent requests in the same prompt-length bucket.
Gate: each expert's weight is exp(-err / scale), err being its exponentially weighted L1 error on requests
already finished, so the gate follows whichever expert has recently been right. Same history and inputs give the
same prediction. Latency, throughput and utilisation are derived from the output prediction and the engine
profile's cost model for the current batch.
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict, deque
from dataclasses import dataclass

import numpy as np

from serving.engine.profiles import Profile


@dataclass
class MoPEConfig:
    """Windows and smoothing of the experts and the gate."""

    window: int = 200          # requests remembered per expert (recent history)
    client_window: int = 32    # requests remembered per client
    err_decay: float = 0.05    # weight of the newest error in each expert's running L1 error
    prior_output: float = 128.0  # prediction before any history

    def __post_init__(self) -> None:
        if self.window < 2 or self.client_window < 1:
            raise ValueError(f"windows must be positive (window {self.window!r}, client_window {self.client_window!r})")
        if not 0 < self.err_decay <= 1:
            raise ValueError(f"err_decay must be in (0, 1], got {self.err_decay!r}")


class Window:
    """The last `size` values with their median in O(log size) per update (a deque beside a sorted list)."""

    __slots__ = ("order", "sorted")

    def __init__(self, size: int):
        self.order: deque = deque(maxlen=size)
        self.sorted: list = []

    def append(self, v) -> None:
        if len(self.order) == self.order.maxlen:
            old = self.order[0]
            del self.sorted[bisect.bisect_left(self.sorted, old)]
        self.order.append(v)
        bisect.insort(self.sorted, v)

    def median(self) -> float:
        s, n = self.sorted, len(self.sorted)
        return float(s[n // 2]) if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2.0

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self):
        return iter(self.order)


class ClientHistory:
    name = "client_history"

    def __init__(self, cfg: MoPEConfig):
        self.cfg = cfg
        self.h: dict[str, Window] = defaultdict(lambda: Window(cfg.client_window))
        self.glob = Window(cfg.window)

    def predict(self, client: str, prompt: int) -> float:
        # the median minimises L1 error; the mean is pulled by the long tail of output lengths
        h = self.h.get(client)
        if h:
            return h.median()
        return self.glob.median() if self.glob else self.cfg.prior_output

    def observe(self, client: str, prompt: int, output: int) -> None:
        self.h[client].append(output)
        self.glob.append(output)


class PromptRegression:
    """Ordinary least squares of output on (1, log(1 + prompt)) over the window, from running sums (O(1) per
    update; the sums are recomputed exactly, math.fsum, once per window of updates so rounding never builds up).
    With no spread in x (every prompt the same length) the fit is the mean output."""

    name = "prompt_regression"

    def __init__(self, cfg: MoPEConfig):
        self.cfg = cfg
        self.x: deque = deque(maxlen=cfg.window)   # log1p(prompt)
        self.y: deque = deque(maxlen=cfg.window)
        self.sx = self.sy = self.sxx = self.sxy = 0.0
        self.coef = None
        self._since = 0

    def predict(self, client: str, prompt: int) -> float:
        if self.coef is None:
            return self.sy / len(self.y) if self.y else self.cfg.prior_output
        a, b = self.coef
        return max(1.0, a + b * math.log1p(prompt))

    def observe(self, client: str, prompt: int, output: int) -> None:
        x = math.log1p(prompt)
        if len(self.x) == self.x.maxlen:
            ox, oy = self.x[0], self.y[0]
            self.sx -= ox
            self.sy -= oy
            self.sxx -= ox * ox
            self.sxy -= ox * oy
        self.x.append(x)
        self.y.append(output)
        self._since += 1
        if self._since >= self.x.maxlen:
            self._since = 0
            self.sx, self.sy = math.fsum(self.x), math.fsum(self.y)
            self.sxx = math.fsum(v * v for v in self.x)
            self.sxy = math.fsum(u * v for u, v in zip(self.x, self.y))
        else:
            self.sx += x
            self.sy += output
            self.sxx += x * x
            self.sxy += x * output
        n = len(self.x)
        if n >= 8:
            mx = self.sx / n
            var = self.sxx / n - mx * mx                    # Var(x)
            if var <= 1e-9 * max(self.sxx / n, 1e-12):       # no spread in prompt length: the mean
                self.coef = (self.sy / n, 0.0)
            else:
                b = (self.sxy / n - mx * self.sy / n) / var
                self.coef = (self.sy / n - b * mx, b)


class RegimeQuantile:
    name = "regime_quantile"
    EDGES = (64, 256, 1024, 4096)

    def __init__(self, cfg: MoPEConfig):
        self.cfg = cfg
        self.b: dict[int, Window] = defaultdict(lambda: Window(cfg.window))

    def _bucket(self, prompt: int) -> int:
        return bisect.bisect(self.EDGES, prompt)

    def predict(self, client: str, prompt: int) -> float:
        h = self.b.get(self._bucket(prompt))
        if not h:
            allv = [v for d in self.b.values() for v in d]
            return float(np.median(allv)) if allv else self.cfg.prior_output
        return h.median()

    def observe(self, client: str, prompt: int, output: int) -> None:
        self.b[self._bucket(prompt)].append(output)


class MoPE:
    """Mixture of the three experts with a deterministic error-driven gate."""

    def __init__(self, cfg: MoPEConfig | None = None):
        self.cfg = cfg or MoPEConfig()
        self.experts = [ClientHistory(self.cfg), PromptRegression(self.cfg), RegimeQuantile(self.cfg)]
        self.err = [self.cfg.prior_output] * len(self.experts)
        self._gate = self._compute_gate()
        self.version = 0   # bumped by every observation: a prediction made at the same version is the same

    def _compute_gate(self) -> list[float]:
        scale = max(min(self.err), 1.0)
        w = [math.exp(-(e - min(self.err)) / scale) for e in self.err]
        s = sum(w)
        return [x / s for x in w]

    def gate(self) -> list[float]:
        return list(self._gate)

    def predict_output(self, client: str, prompt: int) -> float:
        return self.combine(self.predict_experts(client, prompt))

    def predict_experts(self, client: str, prompt: int) -> tuple[float, ...]:
        """Each expert's prediction (combine() gives the mixture's)."""
        return tuple(e.predict(client, prompt) for e in self.experts)

    def combine(self, preds: tuple[float, ...]) -> float:
        return float(sum(g * p for g, p in zip(self._gate, preds)))

    def observe(self, client: str, prompt: int, output: int, preds: tuple[float, ...] | None = None) -> None:
        """Learn a finished request's output. `preds`: the experts' predictions the engine acted on (made at
        admission); without them each expert is scored on its prediction now."""
        d = self.cfg.err_decay
        for i, e in enumerate(self.experts):
            p = preds[i] if preds is not None else e.predict(client, prompt)
            self.err[i] = (1 - d) * self.err[i] + d * abs(p - output)
            e.observe(client, prompt, output)
        self._gate = self._compute_gate()
        self.version += 1

    # derived predictions -------------------------------------------------------------------------
    @staticmethod
    def predict_latency(profile: Profile, prompt: int, out: float, batch: int, batch_kv: int,
                        queue_wait_s: float = 0.0) -> tuple[float, float]:
        """(TTFT, end-to-end) seconds if admitted now into a batch of `batch` sequences holding `batch_kv` KV."""
        prefill, _ = profile.iteration([(prompt, 0)], batch, batch_kv)
        step, _ = profile.iteration([], batch + 1, batch_kv + prompt + int(out / 2))
        ttft = queue_wait_s + prefill
        return ttft, ttft + step * max(out - 1, 0)

    @staticmethod
    def predict_resources(profile: Profile, prompt: int, out: float, batch: int, batch_kv: int) -> tuple[float, float, float]:
        """(GPU-seconds attributed to the request, tokens/s it will see, GPU utilisation of its batch).

        Attributed as the engine attributes measured time (Profile.split): the prompt's GEMM tokens and
        quadratic attention (however it is chunked, sum c (ctx + c / 2) = prompt^2 / 2), then `out` decode steps
        in a batch of batch + 1, each paying its share of the step and the reads of its own KV (prompt + the
        tokens generated so far)."""
        n, kv = batch + 1, batch_kv + prompt + int(out / 2)
        step, util = profile.iteration([], n, kv)
        seq, coef = profile.split([], n, kv)[1:]
        prefill = profile.tok_s * prompt + profile.attn_s * prompt * prompt / 2
        gpu_s = prefill + out * (seq + coef * (prompt + out / 2))
        return gpu_s, 1.0 / step, util


class SingleModel:
    """The single-model proxy MoPE is compared against: one global running mean of output lengths."""

    def __init__(self, prior: float = 128.0, window: int = 200):
        self.h: deque = deque(maxlen=window)
        self.prior = prior

    def predict_output(self, client: str, prompt: int) -> float:
        return sum(self.h) / len(self.h) if self.h else self.prior

    def observe(self, client: str, prompt: int, output: int) -> None:
        self.h.append(output)


def online_l1(requests, model) -> float:
    """Mean |predicted - actual| output tokens, predicting each request before learning from it (arrival order)."""
    errs = []
    for r in requests:
        errs.append(abs(model.predict_output(r.client, r.prompt_tokens) - r.output_tokens))
        model.observe(r.client, r.prompt_tokens, r.output_tokens)
    return float(np.mean(errs)) if errs else float("nan")
