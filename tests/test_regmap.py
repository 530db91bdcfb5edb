"""The register map Python uses is the one the RTL compiles (rtl/nic_regs.vh through pyverilog)."""

import re

from host.regmap import REGS_VH, Regs, load_regmap


def independent_parse():
    """A second, regex-based reading of nic_regs.vh (sized hex and plain decimal constants)."""
    out = {}
    for m in re.finditer(r"localparam\s+(\w+)\s*=\s*([^;]+);", REGS_VH.read_text()):
        v = m.group(2).strip()
        if re.fullmatch(r"\d+'h[0-9A-Fa-f_]+", v):
            out[m.group(1)] = int(v.split("'h")[1].replace("_", ""), 16)
        elif re.fullmatch(r"\d+", v):
            out[m.group(1)] = int(v)
    return out


def test_pyverilog_matches_independent_parse():
    py = load_regmap()
    ind = independent_parse()
    assert len(ind) > 60
    for k, v in ind.items():
        assert py[k] == v, k


def test_register_offsets_unique_and_aligned():
    regs = {k: v for k, v in load_regmap().items() if k.startswith("REG_")}
    assert all(v % 4 == 0 for v in regs.values())
    assert len(set(regs.values())) == len(regs), "two registers share an offset"


def test_driver_and_tb_names_exist():
    import pathlib

    r = Regs()
    root = REGS_VH.parent.parent
    used = set()
    for f in list((root / "host").glob("*.py")) + list((root / "tb").glob("*.py")):
        used |= set(re.findall(r'"(REG_[A-Z0-9_]*[A-Z0-9])"', f.read_text()))
        used |= set(re.findall(r"regs\.(REG_[A-Z0-9_]+|[A-Z][A-Z0-9_]+_BIT)", f.read_text()))
    assert used
    for name in used:
        getattr(r, name)


def test_stat_count_matches_registers():
    r = Regs()
    assert len(r.stat_names()) == r.STAT_COUNT
