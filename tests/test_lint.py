"""The RTL is lint clean under verilator --lint-only -Wall at every supported data width (waivers inline)."""

import subprocess

import pytest

from tb.runner import DATA_WIDTHS, RTL, SOURCES, verilator_bin_dir


@pytest.mark.parametrize("width", DATA_WIDTHS)
def test_verilator_lint_wall(width):
    cmd = [str(verilator_bin_dir() / "verilator"), "--lint-only", "-Wall", f"-GAXIS_PCIE_DATA_WIDTH={width}",
           f"-I{RTL}", "--top-module", "nic", *map(str, SOURCES)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    warnings = [l for l in res.stderr.splitlines() if l.startswith("%")]
    assert res.returncode == 0 and not warnings, "\n".join(warnings[:40])


def test_bad_width_is_rejected_at_elaboration(tmp_path):
    """The parameter check in an initial block stops a simulation built with an unsupported width."""
    out = tmp_path / "nic96.vvp"
    subprocess.run(["iverilog", "-g2005", "-I", str(RTL), "-P", "nic.AXIS_PCIE_DATA_WIDTH=96", "-s", "nic", "-o", str(out),
                    *map(str, SOURCES)], check=True, capture_output=True)
    res = subprocess.run(["vvp", "-n", str(out)], capture_output=True, text=True, timeout=60)
    assert "AXIS_PCIE_DATA_WIDTH must be 64, 128 or 256" in res.stdout + res.stderr, res.stdout[-2000:]
