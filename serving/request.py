"""Requests and clients: what arrives at the scheduler, validated on the way in."""

from __future__ import annotations

import math
from dataclasses import dataclass


class RequestError(ValueError):
    """A request or trace entry that cannot be served, naming what is wrong."""


@dataclass(slots=True, eq=False)  # identity: two requests are never "equal" by value
class Request:
    """One generation request and its life in the engine (times in seconds of simulated time)."""

    rid: int                      # unique id, arrival order
    client: str                   # who sent it
    arrival: float                # when it arrived
    prompt_tokens: int            # input length
    output_tokens: int            # tokens it will generate (known to the simulator; policies may only predict)
    weight: float = 1.0           # the client's weight (higher: larger fair share)
    deadline: float | None = None # optional latency target for the whole request (seconds after arrival)
    max_new_tokens: int | None = None  # the generation cap the client asked for (None: exactly output_tokens)
    # life in the engine
    predicted_output: float = 0.0 # what the predictor says (made when first needed; fixed at admission)
    pred_version: int = -1        # the predictor's state when predicted_output was made
    expert_preds: tuple | None = None  # MoPE's experts' predictions behind predicted_output
    predicted_gpu_s: float = 0.0  # GPU-seconds the predictor attributed to it at admission
    gpu_s: float = 0.0            # measured GPU-seconds attributed to it in its current residency (over its weight)
    gpu_mark: tuple = (0.0, 0.0, 0.0)  # the engine's decode attribution totals when it last started decoding
    reserved_kv: int = 0          # KV tokens the engine reserved for it at its last admission
    prefilled: int = 0            # prompt (and recomputed) tokens already prefilled
    decoded: int = 0              # decode steps since the last (re)prefill (their KV entries)
    prefill_goal: int = 0         # tokens to prefill in this residency: prompt, plus generated ones after a preemption
    generated: int = 0            # output tokens produced
    admitted: float | None = None # first time it entered the running batch
    first_token: float | None = None
    finished: float | None = None
    preemptions: int = 0
    rejected: bool = False        # refused at arrival by the policy's admission control (never served)
    seq: int = 0                  # admission sequence number in the engine (set at each admission)
    dstart: int = 0               # engine decode step at which decoded/generated were last brought up to date

    def __post_init__(self) -> None:
        if not isinstance(self.client, str) or not self.client:
            raise RequestError(f"request {self.rid}: client must be a non-empty string, got {self.client!r}")
        for name in ("prompt_tokens", "output_tokens"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise RequestError(f"request {self.rid} ({self.client}): {name} must be a positive integer, got {v!r}")
        if not (isinstance(self.arrival, (int, float)) and math.isfinite(self.arrival) and self.arrival >= 0):
            raise RequestError(f"request {self.rid} ({self.client}): arrival must be a finite time >= 0, got {self.arrival!r}")
        if self.deadline is not None and not (isinstance(self.deadline, (int, float)) and self.deadline > 0):
            raise RequestError(f"request {self.rid} ({self.client}): deadline must be a positive number of seconds, "
                               f"got {self.deadline!r}")
        if self.max_new_tokens is not None and self.max_new_tokens < self.output_tokens:
            raise RequestError(f"request {self.rid} ({self.client}): max_new_tokens {self.max_new_tokens} is below "
                               f"its output of {self.output_tokens} tokens")
        if not (isinstance(self.weight, (int, float)) and self.weight > 0 and math.isfinite(self.weight)):
            raise RequestError(f"request {self.rid} ({self.client}): weight must be positive, got {self.weight!r}")

    def fresh(self) -> "Request":
        """A copy as it arrives: the same request, none of its life in an engine."""
        return Request(self.rid, self.client, self.arrival, self.prompt_tokens, self.output_tokens, self.weight,
                       self.deadline, self.max_new_tokens)

    @property
    def max_output(self) -> int:
        """What an engine that cannot predict must reserve for: the cap, or the exact length when there is none."""
        return self.max_new_tokens if self.max_new_tokens is not None else self.output_tokens

    @property
    def prefill_target(self) -> int:
        """Tokens to prefill before decoding (fixed when the request enters the batch)."""
        return self.prefill_goal

    @property
    def in_prefill(self) -> bool:
        return self.prefilled < self.prefill_target

    @property
    def kv_tokens(self) -> int:
        """KV-cache entries held: prefilled tokens plus tokens decoded since the last (re)prefill."""
        return self.prefilled + self.decoded

    @property
    def done(self) -> bool:
        return self.generated >= self.output_tokens

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.arrival

    @property
    def latency(self) -> float | None:
        return None if self.finished is None else self.finished - self.arrival


def check_weights(requests: list[Request], weights: dict[str, float] | None) -> None:
    """Apply per-client weights; a weight for a client that sends nothing, or a bad value, is an error."""
    if not weights:
        return
    clients = {r.client for r in requests}
    for c, w in weights.items():
        if c not in clients:
            raise RequestError(f"weight given for unknown client {c!r} (clients: {', '.join(sorted(clients)[:10])}...)")
        if not (isinstance(w, (int, float)) and w > 0):
            raise RequestError(f"client {c!r}: weight must be positive, got {w!r}")
    for r in requests:
        r.weight = float(weights.get(r.client, r.weight))
