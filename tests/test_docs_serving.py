"""The serving docs carry `make bench-serving`'s output, not copies that drift: every fenced block of
docs/equinox.md and docs/benchmarks.md that starts with a bench section line (a README command `$ python -m
serving bench ...` or a `== ...` table) is, line for line, that section of the raw output docs/bench-serving.txt
(`sim_scripts/bench_serving.py --docs` writes them), and every README serving command has its block."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RAW = (ROOT / "docs" / "bench-serving.txt").read_text().splitlines()


def section(head: str) -> list[str]:
    i = RAW.index(head)
    body = [head]
    for line in RAW[i + 1:]:
        if head.startswith("$") and re.fullmatch(r"\(\d+ s; exit \d+\)", line):
            break
        if head.startswith("==") and (not line.strip() or line.startswith("== ")):
            break
        body.append(line)
    while not body[-1].strip():
        body.pop()
    return body


def blocks(doc: str) -> list[tuple[int, list[str]]]:
    lines = (ROOT / "docs" / doc).read_text().splitlines()
    out = []
    for i, line in enumerate(lines[:-1]):
        nxt = lines[i + 1]
        if line == "```" and (nxt.startswith("$ python -m serving bench") or nxt.startswith("== ")):
            j = lines.index("```", i + 1)
            out.append((i + 2, lines[i + 1:j]))
    return out


@pytest.mark.parametrize("doc", ["equinox.md", "benchmarks.md"])
def test_doc_blocks_are_the_bench_output(doc):
    bl = blocks(doc)
    assert len(bl) >= 8
    for line_no, body in bl:
        assert body[0] in RAW, f"docs/{doc}:{line_no}: {body[0]!r} is not a section of docs/bench-serving.txt"
        assert body == section(body[0]), f"docs/{doc}:{line_no}: block {body[0]!r} differs from the bench output"


def test_every_readme_serving_command_is_in_the_docs():
    readme = (ROOT / "README.md").read_text()
    cmds = re.findall(r"^(python -m serving bench[^#\n]*?)\s*(?:#.*)?$", readme, re.M)
    cmds = [c for c in cmds if "my_trace" not in c]
    assert len(cmds) >= 7
    heads = {b[0] for _, b in blocks("equinox.md")}
    for c in cmds:
        assert f"$ {c}" in heads, f"README command {c!r} has no output block in docs/equinox.md"
