"""The NIC register map, read from rtl/nic_regs.vh with pyverilog so Python and RTL cannot disagree."""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from pathlib import Path

REGS_VH = Path(__file__).resolve().parent.parent / "rtl" / "nic_regs.vh"


class RegMapError(RuntimeError):
    pass


def _eval_const(node, env: dict[str, int]) -> int:
    """Evaluate a pyverilog constant expression (numbers, names, + - * / << >>)."""
    from pyverilog.vparser import ast as vast

    if isinstance(node, vast.IntConst):
        s = node.value.replace("_", "")
        if "'" in s:
            _, rest = s.split("'", 1)
            base, digits = rest[0].lower(), rest[1:]
            return int(digits, {"h": 16, "d": 10, "b": 2, "o": 8}[base])
        return int(s)
    if isinstance(node, vast.Identifier):
        if node.name not in env:
            raise RegMapError(f"{REGS_VH}: {node.name!r} used before it is defined")
        return env[node.name]
    ops = {vast.Plus: lambda a, b: a + b, vast.Minus: lambda a, b: a - b, vast.Times: lambda a, b: a * b,
           vast.Divide: lambda a, b: a // b, vast.Sll: lambda a, b: a << b, vast.Srl: lambda a, b: a >> b}
    for cls, fn in ops.items():
        if isinstance(node, cls):
            return fn(_eval_const(node.left, env), _eval_const(node.right, env))
    raise RegMapError(f"{REGS_VH}: unsupported constant expression {node!r}")


@functools.lru_cache(maxsize=4)
def load_regmap(path: str | os.PathLike = REGS_VH) -> dict[str, int]:
    """Every localparam of nic_regs.vh as name -> int, in file order."""
    from pyverilog.vparser import ast as vast
    from pyverilog.vparser.parser import VerilogCodeParser

    path = Path(path)
    if not path.exists():
        raise RegMapError(f"{path}: register map not found")
    if shutil.which("iverilog") is None:
        raise RegMapError("pyverilog needs Icarus Verilog's preprocessor: install iverilog (make setup does)")
    # pyverilog writes parser tables into the working directory: keep them out of the tree
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="regmap-") as tmp:
        wrapper = Path(tmp) / "regs_wrapper.v"
        wrapper.write_text(f'module regs_wrapper;\n`include "{path.name}"\nendmodule\n')
        try:
            os.chdir(tmp)
            parser = VerilogCodeParser([str(wrapper)], preprocess_include=[str(path.parent)],
                                       outputdir=tmp, debug=False)
            ast = parser.parse()
        finally:
            os.chdir(cwd)
    env: dict[str, int] = {}

    def walk(node):
        if isinstance(node, vast.Localparam):
            env[node.name] = _eval_const(node.value.var, env)
        for c in node.children():
            walk(c)

    walk(ast)
    if "REG_ID" not in env:
        raise RegMapError(f"{path}: no REG_ID found; is this the NIC register map?")
    return env


class Regs:
    """Attribute access to the register map: ``regs.REG_TXQ_PROD``; unknown names raise AttributeError."""

    def __init__(self, table: dict[str, int] | None = None):
        self._t = dict(table if table is not None else load_regmap())

    def __getattr__(self, name: str) -> int:
        try:
            return self._t[name]
        except KeyError:
            raise AttributeError(f"no register or constant named {name!r} in nic_regs.vh") from None

    def names(self, prefix: str = "") -> list[str]:
        return [n for n in self._t if n.startswith(prefix)]

    def name_of(self, offset: int, prefix: str = "REG_") -> str | None:
        for n, v in self._t.items():
            if n.startswith(prefix) and v == offset:
                return n
        return None

    def stat_names(self) -> list[str]:
        return [n for n in self._t if n.startswith("REG_STAT_")]
