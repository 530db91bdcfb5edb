"""`make bench-sim`: the same scenario under Verilator and Icarus; wall time, simulated time, TLPs/s, ratio."""

from __future__ import annotations

import argparse
import platform
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from phantom.stats import summarize  # noqa: E402
from tb import runner  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--scenario", default="mixed")
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--width", type=int, default=256, choices=runner.DATA_WIDTHS)
    args = ap.parse_args()
    rows = {}
    for sim in runner.SIMULATORS:
        runner.build(sim, args.width, False)  # build time is not measured
        trace = ROOT / "build" / f"bench_{sim}.jsonl.gz"
        t0 = time.perf_counter()
        runner.run("run_scenario", sim=sim, data_width=args.width, module="test_scenario",
                   env={"NIC_SCENARIO": args.scenario, "NIC_FRAMES": str(args.frames), "NIC_TRACE": str(trace),
                        "NIC_PROGRESS": "0"})
        wall = time.perf_counter() - t0
        s = summarize(trace)
        rows[sim] = (wall, s["duration_us"], s["tlps"])
    print(f"scenario {args.scenario}, {args.frames} frames, data width {args.width}, {date.today()}, "
          f"{platform.processor() or platform.machine()}")
    print(f"{'simulator':<10} {'wall s':>8} {'sim us':>9} {'TLPs':>7} {'TLPs/wall s':>12}")
    for sim, (wall, us, n) in rows.items():
        print(f"{sim:<10} {wall:>8.2f} {us:>9.1f} {n:>7} {n / wall:>12.0f}")
    v, i = rows["verilator"][0], rows["icarus"][0]
    print(f"Icarus/Verilator wall-time ratio: {i / v:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
