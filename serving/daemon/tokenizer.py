"""Prompt token counts from a tokenizer the project ships: nothing is downloaded at run time.

SentencePiece (the ``sentencepiece`` package: C++, no network code) with the Mistral-7B v0.1 tokenizer model
committed at ``data/tokenizer/mistral-7b-v0.1.model`` (32,000-piece BPE with byte fallback, the LLaMA
tokenizer's layout; Apache-2.0, from the mistral-common 1.13.1 wheel; data/NOTICE). LLaMA-family counts are
what the project's traces carry, so prompt lengths here match the workloads the scheduler was measured on.
A prompt's count includes the BOS token, as vLLM reports it. Chat messages are rendered with the Mistral
instruct layout (``[INST] ... [/INST]``) before counting.
"""

from __future__ import annotations

import functools
from pathlib import Path

import sentencepiece

MODEL_PATH = Path(__file__).resolve().parents[2] / "data" / "tokenizer" / "mistral-7b-v0.1.model"
NAME = "mistral-7b-v0.1 (sentencepiece, shipped in data/tokenizer)"

# single-piece words the simulated engine emits: each is one token, so its text re-counts to its token count
WORDS = ("the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "with", "was", "on", "be", "at", "by",
         "this", "from", "or", "an", "are", "not", "which", "have", "but", "can", "one", "all", "their", "more",
         "when", "will", "model", "data", "time", "system", "each", "link", "fair", "share", "queue", "token")


class Tokenizer:
    def __init__(self, path: Path = MODEL_PATH):
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: the tokenizer model is missing (it ships in data/tokenizer/)")
        self.sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
        self.name = NAME
        self.words = [w for w in WORDS if len(self.sp.encode(w)) == 1 and len(self.sp.encode("x " + w)) == 2]

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def count(self, text: str) -> int:
        """Prompt tokens of a text: its pieces plus BOS."""
        return len(self.sp.encode(text)) + 1

    def count_chat(self, messages: list[dict]) -> int:
        return self.count(render_chat(messages))


def render_chat(messages: list[dict]) -> str:
    """Mistral instruct layout: system (and developer) text joins the next user turn; assistant turns close with
    </s>."""
    out, system = [], ""
    for m in messages:
        role, text = m["role"], m["content"]
        if role in ("system", "developer"):
            system += text + "\n\n"
        elif role in ("user", "tool"):
            out.append(f"[INST] {system}{text} [/INST]")
            system = ""
        else:
            out.append(f"{text}</s>")
    if system:
        out.append(f"[INST] {system.rstrip()} [/INST]")
    return "".join(out)


@functools.lru_cache(maxsize=1)
def default_tokenizer() -> Tokenizer:
    return Tokenizer()
