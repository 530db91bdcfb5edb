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

# ---------------------------------------------------------------------------------------------------------------
# piece by piece, with figures worked out by hand (fast enough for mutation testing: make mutmut)
import asyncio  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402

from host.telemetry import Sample, TelemetrySource  # noqa: E402
from host.telemetry.nic import link_bytes_per_s  # noqa: E402


class TClock:
    def __init__(self, t=100.0):
        self.t = t

    def __call__(self):
        return self.t


# the interface -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["gpu_util", "pcie_util", "kv_usage"])
def test_fractions_are_checked(name):
    for ok in (0.0, 1.0, 0.5, None):
        assert getattr(DeviceSample("d", **{name: ok}), name) == ok
    for bad in (-0.01, 1.01, float("nan"), float("inf")):
        with pytest.raises(TelemetryError) as e:
            DeviceSample("d", **{name: bad})
        assert str(e.value) == f"d: {name} must be a fraction in [0, 1], got {bad!r}"


def test_sample_mean_and_total_over_the_devices_that_measured():
    s = Sample("x", 1.0, 2.0, (DeviceSample("a", gpu_util=0.2, mem_used_bytes=10, pcie_util=0.5),
                               DeviceSample("b", gpu_util=0.6, mem_used_bytes=None),
                               DeviceSample("c", mem_used_bytes=5)))
    assert s.mean("gpu_util") == pytest.approx(0.4) and s.gpu_util == pytest.approx(0.4)
    assert s.pcie_util == 0.5 and s.mean("kv_usage") is None
    assert s.total("mem_used_bytes") == 15 and s.total("running") is None
    assert Sample("x", 0, 0).devices == () and Sample("x", 0, 0).total("gpu_util") is None


class Fixed(TelemetrySource):
    def __init__(self, name, *devices, t=1.0, interval=0.5, error=None):
        self.name, self.devices, self.t, self.interval, self.error = name, devices, t, interval, error
        self.closed = 0

    def read(self):
        if self.error:
            raise TelemetryError(self.error)
        return Sample(self.name, self.t, self.interval, self.devices)

    def close(self):
        self.closed += 1


def test_combined_takes_each_field_from_the_first_source_that_measured_it():
    with pytest.raises(TelemetryError) as e:
        Combined([])
    assert str(e.value) == "combined telemetry needs at least one source"
    a = Fixed("a", DeviceSample("g0", gpu_util=0.2, mem_used_bytes=100, running=2),
              DeviceSample("g1", gpu_util=0.4, mem_used_bytes=300, running=3), t=7.0, interval=0.25)
    b = Fixed("b", DeviceSample("s", gpu_util=0.9, kv_usage=0.1, pcie_util=0.4, waiting=4, mem_total_bytes=9,
                                pcie_tx_bps=1.5), DeviceSample("s2", kv_usage=0.5, pcie_util=0.8), t=8.0, interval=1.0)
    broken = Fixed("z", error="z: down")
    c = Combined([broken, a, b])
    assert (c.errors, c.last, c.origin) == ({}, {}, {})
    s = c.read()
    assert (s.source, s.t, s.interval_s, len(s.devices)) == ("combined", 7.0, 0.25, 1)
    d = s.devices[0]
    assert d.device == "all"
    assert d.gpu_util == pytest.approx(0.3)           # the mean over a's two GPUs: fractions are averaged
    assert d.mem_used_bytes == 400 and d.running == 5  # amounts are summed
    assert (d.waiting, d.mem_total_bytes, d.pcie_tx_bps) == (4, 9, 1.5)
    assert d.kv_usage == pytest.approx(0.3) and d.pcie_util == pytest.approx(0.6)   # means of b's two devices
    assert d.pcie_rx_bps is None
    assert c.origin == {"gpu_util": "a", "mem_used_bytes": "a", "running": "a", "kv_usage": "b", "pcie_util": "b",
                        "waiting": "b", "mem_total_bytes": "b", "pcie_tx_bps": "b"}
    assert c.last == {"a": a.read(), "b": b.read()} and c.errors == {"z": "z: down"}
    broken.error = None
    broken.devices = (DeviceSample("zz", pcie_util=0.1),)
    c.read()
    assert c.errors == {} and c.origin["pcie_util"] == "z" and c.origin["gpu_util"] == "a"
    a.error, b.error, broken.error = "a: gone", "b: gone", "z: gone"
    with pytest.raises(TelemetryError) as e:
        c.read()
    assert str(e.value) == "no telemetry source could measure: z: z: gone; a: a: gone; b: b: gone"
    c.close()
    assert (a.closed, b.closed, broken.closed) == (1, 1, 1)
    assert TelemetrySource.close(a) is None


def test_registry():
    from host.telemetry import SourceName
    from host.telemetry.nic import NicTraceSource as T
    from host.telemetry.nvml import NvmlSource
    from host.telemetry.vllm import VllmMetricsSource
    from host.telemetry import _registry
    assert _registry() == {SourceName.NVML: NvmlSource, SourceName.NIC: T, SourceName.VLLM: VllmMetricsSource,
                           SourceName.SIM: SimSource}
    assert make_source("sim", device="x").device == "x"
    with pytest.raises(ValueError) as e:
        make_source("dcgm")
    assert str(e.value) == "unknown telemetry source: 'dcgm' (known: nvml, nic, vllm, sim)"


# the simulated engine ----------------------------------------------------------------------------------------
def test_sim_source():
    clock = TClock()
    src = SimSource(clock=clock)
    assert (src.device, src.name, src.sm_util) == ("sim0", "sim", None)
    s = src.read()                                   # no time has passed: nothing to tell
    assert (s.t, s.interval_s, s.devices[0].gpu_util, src.sm_util) == (100.0, 0.0, None, None)
    assert s.devices[0].device == "sim0" and s.source == "sim"
    src.record(0.2, 0.2)                             # compute may equal busy
    src.record(0.3, 0.0, kv_usage=1.5, running=2, waiting=0)
    clock.t += 0.5
    s = src.read()
    d = s.devices[0]
    assert (s.t, s.interval_s) == (100.5, 0.5)
    assert d.gpu_util == pytest.approx(1.0) and src.sm_util == pytest.approx(0.4)
    assert (d.kv_usage, d.running, d.waiting) == (1.0, 2, 0)   # clipped to a fraction; counts kept
    src.record(0.9, 0.9, kv_usage=-0.5)
    clock.t += 0.25                                  # the engine's clock ran ahead of this one: clipped
    d = src.read().devices[0]
    assert d.gpu_util == 1.0 and src.sm_util == 1.0 and d.kv_usage == 0.0
    for busy, comp in ((-0.1, 0.0), (0.1, 0.2), (0.1, -0.01)):
        with pytest.raises(TelemetryError) as e:
            src.record(busy, comp)
        assert str(e.value) == f"sim: bad iteration record busy {busy!r} s, compute {comp!r} s"


# vLLM ----------------------------------------------------------------------------------------------------------
class VllmStandIn:
    """A stand-in for vLLM's /metrics: prometheus_client's exposition of vLLM's metric names."""

    def __init__(self, delay=0.0):
        self.reg = CollectorRegistry()
        self.kv = Gauge("vllm:kv_cache_usage_perc", "KV usage", ["model_name"], registry=self.reg)
        self.running = Gauge("vllm:num_requests_running", "running", ["model_name"], registry=self.reg)
        self.prompt = Counter("vllm:prompt_tokens", "prompt", ["model_name"], registry=self.reg)
        self.gen = Counter("vllm:generation_tokens", "gen", ["model_name"], registry=self.reg)
        self.other = Gauge("process_open_fds", "not vllm", registry=self.reg)
        self.body: bytes | None = None
        self.paths: list[str] = []
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_GET(self):
                outer.paths.append(self.path)
                time.sleep(delay)
                body = outer.body if outer.body is not None else generate_latest(outer.reg)
                try:
                    self.send_response(200)
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass   # a scraper that timed out has gone (the slow stand-in's tests): nothing to answer

            def log_message(self, *a):
                pass

        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.srv.server_address[1]}"
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()


@pytest.fixture
def standin():
    s = VllmStandIn()
    yield s
    s.close()


def test_vllm_url_forms(standin):
    from host.telemetry.vllm import VllmMetricsSource
    for given, used in ((standin.url, standin.url + "/metrics"), (standin.url + "/", standin.url + "/metrics"),
                        (standin.url + "/metrics", standin.url + "/metrics"),
                        (standin.url + "/metrics/", standin.url + "/metrics/"),
                        ("https://h:1", "https://h:1/metrics")):
        src = VllmMetricsSource(given)
        assert src.url == used
        src.close()
    with pytest.raises(TelemetryError) as e:
        VllmMetricsSource("ftp://h")
    assert str(e.value) == "vllm: metrics URL must start with http:// or https://, got 'ftp://h'"
    VllmMetricsSource(standin.url).read()
    assert standin.paths == ["/metrics"]


def test_vllm_sums_label_sets_and_turns_counters_into_rates(standin):
    from host.telemetry.vllm import VllmMetricsSource
    clock = TClock()
    for m in ("m1", "m2"):
        standin.running.labels(m).set(2)
        standin.prompt.labels(m).inc(100)
        standin.gen.labels(m).inc(10)
    standin.other.set(99)
    src = VllmMetricsSource(standin.url, clock=clock)
    v = src.scrape()
    assert v["vllm:num_requests_running"] == 4 and v["vllm:prompt_tokens_total"] == 200
    assert not any(k.startswith("process") for k in v)
    s = src.read()
    d = s.devices[0]
    assert (s.source, s.t, s.interval_s, d.device) == ("vllm", 100.0, 0.0, f"vllm:{standin.url}/metrics")
    assert d.running == 4 and d.waiting is None and d.kv_usage is None   # absent metrics stay unmeasured
    clock.t += 4.0
    standin.prompt.labels("m1").inc(80)
    standin.gen.labels("m2").inc(20)
    standin.kv.labels("m1").set(1.5)
    s = src.read()
    d = s.devices[0]
    assert s.interval_s == 4.0 and d.prompt_tokens_per_s == 20.0 and d.generation_tokens_per_s == 5.0
    assert d.kv_usage == 1.0                          # clipped to a fraction
    # vLLM restarted: its counters start again from zero
    standin.body = (b"# TYPE vllm:prompt_tokens counter\nvllm:prompt_tokens_total 30\n"
                    b"# TYPE vllm:generation_tokens counter\nvllm:generation_tokens_total 6\n")
    clock.t += 2.0
    d = src.read().devices[0]
    assert d.prompt_tokens_per_s == 15.0 and d.generation_tokens_per_s == 3.0
    clock.t += 0.5                                    # unchanged counters over half a second: rate 0
    d = src.read().devices[0]
    assert d.prompt_tokens_per_s == 0.0 and d.generation_tokens_per_s == 0.0
    d = src.read().devices[0]                         # no time has passed: no rate
    assert d.prompt_tokens_per_s is None and d.generation_tokens_per_s is None
    standin.body = b"# TYPE vllm:generation_tokens counter\nvllm:generation_tokens_total 16\n"
    clock.t += 1.0                                    # the prompt counter is missing: no rates, nothing kept
    d = src.read().devices[0]
    assert d.prompt_tokens_per_s is None and d.generation_tokens_per_s is None and src._prev == (106.5, 30.0, 6.0)
    standin.body = (b"# TYPE vllm:prompt_tokens counter\nvllm:prompt_tokens_total 40\n"
                    b"# TYPE vllm:generation_tokens counter\nvllm:generation_tokens_total 16\n")
    clock.t += 1.0
    d = src.read().devices[0]
    assert d.prompt_tokens_per_s == 5.0 and d.generation_tokens_per_s == 5.0      # over the 2 s since 106.5
    standin.body = b"vllm:x{ 1\n"
    with pytest.raises(TelemetryError) as e:
        src.read()
    assert str(e.value).startswith(f"vllm: {standin.url}/metrics is not Prometheus text exposition: ")
    src.close()


def test_vllm_timeout():
    from host.telemetry.vllm import VllmMetricsSource
    slow = VllmStandIn(delay=1.0)
    try:
        t0 = time.monotonic()
        with pytest.raises(TelemetryError) as e:
            VllmMetricsSource(slow.url, timeout_s=0.2).read()
        assert time.monotonic() - t0 < 0.9 and "cannot scrape" in str(e.value) and "Timeout" in str(e.value)
    finally:
        slow.close()


# NVML ------------------------------------------------------------------------------------------------------------
class StrictNvml:
    """pynvml's names and units; every device call checks it got one of the handles it gave out."""

    NVML_PCIE_UTIL_TX_BYTES, NVML_PCIE_UTIL_RX_BYTES = 10, 11

    class NVMLError(Exception):
        pass

    def __init__(self, n=2, util=(37, 90), gen=4, width=16, fail=None, tx_kb=3_000):
        self.n, self.util, self.gen, self.width, self.fail = n, util, gen, width, fail or set()
        self.tx_kb = tx_kb
        self.calls = []

    def _h(self, h):
        assert isinstance(h, tuple) and h[0] == "h" and 0 <= h[1] < self.n, h
        return h[1]

    def _maybe(self, what):
        if what in self.fail:
            raise self.NVMLError(f"{what} failed")

    def nvmlInit(self):
        self._maybe("init")
        self.calls.append("init")

    def nvmlShutdown(self):
        self.calls.append("shutdown")
        self._maybe("shutdown")

    def nvmlDeviceGetCount(self):
        return self.n

    def nvmlDeviceGetHandleByIndex(self, i):
        self._maybe("handle")
        return ("h", i)

    def nvmlDeviceGetUtilizationRates(self, h):
        return type("U", (), {"gpu": self.util[self._h(h)], "memory": 1})()

    def nvmlDeviceGetMemoryInfo(self, h):
        self._maybe("mem")
        return type("M", (), {"used": 1000 * (self._h(h) + 1), "total": 80_000})()

    def nvmlDeviceGetPcieThroughput(self, h, which):
        i = self._h(h)
        assert which in (self.NVML_PCIE_UTIL_TX_BYTES, self.NVML_PCIE_UTIL_RX_BYTES)
        return (self.tx_kb + i) if which == self.NVML_PCIE_UTIL_TX_BYTES else (1_000 + i)   # KB/s

    def nvmlDeviceGetCurrPcieLinkGeneration(self, h):
        self._h(h)
        self._maybe("link")
        return self.gen

    def nvmlDeviceGetCurrPcieLinkWidth(self, h):
        self._h(h)
        return self.width

    def nvmlDeviceGetName(self, h):
        return f"GPU-{self._h(h)}"


def test_nvml_reads_each_device_by_its_handle():
    from host.telemetry.nvml import NvmlSource
    clock = TClock(5.0)
    src = NvmlSource(nvml=StrictNvml(), clock=clock)
    clock.t = 7.5
    s = src.read()
    assert (s.source, s.t, s.interval_s) == ("nvml", 7.5, 2.5)
    d0, d1 = s.devices
    assert (d0.device, d1.device) == ("gpu0", "gpu1")
    assert (d0.pcie_tx_bps, d0.pcie_rx_bps, d1.pcie_tx_bps, d1.pcie_rx_bps) == (3000 * 1024.0, 1000 * 1024.0,
                                                                                 3001 * 1024.0, 1001 * 1024.0)
    assert d1.mem_used_bytes == 2000 and d1.gpu_util == 0.9
    cap = 1.969e9 * 16
    assert d1.pcie_util == pytest.approx(3001 * 1024.0 / cap)
    clock.t = 8.0
    assert src.read().interval_s == 0.5
    assert src.describe() == [{"index": 0, "name": "GPU-0", "link_bytes_per_s": cap},
                              {"index": 1, "name": "GPU-1", "link_bytes_per_s": cap}]


def test_nvml_clips_and_leaves_unknown_links_unmeasured():
    from host.telemetry.nvml import NvmlSource
    d = NvmlSource(nvml=StrictNvml(util=(150, -5), gen=1, width=1, tx_kb=300_000)).read().devices
    assert d[0].gpu_util == 1.0 and d[1].gpu_util == 0.0
    assert d[0].pcie_util == 1.0                          # 300 MB/s on a 250 MB/s link: clipped
    for kw in ({"gen": 9}, {"width": 0}, {"fail": {"link"}}):
        src = NvmlSource(nvml=StrictNvml(**kw))
        assert src.read().devices[0].pcie_util is None and src.describe()[0]["link_bytes_per_s"] is None


def test_nvml_errors_are_one_line_and_name_the_device():
    from host.telemetry.nvml import NvmlSource
    fake = StrictNvml(n=3)
    for devices, msg in (([3], "nvml: device index 3 out of range (this host has 3 GPUs)"),
                         ([True], "nvml: device index True out of range (this host has 3 GPUs)"),
                         ([-1], "nvml: device index -1 out of range (this host has 3 GPUs)"),
                         ([], "nvml: no GPU devices found")):
        with pytest.raises(TelemetryError) as e:
            NvmlSource(devices=devices, nvml=fake)
        assert str(e.value) == msg
    assert fake.calls == ["init", "shutdown"] * 4
    with pytest.raises(TelemetryError) as e:
        NvmlSource(nvml=StrictNvml(n=0))
    assert str(e.value) == "nvml: no GPU devices found"
    f = StrictNvml(fail={"handle"})
    with pytest.raises(TelemetryError) as e:
        NvmlSource(nvml=f)
    assert str(e.value) == "nvml: cannot open devices: handle failed" and f.calls == ["init", "shutdown"]
    with pytest.raises(TelemetryError) as e:
        NvmlSource(nvml=StrictNvml(fail={"init"}))
    assert str(e.value) == "nvml: NVML unusable (nvmlInit failed: init failed)"
    f = StrictNvml()
    src = NvmlSource(devices=[1], nvml=f)
    f.fail = {"mem"}
    with pytest.raises(TelemetryError) as e:
        src.read()
    assert str(e.value) == "nvml: reading gpu1 failed: mem failed"


def test_nvml_close_once_and_a_failed_shutdown_is_logged(caplog):
    from host.telemetry.nvml import NvmlSource
    f = StrictNvml(fail={"shutdown"})
    src = NvmlSource(nvml=f)
    with caplog.at_level(logging.WARNING, logger="host.telemetry.nvml"):
        src.close()
        src.close()
    assert f.calls == ["init", "shutdown"]
    assert [r.getMessage() for r in caplog.records] == ["nvmlShutdown failed: shutdown failed"]
    with pytest.raises(TelemetryError) as e:
        src.read()
    assert str(e.value) == "nvml: source is closed"


def test_nvml_default_module_is_pynvml(monkeypatch):
    import host.telemetry.nvml as nv
    assert nv._import_pynvml().__name__ == "pynvml"
    fake = StrictNvml(n=1)
    monkeypatch.setattr(nv, "_import_pynvml", lambda: fake)
    assert nv.NvmlSource().nvml is fake                  # no module given: the default one is used

    def missing(name):
        raise ImportError(f"No module named {name!r}")

    monkeypatch.setattr(nv.importlib, "import_module", missing)
    monkeypatch.undo()
    monkeypatch.setattr(nv.importlib, "import_module", missing)
    with pytest.raises(TelemetryError) as e:
        nv._import_pynvml()
    assert str(e.value) == "nvml: nvidia-ml-py is not installed (No module named 'pynvml')"


# the NIC ---------------------------------------------------------------------------------------------------------
def test_link_capacity():
    assert link_bytes_per_s(1, 1) == 0.25e9 and link_bytes_per_s(3, 8) == 0.985e9 * 8
    assert link_bytes_per_s(5, 16) == 3.938e9 * 16
    for w in (1, 2, 4, 8, 16, 32):
        assert link_bytes_per_s(2, w) == 0.5e9 * w
    for gen, width, msg in ((6, 8, "nic: unknown PCIe generation 6 (known: [1, 2, 3, 4, 5])"),
                            (3, 3, "nic: link width must be 1, 2, 4, 8, 16 or 32 lanes, got 3"),
                            (3, 0, "nic: link width must be 1, 2, 4, 8, 16 or 32 lanes, got 0")):
        with pytest.raises(TelemetryError) as e:
            link_bytes_per_s(gen, width)
        assert str(e.value) == msg


COUNTERS = dict(tx_pkts=1, rx_pkts=2, tx_bytes=1000, rx_bytes=3000, tlp_cpl_rx=5, tlp_req_rx=7, irqs=11,
                tlp_mem_wr=13, tlp_mem_rd=17, tlp_cpl_tx=19)
# by hand: down = 1000 + 16*3 + 20*5 + 28*7;  up = 3000 + 16*3 + 4*11 + 24*(13+17) + 24*19
DOWN, UP = 1000 + 48 + 100 + 196, 3000 + 48 + 44 + 720 + 456


def test_link_bytes_by_hand():
    assert link_bytes(COUNTERS) == (float(DOWN), float(UP)) == (1344.0, 4268.0)


def test_nic_counters_polled_from_a_driver():
    src = NicStatsSource()
    assert src.capacity == 0.985e9 * 8 and src.name == "nic"
    zero = {k: 0 for k in COUNTERS}

    async def stats_a():
        return dict(zero, dma_errors=0)

    async def stats_b():
        return dict(COUNTERS, dma_errors=3)

    asyncio.run(src.poll(stats_a, 2.0))
    asyncio.run(src.poll(stats_b, 2.5))
    s = src.read()
    d = s.devices[0]
    assert (s.source, s.t, s.interval_s, d.device) == ("nic", 2.5, 0.5, "nic")
    assert (d.pcie_rx_bps, d.pcie_tx_bps) == (DOWN / 0.5, UP / 0.5)
    assert d.pcie_util == pytest.approx(UP / 0.5 / (0.985e9 * 8))
    # a third poll: the utilisation is between the last two
    asyncio.run(src.poll(lambda: asyncio.sleep(0, dict(COUNTERS, tx_bytes=1000 + 4000, dma_errors=3)), 3.5))
    s = src.read()
    assert (s.t, s.interval_s) == (3.5, 1.0) and s.devices[0].pcie_rx_bps == 4000.0 and s.devices[0].pcie_tx_bps == 0
    fast = NicStatsSource(link_gen=1, link_width=1)
    fast.record(zero, 0.0)
    fast.record(dict(zero, rx_bytes=10**9), 1.0)
    assert fast.read().devices[0].pcie_util == 1.0      # more than the link can carry: clipped


def test_nic_counter_errors():
    src = NicStatsSource(link_gen=2, link_width=4)
    assert src.capacity == 2e9
    with pytest.raises(TelemetryError) as e:
        src.read()
    assert str(e.value) == "nic: needs two polls of the statistics registers before it can tell utilisation"
    with pytest.raises(TelemetryError) as e:
        src.record({k: v for k, v in COUNTERS.items() if k not in ("irqs", "tx_pkts")}, 0.0)
    assert str(e.value) == "nic: statistics lack tx_pkts, irqs"
    src.record(COUNTERS, 1.0)
    with pytest.raises(TelemetryError) as e:
        src.record(COUNTERS, 0.5)
    assert str(e.value) == "nic: poll at t=0.5 s is not after the previous one at 1.0 s"
    src.record(COUNTERS, 2.0)
    with pytest.raises(TelemetryError) as e:
        src.record(COUNTERS, 2.0)
    assert str(e.value) == "nic: poll at t=2.0 s is not after the previous one at 2.0 s"
    assert [t for t, _ in src._hist] == [1.0, 2.0]


def report(tmp_path, down, up, bin_us=1.0, util=(0.2, 0.4), gen=3, width=8, name="r.json"):
    p = tmp_path / name
    p.write_text(json.dumps({"header": {"link_speed": gen, "link_width": width},
                             "link_utilization": {"down": util[0], "up": util[1]},
                             "timeline": {"bin_us": bin_us, "down_bytes": down, "up_bytes": up}}))
    return p


def test_nic_trace_replay_by_hand(tmp_path):
    clock = TClock(0.0)
    # two bins of 1 us, payload 1:3 going up; phantom says up is 40 % busy on average
    src = NicTraceSource(report(tmp_path, [2, 2], [1, 3]), speed=1e-6, clock=clock)
    cap = 0.985e9 * 8
    assert src.bin_s == 1e-6 and src.capacity == cap and src.mean_util == 0.4
    assert src.up == pytest.approx([0.4 * cap * 0.5, 0.4 * cap * 1.5]) and src.down == pytest.approx([0.2 * cap] * 2)
    s = src.read()                          # no time has passed: the current bin's rate
    assert (s.source, s.t, s.interval_s) == ("nic", 0.0, 0.0)
    d = s.devices[0]
    assert d.device == "nic" and d.pcie_tx_bps == pytest.approx(0.2 * cap) and d.pcie_rx_bps == pytest.approx(0.2 * cap)
    clock.t = 0.5                           # trace time 0 .. 0.5 us: inside the first bin
    s = src.read()
    assert s.interval_s == pytest.approx(0.5) and s.devices[0].pcie_tx_bps == pytest.approx(0.2 * cap)
    clock.t = 1.5                           # 0.5 us of each bin: the mean of both
    s = src.read()
    d = s.devices[0]
    assert s.interval_s == pytest.approx(1.0)
    assert d.pcie_tx_bps == pytest.approx(0.4 * cap) and d.pcie_util == pytest.approx(0.4)
    clock.t = 2.25                          # 1.5 .. 2.25 us: the second bin, then the first again (it loops)
    assert src.read().devices[0].pcie_tx_bps == pytest.approx((0.5 * 0.6 + 0.25 * 0.2) / 0.75 * cap)
    clock.t = 20.5                          # longer than the timeline: its mean
    assert src.read().devices[0].pcie_tx_bps == pytest.approx(0.4 * cap)
    assert src.read().devices[0].pcie_tx_bps == pytest.approx(0.2 * cap)   # t = 20.5 us: the first bin again


def test_nic_trace_speed_and_shape(tmp_path):
    clock = TClock(10.0)
    src = NicTraceSource(report(tmp_path, [0, 0, 0], [4, 4, 4], bin_us=2.0, util=(0.0, 1.5)), speed=2e-6,
                         clock=clock)
    assert src.bin_s == 2e-6 and src.down == [0.0, 0.0, 0.0]
    clock.t = 11.0                          # one second at 2 trace-us a second: exactly the first bin
    s = src.read()
    assert s.interval_s == pytest.approx(1.0) and s.devices[0].pcie_rx_bps == 0.0
    assert s.devices[0].pcie_util == 1.0    # 150 % of the link: clipped
    zero = NicTraceSource(report(tmp_path, [0, 0], [0, 0], util=(0.1, 0.0), name="z.json"), clock=clock)
    cap = 0.985e9 * 8
    assert zero.up == [0.0, 0.0] and zero.down == [0.1 * cap] * 2   # no payload, a busy link: evenly busy
    assert zero.read().devices[0].pcie_util == pytest.approx(0.1) and zero.speed == 1e-6   # the default speed
    for speed in (0, -1e-6, float("inf"), float("nan"), "fast"):
        with pytest.raises(TelemetryError) as e:
            NicTraceSource(report(tmp_path, [1], [1]), speed=speed)
        assert str(e.value) == f"nic: speed must be a positive number, got {speed!r}"
    for down, up, bin_us in (([], [], 1.0), ([1, 2], [1], 1.0), ([1], [1], 0.0), ([1], [1], -1.0)):
        p = report(tmp_path, down, up, bin_us=bin_us, name="bad.json")
        with pytest.raises(TelemetryError) as e:
            NicTraceSource(p)
        assert str(e.value) == f"nic: {p}: the report's timeline is empty"
    p = report(tmp_path, [1], [1], gen=7, name="gen.json")
    with pytest.raises(TelemetryError) as e:
        NicTraceSource(p)
    assert str(e.value) == "nic: unknown PCIe generation 7 (known: [1, 2, 3, 4, 5])"
    p = tmp_path / "nohdr.json"
    p.write_text(json.dumps({"link_utilization": {"down": 0, "up": 0}, "timeline": {"bin_us": 1, "down_bytes": [1],
                                                                                      "up_bytes": [1]}}))
    with pytest.raises(TelemetryError) as e:
        NicTraceSource(p)
    assert str(e.value) == f"nic: {p}: not a `phantom stats --json` report (missing or bad 'header')"
    assert math.isfinite(NicTraceSource(report(tmp_path, [1], [1], name="ok.json")).mean_util)
