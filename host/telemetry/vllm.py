"""vLLM source: scrape an upstream vLLM's own Prometheus ``/metrics``.

Reads KV-cache usage (``vllm:kv_cache_usage_perc``, or ``vllm:gpu_cache_usage_perc`` of older releases; both
are fractions despite the name), running and waiting requests, and the prompt/generation token counters (turned
into rates between reads). vLLM does not export GPU utilisation: that field stays unmeasured here (NVML or the
simulated engine's model gives it). The exposition is parsed with prometheus_client's parser.
"""

from __future__ import annotations

import logging
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from host.telemetry import DeviceSample, Sample, TelemetryError, TelemetrySource

log = logging.getLogger(__name__)

KV_NAMES = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")


class VllmMetricsSource(TelemetrySource):
    name = "vllm"

    def __init__(self, url: str, timeout_s: float = 2.0, clock=time.monotonic):
        if not url.startswith(("http://", "https://")):
            raise TelemetryError(f"vllm: metrics URL must start with http:// or https://, got {url!r}")
        self.url = url if url.rstrip("/").endswith("/metrics") else url.rstrip("/") + "/metrics"
        self.client = httpx.Client(timeout=timeout_s)
        self.clock = clock
        self._prev: tuple[float, float, float] | None = None   # (t, prompt tokens, generation tokens)

    def scrape(self) -> dict[str, float]:
        """The metrics vLLM exports, summed over label sets (one engine can report several models)."""
        try:
            r = self.client.get(self.url)
        except httpx.HTTPError as e:
            raise TelemetryError(f"vllm: cannot scrape {self.url}: {e.__class__.__name__}: {e}") from None
        if r.status_code != 200:
            raise TelemetryError(f"vllm: {self.url} answered HTTP {r.status_code}")
        vals: dict[str, float] = {}
        try:
            for fam in text_string_to_metric_families(r.text):
                for s in fam.samples:
                    if s.name.startswith("vllm:"):
                        vals[s.name] = vals.get(s.name, 0.0) + float(s.value)
        except ValueError as e:
            raise TelemetryError(f"vllm: {self.url} is not Prometheus text exposition: {e}") from None
        return vals

    def read(self) -> Sample:
        v = self.scrape()
        now = self.clock()
        kv = next((v[k] for k in KV_NAMES if k in v), None)
        pt, gt = v.get("vllm:prompt_tokens_total"), v.get("vllm:generation_tokens_total")
        prate = grate = None
        interval = 0.0
        if self._prev is not None:
            t0, p0, g0 = self._prev
            interval = now - t0
            if interval > 0 and pt is not None and gt is not None:
                # a counter that went down means vLLM restarted: the rate restarts from its new value
                prate = (pt - p0 if pt >= p0 else pt) / interval
                grate = (gt - g0 if gt >= g0 else gt) / interval
        if pt is not None and gt is not None:
            self._prev = (now, pt, gt)
        running = v.get("vllm:num_requests_running")
        waiting = v.get("vllm:num_requests_waiting")
        dev = DeviceSample(f"vllm:{self.url}", kv_usage=None if kv is None else min(max(kv, 0.0), 1.0),
                           running=None if running is None else int(running),
                           waiting=None if waiting is None else int(waiting),
                           prompt_tokens_per_s=prate, generation_tokens_per_s=grate)
        return Sample(self.name, now, interval, (dev,))

    def close(self) -> None:
        self.client.close()
