"""The cases of `make regress` (tb/regress.py), one pytest case each so pytest-xdist runs them in parallel.

Not collected by `make test` (the file name does not start with test_): `sim_scripts/regress.py` runs it with
REGRESS_OUT (where each case writes its JSON result), REGRESS_FAULT (a planted fault, or empty) and REGRESS_KINDS.
"""

import os
from pathlib import Path

import pytest

from tb import regress

OUT = Path(os.environ.get("REGRESS_OUT", "build/regress"))
FAULT = os.environ.get("REGRESS_FAULT") or None
KINDS = tuple(k for k in os.environ.get("REGRESS_KINDS", ",".join(regress.KINDS)).split(",") if k)
CASES = regress.cases(KINDS)

pytestmark = pytest.mark.sim


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case(case, tmp_path):
    res = regress.run_case(case, tmp_path, fault=FAULT, sim=os.environ.get("SIM", "verilator"),
                           width=int(os.environ.get("WIDTH", 256)))
    (OUT / "cases").mkdir(parents=True, exist_ok=True)
    res.write(OUT / "cases" / f"{case.id}.json")
    assert res.ok, res.message
