"""Host telemetry sources: NVML against a fake at the NVML boundary, vLLM /metrics against a stand-in server
that serves the real exposition format, the NIC from a phantom stats report and from its counters, the
simulated engine as fallback, and the scheduler hooks the daemon uses."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from host.telemetry import Combined, DeviceSample, TelemetryError, make_source
from host.telemetry.nic import NicStatsSource, NicTraceSource, link_bytes
from host.telemetry.nvml import NvmlSource
from host.telemetry.sim import SimSource
from host.telemetry.vllm import VllmMetricsSource


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


# NVML -------------------------------------------------------------------------------------------------------
class FakeNvml:
    """The subset of pynvml the source calls, with pynvml's names and units."""

    NVML_PCIE_UTIL_TX_BYTES, NVML_PCIE_UTIL_RX_BYTES = 0, 1

    class NVMLError(Exception):
        pass

    def __init__(self, n=2, fail_init=False):
        self.n, self.fail_init, self.calls = n, fail_init, []
        self.util = [37, 90]

    def nvmlInit(self):
        if self.fail_init:
            raise self.NVMLError("Driver Not Loaded")
        self.calls.append("init")

    def nvmlShutdown(self):
        self.calls.append("shutdown")

    def nvmlDeviceGetCount(self):
        return self.n

    def nvmlDeviceGetHandleByIndex(self, i):
        return ("h", i)

    def nvmlDeviceGetUtilizationRates(self, h):
        return type("U", (), {"gpu": self.util[h[1]], "memory": 10})()

    def nvmlDeviceGetMemoryInfo(self, h):
        return type("M", (), {"used": 1000 * (h[1] + 1), "total": 80_000})()

    def nvmlDeviceGetPcieThroughput(self, h, which):
        return 2_000_000 if which == self.NVML_PCIE_UTIL_TX_BYTES else 500_000   # KB/s

    def nvmlDeviceGetCurrPcieLinkGeneration(self, h):
        return 4

    def nvmlDeviceGetCurrPcieLinkWidth(self, h):
        return 16

    def nvmlDeviceGetName(self, h):
        return b"Fake H200"


def test_nvml_reads_every_device_in_nvml_units():
    fake = FakeNvml()
    src = NvmlSource(nvml=fake)
    s = src.read()
    assert [d.device for d in s.devices] == ["gpu0", "gpu1"]
    d0 = s.devices[0]
    assert d0.gpu_util == pytest.approx(0.37) and d0.mem_used_bytes == 1000 and d0.mem_total_bytes == 80_000
    assert d0.pcie_tx_bps == 2_000_000 * 1024 and d0.pcie_rx_bps == 500_000 * 1024
    assert d0.pcie_util == pytest.approx(2_000_000 * 1024 / (1.969e9 * 16))
    assert s.gpu_util == pytest.approx((0.37 + 0.90) / 2)
    assert src.describe()[1] == {"index": 1, "name": "Fake H200", "link_bytes_per_s": 1.969e9 * 16}
    src.close()
    assert fake.calls == ["init", "shutdown"]
    with pytest.raises(TelemetryError, match="closed"):
        src.read()


def test_nvml_unusable_and_bad_devices_are_clear_errors():
    with pytest.raises(TelemetryError, match="NVML unusable.*Driver Not Loaded"):
        NvmlSource(nvml=FakeNvml(fail_init=True))
    fake = FakeNvml()
    with pytest.raises(TelemetryError, match="device index 5 out of range.*2 GPUs"):
        NvmlSource(devices=[5], nvml=fake)
    assert fake.calls == ["init", "shutdown"]
    src = NvmlSource(devices=[1], nvml=FakeNvml())
    assert [d.device for d in src.read().devices] == ["gpu1"]


# vLLM -------------------------------------------------------------------------------------------------------
class StandIn:
    """A stand-in for vLLM's /metrics: prometheus_client exposition with vLLM's metric names."""

    def __init__(self, kv_name="vllm:kv_cache_usage_perc"):
        self.reg = CollectorRegistry()
        self.kv = Gauge(kv_name, "KV usage", ["model_name"], registry=self.reg)
        self.running = Gauge("vllm:num_requests_running", "running", ["model_name"], registry=self.reg)
        self.waiting = Gauge("vllm:num_requests_waiting", "waiting", ["model_name"], registry=self.reg)
        self.prompt = Counter("vllm:prompt_tokens", "prompt tokens", ["model_name"], registry=self.reg)
        self.gen = Counter("vllm:generation_tokens", "generation tokens", ["model_name"], registry=self.reg)
        self.status = 200
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_GET(self):
                body = generate_latest(outer.reg) if outer.status == 200 else b"nope"
                self.send_response(outer.status)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.srv.server_address[1]}"
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()


@pytest.mark.parametrize("kv_name", ["vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"])
def test_vllm_scrape_and_rates(kv_name):
    s = StandIn(kv_name)
    clock = Clock()
    try:
        s.kv.labels("m").set(0.25)
        s.running.labels("m").set(3)
        s.waiting.labels("m").set(7)
        s.prompt.labels("m").inc(1000)
        s.gen.labels("m").inc(50)
        src = VllmMetricsSource(s.url, clock=clock)
        a = src.read().devices[0]
        assert (a.kv_usage, a.running, a.waiting) == (0.25, 3, 7)
        assert a.gpu_util is None and a.generation_tokens_per_s is None   # no rate before a second scrape
        clock.t += 2.0
        s.prompt.labels("m").inc(400)
        s.gen.labels("m").inc(300)
        b = src.read().devices[0]
        assert b.prompt_tokens_per_s == pytest.approx(200.0) and b.generation_tokens_per_s == pytest.approx(150.0)
        src.close()
    finally:
        s.close()


def test_vllm_down_or_not_metrics_is_an_error():
    s = StandIn()
    try:
        s.status = 500
        with pytest.raises(TelemetryError, match="answered HTTP 500"):
            VllmMetricsSource(s.url).read()
    finally:
        s.close()
    with pytest.raises(TelemetryError, match="cannot scrape"):
        VllmMetricsSource(s.url, timeout_s=0.5).read()
    with pytest.raises(TelemetryError, match="must start with http"):
        VllmMetricsSource("localhost:8000")


# simulated engine, fallback ---------------------------------------------------------------------------------
def test_sim_source_turns_iterations_into_utilisation():
    clock = Clock()
    src = SimSource(clock=clock)
    clock.t += 2.0
    src.record(0.5, 0.2, kv_usage=0.1, running=4, waiting=1)
    src.record(0.5, 0.3)
    s = src.read().devices[0]
    assert s.gpu_util == pytest.approx(0.5) and src.sm_util == pytest.approx(0.25)
    assert (s.kv_usage, s.running, s.waiting) == (0.1, 4, 1)
    clock.t += 1.0
    assert src.read().devices[0].gpu_util == 0.0      # nothing recorded since: idle
    with pytest.raises(TelemetryError, match="bad iteration record"):
        src.record(0.1, 0.2)


class Broken:
    name = "nvml"

    def read(self):
        raise TelemetryError("nvml: NVML unusable")

    def close(self):
        pass


def test_combined_prefers_measured_and_falls_back_to_the_model():
    clock = Clock()
    sim = SimSource(clock=clock)
    clock.t += 1.0
    sim.record(0.8, 0.4, kv_usage=0.3)
    fb = Combined([Broken(), sim])
    s = fb.read().devices[0]
    assert s.gpu_util == pytest.approx(0.8) and fb.origin["gpu_util"] == "sim"
    assert "NVML unusable" in fb.errors["nvml"]
    nv = NvmlSource(nvml=FakeNvml())
    clock.t += 1.0
    sim.record(0.8, 0.4)
    both = Combined([nv, sim])
    m = both.read().devices[0]
    assert m.gpu_util == pytest.approx((0.37 + 0.90) / 2) and both.origin["gpu_util"] == "nvml"
    assert m.kv_usage == 0.3 and both.origin["kv_usage"] == "sim"    # what NVML does not measure comes from sim
    with pytest.raises(TelemetryError, match="no telemetry source could measure"):
        Combined([Broken()]).read()


def test_registry_names_and_bad_fractions():
    assert make_source("sim").name == "sim"
    with pytest.raises(ValueError, match="unknown telemetry source: 'gpu'"):
        make_source("gpu")
    with pytest.raises(TelemetryError, match="gpu_util must be a fraction"):
        DeviceSample("x", gpu_util=1.5)


# NIC --------------------------------------------------------------------------------------------------------
def _trace_report(tmp_path):
    """A small legal trace written with phantom's schema, its `phantom stats --json` report on disk."""
    from phantom.stats import summarize
    from phantom.trace import Direction, SemClass, TlpRecord, TlpType, TraceHeader, TraceWriter
    path = tmp_path / "t.jsonl.gz"
    with TraceWriter(path, TraceHeader(link_speed=3, link_width=8)) as w:
        t = 0
        for i in range(200):
            w.write(TlpRecord(t_ps=t, dir=Direction.UP, type=TlpType.MWr64, length=64, address=0x1000 + 256 * i,
                              payload_len=256, cls=SemClass.DATA_WRITE))
            t += 1_000_000 if i < 100 else 4_000_000      # busy first, quieter later
    rep = summarize(str(path))
    out = tmp_path / "stats.json"
    out.write_text(json.dumps(rep))
    return out, rep


def test_nic_trace_replay_matches_phantom_stats(tmp_path):
    path, rep = _trace_report(tmp_path)
    clock = Clock()
    src = NicTraceSource(path, speed=1e-6, clock=clock)
    dur = len(src.up) * src.bin_s / 1e-6
    clock.t += dur            # one full loop of the timeline: its mean is phantom's figure
    s = src.read().devices[0]
    assert s.pcie_util == pytest.approx(max(rep["link_utilization"].values()), rel=1e-9)
    # the first bins (busy) are busier than the last (quiet)
    assert src.up[0] > src.up[-1] > 0
    clock.t += src.bin_s / 1e-6 / 2
    assert src.read().devices[0].pcie_tx_bps == pytest.approx(src.up[0])


def test_nic_trace_bad_files(tmp_path):
    with pytest.raises(TelemetryError, match="no such file"):
        NicTraceSource(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(TelemetryError, match=r"bad.json:1: not JSON"):
        NicTraceSource(bad)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"tlps": 3}))
    with pytest.raises(TelemetryError, match="not a `phantom stats --json` report"):
        NicTraceSource(other)


def _counters(**kw):
    base = dict(tx_pkts=0, rx_pkts=0, tx_bytes=0, rx_bytes=0, tlp_mem_rd=0, tlp_mem_wr=0, tlp_cpl_tx=0,
                tlp_req_rx=0, tlp_cpl_rx=0, irqs=0)
    base.update(kw)
    return base


def test_nic_stats_from_counters_with_wraparound():
    src = NicStatsSource(link_gen=3, link_width=8)
    with pytest.raises(TelemetryError, match="two polls"):
        src.read()
    src.record(_counters(rx_bytes=(1 << 32) - 1000, rx_pkts=10), 0.0)
    src.record(_counters(rx_bytes=9000, rx_pkts=20, tlp_mem_wr=40), 1e-3)   # the byte counter wrapped
    d = src.read().devices[0]
    up = 10_000 + 16 * 10 + 24 * 40      # frame bytes, completion records, write TLP overhead over 1 ms
    assert d.pcie_tx_bps == pytest.approx(up / 1e-3)
    assert d.pcie_util == pytest.approx(up / 1e-3 / (0.985e9 * 8))
    with pytest.raises(TelemetryError, match="not after"):
        src.record(_counters(), 1e-3)
    with pytest.raises(TelemetryError, match="lack irqs"):
        src.record({k: v for k, v in _counters().items() if k != "irqs"}, 2e-3)
    assert link_bytes(_counters(tx_bytes=100))[0] == 100
