"""The tap on a device that is not our NIC: cocotbext-pcie's own Python memory endpoint, doing MMIO and DMA."""

import os

import cocotb
from cocotb.triggers import Timer
from cocotbext.pcie.core import Device, MemoryEndpoint, RootComplex

from phantom.memmap import Region, RegionKind
from phantom.trace import Direction, TlpType
from tb.host_model import fix_config_write_completions
from tb.tap import attach


class DmaEndpoint(MemoryEndpoint):
    """A device with one 64 KB memory BAR that also masters DMA (reads and writes host memory)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.vendor_id = 0x10EE
        self.device_id = 0x7777
        self.bar0 = self.add_mem_region(64 * 1024)


async def second_device(fix_cfg_writes: bool):
    rc = RootComplex()
    rc.max_payload_size = 1      # 256 B
    rc.max_read_request_size = 2  # 512 B
    ep = DmaEndpoint()
    dev = Device(ep)
    if fix_cfg_writes:
        fix_config_write_completions(dev)   # cocotbext-pcie answers config writes with byte count 0
    rc.make_port().connect(dev)
    path = os.environ["TAP_TRACE"]
    tap = attach(rc, dev, path, packet_payload_keep=-1)
    chk = tap.add_checker()

    await rc.enumerate()
    fn = rc.find_device(ep.pcie_id)
    await fn.enable_device()
    await fn.set_master()
    host_addr, host_mem = rc.alloc_region(16 * 1024)
    tap.set_memory_map([Region(host_addr, 16 * 1024, RegionKind.TX_DATA)])  # only to name the DMA region
    tap.commit(scenario="tap-second-device")

    # host MMIO to the device's BAR
    bar = fn.bar_window[0]
    await bar.write(0x100, bytes(range(64)))
    assert await bar.read(0x100, 64) == bytes(range(64))
    await bar.write_dword(0x8, 0xDEADBEEF)
    assert await bar.read_dword(0x8) == 0xDEADBEEF
    # the device masters DMA: a 3000 B read crosses a 4 KB page and splits at MRRS; then a write back
    host_mem[4000:7000] = bytes((i * 7) & 0xFF for i in range(3000))
    got = await ep.mem_read(host_addr + 4000, 3000)
    assert bytes(got) == bytes((i * 7) & 0xFF for i in range(3000))
    await ep.mem_write(host_addr + 8192, b"\x5a" * 1500)
    await Timer(2, "us")
    assert bytes(host_mem[8192:9692]) == b"\x5a" * 1500
    tap.close()

    h = tap.header
    assert (h.mps, h.mrrs, h.device["vendor_id"], h.device["device_id"]) == (256, 512, 0x10EE, 0x7777)
    return tap, chk.report()


@cocotb.test()
async def tap_second_device(dut):
    tap, rep = await second_device(fix_cfg_writes=True)
    assert rep.ok and not rep.violated(), rep.format()
    ups = {t for (d, t) in tap.counts if d == Direction.UP}
    downs = {t for (d, t) in tap.counts if d == Direction.DOWN}
    assert {TlpType.MRd32, TlpType.MWr32, TlpType.CplD} <= ups | downs, tap.counts
    assert tap.count(Direction.UP, TlpType.MRd32, TlpType.MRd64) >= 6   # split at MRRS and the 4 KB boundary


@cocotb.test()
async def tap_sees_the_config_write_artefact(dut):
    """Without the fix the checker names cocotbext-pcie's config-write completions, and nothing else."""
    tap, rep = await second_device(fix_cfg_writes=False)
    assert rep.violated() == {"cpl_byte_count"} and rep.counts["cpl_byte_count"] >= 5, rep.format()


@cocotb.test()
async def tap_records_a_refused_tlp(dut):
    """A device TLP that cocotbext-pcie's own validation refuses (a read across 4 KB) is in the trace and the live
    check before the model's assertion ends the run (the planted 4 KB fault of the NIC fails this way)."""
    from cocotbext.pcie.core.tlp import Tlp, TlpType as PcieTlpType

    rc = RootComplex()
    ep = DmaEndpoint()
    dev = Device(ep)
    rc.make_port().connect(dev)
    tap = attach(rc, dev, os.environ["TAP_TRACE"])
    chk = tap.add_checker()
    await rc.enumerate()
    fn = rc.find_device(ep.pcie_id)
    await fn.enable_device()
    await fn.set_master()
    host_addr, _ = rc.alloc_region(16 * 1024)
    tap.set_memory_map([Region(host_addr, 16 * 1024, RegionKind.TX_DATA)])
    tap.commit(scenario="tap-refused")
    tlp = Tlp()
    tlp.fmt_type = PcieTlpType.MEM_READ_64
    tlp.requester_id = ep.pcie_id
    tlp.tag = 3
    tlp.set_addr_be(host_addr + 4000, 256)
    refused = False
    try:
        await dev.upstream_send(tlp)
    except AssertionError:
        refused = True
    tap.close()
    assert refused and tap.refused == 1
    rep = chk.report()
    assert rep.counts.get("mem_4kb") == 1, rep.format()
