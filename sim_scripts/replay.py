"""`make replay TRACE=path [SIM=verilator|icarus] [WIDTH=256] [TIMING=trace|asap]`: replay a trace on the NIC RTL.

The trace is checked before any simulation (readable, legal, for this register map and device, link parameters
the device can be set to); then its host side is re-enacted through the root complex and the device side
checked. Prints the replay report and writes it as JSON beside the trace (or to --report).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tb import runner  # noqa: E402
from tb.replay import ReplayError, run_replay  # noqa: E402

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("trace")
    ap.add_argument("--sim", default="verilator", choices=runner.SIMULATORS)
    ap.add_argument("--width", type=int, default=256, choices=runner.DATA_WIDTHS)
    ap.add_argument("--timing", default="trace", choices=("trace", "asap"))
    ap.add_argument("--mode", default=None, choices=("exact", "stimulus"),
                    help="exact: the device side must match (captures); stimulus: judged by checker and scoreboard, "
                         "divergence reported (default: stimulus for generated traces)")
    ap.add_argument("--report", default=None, help="JSON report path")
    ap.add_argument("--capture", default=None, help="also write the replay's own trace here")
    args = ap.parse_args(argv)
    t0 = time.time()
    try:
        rep = run_replay(args.trace, args.sim, args.width, args.timing, args.report, args.capture, args.mode)
    except ReplayError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except runner.SimulationFailed as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    print(f"replay done in {time.time() - t0:.1f} s: {'PASS' if rep['ok'] else 'FAIL'}, "
          f"{rep['matched']} of {rep['expected']} device TLPs matched")
    return 0 if rep["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
