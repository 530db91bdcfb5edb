"""NIC driver: shaped like a Linux network driver (probe/init, rings, xmit, NAPI-style receive, interrupts, stats).

Written only against host.pcie.PcieAccess and the register names of rtl/nic_regs.vh.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass, field

from host.pcie import BufferKind, DmaBuffer, PcieAccess
from host.regmap import Regs

log = logging.getLogger(__name__)


class NicError(RuntimeError):
    pass


@dataclass
class DriverConfig:
    """Ring sizes and buffer sizes the driver sets up."""

    tx_ring_size: int = 256       # TX descriptors (power of two)
    rx_ring_size: int = 256       # RX descriptors (power of two)
    rx_buf_size: int = 16384      # bytes per RX buffer
    tx_buf_size: int = 16384      # bytes per TX bounce buffer
    irq_coalesce_count: int = 1   # events per interrupt
    irq_coalesce_timer: int = 0   # cycles after the first event (0: off)
    cpl_timeout: int | None = None  # DMA completion timeout in cycles (None: device default)
    tag_hold: int | None = None     # cycles a timed-out tag stays quarantined (None: device default)
    cpl_credits: tuple[int, int] | None = None  # completion-buffer limits (CplH, CplD) the device may use
    irq_wait_ns: int = 10_000_000  # longest wait for an interrupt before checking for a stopped queue
    buf_offset: int = 0            # bytes from the start of each packet buffer's page to the buffer (DWORD multiple)
    relaxed_ordering: bool = True  # ask for Relaxed Ordering on packet data (effective if Device Control allows)
    no_snoop: bool = False         # ask for No Snoop on packet data (effective if Device Control allows)
    start_wait_ns: int | None = None  # how long a queue (re)start may wait for the device to drain old DMA
                                       # (None: twice the completion timeout, plus 20 us)

    def __post_init__(self) -> None:
        for name in ("tx_ring_size", "rx_ring_size"):
            v = getattr(self, name)
            if v < 2 or v & (v - 1):
                raise ValueError(f"{name} must be a power of two >= 2, got {v!r}")
        for name in ("rx_buf_size", "tx_buf_size"):
            v = getattr(self, name)
            if v <= 0 or v % 4:
                raise ValueError(f"{name} must be a positive multiple of 4, got {v!r}")
        if self.buf_offset < 0 or self.buf_offset % 4 or self.buf_offset >= 4096:
            raise ValueError(f"buf_offset must be a DWORD multiple in [0, 4096), got {self.buf_offset!r}")
        if self.cpl_credits is not None:
            h, d = self.cpl_credits
            if not (1 <= h <= 256 and 1 <= d <= 4095):
                raise ValueError(f"cpl_credits must be (1..256 CplH, 1..4095 CplD), got {self.cpl_credits!r}")
        if self.start_wait_ns is not None and self.start_wait_ns <= 0:
            raise ValueError(f"start_wait_ns must be positive, got {self.start_wait_ns!r}")


@dataclass
class Ring:
    size: int
    desc: DmaBuffer
    cpl: DmaBuffer
    bufs: list[DmaBuffer]
    prod: int = 0          # next descriptor the driver fills
    clean: int = 0         # next completion the driver expects
    phase: int = 0         # expected phase bit of the next completion
    lens: dict[int, int] = field(default_factory=dict)

    @property
    def in_flight(self) -> int:
        return (self.prod - self.clean) % self.size

    @property
    def free(self) -> int:
        return self.size - 1 - self.in_flight


class NicDriver:
    def __init__(self, access: PcieAccess, regs: Regs | None = None, config: DriverConfig | None = None):
        self.pci = access
        self.regs = regs or Regs()
        self.config = config or DriverConfig()
        self.tx: Ring | None = None
        self.rx: Ring | None = None
        self.rx_queue: list[bytes] = []
        self.rx_status: list[int] = []
        self.rx_pending_think = 0     # received frames whose per-frame CPU work is still to be spent
        self.tx_done = 0
        self.cpl_timeout_cycles = 250_000  # read from the device at init

    # setup ------------------------------------------------------------------------------------
    async def init(self) -> None:
        r = self.regs
        ident = await self.pci.mmio_read32(r.REG_ID)
        if ident != r.NIC_ID_VALUE:
            raise NicError(f"unexpected device id {ident:#010x} (expected {r.NIC_ID_VALUE:#010x})")
        c = self.config
        if c.cpl_timeout is not None:
            await self.pci.mmio_write32(r.REG_CPL_TIMEOUT, c.cpl_timeout)
        self.cpl_timeout_cycles = await self.pci.mmio_read32(r.REG_CPL_TIMEOUT)
        if c.tag_hold is not None:
            await self.pci.mmio_write32(r.REG_TAG_HOLD, c.tag_hold)
        if c.cpl_credits is not None:
            await self.pci.mmio_write32(r.REG_DMA_CREDITS, c.cpl_credits[0] | c.cpl_credits[1] << 16)
        ctrl = (c.relaxed_ordering << r.CTRL_RO_BIT) | (c.no_snoop << r.CTRL_NS_BIT)
        if ctrl:
            await self.pci.mmio_write32(r.REG_CTRL, ctrl)
        await self.pci.mmio_write32(r.REG_IRQ_COAL_COUNT, c.irq_coalesce_count)
        await self.pci.mmio_write32(r.REG_IRQ_COAL_TIMER, c.irq_coalesce_timer)
        self.tx = self._alloc_ring(c.tx_ring_size, BufferKind.TX_RING, BufferKind.TX_CPL_RING,
                                   BufferKind.TX_DATA, c.tx_buf_size)
        self.rx = self._alloc_ring(c.rx_ring_size, BufferKind.RX_RING, BufferKind.RX_CPL_RING,
                                   BufferKind.RX_DATA, c.rx_buf_size)
        await self._setup_queue("TXQ", self.tx)
        await self._setup_queue("RXQ", self.rx)
        # post every RX buffer but one (a full ring has prod == cons - 1)
        for i in range(self.rx.size - 1):
            self._write_desc(self.rx, i, self.rx.bufs[i].addr, c.rx_buf_size)
        self.rx.prod = self.rx.size - 1
        await self.pci.mmio_write32(r.REG_RXQ_PROD, self.rx.prod)
        en = (1 << r.IRQ_TX_BIT) | (1 << r.IRQ_RX_BIT) | (1 << r.IRQ_ERR_BIT)
        await self.pci.mmio_write32(r.REG_IRQ_ENABLE, en)

    def _alloc_ring(self, size: int, dkind: BufferKind, ckind: BufferKind, bkind: BufferKind, bsize: int) -> Ring:
        desc = self.pci.dma_alloc(size * self.regs.DESC_BYTES, dkind)
        cpl = self.pci.dma_alloc(size * self.regs.CPL_BYTES, ckind)
        off = self.config.buf_offset
        bufs = []
        for _ in range(size):
            b = self.pci.dma_alloc(bsize + off, bkind)
            bufs.append(DmaBuffer(b.addr + off, bsize, bkind) if off else b)
        return Ring(size, desc, cpl, bufs)

    async def _setup_queue(self, q: str, ring: Ring) -> None:
        r = self.regs
        await self.pci.mmio_write32(getattr(r, f"REG_{q}_CTRL"), 0)
        await self.pci.mmio_write32(getattr(r, f"REG_{q}_BASE_LO"), ring.desc.addr & 0xFFFFFFFF)
        await self.pci.mmio_write32(getattr(r, f"REG_{q}_BASE_HI"), ring.desc.addr >> 32)
        await self.pci.mmio_write32(getattr(r, f"REG_{q}_CPL_BASE_LO"), ring.cpl.addr & 0xFFFFFFFF)
        await self.pci.mmio_write32(getattr(r, f"REG_{q}_CPL_BASE_HI"), ring.cpl.addr >> 32)
        await self.pci.mmio_write32(getattr(r, f"REG_{q}_SIZE"), ring.size)
        await self.pci.mmio_write32(getattr(r, f"REG_{q}_CTRL"), 1 << r.QCTRL_ENABLE_BIT)
        # the device may still be draining DMA of the queue's previous life (its reads end at the latest with
        # their completion timeout): poll, but never wait forever
        wait_ns = self.config.start_wait_ns or 2 * self.cpl_timeout_cycles * 4 + 20_000
        waited = 0
        while True:
            status = await self.pci.mmio_read32(getattr(r, f"REG_{q}_STATUS"))
            if status & (1 << r.QSTAT_ACTIVE_BIT):
                return
            # while it drains, other bits may still change (a release pass may clear QUAR): decide after
            if not status & (1 << r.QSTAT_DRAIN_BIT) or waited >= wait_ns:
                break
            await self.pci.wait_irq(1000)   # a microsecond between polls (an interrupt ends it early)
            waited += 1000
        raise NicError(f"{q} did not start: {self.describe_status(status)}")

    def describe_status(self, status: int) -> str:
        """Queue status bits by name, e.g. 'TIMEOUT, QUAR (status 0x28)'."""
        r = self.regs
        names = [n for n in ("ACTIVE", "SIZE_ERR", "DMA_ERR", "TIMEOUT", "DESC_ERR", "QUAR", "DRAIN")
                 if status & (1 << getattr(r, f"QSTAT_{n}_BIT"))]
        return f"{', '.join(names) or 'stopped'} (status {status:#x})"

    async def reset_queue(self, q: str) -> None:
        """Disable and restart a queue (what a driver does after an error): rings start empty again.

        The device drains the queue's outstanding DMA, frees the tags its timed-out reads hold once they are
        older than the hold time, and reports NicError if the queue cannot start (e.g. tags still exhausted).
        """
        ring = self.tx if q == "TXQ" else self.rx
        assert ring is not None, "init() first"
        ring.prod = ring.clean = ring.phase = 0
        ring.lens.clear()
        for i in range(ring.size):  # stale completions must not look valid in the new life
            self.pci.dma_write(ring.cpl.addr + i * self.regs.CPL_BYTES, bytes(self.regs.CPL_BYTES))
        await self._setup_queue(q, ring)
        if q == "RXQ":
            for i in range(ring.size - 1):
                self._write_desc(ring, i, ring.bufs[i].addr, self.config.rx_buf_size)
            ring.prod = ring.size - 1
            await self.pci.mmio_write32(self.regs.REG_RXQ_PROD, ring.prod)

    def _write_desc(self, ring: Ring, idx: int, addr: int, length: int) -> None:
        self.pci.dma_write(ring.desc.addr + idx * self.regs.DESC_BYTES, struct.pack("<QII", addr, length, 0))

    # transmit ---------------------------------------------------------------------------------
    async def xmit(self, frame: bytes) -> None:
        await self.xmit_batch([frame])

    async def xmit_batch(self, frames: list[bytes]) -> None:
        """Queue frames and ring the doorbell once per batch (waits for ring space as needed)."""
        assert self.tx is not None, "init() first"
        i = 0
        while i < len(frames):
            tok = self.pci.irq_count
            self.poll_tx()
            n = min(self.tx.free, len(frames) - i)
            if n == 0:
                if not await self.pci.wait_irq(self.config.irq_wait_ns, since=tok):
                    self.poll_tx()
                    if self.tx.free == 0:
                        await self._check_errors("TXQ")
                        raise NicError("TX ring full and no completion came")
                continue
            for f in frames[i:i + n]:
                if not 0 < len(f) <= min(self.config.tx_buf_size, self.regs.MAX_FRAME_BYTES):
                    raise ValueError(f"frame length {len(f)} out of range 1..{self.config.tx_buf_size}")
                await self.pci.think("tx_frame")
                slot = self.tx.prod
                buf = self.tx.bufs[slot]
                self.pci.dma_write(buf.addr, f)
                self._write_desc(self.tx, slot, buf.addr, len(f))
                self.tx.lens[slot] = len(f)
                self.tx.prod = (slot + 1) % self.tx.size
            i += n
            await self.pci.mmio_write32(self.regs.REG_TXQ_PROD, self.tx.prod)

    def poll_tx(self) -> int:
        """Reap TX completions (phase-bit protocol); returns how many."""
        assert self.tx is not None
        n = 0
        while self.tx.clean != self.tx.prod:
            idx, status, length, valid, phase = self._read_cpl(self.tx, self.tx.clean)
            if not valid or phase != self.tx.phase:
                break
            if idx != self.tx.clean:
                raise NicError(f"TX completion for descriptor {idx}, expected {self.tx.clean}")
            self.tx.clean = (self.tx.clean + 1) % self.tx.size
            if self.tx.clean == 0:
                self.tx.phase ^= 1
            n += 1
        self.tx_done += n
        return n

    async def wait_tx_done(self, timeout_ns: int = 100_000_000) -> None:
        assert self.tx is not None
        while True:
            tok = self.pci.irq_count
            self.poll_tx()
            if self.tx.clean == self.tx.prod:
                return
            if not await self.pci.wait_irq(timeout_ns, since=tok):
                self.poll_tx()
                if self.tx.clean == self.tx.prod:
                    return
                await self._check_errors("TXQ")
                raise NicError(f"TX stalled: {self.tx.in_flight} frames in flight")

    # receive ----------------------------------------------------------------------------------
    def poll_rx(self) -> int:
        """NAPI-style: reap RX completions, copy frames out, repost buffers (doorbell by caller)."""
        assert self.rx is not None
        n = 0
        while True:
            idx, status, length, valid, phase = self._read_cpl(self.rx, self.rx.clean)
            if not valid or phase != self.rx.phase:
                break
            if idx != self.rx.clean:
                raise NicError(f"RX completion for descriptor {idx}, expected {self.rx.clean}")
            buf = self.rx.bufs[idx]
            self.rx_queue.append(self.pci.dma_read(buf.addr, length))
            self.rx_pending_think += 1
            self.rx_status.append(status)
            # repost this buffer at the producer slot
            slot = self.rx.prod
            self._write_desc(self.rx, slot, self.rx.bufs[slot].addr, self.config.rx_buf_size)
            self.rx.prod = (slot + 1) % self.rx.size
            self.rx.clean = (self.rx.clean + 1) % self.rx.size
            if self.rx.clean == 0:
                self.rx.phase ^= 1
            n += 1
        return n

    async def recv(self, timeout_ns: int = 100_000_000) -> bytes:
        """Next received frame (waits for an interrupt when none is ready)."""
        while self.rx_pending_think:  # the CPU work of frames reaped by poll_rx (which cannot wait)
            self.rx_pending_think -= 1
            await self.pci.think("rx_frame")
        while not self.rx_queue:
            tok = self.pci.irq_count
            if self.poll_rx():
                await self.pci.mmio_write32(self.regs.REG_RXQ_PROD, self.rx.prod)
                continue
            if not await self.pci.wait_irq(timeout_ns, since=tok):
                if self.poll_rx():
                    await self.pci.mmio_write32(self.regs.REG_RXQ_PROD, self.rx.prod)
                    continue
                await self._check_errors("RXQ")
                raise NicError("RX timeout: no frame")
        self.rx_status.pop(0)
        return self.rx_queue.pop(0)

    def _read_cpl(self, ring: Ring, idx: int) -> tuple[int, int, int, int, int]:
        dw0, length, _, dw3 = struct.unpack("<IIII", self.pci.dma_read(ring.cpl.addr + idx * self.regs.CPL_BYTES, 16))
        return dw0 & 0xFFFF, (dw0 >> 16) & 0xFF, length, dw3 >> 31, dw3 & 1

    # errors and statistics --------------------------------------------------------------------
    async def queue_status(self, q: str) -> int:
        return await self.pci.mmio_read32(getattr(self.regs, f"REG_{q}_STATUS"))

    async def _check_errors(self, q: str) -> None:
        s = await self.queue_status(q)
        bits = [n for n in ("SIZE_ERR", "DMA_ERR", "TIMEOUT", "DESC_ERR", "QUAR")
                if s & (1 << getattr(self.regs, f"QSTAT_{n}_BIT"))]
        if bits:
            raise NicError(f"{q} stopped: {self.describe_status(s)}")

    async def stats(self) -> dict[str, int]:
        out = {}
        for name in self.regs.stat_names():
            out[name[len("REG_STAT_"):].lower()] = await self.pci.mmio_read32(getattr(self.regs, name))
        return out
