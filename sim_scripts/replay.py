"""`make replay TRACE=path [SIM=verilator|icarus] [WIDTH=256] [TIMING=trace|asap]`: replay a trace on the NIC RTL.

The trace is checked before any simulation (readable, legal, for this register map and device, link parameters
the device can be set to); then its host side is re-enacted through the root complex and the device side
checked. Prints the replay report and writes it as JSON beside the trace (or to --report).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tb import runner  # noqa: E402
from tb.nic_tb import regmap_fingerprint  # noqa: E402
from tb.replay import ReplayError, ReplayPlan  # noqa: E402

NIC_ID = (0x1234, 0x4E31)


def replay(trace: str, sim: str = "verilator", width: int = 256, timing: str = "trace", report: str | None = None,
           capture: str | None = None, mode: str | None = None, test_dir: Path | None = None) -> dict:
    """Validate, run, and return the JSON report (raises ReplayError on a refused trace, SimulationFailed on a
    failed replay: the report is written either way)."""
    if timing not in ("trace", "asap"):
        raise ReplayError(f"TIMING must be 'trace' or 'asap', got {timing!r}")
    plan = ReplayPlan.from_trace(trace, regmap=regmap_fingerprint(), device=NIC_ID, data_width=width)
    rpath = Path(report) if report else Path(trace).with_name(Path(trace).name.split(".")[0] + f".replay.{sim}.json")
    if rpath.exists():
        rpath.unlink()
    env = {"REPLAY_TRACE": str(Path(trace).resolve()), "REPLAY_TIMING": timing, "REPLAY_REPORT": str(rpath.resolve())}
    if capture:
        env["REPLAY_CAPTURE"] = str(Path(capture).resolve())
    if mode:
        env["REPLAY_MODE"] = mode
    try:
        runner.run("replay_trace", sim=sim, data_width=width, module="test_replay", env=env, test_dir=test_dir)
    finally:
        if not rpath.exists():
            raise runner.SimulationFailed(f"replay of {trace} produced no report (simulator crashed?)")
    _ = plan
    return json.loads(rpath.read_text())


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
        rep = replay(args.trace, args.sim, args.width, args.timing, args.report, args.capture, args.mode)
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
