"""Host telemetry: one small interface that Equinox's resource counter reads, and its sources.

A source answers ``read() -> Sample``: what it measured since the previous read (utilisation is a fraction of
the interval, throughput an average over it). Sources (a plug point: ``SourceName`` + ``REGISTRY``):

  * ``nvml``  - GPU utilisation, memory used, PCIe TX/RX throughput per device (nvidia-ml-py);
  * ``nic``   - the NIC's PCIe link utilisation, live from a co-simulation's statistics registers or replayed
                from a captured trace's ``phantom stats --json`` report;
  * ``vllm``  - an upstream vLLM's own ``/metrics`` (KV-cache usage, running/waiting requests, token counters);
  * ``sim``   - the simulated engine's modelled utilisation, fed by the engine itself (the fallback).

``Combined`` reads several sources and takes each field from the first source that measured it, so measured
values win over the model wherever a source gives them. Nothing here imports ``serving``: the simulated engine
pushes its figures into a ``SimSource``.
"""

from __future__ import annotations

import abc
import enum
import math
from dataclasses import dataclass, field, fields


class TelemetryError(RuntimeError):
    """A source cannot measure (no driver, no device, endpoint down), naming the source and the cause."""


@dataclass(frozen=True, slots=True)
class DeviceSample:
    """One device's reading over the last interval; None: this source does not measure that field."""

    device: str                              # e.g. "gpu0", "nic", "upstream:http://..."
    gpu_util: float | None = None            # fraction of the interval a kernel ran (NVML's utilization.gpu)
    mem_used_bytes: int | None = None        # device memory in use
    mem_total_bytes: int | None = None       # device memory in all
    pcie_tx_bps: float | None = None         # bytes/s the device sent over PCIe
    pcie_rx_bps: float | None = None         # bytes/s the device received over PCIe
    pcie_util: float | None = None           # busier direction's share of the link's capacity
    kv_usage: float | None = None            # fraction of the KV cache in use (serving engines)
    running: int | None = None               # requests running (serving engines)
    waiting: int | None = None               # requests waiting (serving engines)
    prompt_tokens_per_s: float | None = None      # prompt tokens processed per second
    generation_tokens_per_s: float | None = None  # output tokens produced per second

    def __post_init__(self) -> None:
        for name in ("gpu_util", "pcie_util", "kv_usage"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and 0.0 <= v <= 1.0 + 1e-9):
                raise TelemetryError(f"{self.device}: {name} must be a fraction in [0, 1], got {v!r}")


@dataclass(frozen=True, slots=True)
class Sample:
    """What one source measured over [t - interval_s, t] (seconds on the source's clock)."""

    source: str
    t: float
    interval_s: float
    devices: tuple[DeviceSample, ...] = field(default_factory=tuple)

    def mean(self, name: str) -> float | None:
        """The mean of a field over the devices that measured it (None: none did)."""
        vals = [getattr(d, name) for d in self.devices if getattr(d, name) is not None]
        return sum(vals) / len(vals) if vals else None

    def total(self, name: str) -> float | None:
        vals = [getattr(d, name) for d in self.devices if getattr(d, name) is not None]
        return sum(vals) if vals else None

    @property
    def gpu_util(self) -> float | None:
        return self.mean("gpu_util")

    @property
    def pcie_util(self) -> float | None:
        return self.mean("pcie_util")


class TelemetrySource(abc.ABC):
    """Something that measures: ``read()`` returns what it saw since the previous read."""

    name = "source"

    @abc.abstractmethod
    def read(self) -> Sample:
        """Measure now. Raises TelemetryError when the source cannot measure."""

    def close(self) -> None:
        """Release what the source holds (NVML handles, HTTP connections); the default holds nothing."""
        return None


_FIELDS = [f.name for f in fields(DeviceSample) if f.name != "device"]


class Combined(TelemetrySource):
    """Several sources in order of trust: each field of the result comes from the first source that measured
    it (so NVML's measured utilisation wins over the simulated engine's model). A source that fails this read
    is skipped and its error kept in ``errors``; when every source fails, the read fails."""

    name = "combined"

    def __init__(self, sources: list[TelemetrySource]):
        if not sources:
            raise TelemetryError("combined telemetry needs at least one source")
        self.sources = list(sources)
        self.errors: dict[str, str] = {}
        self.last: dict[str, Sample] = {}     # each source's latest sample (for /metrics, per device)
        self.origin: dict[str, str] = {}      # field -> source that gave it in the latest read

    def read(self) -> Sample:
        got: list[Sample] = []
        self.errors = {}
        for s in self.sources:
            try:
                smp = s.read()
            except TelemetryError as e:
                self.errors[s.name] = str(e)
                continue
            got.append(smp)
            self.last[s.name] = smp
        if not got:
            raise TelemetryError("no telemetry source could measure: " +
                                 "; ".join(f"{k}: {v}" for k, v in self.errors.items()))
        merged: dict[str, float | int | None] = {}
        self.origin = {}
        for name in _FIELDS:
            for smp in got:
                v = smp.mean(name) if name in ("gpu_util", "pcie_util", "kv_usage") else smp.total(name)
                if v is not None:
                    merged[name] = v
                    self.origin[name] = smp.source
                    break
        ref = got[0]
        return Sample("combined", ref.t, ref.interval_s, (DeviceSample("all", **merged),))

    def close(self) -> None:
        for s in self.sources:
            s.close()


class SourceName(str, enum.Enum):
    NVML = "nvml"
    NIC = "nic"
    VLLM = "vllm"
    SIM = "sim"


def _registry() -> dict[SourceName, type[TelemetrySource]]:
    # imported here: each source module imports this one for the interface
    from host.telemetry.nic import NicTraceSource
    from host.telemetry.nvml import NvmlSource
    from host.telemetry.sim import SimSource
    from host.telemetry.vllm import VllmMetricsSource

    return {SourceName.NVML: NvmlSource, SourceName.NIC: NicTraceSource, SourceName.VLLM: VllmMetricsSource,
            SourceName.SIM: SimSource}


def make_source(name: str, **kw) -> TelemetrySource:
    """A source by its name (the CLI/config strings are the enum values)."""
    try:
        key = SourceName(name)
    except ValueError:
        raise ValueError(f"unknown telemetry source: {name!r} (known: {', '.join(s.value for s in SourceName)})") from None
    return _registry()[key](**kw)


__all__ = ["Combined", "DeviceSample", "Sample", "SourceName", "TelemetryError", "TelemetrySource", "make_source"]
