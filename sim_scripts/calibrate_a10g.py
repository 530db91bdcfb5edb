"""`make bench-serving` (second half): fit the A10G profile's cost terms to the VTC artifact's measured runs and
compare the simulator, running FCFS and VTC on the artifact's engine, with every measured run.

Stage 1 (Vidur-style, serving.engine.fit): the six cost terms fitted to the measured per-request timelines.
Stage 2: one factor on all terms, chosen on the grid below for the smallest worst error in throughput and mean
latency over the 12 runs (the timelines see step costs; the simulated runs also depend on how admissions fall
into cohorts, which a 1 % change in step time can shift).
The profile in serving/engine/profiles.py holds the result; this script prints both and the comparison."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import serving.engine.profiles as P  # noqa: E402
from serving.engine import fit as F  # noqa: E402
from serving.run import simulate  # noqa: E402
from serving.workloads import ARTIFACT_SUITES, artifact_run, artifact_workload  # noqa: E402

SCALES = [round(0.90 + 0.01 * i, 2) for i in range(11)]


def ks(a: np.ndarray, b: np.ndarray) -> float:
    """Kolmogorov-Smirnov distance between two samples."""
    a, b = np.sort(a), np.sort(b)
    x = np.concatenate([a, b])
    return float(np.max(np.abs(np.searchsorted(a, x, side="right") / len(a) - np.searchsorted(b, x, side="right") / len(b))))


def compare(profile, suite: str, pol: str) -> dict:
    m = artifact_run(suite, pol)["result"]
    wl = artifact_workload(suite, pol)
    old = P.PROFILES[P.ProfileName.A10G_LLAMA_7B]
    P.PROFILES[P.ProfileName.A10G_LLAMA_7B] = profile
    try:
        r = simulate(wl.requests, pol, "a10g-llama-7b", engine="artifact")
    finally:
        P.PROFILES[P.ProfileName.A10G_LLAMA_7B] = old
    lat = np.array([x.finished - x.arrival for x in r.requests])
    mlat = np.array([x["request_latency"] for x in m["responses"]])
    tok = sum(x.prompt_tokens + x.output_tokens for x in r.requests) / r.makespan
    mtok = sum(x["prompt_len"] + x["output_len"] for x in m["responses"]) / m["total_time"]
    return {"suite": suite, "policy": pol, "n": len(lat), "tok": tok, "mtok": mtok, "lat": lat.mean(), "mlat": mlat.mean(),
            "p50": np.median(lat), "mp50": np.median(mlat), "p90": np.percentile(lat, 90), "mp90": np.percentile(mlat, 90),
            "ks": ks(lat, mlat)}


def worst(rows) -> float:
    return max(max(abs(r["tok"] / r["mtok"] - 1), abs(r["lat"] / r["mlat"] - 1)) for r in rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--refit", action="store_true", help="run the fit and the scale search (about 40 s)")
    ap.add_argument("--fix-weight", action="store_true",
                    help="with --refit: hold the weight read at the datasheet figure (weight bytes / HBM bandwidth) "
                         "instead of fitting it (the fit cannot tell it from the iteration overhead)")
    args = ap.parse_args()
    runs = [(s, p) for s in ARTIFACT_SUITES for p in ("vtc", "fcfs")]
    base = P.PROFILES[P.ProfileName.A10G_LLAMA_7B]
    if args.refit:
        t0 = time.perf_counter()
        tls = [F.timeline(artifact_run(s, p)["result"]["responses"]) for s, p in runs]
        th0 = {"iter_overhead_s": 9e-3, "seq_overhead_s": 1e-4, "weight_s": 0.0225, "kv_s": 8.7e-7,
               "tok_s": 1.8e-4, "attn_s": 7e-9}
        if args.fix_weight:
            th0["weight_s"] = base.weight_bytes / base.hbm_bw
        fitted = F.fit(tls, th0, fixed=("weight_s",) if args.fix_weight else ())
        r = fitted.residuals
        print(f"== stage 1: cost terms fitted to {len(r)} requests' decode spans in {len(runs)} measured runs "
              f"({fitted.iterations} iterations, {time.perf_counter() - t0:.1f} s)")
        for k, v in fitted.theta.items():
            print(f"  {k:<16} {v:.4g}")
        print(f"  residual (predicted / measured decode steps - 1): median |r| {np.median(np.abs(r)):.2%}, "
              f"p90 |r| {np.percentile(np.abs(r), 90):.2%}, mean {r.mean():+.2%}")
        print("== stage 2: one factor on all terms (worst |error| of throughput and mean latency over the runs)")
        best = None
        for sc in SCALES:
            prof = dataclasses.replace(base, **{k: v * sc for k, v in fitted.theta.items()})
            rows = [compare(prof, s, p) for s, p in runs]
            w = worst(rows)
            print(f"  x{sc:.2f}: worst {w:.1%}; throughput / mean latency error: " +
                  ", ".join(f"{r['suite']} {r['policy']} {r['tok'] / r['mtok'] - 1:+.1%} / {r['lat'] / r['mlat'] - 1:+.1%}"
                            for r in rows))
            if best is None or w < best[0]:
                best = (w, sc, prof)
        print(f"  chosen x{best[1]:.2f}; terms for serving/engine/profiles.py:")
        for k in F.TERMS:
            print(f"    {k}={getattr(best[2], k):.4g},")
    print("== the A10G profile (serving/engine/profiles.py) against the measured runs "
          "(tokens/s: input + output over the run)")
    print(f"{'suite':<20} {'policy':<5} {'req':>5} {'meas tok/s':>10} {'sim tok/s':>9} {'err':>6} {'meas lat':>8} "
          f"{'sim lat':>8} {'err':>6} {'p50 err':>7} {'p90 err':>7} {'KS':>5}")
    rows = []
    for s, p in runs:
        r = compare(base, s, p)
        rows.append(r)
        print(f"{s:<20} {p:<5} {r['n']:>5} {r['mtok']:10.1f} {r['tok']:9.1f} {r['tok'] / r['mtok'] - 1:+6.1%} "
              f"{r['mlat']:8.1f} {r['lat']:8.1f} {r['lat'] / r['mlat'] - 1:+6.1%} {r['p50'] / r['mp50'] - 1:+7.1%} "
              f"{r['p90'] / r['mp90'] - 1:+7.1%} {r['ks']:5.2f}")
    print(f"worst |error| of throughput and mean latency: {worst(rows):.1%}; on the real trace: "
          f"{worst([r for r in rows if r['suite'] == 'real']):.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
