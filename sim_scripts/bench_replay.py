"""`make bench-replay`: replay throughput (trace TLPs per wall second) under Verilator and Icarus.

Captures the default scenario (`mixed`, whole packet data kept so frames compare byte for byte), then replays it
on the same RTL: Verilator at the trace's timing and as fast as possible, Icarus, and Verilator at another data
width. Build time is excluded (each build is made before its run is timed).
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tb import runner  # noqa: E402
from tb.replay import run_replay  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--frames", type=int, default=600, help="frames of the captured trace")
    args = ap.parse_args()
    print(f"replay throughput, {date.today()}, {platform.machine()}, {__import__('os').cpu_count()} cores; "
          f"trace: mixed scenario, {args.frames} frames, captured under Verilator at data width 256")
    with tempfile.TemporaryDirectory() as d:
        trace = Path(d) / "mixed.jsonl.gz"
        runner.run("run_scenario", sim="verilator", data_width=256, module="test_scenario", test_dir=Path(d) / "cap",
                   env={"NIC_SCENARIO": "mixed", "NIC_FRAMES": str(args.frames), "NIC_TRACE": str(trace),
                        "NIC_PROGRESS": "0", "NIC_PAYLOAD_KEEP": "-1"})
        print(f"{'simulator':<10} {'width':>5} {'timing':<6} {'wall s':>7} {'trace TLPs':>10} {'TLPs/wall s':>12} "
              f"{'matched':>8}")
        rows = {}
        for sim, width, timing in (("verilator", 256, "trace"), ("verilator", 256, "asap"), ("icarus", 256, "trace"),
                                   ("verilator", 64, "trace")):
            runner.build(sim, width, False)
            t0 = time.perf_counter()
            rep = run_replay(str(trace), sim, width, timing, report=str(Path(d) / f"r_{sim}_{width}_{timing}.json"),
                             test_dir=Path(d) / f"run_{sim}_{width}_{timing}")
            wall = time.perf_counter() - t0
            rows[(sim, width, timing)] = rep["trace_tlps"] / wall
            print(f"{sim:<10} {width:>5} {timing:<6} {wall:>7.1f} {rep['trace_tlps']:>10,} "
                  f"{rep['trace_tlps'] / wall:>12,.0f} {100 * rep['match_fraction']:>7.1f}%", flush=True)
        v = rows[("verilator", 256, "trace")]
        print(f"Icarus/Verilator throughput ratio: {rows[('icarus', 256, 'trace')] / v:.2f}")
        print(f"target >= 1,000 trace TLPs per wall second under Verilator at data width 256: {v:,.0f} -> "
              f"{'met' if v >= 1000 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
