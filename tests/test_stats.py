"""Trace statistics against a hand-built trace whose figures are worked out by hand below."""

import math

import pytest

from phantom.stats import format_summary, plot, summarize
from phantom.trace import Direction as D, SemClass as C, TlpRecord, TlpType as T, TraceColumns, TraceHeader


def tiny():
    R = TlpRecord
    recs = [
        R(t_ps=0, dir=D.DOWN, type=T.MWr32, length=1, address=0xF000010C, first_be=0xF, payload_len=4, cls=C.DOORBELL),
        R(t_ps=1000, dir=D.UP, type=T.MRd32, length=4, address=0x1000, first_be=0xF, last_be=0xF, tag=0,
          requester_id=0x100, cls=C.DESC_READ),
        R(t_ps=3000, dir=D.UP, type=T.MRd32, length=128, address=0x2040, first_be=0xF, last_be=0xF, tag=1,
          requester_id=0x100, cls=C.DATA_READ),
        R(t_ps=5000, dir=D.DOWN, type=T.CplD, length=4, tag=0, requester_id=0x100, byte_count=16, lower_address=0,
          payload_len=16, cls=C.COMPLETION),
        R(t_ps=9000, dir=D.DOWN, type=T.CplD, length=64, tag=1, requester_id=0x100, byte_count=512,
          lower_address=0x40, payload_len=256, cls=C.COMPLETION),
        R(t_ps=10000, dir=D.DOWN, type=T.CplD, length=64, tag=1, requester_id=0x100, byte_count=256,
          lower_address=0x40, payload_len=256, cls=C.COMPLETION),
        R(t_ps=12000, dir=D.UP, type=T.MWr32, length=4, address=0x3010, first_be=0xF, last_be=0xF, payload_len=16,
          cls=C.CPL_WRITE),
        R(t_ps=13000, dir=D.UP, type=T.MWr32, length=1, address=0xFEE00000, first_be=0xF, payload_len=4,
          cls=C.INTERRUPT),
    ]
    for i, r in enumerate(recs):
        r.seq = i
    return TraceColumns.from_records(TraceHeader(mps=256, mrrs=512, link_speed=3, link_width=8), recs)


def test_counts_and_bytes():
    s = summarize(tiny())
    assert s["tlps"] == 8 and s["duration_us"] == pytest.approx(0.013)
    assert s["by_type"]["down"] == {"MWr32": 1, "CplD": 3}
    assert s["by_type"]["up"] == {"MRd32": 2, "MWr32": 2}
    assert s["payload_bytes"] == {"down": 4 + 16 + 256 + 256, "up": 16 + 4}
    assert s["interrupts"] == 1
    # 4 device TLPs (desc read, data read, completion record, interrupt) for one completion record
    assert s["tlps_per_packet"] == 4.0


def test_latency_depth_doorbell():
    s = summarize(tiny())
    rl = s["read_latency_ns"]
    assert rl["count"] == 2 and rl["p50"] == pytest.approx(5.5)  # 4 ns and 7 ns
    o = s["outstanding_reads"]
    assert o["max"] == 2
    # depth 1 for 2 ns, 2 for 2 ns, 1 for 5 ns, over 9 ns
    assert o["time_mean"] == pytest.approx(11 / 9)
    assert s["doorbell_to_dma_ns"]["p50"] == pytest.approx(1.0)


def test_alignment_and_link_utilization():
    s = summarize(tiny())
    assert s["address_alignment"]["desc_read"] == {4096: 1}
    assert s["address_alignment"]["data_read"] == {64: 1}
    assert s["address_alignment"]["cpl_write"] == {16: 1}
    # up: 2 reads (24 B overhead each) + writes of 16 and 4 B payload (+24 each) over 13 ns at 8 GT/s x8
    cap = 8.0 * 128 / 130 * 8 / 8  # bytes per ns
    assert s["link_utilization"]["up"] == pytest.approx((4 * 24 + 20) / (cap * 13))
    assert sum(s["timeline"]["up_tlps"]) == 4 and sum(s["timeline"]["down_bytes"]) == 532
    assert sum(s["timeline"]["up_MRd32_tlps"]) == 2 and sum(s["timeline"]["down_CplD_tlps"]) == 3


def test_report_and_plots(tmp_path):
    s = summarize(tiny())
    text = format_summary(s)
    assert "DMA read latency: p50 6 ns" in text and "8 TLPs" in text
    files = plot(tiny(), tmp_path)
    assert len(files) == 4 and all(f.stat().st_size > 1000 for f in files)
    assert math.isnan(summarize(TraceColumns.from_records(TraceHeader(), []))["read_latency_ns"]["p50"])
