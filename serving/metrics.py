"""Fairness and performance metrics of a simulated (or real) run."""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

from serving.engine.simulator import SimResult


def jain(x: np.ndarray) -> float:
    """Jain's fairness index (sum x)^2 / (n sum x^2): 1 is perfectly even, 1/n maximally uneven."""
    x = np.asarray(x, dtype=float)
    if len(x) == 0 or not np.any(x):
        return float("nan")
    return float(x.sum() ** 2 / (len(x) * (x * x).sum()))


def latency_jain(requests) -> float:
    """Jain's index over clients of their mean normalised latency (seconds per output token): how evenly the
    latency users feel is spread, whatever their request sizes (1: every client waits the same per token)."""
    per: dict[str, list[float]] = {}
    for r in requests:
        if r.finished is not None:
            per.setdefault(r.client, []).append((r.finished - r.arrival) / r.output_tokens)
    return jain(np.array([np.mean(v) for v in per.values()])) if len(per) > 1 else float("nan")


def ttft_jain(requests) -> float:
    """Jain's index over clients of their mean time to first token."""
    per: dict[str, list[float]] = {}
    for r in requests:
        if r.first_token is not None:
            per.setdefault(r.client, []).append(r.first_token - r.arrival)
    return jain(np.array([np.mean(v) for v in per.values()])) if len(per) > 1 else float("nan")


def vtc_bound(max_input: int, batch_tokens: int, w_p: float = 1.0, w_q: float = 2.0) -> float:
    """VTC's bound (Sheng et al., Thm. 4.4) on the service difference between backlogged clients:
    2 * max(w_p * L_input, w_q * M), L_input the longest prompt, M the most tokens a running batch can hold."""
    return 2.0 * max(w_p * max_input, w_q * batch_tokens)


def max_service_gap(res: SimResult) -> float:
    """The largest difference in weighted service (service over weight) two clients receive over an interval
    in which both are backlogged at every sample: max over pairs (f, g) and their common backlogged runs of
    max - min of S_f/w_f - S_g/w_g over the run (the quantity VTC's Theorem 4.4 bounds). Exact, and equal to
    max_service_gap_pairs (the O(T x C^2) definition, kept as the tests' oracle), found by bound and search:

    Over each sample interval the fair share dV is the service per unit weight the clients backlogged over it
    received together, and a client's lag L grows by its own service per weight minus dV; for f and g both
    backlogged over [t1, t2], (dS_f/w_f - dS_g/w_g) = dL_f - dL_g <= rise_f + fall_g, rise (fall) being the
    largest rise (fall) of a client's lag within one of its backlogged runs. One O(T x C) pass gives every
    client's rise and fall; ordered pairs are then visited in decreasing order of rise_f + fall_g (a heap over
    the two sorted lists) and each visited pair's exact value computed in O(T), until the next bound cannot
    beat the best exact value found. Memory: O(C) beyond the sample tables."""
    T = len(res.samples_t)
    if T < 2:
        return 0.0
    w = _weights(res)
    S = res.samples_service                              # (T, C) raw service (not copied)
    B = res.samples_backlog                              # (T, C)
    C = S.shape[1]
    cur, lo, hi = np.zeros(C), np.zeros(C), np.zeros(C)
    rise, fall = np.zeros(C), np.zeros(C)
    prev_s, prev_b = np.asarray(S[0], float), np.asarray(B[0], bool)
    for k in range(1, T):
        s_k, b_k = np.asarray(S[k], float), np.asarray(B[k], bool)
        both = b_k & prev_b                              # backlogged over the interval
        if both.any():
            ds = s_k - prev_s
            dv = ds[both].sum() / w[both].sum()
            cur = np.where(both, cur + ds / w - dv, 0.0)  # lag since the run began (a new run starts at 0)
            lo = np.where(both, np.minimum(lo, cur), 0.0)
            hi = np.where(both, np.maximum(hi, cur), 0.0)
            np.maximum(rise, cur - lo, out=rise)
            np.maximum(fall, hi - cur, out=fall)
        else:
            cur[:] = lo[:] = hi[:] = 0.0
        prev_s, prev_b = s_k, b_k
    by_rise, by_fall = np.argsort(-rise, kind="stable"), np.argsort(-fall, kind="stable")
    best = 0.0
    done: set[tuple[int, int]] = set()
    heap = [(-(rise[by_rise[0]] + fall[by_fall[0]]), 0, 0)]
    pushed = {(0, 0)}
    while heap:
        neg, i, j = heapq.heappop(heap)
        if -neg <= best * (1 + 1e-12):
            break                                        # no pair left can beat the best exact value
        f, g = int(by_rise[i]), int(by_fall[j])
        if f != g and (min(f, g), max(f, g)) not in done:
            done.add((min(f, g), max(f, g)))
            best = max(best, _pair_gap(S, B, w, f, g))
        for a, b in ((i + 1, j), (i, j + 1)):
            if a < C and b < C and (a, b) not in pushed:
                pushed.add((a, b))
                heapq.heappush(heap, (-(rise[by_rise[a]] + fall[by_fall[b]]), a, b))
    return best


def _pair_gap(S, B, w, f: int, g: int) -> float:
    """max - min of S_f/w_f - S_g/w_g over each run of samples at which both are backlogged, the largest."""
    both = np.asarray(B[:, f], bool) & np.asarray(B[:, g], bool)
    if not both.any():
        return 0.0
    d = np.asarray(S[:, f], float) / w[f] - np.asarray(S[:, g], float) / w[g]
    idx = np.flatnonzero(both)
    worst = 0.0
    for run in np.split(idx, np.flatnonzero(np.diff(idx) > 1) + 1):
        seg = d[run]
        worst = max(worst, float(seg.max() - seg.min()))
    return worst


def max_service_gap_pairs(res: SimResult) -> float:
    """The definition of max_service_gap, pair by pair: O(T x C^2), the tests' oracle on small runs."""
    if len(res.samples_t) < 2:
        return 0.0
    S, B, w = np.asarray(res.samples_service), np.asarray(res.samples_backlog, bool), _weights(res)
    C = S.shape[1]
    return max((_pair_gap(S, B, w, f, g) for f in range(C) for g in range(f + 1, C)), default=0.0)


def windowed_service(res: SimResult, window: float = 10.0, resource: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(window end times, service per client per second in each window); resource=True: weighted GPU-seconds."""
    if not window > 0:
        raise ValueError(f"window must be positive seconds, got {window!r}")
    t = np.asarray(res.samples_t)
    S = np.asarray(res.samples_gpu if resource else res.samples_service)
    edges = np.arange(0, t[-1] + window, window)
    # samples fall where the simulator's steps end (a folded step can span seconds): the accumulated service at
    # each window edge is interpolated between the samples around it (exact while the service rate is constant)
    pos = np.clip(np.searchsorted(t, edges, side="right") - 1, 0, len(t) - 1)
    nxt = np.minimum(pos + 1, len(t) - 1)
    span = t[nxt] - t[pos]
    frac = np.where(span > 0, np.clip((edges - t[pos]) / np.where(span > 0, span, 1.0), 0.0, 1.0), 0.0)
    acc = S[pos] + (S[nxt] - S[pos]) * frac[:, None]                       # (edges, C), as np.interp per column
    return edges[1:], np.diff(acc, axis=0) / window


def backlog_fraction(res: SimResult, edges: np.ndarray) -> np.ndarray:
    """(windows, clients): the fraction of each window [edges[k], edges[k+1]] in which the client had requests
    waiting, exactly, from the policy's log of queue transitions (time-weighted, whatever the sampling).
    Vectorised over the log: each waiting interval adds its partial first and last windows and, through a
    difference array, the full windows between them."""
    edges = np.asarray(edges, float)
    C, E = len(res.clients), len(edges) - 1
    out = np.zeros((E, C))
    if not res.backlog_log or E <= 0:
        return out
    idx = {c: i for i, c in enumerate(res.clients)}
    t = np.array([x[0] for x in res.backlog_log], float)
    who = np.array([idx[x[1]] for x in res.backlog_log], np.int64)
    on = np.array([x[2] for x in res.backlog_log], bool)
    order = np.lexsort((np.arange(len(t)), who))         # by client, then in log order (time order)
    t, who, on = t[order], who[order], on[order]
    last = np.r_[who[1:] != who[:-1], True]              # the client's last transition
    end = np.where(last, np.inf, np.r_[t[1:], np.inf])   # each transition holds until the client's next one
    a, b = t[on], np.minimum(end[on], edges[-1])         # waiting intervals [a, b), clipped to the windows
    c = who[on]
    a = np.maximum(a, edges[0])
    keep = b > a
    a, b, c = a[keep], b[keep], c[keep]
    ka = np.clip(np.searchsorted(edges, a, side="right") - 1, 0, E - 1)   # window holding a
    kb = np.clip(np.searchsorted(edges, b, side="left") - 1, 0, E - 1)    # window holding b (b on an edge: before it)
    same = ka == kb
    np.add.at(out, (ka[same], c[same]), b[same] - a[same])
    d = ~same
    np.add.at(out, (ka[d], c[d]), edges[ka[d] + 1] - a[d])
    np.add.at(out, (kb[d], c[d]), b[d] - edges[kb[d]])
    full = np.zeros((E + 1, C))                          # windows ka+1 .. kb-1 wholly waiting
    np.add.at(full, (ka[d] + 1, c[d]), 1.0)
    np.add.at(full, (kb[d], c[d]), -1.0)
    width = np.diff(edges)
    out += np.cumsum(full, axis=0)[:E] * width[:, None]
    return out / width[:, None]


def jain_over_time(res: SimResult, window: float = 10.0, resource: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Jain's index of weighted service among the clients backlogged (requests waiting) for at least half of
    each window (time-weighted).

    Fairness is about clients that compete: a client whose every request is served at once gets what it asks
    for, whatever its share, so windows with fewer than two backlogged clients have no index (NaN).
    """
    ends, rate = windowed_service(res, window, resource)
    frac = backlog_fraction(res, np.concatenate([[ends[0] - window], ends])) if len(ends) else np.zeros((0, 0))
    weights = np.ones(len(res.clients)) if resource else _weights(res)  # GPU-seconds are already weighted
    out = []
    for k in range(len(ends)):
        back = frac[k] >= 0.5
        out.append(jain(rate[k][back] / weights[back]) if back.sum() > 1 else np.nan)
    return ends, np.asarray(out)


def _attainment(requests) -> float:
    with_dl = [r for r in requests if r.deadline is not None]
    if not with_dl:
        return float("nan")
    return sum(1 for r in with_dl if r.finished is not None and r.finished - r.arrival <= r.deadline) / len(with_dl)


def _weights(res: SimResult) -> np.ndarray:
    w = {r.client: r.weight for r in res.requests}
    return np.array([w[c] for c in res.clients])


@dataclass
class Summary:
    requests: int
    finished: int
    makespan_s: float
    throughput_req_s: float
    throughput_tok_s: float          # output tokens per second over the makespan
    ttft_mean: float
    ttft_p50: float
    ttft_p90: float
    ttft_p99: float
    latency_mean: float
    tbt_p50: float
    tbt_p99: float
    jain: float                      # mean Jain's index over the windows with >= 2 backlogged clients (NaN: none)
    jain_all: float                  # Jain over each client's weighted service per second of activity, whole run
    contended: float                 # fraction of windows with >= 2 backlogged clients
    windows: int                     # windows of the run (window seconds each)
    contended_windows: int           # of them, with >= 2 backlogged clients (what jain and jain_resource rest on)
    window_s: float                  # window length
    jain_latency: float              # Jain over clients' mean normalised latency (s per output token)
    jain_ttft: float                 # Jain over clients' mean TTFT
    rejected: int                    # requests refused at arrival (rate limits)
    jain_resource: float             # like jain, over weighted GPU-seconds instead of token service
    deadline_attainment: float       # share of requests with a deadline that finished within it (NaN: none had one)
    max_gap: float                   # max accumulated-service difference between backlogged clients
    vtc_bound: float
    gpu_util: float                  # fraction of time the GPU runs iterations (what NVML's utilization.gpu reports)
    sm_util: float                   # tensor-core work / time: compute time of the iterations over the makespan
    preemptions: int
    kv_peak: int
    kv_capacity: int
    ttft_by_client: dict


def summarize(res: SimResult, window: float = 10.0) -> Summary:
    if not window > 0:
        raise ValueError(f"window must be positive seconds, got {window!r}")
    done = [r for r in res.requests if r.finished is not None]
    ttft = np.array([r.ttft for r in done]) if done else np.array([np.nan])
    lat = np.array([r.latency for r in done]) if done else np.array([np.nan])
    out_tok = sum(r.output_tokens for r in done)
    if res.tbt:
        st = np.array([a for a, _ in res.tbt])
        w = np.array([b for _, b in res.tbt], dtype=float)
        order = np.argsort(st)
        cw = np.cumsum(w[order]) / w.sum()
        tbt50 = float(st[order][np.searchsorted(cw, 0.5)])
        tbt99 = float(st[order][min(np.searchsorted(cw, 0.99), len(st) - 1)])
    else:
        tbt50 = tbt99 = float("nan")
    # per-client service rate while active (weighted): fairness of what each got when it wanted service
    S = res.samples_service
    A = res.samples_active
    t = np.asarray(res.samples_t)
    dt = np.diff(np.concatenate([[0.0], t]))
    active_time = np.zeros(len(res.clients))
    for i in range(0, len(t), 4096):                 # in row blocks: no (T, C) temporary
        active_time += dt[i:i + 4096] @ A[i:i + 4096]
    rate = np.where(active_time > 0, S[-1] / np.maximum(active_time, 1e-9), 0.0) / _weights(res)
    per: dict[str, list[float]] = {}
    for r in done:
        per.setdefault(r.client, []).append(r.ttft)
    by_client = {}
    for c in res.clients:
        x = np.array(per.get(c, ()))
        if len(x):
            by_client[c] = {"n": int(len(x)), "mean": float(x.mean()), "p50": float(np.percentile(x, 50)),
                            "p90": float(np.percentile(x, 90)), "p99": float(np.percentile(x, 99))}
    max_in = max(r.prompt_tokens for r in res.requests)
    _, jt = jain_over_time(res, window)
    _, jr = jain_over_time(res, window, resource=True)
    return Summary(
        requests=len(res.requests), finished=len(done), makespan_s=res.makespan,
        throughput_req_s=len(done) / res.makespan if res.makespan else 0.0,
        throughput_tok_s=out_tok / res.makespan if res.makespan else 0.0,
        ttft_mean=float(np.nanmean(ttft)), ttft_p50=float(np.nanpercentile(ttft, 50)),
        ttft_p90=float(np.nanpercentile(ttft, 90)), ttft_p99=float(np.nanpercentile(ttft, 99)),
        latency_mean=float(np.nanmean(lat)), tbt_p50=tbt50, tbt_p99=tbt99,
        jain=float(np.nanmean(jt)) if np.isfinite(jt).any() else float("nan"),
        jain_all=jain(rate[active_time > 0]), contended=float(np.isfinite(jt).mean()) if len(jt) else 0.0,
        windows=len(jt), contended_windows=int(np.isfinite(jt).sum()), window_s=float(window),
        jain_latency=latency_jain(res.requests), jain_ttft=ttft_jain(res.requests), rejected=res.rejected,
        jain_resource=float(np.nanmean(jr)) if np.isfinite(jr).any() else float("nan"),
        deadline_attainment=_attainment(res.requests),
        max_gap=max_service_gap(res), vtc_bound=vtc_bound(max_in, res.kv_capacity),
        gpu_util=res.busy / res.makespan if res.makespan else 0.0,
        sm_util=res.compute / res.makespan if res.makespan else 0.0, preemptions=res.preemptions,
        kv_peak=res.kv_peak, kv_capacity=res.kv_capacity, ttft_by_client=by_client,
    )
