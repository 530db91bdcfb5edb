"""The tap on a second, different device (a Python model, not our NIC) produces a clean, readable trace."""

import pytest

from phantom.rules import check_file
from phantom.trace import read_trace
from tb.runner import run_python_models

pytestmark = pytest.mark.sim


def test_tap_on_another_device(tmp_path):
    trace = tmp_path / "other.jsonl.gz"
    run_python_models("tap_second_device", "test_tap", test_dir=tmp_path, env={"TAP_TRACE": str(trace)})
    h, recs = read_trace(trace)
    assert h.scenario == "tap-second-device" and len(recs) > 40
    rep = check_file(trace)
    assert rep.ok and not rep.violated(), rep.format()
    assert check_file(trace, nic_rules=False).counts == rep.counts


def test_tap_names_the_config_write_artefact_of_the_model(tmp_path):
    trace = tmp_path / "raw.jsonl.gz"
    run_python_models("tap_sees_the_config_write_artefact", "test_tap", test_dir=tmp_path,
                      env={"TAP_TRACE": str(trace)})
    waived = check_file(trace, waive={"cpl_byte_count": "cocotbext-pcie 0.2.16 sends byte count 0"})
    assert waived.ok and waived.counts["cpl_byte_count"] >= 5


def test_tap_records_a_tlp_the_pcie_model_refuses(tmp_path):
    trace = tmp_path / "refused.jsonl.gz"
    run_python_models("tap_records_a_refused_tlp", "test_tap", test_dir=tmp_path, env={"TAP_TRACE": str(trace)})
    h, recs = read_trace(trace)
    assert [r.address & 0xFFF for r in recs if r.type.name == "MRd64"] == [4000]
    assert check_file(trace).counts.get("mem_4kb") == 1
