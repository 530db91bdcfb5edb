"""Replay of captured traces on the NIC RTL: 100 % on the same RTL, across simulators, widths and timing modes;
bad traces refused before simulation; a device that stops answering ends the replay with a timeout report."""

import json

import pytest

from phantom.trace import TraceHeader, read_trace, write_trace
from tb.nic_tb import regmap_fingerprint
from tb.replay import NIC_ID, ReplayError, ReplayPlan
from tb.replay import run_replay as replay
from tb.runner import SimulationFailed, run


pytestmark = pytest.mark.sim


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    """A short capture (mixed scenario) with whole packet data, and its MAC sidecar."""
    d = tmp_path_factory.mktemp("cap")
    trace = d / "mixed.jsonl.gz"
    run("run_scenario", sim="verilator", data_width=256, module="test_scenario", test_dir=d / "run",
        env={"NIC_SCENARIO": "mixed", "NIC_FRAMES": "50", "NIC_TRACE": str(trace), "NIC_PROGRESS": "0",
             "NIC_PAYLOAD_KEEP": "-1"})
    return trace


@pytest.mark.parametrize("sim,width,timing", [
    ("verilator", 256, "trace"),    # the same RTL, simulator and width: everything matches
    ("icarus", 256, "trace"),       # captured under Verilator, replayed under Icarus
    ("verilator", 64, "trace"),     # captured at 256 bits, replayed at 64
    ("verilator", 256, "asap"),     # host side as fast as the device allows
])
def test_replay_matches(capture, tmp_path, sim, width, timing):
    rep = replay(str(capture), sim=sim, width=width, timing=timing, report=str(tmp_path / "r.json"), test_dir=tmp_path)
    assert rep["ok"] and rep["match_fraction"] == 1.0 and rep["expected"] > 150, rep
    assert rep["mac"]["matched"] == rep["mac"]["expected"] > 10 and rep["mac"]["compared"] == "bytes"
    assert rep["scoreboard"]["ok"] and rep["rules"]["errors"] == 0
    if (sim, width, timing) == ("verilator", 256, "trace"):
        assert rep["mmio_reads"]["mismatched"] == 0 and rep["mmio_reads"]["volatile_differ"] <= 2
        assert rep["timing_dev_ns"]["p99"] < 500
    assert rep["coverage"]["bins_hit"] > 20


def _rewrite(src, dst, header=None, records=None):
    h, recs = read_trace(src)
    h = header(h) if header else h
    recs = records(recs) if records else recs
    write_trace(dst, h, recs)
    side = src.with_name(src.name.replace(".jsonl.gz", ".mac.jsonl.gz"))
    dst.with_name(dst.name.replace(".jsonl.gz", ".mac.jsonl.gz")).write_bytes(side.read_bytes())
    return dst


def test_bad_traces_refused_before_simulation(capture, tmp_path):
    ok = ReplayPlan.from_trace(capture, regmap=regmap_fingerprint(), device=NIC_ID)
    assert ok.events and ok.device_expected() > 100

    def refused(path, **kw):
        with pytest.raises(ReplayError) as e:
            ReplayPlan.from_trace(path, regmap=regmap_fingerprint(), device=NIC_ID, **kw)
        return str(e.value)

    def illegal(recs):
        i = next(k for k, r in enumerate(recs) if r.cls.name == "DATA_WRITE")
        recs[i].payload_len += 4
        return recs

    assert "fails the PCIe rule check" in refused(_rewrite(capture, tmp_path / "c1.jsonl.gz", records=illegal))
    t = tmp_path / "c2.jsonl.gz"
    t.write_bytes(capture.read_bytes()[: capture.stat().st_size // 2])
    assert "cannot be read" in refused(t)

    def other_map(h):
        h.device = dict(h.device, regmap="0123456789abcdef")
        return h

    assert "register map" in refused(_rewrite(capture, tmp_path / "c3.jsonl.gz", header=other_map))

    def other_dev(h):
        h.device = dict(h.device, device_id=0x9999)
        return h

    assert "not of this NIC" in refused(_rewrite(capture, tmp_path / "c4.jsonl.gz", header=other_dev))

    def big_mps(h):
        return TraceHeader(**{**{k: v for k, v in h.to_json().items() if k not in ("schema", "version")}, "mps": 4096})

    assert "MPS 4096 B cannot be set" in refused(_rewrite(capture, tmp_path / "c5.jsonl.gz", header=big_mps), check=False)

    def no_map(h):
        h.memory_map = []
        return h

    assert "no memory map" in refused(_rewrite(capture, tmp_path / "c6.jsonl.gz", header=no_map))


def test_unanswered_reads_end_in_a_timeout_report(capture, tmp_path):
    """The root complex stops answering TX data reads: the replay ends with what was outstanding, no hang."""
    import os

    rpath = tmp_path / "r.json"
    os.environ["REPLAY_DROP"] = "tx_data"
    os.environ["REPLAY_STALL_US"] = "60"
    try:
        with pytest.raises(SimulationFailed):
            replay(str(capture), report=str(rpath), test_dir=tmp_path)
    finally:
        del os.environ["REPLAY_DROP"], os.environ["REPLAY_STALL_US"]
    rep = json.loads(rpath.read_text())
    assert not rep["ok"] and rep["timeout"] and "stopped responding" in rep["timeout"]["message"]
    assert rep["timeout"]["outstanding"], rep["timeout"]
