"""`make bench-realism`: how realistic the captured traffic is, and how it differs from the idealised host.

Runs the default scenario (`mixed`, realistic host), the `loaded` scenario, and the same traffic with the
idealised host of the first testbench (`ideal`), then prints the realism table (what `phantom stats A --compare
B` prints) and checks the targets: DMA read latency p50 within 300 ns..2 us, mean reads in flight >= 4 under load.
"""

from __future__ import annotations

import argparse
import platform
import sys
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from phantom.rules import check_file  # noqa: E402
from phantom.stats import format_compare, realism, summarize  # noqa: E402
from tb import runner  # noqa: E402


def capture(scenario: str, frames: int | None, out: Path) -> Path:
    env = {"NIC_SCENARIO": scenario, "NIC_TRACE": str(out), "NIC_PROGRESS": "0"}
    if frames:
        env["NIC_FRAMES"] = str(frames)
    runner.run("run_scenario", sim="verilator", data_width=256, module="test_scenario", env=env,
               test_dir=out.parent / f"run_{scenario}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--frames", type=int, default=None, help="frames per scenario (default: each scenario's own)")
    ap.add_argument("--out", default=str(ROOT / "build" / "realism"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"realism of captured traffic, {date.today()}, {platform.machine()}, Verilator, data width 256")
    traces = {s: capture(s, args.frames, out / f"{s}.jsonl.gz") for s in ("mixed", "loaded", "ideal")}
    summ = {s: summarize(p) for s, p in traces.items()}
    for s, p in traces.items():
        rep = check_file(p)
        print(f"{s}: {summ[s]['tlps']} TLPs, rule check: {rep.errors} errors, {rep.warnings} warnings")
    print("\n== default scenario (realistic host) vs the same traffic on the idealised host")
    print(format_compare(summ["mixed"], summ["ideal"], ("mixed (realistic)", "ideal")))
    print("\n== loaded scenario (realistic host) vs the default")
    print(format_compare(summ["loaded"], summ["mixed"], ("loaded", "mixed")))
    m, lo = realism(summ["mixed"]), realism(summ["loaded"])
    p50 = m["DMA read latency p50 (ns)"]
    ok1 = 300 <= p50 <= 2000
    ok2 = lo["reads in flight mean"] >= 4
    print(f"\ntarget DMA read latency p50 in [300 ns, 2 us]: {p50:.0f} ns -> {'met' if ok1 else 'MISSED'}")
    print(f"target mean reads in flight >= 4 under load: {lo['reads in flight mean']:.2f} (loaded), "
          f"{m['reads in flight mean']:.2f} (default) -> {'met' if ok2 else 'MISSED'}")
    return 0 if ok1 and ok2 else 1


if __name__ == "__main__":
    sys.exit(main())
