"""Evaluation: generated traces against real ones, side by side, as a table and PNG plots.

``python -m phantom evaluate --real R... --gen NAME=G[,G...] ...`` computes for every generated set:

* **FD**, the Frechet distance between the real and the generated windows (64 records, stride 32) in the space of
  the frozen feature extractor (``phantom.gen.features``): ``|mu_r - mu_g|^2 + Tr(S_r + S_g - 2 (S_r S_g)^1/2)``,
  the square root taken through the eigenvalues of ``S_r^1/2 S_g S_r^1/2`` (symmetric, so real and >= 0);
* **JSD** per categorical field: Jensen-Shannon divergence (base 2, in [0, 1]) of the field's marginals;
* **W1** per continuous field: Wasserstein-1 between the field's empirical distributions (mean absolute
  difference of the quantile functions on 1,000 points), in the field's unit (ns, DW, bytes, ...);
* **ACF error**: mean absolute difference of the autocorrelation of log inter-arrival times at lags 1..10;
* **task metrics** (the device designer's statistics of ``phantom stats``): each averaged over the set's traces,
  and the relative error ``|g - r| / |r|`` against the real set's;
* **violations**: the rule checker's count per rule over the generated records, as a rate per TLP.

When both ``X`` and ``X+cal`` are given, the ratios ``X / X+cal`` of every figure are printed (how much calibration
improves the backbone alone).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from phantom.gen.encoding import FI, FIELD_NAMES, Encoding, KIND_NAMES
from phantom.trace import TraceColumns, load_any_columns

log = logging.getLogger(__name__)

CATEGORICAL = ("kind", "region", "first_be", "last_be", "tag", "status", "attr", "tc", "ep", "rid", "cid")
CONTINUOUS = ("dt_ns", "length", "bc", "la", "page", "off", "post")
TASK_METRICS = ("bandwidth down (B/us)", "bandwidth up (B/us)", "read latency p50 (ns)", "read latency p99 (ns)",
                "reads in flight mean", "reads in flight max", "read request size mean (B)",
                "write request size mean (B)", "doorbell to DMA p50 (ns)", "TLPs per frame")


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to feature sets a (n, d) and b (m, d)."""
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    mu1, mu2 = a.mean(0), b.mean(0)
    s1 = np.cov(a, rowvar=False)
    s2 = np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(s1)
    r1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T            # S1^1/2
    m = r1 @ s2 @ r1
    ev = np.linalg.eigvalsh((m + m.T) / 2)
    tr_sqrt = float(np.sqrt(np.clip(ev, 0, None)).sum())
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)


def jsd(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence (base 2) between two histograms (normalised here)."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    if p.sum() == 0 or q.sum() == 0:
        return float("nan")
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(x, y):
        nz = x > 0
        return float((x[nz] * np.log2(x[nz] / y[nz])).sum())

    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


def w1(x: np.ndarray, y: np.ndarray, points: int = 1000) -> float:
    """Wasserstein-1 between two empirical distributions (quantile functions on a grid)."""
    if len(x) == 0 or len(y) == 0:
        return float("nan")
    u = (np.arange(points) + 0.5) / points * 100
    return float(np.abs(np.percentile(x, u) - np.percentile(y, u)).mean())


def acf(x: np.ndarray, lags: int = 10) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if len(x) <= lags + 1 or x.std() == 0:
        return np.full(lags, np.nan)
    x = x - x.mean()
    d = float((x * x).sum())
    return np.array([float((x[:-k] * x[k:]).sum() / d) for k in range(1, lags + 1)])


def task_metrics(tc: TraceColumns) -> dict[str, float]:
    from phantom.stats import realism, summarize

    s = summarize(tc)
    r = realism(s)
    dur = max(s["duration_us"], 1e-9)
    db = s["doorbell_to_dma_ns"]["p50"]
    return {
        "bandwidth down (B/us)": s["payload_bytes"]["down"] / dur,
        "bandwidth up (B/us)": s["payload_bytes"]["up"] / dur,
        "read latency p50 (ns)": r["DMA read latency p50 (ns)"],
        "read latency p99 (ns)": r["DMA read latency p99 (ns)"],
        "reads in flight mean": r["reads in flight mean"],
        "reads in flight max": r["reads in flight max"],
        "read request size mean (B)": r["read request size mean (B)"],
        "write request size mean (B)": r["write request size mean (B)"],
        "doorbell to DMA p50 (ns)": db,
        "TLPs per frame": r["TLPs per frame"],
    }


@dataclass
class TraceSet:
    """Traces of one side of a comparison, with what the metrics need computed once."""

    name: str
    traces: list[TraceColumns]
    tokens: np.ndarray = field(init=False)        # (N, F) every record
    dt_ps: np.ndarray = field(init=False)
    windows: tuple[np.ndarray, np.ndarray] | None = None

    def __post_init__(self) -> None:
        self._enc: Encoding | None = None

    def prepare(self, enc: Encoding, window: int, stride: int) -> None:
        toks, dts, wt, wd = [], [], [], []
        for tc in self.traces:
            tok, dt = enc.encode(tc)
            toks.append(tok)
            dts.append(dt)
            for o in range(0, len(tok) - window + 1, stride):
                wt.append(tok[o:o + window])
                wd.append(dt[o:o + window])
        self.tokens = np.concatenate(toks) if toks else np.zeros((0, len(FIELD_NAMES)), dtype=np.int64)
        self.dt_ps = np.concatenate(dts) if dts else np.zeros(0)
        self.windows = (np.stack(wt) if wt else np.zeros((0, window, len(FIELD_NAMES)), dtype=np.int64),
                        np.stack(wd) if wd else np.zeros((0, window)))
        self._acf = np.nanmean([acf(np.log1p(d / 1000.0)) for d in dts], axis=0) if dts else np.full(10, np.nan)
        self._task = {k: float(np.nanmean([m[k] for m in (task_metrics(tc) for tc in self.traces)]))
                      if self.traces else float("nan") for k in TASK_METRICS} if self.traces else {}

    def column(self, name: str) -> np.ndarray:
        if name == "dt_ns":
            return self.dt_ps / 1000.0
        return self.tokens[:, FI[name]].astype(np.float64)


def _rel(g: float, r: float) -> float:
    if not (np.isfinite(r) and r != 0):
        return float("nan")
    if not np.isfinite(g):
        return float("inf")
    return abs(g - r) / abs(r)


def compare(real: TraceSet, gen: TraceSet, feats_real: np.ndarray, feats_gen: np.ndarray,
            enc: Encoding) -> dict[str, Any]:
    from phantom.rules.columnar import check_columns

    out: dict[str, Any] = {"name": gen.name, "records": int(len(gen.tokens)), "windows": int(len(feats_gen))}
    out["fd"] = frechet(feats_real, feats_gen)
    out["jsd"] = {}
    for f in CATEGORICAL:
        V = enc.vocab[FI[f]]
        out["jsd"][f] = jsd(np.bincount(real.tokens[:, FI[f]], minlength=V), np.bincount(gen.tokens[:, FI[f]],
                                                                                        minlength=V))
    out["w1"] = {f: w1(real.column(f), gen.column(f)) for f in CONTINUOUS}
    out["acf_error"] = float(np.nanmean(np.abs(real._acf - gen._acf)))
    out["task"] = {k: gen._task.get(k, float("nan")) for k in TASK_METRICS}
    out["task_rel_error"] = {k: _rel(gen._task.get(k, float("nan")), real._task.get(k, float("nan")))
                             for k in TASK_METRICS}
    counts: dict[str, int] = {}
    total = 0
    for tc in gen.traces:
        rep = check_columns(tc)
        total += rep.total
        for r, n in rep.counts.items():
            counts[r] = counts.get(r, 0) + n
    out["violations"] = {r: n / max(total, 1) for r, n in counts.items() if n}
    out["violation_rate"] = sum(counts.values()) / max(total, 1)
    return out


def evaluate_sets(real: TraceSet, gens: list[TraceSet], extractor=None, stride: int = 32) -> dict[str, Any]:
    from phantom.gen.features import Extractor

    ex = extractor or Extractor()
    enc = ex.encoding
    W = ex.window
    real.prepare(enc, W, stride)
    fr = ex.features(*real.windows)
    res = {"real": {"name": real.name, "records": int(len(real.tokens)), "windows": int(len(fr)),
                    "task": real._task}, "systems": []}
    for g in gens:
        g.prepare(enc, W, stride)
        fg = ex.features(*g.windows)
        res["systems"].append(compare(real, g, fr, fg, enc))
    return res


def mean_or_nan(xs) -> float:
    xs = [x for x in xs if np.isfinite(x)]
    return float(np.mean(xs)) if xs else float("nan")


def _fmt(v: float, w: int = 10) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return f"{'n/a':>{w}}"
    if isinstance(v, float) and math.isinf(v):
        return f"{'inf':>{w}}"
    if abs(v) >= 1000:
        return f"{v:>{w},.0f}"
    if abs(v) >= 1 or v == 0:
        return f"{v:>{w}.3g}"
    return f"{v:>{w}.3g}"


def ratio(a: float, b: float) -> float:
    if not (np.isfinite(a) and np.isfinite(b)):
        return float("nan")
    if b == 0:
        return float("inf") if a > 0 else float("nan")
    return a / b


def format_table(res: dict[str, Any]) -> str:
    sys_ = res["systems"]
    w = max([len(s["name"]) for s in sys_] + [8]) + 2
    lines = [f"real: {res['real']['name']} ({res['real']['records']} records, {res['real']['windows']} windows)", ""]
    head = f"{'system':<{w}}{'FD':>10}{'JSD mean':>10}{'W1 dt ns':>10}{'W1 len':>10}{'ACF err':>10}" \
           f"{'task err':>10}{'viol/TLP':>10}"
    lines += [head, "-" * len(head)]
    for s in sys_:
        lines.append(f"{s['name']:<{w}}{_fmt(s['fd'])}{_fmt(mean_or_nan(s['jsd'].values()))}"
                     f"{_fmt(s['w1']['dt_ns'])}{_fmt(s['w1']['length'])}{_fmt(s['acf_error'])}"
                     f"{_fmt(mean_or_nan(s['task_rel_error'].values()))}{_fmt(s['violation_rate'])}")
    lines += ["", "task metrics (relative error to the real set; real value in brackets)"]
    tw = max(len(k) for k in TASK_METRICS) + 2
    lines.append(f"{'':<{tw}}" + "".join(f"{s['name'][:12]:>13}" for s in sys_))
    for k in TASK_METRICS:
        lines.append(f"{k:<{tw}}" + "".join(_fmt(s["task_rel_error"][k], 13) for s in sys_)
                     + f"   [{res['real']['task'].get(k, float('nan')):.4g}]")
    names = {s["name"]: s for s in sys_}
    pairs = [(n, n + "+cal") for n in names if n + "+cal" in names]
    if pairs:
        lines += ["", "calibration's improvement (backbone alone / with calibration; > 1: calibration better)"]
        lines.append(f"{'':<{tw}}" + "".join(f"{a[:12]:>13}" for a, _ in pairs))
        rows = [("FD", lambda s: s["fd"]), ("violations per TLP", lambda s: s["violation_rate"]),
                ("ACF error", lambda s: s["acf_error"]), ("JSD mean", lambda s: mean_or_nan(s["jsd"].values()))]
        rows += [(k, (lambda k: lambda s: s["task_rel_error"][k])(k)) for k in TASK_METRICS]
        for label, fn in rows:
            lines.append(f"{label:<{tw}}" + "".join(_fmt(ratio(fn(names[a]), fn(names[b])), 13) for a, b in pairs))
    return "\n".join(lines)


def plot(res: dict[str, Any], sets: dict[str, TraceSet], outdir: str | os.PathLike) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    names = [s["name"] for s in res["systems"]]

    def save(fig, name):
        p = out / name
        fig.savefig(p, dpi=100, bbox_inches="tight")
        plt.close(fig)
        files.append(p)

    fig, ax = plt.subplots(figsize=(max(6, len(names) * 0.8), 4))
    ax.bar(range(len(names)), [s["fd"] for s in res["systems"]], color="tab:blue")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_ylabel("Frechet distance (feature space)")
    ax.set_yscale("log")
    ax.set_title(f"fidelity vs {res['real']['name']}")
    save(fig, "fd.png")

    fig, ax = plt.subplots(figsize=(9, 4.5))
    x = np.arange(len(TASK_METRICS))
    wd = 0.8 / max(len(names), 1)
    for i, s in enumerate(res["systems"]):
        v = [min(s["task_rel_error"][k], 1e4) if np.isfinite(s["task_rel_error"][k]) else 1e4 for k in TASK_METRICS]
        ax.bar(x + i * wd, np.maximum(v, 1e-4), wd, label=s["name"])
    ax.set_xticks(x + 0.4, [k.replace(" (", "\n(") for k in TASK_METRICS], rotation=60, ha="right", fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("relative error")
    ax.legend(fontsize=7)
    ax.set_title("task metrics: relative error to the real traces")
    save(fig, "task_errors.png")

    rules = sorted({r for s in res["systems"] for r in s["violations"]})
    if rules:
        fig, ax = plt.subplots(figsize=(9, 4.5))
        x = np.arange(len(rules))
        for i, s in enumerate(res["systems"]):
            ax.bar(x + i * wd, [max(s["violations"].get(r, 0), 1e-7) for r in rules], wd, label=s["name"])
        ax.set_xticks(x + 0.4, rules, rotation=60, ha="right", fontsize=7)
        ax.set_yscale("log")
        ax.set_ylabel("violations per TLP (1e-7: none)")
        ax.legend(fontsize=7)
        ax.set_title("rule violations before and after calibration")
        save(fig, "violations.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, ts in sets.items():
        d = np.sort(ts.dt_ps[ts.dt_ps > 0] / 1000.0)
        if len(d):
            ax.plot(d, np.linspace(0, 1, len(d)), label=name, lw=2.5 if name == res["real"]["name"] else 1)
    ax.set_xscale("log")
    ax.set_xlabel("inter-arrival time (ns)")
    ax.set_ylabel("CDF")
    ax.legend(fontsize=7)
    save(fig, "interarrival_cdf.png")

    fig, ax = plt.subplots(figsize=(10, 4))
    x = np.arange(len(KIND_NAMES))
    allsets = list(sets.items())
    wd2 = 0.8 / max(len(allsets), 1)
    for i, (name, ts) in enumerate(allsets):
        c = np.bincount(ts.tokens[:, FI["kind"]], minlength=len(KIND_NAMES)).astype(float)
        ax.bar(x + i * wd2, c / max(c.sum(), 1), wd2, label=name)
    ax.set_xticks(x + 0.4, KIND_NAMES, rotation=70, ha="right", fontsize=7)
    ax.set_ylabel("fraction of TLPs")
    ax.legend(fontsize=7)
    ax.set_title("TLP kinds (direction, type, class)")
    save(fig, "kinds.png")
    return files


def load_set(name: str, paths: list[str | os.PathLike]) -> TraceSet:
    from phantom.gen.dataset import trace_files

    return TraceSet(name, [load_any_columns(p) for p in trace_files(list(paths))])
