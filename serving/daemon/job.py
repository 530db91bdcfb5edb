"""One HTTP request's life in the daemon: what it asks for, and the events its backend sends back.

The HTTP handler creates a Job, hands it to the backend, and reads ``events`` until an end or an error: a Job
is answered exactly once (``answer()`` refuses a second end), whatever mix of completion, cancellation, engine
failure and shutdown happens to it.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

from serving.request import Request

_ids = itertools.count(1)


class Kind(str, enum.Enum):
    COMPLETION = "completion"
    CHAT = "chat"


@dataclass(slots=True)
class Tokens:
    """Output produced since the last event."""

    texts: list[str]        # one text piece per token
    t: float                # wall time (time.monotonic) they were emitted


@dataclass(slots=True)
class End:
    """The request is done (finish_reason "stop" or "length"), with its usage."""

    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    usage_source: str       # where the counts come from: "tokenizer" (the daemon's) or "upstream" (its usage)


@dataclass(slots=True)
class Failed:
    """The request could not be (fully) served: an HTTP status and an OpenAI-style error."""

    status: int
    message: str
    type: str = "server_error"
    retry_after: int | None = None


@dataclass(eq=False)
class Job:
    client: str                       # configured client name (from the API key)
    weight: float                     # the client's weight
    kind: Kind
    body: dict[str, Any]              # the validated request body (upstreams get it, model name replaced)
    prompt_tokens: int                # counted by the daemon's tokenizer
    max_tokens: int
    ignore_eos: bool = False          # generate exactly max_tokens (vLLM's extension; benchmarks use it)
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    seq: int = field(default_factory=lambda: next(_ids))
    created: float = field(default_factory=time.time)       # wall clock (the response's `created`)
    t_arrival: float = field(default_factory=time.monotonic)
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    req: Request | None = None        # the scheduler's request (set by the backend)
    emitted: int = 0                  # tokens sent to the events queue
    done: bool = False                # an End or Failed has been queued
    cancelled: bool = False           # the client went away or the daemon failed it
    settled: bool = False             # streams: the HTTP side has closed its books on it (slot freed, counted)
    natural: int = 0                  # sim: the output length the simulated model would produce unasked
    text: str = ""                    # output so far, kept only while stop sequences are watched for

    @property
    def id(self) -> str:
        return f"{'chatcmpl' if self.kind is Kind.CHAT else 'cmpl'}-{self.seq}"

    def emit(self, texts: list[str]) -> None:
        if not self.done and texts:
            self.emitted += len(texts)
            self.events.put_nowait(Tokens(texts, time.monotonic()))

    def answer(self, end: End | Failed) -> bool:
        """Queue the final event; False if the job was already answered (a second answer is dropped here, by
        design: the first one is what the client gets)."""
        if self.done:
            return False
        self.done = True
        self.events.put_nowait(end)
        return True
