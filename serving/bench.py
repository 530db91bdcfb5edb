"""`python -m serving bench`: policies side by side on one workload, ratios against VTC, PNG plots."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from tqdm import tqdm

from serving.engine.behaviour import EngineBehaviour
from serving.metrics import Summary, jain_over_time, summarize, windowed_service
from serving.run import simulate
from serving.workloads import Workload

ABLATIONS = {
    "no-chunked": {"chunked_prefill": False},   # whole-prompt prefills that stall decodes
    "adaptive": {"adaptive": True},              # AIMD token budget (TBT target, KV pressure)
    "predicted-reserve": {"reserve": "predicted", "reserve_factor": 1.5, "admission": "sum", "block_tokens": 16},
                                                 # reserve 1.5 x MoPE's prediction (16-token blocks), preempt if short
    "fair-preempt": {"fair_preempt": True},      # evict the most over-served client's newest request for the head
}


def run_bench(wl: Workload, policies: list[str], profile: str, ablate: list[str] | None = None,
              progress: bool = True, engine: str | EngineBehaviour | None = None, window: float = 10.0,
              policy_kw: dict | None = None) -> dict[str, tuple[Summary, object, float]]:
    """Each policy on `engine` (None: each on its own engine, the system comparison), plus Equinox ablations.
    policy_kw: per policy name, keyword arguments for its constructor (e.g. {"rpm": {"limit": 20}})."""
    variants: list[tuple[str, str, dict]] = [(p, p, {}) for p in policies]
    for a in ablate or []:
        if a not in ABLATIONS:
            raise ValueError(f"unknown ablation: {a!r} (known: {', '.join(ABLATIONS)})")
        variants.append((f"equinox/{a}", "equinox", ABLATIONS[a]))
    results = {}
    for label, pol, beh in variants:
        bar = tqdm(total=len(wl.requests), desc=f"{wl.name}: {label}", unit="req", disable=not progress, leave=False)
        t0 = time.perf_counter()
        res = simulate(wl.requests, pol, profile, behaviour=beh, progress=bar, engine=engine,
                       policy_kw=(policy_kw or {}).get(pol))
        wall = time.perf_counter() - t0
        bar.close()
        results[label] = (summarize(res, window), res, wall)
    return results


def engine_label(engine, label: str) -> str:
    from serving.policies import make_policy
    if engine is not None:
        return engine.name if isinstance(engine, EngineBehaviour) else str(engine)
    return make_policy(label.split("/")[0]).behaviour.name


def _j(x: float, s: Summary) -> str:
    return f"{x:5.3f} ({s.contended_windows}/{s.windows})" if x == x else f"  nan ({s.contended_windows}/{s.windows})"


def format_table(results, base: str = "vtc", engine=None) -> str:
    """One row per policy; Jain's indices over windows carry (contended windows / windows) beside them."""
    b = results.get(base, (None,))[0]

    def ratio(x, y):
        return f"{x / y:5.2f}x" if b is not None and y else "   - "

    head = (f"{'policy':<22} {'engine':<9} {'tok/s':>8} {'vs VTC':>7} {'TTFT s':>8} {'vs VTC':>7} {'p99 TTFT':>9} "
            f"{'Jain service':>16} {'vs VTC':>7} {'Jain resource':>16} {'vs VTC':>7} {'Jain s/tok':>10} {'vs VTC':>7} "
            f"{'Jain TTFT':>9} {'vs VTC':>7} {'gap/bound':>9} {'preempt':>7} {'reject':>6} {'req/wall s':>10}")
    lines = [head, "-" * len(head)]
    for label, (s, _, wall) in results.items():
        lines.append(
            f"{label:<22} {engine_label(engine, label):<9} {s.throughput_tok_s:8.1f} "
            f"{ratio(s.throughput_tok_s, b.throughput_tok_s if b else 0):>7} "
            f"{s.ttft_mean:8.2f} {ratio(s.ttft_mean, b.ttft_mean if b else 0):>7} {s.ttft_p99:9.2f} "
            f"{_j(s.jain, s):>16} {ratio(s.jain, b.jain if b else 0):>7} {_j(s.jain_resource, s):>16} "
            f"{ratio(s.jain_resource, b.jain_resource if b else 0):>7} {s.jain_latency:10.3f} "
            f"{ratio(s.jain_latency, b.jain_latency if b else 0):>7} {s.jain_ttft:9.3f} "
            f"{ratio(s.jain_ttft, b.jain_ttft if b else 0):>7} {s.max_gap / s.vtc_bound:9.2f} "
            f"{s.preemptions:7d} {s.rejected:6d} {s.requests / wall:10.0f}")
    return "\n".join(lines)


def plot(results, outdir: str | Path, title: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    n = len(results)
    fig, axes = plt.subplots(n, 1, figsize=(9, 2.4 * n), sharex=True, squeeze=False)
    for ax, (label, (s, res, _)) in zip(axes[:, 0], results.items()):
        t, rate = windowed_service(res, 10.0)
        top = np.argsort(-rate.sum(axis=0))[:8]
        for c in top:
            ax.plot(t, rate[:, c], label=res.clients[c])
        ax.set_ylabel("service/s")
        ax.set_title(f"{label}: service rate per client (10 s windows)", fontsize=9)
        if len(top) <= 8:
            ax.legend(fontsize=6, ncol=4)
    axes[-1, 0].set_xlabel("time (s)")
    fig.suptitle(title)
    files.append(out / "service_over_time.png")
    fig.savefig(files[-1], dpi=100, bbox_inches="tight")
    plt.close(fig)

    def figure(name: str, draw, xlabel: str, ylabel: str, heading: str, size=(6, 4)) -> Path:
        fig, ax = plt.subplots(figsize=size)
        for label, (_, res, _) in results.items():
            draw(ax, label, res)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title}: {heading}")
        ax.legend(fontsize=7)
        f = out / name
        fig.savefig(f, dpi=100, bbox_inches="tight")
        plt.close(fig)
        return f

    def ttft_cdf(ax, label, res):
        x = np.sort([r.ttft for r in res.requests if r.ttft is not None])
        ax.plot(x, np.linspace(0, 1, len(x)), label=label)
        ax.set_xscale("symlog", linthresh=0.1)

    def jain_line(ax, label, res):
        t, j = jain_over_time(res, 10.0)
        ax.plot(t, j, label=label)
        ax.set_ylim(0, 1.05)

    files.append(figure("ttft_cdf.png", ttft_cdf, "TTFT (s)", "CDF", "time to first token"))
    files.append(figure("jain_over_time.png", jain_line, "time (s)", "Jain's index",
                        "Jain's index over backlogged clients (10 s windows)", (8, 3)))
    return files


def to_json(results) -> dict:
    out = {}
    for label, (s, _, wall) in results.items():
        d = asdict(s)
        d["wall_s"] = wall
        out[label] = d
    return out
