"""The regression behind `make regress`: what runs, how one case runs, and the report (pass/fail, coverage, faults).

Three kinds of case, each a pytest case run in parallel (pytest-xdist, ``tests/regress_cases.py``):
* ``directed``  the cocotb tests of ``tb/test_nic.py`` (hand-written checks of one behaviour each);
* ``captured``  every named scenario (``tb.scenarios``) at ``CAPTURED_FRAMES`` frames, captured and checked
                against the PCIe rules (what the traces the team captures exercise);
* ``generated`` Phantom-generated stimulus traces (``tb.stimulus.STIMULI``: several scenarios, link parameter
                sets and host set-ups nobody captured, seeds fixed) replayed on the RTL in stimulus mode.
With ``fault`` set (``make regress FAULT=NIC_FAULT_...``) every case runs on the RTL built with that planted
fault: a case that fails has caught it.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tb import runner
from tb.coverage import all_bins, coverage_of
from tb.scenarios import SCENARIOS

# the cocotb tests of tb/test_nic.py run at data width 256 (tests/test_sim.py also runs them at 64 and under Icarus)
DIRECTED = ("smoke", "enumeration_and_bar", "mmio_byte_enables", "tx_sizes", "rx_sizes", "loopback", "backpressure",
            "link_sweep", "interrupts", "bad_mmio", "bad_ring_size", "bad_descriptor_unmapped",
            "bad_descriptor_length", "poisoned_completion", "completion_timeout", "completion_reorder",
            "quarantine_exhaustion", "credit_limit", "credit_limit_ignored_overflows", "loaded_reads_in_flight",
            "telemetry_live", "split_near_4k", "trace_matches_stats")
CAPTURED_FRAMES = 600
KINDS = ("directed", "captured", "generated")


@dataclass(frozen=True)
class Case:
    kind: str            # "directed", "captured" or "generated"
    name: str            # test, scenario or stimulus name

    @property
    def id(self) -> str:
        return f"{self.kind}-{self.name}"


@dataclass
class CaseResult:
    case: str
    kind: str
    name: str
    ok: bool
    seconds: float
    message: str = ""
    tlps: int = 0
    coverage: dict[str, int] = field(default_factory=dict)   # bin -> hits (captured and generated cases)
    detail: dict[str, Any] = field(default_factory=dict)

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1, default=str))

    @classmethod
    def read(cls, path: Path) -> "CaseResult":
        return cls(**json.loads(path.read_text()))


def cases(kinds: tuple[str, ...] = KINDS) -> list[Case]:
    from tb.stimulus import STIMULI

    out: list[Case] = []
    if "directed" in kinds:
        out += [Case("directed", t) for t in DIRECTED]
    if "captured" in kinds:
        out += [Case("captured", s) for s in SCENARIOS]
    if "generated" in kinds:
        out += [Case("generated", s.name) for s in STIMULI]
    return out


def run_case(case: Case, work: Path, *, fault: str | None = None, sim: str = "verilator",
             width: int = 256) -> CaseResult:
    """Run one case; never raises for a failing device (the result says why), only for a broken set-up."""
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    res = CaseResult(case.id, case.kind, case.name, False, 0.0)
    try:
        if case.kind == "directed":
            env = {"NIC_TRACE": str(work / "t.jsonl.gz")} if case.name == "trace_matches_stats" else {}
            runner.run(case.name, sim=sim, data_width=width, env=env, test_dir=work / "run", fault=fault)
            res.ok = True
        elif case.kind == "captured":
            _captured(case.name, work, res, fault, sim, width)
        elif case.kind == "generated":
            _generated(case.name, work, res, fault, sim, width)
        else:
            raise ValueError(f"unknown case kind {case.kind!r} (known: {', '.join(KINDS)})")
    except runner.SimulationFailed as e:
        res.ok = False
        res.message = res.message or (_first_line(str(e)) + _sim_reason(work))
    res.seconds = time.time() - t0
    return res


def _first_line(s: str) -> str:
    return s.strip().splitlines()[0] if s.strip() else ""


def _sim_reason(work: Path) -> str:
    """The assertion message of a failed cocotb test (from its results file), to say what caught the fault."""
    import xml.etree.ElementTree as ET

    for xml in sorted(work.rglob("results.xml")):
        try:
            root = ET.parse(xml).getroot()
        except ET.ParseError:
            continue
        for fail in root.iter("failure"):
            msg = (fail.get("message") or "").strip()
            if msg:
                return f": {_first_line(msg)[:300]}"
    return ""


def _captured(name: str, work: Path, res: CaseResult, fault, sim, width) -> None:
    from phantom.rules import check_file

    trace = work / f"{name}.jsonl.gz"
    env = {"NIC_SCENARIO": name, "NIC_TRACE": str(trace), "NIC_FRAMES": str(CAPTURED_FRAMES), "NIC_PROGRESS": "0"}
    try:
        runner.run("run_scenario", sim=sim, data_width=width, module="test_scenario", env=env,
                   test_dir=work / "run", fault=fault)
    finally:
        if trace.exists():   # a run that failed still tells what it covered up to there
            try:
                cov = coverage_of(trace)
                res.coverage = dict(cov.hits)
            except Exception:  # a trace cut short by a crashed simulator: coverage unknown, the failure stands
                pass
    rep = check_file(trace)
    res.tlps = rep.total
    if not rep.ok:
        first = rep.first[0] if rep.first else None
        res.message = f"PCIe rule check: {rep.errors} errors" + (f" (first: {first.rule}: {first.message})"
                                                                  if first else "")
        return
    res.ok = True


def _generated(name: str, work: Path, res: CaseResult, fault, sim, width) -> None:
    from tb.replay import run_replay
    from tb.stimulus import get_stimulus, make_stimulus

    spec = get_stimulus(name)
    trace = make_stimulus(spec, work / "stimulus")
    rpath = work / "replay.json"
    try:
        run_replay(str(trace), sim, width, spec.timing, report=str(rpath), mode="stimulus", test_dir=work / "run",
                   fault=fault, extra_env={"REPLAY_STALL_US": str(spec.stall_us)})
    finally:
        if rpath.exists():
            rep = json.loads(rpath.read_text())
            res.coverage = rep.get("coverage", {}).get("bins", {})
            res.tlps = rep.get("trace_tlps", 0)
            res.detail = {k: rep.get(k) for k in ("rules", "scoreboard", "timeout", "link_errors", "divergence")}
            if not rep.get("ok"):
                res.message = _replay_reason(rep)
    res.ok = True


def _replay_reason(rep: dict) -> str:
    why = []
    if rep.get("timeout"):
        why.append(f"timeout: {rep['timeout'].get('message')}")
    for e in rep.get("link_errors") or []:
        why.append(e)
    rules = rep.get("rules") or {}
    if rules.get("errors"):
        why.append(f"{rules['errors']} rule errors ({', '.join(rules.get('violated', []))})"
                   + (f", first {rules['first'][0]}" if rules.get("first") else ""))
    sb = rep.get("scoreboard") or {}
    if sb and not sb.get("ok", True):
        why.append(f"scoreboard: {sb.get('summary')}"
                   + (f" ({(sb.get('rx_errors') or [''])[0]})" if sb.get("rx_errors") else ""))
    return "; ".join(why) or "replay failed"


# ----------------------------------------------------------------------------------------------------------------
# the report


def coverage_groups(results: list[CaseResult]) -> dict[str, set[str]]:
    """Bins hit by the captured cases, by the generated ones, and by both together (within the universe)."""
    u = all_bins()
    out = {}
    for kind in ("captured", "generated"):
        hits: Counter = Counter()
        for r in results:
            if r.kind == kind:
                hits.update(r.coverage)
        out[kind] = {b for b, n in hits.items() if n and (b in u or b.startswith("link/"))}
    out["all"] = out["captured"] | out["generated"]
    return out


def report(results: list[CaseResult], fault: str | None = None, wall_s: float | None = None) -> dict[str, Any]:
    """The regression's summary as JSON: per case, per kind, coverage, and (fault) what caught it first."""
    results = sorted(results, key=lambda r: (KINDS.index(r.kind), r.name))
    groups = coverage_groups(results)
    u = all_bins()
    per_kind = {}
    for kind in KINDS:
        rs = [r for r in results if r.kind == kind]
        per_kind[kind] = {"cases": len(rs), "passed": sum(r.ok for r in rs), "failed": [r.name for r in rs if not r.ok],
                          "seconds": sum(r.seconds for r in rs)}
    cov = {k: {"bins_hit": len(v & u), "bins_total": len(u), "link": sorted(b for b in v if b.startswith("link/"))}
           for k, v in groups.items()}
    cov["only_generated"] = sorted((groups["generated"] - groups["captured"]))
    cov["only_captured"] = sorted((groups["captured"] - groups["generated"]))
    cov["missing"] = sorted(u - groups["all"])
    out: dict[str, Any] = {"fault": fault, "wall_s": wall_s, "kinds": per_kind, "coverage": cov,
                           "cases": [asdict(r) | {"coverage": len(r.coverage)} for r in results]}
    if fault:
        from tb.stimulus import STIMULI

        order = {s.name: k for k, s in enumerate(STIMULI)}
        gen_fail = sorted((r for r in results if r.kind == "generated" and not r.ok), key=lambda r: order.get(r.name, 0))
        out["caught"] = {kind: bool(per_kind[kind]["failed"]) for kind in KINDS}
        out["first_generated"] = ({"stimulus": gen_fail[0].name, "why": gen_fail[0].message} if gen_fail else None)
    return out


def format_report(rep: dict[str, Any]) -> str:
    lines = []
    title = f"make regress{' FAULT=' + rep['fault'] if rep.get('fault') else ''}"
    lines.append(f"== {title}" + (f": {rep['wall_s']:.0f} s wall" if rep.get("wall_s") else ""))
    lines.append(f"{'case':<44} {'result':<7} {'s':>6} {'TLPs':>8}  note")
    for c in rep["cases"]:
        res = "pass" if c["ok"] else ("CAUGHT" if rep.get("fault") else "FAIL")
        lines.append(f"{c['case']:<44} {res:<7} {c['seconds']:>6.1f} {c['tlps']:>8}  {c['message'][:150]}")
    lines.append("")
    for kind, k in rep["kinds"].items():
        if k["cases"]:
            lines.append(f"{kind:<10} {k['passed']} of {k['cases']} passed ({k['seconds']:.0f} s of case time)"
                         + (f"; failed: {', '.join(k['failed'])}" if k["failed"] else ""))
    cov = rep["coverage"]
    lines.append("")
    lines.append(f"coverage (bins of tb/coverage.py): captured scenarios {cov['captured']['bins_hit']} of "
                 f"{cov['captured']['bins_total']}, generated stimulus {cov['generated']['bins_hit']}, together "
                 f"{cov['all']['bins_hit']}")
    lines.append(f"  link parameters captured: {', '.join(b[5:] for b in cov['captured']['link'])}")
    lines.append(f"  link parameters generated: {', '.join(b[5:] for b in cov['generated']['link'])}")
    lines.append(f"  only generated stimulus hits ({len(cov['only_generated'])}): {', '.join(cov['only_generated'])}")
    lines.append(f"  only captured scenarios hit ({len(cov['only_captured'])}): {', '.join(cov['only_captured'])}")
    lines.append(f"  hit by neither ({len(cov['missing'])}): {', '.join(cov['missing'])}")
    if rep.get("fault"):
        lines.append("")
        c = rep["caught"]
        lines.append(f"fault {rep['fault']}: directed tests {'catch' if c['directed'] else 'miss'} it, captured "
                     f"scenarios {'catch' if c['captured'] else 'miss'} it, generated stimulus "
                     f"{'catches' if c['generated'] else 'misses'} it")
        if rep.get("first_generated"):
            lines.append(f"  first generated stimulus to catch it: {rep['first_generated']['stimulus']} "
                         f"({rep['first_generated']['why'][:200]})")
    return "\n".join(lines)


def plot_coverage(rep: dict[str, Any], path: Path) -> None:
    """Bins hit per coverage family, captured vs generated vs together (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    u = sorted(all_bins())
    fam = sorted({b.split("/")[0] for b in u})
    cov = rep["coverage"]
    only_gen, only_cap = set(cov["only_generated"]), set(cov["only_captured"])
    missing = set(cov["missing"])
    rows = []
    for f in fam:
        bins = [b for b in u if b.startswith(f + "/")]
        both = [b for b in bins if b not in missing and b not in only_gen and b not in only_cap]
        rows.append((f, len(both), len([b for b in bins if b in only_cap]), len([b for b in bins if b in only_gen]),
                     len([b for b in bins if b in missing])))
    fig, ax = plt.subplots(figsize=(8, 4))
    x = range(len(rows))
    b0 = [r[1] for r in rows]
    b1 = [r[2] for r in rows]
    b2 = [r[3] for r in rows]
    b3 = [r[4] for r in rows]
    ax.bar(x, b0, label="both", color="#4c72b0")
    ax.bar(x, b1, bottom=b0, label="captured only", color="#55a868")
    ax.bar(x, b2, bottom=[a + b for a, b in zip(b0, b1)], label="generated only", color="#dd8452")
    ax.bar(x, b3, bottom=[a + b + c for a, b, c in zip(b0, b1, b2)], label="neither", color="#cccccc")
    ax.set_xticks(list(x), [r[0] for r in rows])
    ax.set_ylabel("coverage bins")
    ax.set_title("make regress: coverage by bin family")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

