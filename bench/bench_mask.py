"""Masking speed: today's `model.mask` against the same rules without their fail-fast guards (the masker before
commit "masking: fail fast on plain words"), on the same lines, interleaved; and a check that both give the same
output on every line.

The guards (see model/masking.py) are leading lookaheads that restate what each rule already needs and possessive
repeats that cannot give back a match; removing them rebuilds the previous pattern exactly.

    .venv/bin/python bench/bench_mask.py [--lines N] [--rounds R]
"""
from __future__ import annotations

import argparse
import logging
import re
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from _common import add_run_options, default_data_dir, markdown_table, print_header, start_run, write_json

logger = logging.getLogger("bench.mask")

# today's rule text -> the text before the guards were added
_UNGUARD = (
    ("[A-Za-z0-9+.\\-]*+://", "[A-Za-z0-9+.\\-]*://"),
    ("(?=[0-9A-Fa-f:])(?:", "(?:"),
    ("(?=[0-9A-Z])(?:", "(?:"),
    ("(?=\\d*+[A-Fa-f])(?=[A-Fa-f]*+\\d)", "(?=[0-9A-Fa-f]*[A-Fa-f])(?=[0-9A-Fa-f]*\\d)"),
    ("(?=[A-Za-z]*+\\d)(?:", "(?:"),
)


def unguarded_mask() -> Callable[[str], str]:
    import model.masking as m

    rules = []
    for name, rx in m._RULES:
        for new, old in _UNGUARD:
            if new in rx:
                rx = rx.replace(new, old, 1)
        rules.append((name, rx))
    pattern = re.compile(m._L + f"(?={m._FIRST_CHARS})(?:" + "|".join(f"(?P<{n}>{rx})" for n, rx in rules) + ")")
    if pattern.pattern == m._PATTERN.pattern:
        raise RuntimeError("could not rebuild the unguarded pattern: the rules changed; update _UNGUARD")

    def mask(line: str) -> str:
        return pattern.sub(m._replace, " ".join(line.split()))

    return mask


def read_lines(data: Path, limit: int) -> dict[str, list[str]]:
    sets = {"hdfs dev_stream.log": []}
    with (data / "hdfs" / "dev_stream.log").open(encoding="utf-8", errors="replace") as fh:
        for line in fh:
            sets["hdfs dev_stream.log"].append(line.rstrip("\n"))
            if len(sets["hdfs dev_stream.log"]) >= limit:
                break
    sets["loghub_2k (16 systems)"] = [line.rstrip("\n") for f in sorted((data / "loghub_2k").glob("*.log"))
                                      for line in f.open(encoding="utf-8", errors="replace")]
    return sets


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, default=default_data_dir())
    p.add_argument("--lines", type=int, default=30000, help="HDFS lines")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds per masker, interleaved; the best is kept")
    add_run_options(p)
    args = p.parse_args(argv)
    start_run(args)
    from model.masking import mask

    before = unguarded_mask()
    results = {}
    for name, lines in read_lines(args.data_dir, args.lines).items():
        diff = sum(1 for line in lines if mask(line) != before(line))
        t_new, t_old = [], []
        for _ in range(args.rounds):
            for fn, out in ((before, t_old), (mask, t_new)):
                started = time.perf_counter()
                for line in lines:
                    fn(line)
                out.append(time.perf_counter() - started)
        ratio = statistics.median(o / n for o, n in zip(t_old, t_new))
        results[name] = {"lines": len(lines), "different_outputs": diff, "before_us": 1e6 * min(t_old) / len(lines),
                         "after_us": 1e6 * min(t_new) / len(lines), "speedup_median": ratio}
    info = print_header("Masking speed: fail-fast guards vs the same rules without them")
    print(f"{args.rounds} interleaved rounds per masker; µs/line = best round; speed-up = median of the per-round "
          f"ratios.\n")
    print(markdown_table(["lines", "n", "different outputs", "before µs/line", "after µs/line", "speed-up"],
                         [[k, v["lines"], v["different_outputs"], f"{v['before_us']:.1f}", f"{v['after_us']:.1f}",
                           f"{v['speedup_median']:.2f}x"] for k, v in results.items()]))
    write_json(args.json_out, {"machine": info, **results})
    return 0 if all(v["different_outputs"] == 0 for v in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
