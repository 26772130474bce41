"""`make mutate`'s summary: killed / survived / total and the kill rate per mutated module, from mutmut's
mutants/*.meta files (mutmut 3.7). Run from the repository root after `mutmut run`; exits 1 below --goal."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

KILLED = {1, 3}  # a test failed (3: pytest's internal error, also a failure the mutant caused)
SURVIVED = {0}
TIMEOUT = {24, -24, 36, 152, 255}  # the mutant made the tests run past mutmut's limit: counted as killed


def summarize(mutants: Path) -> dict[str, Counter[str]]:
    out: dict[str, Counter[str]] = {}
    for meta in sorted(mutants.rglob("*.py.meta")):
        module = str(meta.relative_to(mutants))[: -len(".meta")]
        counts: Counter[str] = Counter()
        for code in json.loads(meta.read_text())["exit_code_by_key"].values():
            counts["total"] += 1
            if code in KILLED or code in TIMEOUT:
                counts["killed"] += 1
            elif code in SURVIVED:
                counts["survived"] += 1
            elif code is None:
                counts["not checked"] += 1
            else:
                counts[f"other (exit {code})"] += 1
        out[module] = counts
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mutants", type=Path, default=Path("mutants"))
    parser.add_argument("--goal", type=float, default=0.8, help="lowest kill rate per module (default 0.8)")
    args = parser.parse_args()
    summary = summarize(args.mutants)
    if not summary:
        print(f"no mutmut results under {args.mutants}", file=sys.stderr)
        return 1
    print("| module | killed | survived | other | total | killed % |\n|---|---|---|---|---|---|")
    below = []
    for module, c in summary.items():
        other = c["total"] - c["killed"] - c["survived"]
        rate = c["killed"] / c["total"] if c["total"] else 1.0
        print(f"| `{module}` | {c['killed']} | {c['survived']} | {other} | {c['total']} | {100 * rate:.1f} |")
        if rate < args.goal:
            below.append(module)
    if below:
        print(f"below the goal of {args.goal:.0%}: {', '.join(below)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
