"""Generation: a checkpoint + a condition -> a trace file (``.jsonl.gz`` or ``.npz``), streamed with flat memory.

``python -m phantom generate --ckpt C --scenario mixed --tlps 1000000 --out gen.npz`` draws records from the
backbone chunk by chunk, decodes them under the header of the condition (the training template of the scenario,
with the requested link parameters), calibrates them on the fly (``--raw``: not; the backbone-only trace) and
writes them as they come, with the MAC sidecar of the calibrated conversation next to the trace.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from phantom.gen.calibrate import CalibrationStats, Calibrator, Priors
from phantom.gen.condition import Condition, ConditionSpace, HostSetup, Knobs, Link
from phantom.trace import MacWriter, TraceHeader, TraceWriter, check_trace_output, mac_sidecar_path

log = logging.getLogger(__name__)


@dataclass
class GenerateConfig:
    tlps: int = 100_000         # records the backbone generates (calibration adds and drops a few)
    seed: int = 1
    calibrate: bool = True      # False: the backbone's own records, decoded as they are
    constrained: bool = True    # transformer: legality masks on the logits
    batch: int | None = None    # windows / streams generated per forward pass (backbone default)
    device: str = ""            # "" picks cuda when present
    progress: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.tlps, int) or isinstance(self.tlps, bool) or not 1 <= self.tlps <= 10 ** 10:
            raise ValueError(f"--tlps must be a positive integer, got {self.tlps!r}")
        if self.batch is not None and (not isinstance(self.batch, int) or self.batch < 1):
            raise ValueError(f"batch must be a positive integer, got {self.batch!r}")


def resolve_condition(ck: dict[str, Any], scenario: str | None = None, knobs: dict[str, Any] | None = None,
                      link: dict[str, Any] | None = None) -> Condition:
    """The condition to generate for: a known scenario's defaults, overridden by knobs and link parameters.

    Without a scenario the unknown slot is used and the knobs / link parameters given (others: the mean over the
    training scenarios). An unknown scenario name, knobs or link parameters out of range: ValueError, one line.
    """
    space = ConditionSpace.from_json(ck["conditions"])
    defaults = ck.get("scenario_defaults") or {}
    if scenario:
        space.check_scenario(scenario)
        base = Condition.from_json(defaults[scenario]) if scenario in defaults else Condition(scenario)
    else:
        cs = [Condition.from_json(d) for d in defaults.values()]
        if cs:
            mean = Knobs(*(float(np.mean([getattr(c.knobs, f.name) for c in cs])) for f in dataclasses.fields(Knobs)))
            base = Condition("", mean, Link())
        else:
            base = Condition("")
    c = base.with_knobs(**(knobs or {})).with_link(**(link or {}))
    return c


def nearest_scenario(ck: dict[str, Any], cond: Condition) -> str:
    """The condition's scenario when the model was trained on it; else the training scenario whose default
    condition is nearest in the models' condition vector (link parameters and knobs; ties by name)."""
    templates = ck["templates"]
    if cond.scenario in templates:
        return cond.scenario
    defaults = ck.get("scenario_defaults") or {}
    space = ConditionSpace.from_json(ck["conditions"])
    o = len(space.scenarios) + 1
    v = space.vector(cond)[o:]
    known = [s for s in sorted(templates) if s in defaults]
    if not known:
        return sorted(templates)[0]
    return min(known, key=lambda s: (float(np.sum((space.vector(Condition.from_json(defaults[s]))[o:] - v) ** 2)), s))


def header_for(ck: dict[str, Any], cond: Condition, backbone: str = "") -> TraceHeader:
    """The header of a generated trace: a training header of the scenario (else of the training scenario whose
    condition is nearest: its host, memory map and Device Control), with the condition's link parameters."""
    tpl = ck["templates"][nearest_scenario(ck, cond)]
    h = TraceHeader.from_json(copy.deepcopy(tpl))
    h.mps, h.mrrs, h.rcb, h.tag_width = cond.link.mps, cond.link.mrrs, cond.link.rcb, cond.link.tag_width
    h.scenario = cond.scenario or "generated"
    h.simulator = f"phantom:{backbone}" if backbone else "phantom"
    h.mac_frames = ""
    h.extra = {"generated": {"backbone": backbone, "condition": cond.to_json(),
                             "dataset": (ck.get("dataset") or {}).get("fingerprint")}}
    h.__post_init__()
    return h


@dataclass
class GenerateReport:
    path: str
    records: int                 # records written
    generated: int               # records the backbone produced
    seconds: float
    stats: CalibrationStats | None = None
    mac_path: str | None = None

    @property
    def tlps_per_s(self) -> float:
        return self.generated / self.seconds if self.seconds > 0 else math.inf


class _Out:
    """A trace writer by suffix (``.npz``: columnar, streamed; else JSON lines)."""

    def __init__(self, path: Path, header: TraceHeader):
        self.npz = path.suffix == ".npz"
        if self.npz:
            from phantom.gen.npzstream import NpzStreamWriter

            self.w = NpzStreamWriter(path, header)
        else:
            self.w = TraceWriter(path, header)
        self.count = 0

    def write(self, r) -> None:
        if not self.npz:
            r.seq = self.count
        self.w.write(r)
        self.count += 1

    def write_columns(self, tc) -> None:
        if self.npz:
            self.w.write_columns(tc)
            self.count += len(tc)
        else:
            for r in tc.records():
                self.write(r)

    def close(self) -> None:
        self.w.close()


def generate(ck: dict[str, Any], out: str | os.PathLike, cond: Condition, cfg: GenerateConfig,
             on_chunk: Callable[[int], None] | None = None, host: HostSetup | None = None) -> GenerateReport:
    """Generate ``cfg.tlps`` records for ``cond`` into ``out`` (suffix picks the encoding).

    ``host``: the host set-up of the conversation (root-complex model, pinned registers, buffer offset), applied
    by calibration and recorded in the header (``host.model``, ``extra.generated.host_setup``); needs calibration.
    """
    from tqdm import tqdm

    from phantom.gen.nn import pick_device
    from phantom.gen.train import build_model

    out = Path(out)
    check_trace_output(out)
    impl, model, enc, space = build_model(ck)
    header = header_for(ck, cond, impl.name.value)
    if host is not None:
        if not cfg.calibrate:
            raise ValueError("a host set-up is applied by calibration: it cannot be given with --raw")
        if host.model is not None:
            header.host = {**(header.host or {}), "model": copy.deepcopy(host.model)}
        if host.ring_entries:
            header.memory_map = host.memory_map(header.memory_map)
        header.extra["generated"]["host_setup"] = host.to_json()
    device = pick_device(cfg.device)
    kw: dict[str, Any] = {"device": device, "constrained": cfg.constrained, "batch": cfg.batch}
    if impl.name.value == "transformer":
        kw["header_for"] = lambda c: header_for(ck, c, impl.name.value)
        kw["ids"] = (ck["priors"].get("host_id", 0), ck["priors"].get("device_id", 0x100))
    sampler = impl.sampler(model, enc, space, **kw)
    mac = None
    cal = None
    if cfg.calibrate:
        side = mac_sidecar_path(out)
        header.mac_frames = side.name
        header.extra["generated"]["calibrated"] = True
    else:
        header.extra["generated"]["calibrated"] = False
    try:
        w = _Out(out, header)
    except OSError as e:   # the writers' temporary files would name another path than the user's
        raise OSError(f"{out}: cannot be written ({e.strerror or e})") from None
    if cfg.calibrate:
        mac = MacWriter(mac_sidecar_path(out), trace_name=out.name)
        cal = Calibrator(header, Priors.from_json(ck["priors"]), sink=w.write, mac_sink=mac.write, seed=cfg.seed,
                         host=host)
    t0 = time.time()
    state: dict[str, Any] = {}
    t_last = 0
    done = 0
    bar = tqdm(total=cfg.tlps, desc=f"generate {impl.name.value}", unit="TLP", unit_scale=True,
               disable=None if cfg.progress else True, mininterval=1.0)
    try:
        for tok, dt in sampler.chunks(cfg.tlps, cond, cfg.seed):
            tc = enc.decode(header, tok, dt, t0_ps=t_last, state=state)
            if len(tc):
                t_last = int(tc["t_ps"][-1])
            if cal is not None:
                feed = cal.feed
                for r in tc.records():
                    feed(r)
            else:
                w.write_columns(tc)
            done += len(tok)
            bar.update(len(tok))
            if on_chunk is not None:
                on_chunk(done)
        stats = cal.finish() if cal is not None else None
    finally:
        bar.close()
        w.close()
        if mac is not None:
            mac.close()
    return GenerateReport(str(out), w.count, done, time.time() - t0, stats,
                          str(mac_sidecar_path(out)) if mac is not None else None)

