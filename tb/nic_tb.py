"""The NIC testbench: root complex, UltraScale+ hard-IP model, MAC models, TLP tracer, fault injector, driver."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import cocotb
from cocotb.triggers import FallingEdge, RisingEdge, Timer
from cocotbext.axi import AxiStreamBus, AxiStreamFrame, AxiStreamSink, AxiStreamSource
from cocotbext.pcie.core import RootComplex
from cocotbext.pcie.core.caps import PciCapId
from cocotbext.pcie.core.tlp import TlpType
from cocotbext.pcie.xilinx.us import UltraScalePlusPcieDevice

from host.driver import DriverConfig, NicDriver
from host.regmap import Regs
from phantom.trace import TraceHeader
from tb.pcie_access import SimPcieAccess
from tb.tracer import Classifier, Tracer

BAR0_SIZE = 64 * 1024
MPS_CODES = {128: 0, 256: 1, 512: 2}
MRRS_CODES = {128: 0, 256: 1, 512: 2, 1024: 3, 2048: 4, 4096: 5}


@dataclass
class LinkConfig:
    """Link parameters a test runs under (swept by the tests)."""

    mps: int = 256          # Max_Payload_Size, bytes
    mrrs: int = 512         # Max_Read_Request_Size, bytes
    rcb: int = 64           # Read Completion Boundary of the root complex, bytes
    split_on_all_rcb: bool = False  # root complex splits completions at every RCB
    tx_backpressure: bool = False   # MAC TX sink pauses
    payload_keep: int = 4096  # payload bytes kept per TLP in the trace

    def __post_init__(self) -> None:
        if self.mps not in MPS_CODES:
            raise ValueError(f"mps must be one of {sorted(MPS_CODES)}, got {self.mps!r}")
        if self.mrrs not in MRRS_CODES:
            raise ValueError(f"mrrs must be one of {sorted(MRRS_CODES)}, got {self.mrrs!r}")
        if self.rcb not in (64, 128):
            raise ValueError(f"rcb must be 64 or 128, got {self.rcb!r}")

    @classmethod
    def from_env(cls) -> "LinkConfig":
        """Parameters passed by the pytest runner through the simulator's environment."""
        env = os.environ
        return cls(
            mps=int(env.get("NIC_MPS", 256)), mrrs=int(env.get("NIC_MRRS", 512)), rcb=int(env.get("NIC_RCB", 64)),
            split_on_all_rcb=env.get("NIC_SPLIT_RCB", "0") == "1",
            tx_backpressure=env.get("NIC_TX_BACKPRESSURE", "0") == "1",
            payload_keep=int(env.get("NIC_PAYLOAD_KEEP", 4096)),
        )


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
    def __init__(self, dut, link: LinkConfig | None = None, trace_path: str | None = None, scenario: str = ""):
        self.dut = dut
        self.link = link or LinkConfig.from_env()
        self.log = logging.getLogger("cocotb.tb")
        self.log.setLevel(logging.INFO)
        self.regs = Regs()
        self.data_width = len(dut.m_axis_rq_tdata)

        self.rc = RootComplex()
        self.rc.max_payload_size = MPS_CODES[self.link.mps]
        self.rc.max_payload_size_supported = MPS_CODES[self.link.mps]
        self.rc.read_completion_boundary = self.link.rcb == 128
        self.rc.split_on_all_rcb = self.link.split_on_all_rcb

        gen, lanes = (3, 2) if self.data_width == 64 else (3, 4) if self.data_width == 128 else (3, 8)
        self.dev = UltraScalePlusPcieDevice(
            pcie_generation=gen, pcie_link_width=lanes, user_clk_frequency=250e6, alignment="dword",
            max_payload_size=512, enable_client_tag=True, enable_extended_tag=False,
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
        self.dev.functions[0].vendor_id = 0x1234
        self.dev.functions[0].device_id = 0x4E31
        self.dev.functions[0].configure_bar(0, BAR0_SIZE)
        self.dev.functions[0].configure_bar(2, 32, io=True)  # legacy IO BAR: the NIC answers IO with UR
        self.rc.make_port().connect(self.dev)
        self.dev_port = self.dev.upstream_port
        self.rc_port = self.dev_port.other

        self.mac_rx = AxiStreamSource(AxiStreamBus.from_prefix(dut, "s_axis_rx"), dut.user_clk, dut.user_reset)
        self.mac_tx = AxiStreamSink(AxiStreamBus.from_prefix(dut, "m_axis_tx"), dut.user_clk, dut.user_reset)
        self.mac_rx.log.setLevel(logging.WARNING)
        self.mac_tx.log.setLevel(logging.WARNING)
        if self.link.tx_backpressure:
            self.mac_tx.set_pause_generator(self._pause_pattern())

        header = TraceHeader(mps=self.link.mps, mrrs=self.link.mrrs, rcb=self.link.rcb, tag_width=5,
                             link_speed=gen, link_width=lanes, data_width=self.data_width, scenario=scenario,
                             simulator=os.environ.get("NIC_SIM", cocotb.SIM_NAME.lower() if cocotb.SIM_NAME else ""),
                             payload_bytes_kept=self.link.payload_keep)
        self.tracer = Tracer(self.rc_port, self.dev_port, header, trace_path, self.link.payload_keep)
        self.faults = FaultInjector(self.rc)
        self.access: SimPcieAccess | None = None
        self.driver: NicDriver | None = None
        self.fn = None

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
        """Enumerate, assign BARs, program MPS/MRRS/RCB, enable bus mastering and MSI-X, start the driver."""
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
        self.access = SimPcieAccess(self.rc, self.fn)
        self.tracer.classifier = Classifier(
            self.access.bar_addr, BAR0_SIZE, {self.regs.REG_TXQ_PROD, self.regs.REG_RXQ_PROD},
            self.access.find, (0, 0))
        await self.fn.alloc_irq_vectors(1, self.regs.MSIX_VECTORS)
        self.fn.request_irq(0, self.access.irq_handler)
        msi_lo = self.fn.msi_vectors[0].addr
        self.tracer.classifier.msi_range = (msi_lo, msi_lo + 16)
        self.driver = NicDriver(self.access, self.regs, driver_config or DriverConfig())
        if start_driver:
            await self.driver.init()

    async def read_reg(self, name: str) -> int:
        return await self.access.mmio_read32(getattr(self.regs, name))

    async def write_reg(self, name: str, value: int) -> None:
        await self.access.mmio_write32(getattr(self.regs, name), value)

    async def send_frame(self, data: bytes) -> None:
        """A frame arrives at the MAC (RX direction)."""
        await self.mac_rx.send(AxiStreamFrame(data))

    async def recv_frame(self) -> bytes:
        """A frame leaves on the MAC (TX direction)."""
        f = await self.mac_tx.recv()
        return bytes(f.tdata)

    async def settle(self, ns: int = 2000) -> None:
        await Timer(ns, "ns")

    def close(self) -> None:
        self.tracer.close()
