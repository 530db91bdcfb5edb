"""host.pcie.PcieAccess over cocotbext-pcie's RootComplex: BAR0 window, host memory regions, MSI-X events.

With a ``HostTiming`` it also spends the host model's CPU time (``think``), delays interrupt delivery to the
driver, and places DMA memory where the model says (above 4 GB by default).
"""

from __future__ import annotations

import bisect

import cocotb
from cocotb.triggers import Event, First, Timer

from host.pcie import BufferKind, DmaBuffer, PcieAccess

# where DMA memory lives when the host model asks for addresses above 4 GB (1 GB of it)
HIGH_DMA_BASE = 0x2_0000_0000
HIGH_DMA_SIZE = 0x4000_0000


class SimPcieAccess(PcieAccess):
    def __init__(self, rc, dev_fn, bar_index: int = 0, timing=None, pool: bool = True):
        self.rc = rc
        self.fn = dev_fn
        self.bar = dev_fn.bar_window[bar_index]
        self.bar_addr = dev_fn.bar_addr[bar_index]
        self.timing = timing
        self._pool = None
        if pool and timing is not None and timing.model.dma_above_4g:
            self._pool = rc.mem_address_space.create_pool(HIGH_DMA_BASE, HIGH_DMA_SIZE)
        self._bufs: list[DmaBuffer] = []
        self._starts: list[int] = []
        self._mem: dict[int, object] = {}
        self._size: dict[int, int] = {}   # bytes of host memory behind each buffer start
        self._irq_event = Event()
        self._irq_count = 0

    # MMIO
    async def mmio_read32(self, offset: int) -> int:
        v = await self.bar.read_dword(offset)
        await self.think("mmio_read")
        return v

    async def mmio_write32(self, offset: int, value: int) -> None:
        await self.think("mmio_write")
        await self.bar.write_dword(offset, value)

    async def mmio_read(self, offset: int, length: int) -> bytes:
        v = bytes(await self.bar.read(offset, length))
        await self.think("mmio_read")
        return v

    async def mmio_write(self, offset: int, data: bytes) -> None:
        await self.think("mmio_write")
        await self.bar.write(offset, data)

    async def think(self, what: str) -> None:
        if self.timing is not None:
            await self.timing.think(what)

    # host memory
    def dma_alloc(self, size: int, kind: BufferKind) -> DmaBuffer:
        size = max(size, 1)
        alloc = (size + 4095) & ~4095
        if self._pool is not None:
            region = self._pool.alloc_region(alloc)
            addr, mem = region.get_absolute_address(0), region.mem
        else:
            addr, mem = self.rc.alloc_region(alloc)
        buf = DmaBuffer(addr, size, kind)
        i = bisect.bisect(self._starts, addr)
        self._starts.insert(i, addr)
        self._bufs.insert(i, buf)
        self._mem[addr] = mem
        self._size[addr] = alloc
        return buf

    def map_fixed(self, base: int, size: int, kind: BufferKind) -> DmaBuffer:
        """Host memory at a given address (a replay puts rings and buffers where the trace had them)."""
        from cocotbext.axi.address_space import MemoryRegion

        pool = self.rc.mem_pool if base + size <= 0x8000_0000 else self._high_pool_for(base, size)
        region = MemoryRegion(size)
        pool.register_region(region, base - pool.base)
        buf = DmaBuffer(base, size, kind)
        i = bisect.bisect(self._starts, base)
        self._starts.insert(i, base)
        self._bufs.insert(i, buf)
        self._mem[base] = region.mem
        self._size[base] = size
        return buf

    def _high_pool_for(self, base: int, size: int):
        if self._pool is not None and self._pool.base <= base and base + size <= self._pool.base + self._pool.size:
            return self._pool
        lo = base & ~(HIGH_DMA_SIZE - 1)
        if base + size > lo + HIGH_DMA_SIZE:
            raise ValueError(f"host memory {base:#x}+{size:#x} spans a 1 GB boundary: not supported")
        if self._pool is not None:
            raise ValueError(f"host memory {base:#x}+{size:#x} is outside the DMA pool at {self._pool.base:#x}")
        self._pool = self.rc.mem_address_space.create_pool(lo, HIGH_DMA_SIZE)
        return self._pool

    def find(self, addr: int) -> DmaBuffer | None:
        i = bisect.bisect(self._starts, addr) - 1
        if i >= 0 and self._bufs[i].contains(addr):
            return self._bufs[i]
        return None

    def buffers(self) -> list[DmaBuffer]:
        """Every DMA buffer allocated so far, by address."""
        return list(self._bufs)

    def _locate(self, addr: int, length: int):
        # a buffer handed out with an offset (DriverConfig.buf_offset) lies inside an allocation
        i = bisect.bisect(self._starts, addr) - 1
        if i < 0:
            raise ValueError(f"host memory access {addr:#x}+{length} is outside every DMA buffer")
        base = self._starts[i]
        if addr + length > base + self._size[base]:
            raise ValueError(f"host memory access {addr:#x}+{length} is outside every DMA buffer")
        return self._mem[base], addr - base

    def dma_read(self, addr: int, length: int) -> bytes:
        mem, off = self._locate(addr, length)
        return bytes(mem[off:off + length])

    def dma_write(self, addr: int, data: bytes) -> None:
        mem, off = self._locate(addr, len(data))
        mem[off:off + len(data)] = data

    # interrupts
    async def irq_handler(self) -> None:
        if self.timing is not None and self.timing.model.irq.median_ns > 0:
            cocotb.start_soon(self._deliver_irq_later())
        else:
            self._deliver_irq()

    async def _deliver_irq_later(self) -> None:
        await self.think("irq")
        self._deliver_irq()

    def _deliver_irq(self) -> None:
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
