"""Fit an engine profile's cost terms to measured per-request timings (Vidur-style: every term of the iteration
cost model fitted), from runs of an iteration-level engine that prefills and decodes in separate iterations
(the VTC artifact's S-LoRA: each request's first token ends a prefill iteration, its last a decode step).

Method. Every request's first-token and finish times are iteration boundaries; the times of all requests of a
run, merged where they coincide (within `tol`: the measurements show gaps of < 2 ms inside one iteration's
events and > 20 ms between iterations), give the boundaries of the intervals the run is cut into. Within an
interval the decoding batch is constant (requests join and leave only at boundaries): n sequences holding KV
tokens that grow along each request's decode (interpolated between its first token and its finish); an
interval that ends with first tokens ends with one prefill iteration of those requests' prompts. For cost
terms theta, the decode steps of interval k are steps_k = (d_k - prefill_k) / step_k and each request must see
exactly output - 1 of them between its first token and its finish. The terms are fitted by Gauss-Newton on
the relative error of that count (log-parameters, so every term stays >= 0); the residuals are reported.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from serving.engine.profiles import Profile

LOG_LO, LOG_HI = np.log(1e-15), np.log(10.0)
TERMS = ("iter_overhead_s", "seq_overhead_s", "weight_s", "kv_s", "tok_s", "attn_s")


@dataclass
class Timeline:
    """One measured run cut into intervals between iteration boundaries."""

    d: np.ndarray          # (K,) interval durations (s)
    n: np.ndarray          # (K,) decoding sequences in the interval
    kv: np.ndarray         # (K,) KV tokens they hold (mid-interval)
    pre_tok: np.ndarray    # (K,) prompt tokens prefilled at the interval's end (0: none)
    pre_attn: np.ndarray   # (K,) attention units of that prefill (sum p^2 / 2)
    pre_n: np.ndarray      # (K,) prompts in it
    lo: np.ndarray         # (N,) first interval of each request's decode span (index into the cumsum)
    hi: np.ndarray         # (N,) one past its last
    steps: np.ndarray      # (N,) decode steps each request ran (output - 1)


def timeline(responses: list[dict], tol: float = 0.005) -> Timeline:
    """responses: the artifact's records (req_time, first_token_latency, request_latency, prompt_len,
    output_len)."""
    a = np.array([x["req_time"] for x in responses], dtype=float)
    f = a + np.array([x["first_token_latency"] for x in responses], dtype=float)
    e = a + np.array([x["request_latency"] for x in responses], dtype=float)
    p = np.array([x["prompt_len"] for x in responses], dtype=float)
    o = np.array([x["output_len"] for x in responses], dtype=float)
    ev = np.sort(np.concatenate([f, e]))
    starts = np.concatenate([[True], np.diff(ev) > tol])
    node_t = ev[starts]                                  # (K+1,) boundary times (first event of each group)
    nf = np.searchsorted(node_t, f + tol / 2, side="right") - 1
    ne = np.searchsorted(node_t, e + tol / 2, side="right") - 1
    K = len(node_t) - 1
    d = np.diff(node_t)
    mid = (node_t[:-1] + node_t[1:]) / 2
    # a request decodes in intervals nf < k <= ne (interval k ends at node k): k index = node - 1
    n = np.zeros(K + 1)
    np.add.at(n, nf, 1.0)
    np.add.at(n, ne, -1.0)
    n = np.cumsum(n)[:K]
    span = np.maximum(e - f, 1e-9)
    slope = np.where(o > 1, (o - 1) / span, 0.0)        # tokens per second along the request's decode
    alpha = p + 1 - slope * f                           # kv(t) = alpha + slope * t
    ca, cs = np.zeros(K + 1), np.zeros(K + 1)
    np.add.at(ca, nf, alpha)
    np.add.at(ca, ne, -alpha)
    np.add.at(cs, nf, slope)
    np.add.at(cs, ne, -slope)
    kv = np.cumsum(ca)[:K] + np.cumsum(cs)[:K] * mid
    pre_tok, pre_attn, pre_n = np.zeros(K), np.zeros(K), np.zeros(K)
    first = nf >= 1  # the very first boundary has no interval before it
    np.add.at(pre_tok, nf[first] - 1, p[first])
    np.add.at(pre_attn, nf[first] - 1, p[first] * p[first] / 2)
    np.add.at(pre_n, nf[first] - 1, 1.0)
    return Timeline(d, n, kv, pre_tok, pre_attn, pre_n, nf, ne, o - 1)


def _steps(theta: np.ndarray, tl: Timeline) -> np.ndarray:
    """Decode steps each request sees in its span under cost terms theta (TERMS order)."""
    F, S, w, v, ct, ca = theta
    step = F + S * tl.n + np.maximum(ct * tl.n, w + v * tl.kv)
    pre = np.where(tl.pre_n > 0, F + S * tl.pre_n + np.maximum(ct * tl.pre_tok + ca * tl.pre_attn, w), 0.0)
    k = np.where(tl.n > 0, np.maximum(tl.d - pre, 0.0) / step, 0.0)
    c = np.concatenate([[0.0], np.cumsum(k)])
    return c[tl.hi] - c[tl.lo]


def residuals(theta: np.ndarray, tls: list[Timeline], min_steps: int = 10) -> np.ndarray:
    """Relative error of the decode steps predicted over each request's measured decode span."""
    out = []
    for tl in tls:
        m = tl.steps >= min_steps
        out.append(_steps(theta, tl)[m] / tl.steps[m] - 1.0)
    return np.concatenate(out)


@dataclass
class Fit:
    theta: dict[str, float]   # fitted cost terms
    residuals: np.ndarray     # per request (relative)
    iterations: int

    def profile(self, base: Profile, **kw) -> Profile:
        return dataclasses.replace(base, **self.theta, **kw)


def fit(tls: list[Timeline], theta0: dict[str, float], iters: int = 60, fixed: tuple[str, ...] = ()) -> Fit:
    """Gauss-Newton with a Levenberg damping on log(theta): minimises the squared relative residuals.
    `fixed`: terms held at their theta0 value (e.g. one the measurements cannot tell from another)."""
    unknown = sorted(set(fixed) - set(TERMS))
    if unknown:
        raise ValueError(f"unknown cost term: {unknown[0]!r} (terms: {', '.join(TERMS)})")
    phi = np.log(np.array([theta0[k] for k in TERMS]))
    free = [j for j, k in enumerate(TERMS) if k not in fixed]
    lam = 1e-3
    r = residuals(np.exp(phi), tls)
    cost = float(r @ r)
    it = 0
    for it in range(1, iters + 1):
        J = np.zeros((len(r), len(phi)))
        for j in free:
            h = 1e-4
            q = phi.copy()
            q[j] += h
            J[:, j] = (residuals(np.exp(q), tls) - r) / h
        g = J.T @ r
        H = J.T @ J
        improved = False
        for _ in range(12):
            step = np.zeros(len(phi))
            Hf = H[np.ix_(free, free)]
            step[free] = np.linalg.solve(Hf + lam * np.diag(np.diag(Hf) + 1e-12), -g[free])
            q = np.clip(phi + step, LOG_LO, LOG_HI)  # a term the data cannot see goes to ~0, not to -inf
            rq = residuals(np.exp(q), tls)
            cq = float(rq @ rq)
            if cq < cost:
                phi, r, cost, lam = q, rq, cq, max(lam / 3, 1e-9)
                improved = True
                break
            lam *= 4
        if not improved or np.max(np.abs(step)) < 1e-6:
            break
    return Fit(dict(zip(TERMS, (float(x) for x in np.exp(phi)))), r, it)
