"""The regression's bookkeeping (tb/regress.py): case list, report, coverage comparison, first catching stimulus."""

import json

import pytest

from tb import regress
from tb.coverage import all_bins
from tb.scenarios import SCENARIOS
from tb.stimulus import STIMULI, Stimulus, get_stimulus


def res(kind, name, ok=True, cov=None, msg=""):
    return regress.CaseResult(f"{kind}-{name}", kind, name, ok, 1.0, msg, 100, cov or {})


def test_cases_cover_every_kind_once():
    cs = regress.cases()
    ids = [c.id for c in cs]
    assert len(ids) == len(set(ids))
    assert {c.name for c in cs if c.kind == "captured"} == set(SCENARIOS)
    assert [c.name for c in cs if c.kind == "generated"] == [s.name for s in STIMULI]
    assert {c.name for c in cs if c.kind == "directed"} == set(regress.DIRECTED)
    assert [c.kind for c in regress.cases(("generated",))] == ["generated"] * len(STIMULI)


def test_report_compares_coverage_of_captured_and_generated():
    u = sorted(all_bins())
    a, b, c = u[0], u[1], u[2]
    rs = [res("captured", "mixed", cov={a: 3, b: 1, "link/mps/256": 1}),
          res("captured", "jumbo", cov={a: 1, c: 0}),
          res("generated", STIMULI[0].name, cov={b: 2, c: 5, "link/mps/128": 1}),
          res("directed", "smoke")]
    rep = regress.report(rs)
    cov = rep["coverage"]
    assert cov["captured"]["bins_hit"] == 2 and cov["generated"]["bins_hit"] == 2 and cov["all"]["bins_hit"] == 3
    assert cov["only_generated"] == sorted([c, "link/mps/128"])     # a zero count is not a hit
    assert cov["only_captured"] == sorted([a, "link/mps/256"])
    assert len(cov["missing"]) == len(u) - 3
    assert rep["kinds"]["captured"]["passed"] == 2 and rep["kinds"]["directed"]["cases"] == 1
    assert "fault" in rep and rep["fault"] is None and "caught" not in rep
    json.dumps(rep)
    text = regress.format_report(rep)
    assert "captured scenarios 2 of" in text and f"only generated stimulus hits (2): {c}" in text


def test_fault_report_names_the_first_stimulus_in_set_order():
    later, first = STIMULI[3].name, STIMULI[1].name
    rs = [res("generated", later, ok=False, msg="timeout: the device stopped"),
          res("generated", first, ok=False, msg="1 rule errors (mem_4kb)"),
          res("generated", STIMULI[0].name), res("captured", "mixed"), res("directed", "smoke", ok=False)]
    rep = regress.report(rs, fault="NIC_FAULT_SPLIT_4K")
    assert rep["caught"] == {"directed": True, "captured": False, "generated": True}
    assert rep["first_generated"] == {"stimulus": first, "why": "1 rule errors (mem_4kb)"}
    text = regress.format_report(rep)
    assert "captured scenarios miss it" in text and f"first generated stimulus to catch it: {first}" in text
    assert "CAUGHT" in text


def test_fault_report_when_nothing_generated_catches_it():
    rep = regress.report([res("generated", STIMULI[0].name), res("captured", "mixed", ok=False)], fault="F")
    assert rep["caught"]["generated"] is False and rep["first_generated"] is None
    assert "generated stimulus misses it" in regress.format_report(rep)


def test_plot_is_written(tmp_path):
    rep = regress.report([res("captured", "mixed", cov={sorted(all_bins())[0]: 1})])
    regress.plot_coverage(rep, tmp_path / "c.png")
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_stimulus_set_is_valid_and_bad_specs_are_refused():
    assert len({s.name for s in STIMULI}) == len(STIMULI) >= 6
    assert all(s.why for s in STIMULI)
    assert get_stimulus(STIMULI[0].name) is STIMULI[0]
    with pytest.raises(ValueError, match="unknown stimulus: 'nope'"):
        get_stimulus("nope")
    with pytest.raises(ValueError, match="buffer_offset must be a multiple of 4"):
        Stimulus("x", "y", buffer_offset=6)
    with pytest.raises(ValueError, match="unknown host profile"):
        Stimulus("x", "y", host="nope")
    with pytest.raises(ValueError, match="timing must be"):
        Stimulus("x", "y", timing="fast")
    for bad in ({"tx": 6}, {"cpl": 8}, {"rx": 1}, {"tx": True}):
        with pytest.raises(ValueError, match="stimulus x: rings must map 'tx'/'rx' to a power of two >= 2"):
            Stimulus("x", "y", rings=bad)


def test_case_of_an_unknown_kind_is_a_set_up_error(tmp_path):
    with pytest.raises(ValueError, match="unknown case kind 'bogus'"):
        regress.run_case(regress.Case("bogus", "x"), tmp_path)
