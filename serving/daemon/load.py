"""``python -m serving load``: replay a workload over HTTP against the daemon (or any OpenAI-compatible server).

Each trace client is mapped to an API key (``--keys name=key,...``, or round-robin over ``--key`` values), so
the daemon sees many clients with their own keys. Requests leave at the trace's arrival times (``--rate-scale``
compresses them), ask for exactly the trace's output length (``max_tokens`` with ``ignore_eos``), stream by
default, and are timed as the client sees them: TTFT, TBT, end-to-end. The report gives throughput, TTFT/TBT
percentiles and Jain's index per client, beside what the daemon's ``/metrics`` says for the same run (responses
and served tokens per client, the difference of two scrapes); every request must be answered exactly once,
counted on both sides. Workloads: the serving ones (lmsys, sharegpt, the VTC suites, a trace file) or ``short``
(Poisson arrivals at ``--rate`` of ``--prompt-tokens``/``--max-tokens`` requests, for throughput).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import httpx
import numpy as np

log = logging.getLogger(__name__)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--url", default="http://127.0.0.1:8000", help="the server's base URL")
    ap.add_argument("--model", default="equinox-sim-7b", help="model name to ask for")
    ap.add_argument("--workload", default="short", help="short, lmsys, sharegpt, a VTC suite or a trace file")
    ap.add_argument("--key", action="append", default=[], metavar="[NAME=]KEY",
                    help="an API key, with the daemon's name of its client (repeat; trace clients go round-robin "
                         "over the keys; the name labels the report and finds the client in /metrics)")
    ap.add_argument("--weights", default="", help="client weights for Jain's index: name=w,... (default 1)")
    ap.add_argument("--requests", type=int, default=200, help="how many requests (the trace's first N)")
    ap.add_argument("--rate", type=float, default=50.0, help="short: requests per second (Poisson)")
    ap.add_argument("--prompt-tokens", type=int, default=16, help="short: prompt length")
    ap.add_argument("--max-tokens", type=int, default=16, help="short: output length")
    ap.add_argument("--max-output", type=int, default=None, help="cap every request's output tokens")
    ap.add_argument("--rate-scale", type=float, default=1.0, help="compress the trace's arrival times")
    ap.add_argument("--endpoint", choices=["completions", "chat"], default="completions")
    ap.add_argument("--no-stream", action="store_true", help="non-streaming requests (no TTFT/TBT)")
    ap.add_argument("--burst", action="store_true", help="send every request at once (concurrency test)")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds a request may take")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default=None, help="write the report as JSON here")
    ap.add_argument("--no-progress", action="store_true")


@dataclass
class Planned:
    t: float
    client: str        # the trace's client
    key_client: str    # who the daemon will see (the key's client)
    key: str
    prompt_tokens: int
    max_tokens: int


@dataclass
class Result:
    planned: Planned
    status: int = 0                     # HTTP status (0: no response)
    error: str = ""
    rid: str = ""                       # the response id the server gave
    sent: float = 0.0
    first: float | None = None
    end: float = 0.0
    tokens: int = 0                     # completion tokens by the response's usage
    prompt_tokens: int = 0
    gaps: list[float] = field(default_factory=list)   # time between streamed chunks, per token
    answers: int = 0                    # final answers seen for this request (must be exactly 1)


def _pairs(text: str, what: str) -> dict[str, str]:
    out = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        k, sep, v = item.partition("=")
        if not sep or not k or not v:
            raise ValueError(f"{what}: {item!r} is not name=value")
        out[k] = v
    return out


def plan(args) -> list[Planned]:
    if not args.key:
        raise ValueError("give API keys: --key NAME=KEY (repeatable)")
    keys = []
    for i, k in enumerate(args.key):
        name, sep, key = k.partition("=")
        keys.append((name, key) if sep and name and key else (f"key{i}", k))
    if args.requests < 1:
        raise ValueError(f"--requests must be at least 1, got {args.requests}")
    if args.rate_scale <= 0:
        raise ValueError(f"--rate-scale must be positive, got {args.rate_scale}")
    rng = np.random.default_rng(args.seed)
    rows: list[tuple[float, str, int, int]] = []
    if args.workload == "short":
        if args.rate <= 0 or args.prompt_tokens < 2 or args.max_tokens < 1:
            raise ValueError("short: --rate must be positive, --prompt-tokens >= 2, --max-tokens >= 1")
        names = [f"c{i}" for i in range(len(keys))]
        t = np.cumsum(rng.exponential(1.0 / args.rate, args.requests))
        for i in range(args.requests):
            rows.append((float(t[i]), names[i % len(names)], args.prompt_tokens, args.max_tokens))
    else:
        from serving.workloads import load_workload
        wl = load_workload(args.workload, seed=args.seed)
        for r in wl.requests[: args.requests]:
            rows.append((r.arrival / args.rate_scale, r.client, r.prompt_tokens, r.output_tokens))
    if args.burst:
        rows = [(0.0, c, p, o) for _, c, p, o in rows]
    t0 = min(r[0] for r in rows)
    order = sorted({c for _, c, _, _ in rows})
    out = []
    for t, c, p, o in rows:
        kc, key = keys[order.index(c) % len(keys)]
        if args.max_output:
            o = min(o, args.max_output)
        out.append(Planned(t - t0, c, kc, key, p, o))
    return out


def prompt_text(n: int) -> str:
    """A prompt the daemon's tokenizer counts as n tokens (n - 1 one-token words, plus BOS)."""
    from serving.daemon.tokenizer import default_tokenizer
    w = default_tokenizer().words
    return " ".join(w[i % len(w)] for i in range(max(n - 1, 1)))


async def _one(session, args, p: Planned, res: Result, texts: dict[int, str]) -> None:
    body = {"model": args.model, "max_tokens": p.max_tokens, "ignore_eos": True, "temperature": 0}
    text = texts.get(p.prompt_tokens) or texts.setdefault(p.prompt_tokens, prompt_text(p.prompt_tokens))
    if args.endpoint == "chat":
        body["messages"] = [{"role": "user", "content": text}]
        path = "/v1/chat/completions"
    else:
        body["prompt"] = text
        path = "/v1/completions"
    headers = {"Authorization": f"Bearer {p.key}"}
    stream = not args.no_stream
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    res.sent = time.perf_counter()
    try:
        async with session.post(path, json=body, headers=headers) as r:
            res.status = r.status
            if r.status != 200 or not stream:
                data = await r.json(content_type=None)
                res.answers = 1
                if r.status == 200:
                    res.rid = data["id"]
                    res.tokens = data["usage"]["completion_tokens"]
                    res.prompt_tokens = data["usage"]["prompt_tokens"]
                else:
                    res.error = data.get("error", {}).get("message", "")[:200]
            else:
                last = None
                async for ev in sse_events(r.content):
                    now = time.perf_counter()
                    if ev == "[DONE]":
                        res.answers += 1
                        break
                    d = json.loads(ev)
                    if "error" in d:
                        res.error = d["error"].get("message", "")[:200]
                        res.status = 599   # an error event inside a 200 stream
                        res.answers += 1
                        break
                    res.rid = d.get("id", res.rid)
                    if d.get("usage"):
                        res.tokens = d["usage"]["completion_tokens"]
                        res.prompt_tokens = d["usage"]["prompt_tokens"]
                    ch = d.get("choices") or []
                    piece = ch[0].get("text") if ch and args.endpoint == "completions" else \
                        ((ch[0].get("delta") or {}).get("content") if ch else None)
                    if piece:
                        if res.first is None:
                            res.first = now
                        elif last is not None:
                            res.gaps.append(now - last)
                        last = now
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, KeyError) as e:
        res.error = f"{e.__class__.__name__}: {e}"[:200]
    res.end = time.perf_counter()


async def sse_events(content):
    """The data fields of a server-sent event stream (WHATWG rules for the subset servers send: ``data:``
    lines, an empty line ends an event, ``:`` lines are comments). The load generator uses aiohttp for speed
    (httpx managed 60 requests/s at this concurrency on this machine); aiohttp brings no SSE decoder."""
    data: list[str] = []
    async for raw in content:
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            if data:
                yield "\n".join(data)
                data = []
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
    if data:
        yield "\n".join(data)


def scrape(url: str) -> dict[str, dict[tuple, float]]:
    """The daemon's per-client responses and served tokens (absent: not a daemon, or unreachable)."""
    from prometheus_client.parser import text_string_to_metric_families
    try:
        text = httpx.get(url.rstrip("/") + "/metrics", timeout=10).text
    except httpx.HTTPError:
        return {}
    out: dict[str, dict[tuple, float]] = defaultdict(dict)
    try:
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                if s.name in ("equinox_responses_total", "equinox_served_tokens_total"):
                    out[s.name][tuple(sorted(s.labels.items()))] = s.value
    except ValueError:
        return {}
    return out


def _jain(x: list[float]) -> float:
    a = np.asarray(x, dtype=float)
    return float(a.sum() ** 2 / (len(a) * (a * a).sum())) if len(a) and (a * a).sum() > 0 else float("nan")


def _pct(x, q):
    return float(np.percentile(x, q)) if len(x) else float("nan")


def report(results: list[Result], wall: float, before: dict, after: dict, weights: dict[str, float]) -> dict:
    per: dict[str, list[Result]] = defaultdict(list)
    for r in results:
        per[r.planned.key_client].append(r)
    clients = {}
    for c, rs in sorted(per.items()):
        ok = [r for r in rs if r.status == 200 and not r.error]
        ttft = [r.first - r.sent for r in ok if r.first is not None]
        gaps = [g for r in ok for g in r.gaps]
        span = (max(r.end for r in rs) - min(r.sent for r in rs)) or 1e-9
        tok = sum(r.tokens for r in ok)
        clients[c] = {"requests": len(rs), "ok": len(ok), "errors": dict(Counter(str(r.status) for r in rs
                                                                                if r not in ok)),
                      "completion_tokens": tok, "tokens_per_s": tok / span, "req_per_s": len(ok) / span,
                      "ttft_p50": _pct(ttft, 50), "ttft_p90": _pct(ttft, 90), "ttft_p99": _pct(ttft, 99),
                      "tbt_p50": _pct(gaps, 50), "tbt_p99": _pct(gaps, 99)}
    total_ok = sum(v["ok"] for v in clients.values())
    daemon = {}
    if after:
        for c in clients:
            resp = sum(v - before.get("equinox_responses_total", {}).get(k, 0.0)
                       for k, v in after.get("equinox_responses_total", {}).items() if dict(k).get("client") == c)
            comp = sum(v - before.get("equinox_served_tokens_total", {}).get(k, 0.0)
                       for k, v in after.get("equinox_served_tokens_total", {}).items()
                       if dict(k).get("client") == c and dict(k).get("kind") == "completion")
            daemon[c] = {"responses": int(resp), "completion_tokens": int(comp)}
    ids = [r.rid for r in results if r.rid]
    once = {"sent": len(results), "answered_once": sum(1 for r in results if r.answers == 1),
            "unanswered": sum(1 for r in results if r.answers == 0),
            "answered_twice": sum(1 for r in results if r.answers > 1), "duplicate_ids": len(ids) - len(set(ids))}
    if daemon:
        once["daemon_responses"] = sum(d["responses"] for d in daemon.values())
        once["exactly_once"] = (once["answered_once"] == once["sent"] == once["daemon_responses"]
                                and once["duplicate_ids"] == 0)
    return {"wall_s": wall, "requests": len(results), "ok": total_ok, "req_per_s": total_ok / wall if wall else 0.0,
            "tokens_per_s": sum(v["completion_tokens"] for v in clients.values()) / wall if wall else 0.0,
            "jain_tokens_per_s": _jain([clients[c]["tokens_per_s"] / weights.get(c, 1.0) for c in clients]),
            "clients": clients, "daemon": daemon, "exactly_once": once}


def format_report(rep: dict) -> str:
    lines = [f"{rep['ok']}/{rep['requests']} requests ok in {rep['wall_s']:.2f} s: {rep['req_per_s']:.1f} req/s, "
             f"{rep['tokens_per_s']:.0f} completion tok/s; Jain's index (tok/s over weight) "
             f"{rep['jain_tokens_per_s']:.3f}",
             f"{'client':<12}{'ok':>7}{'errors':>14}{'tok/s':>9}{'TTFT p50':>10}{'p99':>8}{'TBT p50':>9}{'p99':>8}"
             f"{'daemon resp':>13}{'daemon tok':>12}"]
    for c, v in rep["clients"].items():
        d = rep["daemon"].get(c, {})
        err = ",".join(f"{k}:{n}" for k, n in v["errors"].items()) or "-"
        lines.append(f"{c:<12}{v['ok']:>7}{err:>14}{v['tokens_per_s']:>9.0f}{v['ttft_p50']:>10.3f}{v['ttft_p99']:>8.3f}"
                     f"{v['tbt_p50']:>9.4f}{v['tbt_p99']:>8.4f}{d.get('responses', '-'):>13}"
                     f"{d.get('completion_tokens', '-'):>12}")
    o = rep["exactly_once"]
    lines.append("answered exactly once: " + ", ".join(f"{k} {v}" for k, v in o.items()))
    return "\n".join(lines)


async def run_load(args, planned: list[Planned]) -> tuple[list[Result], float]:
    from tqdm import tqdm
    results = [Result(p) for p in planned]
    texts: dict[int, str] = {}
    bar = tqdm(total=len(planned), disable=args.no_progress, unit="req", desc="load", file=sys.stderr)
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    async with aiohttp.ClientSession(args.url, timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as client:
        t0 = time.perf_counter()

        async def fire(p: Planned, res: Result) -> None:
            delay = t0 + p.t - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await _one(client, args, p, res, texts)
            bar.update(1)

        await asyncio.gather(*(fire(p, r) for p, r in zip(planned, results)))
        wall = time.perf_counter() - t0
    bar.close()
    return results, wall


def main(args) -> int:
    try:
        planned = plan(args)
        weights = {k: float(v) for k, v in _pairs(args.weights, "--weights").items()}
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from serving.daemon.server import raise_fd_limit
    raise_fd_limit()
    before = scrape(args.url)
    results, wall = asyncio.run(run_load(args, planned))
    time.sleep(0.2)   # the daemon counts a streamed response when its generator closes, just after the last byte
    after = scrape(args.url)
    rep = report(results, wall, before, after, weights)
    print(format_report(rep))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(rep, indent=1))
    errors = [r for r in results if r.error or r.status != 200]
    for r in errors[:5]:
        print(f"  {r.planned.key_client}: HTTP {r.status} {r.error}", file=sys.stderr)
    return 0 if not errors else 1
