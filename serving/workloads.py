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


# the latest arrival a trace may ask for (115 days): beyond it a time is a unit mistake, not a workload
MAX_ARRIVAL_S = 1e7

# pragma: no mutate start  (mutation testing covers the trace-file validation below, not the generators)

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


def lmsys_workload(path: Path = DATA / "lmsys_arena_vtc_1500.json", max_new_tokens: int | None = None) -> Workload:
    """The artifact's real trace. As its runs do, each request asks for exactly its true output length
    (max_new_tokens = output, fair_bench/run_exp.py); `max_new_tokens` caps all requests at a client-side limit
    instead (the engine must then reserve for the cap)."""
    rows = json.loads(Path(path).read_text())
    reqs = [Request(i, r["client"], float(r["t"]), int(r["in"]), int(r["out"]),
                    max_new_tokens=_cap(max_new_tokens, int(r["out"]))) for i, r in enumerate(rows)]
    return Workload("lmsys", reqs, {}, {"source": str(path), "max_new_tokens": max_new_tokens or "output"})


def _cap(cap: int | None, out: int) -> int | None:
    return None if cap is None else max(cap, out)


def sharegpt_workload(n: int = 3000, rate: float = 3.0, clients: int = 8, arrival: str = "poisson", cv: float = 2.0,
                      seed: int = 1, max_tokens: int = 4096, path: Path = DATA / "sharegpt_lengths_sarathi.csv.gz",
                      max_new_tokens: int | None = None) -> Workload:
    """ShareGPT prompt/output lengths with Poisson (or Gamma, coefficient of variation cv) arrivals over clients
    whose shares follow a Zipf(1) law, so some clients are heavy and some light. Each request asks for its true
    output length unless `max_new_tokens` caps them all."""
    if arrival not in ("poisson", "gamma"):
        raise ValueError(f"arrival must be poisson or gamma, got {arrival!r}")
    rows = _sharegpt_rows(path)
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
        p, o = _clip(rows[pick[i]], max_tokens)
        reqs.append(Request(i, f"user{who[i]}", float(t[i]), p, o,
                            max_new_tokens=_cap(None if max_new_tokens is None else min(max_new_tokens, max_tokens - p), o)))
    return Workload("sharegpt", reqs, {}, {"rate": rate, "clients": clients, "arrival": arrival, "n": n,
                                           "max_new_tokens": max_new_tokens or "output"})


def _sharegpt_rows(path: Path) -> list[tuple[int, int]]:
    with gzip.open(path, "rt") as f:
        return [(int(r["num_prefill_tokens"]), int(r["num_decode_tokens"])) for r in csv.DictReader(f)]


def _clip(row: tuple[int, int], max_tokens: int) -> tuple[int, int]:
    p, o = row
    p = max(1, min(p, max_tokens - 1))
    return p, max(1, min(o, max_tokens - p))


# shape-skewed workloads ----------------------------------------------------------------------------------
SHAPES = {  # client -> (prompt, output) of its requests in the synthetic shape-skew suite
    "prompt-heavy": (1536, 32),     # long documents, short answers (summaries, classification)
    "decode-heavy": (32, 768),      # short questions, long answers (generation)
    "long-context": (3072, 256),    # long contexts and answers (chat with history, RAG)
    "balanced": (256, 256),         # the VTC suites' shape
}


# GPU-seconds one request of each shape is attributed (Profile.split: physically) on the A100 profile's Equinox
# engine, measured under VTC on `shape-skew` (make bench-serving prints the measurement beside these figures)
SHAPE_GPU_S = {"prompt-heavy": 0.1128, "decode-heavy": 0.1611, "long-context": 0.3855, "balanced": 0.0573}


def _shape_arrivals(rates: dict[str, float], duration: float, seed: int) -> list[Request]:
    """Poisson arrivals per client of SHAPES at the given request rates, merged in time order."""
    rng = np.random.default_rng(seed)
    events = []
    for c, (p, o) in SHAPES.items():
        rate = rates[c]
        t = 0.0
        while True:
            t += rng.exponential(1.0 / rate)
            if t >= duration:
                break
            events.append((t, c, p, o))
    events.sort()
    return [Request(i, c, t, p, o) for i, (t, c, p, o) in enumerate(events)]


def shape_skew_workload(duration: float = 600.0, load: float = 4.0, seed: int = 1,
                        unit_tok_s: float = 4000.0) -> Workload:
    """Four clients with the request shapes of SHAPES and Poisson arrivals, each asking for the same VTC token
    charge per second (w_p * prompt + w_q * output): under VTC's counter they are equal, while the GPU time
    a token charge costs differs by shape (prefill tokens are cheap per token, decode tokens pay the weight
    read, long contexts their KV reads). The total charge asked for is load * unit_tok_s per second, split
    evenly: by default 16,000 per second, 4,000 per client, i.e. 2.50 (prompt-heavy), 2.55 (decode-heavy),
    1.12 (long-context) and 5.21 (balanced) requests per second. Measured on the A100 profile's Equinox engine
    (make bench-serving), it serves about 11,000 per second of this mix: load 2 leaves every client served at
    once (0 of 62 windows contended), load 4 backlogs them all."""
    per_client = load * unit_tok_s / len(SHAPES)
    reqs = _shape_arrivals({c: per_client / (p + 2 * o) for c, (p, o) in SHAPES.items()}, duration, seed)
    return Workload("shape-skew", reqs, {}, {"duration": duration, "load": load, "shapes": dict(SHAPES)})


def shape_skew_gpu_workload(duration: float = 600.0, load: float = 2.0, seed: int = 1,
                            gpu_cost: dict[str, float] | None = None) -> Workload:
    """The shapes of `shape-skew`, each client asking for the same GPU time per second instead of the same token
    charge: `load` GPU-seconds per second in all (the GPU delivers one; 2 backlogs every client), split evenly,
    at `gpu_cost` GPU-seconds per request of each shape (SHAPE_GPU_S). The counterpart of `shape-skew`: there
    equal token service is equal service of demand, here equal GPU time is (docs/equinox.md, "Which evenness")."""
    cost = dict(SHAPE_GPU_S if gpu_cost is None else gpu_cost)
    for c in SHAPES:
        if not cost.get(c, 0) > 0:
            raise ValueError(f"gpu_cost: need a positive GPU-seconds per request for {c!r}, got {cost.get(c)!r}")
    per_client = load / len(SHAPES)
    reqs = _shape_arrivals({c: per_client / cost[c] for c in SHAPES}, duration, seed)
    return Workload("shape-skew-gpu", reqs, {}, {"duration": duration, "load": load, "shapes": dict(SHAPES),
                                                 "gpu_s_per_request": cost})


def shape_class(prompt: int, output: int) -> str:
    """The shape a real request belongs to (the thresholds split ShareGPT and LMSYS into comparable groups)."""
    if prompt + output >= 3000:
        return "long-context"
    if prompt >= 4 * output:
        return "prompt-heavy"
    if output >= 4 * prompt:
        return "decode-heavy"
    return "balanced"


def sharegpt_shape_workload(n: int = 3000, rate: float = 5.0, seed: int = 1, max_tokens: int = 4096,
                            path: Path = DATA / "sharegpt_lengths_sarathi.csv.gz") -> Workload:
    """ShareGPT lengths, Poisson arrivals, each request's client being its shape class (shape_class): clients
    that differ in how they use the GPU rather than in how much they ask. 5 requests per second by default:
    at ShareGPT's 3 the A100 Equinox engine keeps up with most windows (13 of 101 contended)."""
    rows = _sharegpt_rows(path)
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(rows), size=n, replace=len(rows) < n)
    t = np.cumsum(rng.exponential(1.0 / rate, n))
    reqs = []
    for i in range(n):
        p, o = _clip(rows[pick[i]], max_tokens)
        reqs.append(Request(i, shape_class(p, o), float(t[i]), p, o))
    return Workload("sharegpt-shape", reqs, {}, {"rate": rate, "n": n})


def lmsys_shape_workload(path: Path = DATA / "lmsys_arena_vtc_1500.json") -> Workload:
    """The LMSYS trace's requests and arrival times, each request's client being its shape class."""
    rows = json.loads(Path(path).read_text())
    reqs = [Request(i, shape_class(int(r["in"]), int(r["out"])), float(r["t"]), int(r["in"]), int(r["out"]))
            for i, r in enumerate(rows)]
    return Workload("lmsys-shape", reqs, {}, {"source": str(path)})


# the artifact's measured runs, replayed -------------------------------------------------------------------
ARTIFACT_SUITES = ("overload", "proportional", "on_off_less", "increase", "poisson_short_long", "real")


def artifact_run(suite: str, policy: str = "vtc") -> dict:
    """The VTC artifact's measured run of a suite under FCFS or VTC (data/vtc_artifact_results)."""
    if suite not in ARTIFACT_SUITES:
        raise ValueError(f"unknown artifact suite: {suite!r} (known: {', '.join(ARTIFACT_SUITES)})")
    if policy not in ("vtc", "fcfs"):
        raise ValueError(f"the artifact measured vtc and fcfs only, got {policy!r}")
    p = DATA / "vtc_artifact_results" / policy.upper() / f"all_results_{suite}.jsonl.gz"
    with gzip.open(p, "rt") as f:
        return json.loads(f.readline())


def artifact_workload(suite: str, policy: str = "vtc") -> Workload:
    """The requests the artifact sent in its measured run (arrival, client, prompt, output; max_new_tokens was
    the output length, as in fair_bench/run_exp.py). The FCFS and VTC runs of `overload` differ (600 s / 360 s)."""
    d = artifact_run(suite, policy)
    rs = sorted(d["result"]["responses"], key=lambda x: x["req_time"])
    reqs = [Request(i, x["adapter_dir"], float(x["req_time"]), int(x["prompt_len"]), int(x["output_len"]))
            for i, x in enumerate(rs)]
    return Workload(f"artifact-{suite}", reqs, {}, {"suite": suite, "policy": policy, "config": d["config"]})


# pragma: no mutate end
# users' trace files ----------------------------------------------------------------------------------------
TRACE_SUFFIXES = (".json", ".jsonl", ".csv", ".json.gz", ".jsonl.gz", ".csv.gz")


def _kind(path: Path) -> str | None:
    name = path.name.lower()
    for suf in TRACE_SUFFIXES:
        if name.endswith(suf):
            return suf.removesuffix(".gz").lstrip(".")
    return None


def _read_text(path: Path) -> str:
    try:
        if path.name.lower().endswith(".gz"):
            with gzip.open(path, "rt", encoding="utf-8") as f:
                return f.read()
        return path.read_text(encoding="utf-8")
    except (OSError, EOFError, UnicodeDecodeError) as e:  # gzip.BadGzipFile is an OSError
        raise RequestError(f"{path}: cannot read the trace: {e}") from None


def _int_field(where: str, key: str, v, lo: int = 1) -> int:
    """A token count: an integer (JSON number or CSV digits), not a boolean, not fractional."""
    if isinstance(v, bool):
        raise RequestError(f"{where}: field {key!r} must be an integer token count, got {v!r}")
    if isinstance(v, str):
        try:
            v = float(v.strip()) if any(ch in v for ch in ".eE") else int(v.strip())
        except ValueError:
            raise RequestError(f"{where}: field {key!r} must be an integer token count, got {v!r}") from None
    if isinstance(v, float):
        if not (math.isfinite(v) and v == int(v)):
            raise RequestError(f"{where}: field {key!r} must be an integer token count, got {v!r}")
        v = int(v)
    if not isinstance(v, int):
        raise RequestError(f"{where}: field {key!r} must be an integer token count, got {v!r}")
    if v < lo:
        raise RequestError(f"{where}: field {key!r} must be >= {lo}, got {v}")
    return v


def _num_field(where: str, key: str, v) -> float:
    if isinstance(v, bool):
        raise RequestError(f"{where}: field {key!r} must be a number, got {v!r}")
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise RequestError(f"{where}: field {key!r} must be a number, got {v!r}") from None
    if not math.isfinite(x):
        raise RequestError(f"{where}: field {key!r} must be finite, got {v!r}")
    return x


def load_trace_file(path: str | Path) -> Workload:
    """A user's trace: JSON list, JSON lines or CSV (each optionally gzip-compressed, `.gz`) of
    {t, client, in, out[, weight][, deadline][, max_new_tokens]} (seconds, tokens; deadline: seconds after
    arrival the whole request should take at most; max_new_tokens: the generation cap the client asked for,
    which the engine reserves KV for; default: the output length)."""
    path = Path(path)
    if not path.exists():
        raise RequestError(f"{path}: no such trace file")
    if path.is_dir():
        raise RequestError(f"{path}: is a directory, not a trace file")
    kind = _kind(path)
    if kind is None:
        raise RequestError(f"{path}: unknown trace format (expected {', '.join(TRACE_SUFFIXES)})")
    text = _read_text(path)
    rows: list[tuple[int, dict]] = []
    if kind == "csv":
        for i, r in enumerate(csv.DictReader(io.StringIO(text)), start=2):
            rows.append((i, r))
    elif kind == "jsonl":
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
    known = {"t", "client", "in", "out", "weight", "deadline", "max_new_tokens"}
    reqs, weights = [], {}
    for n, (line, r) in enumerate(rows):
        where = f"{path}:{line}"
        if not isinstance(r, dict):
            raise RequestError(f"{where}: expected an object with t, client, in, out")
        for k in ("t", "client", "in", "out"):
            if k not in r or r[k] in (None, ""):
                raise RequestError(f"{where}: field {k!r} missing")
        extra = sorted(k for k in r if k not in known and k is not None)
        if extra:
            raise RequestError(f"{where}: unknown field {extra[0]!r} (fields: {', '.join(sorted(known))})")
        if not isinstance(r["client"], (str, int)) or isinstance(r["client"], bool):
            raise RequestError(f"{where}: field 'client' must be a name, got {r['client']!r}")
        t = _num_field(where, "t", r["t"])
        if t < 0:
            raise RequestError(f"{where}: field 't' must be a time >= 0, got {r['t']!r}")
        if t > MAX_ARRIVAL_S:
            raise RequestError(f"{where}: field 't' must be at most {MAX_ARRIVAL_S:g} s (115 days), got {r['t']!r}")
        p, o = _int_field(where, "in", r["in"]), _int_field(where, "out", r["out"])
        client = str(r["client"])
        w = r.get("weight")
        if w not in (None, ""):
            w = _num_field(where, "weight", w)
            if w <= 0:
                raise RequestError(f"{where}: field 'weight' must be positive, got {w}")
            prev = weights.setdefault(client, w)
            if prev != w:
                raise RequestError(f"{where}: client {client!r} has weight {w} here but {prev} earlier "
                                   f"(a client has one weight)")
        dl = r.get("deadline")
        if dl not in (None, ""):
            dl = _num_field(where, "deadline", dl)
            if not dl > 0:
                raise RequestError(f"{where}: field 'deadline' must be positive seconds, got {dl}")
        else:
            dl = None
        mnt = r.get("max_new_tokens")
        if mnt not in (None, ""):
            mnt = _int_field(where, "max_new_tokens", mnt)
            if mnt < o:
                raise RequestError(f"{where}: field 'max_new_tokens' ({mnt}) is below the output of {o} tokens")
        else:
            mnt = None
        reqs.append((t, n, client, p, o, dl, mnt))
    reqs.sort(key=lambda x: (x[0], x[1]))
    out = [Request(i, c, t, p, o, weight=weights.get(c, 1.0), deadline=dl, max_new_tokens=mnt)
           for i, (t, _, c, p, o, dl, mnt) in enumerate(reqs)]
    if not out:
        raise RequestError(f"{path}: no requests")
    return Workload(path.name.split(".")[0], out, weights, {"source": str(path)})


NAMED = ("lmsys", "sharegpt", "shape-skew", "shape-skew-gpu", "sharegpt-shape", "lmsys-shape")


def load_workload(name: str, seed: int = 1, **kw) -> Workload:
    """`lmsys`, `sharegpt`, a shape-skewed workload, a VTC suite, `artifact-<suite>` (a measured run's
    requests) or a path to a trace file. kw: n / rate (ShareGPT), duration (suites), max_new_tokens."""
    mnt = kw.pop("max_new_tokens", None)
    if name == "lmsys":
        return lmsys_workload(max_new_tokens=mnt)
    if name == "sharegpt":
        return sharegpt_workload(seed=seed, max_new_tokens=mnt, **kw)
    if name == "shape-skew":
        return shape_skew_workload(seed=seed, **({"duration": kw["duration"]} if kw.get("duration") else {}))
    if name == "shape-skew-gpu":
        return shape_skew_gpu_workload(seed=seed, **({"duration": kw["duration"]} if kw.get("duration") else {}))
    if name == "sharegpt-shape":
        return sharegpt_shape_workload(seed=seed, **{k: v for k, v in kw.items() if k in ("n", "rate")})
    if name == "lmsys-shape":
        return lmsys_shape_workload()
    if name.startswith("artifact-") and name[len("artifact-"):] in ARTIFACT_SUITES:
        return artifact_workload(name[len("artifact-"):])
    if name in SUITES:
        return suite_workload(name, seed=seed, duration=kw.get("duration"))
    p = Path(name)
    if _kind(p) is not None or p.exists():
        return load_trace_file(name)
    raise ValueError(f"unknown workload: {name!r} ({', '.join(NAMED)}, {', '.join(SUITES)}, "
                     f"artifact-<{'|'.join(ARTIFACT_SUITES)}>, or a .json/.jsonl/.csv[.gz] trace file)")
