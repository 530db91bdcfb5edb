"""The NIC testbench: root complex, host model, UltraScale+ hard-IP model, MAC models, TLP tap, fault injector, driver."""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
from dataclasses import dataclass

import cocotb
from cocotb.triggers import FallingEdge, RisingEdge, Timer
from cocotb.utils import get_sim_time
from cocotbext.axi import AxiStreamBus, AxiStreamFrame, AxiStreamSink, AxiStreamSource
from cocotbext.pcie.core import RootComplex
from cocotbext.pcie.core.caps import PciCapId
from cocotbext.pcie.core.tlp import TlpType
from cocotbext.pcie.xilinx.us import UltraScalePlusPcieDevice

from host.driver import DriverConfig, NicDriver
from host.pcie import BufferKind
from host.regmap import REGS_VH, Regs
from phantom.memmap import Region, RegionKind
from phantom.trace import MacFrame, MacPort, MacWriter, TraceHeader, mac_sidecar_path
from tb.host_model import (HostModel, HostProvenance, HostTiming, fix_config_write_completions, get_host_profile,
                           install_memory_latency, set_port_delays)
from tb.pcie_access import SimPcieAccess
from tb.tap import LiveCheck, Tap, link_params

BAR0_SIZE = 64 * 1024
MPS_CODES = {128: 0, 256: 1, 512: 2}
MRRS_CODES = {128: 0, 256: 1, 512: 2, 1024: 3, 2048: 4, 4096: 5}
USER_CLK_NS = 4.0  # 250 MHz user clock of the hard IP
DEVCTL_RO, DEVCTL_EXT_TAG, DEVCTL_NS = 1 << 4, 1 << 8, 1 << 11
_KIND_REGION = {
    BufferKind.TX_RING: RegionKind.TX_RING, BufferKind.RX_RING: RegionKind.RX_RING,
    BufferKind.TX_DATA: RegionKind.TX_DATA, BufferKind.RX_DATA: RegionKind.RX_DATA,
    BufferKind.TX_CPL_RING: RegionKind.TX_CPL_RING, BufferKind.RX_CPL_RING: RegionKind.RX_CPL_RING,
}


@dataclass
class LinkConfig:
    """Link parameters and host a test runs under (swept by the tests)."""

    mps: int = 256          # Max_Payload_Size, bytes
    mrrs: int = 512         # Max_Read_Request_Size, bytes
    rcb: int = 64           # Read Completion Boundary of the root complex, bytes
    split_on_all_rcb: bool | None = None  # root complex splits completions at every RCB (None: the host model's)
    tx_backpressure: bool = False   # MAC TX sink pauses
    packet_payload_keep: int = 64   # packet-data payload bytes kept per TLP in the trace (-1 all, 0 none)
    host: str = "realistic"         # host profile (tb.host_model.HOST_PROFILES)

    def __post_init__(self) -> None:
        if self.mps not in MPS_CODES:
            raise ValueError(f"mps must be one of {sorted(MPS_CODES)}, got {self.mps!r}")
        if self.mrrs not in MRRS_CODES:
            raise ValueError(f"mrrs must be one of {sorted(MRRS_CODES)}, got {self.mrrs!r}")
        if self.rcb not in (64, 128):
            raise ValueError(f"rcb must be 64 or 128, got {self.rcb!r}")
        get_host_profile(self.host)

    def host_model(self, seed: int = 1) -> HostModel:
        m = get_host_profile(self.host).replace(seed=seed)
        if self.split_on_all_rcb is not None:
            m = m.replace(split_on_all_rcb=self.split_on_all_rcb)
        return m

    @classmethod
    def from_env(cls) -> "LinkConfig":
        """Parameters passed by the pytest runner through the simulator's environment."""
        env = os.environ
        split = env.get("NIC_SPLIT_RCB")
        return cls(
            mps=int(env.get("NIC_MPS", 256)), mrrs=int(env.get("NIC_MRRS", 512)), rcb=int(env.get("NIC_RCB", 64)),
            split_on_all_rcb=None if split is None else split == "1",
            tx_backpressure=env.get("NIC_TX_BACKPRESSURE", "0") == "1",
            packet_payload_keep=int(env.get("NIC_PAYLOAD_KEEP", 64)),
            host=env.get("NIC_HOST", "realistic"),
        )


def regmap_fingerprint() -> str:
    """A short hash of rtl/nic_regs.vh: traces name the register map they were captured against."""
    return hashlib.sha256(REGS_VH.read_bytes()).hexdigest()[:16]


class FaultInjector:
    """Makes the root complex misbehave on purpose: never answer, poison, or reorder read completions."""

    def __init__(self, rc):
        self.rc = rc
        self.drop_ranges: list[tuple[int, int]] = []
        self.poison_ranges: list[tuple[int, int]] = []
        self.reorder = False
        self._poison_tags: set[int] = set()
        self._held: list = []
        self.dropped = 0
        self.poisoned = 0
        self.reordered = 0
        for t in (TlpType.MEM_READ, TlpType.MEM_READ_64):
            orig = rc.rx_tlp_handler[t]

            async def handler(tlp, _orig=orig):
                if any(lo <= tlp.address < hi for lo, hi in self.drop_ranges):
                    self.dropped += 1
                    return  # the request is swallowed: the device must time out
                if any(lo <= tlp.address < hi for lo, hi in self.poison_ranges):
                    self._poison_tags.add(tlp.tag)
                await _orig(tlp)
                self._poison_tags.discard(tlp.tag)

            rc.register_rx_tlp_handler(t, handler)
        orig_send = rc.send

        async def send(tlp, _orig=orig_send):
            is_cpl = tlp.fmt_type in (TlpType.CPL, TlpType.CPL_DATA)
            if is_cpl and tlp.tag in self._poison_tags:
                tlp.ep = True
                self.poisoned += 1
            if is_cpl and self.reorder:
                if not self._held or self._held[0].tag == tlp.tag:
                    # hold this request's completions until another request's completion passes them
                    self._held.append(tlp)
                    if len(self._held) == 1:
                        cocotb.start_soon(self._flush_later(_orig))
                    return
                await _orig(tlp)
                self.reordered += 1
                held, self._held = self._held, []
                for h in held:
                    await _orig(h)
                return
            await _orig(tlp)

        rc.send = send

    async def _flush_later(self, send) -> None:
        await Timer(2, "us")
        held, self._held = self._held, []
        for h in held:
            await send(h)


class TB:
    def __init__(self, dut, link: LinkConfig | None = None, trace_path: str | None = None, scenario: str = "",
                 seed: int | None = None, host_model: HostModel | None = None, keep_records: bool = True):
        self.dut = dut
        self.link = link or LinkConfig.from_env()
        self.seed = int(os.environ.get("NIC_SEED", 1)) if seed is None else seed
        self.host = host_model or self.link.host_model(self.seed)
        self.timing = HostTiming(self.host)
        self.log = logging.getLogger("cocotb.tb")
        self.log.setLevel(logging.INFO)
        self.regs = Regs()
        self.data_width = len(dut.m_axis_rq_tdata)
        self.scenario = scenario

        self.rc = RootComplex()
        self.rc.max_payload_size = MPS_CODES[self.link.mps]
        self.rc.max_payload_size_supported = MPS_CODES[self.link.mps]
        self.rc.read_completion_boundary = self.link.rcb == 128

        gen, lanes = (3, 2) if self.data_width == 64 else (3, 4) if self.data_width == 128 else (3, 8)
        self.dev = UltraScalePlusPcieDevice(
            pcie_generation=gen, pcie_link_width=lanes, user_clk_frequency=1e9 / USER_CLK_NS, alignment="dword",
            max_payload_size=512, enable_client_tag=True, enable_extended_tag=self.host.ext_tags,
            pf0_msix_enable=True, pf0_msix_table_size=self.regs.MSIX_VECTORS - 1, pf0_msix_table_bir=0,
            pf0_msix_table_offset=self.regs.REG_MSIX_TABLE, pf0_msix_pba_bir=0,
            pf0_msix_pba_offset=self.regs.REG_MSIX_PBA,
            user_clk=dut.user_clk, user_reset=dut.user_reset, user_lnk_up=dut.user_lnk_up,
            rq_bus=AxiStreamBus.from_prefix(dut, "m_axis_rq"),
            rc_bus=AxiStreamBus.from_prefix(dut, "s_axis_rc"),
            cq_bus=AxiStreamBus.from_prefix(dut, "s_axis_cq"),
            cc_bus=AxiStreamBus.from_prefix(dut, "m_axis_cc"),
            pcie_cq_np_req=dut.pcie_cq_np_req,
            cfg_max_payload=dut.cfg_max_payload, cfg_max_read_req=dut.cfg_max_read_req,
            cfg_rcb_status=dut.cfg_rcb_status, cfg_function_status=dut.cfg_function_status,
            cfg_interrupt_msix_enable=dut.cfg_interrupt_msix_enable,
            cfg_interrupt_msix_mask=dut.cfg_interrupt_msix_mask,
            cfg_mgmt_addr=dut.cfg_mgmt_addr, cfg_mgmt_function_number=dut.cfg_mgmt_function_number,
            cfg_mgmt_write=dut.cfg_mgmt_write, cfg_mgmt_write_data=dut.cfg_mgmt_write_data,
            cfg_mgmt_byte_enable=dut.cfg_mgmt_byte_enable, cfg_mgmt_read=dut.cfg_mgmt_read,
            cfg_mgmt_read_data=dut.cfg_mgmt_read_data, cfg_mgmt_read_write_done=dut.cfg_mgmt_read_write_done,
        )
        self.dev.log.setLevel(logging.WARNING)
        self.rc.log.setLevel(logging.ERROR)
        if self.host.cpl_buffer is not None:
            self.dev.rx_buf_cplh_fc_limit, self.dev.rx_buf_cpld_fc_limit = self.host.cpl_buffer
        if self.host.rc_throttle:
            k = self.host.rc_throttle
            self.dev.rc_source.set_pause_generator(itertools.cycle((1,) * k + (0,) * (4 - k)))
        f0 = self.dev.functions[0]
        f0.vendor_id = 0x1234
        f0.device_id = 0x4E31
        f0.configure_bar(0, BAR0_SIZE, ext=self.host.bar64, prefetch=self.host.bar64)
        f0.configure_bar(2, 32, io=True)  # legacy IO BAR: the NIC answers IO with UR
        notes = []
        if self.host.fix_cfg_write_byte_count and fix_config_write_completions(self.dev):
            notes.append("config-write completions answered with byte count 4 by the testbench "
                         "(cocotbext-pcie 0.2.16 sends 0; PCIe Base Spec 2.2.9 requires 4)")
        rc_port = self.rc.make_port()
        set_port_delays(self.host, rc_port, self.dev.upstream_port)
        rc_port.connect(self.dev)
        self.dev_port = self.dev.upstream_port
        self.rc_port = self.dev_port.other
        self.faults = FaultInjector(self.rc)           # inside the memory latency: drops/poison after the wait
        install_memory_latency(self.rc, self.timing)
        self.provenance = HostProvenance(self.host, notes)

        self.mac_rx = AxiStreamSource(AxiStreamBus.from_prefix(dut, "s_axis_rx"), dut.user_clk, dut.user_reset)
        self.mac_tx = AxiStreamSink(AxiStreamBus.from_prefix(dut, "m_axis_tx"), dut.user_clk, dut.user_reset)
        self.mac_rx.log.setLevel(logging.WARNING)
        self.mac_tx.log.setLevel(logging.WARNING)
        if self.link.tx_backpressure:
            self.mac_tx.set_pause_generator(self._pause_pattern())

        header = TraceHeader(mps=self.link.mps, mrrs=self.link.mrrs, rcb=self.link.rcb, link_speed=gen,
                             link_width=lanes, data_width=self.data_width, scenario=scenario,
                             simulator=os.environ.get("NIC_SIM", cocotb.SIM_NAME.lower() if cocotb.SIM_NAME else ""),
                             payload_bytes_kept=self.link.packet_payload_keep)
        self.tap = Tap(self.rc_port, self.dev_port, trace_path, header=header,
                       packet_payload_keep=self.link.packet_payload_keep,
                       link_source=lambda: link_params(self.rc, self.dev))
        self.tap.keep_in_memory = keep_records and trace_path is None
        self.tap.watch_refused(self.dev)
        self.tracer = self.tap  # the name older tests use
        self.mac: MacWriter | None = None
        if trace_path is not None:
            side = mac_sidecar_path(trace_path)
            self.mac = MacWriter(side, trace_name=os.path.basename(str(trace_path)))
            self.tap.header.mac_frames = side.name
        self.access: SimPcieAccess | None = None
        self.driver: NicDriver | None = None
        self.fn = None

    def live_checker(self, **kw) -> LiveCheck:
        """The rule checker on every TLP of this test (built when the header is committed in init())."""
        return self.tap.add_checker(**kw)

    @staticmethod
    def _pause_pattern():
        while True:
            yield from (0, 0, 0, 1, 1, 0, 1, 0, 0, 1, 1, 1)

    async def reset(self) -> None:
        # Icarus fires FallingEdge at t=0 (X->0): wait for the rising edge first (TOOLCHAIN.md)
        await RisingEdge(self.dut.user_reset)
        await FallingEdge(self.dut.user_reset)
        await Timer(100, "ns")

    async def init(self, driver_config: DriverConfig | None = None, start_driver: bool = True) -> None:
        """Enumerate, assign BARs, program MPS/MRRS/RCB and Device Control, enable bus mastering and MSI-X, start
        the driver, then commit the trace header (link parameters, memory map, completion timeout, host model)."""
        await self.bring_up()
        self.driver = NicDriver(self.access, self.regs, driver_config or DriverConfig())
        if start_driver:
            await self.driver.init()
        await self.commit_trace()

    async def bring_up(self, dma_pool: bool = True) -> None:
        """What the OS does before a driver runs: enumeration, MPS/MRRS/RCB, Device Control, bus mastering, MSI-X."""
        await self.reset()
        await self.rc.enumerate()
        self.fn = self.rc.find_device(self.dev.functions[0].pcie_id)
        await self.fn.enable_device()
        await self.fn.set_master()
        await self.fn.set_readrq(MRRS_CODES[self.link.mrrs])
        lnkctl = await self.fn.capability_read_word(PciCapId.EXP, 0x10)
        rcb_bit = 1 << 3
        lnkctl = (lnkctl | rcb_bit) if self.link.rcb == 128 else (lnkctl & ~rcb_bit)
        await self.fn.capability_write_word(PciCapId.EXP, 0x10, lnkctl)
        devctl = await self.fn.capability_read_word(PciCapId.EXP, 0x08)
        for bit, on in ((DEVCTL_RO, self.host.relaxed_ordering), (DEVCTL_EXT_TAG, self.host.ext_tags),
                        (DEVCTL_NS, self.host.no_snoop)):
            devctl = (devctl | bit) if on else (devctl & ~bit)
        await self.fn.capability_write_word(PciCapId.EXP, 0x08, devctl)
        self.access = SimPcieAccess(self.rc, self.fn, timing=self.timing, pool=dma_pool)
        await self.fn.alloc_irq_vectors(1, self.regs.MSIX_VECTORS)
        self.fn.request_irq(0, self.access.irq_handler)

    def msix_address(self) -> int | None:
        return self.fn.msi_vectors[0].addr if self.fn.msi_vectors else None

    def memory_map(self) -> list[Region]:
        """Host memory and device windows the trace header records (what the NIC may touch, and its doorbells)."""
        regions = [Region(b.addr, b.size, _KIND_REGION[b.kind]) for b in self.access.buffers()
                   if b.kind in _KIND_REGION]
        bar = self.access.bar_addr
        regions.append(Region(bar, BAR0_SIZE, RegionKind.BAR))
        regions.append(Region(bar + self.regs.REG_TXQ_PROD, 4, RegionKind.TX_DOORBELL))
        regions.append(Region(bar + self.regs.REG_RXQ_PROD, 4, RegionKind.RX_DOORBELL))
        regions.append(Region(bar + self.regs.REG_TXQ_CTRL, 4, RegionKind.TX_QCTRL))
        regions.append(Region(bar + self.regs.REG_RXQ_CTRL, 4, RegionKind.RX_QCTRL))
        if self.fn.msi_vectors:
            regions.append(Region(self.fn.msi_vectors[0].addr, 4, RegionKind.MSIX))
        return regions

    async def commit_trace(self) -> None:
        if self.tap.committed:
            return
        self.tap.set_memory_map(self.memory_map())
        cycles = await self.read_reg("REG_CPL_TIMEOUT")
        self.tap.commit(cpl_timeout_ns=cycles * USER_CLK_NS, host=self.provenance.to_json(),
                        device={"vendor_id": 0x1234, "device_id": 0x4E31, "regmap": regmap_fingerprint(),
                                "version": self.regs.NIC_VERSION_VALUE, "user_clk_ns": USER_CLK_NS,
                                "tag_hold_ns": await self.read_reg("REG_TAG_HOLD") * USER_CLK_NS,
                                "registers": {n: getattr(self.regs, n) for n in self.regs.names("REG_")}},
                        extra={"seed": self.seed})

    async def read_reg(self, name: str) -> int:
        return await self.access.mmio_read32(getattr(self.regs, name))

    async def write_reg(self, name: str, value: int) -> None:
        await self.access.mmio_write32(getattr(self.regs, name), value)

    async def send_frame(self, data: bytes) -> None:
        """A frame arrives at the MAC (RX direction); recorded in the MAC sidecar at the time it is offered."""
        if self.mac is not None:
            self.mac.write(MacFrame(int(get_sim_time("ps")), MacPort.RX, bytes(data)))
        await self.mac_rx.send(AxiStreamFrame(data))

    async def recv_frame(self) -> bytes:
        """A frame leaves on the MAC (TX direction); recorded in the MAC sidecar when it has left."""
        f = await self.mac_tx.recv()
        data = bytes(f.tdata)
        if self.mac is not None:
            self.mac.write(MacFrame(int(get_sim_time("ps")), MacPort.TX, data))
        return data

    async def settle(self, ns: int = 2000) -> None:
        await Timer(ns, "ns")

    def close(self) -> None:
        self.tap.close()
        if self.mac is not None:
            self.mac.close()
