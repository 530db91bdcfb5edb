"""Planted RTL faults are caught by Phantom-generated stimulus, and the healthy RTL passes all of it.

Each fault (`tb.runner.FAULTS`, a `define` in rtl/) is built into its own variant; the generated stimulus set
(`tb.stimulus.STIMULI`, in order) is replayed on it until one stimulus fails. The test asserts one does, that it
fails for the reason the fault implies (not a crash or a set-up error), and records which stimulus caught it
first. Which faults the captured scenarios alone miss is measured by `make bench-faults` (docs/benchmarks.md).
"""

import pytest

from tb import runner
from tb.regress import Case, run_case
from tb.stimulus import STIMULI

# one xdist group with the daemon's real-time fairness test: under `make test` (--dist loadgroup) these heavy
# simulations then run on one worker, one after the other, and never beside that test on both cores
pytestmark = [pytest.mark.sim, pytest.mark.xdist_group("heavy")]

# what the failure of a faulty variant must mention: the rule, the scoreboard, a stall or a dropped completion
SYMPTOM = {
    "NIC_FAULT_SPLIT_4K": ("mem_4kb",),
    "NIC_FAULT_MRRS_OFF_BY_ONE": ("rd_mrrs",),
    "NIC_FAULT_IRQ_BEFORE_DATA": ("nic_irq_cpl", "never announced"),
    "NIC_FAULT_TAG_LEAK": ("timeout",),
    "NIC_FAULT_BC_REASSEMBLY": ("scoreboard", "differ"),
    "NIC_FAULT_PREFETCH_PAST_PROD": ("nic_desc_doorbell",),
    "NIC_FAULT_CREDIT_OFF_BY_ONE": ("dropped", "timeout"),
    # the checker's rule, not the stall that follows: before nic_desc_doorbell bounded a read by the ring's end,
    # only the stall told (and not why)
    "NIC_FAULT_FETCH_PAST_RING_END": ("runs past the ring's last entry",),
}


def test_every_fault_has_a_symptom():
    assert set(SYMPTOM) == set(runner.FAULTS)


@pytest.mark.parametrize("stimulus", [s.name for s in STIMULI])
def test_healthy_rtl_passes_the_stimulus(stimulus, tmp_path):
    res = run_case(Case("generated", stimulus), tmp_path)
    assert res.ok, f"{stimulus} fails on the healthy RTL: {res.message}"
    assert res.tlps > 1000, f"{stimulus}: only {res.tlps} trace TLPs replayed"


@pytest.mark.parametrize("fault", runner.FAULTS)
def test_generated_stimulus_catches_the_fault(fault, tmp_path, record_property):
    tried = []
    for spec in STIMULI:
        res = run_case(Case("generated", spec.name), tmp_path / spec.name, fault=fault)
        tried.append(spec.name)
        if not res.ok:
            record_property("first_catching_stimulus", spec.name)
            print(f"{fault}: caught first by {spec.name}: {res.message}")
            assert any(s in res.message for s in SYMPTOM[fault]), \
                f"{fault}: {spec.name} failed, but not for the fault's reason: {res.message}"
            return
    pytest.fail(f"{fault}: none of the generated stimuli ({', '.join(tried)}) catches it")
