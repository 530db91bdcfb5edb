"""The daemon's configuration: dataclasses that validate themselves, read from YAML or TOML.

Every error names the file and the field (``examples/serve.yaml: clients[1].weight must be positive, got -1``).
API keys appear only as SHA-256 hashes (``key_sha256``); ``python -m serving hash-key KEY`` prints one.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from serving.engine.profiles import ProfileName
from serving.policies import PolicyName


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the file and field."""


_HASH = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")


def _positive(owner: str, name: str, v, integer: bool = False, allow_none: bool = False) -> None:
    if v is None and allow_none:
        return
    ok = isinstance(v, int) if integer else isinstance(v, (int, float))
    if isinstance(v, bool) or not ok or not (v > 0 and math.isfinite(v)):
        kind = "a positive integer" if integer else "a positive number"
        raise ConfigError(f"{owner}{name} must be {kind}, got {v!r}")


def _indices(v) -> bool:
    """A list of device indices (integers >= 0)."""
    return isinstance(v, list) and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in v)


@dataclass
class ClientConfig:
    """One client: its identity for fairness comes from the key, never from the request."""

    name: str = ""                      # the client's name (metrics label, counters)
    key_sha256: str = ""                # SHA-256 of its API key (hex)
    weight: float = 1.0                 # its fair share relative to others
    max_concurrent: int = 64            # requests in flight at once; more get 429
    token_quota: int | None = None      # prompt + completion tokens it may use in all (None: unlimited); 429 past it

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ConfigError(f"name must be 1-64 letters, digits or _.@-, got {self.name!r}")
        if not isinstance(self.key_sha256, str) or not _HASH.match(self.key_sha256):
            raise ConfigError(f"key_sha256 must be 64 lowercase hex digits (python -m serving hash-key KEY), "
                              f"got {self.key_sha256!r}")
        _positive("", "weight", self.weight)
        _positive("", "max_concurrent", self.max_concurrent, integer=True)
        _positive("", "token_quota", self.token_quota, integer=True, allow_none=True)


@dataclass
class UpstreamConfig:
    """One OpenAI-compatible server (vLLM, SGLang, another daemon) behind this one."""

    url: str = ""                       # base URL, e.g. http://10.0.0.5:8000 (the daemon adds /v1/...)
    model: str | None = None            # the model name it serves (default: the daemon's served model)
    api_key: str | None = None          # key sent to it (Authorization: Bearer)
    max_concurrent: int = 64            # requests the daemon lets run on it at once (Equinox decides who)
    kv_tokens: int = 1_000_000          # its KV cache in tokens: admission reserves prompt + max_tokens
    telemetry: list[str] = field(default_factory=list)   # measured sources: "vllm" (its /metrics), "nvml"
    gpus: list[int] = field(default_factory=list)         # NVML device indices of this replica (with "nvml")

    def __post_init__(self) -> None:
        if not isinstance(self.url, str) or not re.match(r"^https?://[^/\s]+", self.url):
            raise ConfigError(f"url must be http(s)://host[:port], got {self.url!r}")
        if self.model is not None and (not isinstance(self.model, str) or not self.model.strip()):
            raise ConfigError(f"model must be a non-empty name or absent, got {self.model!r}")
        if self.api_key is not None and not isinstance(self.api_key, str):
            raise ConfigError(f"api_key must be a string or absent, got {self.api_key!r}")
        _positive("", "max_concurrent", self.max_concurrent, integer=True)
        _positive("", "kv_tokens", self.kv_tokens, integer=True)
        if not isinstance(self.telemetry, list):
            raise ConfigError(f"telemetry must be a list, got {self.telemetry!r}")
        if not _indices(self.gpus):
            raise ConfigError(f"gpus must be a list of GPU indices (integers >= 0), got {self.gpus!r}")
        for t in self.telemetry:
            if t not in ("vllm", "nvml"):
                raise ConfigError(f"telemetry must list 'vllm' and/or 'nvml', got {t!r}")


@dataclass
class BackendConfig:
    """Which engine the scheduler drives (a plug point: serving.daemon.backends)."""

    kind: str = "sim"                   # "sim" (the engine simulator in real time) or "upstream"
    profile: str = "a100-llama2-7b"     # sim: engine profile (serving.engine.profiles)
    time_scale: float = 1.0             # sim: wall seconds per simulated second (0.01: 100x faster)
    seed: int = 1                       # sim: output lengths and text are drawn from this seed
    mean_output_tokens: int = 128       # sim: median natural output length (before max_tokens caps it)
    upstreams: list[UpstreamConfig] = field(default_factory=list)  # upstream: the replicas
    health_interval_s: float = 2.0      # upstream: seconds between health checks of each replica
    request_timeout_s: float = 600.0    # upstream: longest a request may take
    connect_timeout_s: float = 2.0      # upstream: longest a connection may take (then failover)
    retry_after_s: int = 5              # upstream: Retry-After seconds on 503 when no replica can serve

    def __post_init__(self) -> None:
        from serving.daemon.backends import BackendName

        known = [b.value for b in BackendName]
        if self.kind not in known:
            raise ConfigError(f"kind: unknown backend: {self.kind!r} (known: {', '.join(known)})")
        if self.profile not in [p.value for p in ProfileName]:
            raise ConfigError(f"profile: unknown profile: {self.profile!r} "
                              f"(known: {', '.join(p.value for p in ProfileName)})")
        _positive("", "time_scale", self.time_scale)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}")
        _positive("", "mean_output_tokens", self.mean_output_tokens, integer=True)
        for k in ("health_interval_s", "request_timeout_s", "connect_timeout_s"):
            _positive("", k, getattr(self, k))
        _positive("", "retry_after_s", self.retry_after_s, integer=True)
        if self.kind == "upstream" and not self.upstreams:
            raise ConfigError("upstreams: the upstream backend needs at least one replica")


@dataclass
class TelemetryConfig:
    """What the daemon measures besides its engine (host.telemetry)."""

    interval_s: float = 1.0             # seconds between reads
    nvml_gpus: list[int] | None = None  # sim backend: also read these NVML devices (reported, not charged)
    nic_stats_json: str | None = None   # replay a NIC trace's `phantom stats --json` report as PCIe utilisation
    nic_speed: float = 1e-6             # trace seconds replayed per second

    def __post_init__(self) -> None:
        _positive("", "interval_s", self.interval_s)
        _positive("", "nic_speed", self.nic_speed)
        if self.nvml_gpus is not None and not _indices(self.nvml_gpus):
            raise ConfigError(f"nvml_gpus must be a list of GPU indices (integers >= 0) or absent, "
                              f"got {self.nvml_gpus!r}")
        if self.nic_stats_json is not None and not isinstance(self.nic_stats_json, str):
            raise ConfigError(f"nic_stats_json must be a file path or absent, got {self.nic_stats_json!r}")


@dataclass
class DaemonConfig:
    """The whole daemon: where it listens, what it serves, who may call it, how it schedules."""

    host: str = "127.0.0.1"             # address to listen on
    port: int = 8000                    # port to listen on
    model: str = "equinox-sim-7b"       # the served model name (/v1/models)
    max_model_len: int = 4096           # prompt + max_tokens may not exceed this
    default_max_tokens: int = 256       # chat completions without max_tokens (completions: 16, as OpenAI)
    policy: str = "equinox"             # scheduling policy (serving.policies)
    clients: list[ClientConfig] = field(default_factory=list)
    admin_keys_sha256: list[str] = field(default_factory=list)   # SHA-256 of the admin keys
    backend: BackendConfig = field(default_factory=BackendConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    state_path: str = "out/serve/state.sqlite"   # SQLite file of the fairness counters ("" : not persisted)
    persist_interval_s: float = 5.0     # seconds between counter snapshots (and one at shutdown)
    max_body_bytes: int = 1_048_576     # larger request bodies get 413
    shutdown_grace_s: float = 10.0      # on SIGTERM/SIGINT: in-flight requests may finish this long, then fail
    log_level: str = "info"

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host:
            raise ConfigError(f"host must be a non-empty address, got {self.host!r}")
        _positive("", "port", self.port, integer=True)
        if self.port > 65535:
            raise ConfigError(f"port must be at most 65535, got {self.port!r}")
        for k in ("max_model_len", "default_max_tokens", "max_body_bytes"):
            _positive("", k, getattr(self, k), integer=True)
        for k in ("persist_interval_s", "shutdown_grace_s"):
            _positive("", k, getattr(self, k))
        if not isinstance(self.model, str) or not self.model.strip():
            raise ConfigError(f"model must be a non-empty name, got {self.model!r}")
        known = [p.value for p in PolicyName]
        if self.policy not in known:
            raise ConfigError(f"policy: unknown policy: {self.policy!r} (known: {', '.join(known)})")
        if not isinstance(self.state_path, str):
            raise ConfigError(f'state_path must be a file path or "" (not persisted), got {self.state_path!r}')
        if not self.clients:
            raise ConfigError("clients: at least one client is needed")
        names, hashes = set(), set()
        for i, c in enumerate(self.clients):
            if c.name in names:
                raise ConfigError(f"clients[{i}].name: {c.name!r} appears twice")
            if c.key_sha256 in hashes:
                raise ConfigError(f"clients[{i}].key_sha256: two clients share one key")
            names.add(c.name)
            hashes.add(c.key_sha256)
        if not isinstance(self.admin_keys_sha256, list):
            raise ConfigError(f"admin_keys_sha256 must be a list of hashes, got {self.admin_keys_sha256!r}")
        for i, h in enumerate(self.admin_keys_sha256):
            if not isinstance(h, str) or not _HASH.match(h):
                raise ConfigError(f"admin_keys_sha256[{i}] must be 64 lowercase hex digits, got {h!r}")
            if h in hashes:
                raise ConfigError(f"admin_keys_sha256[{i}]: an admin key may not also be a client's key")
        if self.log_level not in ("critical", "error", "warning", "info", "debug"):
            raise ConfigError(f"log_level must be critical, error, warning, info or debug, got {self.log_level!r}")


def _build(cls, data: Any, where: str):
    """A dataclass from a mapping: unknown keys and wrong shapes are errors naming the field."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'top level'}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kw = {}
    for k, v in data.items():
        if k not in fields:
            raise ConfigError(f"{where}{'.' if where else ''}{k}: unknown setting (known: {', '.join(fields)})")
        sub = {"clients": ClientConfig, "upstreams": UpstreamConfig}.get(k)
        name = f"{where}{'.' if where else ''}{k}"
        if sub is not None:
            if not isinstance(v, list):
                raise ConfigError(f"{name}: expected a list, got {type(v).__name__}")
            v = [_build(sub, item, f"{name}[{i}]") for i, item in enumerate(v)]
        elif k == "backend":
            v = _build(BackendConfig, v, name)
        elif k == "telemetry" and cls is DaemonConfig:
            v = _build(TelemetryConfig, v, name)
        kw[k] = v
    try:
        return cls(**kw)
    except ConfigError as e:
        raise ConfigError(f"{where}.{e}" if where else str(e)) from None


def parse_config(data: Any, source: str = "<config>") -> DaemonConfig:
    try:
        return _build(DaemonConfig, data, "")
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def load_config(path: str | Path) -> DaemonConfig:
    """Read a .yaml/.yml or .toml daemon configuration."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start})") from None
    if path.suffix in (".yaml", ".yml"):
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)     # a reader error (a control character) has none
            at = f":{mark.line + 1}" if mark is not None else ""
            why = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ConfigError(f"{path}{at}: not valid YAML ({why})") from None
    elif path.suffix == ".toml":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML ({e})") from None
    else:
        raise ConfigError(f"{path}: config files are .yaml, .yml or .toml, not {path.suffix or 'no suffix'!r}")
    return parse_config(data if data is not None else {}, str(path))
