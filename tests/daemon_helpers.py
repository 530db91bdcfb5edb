"""Start and stop real daemon processes on free loopback ports for the daemon tests."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
KEYS = {"alice": "sk-demo-alice", "bob": "sk-demo-bob", "carol": "sk-test-carol"}
ADMIN = "sk-demo-admin"
MODEL = "equinox-sim-7b"


def h(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config(tmp: Path, **over) -> dict:
    cfg = {
        "model": MODEL, "policy": "equinox", "max_model_len": 4096,
        "clients": [{"name": "alice", "key_sha256": h(KEYS["alice"]), "weight": 1, "max_concurrent": 512},
                    {"name": "bob", "key_sha256": h(KEYS["bob"]), "weight": 1, "max_concurrent": 512},
                    {"name": "carol", "key_sha256": h(KEYS["carol"]), "weight": 1, "max_concurrent": 1,
                     "token_quota": 5000}],
        "admin_keys_sha256": [h(ADMIN)],
        "backend": {"kind": "sim", "time_scale": 0.05},
        "state_path": str(tmp / "state.sqlite"), "persist_interval_s": 0.5, "shutdown_grace_s": 3,
        "max_body_bytes": 65536, "log_level": "warning", "telemetry": {"interval_s": 0.2},
    }
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k] = {**cfg[k], **v}
        else:
            cfg[k] = v
    return cfg


class DaemonProc:
    def __init__(self, tmp: Path, name: str = "daemon", **over):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cfg = config(tmp, **over)
        self.cfg_path = tmp / f"{name}.yaml"
        self.cfg_path.write_text(yaml.safe_dump(self.cfg))
        self.log = open(tmp / f"{name}.log", "w")
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen([sys.executable, "-m", "serving", "serve", "--config", str(self.cfg_path),
                                      "--port", str(self.port)], cwd=ROOT, env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        self.wait_healthy()

    def wait_healthy(self, timeout: float = 30.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}: {self.read_log()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError(f"daemon did not come up: {self.read_log()}")

    def read_log(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()

    def admin(self, path: str = "/admin/counters") -> dict:
        return httpx.get(self.url + path, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10).json()

    def stop(self, sig=signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode
