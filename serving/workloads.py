"""Workloads: the VTC synthetic suites, the real LMSYS Chatbot Arena trace, ShareGPT lengths with synthetic
arrivals, and users' own trace files. All deterministic for a given seed."""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from serving.request import Request, RequestError

DATA = Path(__file__).resolve().parent.parent / "data"


@dataclass(frozen=True)
class Suite:
    """A VTC-artifact-style synthetic suite (fair_bench): per-client rates and lengths."""

    name: str
    rates: tuple[float, ...]                 # requests/s per client
    duration: float = 600.0                  # seconds of arrivals
    lengths: tuple[tuple[int, int], ...] = ((256, 256),)  # (prompt, output) per client (last one repeats)
    arrival: str = "uniform"                 # uniform (fixed gaps, the artifact's cv=-1) or poisson
    on_off: float = 0.0                      # client 0 alternates on/off with this half-period (s); 0: always on
    increase: tuple[float, float] | None = None  # client 1's rate ramps linearly from a to b
    shift_at: float | None = None            # rates of the two clients swap at this time
    weights: tuple[float, ...] = ()          # client weights (default 1)
    help: str = ""


SUITES: dict[str, Suite] = {s.name: s for s in (
    Suite("overload", (1.5, 3.0), 360.0, help="2 clients, both above their share; the artifact's VTC run (360 s)"),
    Suite("overload-multi", (0.5, 1.0, 2.0, 4.0), 360.0, help="4 clients of rising demand, engine overloaded"),
    Suite("overload-weighted", (2.0, 2.0), 360.0, weights=(1.0, 2.0), help="2 equal clients, weights 1 and 2"),
    Suite("proportional", (0.25, 0.5, 1.5), help="3 clients at 1:2:6 (under and over their share)"),
    Suite("on_off_less", (0.5, 2.0), on_off=60.0, help="client 0 on/off every 60 s, total load below capacity"),
    Suite("on_off_overload", (1.5, 3.0), on_off=60.0, help="client 0 on/off every 60 s, overloaded"),
    Suite("increase", (0.5, 2.0), increase=(0.2, 2.0), help="client 1's rate ramps from 0.2 to 2 req/s"),
    Suite("poisson_short_long", (8.0, 1.5), lengths=((64, 64), (256, 256)), arrival="poisson",
          help="many short requests vs fewer long ones, Poisson arrivals"),
    Suite("dist_shift", (3.0, 0.5), shift_at=300.0, arrival="poisson", help="the heavy client changes at 300 s"),
)}


@dataclass
class Workload:
    name: str
    requests: list[Request]
    weights: dict[str, float] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    @property
    def clients(self) -> list[str]:
        return sorted({r.client for r in self.requests})


def _arrivals(rate_fn, duration: float, kind: str, rng: np.random.Generator) -> list[float]:
    """Arrival times for a (possibly time-varying) rate: fixed gaps or Poisson (thinning)."""
    out: list[float] = []
    if kind == "uniform":
        t = 0.0
        while True:
            r = rate_fn(t)
            if r <= 0:
                t += 1.0
                if t >= duration:
                    break
                continue
            t += 1.0 / r
            if t >= duration:
                break
            out.append(t)
        return out
    rmax = max(rate_fn(x) for x in np.linspace(0, duration, 601))
    t = 0.0
    while rmax > 0:
        t += rng.exponential(1.0 / rmax)
        if t >= duration:
            break
        if rng.random() * rmax <= rate_fn(t):
            out.append(t)
    return out


def suite_workload(name: str, seed: int = 1, duration: float | None = None) -> Workload:
    try:
        s = SUITES[name]
    except KeyError:
        raise ValueError(f"unknown workload: {name!r}") from None
    dur = duration or s.duration
    rng = np.random.default_rng(seed)
    events = []
    for c, rate in enumerate(s.rates):
        def rate_fn(t, c=c, rate=rate):
            if s.increase and c == 1:
                a, b = s.increase
                return a + (b - a) * t / dur
            if s.on_off and c == 0 and int(t // s.on_off) % 2 == 1:
                return 0.0
            if s.shift_at is not None and t >= s.shift_at:
                return s.rates[1 - c] if len(s.rates) == 2 else rate
            return rate
        p, o = s.lengths[min(c, len(s.lengths) - 1)]
        for t in _arrivals(rate_fn, dur, s.arrival, rng):
            events.append((t, c, p, o))
    events.sort()
    weights = {f"client{c}": w for c, w in enumerate(s.weights)} if s.weights else {}
    reqs = [Request(i, f"client{c}", t, p, o, weight=weights.get(f"client{c}", 1.0))
            for i, (t, c, p, o) in enumerate(events)]
    return Workload(name, reqs, weights, {"suite": s.name, "rates": s.rates, "duration": dur})


def lmsys_workload(path: Path = DATA / "lmsys_arena_vtc_1500.json") -> Workload:
    rows = json.loads(Path(path).read_text())
    # clients of the arena asked for up to 1024 new tokens (all outputs in the trace are below that)
    reqs = [Request(i, r["client"], float(r["t"]), int(r["in"]), int(r["out"]), max_new_tokens=1024)
            for i, r in enumerate(rows)]
    return Workload("lmsys", reqs, {}, {"source": str(path), "max_new_tokens": 1024})


def sharegpt_workload(n: int = 2000, rate: float = 2.0, clients: int = 8, arrival: str = "poisson", cv: float = 2.0,
                      seed: int = 1, max_tokens: int = 4096, path: Path = DATA / "sharegpt_lengths_sarathi.csv.gz") -> Workload:
    """ShareGPT prompt/output lengths with Poisson (or Gamma, coefficient of variation cv) arrivals over clients
    whose shares follow a Zipf(1) law, so some clients are heavy and some light."""
    if arrival not in ("poisson", "gamma"):
        raise ValueError(f"arrival must be poisson or gamma, got {arrival!r}")
    with gzip.open(path, "rt") as f:
        rows = [(int(r["num_prefill_tokens"]), int(r["num_decode_tokens"])) for r in csv.DictReader(f)]
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(rows), size=n, replace=len(rows) < n)
    if arrival == "poisson":
        gaps = rng.exponential(1.0 / rate, n)
    else:
        k = 1.0 / (cv * cv)
        gaps = rng.gamma(k, 1.0 / (rate * k), n)
    share = 1.0 / np.arange(1, clients + 1)
    who = rng.choice(clients, size=n, p=share / share.sum())
    t = np.cumsum(gaps)
    reqs = []
    for i in range(n):
        p, o = rows[pick[i]]
        p = max(1, min(p, max_tokens - 1))
        o = max(1, min(o, max_tokens - p))
        reqs.append(Request(i, f"user{who[i]}", float(t[i]), p, o, max_new_tokens=max(o, min(2048, max_tokens - p))))
    return Workload("sharegpt", reqs, {}, {"rate": rate, "clients": clients, "arrival": arrival, "max_new_tokens": 2048})


def load_trace_file(path: str | Path) -> Workload:
    """A user's trace: JSON list, JSON lines or CSV of {t, client, in, out[, weight][, deadline]}
    (seconds, tokens; deadline: seconds after arrival the whole request should take at most)."""
    path = Path(path)
    if not path.exists():
        raise RequestError(f"{path}: no such trace file")
    text = path.read_text()
    rows: list[tuple[int, dict]] = []
    if path.suffix == ".csv":
        for i, r in enumerate(csv.DictReader(io.StringIO(text)), start=2):
            rows.append((i, r))
    elif path.suffix == ".jsonl":
        for i, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    rows.append((i, json.loads(line)))
                except json.JSONDecodeError as e:
                    raise RequestError(f"{path}:{i}: malformed JSON: {e.msg}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise RequestError(f"{path}:{e.lineno}: malformed JSON: {e.msg}") from None
        if not isinstance(data, list):
            raise RequestError(f"{path}: expected a JSON list of requests")
        rows = [(i + 1, r) for i, r in enumerate(data)]
    reqs, weights = [], {}
    for n, (line, r) in enumerate(rows):
        where = f"{path}:{line}"
        if not isinstance(r, dict):
            raise RequestError(f"{where}: expected an object with t, client, in, out")
        for k in ("t", "client", "in", "out"):
            if k not in r or r[k] in (None, ""):
                raise RequestError(f"{where}: field {k!r} missing")
        try:
            t = float(r["t"])
            p, o = int(r["in"]), int(r["out"])
        except (TypeError, ValueError):
            raise RequestError(f"{where}: fields t/in/out must be numbers, got {r['t']!r}/{r['in']!r}/{r['out']!r}") from None
        if not math.isfinite(t) or t < 0:
            raise RequestError(f"{where}: field 't' must be a time >= 0, got {r['t']!r}")
        if p < 1 or o < 1:
            raise RequestError(f"{where}: fields 'in' and 'out' must be positive token counts, got {p} and {o}")
        w = r.get("weight")
        if w not in (None, ""):
            try:
                w = float(w)
            except (TypeError, ValueError):
                raise RequestError(f"{where}: field 'weight' must be a number, got {w!r}") from None
            if w <= 0:
                raise RequestError(f"{where}: field 'weight' must be positive, got {w}")
            prev = weights.setdefault(str(r["client"]), w)
            if prev != w:
                raise RequestError(f"{where}: client {r['client']!r} has weight {w} here but {prev} earlier "
                                   f"(a client has one weight)")
        dl = r.get("deadline")
        if dl not in (None, ""):
            try:
                dl = float(dl)
            except (TypeError, ValueError):
                raise RequestError(f"{where}: field 'deadline' must be a number, got {dl!r}") from None
            if not dl > 0:
                raise RequestError(f"{where}: field 'deadline' must be positive seconds, got {dl}")
        else:
            dl = None
        reqs.append((t, n, str(r["client"]), p, o, dl))
    reqs.sort(key=lambda x: (x[0], x[1]))
    out = [Request(i, c, t, p, o, weight=weights.get(c, 1.0), deadline=dl)
           for i, (t, _, c, p, o, dl) in enumerate(reqs)]
    if not out:
        raise RequestError(f"{path}: no requests")
    return Workload(path.stem, out, weights, {"source": str(path)})


def load_workload(name: str, seed: int = 1, **kw) -> Workload:
    """`lmsys`, `sharegpt`, a suite name, or a path to a trace file."""
    if name == "lmsys":
        return lmsys_workload()
    if name == "sharegpt":
        return sharegpt_workload(seed=seed, **kw)
    if name in SUITES:
        return suite_workload(name, seed=seed, duration=kw.get("duration"))
    if Path(name).suffix in (".json", ".jsonl", ".csv") or Path(name).exists():
        return load_trace_file(name)
    raise ValueError(f"unknown workload: {name!r} (lmsys, sharegpt, {', '.join(SUITES)}, or a .json/.jsonl/.csv file)")
