"""The small PCIe-access contract the NIC driver is written against.

The same driver code runs over cocotbext-pcie's simulated root complex (tb/pcie_access.py) and could run over
a real device (BAR mmap + hugepage DMA memory + eventfd interrupts) by implementing these methods.
"""

from __future__ import annotations

import abc
import enum
from dataclasses import dataclass


class BufferKind(enum.Enum):
    """What a DMA buffer holds; capture uses it to name the TLPs that touch it."""

    TX_RING = "tx_ring"
    TX_CPL_RING = "tx_cpl_ring"
    RX_RING = "rx_ring"
    RX_CPL_RING = "rx_cpl_ring"
    TX_DATA = "tx_data"
    RX_DATA = "rx_data"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class DmaBuffer:
    addr: int          # bus address the device uses
    size: int          # bytes
    kind: BufferKind   # what it holds

    def contains(self, addr: int, length: int = 1) -> bool:
        return self.addr <= addr and addr + length <= self.addr + self.size


class PcieAccess(abc.ABC):
    """MMIO to BAR0, DMA-able host memory, and interrupt waits."""

    @abc.abstractmethod
    async def mmio_read32(self, offset: int) -> int:
        """Read one 32-bit register at a BAR0 byte offset."""

    @abc.abstractmethod
    async def mmio_write32(self, offset: int, value: int) -> None:
        """Write one 32-bit register (posted)."""

    @abc.abstractmethod
    async def mmio_read(self, offset: int, length: int) -> bytes:
        """Read any byte range of BAR0 (byte enables follow from offset and length)."""

    @abc.abstractmethod
    async def mmio_write(self, offset: int, data: bytes) -> None:
        """Write any byte range of BAR0 (posted; byte enables follow from offset and length)."""

    @abc.abstractmethod
    def dma_alloc(self, size: int, kind: BufferKind) -> DmaBuffer:
        """Allocate zeroed, page-aligned host memory the device may access."""

    @abc.abstractmethod
    def dma_read(self, addr: int, length: int) -> bytes:
        """Read host memory (what the device wrote)."""

    @abc.abstractmethod
    def dma_write(self, addr: int, data: bytes) -> None:
        """Write host memory (what the device will read)."""

    @abc.abstractmethod
    async def wait_irq(self, timeout_ns: int, since: int | None = None) -> bool:
        """Wait until irq_count exceeds ``since`` (default: its value now); False on timeout.

        Read irq_count before polling the rings and pass it as ``since`` so an interrupt that lands
        between the poll and the wait is not lost; any number of waiters may wait at once.
        """

    @property
    @abc.abstractmethod
    def irq_count(self) -> int:
        """Interrupts received so far."""

    async def think(self, what: str) -> None:
        """CPU time the driver spends on ``what`` ("tx_frame", "rx_frame", ...) between device accesses.

        On real hardware the CPU spends that time by itself, so the default does nothing; a simulated host
        waits a modelled duration here, which is what gives a capture realistic host-side timing.
        """
        return None
