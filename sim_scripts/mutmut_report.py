"""make mutmut: the kill rate per mutated module, from ``mutmut results --all true`` (run after ``mutmut run``).

Prints one row per module: mutants, killed (incl. timeouts: the mutant hung the tests), survived, not covered
by any test mutmut runs, and the kill rate; then each survivor by name (``mutmut show NAME`` prints its diff).
"""

from __future__ import annotations

import collections
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    out = subprocess.run([str(ROOT / ".venv/bin/mutmut"), "results", "--all", "true"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    per: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    survivors: list[str] = []
    for line in out.splitlines():
        name, _, status = line.strip().rpartition(": ")
        if "__mutmut_" not in name:
            continue
        module = name.split(".x_")[0].split(".xǁ")[0]
        per[module][status] += 1
        if status in ("survived", "no tests"):
            survivors.append(f"{status}: {name}")
    print("| module | mutants | killed | survived | no tests | other | kill rate |\n| --- | --- | --- | --- | --- | --- | --- |")
    for module in sorted(per):
        c = per[module]
        killed = c["killed"] + c["timeout"]
        other = sum(c.values()) - killed - c["survived"] - c["no tests"]
        n = sum(c.values())
        print(f"| {module} | {n} | {killed} | {c['survived']} | {c['no tests']} | {other} | {100 * killed / n:.1f} % |")
    print()
    print("\n".join(survivors))
    return 0


if __name__ == "__main__":
    sys.exit(main())
