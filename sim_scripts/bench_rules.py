"""`make bench-rules`: rule-checker throughput on a 1,000,000-TLP trace (npz and JSON lines) and peak memory."""

from __future__ import annotations

import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from phantom.rules import check_file  # noqa: E402
from phantom.stats import summarize  # noqa: E402
from phantom.trace import CplStatus, Direction, SemClass, TlpRecord, TlpType, TraceHeader, write_trace  # noqa: E402


def synth(n: int):
    """A legal trace: 4-DW device reads of 512 B answered by 2 completions, interleaved with 256 B writes."""
    t, i, tag = 0, 0, 0
    while i < n:
        addr = 0x10000 + (i * 512) % (1 << 24)
        t += 1000
        yield TlpRecord(seq=i, t_ps=t, dir=Direction.UP, type=TlpType.MRd32, length=128, address=addr,
                        first_be=0xF, last_be=0xF, tag=tag, requester_id=0x100, cls=SemClass.OTHER)
        for k in range(2):
            t += 1000
            yield TlpRecord(seq=i + 1 + k, t_ps=t, dir=Direction.DOWN, type=TlpType.CplD, length=64, tag=tag,
                            requester_id=0x100, byte_count=512 - 256 * k, lower_address=(addr + 256 * k) & 0x7F,
                            payload_len=256, status=CplStatus.SC, cls=SemClass.COMPLETION)
        t += 1000
        yield TlpRecord(seq=i + 3, t_ps=t, dir=Direction.UP, type=TlpType.MWr32, length=64, address=addr,
                        first_be=0xF, last_be=0xF, payload_len=256, cls=SemClass.OTHER)
        i += 4
        tag = (tag + 1) % 32


def _child(path: str) -> tuple[float, int, int]:
    """Check one file in a fresh process: (seconds, TLPs, peak RSS MiB)."""
    code = ("import sys, time, resource; sys.path.insert(0, %r)\n"
            "from phantom.rules import check_file\n"
            "t = time.perf_counter(); r = check_file(%r); dt = time.perf_counter() - t\n"
            "assert r.ok, r.format()\n"
            "print(dt, r.total, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)") % (str(ROOT), path)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    return float(out[0]), int(out[1]), int(out[2])


def _gen(path: str, size: int) -> None:
    """Write the synthetic trace in a child process, so the parent (and later children) stay small."""
    code = ("import sys; sys.path.insert(0, %r); sys.path.insert(0, %r)\n"
            "from bench_rules import synth\nfrom phantom.trace import TraceHeader, write_trace\n"
            "write_trace(%r, TraceHeader(mps=256, mrrs=512), synth(%d))") % (str(ROOT), str(ROOT / "sim_scripts"), path, size)
    subprocess.run([sys.executable, "-c", code], check=True)


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    print(f"rule checker, synthetic legal trace, {date.today()}, {platform.machine()}")
    with tempfile.TemporaryDirectory() as d:
        for size in (n // 4, n):
            for suffix in (".npz", ".jsonl.gz"):
                p = Path(d) / f"t{size}{suffix}"
                _gen(str(p), size)
                dt, total, rss = _child(str(p))
                print(f"check {suffix:<9} {total:>8} TLPs in {dt:6.2f} s = {total / dt:>10,.0f} TLPs/s, peak RSS {rss} MiB")
        t0 = time.perf_counter()
        summarize(Path(d) / f"t{n}.npz")
        print(f"stats     .npz      {n:>8} TLPs in {time.perf_counter() - t0:6.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
