"""`make bench-rules`: rule-checker throughput on a 1,000,000-TLP trace (npz and JSON lines) and peak memory."""

from __future__ import annotations

import resource
import sys
import tempfile
import time
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


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    hdr = TraceHeader(mps=256, mrrs=512)
    with tempfile.TemporaryDirectory() as d:
        for suffix in (".npz", ".jsonl.gz"):
            p = Path(d) / f"t{suffix}"
            write_trace(p, hdr, synth(n))
            t0 = time.perf_counter()
            rep = check_file(p)
            dt = time.perf_counter() - t0
            assert rep.ok, rep.format()
            print(f"check {suffix:<9} {rep.total} TLPs in {dt:.2f} s = {rep.total / dt:,.0f} TLPs/s")
        t0 = time.perf_counter()
        summarize(Path(d) / "t.npz")
        print(f"stats     .npz      {n} TLPs in {time.perf_counter() - t0:.2f} s")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
