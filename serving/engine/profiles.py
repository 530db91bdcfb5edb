"""Execution-time model of one model replica (Vidur-style, per iteration), with documented constants.

An iteration runs some prefill chunks and some decode steps together. Its time is the larger of
  * memory time: read the weights once, plus every KV entry attended by decodes, at the HBM bandwidth, and
  * compute time: 2 * parameters FLOPs per token processed, plus attention FLOPs of prefill chunks
    (each chunk token attends to the context before it and half its own chunk), at peak * MFU,
plus a fixed per-iteration overhead (kernel launches, scheduler, sampling) and a per-sequence overhead.
GPU utilisation of an iteration is compute time / iteration time (how busy the tensor cores are).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Profile:
    """Model + GPU constants and the iteration cost model built from them; see docs/engine-calibration.md.

    One iteration with prefill chunks (c tokens after ctx tokens of context each) and n decoding sequences that
    attend to KV tokens in total costs
        t = iter_overhead + seq_overhead * sequences + max(compute, memory)
        compute = tok_s * (prefill tokens + n) + attn_s * sum(c * (ctx + c / 2))
        memory  = weight_s + kv_s * KV
    The four rates default to the hardware figures (tok_s = 2 params / (peak * MFU), attn_s = 4 layers hidden /
    (peak * MFU), weight_s = weight bytes / HBM bandwidth, kv_s = KV bytes per token / HBM bandwidth); a fitted
    profile gives them directly (Vidur-style: every term fitted to measured timings)."""

    name: str
    params: float               # model parameters
    layers: int
    hidden: int
    weight_bytes: float         # bytes of weights read per iteration (fp16)
    kv_bytes_per_token: float   # K and V, all layers, fp16: 2 * layers * hidden * 2
    hbm_bw: float               # bytes/s achievable
    peak_flops: float           # fp16 tensor FLOP/s
    mfu: float                  # achievable fraction of peak in GEMMs
    iter_overhead_s: float      # fixed per-iteration overhead (scheduler, launches, sampling)
    seq_overhead_s: float       # per sequence in the iteration (LoRA/adapters, sampling, bookkeeping)
    kv_capacity_tokens: int     # KV cache size in tokens
    tok_s: float | None = None      # GEMM seconds per token processed (None: from params, peak, MFU)
    attn_s: float | None = None     # prefill attention seconds per (token x context token) unit
    weight_s: float | None = None   # seconds to read the weights once
    kv_s: float | None = None       # seconds to read one token's KV in a decode
    fitted: str = ""                # where fitted rates come from (docs/engine-calibration.md)

    def __post_init__(self) -> None:
        for name in ("params", "weight_bytes", "kv_bytes_per_token", "hbm_bw", "peak_flops", "mfu"):
            if getattr(self, name) <= 0:
                raise ValueError(f"profile {self.name}: {name} must be positive, got {getattr(self, name)!r}")
        if not isinstance(self.kv_capacity_tokens, int) or self.kv_capacity_tokens < 16:
            raise ValueError(f"profile {self.name}: KV capacity must be an integer >= 16 tokens, "
                             f"got {self.kv_capacity_tokens!r}")
        derived = {"tok_s": 2 * self.params / (self.peak_flops * self.mfu),
                   "attn_s": 4 * self.layers * self.hidden / (self.peak_flops * self.mfu),
                   "weight_s": self.weight_bytes / self.hbm_bw, "kv_s": self.kv_bytes_per_token / self.hbm_bw}
        for k, v in derived.items():
            if getattr(self, k) is None:
                object.__setattr__(self, k, v)
            elif not getattr(self, k) >= 0:
                raise ValueError(f"profile {self.name}: {k} must be >= 0, got {getattr(self, k)!r}")
        for k in ("iter_overhead_s", "seq_overhead_s"):
            if not getattr(self, k) >= 0:
                raise ValueError(f"profile {self.name}: {k} must be >= 0, got {getattr(self, k)!r}")

    def compute_time(self, prefill_chunks: list[tuple[int, int]], n_decode: int) -> float:
        """prefill_chunks: (tokens in chunk, context tokens before it)."""
        tok = n_decode + sum(c for c, _ in prefill_chunks)
        attn = sum(c * (ctx + c / 2) for c, ctx in prefill_chunks)
        return self.tok_s * tok + self.attn_s * attn

    def memory_time(self, decode_kv_tokens: int) -> float:
        return self.weight_s + self.kv_s * decode_kv_tokens

    def iteration(self, prefill_chunks: list[tuple[int, int]], n_decode: int, decode_kv_tokens: int) -> tuple[float, float]:
        """(seconds, GPU utilisation) of one iteration (compute_time and memory_time, inlined: the hot path)."""
        tok, attn = n_decode, 0.0
        for c, ctx in prefill_chunks:
            tok += c
            attn += c * (ctx + c / 2)
        comp = self.tok_s * tok + self.attn_s * attn
        mem = self.weight_s + self.kv_s * decode_kv_tokens
        t = (comp if comp > mem else mem) + self.iter_overhead_s + self.seq_overhead_s * (n_decode + len(prefill_chunks))
        return t, comp / t

    # physical attribution of an iteration's time ------------------------------------------------------
    def split(self, prefill_chunks: list[tuple[int, int]], n_decode: int, decode_kv_tokens: int
              ) -> tuple[list[float], float, float]:
        """One iteration's modelled time split physically among its sequences: (the part of each prefill
        chunk, the part every decoding sequence pays, the part per KV token a decoding sequence attends to),
        so that sum(chunk parts) + n * seq + kv * KV equals iteration()'s time.

        The bound resource's time goes to those who use it: when compute bound, each prefill chunk pays its
        GEMM tokens and its quadratic attention, each decode its one token's GEMM; when memory bound, the
        decoding sequences share the weight read evenly and each pays the reads of its own KV (a long context
        pays for its length), prefill chunks only their overheads (with no decode, they share the weight read
        by tokens). The fixed iteration overhead is shared evenly by the sequences, each pays its own."""
        tok_s, attn_s = self.tok_s, self.attn_s
        seqs = n_decode + len(prefill_chunks)
        over = (self.iter_overhead_s / seqs if seqs else 0.0) + self.seq_overhead_s
        comp_parts = [tok_s * c + attn_s * c * (ctx + c / 2) for c, ctx in prefill_chunks]
        comp = sum(comp_parts) + tok_s * n_decode
        mem = self.weight_s + self.kv_s * decode_kv_tokens
        if comp >= mem:
            return [x + over for x in comp_parts], tok_s + over, 0.0
        if n_decode:
            return [over] * len(prefill_chunks), self.weight_s / n_decode + over, self.kv_s
        tokens = sum(c for c, _ in prefill_chunks)
        return [self.weight_s * c / tokens + over for c, _ in prefill_chunks], 0.0, 0.0

    def decode_split(self, n: int, kv0: int, k: int) -> tuple[float, float, float]:
        """split() summed over k decode-only steps of n sequences whose KV total starts at kv0 and grows by n
        a step, in closed form: (what every sequence pays in total, the KV-token coefficient summed over the
        steps, the same coefficient weighted by the step index j = 0..k-1). A sequence holding x + j KV tokens
        at step j pays seq + x * coef + coef_j; split over the steps exactly as decode_steps_time sums them."""
        if k <= 0 or n <= 0:
            return 0.0, 0.0, 0.0
        js = self._compute_bound_steps(n, kv0, k)
        over = self.iter_overhead_s / n + self.seq_overhead_s
        m = k - js                                   # memory-bound steps j = js .. k-1
        seq = js * self.tok_s + m * self.weight_s / n + k * over
        coef = self.kv_s * m
        coef_j = self.kv_s * (k * (k - 1) - js * (js - 1)) / 2
        return seq, coef, coef_j

    def _compute_bound_steps(self, n: int, kv0: int, k: int) -> int:
        """Of k decode steps of n sequences from kv0 KV tokens, how many (the first ones) are compute bound."""
        c = self.tok_s * n
        m0 = self.memory_time(kv0)
        d = self.kv_s * n
        if m0 >= c:
            return 0
        if d <= 0:
            return k
        js = min(k, max(0, math.ceil((c - m0) / d)))
        while js > 0 and m0 + d * (js - 1) >= c:  # float edge: step js - 1 is already memory bound
            js -= 1
        return js

    def chunk_steps(self, chunk: int, ctx0: int, n: int, kv0: int, k: int,
                    limit: float = math.inf) -> tuple[int, float, float]:
        """k iterations that each prefill `chunk` tokens of one prompt (the first after ctx0 tokens of context)
        beside n decodes whose KV total starts at kv0: (iterations run, total seconds, total compute seconds),
        stopping before the total would pass `limit` seconds (at least one iteration runs)."""
        t = comp = 0.0
        for j in range(k):
            dt, util = self.iteration([(chunk, ctx0 + j * chunk)], n, kv0 + j * n)
            if j and t + dt > limit:
                return j, t, comp
            t += dt
            comp += util * dt
        return k, t, comp

    def decode_steps_time(self, n: int, kv0: int, k: int) -> float:
        """Total time of k decode-only steps of n sequences whose KV total starts at kv0 (grows by n a step).

        Step j takes max(c, m0 + d * j) + fixed: compute time c is constant, memory time grows linearly. The
        first j* steps (while memory time is below c) are compute bound, the rest memory bound; both sums are
        in closed form, so a fold of any length costs O(1)."""
        if k <= 0:
            return 0.0
        c = self.tok_s * n
        fixed = self.iter_overhead_s + self.seq_overhead_s * n
        m0 = self.memory_time(kv0)
        d = self.kv_s * n
        js = self._compute_bound_steps(n, kv0, k)
        mem = (k - js) * m0 + d * (k * (k - 1) - js * (js - 1)) / 2  # sum of m0 + d * j for j in [js, k)
        return js * c + mem + fixed * k

    def decode_steps_within(self, n: int, kv0: int, k: int, limit: float) -> int:
        """The most decode steps (at least 1, at most k) of n sequences from kv0 whose total time fits `limit`."""
        if k <= 1 or self.decode_steps_time(n, kv0, k) <= limit:
            return max(k, 1)
        c = self.tok_s * n
        m0 = self.memory_time(kv0)
        if m0 >= c:  # memory bound: the total is quadratic in j; solve, then settle the rounding
            a = m0 + self.iter_overhead_s + self.seq_overhead_s * n
            b = self.kv_s * n
            j = int(limit / a) if b <= 0 else int((-(a - b / 2) + math.sqrt((a - b / 2) ** 2 + 2 * b * limit)) / b)
            j = min(max(j, 1), k)
            while j > 1 and self.decode_steps_time(n, kv0, j) > limit:
                j -= 1
            while j < k and self.decode_steps_time(n, kv0, j + 1) <= limit:
                j += 1
            return j
        lo, hi = 1, k
        while lo < hi:  # largest j whose steps fit (the total grows with j)
            mid = (lo + hi + 1) // 2
            if self.decode_steps_time(n, kv0, mid) <= limit:
                lo = mid
            else:
                hi = mid - 1
        return lo


class ProfileName(str, enum.Enum):
    A100_LLAMA2_7B = "a100-llama2-7b"
    A10G_LLAMA_7B = "a10g-llama-7b"


_LLAMA7B = dict(params=6.74e9, layers=32, hidden=4096, weight_bytes=6.74e9 * 2, kv_bytes_per_token=2 * 32 * 4096 * 2)

PROFILES: dict[ProfileName, Profile] = {
    # A100-80GB SXM: 1.55 TB/s nominal (~1.4 achievable), 312 TFLOP/s fp16 dense; vLLM-like overheads.
    # KV: 80 GB - 13.5 GB weights - activations ~ 55 GB / 0.5 MB per token ~ 100k tokens.
    ProfileName.A100_LLAMA2_7B: Profile("A100 Llama-2-7B", hbm_bw=1.4e12, peak_flops=312e12, mfu=0.5,
                                        iter_overhead_s=2.0e-3, seq_overhead_s=2.0e-5, kv_capacity_tokens=100_000,
                                        **_LLAMA7B),
    # A10G-24GB running S-LoRA as the VTC artifact does (KV pool of 10,000 tokens): the six cost terms fitted to
    # the artifact's measured runs (sim_scripts/calibrate_a10g.py --refit; docs/engine-calibration.md). The
    # hardware constants stay as documentation (600 GB/s, 125 TFLOP/s fp16); the fitted terms replace them.
    ProfileName.A10G_LLAMA_7B: Profile("A10G Llama-7B (S-LoRA)", hbm_bw=0.6e12, peak_flops=125e12, mfu=0.6,
                                       iter_overhead_s=0.02567, seq_overhead_s=0.0001094, kv_capacity_tokens=10_000,
                                       weight_s=0.003985, kv_s=1.076e-06, tok_s=0.0002119, attn_s=7.137e-07,
                                       fitted="VTC artifact, 12 measured runs (fit x0.99)", **_LLAMA7B),
}


def get_profile(name: str | ProfileName) -> Profile:
    try:
        return PROFILES[ProfileName(name)]
    except ValueError:
        raise ValueError(f"unknown profile: {name!r} (known: {', '.join(p.value for p in ProfileName)})") from None
