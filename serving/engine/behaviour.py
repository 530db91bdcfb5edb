"""Engine behaviours: how an engine batches, admits and reserves KV, apart from the policy that orders requests.

A plug point (enum + registry): `artifact` is the S-LoRA engine as the VTC artifact runs it, `equinox` the
stall-free engine Equinox is evaluated on; a JSON file of EngineBehaviour fields defines any other.
Any policy runs on any behaviour (`python -m serving bench --engine ...`).
"""

from __future__ import annotations

import dataclasses
import enum
import json
from dataclasses import dataclass
from pathlib import Path


@dataclass
class EngineBehaviour:
    """How the engine batches under a policy (each switch is an ablation knob)."""

    name: str = "custom"            # label in tables
    chunked_prefill: bool = False   # stall-free: prefill in chunks within a token budget, decodes first
    token_budget: int = 512         # tokens per iteration when chunking
    admit_every: int = 10           # without chunking: after an admission, N decode steps pass before the next
                                    # attempt; a failed attempt is retried every step (S-LoRA's max_wait_tokens)
    admission: str = "sum"          # KV test: "sum" (reservations add up) or "slora" (S-LoRA's _can_add_new_req:
                                    # the peak of the batch as requests finish, remaining output sorted descending)
    reserve: str = "full"           # output reserved: "full" (max_new_tokens) or "predicted" (MoPE x reserve_factor)
    reserve_factor: float = 1.0     # with "predicted": reserve this multiple of the predicted output (headroom)
    batch_max_tokens: int = 0       # prompt tokens admitted in one prefill batch; 0: no limit; -1: S-LoRA's default
                                    # for the KV pool, max(pool / 6, 2048 + 1024) (3072 for the artifact's 10,000)
    adapter_kv_tokens: int = 0      # KV tokens S-LoRA sets aside per distinct client in the batch (LoRA rank x 4)
    block_tokens: int = 16          # KV allocation granularity (S-LoRA: 1 token; vLLM: 16-token blocks)
    adaptive: bool = False          # adapt the token budget to load and the TBT target
    tbt_target_s: float = 0.15      # time-between-tokens target for adaptive batching
    max_batch: int = 256            # sequences per iteration (S-LoRA: running_max_req_size 1000)
    fair_preempt: bool = False      # evict the most over-served client's newest request to admit a fairer head

    def __post_init__(self) -> None:
        if self.admission not in ("sum", "slora"):
            raise ValueError(f"engine {self.name}: admission must be 'sum' or 'slora', got {self.admission!r}")
        if self.reserve not in ("full", "predicted"):
            raise ValueError(f"engine {self.name}: reserve must be 'full' or 'predicted', got {self.reserve!r}")
        for k in ("chunked_prefill", "adaptive", "fair_preempt"):
            if not isinstance(getattr(self, k), bool):
                raise ValueError(f"engine {self.name}: {k} must be true or false, got {getattr(self, k)!r}")
        for k, lo in (("token_budget", 16), ("max_batch", 1), ("admit_every", 1), ("block_tokens", 1),
                      ("batch_max_tokens", -1), ("adapter_kv_tokens", 0)):
            v = getattr(self, k)
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ValueError(f"engine {self.name}: {k} must be an integer >= {lo}, got {v!r}")
        for k in ("reserve_factor", "tbt_target_s"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise ValueError(f"engine {self.name}: {k} must be a positive number, got {v!r}")

    def replace(self, **kw) -> "EngineBehaviour":
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **kw)


class EngineName(str, enum.Enum):
    ARTIFACT = "artifact"
    EQUINOX = "equinox"


ENGINES: dict[EngineName, EngineBehaviour] = {
    # S-LoRA as the VTC artifact launches it (fair_bench/launch_server.py, slora/server/api_server.py and
    # router/manager.py): KV pool checked by _can_add_new_req, batch_max_tokens = max(pool / 6, 2048 + 1024),
    # running_max_req_size 1000, max_wait_tokens 10, whole prefills in iterations of their own, token-granular
    # KV, and rank-8 dummy adapters (8 x 4 KV tokens each) counted against the pool even with --no-lora.
    EngineName.ARTIFACT: EngineBehaviour(name="artifact", chunked_prefill=False, admit_every=10, admission="slora",
                                         reserve="full", batch_max_tokens=-1, adapter_kv_tokens=32,
                                         block_tokens=1, max_batch=1000),
    # Equinox's engine: stall-free chunked prefill (512-token budget, decodes first) with S-LoRA's admission test
    # on the requested max_new_tokens and token-granular KV. Measured (docs/equinox.md), reserving 1.5 x MoPE's
    # predicted output instead (with recompute preemption when short) thrashed the 10,000-token A10G pool
    # (36,263 preemptions on LMSYS) and gained nothing on ShareGPT once requests ask for their true length:
    # it is the `predicted-reserve` ablation.
    EngineName.EQUINOX: EngineBehaviour(name="equinox", chunked_prefill=True, token_budget=512, admission="slora",
                                        reserve="full", block_tokens=1, max_batch=256),
}


def get_engine(name: str | EngineName) -> EngineBehaviour:
    """A named behaviour, or one read from a JSON file of EngineBehaviour fields."""
    try:
        return ENGINES[EngineName(name)]
    except ValueError:
        pass
    p = Path(str(name))
    if p.suffix != ".json":
        raise ValueError(f"unknown engine: {name!r} (known: {', '.join(e.value for e in EngineName)}, "
                         f"or a .json behaviour file)")
    return load_behaviour(p)


def load_behaviour(path: str | Path) -> EngineBehaviour:
    """An EngineBehaviour from a JSON object; unknown fields and bad values are errors naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--engine {path}: no such behaviour file")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"--engine {path}: malformed JSON: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"--engine {path}: expected a JSON object of engine fields")
    fields = {f.name for f in dataclasses.fields(EngineBehaviour)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ValueError(f"--engine {path}: unknown field {unknown[0]!r} (fields: {', '.join(sorted(fields))})")
    data.setdefault("name", path.stem)
    try:
        return EngineBehaviour(**data)
    except ValueError as e:
        raise ValueError(f"--engine {path}: {e}") from None
