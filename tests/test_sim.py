"""Simulation tests: the cocotb tests in tb/ run through the real simulators (Verilator default, Icarus too)."""

import gzip
import json
import os

import pytest

from tb.runner import run

pytestmark = pytest.mark.sim

NIC_TESTS = ["smoke", "enumeration_and_bar", "mmio_byte_enables", "tx_sizes", "rx_sizes", "loopback", "backpressure",
             "link_sweep", "interrupts", "bad_mmio", "bad_ring_size", "bad_descriptor_unmapped",
             "bad_descriptor_length", "poisoned_completion", "completion_timeout", "completion_reorder",
             "quarantine_exhaustion", "credit_limit", "credit_limit_ignored_overflows", "loaded_reads_in_flight",
             "telemetry_live"]


# `SIM=icarus make test` runs the whole NIC set under Icarus instead of Verilator
SIM = os.environ.get("SIM", "verilator")


@pytest.mark.parametrize("width", [256, 64])
@pytest.mark.parametrize("test", NIC_TESTS)
def test_nic(test, width, tmp_path):
    run(test, sim=SIM, data_width=width, test_dir=tmp_path)


@pytest.mark.parametrize("test", ["smoke", "mmio_byte_enables", "tx_sizes", "rx_sizes", "bad_mmio", "interrupts",
                                  "bad_descriptor_unmapped", "completion_timeout"])
def test_nic_icarus(test, tmp_path):
    run(test, sim="icarus", data_width=64, test_dir=tmp_path)


@pytest.mark.parametrize("mps,mrrs,rcb,split", [
    (128, 128, 64, False), (128, 512, 64, False), (128, 4096, 64, False),
    (256, 128, 64, False), (256, 512, 64, False), (256, 4096, 64, False),
    (512, 128, 64, False), (512, 512, 64, False), (512, 4096, 64, False),
    (256, 512, 64, True), (256, 512, 128, True), (512, 4096, 128, False),
])
def test_link_sweep(mps, mrrs, rcb, split, tmp_path):
    env = {"NIC_MPS": str(mps), "NIC_MRRS": str(mrrs), "NIC_RCB": str(rcb), "NIC_SPLIT_RCB": "1" if split else "0"}
    run("link_sweep", sim=SIM, data_width=256, env=env, test_dir=tmp_path)


@pytest.mark.parametrize("mps,mrrs,rcb,split", [
    (128, 128, 64, True), (128, 512, 128, False), (256, 512, 64, True), (256, 4096, 128, True),
    (512, 1024, 64, False), (512, 4096, 128, False),
])
def test_split_near_4k(mps, mrrs, rcb, split, tmp_path):
    """Buffers just before a 4 KB boundary across the MPS/MRRS/RCB sweep (page-aligned buffers hide a broken split)."""
    env = {"NIC_MPS": str(mps), "NIC_MRRS": str(mrrs), "NIC_RCB": str(rcb), "NIC_SPLIT_RCB": "1" if split else "0"}
    run("split_near_4k", sim=SIM, data_width=256, env=env, test_dir=tmp_path)


@pytest.mark.parametrize("width", [256, 64])
def test_trace_matches_stats(width, tmp_path):
    run("trace_matches_stats", sim=SIM, data_width=width, env={"NIC_TRACE": str(tmp_path / "t.jsonl.gz")},
        test_dir=tmp_path)


def _tlp_sequence(path):
    with gzip.open(path, "rt") as f:
        next(f)
        return [{k: v for k, v in json.loads(line).items()} for line in f]


def test_verilator_icarus_same_tlps(tmp_path):
    """Both simulators produce the same TLP sequence (every field and time) for the same scenario."""
    seqs = {}
    for sim in ("verilator", "icarus"):
        trace = tmp_path / f"{sim}.jsonl.gz"
        run("run_scenario", sim=sim, data_width=64, module="test_scenario", test_dir=tmp_path / sim,
            env={"NIC_SCENARIO": "mixed", "NIC_FRAMES": "40", "NIC_TRACE": str(trace), "NIC_PROGRESS": "0"})
        seqs[sim] = _tlp_sequence(trace)
    v, i = seqs["verilator"], seqs["icarus"]
    assert len(v) > 300
    assert len(v) == len(i), f"{len(v)} TLPs under Verilator, {len(i)} under Icarus"
    for a, b in zip(v, i):
        assert a == b, f"first difference at TLP {a['seq']}: {a} vs {b}"


@pytest.mark.parametrize("scenario", ["mixed", "tx_heavy", "rx_heavy", "small", "jumbo"])
def test_scenarios_clean(scenario, tmp_path):
    """Every scenario (shortened) moves all frames intact and its trace passes the rule checker."""
    from phantom.rules import check_file

    trace = tmp_path / "t.jsonl.gz"
    run("run_scenario", sim=SIM, data_width=256, module="test_scenario", test_dir=tmp_path,
        env={"NIC_SCENARIO": scenario, "NIC_FRAMES": "120", "NIC_TRACE": str(trace), "NIC_PROGRESS": "0"})
    rep = check_file(trace)
    assert rep.total > 500 and rep.ok, rep.format()
