"""Phantom-generated stimulus for the regression: conditions nobody captured, generated, calibrated, replayable.

Each ``Stimulus`` names a condition (a scenario or workload knobs, link parameters) and a host set-up (the root
complex the replay builds, register values the host programs, where the host puts its packet buffers) that the
captured scenarios never use, with the reason it is in the set. ``make_stimulus`` generates it with the shipped
Phantom checkpoint (``data/phantom/``), seeds fixed, into a trace that ``make replay`` drives (stimulus mode).
The order of ``STIMULI`` is the order "first stimulus to catch a fault" is counted in.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tb.host_model import get_host_profile

ROOT = Path(__file__).resolve().parent.parent
CHECKPOINT = ROOT / "data" / "phantom" / "regress.pt"


@dataclass(frozen=True)
class Stimulus:
    name: str
    why: str                                    # the condition it exercises that no captured scenario does
    scenario: str = ""                          # a scenario the model knows, or "" (knobs and link only)
    link: dict[str, int] = field(default_factory=dict)        # mps, mrrs, rcb, tag_width
    knobs: dict[str, float] = field(default_factory=dict)     # tx_fraction, frame_bytes, small_fraction, load
    host: str = "realistic"                     # host profile of the replay's root complex (tb.host_model)
    registers: dict[str, int] = field(default_factory=dict)   # values the host programs at initialisation
    buffer_offset: int = 0                      # bytes past each buffer slot's start the host puts a buffer
    rings: dict[str, int] = field(default_factory=dict)       # queue -> ring entries (smaller than captured)
    tlps: int = 4000                            # records the backbone generates
    seed: int = 1
    timing: str = "asap"                        # replay timing: the device's own pace
    stall_us: float = 400.0                     # the replay's watchdog: nothing new from the device this long

    def __post_init__(self) -> None:
        get_host_profile(self.host)
        if not 0 <= self.buffer_offset < 4096 or self.buffer_offset % 4:
            raise ValueError(f"stimulus {self.name}: buffer_offset must be a multiple of 4 in [0, 4096), got "
                             f"{self.buffer_offset!r}")
        for q, n in self.rings.items():
            if q not in ("tx", "rx") or not isinstance(n, int) or isinstance(n, bool) or n < 2 or n & (n - 1):
                raise ValueError(f"stimulus {self.name}: rings must map 'tx'/'rx' to a power of two >= 2, got "
                                 f"{q!r}: {n!r}")
        if self.timing not in ("trace", "asap"):
            raise ValueError(f"stimulus {self.name}: timing must be 'trace' or 'asap', got {self.timing!r}")

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


CREDITS_16_160 = 16 | 160 << 16    # REG_DMA_CREDITS: the tight-cpl root complex's 16 headers, 2,560 B of data

STIMULI: tuple[Stimulus, ...] = (
    Stimulus("mixed-4k-edge", "packet buffers that start 200 B before a 4 KB boundary (captures page-align "
             "every buffer): every read and write of a frame over 200 B must split there",
             scenario="mixed", buffer_offset=4096 - 200, tlps=5000),
    Stimulus("rx-irq-each", "an interrupt per completion record, no coalescing timer (captured scenarios "
             "coalesce 8 with a timer): an interrupt sent early announces nothing",
             knobs={"tx_fraction": 0.1, "frame_bytes": 600.0, "small_fraction": 0.5},
             registers={"REG_IRQ_COAL_COUNT": 1, "REG_IRQ_COAL_TIMER": 0}, tlps=4000),
    Stimulus("tight-credits", "a root complex with a 16-header completion buffer, the device told so, reads of "
             "128 B split on every 64 B RCB (no captured host withholds completion space)",
             knobs={"tx_fraction": 0.9, "frame_bytes": 300.0, "small_fraction": 0.3},
             link={"mps": 128, "mrrs": 128, "rcb": 64}, host="tight-cpl",
             registers={"REG_DMA_CREDITS": CREDITS_16_160}, tlps=4000),
    Stimulus("tags-5bit", "5-bit tags (32 outstanding reads) with completions split on every RCB and MPS 128, a "
             "link set no capture has", scenario="loaded", link={"mps": 128, "mrrs": 512, "tag_width": 5},
             host="realistic-rcb", tlps=5000),
    Stimulus("jumbo-mrrs1024", "jumbo frames at MRRS 1024 and RCB 128 (captured jumbo runs at MRRS 4096)",
             scenario="jumbo", link={"mps": 256, "mrrs": 1024, "rcb": 128}, tlps=4000),
    Stimulus("jumbo-mrrs4096-mps128", "jumbo frames read 4 KB at a time and answered in 128 B completions (MPS "
             "128): reassembly of reads over 2 KB from 32 pieces; captures pair MRRS 4096 with MPS 512",
             scenario="jumbo", link={"mps": 128, "mrrs": 4096, "rcb": 64}, tlps=4000),
    Stimulus("small-unaligned", "small frames in buffers at odd DWORD offsets (alignments 4-32 B) with MPS 512",
             scenario="small", link={"mps": 512, "mrrs": 256}, buffer_offset=36, tlps=4000),
    Stimulus("small-rings", "8-entry TX and RX rings, smaller than the device's 16-descriptor cache (captured "
             "rings have 256 entries, a multiple of the cache, so the cache end always comes first): a fetch must "
             "stop at the ring's last entry and wrap, and completion-record phases flip every 8 frames",
             knobs={"tx_fraction": 0.6, "frame_bytes": 400.0, "small_fraction": 0.4}, rings={"tx": 8, "rx": 8},
             tlps=4000),
)
_BY_NAME = {s.name: s for s in STIMULI}


def get_stimulus(name: str) -> Stimulus:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown stimulus: {name!r} (known: {', '.join(_BY_NAME)})") from None


def make_stimulus(spec: Stimulus, out_dir: Path, checkpoint: Path = CHECKPOINT) -> Path:
    """Generate and calibrate the stimulus trace (``out_dir/<name>.jsonl.gz`` + MAC sidecar); returns its path."""
    from phantom.gen.condition import HostSetup
    from phantom.gen.sample import GenerateConfig, generate, resolve_condition
    from phantom.gen.train import load_checkpoint

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ck = load_checkpoint(checkpoint)
    cond = resolve_condition(ck, spec.scenario or None, spec.knobs, spec.link)
    model = get_host_profile(spec.host).to_json()
    setup = HostSetup(model=model, registers=dict(spec.registers), buffer_offset=spec.buffer_offset,
                      ring_entries=dict(spec.rings))
    out = out_dir / f"{spec.name}.jsonl.gz"
    rep = generate(ck, out, cond, GenerateConfig(tlps=spec.tlps, seed=spec.seed, progress=False), host=setup)
    (out_dir / f"{spec.name}.gen.json").write_text(json.dumps({"stimulus": spec.to_json(), "records": rep.records,
                                                               "stats": rep.stats.to_json() if rep.stats else None},
                                                              indent=1))
    return out
