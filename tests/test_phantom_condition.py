"""Conditions of phantom.gen.condition, called directly (no model): link parameters and knobs validated, the
condition vector, what a trace measures to, and the host set-up the regression's stimulus uses."""

import math
from pathlib import Path

import numpy as np
import pytest

from phantom.gen.condition import (Condition, ConditionSpace, HostSetup, Knobs, Link, measure)
from phantom.memmap import MemoryMap, RegionKind
from phantom.trace import SemClass, load_any_columns

FIX = Path(__file__).resolve().parent.parent / "data" / "phantom" / "fixtures"


@pytest.mark.parametrize("kw,word", [({"mps": 1024}, "mps"), ({"mps": 64}, "mps"), ({"mrrs": 8192}, "mrrs"),
                                     ({"rcb": 32}, "rcb"), ({"rcb": 256}, "rcb"), ({"tag_width": 6}, "tag_width")])
def test_link_out_of_range(kw, word):
    with pytest.raises(ValueError, match=f"link parameter {word} must be one of"):
        Link(**kw)


@pytest.mark.parametrize("mps,mrrs,rcb,tw", [(128, 128, 64, 5), (512, 4096, 128, 10), (256, 512, 64, 8)])
def test_link_edges_accepted(mps, mrrs, rcb, tw):
    assert Link(mps, mrrs, rcb, tw).mps == mps


@pytest.mark.parametrize("kw", [{"tx_fraction": -0.01}, {"tx_fraction": 1.01}, {"frame_bytes": 0.5},
                                {"frame_bytes": 16385.0}, {"small_fraction": 1.5}, {"load": -1.0}, {"load": 1e4 + 1},
                                {"load": math.nan}, {"load": math.inf}, {"tx_fraction": True}, {"load": "5"}])
def test_knobs_out_of_range(kw):
    name = next(iter(kw))
    with pytest.raises(ValueError, match=f"workload knob {name} must be a number"):
        Knobs(**kw)


def test_knobs_edges_accepted():
    k = Knobs(tx_fraction=0.0, frame_bytes=1.0, small_fraction=1.0, load=1e4)
    assert (k.tx_fraction, k.frame_bytes, k.small_fraction, k.load) == (0.0, 1.0, 1.0, 1e4)
    assert Knobs(tx_fraction=1, frame_bytes=16384, load=0).frame_bytes == 16384


def test_condition_json_round_trip_and_overrides():
    c = Condition("mixed", Knobs(0.3, 900.0, 0.2, 2.0), Link(128, 256, 128, 5))
    assert Condition.from_json(c.to_json()) == c
    d = c.with_link(mps=512, mrrs=None).with_knobs(load=7.0, tx_fraction=None)
    assert (d.link.mps, d.link.mrrs, d.link.rcb, d.link.tag_width) == (512, 256, 128, 5)
    assert (d.knobs.load, d.knobs.tx_fraction, d.knobs.frame_bytes) == (7.0, 0.3, 900.0)
    with pytest.raises(ValueError, match="expected an object"):
        Condition.from_json([1, 2])
    with pytest.raises(ValueError, match="link parameter mps"):
        c.with_link(mps=100)


def test_space_vector():
    sp = ConditionSpace(("mixed", "rx_heavy"))
    assert sp.dim == 2 + 1 + 8 and sp.index("rx_heavy") == 1 and sp.index("numa") == 2
    c = Condition("rx_heavy", Knobs(0.75, 1400.0, 0.25, math.e - 1), Link(512, 2048, 128, 5))
    v = sp.vector(c)
    assert v.dtype == np.float32 and v.shape == (11,)
    assert list(v[:3]) == [0.0, 1.0, 0.0]
    np.testing.assert_allclose(v[3:7], [1.0, 1.0, 1.0, -1.0])
    np.testing.assert_allclose(v[7:], [0.5, math.log(2.0), -0.5, -0.5], rtol=1e-6)
    dropped = sp.vector(c, drop_scenario=True)
    assert list(dropped[:3]) == [0.0, 0.0, 1.0] and (dropped[3:] == v[3:]).all()
    tiny = sp.vector(Condition("mixed", Knobs(frame_bytes=1.0)))
    assert tiny[8] == pytest.approx(math.log(1.0 / 700.0))
    base = sp.vector(Condition("mixed"))
    np.testing.assert_allclose(base[3:7], [0.0, 0.0, 0.0, 0.0])
    assert ConditionSpace.from_json(sp.to_json()) == sp
    sp.check_scenario("mixed")
    with pytest.raises(ValueError, match=r"unknown scenario: 'numa' \(the model knows: mixed, rx_heavy;"):
        sp.check_scenario("numa")


def test_defaults_from_empty_json():
    assert Condition.from_json({}) == Condition() and Condition().scenario == ""
    assert ConditionSpace.from_json({}) == ConditionSpace() and ConditionSpace().dim == 9


@pytest.mark.parametrize("name", ["mixed__unseen__s3", "rx_heavy__alt__s1", "numa__base__s1"])
def test_measure_matches_an_independent_count(name):
    """Knobs from the completion records, counted here from the records themselves (queue by ring, length at
    payload offset 4); link parameters from the header (the unseen capture has RCB 128)."""
    import struct

    from phantom.memmap import MemoryMap, RegionKind
    from phantom.trace import read_trace

    tc = load_any_columns(FIX / f"{name}.jsonl.gz")
    h, recs = read_trace(FIX / f"{name}.jsonl.gz")
    mm = MemoryMap.from_json(h.memory_map)
    rings = {q: mm.of_kind(k)[0] for q, k in (("tx", RegionKind.TX_CPL_RING), ("rx", RegionKind.RX_CPL_RING))}
    lens = {"tx": [], "rx": []}
    for r in recs:
        if r.cls == SemClass.CPL_WRITE and r.payload:
            q = next(q for q, g in rings.items() if g.base <= r.address < g.base + g.size)
            lens[q].append(struct.unpack_from("<I", r.payload, 4)[0])
    frames = lens["tx"] + lens["rx"]
    span_us = (recs[-1].t_ps - recs[0].t_ps) / 1e6
    c = measure(tc)
    assert (c.scenario, c.link) == (h.scenario, Link(h.mps, h.mrrs, h.rcb, h.tag_width))
    assert c.knobs.tx_fraction == pytest.approx(len(lens["tx"]) / len(frames), abs=1e-12)
    assert c.knobs.frame_bytes == pytest.approx(sum(frames) / len(frames), rel=1e-12)
    assert c.knobs.small_fraction == pytest.approx(sum(n <= 128 for n in frames) / len(frames), abs=1e-12)
    assert c.knobs.load == pytest.approx(len(frames) / span_us, rel=1e-9)


def test_measure_a_real_capture():
    tc = load_any_columns(FIX / "rx_heavy__alt__s1.jsonl.gz")
    c = measure(tc)
    assert c.scenario == "rx_heavy" and (c.link.mps, c.link.mrrs) == (128, 256)
    assert c.knobs.tx_fraction < 0.5     # rx heavy
    # the knobs from the completion records themselves: frames by queue, lengths at payload offset 4
    n = int((tc["cls"] == SemClass.CPL_WRITE).sum())
    span_us = (int(tc["t_ps"].max()) - int(tc["t_ps"].min())) / 1e6
    assert c.knobs.load == pytest.approx(n / span_us, rel=1e-9)
    assert 64 <= c.knobs.frame_bytes <= 9000 and 0 <= c.knobs.small_fraction <= 1


def test_host_setup_validation():
    h = HostSetup(model={"name": "x"}, registers={"REG_IRQ_COAL_COUNT": 1, "REG_DMA_CREDITS": 0xFFFFFFFF},
                  buffer_offset=4092)
    assert h.to_json() == {"model": {"name": "x"}, "registers": {"REG_IRQ_COAL_COUNT": 1,
                                                                  "REG_DMA_CREDITS": 0xFFFFFFFF},
                           "buffer_offset": 4092, "ring_entries": {}}
    assert HostSetup().to_json() == {"model": None, "registers": {}, "buffer_offset": 0, "ring_entries": {}}
    assert HostSetup(ring_entries={"tx": 2, "rx": 256}).to_json()["ring_entries"] == {"tx": 2, "rx": 256}
    assert HostSetup(registers={"REG_IRQ_COAL_TIMER": 0}).registers == {"REG_IRQ_COAL_TIMER": 0}   # 0 is a value
    for bad, word in (({"model": "tight"}, "host model must be a dict .*, got str"),
                      ({"registers": {"IRQ": 1}}, "expected a register name"),
                      ({"registers": {"REG_X": -1}}, "32-bit unsigned"),
                      ({"registers": {"REG_X": 1 << 32}}, "32-bit unsigned"),
                      ({"registers": {"REG_X": True}}, "32-bit unsigned"),
                      ({"buffer_offset": 4096}, "buffer_offset"), ({"buffer_offset": -4}, "buffer_offset"),
                      ({"buffer_offset": 2}, "buffer_offset"), ({"buffer_offset": 4.0}, "buffer_offset"),
                      ({"ring_entries": {"cpl": 8}}, "ring_entries: unknown queue 'cpl'"),
                      ({"ring_entries": {"tx": 1}}, "ring_entries tx: expected a power of two >= 2, got 1"),
                      ({"ring_entries": {"rx": 12}}, "ring_entries rx: expected a power of two >= 2, got 12"),
                      ({"ring_entries": {"tx": 8.0}}, "ring_entries tx: expected a power of two >= 2, got 8.0"),
                      ({"ring_entries": {"tx": True}}, "ring_entries tx: expected a power of two >= 2, got True")):
        with pytest.raises(ValueError, match=word):
            HostSetup(**bad)


def test_host_setup_shrinks_only_the_named_rings():
    """Ring, completion ring and buffers of a named queue keep their bases and per-entry sizes at the new count;
    every other region is what it was."""
    h = load_any_columns(FIX / "mixed__base__s1.jsonl.gz").header
    mm = MemoryMap.from_json(h.memory_map)
    have = mm.of_kind(RegionKind.TX_RING)[0].size // 16
    per = {k: mm.of_kind(k)[0].size // have for k in (RegionKind.TX_RING, RegionKind.TX_CPL_RING, RegionKind.TX_DATA)}
    out = HostSetup(ring_entries={"tx": 8}).memory_map(h.memory_map)
    assert [g["base"] for g in out] == [g["base"] for g in h.memory_map]
    for g, old in zip(out, h.memory_map):
        kind = RegionKind(g["kind"])
        assert g["size"] == (per[kind] * 8 if kind in per else old["size"]), kind
        assert type(g["size"]) is int, kind          # a region size in the header's JSON is an integer
    assert sum(g["size"] != old["size"] for g, old in zip(out, h.memory_map)) == 3
    assert HostSetup(ring_entries={"rx": have}).memory_map(h.memory_map) == h.memory_map   # the learned size
    with pytest.raises(ValueError, match=f"ring_entries tx: {2 * have} entries is more than the learned ring's "
                                         f"{have}"):
        HostSetup(ring_entries={"tx": 2 * have}).memory_map(h.memory_map)
    no_rx = [g for g in h.memory_map if g["kind"] != "rx_ring"]
    with pytest.raises(ValueError, match="ring_entries rx: the memory map has no rx_ring region"):
        HostSetup(ring_entries={"rx": 8}).memory_map(no_rx)


def _cpl_trace(lengths, times, header_kw=None, where=None, payload=None):
    """Columns of a trace holding only TX completion records of the given frame lengths at the given times (ps);
    where[i] / payload[i] override a record's address / payload bytes."""
    import struct

    from phantom.memmap import Region
    from phantom.trace import Direction, TlpRecord, TlpType, TraceColumns, TraceHeader

    regions = [Region(0x1000_0000, 16 * 16, RegionKind.TX_CPL_RING), Region(0x1001_0000, 16 * 16,
                                                                           RegionKind.RX_CPL_RING)]
    h = TraceHeader(scenario="synthetic", memory_map=[r.to_json() for r in regions], **(header_kw or {}))
    recs = []
    for i, (n, t) in enumerate(zip(lengths, times)):
        pl = struct.pack("<IIII", i % 16, n, 0, 1 << 31)
        if payload and i in payload:
            pl = payload[i]
        recs.append(TlpRecord(seq=i, t_ps=t, dir=Direction.UP, type=TlpType.MWr64, length=4,
                              address=(where or {}).get(i, 0x1000_0000 + 16 * (i % 16)), first_be=0xF, last_be=0xF,
                              payload_len=16, payload=pl, cls=SemClass.CPL_WRITE))
    return TraceColumns.from_records(h, recs)


def test_measure_caps_mps_and_keeps_the_tag_width():
    c = measure(_cpl_trace([256], [0], {"mps": 1024, "tag_width": 5}))
    assert (c.link.mps, c.link.tag_width) == (512, 5)


def test_measure_without_completion_records_gives_the_default_knobs():
    assert measure(_cpl_trace([], [])).knobs == Knobs()


@pytest.mark.parametrize("lengths,small,frame", [([128, 129], 0.5, 128.5), ([1, 1], 1.0, 1.0),
                                                 ([20000, 20000], 0.0, 16384.0), ([2 ** 32 - 16] * 2, 0.0, 16384.0)])
def test_measure_small_frames_and_the_frame_size_bounds(lengths, small, frame):
    k = measure(_cpl_trace(lengths, [0, 10 ** 6])).knobs
    assert (k.small_fraction, k.frame_bytes, k.tx_fraction) == (small, frame, 1.0)


@pytest.mark.parametrize("times,load", [([0], 0.0), ([0, 500_000], 4.0), ([0, 2_000_000], 1.0), ([0, 1], 1e4)])
def test_measure_load_is_frames_per_microsecond_of_the_trace(times, load):
    """Frames over the trace's span in us (0 for a single record: no span), capped at the knob's range."""
    assert measure(_cpl_trace([256] * len(times), times)).knobs.load == pytest.approx(load)


def test_measure_skips_records_it_cannot_read_and_counts_the_rest():
    """A record outside both completion rings (one just past the TX ring's end), one whose payload was not kept
    and one cut to its first 4 bytes are skipped; one cut to exactly 8 bytes still carries its length."""
    import struct

    lengths = [1000, 1000, 1000, 1000, 64, 64]
    tc = _cpl_trace(lengths, [0, 1, 2, 3, 4, 5], where={0: 0x2000_0000, 1: 0x1000_0000 + 16 * 16},
                    payload={3: struct.pack("<I", 3), 4: struct.pack("<II", 4, 128)})
    tc.payload_present[2] = False
    k = measure(tc).knobs
    assert (k.frame_bytes, k.small_fraction) == (96.0, 1.0)


def test_measure_a_chunk_of_a_streamed_trace():
    """A chunk read from an .npz stream carries payload offsets that do not start at 0: it measures as the same
    records starting at 0 do."""
    from phantom.trace import TraceColumns

    import struct

    whole = _cpl_trace([64, 256, 1500, 9000, 128, 700], [0, 10, 20, 30, 40, 50], payload={4: struct.pack("<I", 4)})
    k = 2
    off = whole.payload_off
    chunk = TraceColumns(whole.header, {c: v[k:] for c, v in whole.cols.items()},
                         whole.payload_data[int(off[k]):], off[k:], whole.payload_present[k:])
    fresh = TraceColumns.from_records(whole.header, list(chunk.records()))
    assert int(chunk.payload_off[0]) != 0 and int(fresh.payload_off[0]) == 0
    assert measure(chunk) == measure(fresh)
    assert measure(chunk).knobs.frame_bytes == pytest.approx((1500 + 9000 + 700) / 3)   # (the record cut short: not)
