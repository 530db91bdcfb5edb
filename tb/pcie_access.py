"""host.pcie.PcieAccess over cocotbext-pcie's RootComplex: BAR0 window, host memory regions, MSI-X events."""

from __future__ import annotations

import bisect

from cocotb.triggers import Event, First, Timer

from host.pcie import BufferKind, DmaBuffer, PcieAccess


class SimPcieAccess(PcieAccess):
    def __init__(self, rc, dev_fn, bar_index: int = 0):
        self.rc = rc
        self.fn = dev_fn
        self.bar = dev_fn.bar_window[bar_index]
        self.bar_addr = dev_fn.bar_addr[bar_index]
        self._bufs: list[DmaBuffer] = []
        self._starts: list[int] = []
        self._mem: dict[int, object] = {}
        self._irq_event = Event()
        self._irq_count = 0

    # MMIO
    async def mmio_read32(self, offset: int) -> int:
        return await self.bar.read_dword(offset)

    async def mmio_write32(self, offset: int, value: int) -> None:
        await self.bar.write_dword(offset, value)

    async def mmio_read(self, offset: int, length: int) -> bytes:
        return bytes(await self.bar.read(offset, length))

    async def mmio_write(self, offset: int, data: bytes) -> None:
        await self.bar.write(offset, data)

    # host memory
    def dma_alloc(self, size: int, kind: BufferKind) -> DmaBuffer:
        size = max(size, 1)
        alloc = (size + 4095) & ~4095
        addr, mem = self.rc.alloc_region(alloc)
        buf = DmaBuffer(addr, size, kind)
        i = bisect.bisect(self._starts, addr)
        self._starts.insert(i, addr)
        self._bufs.insert(i, buf)
        self._mem[addr] = mem
        return buf

    def find(self, addr: int) -> DmaBuffer | None:
        i = bisect.bisect(self._starts, addr) - 1
        if i >= 0 and self._bufs[i].contains(addr):
            return self._bufs[i]
        return None

    def _locate(self, addr: int, length: int):
        buf = self.find(addr)
        if buf is None or not buf.contains(addr, length):
            raise ValueError(f"host memory access {addr:#x}+{length} is outside every DMA buffer")
        return self._mem[buf.addr], addr - buf.addr

    def dma_read(self, addr: int, length: int) -> bytes:
        mem, off = self._locate(addr, length)
        return bytes(mem[off:off + length])

    def dma_write(self, addr: int, data: bytes) -> None:
        mem, off = self._locate(addr, len(data))
        mem[off:off + len(data)] = data

    # interrupts
    async def irq_handler(self) -> None:
        self._irq_count += 1
        self._irq_event.set()
        self._irq_event = Event()  # waiters already woken; later waiters wait for the next one

    async def wait_irq(self, timeout_ns: int, since: int | None = None) -> bool:
        since = self._irq_count if since is None else since
        if self._irq_count > since:
            return True
        if self._irq_event.is_set():
            self._irq_event.clear()
        await First(self._irq_event.wait(), Timer(timeout_ns, "ns"))
        return self._irq_count > since

    @property
    def irq_count(self) -> int:
        return self._irq_count
