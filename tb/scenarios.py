"""Named traffic scenarios for `make sim SCENARIO=...` (and the traces later issues train on)."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Scenario:
    """A traffic mix: how many frames, which way, what sizes, how the driver batches them."""

    name: str
    frames: int                 # total frames (TX + RX)
    tx_fraction: float          # share of frames sent by the host (the rest arrive at the MAC)
    sizes: tuple[tuple[int, int, float], ...]  # (min, max, weight) size bands in bytes
    batch: int = 16             # TX frames per doorbell
    mps: int = 256
    mrrs: int = 512
    rcb: int = 64
    irq_coalesce_count: int = 8
    irq_coalesce_timer: int = 500   # cycles
    host: str = "realistic"         # host profile (tb.host_model.HOST_PROFILES)
    help: str = ""

    def __post_init__(self) -> None:
        if self.frames <= 0:
            raise ValueError(f"frames must be positive, got {self.frames!r}")
        if not 0.0 <= self.tx_fraction <= 1.0:
            raise ValueError(f"tx_fraction must be in [0, 1], got {self.tx_fraction!r}")
        for lo, hi, w in self.sizes:
            if not 1 <= lo <= hi <= 16384 or w <= 0:
                raise ValueError(f"bad size band ({lo}, {hi}, {w})")
        from tb.host_model import get_host_profile

        get_host_profile(self.host)

    def plan(self, seed: int = 1, frames: int | None = None) -> tuple[list[bytes], list[bytes]]:
        """Deterministic TX and RX frame lists."""
        rng = random.Random(f"{self.name}:{seed}")
        n = frames or self.frames
        bands = [b[:2] for b in self.sizes]
        weights = [b[2] for b in self.sizes]
        tx, rx = [], []
        for i in range(n):
            lo, hi = rng.choices(bands, weights)[0]
            size = rng.randint(lo, hi)
            data = bytes((i * 7 + k) & 0xFF for k in range(min(size, 64))) * (size // 64 + 1)
            (tx if rng.random() < self.tx_fraction else rx).append(data[:size])
        return tx, rx


IMIX = ((60, 64, 7.0), (570, 590, 4.0), (1500, 1518, 1.0))

SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("mixed", 2200, 0.5, IMIX + ((4000, 9000, 0.2),), help="both directions, IMIX plus some jumbo frames"),
    Scenario("tx_heavy", 2000, 0.9, IMIX, help="90% host-to-wire, IMIX sizes"),
    Scenario("rx_heavy", 2000, 0.1, IMIX, help="90% wire-to-host, IMIX sizes"),
    Scenario("small", 3000, 0.5, ((60, 128, 1.0),), batch=32, help="small frames: descriptor and interrupt heavy"),
    Scenario("jumbo", 300, 0.5, ((8000, 9000, 1.0),), mrrs=4096, mps=512, help="9 KB frames: MRRS/MPS/4 KB splits"),
    Scenario("loaded", 1500, 0.8, IMIX + ((4000, 9000, 0.5),), batch=32, mrrs=256,
             help="TX-heavy with small read requests: many reads in flight"),
    Scenario("rcb_split", 1000, 0.5, IMIX, host="realistic-rcb", rcb=128,
             help="a root complex that splits every completion on the 128 B RCB"),
    Scenario("numa", 1000, 0.5, IMIX, host="remote-numa", help="DMA memory on a remote NUMA node (~0.9 us reads)"),
    Scenario("ideal", 2000, 0.5, IMIX + ((4000, 9000, 0.2),), host="ideal",
             help="the idealised host of the first testbench (no memory or CPU time, 32-bit, 5-bit tags)"),
)}
DEFAULT_SCENARIO = "mixed"


def get_scenario(name: str) -> Scenario:
    try:
        return SCENARIOS[name]
    except KeyError:
        raise ValueError(f"unknown scenario: {name!r} (known: {', '.join(SCENARIOS)})") from None
