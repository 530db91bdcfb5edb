"""Prometheus metrics of the daemon (prometheus_client does the exposition).

Per-client served tokens, requests and responses by status, the scheduler's fairness counters and HF scores,
queue depths, TTFT and TBT histograms, the scheduler's own overhead, GPU/PCIe utilisation from host telemetry,
upstream health. Each daemon has its own registry (several daemons can live in one test process).
"""

from __future__ import annotations

from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TBT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5)
OVERHEAD_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1)

# every metric the daemon exports: name -> (help text, labels). Counters and histograms are updated as requests
# go; the gauges are read from the daemon's state at each scrape (_StateCollector).
COUNTERS = {
    "equinox_requests": ("Requests received, by client and endpoint", ("client", "endpoint")),
    "equinox_responses": ("Responses sent (each request gets exactly one), by client and HTTP status",
                          ("client", "status")),
    "equinox_served_tokens": ("Tokens served, by client and kind (prompt, completion)", ("client", "kind")),
    "equinox_cancelled_requests": ("Requests that ended early, by client and reason", ("client", "reason")),
    "equinox_upstream_failures": ("Failed attempts on an upstream replica", ("upstream",)),
}
HISTOGRAMS = {
    "equinox_ttft_seconds": ("Time to first token as the daemon sent it", ("client",), TTFT_BUCKETS),
    "equinox_tbt_seconds": ("Time between tokens as the daemon sent them", ("client",), TBT_BUCKETS),
    "equinox_scheduler_overhead_seconds": ("CPU seconds of one scheduler decision (schedule + update_from_output "
                                           "of an iteration)", (), OVERHEAD_BUCKETS),
}
GAUGES = {
    "equinox_queue_depth": ("Requests waiting in the scheduler, by client", ("client",)),
    "equinox_running_requests": ("Requests running in the engine, by client", ("client",)),
    "equinox_fairness_counter": ("The policy's per-client counters by kind (vtc: weighted tokens; rfc: weighted "
                                 "GPU-seconds)", ("client", "kind")),
    "equinox_hf_score": ("The policy's priority of each client (lowest is served next; Equinox's HF score)",
                         ("client",)),
    "equinox_utilization": ("Host telemetry: utilisation fraction by source, device and resource (gpu, pcie, kv)",
                            ("source", "device", "resource")),
    "equinox_pcie_throughput_bytes_per_second": ("Host telemetry: PCIe bytes/s", ("source", "device", "direction")),
    "equinox_gpu_memory_used_bytes": ("Host telemetry: device memory in use", ("source", "device")),
    "equinox_upstream_up": ("Upstream replica healthy (1) or not (0)", ("upstream",)),
    "equinox_upstream_in_flight": ("Requests running on an upstream replica", ("upstream",)),
    "equinox_ready": ("1 while the daemon takes new requests", ()),
}
UTIL_FIELDS = (("gpu", "gpu_util"), ("pcie", "pcie_util"), ("kv", "kv_usage"))   # resource label, telemetry field
BYTES_FIELDS = (("tx", "pcie_tx_bps"), ("rx", "pcie_rx_bps"))


class DaemonMetrics:
    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        c = {name: Counter(name, help, labels, registry=r) for name, (help, labels) in COUNTERS.items()}
        h = {name: Histogram(name, help, labels, buckets=b, registry=r) for name, (help, labels, b) in HISTOGRAMS.items()}
        self.requests = c["equinox_requests"]
        self.responses = c["equinox_responses"]
        self.tokens = c["equinox_served_tokens"]
        self.cancelled = c["equinox_cancelled_requests"]
        self.upstream_failures = c["equinox_upstream_failures"]
        self.ttft = h["equinox_ttft_seconds"]
        self.tbt = h["equinox_tbt_seconds"]
        self.overhead = h["equinox_scheduler_overhead_seconds"]
        self._state: Callable[[], dict] | None = None
        r.register(_StateCollector(self))

    def bind(self, state: Callable[[], dict]) -> None:
        """Where the gauges come from at scrape time: a function returning the daemon's state (see app.state)."""
        self._state = state

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _StateCollector:
    """Gauges read from the live scheduler and telemetry at each scrape."""

    def __init__(self, m: DaemonMetrics):
        self.m = m

    def describe(self):
        return []

    def collect(self):
        if self.m._state is None:
            return
        s = self.m._state()
        g = {name: GaugeMetricFamily(name, help, labels=labels) for name, (help, labels) in GAUGES.items()}
        for c, n in s.get("queue", {}).items():
            g["equinox_queue_depth"].add_metric([c], n)
        for c, n in s.get("running", {}).items():
            g["equinox_running_requests"].add_metric([c], n)
        for kind, per in s.get("counters", {}).items():
            for c, v in per.items():
                g["equinox_fairness_counter"].add_metric([c, kind], v)
        for c, v in s.get("hf", {}).items():
            g["equinox_hf_score"].add_metric([c], v)
        for src, devices in s.get("telemetry", {}).items():
            for d in devices:
                for res, key in UTIL_FIELDS:
                    if d.get(key) is not None:
                        g["equinox_utilization"].add_metric([src, d["device"], res], d[key])
                for direction, key in BYTES_FIELDS:
                    if d.get(key) is not None:
                        g["equinox_pcie_throughput_bytes_per_second"].add_metric([src, d["device"], direction], d[key])
                if d.get("mem_used_bytes") is not None:
                    g["equinox_gpu_memory_used_bytes"].add_metric([src, d["device"]], d["mem_used_bytes"])
        for u in s.get("upstreams", []):
            g["equinox_upstream_up"].add_metric([u["url"]], 1.0 if u["healthy"] else 0.0)
            g["equinox_upstream_in_flight"].add_metric([u["url"]], u["in_flight"])
        g["equinox_ready"].add_metric([], 1.0 if s.get("ready") else 0.0)
        yield from g.values()
