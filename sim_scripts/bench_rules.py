"""`make bench-rules`: rule-checker throughput and peak memory on 250,000- and 1,000,000-TLP NIC traces.

The traces are a real capture (the default `mixed` scenario through Verilator, realistic host) tiled end to end
with shifted times, so every rule runs on realistic NIC traffic, the NIC causality chains included (each copy
begins with the driver's queue resets). Each check runs in a fresh process; both checkers are measured, with
and without the NIC rules.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from phantom.stats import summarize  # noqa: E402
from phantom.trace import TraceColumns, convert, load_any_columns, save_columns  # noqa: E402


def tile(tc: TraceColumns, n: int) -> TraceColumns:
    """Copies of a trace end to end (times shifted, sequence renumbered) up to n records."""
    reps = -(-n // len(tc))
    t = tc["t_ps"].astype(np.int64)
    span = int(t.max() - t.min()) + 1_000_000
    cols = {}
    for k, v in tc.cols.items():
        cols[k] = np.tile(v, reps)[:n]
    cols["t_ps"] = (np.tile(t - t.min(), reps) + np.repeat(np.arange(reps, dtype=np.int64) * span, len(tc)))[:n]
    cols["seq"] = np.arange(n, dtype=np.int64)
    present = np.tile(tc.payload_present, reps)[:n]
    lens = np.diff(tc.payload_off)
    all_lens = np.tile(lens, reps)[:n]
    off = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(all_lens, out=off[1:])
    data = np.tile(tc.payload_data, reps)[: int(off[-1])]
    return TraceColumns(tc.header, cols, data, off, present)


def _child(path: str, nic: bool) -> tuple[float, int, int, bool]:
    """Check one file in a fresh process: (seconds, TLPs, peak RSS MiB, ok)."""
    code = ("import sys, time, resource; sys.path.insert(0, %r)\n"
            "from phantom.rules import check_file\n"
            "t = time.perf_counter(); r = check_file(%r, nic_rules=%r); dt = time.perf_counter() - t\n"
            # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork + exec, so a parent that
            # just built a 1 M-record trace would make the child's figure its own
            "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')]\n"
            "rss = int(hwm[0].split()[1]) // 1024 if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024\n"
            "print(dt, r.total, rss, r.ok)") % (str(ROOT), path, nic)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    return float(out[0]), int(out[1]), int(out[2]), out[3] == "True"


def capture(frames: int, out: Path) -> Path:
    from tb import runner

    runner.run("run_scenario", sim="verilator", data_width=256, module="test_scenario", test_dir=out.parent / "run",
               env={"NIC_SCENARIO": "mixed", "NIC_FRAMES": str(frames), "NIC_TRACE": str(out), "NIC_PROGRESS": "0"})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tlps", type=int, default=1_000_000)
    ap.add_argument("--frames", type=int, default=600, help="frames of the capture that is tiled")
    ap.add_argument("--jsonl", action="store_true", help="also time the reference checker on JSON lines (slow)")
    args = ap.parse_args()
    print(f"rule checker on a tiled capture of the default scenario, {date.today()}, "
          f"{platform.machine()} ({platform.processor() or 'cpu'}), {__import__('os').cpu_count()} cores")
    with tempfile.TemporaryDirectory() as d:
        src = capture(args.frames, Path(d) / "cap" / "mixed.jsonl.gz")
        base = load_any_columns(src)
        print(f"capture: {len(base)} TLPs ({args.frames} frames), tiled to the sizes below")
        for size in (args.tlps // 4, args.tlps):
            p = Path(d) / f"t{size}.npz"
            save_columns(p, tile(base, size))
            for nic in (True, False):
                dt, total, rss, ok = _child(str(p), nic)
                print(f"check .npz      {'NIC rules' if nic else 'no NIC   '} {total:>9,} TLPs in {dt:6.2f} s = "
                      f"{total / dt:>10,.0f} TLPs/s, peak RSS {rss} MiB, {'clean' if ok else 'VIOLATIONS'}")
            if args.jsonl:
                j = Path(d) / f"t{size}.jsonl.gz"
                convert(p, j)
                dt, total, rss, ok = _child(str(j), True)
                print(f"check .jsonl.gz NIC rules {total:>9,} TLPs in {dt:6.2f} s = {total / dt:>10,.0f} TLPs/s, "
                      f"peak RSS {rss} MiB, {'clean' if ok else 'VIOLATIONS'}")
        t0 = time.perf_counter()
        summarize(Path(d) / f"t{args.tlps}.npz")
        print(f"stats     .npz  {args.tlps:>9,} TLPs in {time.perf_counter() - t0:6.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
