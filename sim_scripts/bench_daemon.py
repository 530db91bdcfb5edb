"""make bench-daemon: the daemon's load and reliability targets on this machine (docs/benchmarks.md).

1. throughput: short requests (16-token prompts, 8 output tokens, non-streaming) at an offered 600 req/s,
   open loop, against the sim backend; the daemon's own scheduler overhead p99 from /admin/counters;
2. 1,000 concurrent streaming connections sent at once;
3. every request answered exactly once, counted by the load generator and by the daemon's /metrics.
The simulated A100 saturates near 460 req/s of these requests at time_scale 1 (its compute bound for
512-token iterations), so the engine runs at time_scale 0.25: the figure is the daemon's, not the model GPU's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=6000)
    ap.add_argument("--rate", type=float, default=600.0)
    ap.add_argument("--streams", type=int, default=1000)
    ap.add_argument("--port", type=int, default=8790)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-daemon-"))
    proc = start(tmp, args.port)
    try:
        thr = load(args.port, tmp / "thr.json", "--requests", str(args.requests), "--rate", str(args.rate),
                   "--prompt-tokens", "16", "--max-tokens", "8", "--no-stream")
        ov = httpx.get(f"http://127.0.0.1:{args.port}/admin/counters",
                       headers={"Authorization": "Bearer sk-demo-admin"}).json()["scheduler_overhead_s"]
        con = load(args.port, tmp / "con.json", "--requests", str(args.streams), "--burst", "--prompt-tokens", "16",
                   "--max-tokens", "32")
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
    return 0 if all(ok for *_, ok in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
