"""make bench-daemon: the daemon's load and reliability targets on this machine (docs/benchmarks.md).

1. throughput: short requests (16-token prompts, 8 output tokens, non-streaming) at an offered 600 req/s,
   open loop, against the sim backend; the daemon's own scheduler overhead p99 from /admin/counters;
2. 1,000 concurrent streaming connections sent at once;
3. every request answered exactly once, counted by the load generator and by the daemon's /metrics;
4. the same two workloads driven by an established external client, NVIDIA's aiperf (``--aiperf BIN``; the
   Makefile installs it into .venv-aiperf from requirements-bench.txt). aiperf needs a tokenizer to make its
   synthetic prompts: it is given the project's shipped one (data/tokenizer, as a local Hugging Face tokenizer
   directory), so nothing is downloaded. Its counts are checked against the daemon's /metrics too.
The simulated A100 saturates near 460 req/s of these requests at time_scale 1 (its compute bound for
512-token iterations), so the engine runs at time_scale 0.25: the figure is the daemon's, not the model GPU's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def start(tmp: Path, port: int) -> subprocess.Popen:
    cfg = yaml.safe_load((ROOT / "examples/serve.yaml").read_text())
    for c in cfg["clients"]:
        c["max_concurrent"] = 5000
    cfg.update(port=port, state_path=str(tmp / "state.sqlite"), log_level="warning")
    cfg["backend"]["time_scale"] = 0.25
    p = tmp / "bench.yaml"
    p.write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen([sys.executable, "-m", "serving", "serve", "--config", str(p)], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    for _ in range(200):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit("daemon did not start")


def load(port: int, out: Path, *extra: str) -> dict:
    cmd = [sys.executable, "-m", "serving", "load", "--url", f"http://127.0.0.1:{port}",
           "--key", "alice=sk-demo-alice", "--key", "bob=sk-demo-bob", "--out", str(out), *extra]
    print("$", " ".join(cmd[1:]))
    subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return json.loads(out.read_text())


def hf_tokenizer_dir(out: Path) -> Path:
    """The shipped SentencePiece model as a local Hugging Face tokenizer directory (LlamaTokenizer layout), for
    clients that load tokenizers with transformers."""
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ROOT / "data/tokenizer/mistral-7b-v0.1.model", out / "tokenizer.model")
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "add_bos_token": True, "add_eos_token": False, "legacy": False, "model_max_length": 4096}))
    return out


def responses(port: int) -> dict[str, float]:
    """equinox_responses_total by status, summed over clients."""
    from prometheus_client.parser import text_string_to_metric_families
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(httpx.get(f"http://127.0.0.1:{port}/metrics").text):
        for smp in fam.samples:
            if smp.name == "equinox_responses_total":
                out[smp.labels["status"]] = out.get(smp.labels["status"], 0.0) + smp.value
    return out


def aiperf(binary: str, port: int, tok: Path, out: Path, *extra: str, osl: int = 8) -> dict:
    """One aiperf profile run; its figures with the daemon's own count of the responses it sent meanwhile."""
    before = responses(port)
    cmd = [binary, "profile", "--model", "equinox-sim-7b", "--tokenizer", str(tok), "--url",
           f"http://127.0.0.1:{port}", "--endpoint-type", "completions", "--api-key", "sk-demo-alice",
           "--isl", "16", "--isl-stddev", "0", "--osl", str(osl), "--osl-stddev", "0", "--extra-inputs", "ignore_eos:true",
           "--random-seed", "1", "--ui-type", "simple", "--no-gpu-telemetry", "--no-server-metrics",
           "--output-artifact-dir", str(out), *extra]
    print("$", " ".join(cmd))
    # HF_HUB_OFFLINE must stay unset: with it aiperf 0.13 looks a local directory up in the hub cache
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    logf = out.with_suffix(".log")
    with open(logf, "w") as log:
        rc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise SystemExit(f"aiperf failed ({rc}); its output: {logf}\n" + logf.read_text()[-2000:])
    after = responses(port)
    rep = json.loads((out / "profile_export_aiperf.json").read_text())
    sent = {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)}
    done = rep["completed_request_count"]["avg"]          # answered, successes and errors
    errors = sum(e.get("count", 0) for e in rep.get("error_summary") or [])
    return {"version": rep["aiperf_version"], "req_per_s": rep["request_throughput"]["avg"], "requests": done,
            "errors": errors, "daemon_responses": sent, "exactly_once": sum(sent.values()) == done,
            "ttft_p50_ms": (rep.get("time_to_first_token") or {}).get("p50"),
            "ttft_p99_ms": (rep.get("time_to_first_token") or {}).get("p99"),
            "itl_p50_ms": (rep.get("inter_token_latency") or {}).get("p50"),
            "latency_p50_ms": rep["request_latency"]["p50"], "latency_p99_ms": rep["request_latency"]["p99"]}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=6000)
    ap.add_argument("--rate", type=float, default=600.0)
    ap.add_argument("--streams", type=int, default=1000)
    ap.add_argument("--port", type=int, default=8790)
    ap.add_argument("--aiperf", default=None, help="aiperf executable: also drive the daemon with it")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-daemon-"))
    proc = start(tmp, args.port)
    ext = {}
    try:
        thr = load(args.port, tmp / "thr.json", "--requests", str(args.requests), "--rate", str(args.rate),
                   "--prompt-tokens", "16", "--max-tokens", "8", "--no-stream")
        ov = httpx.get(f"http://127.0.0.1:{args.port}/admin/counters",
                       headers={"Authorization": "Bearer sk-demo-admin"}).json()["scheduler_overhead_s"]
        con = load(args.port, tmp / "con.json", "--requests", str(args.streams), "--burst", "--prompt-tokens", "16",
                   "--max-tokens", "32")
        if args.aiperf:
            tok = hf_tokenizer_dir(tmp / "hf-tokenizer")
            ext["rate"] = aiperf(args.aiperf, args.port, tok, tmp / "aiperf-rate", "--request-rate", str(args.rate),
                                 "--request-count", str(args.requests))
            ext["streams"] = aiperf(args.aiperf, args.port, tok, tmp / "aiperf-streams", "--streaming",
                                    "--concurrency", str(args.streams), "--request-count", str(args.streams),
                                    osl=32)
    finally:
        proc.terminate()
        proc.wait(30)
    rows = [
        ("short requests/s (offered %.0f, %d requests)" % (args.rate, args.requests), f"{thr['req_per_s']:.1f}",
         ">= 500", thr["req_per_s"] >= 500),
        ("scheduler overhead p99 (ms, %d decisions)" % ov["count"], f"{ov['p99'] * 1e3:.3f}", "< 5",
         ov["p99"] < 5e-3),
        (f"{args.streams} concurrent streams: ok / errors", f"{con['ok']} / {con['requests'] - con['ok']}",
         "0 errors", con["ok"] == con["requests"]),
        ("answered exactly once (both runs, both sides)",
         f"{thr['exactly_once'].get('exactly_once')} / {con['exactly_once'].get('exactly_once')}", "true",
         bool(thr["exactly_once"].get("exactly_once") and con["exactly_once"].get("exactly_once"))),
    ]
    print(f"\nmake bench-daemon, {date.today()}, {platform.node()} ({os.cpu_count()} cores)")
    print("| target | figure | goal | met |\n| --- | --- | --- | --- |")
    for name, fig, goal, ok in rows:
        print(f"| {name} | {fig} | {goal} | {'met' if ok else 'MISSED'} |")
    print(f"streams: TTFT p50 {con['clients']['alice']['ttft_p50']:.3f} s, p99 "
          f"{max(c['ttft_p99'] for c in con['clients'].values()):.3f} s; throughput run Jain {thr['jain_tokens_per_s']:.3f}")
    if ext:
        r, st = ext["rate"], ext["streams"]
        print(f"\nexternal client: aiperf {r['version']} (same daemon, same workloads)")
        print("| run | aiperf figure | daemon /metrics | exactly once |\n| --- | --- | --- | --- |")
        print(f"| short requests, offered {args.rate:.0f}/s, {args.requests} non-streaming | {r['req_per_s']:.1f} req/s, "
              f"{r['errors']} errors, latency p50 {r['latency_p50_ms']:.1f} ms p99 {r['latency_p99_ms']:.1f} ms | "
              f"{r['daemon_responses']} | {str(r['exactly_once']).lower()} |")
        print(f"| {args.streams} concurrent streams, 32 tokens | {st['req_per_s']:.1f} req/s, {st['errors']} errors, "
              f"TTFT p50 {st['ttft_p50_ms']:.0f} ms p99 {st['ttft_p99_ms']:.0f} ms, ITL p50 {st['itl_p50_ms']:.2f} ms | "
              f"{st['daemon_responses']} | {str(st['exactly_once']).lower()} |")
        rows.append(("aiperf: no errors, answered exactly once", "", "",
                     r["exactly_once"] and st["exactly_once"] and not r["errors"] and not st["errors"]))
    return 0 if all(ok for *_, ok in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
