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


class DaemonMetrics:
    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("equinox_requests", "Requests received, by client and endpoint",
                                ["client", "endpoint"], registry=r)
        self.responses = Counter("equinox_responses", "Responses sent (each request gets exactly one), by client "
                                 "and HTTP status", ["client", "status"], registry=r)
        self.tokens = Counter("equinox_served_tokens", "Tokens served, by client and kind (prompt, completion)",
                              ["client", "kind"], registry=r)
        self.cancelled = Counter("equinox_cancelled_requests", "Requests that ended early, by client and reason",
                                 ["client", "reason"], registry=r)
        self.ttft = Histogram("equinox_ttft_seconds", "Time to first token as the daemon sent it", ["client"],
                              buckets=TTFT_BUCKETS, registry=r)
        self.tbt = Histogram("equinox_tbt_seconds", "Time between tokens as the daemon sent them", ["client"],
                             buckets=TBT_BUCKETS, registry=r)
        self.overhead = Histogram("equinox_scheduler_overhead_seconds", "CPU seconds of one scheduler decision "
                                  "(schedule + update_from_output of an iteration)", buckets=OVERHEAD_BUCKETS,
                                  registry=r)
        self.upstream_failures = Counter("equinox_upstream_failures", "Failed attempts on an upstream replica",
                                         ["upstream"], registry=r)
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
        fams = {
            "queue": GaugeMetricFamily("equinox_queue_depth", "Requests waiting in the scheduler, by client",
                                       labels=["client"]),
            "running": GaugeMetricFamily("equinox_running_requests", "Requests running in the engine, by client",
                                         labels=["client"]),
            "counter": GaugeMetricFamily("equinox_fairness_counter", "The policy's per-client counters by kind "
                                         "(vtc: weighted tokens; rfc: weighted GPU-seconds)",
                                         labels=["client", "kind"]),
            "hf": GaugeMetricFamily("equinox_hf_score", "The policy's priority of each client (lowest is served "
                                    "next; Equinox's HF score)", labels=["client"]),
            "util": GaugeMetricFamily("equinox_utilization", "Host telemetry: utilisation fraction by source, "
                                      "device and resource (gpu, pcie, kv)", labels=["source", "device", "resource"]),
            "bytes": GaugeMetricFamily("equinox_pcie_throughput_bytes_per_second", "Host telemetry: PCIe bytes/s",
                                       labels=["source", "device", "direction"]),
            "mem": GaugeMetricFamily("equinox_gpu_memory_used_bytes", "Host telemetry: device memory in use",
                                     labels=["source", "device"]),
            "up": GaugeMetricFamily("equinox_upstream_up", "Upstream replica healthy (1) or not (0)",
                                    labels=["upstream"]),
            "inflight": GaugeMetricFamily("equinox_upstream_in_flight", "Requests running on an upstream replica",
                                          labels=["upstream"]),
            "ready": GaugeMetricFamily("equinox_ready", "1 while the daemon takes new requests", labels=[]),
        }
        for c, n in s.get("queue", {}).items():
            fams["queue"].add_metric([c], n)
        for c, n in s.get("running", {}).items():
            fams["running"].add_metric([c], n)
        for kind, per in s.get("counters", {}).items():
            for c, v in per.items():
                fams["counter"].add_metric([c, kind], v)
        for c, v in s.get("hf", {}).items():
            fams["hf"].add_metric([c], v)
        for src, devices in s.get("telemetry", {}).items():
            for d in devices:
                for res, key in (("gpu", "gpu_util"), ("pcie", "pcie_util"), ("kv", "kv_usage")):
                    if d.get(key) is not None:
                        fams["util"].add_metric([src, d["device"], res], d[key])
                for direction, key in (("tx", "pcie_tx_bps"), ("rx", "pcie_rx_bps")):
                    if d.get(key) is not None:
                        fams["bytes"].add_metric([src, d["device"], direction], d[key])
                if d.get("mem_used_bytes") is not None:
                    fams["mem"].add_metric([src, d["device"]], d["mem_used_bytes"])
        for u in s.get("upstreams", []):
            fams["up"].add_metric([u["url"]], 1.0 if u["healthy"] else 0.0)
            fams["inflight"].add_metric([u["url"]], u["in_flight"])
        fams["ready"].add_metric([], 1.0 if s.get("ready") else 0.0)
        yield from fams.values()
