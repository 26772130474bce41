"""Plot the measured stream-performance points of `bench/results/perf_points.json` for BENCHMARKS.md.

    .venv/bin/python bench/plot_benchmarks.py            # writes bench/plots/*.png
    .venv/bin/python bench/plot_benchmarks.py --points FILE --out-dir DIR

Writes two PNGs (matplotlib, Agg backend, no display needed):

- `worker_vs_passthrough.png`: every round of every throughput run, the variant's lines/s (worker, and any other
  variant such as the old `per-line` route) against the bare Faust pass-through's lines/s of the same round, with
  the lines y = x and y = 0.8 x (issue 5's goal: worker >= 0.8 of the pass-through).
- `rate_vs_latency.png`: top, the latency workload's p50 and p99 (window-completing line -> its alert) against
  the produced rate, one colour per setting, with issue 5's goal p99 <= 2 s; below, the paced section's seconds
  to catch up after the producer stopped against the produced rate (filled = kept up, cross = fell behind).

perf_points.json: one object with three lists; every entry names the results file it was transcribed from
(`source`, a file name in bench/results/) and its run's `date` (YYYY-MM-DD) and `commit`. To add a run, append
entries with the figures its output printed (`bench/bench_perf.py`), commit its stdout as a results file, and
rerun this script; keep old entries, so the plots show the history.

    "throughput": [{"run": "40k lines, final issue-5 code",       # legend label
                    "date": ..., "commit": ..., "source": ...,
                    "lines": 40000,                                # lines pre-filled
                    "lines_per_s": {"passthrough": [1611, 1461, 1409],   # "lines/s per round" column, in round
                                    "worker": [1257, 1258, 1203]}}]      # order; "passthrough" is required and
                                                                         # every variant has one value per round
    "latency":    [{"series": "batch_within 0.1",                  # setting; one colour and line per series
                    "date": ..., "commit": ..., "source": ...,
                    "rate": 250, "achieved": 250,                  # lines/s produced: asked for, achieved
                    "burst_rate": 1414,                            # the run's "sustainable rate" (burst) line
                    "n": 712, "p50": 0.935, "p95": 1.558, "p99": 1.84, "max": 2.069}]   # seconds
    "paced":      [{"series": "worker, early_alerts=false",
                    "date": ..., "commit": ..., "source": ...,
                    "rate": 1600, "achieved": 1472,                # lines/s
                    "caught_up_s": 4.9,                            # "caught up after (s)" column
                    "kept_up": true}]                              # "kept up" column

Other keys (e.g. "about") are ignored; a missing or mistyped key raises ValueError naming it.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections import defaultdict
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after matplotlib.use: the backend must be chosen first

log = logging.getLogger("plot_benchmarks")
T = TypeVar("T")

REPO = Path(__file__).resolve().parents[1]
GOAL_RATIO = 0.8  # issue 5: worker >= 0.8 of the pass-through
GOAL_P99_S = 2.0  # issue 5: p99 window-completing line -> alert <= 2 s
KEPT_UP_S = 5.0  # bench_perf.py --section paced: kept up = caught up at most 5 s after the producer stopped


@dataclass(frozen=True)
class ThroughputRun:
    run: str
    date: str
    source: str
    lines_per_s: dict[str, list[float]]


@dataclass(frozen=True)
class LatencyPoint:
    series: str
    date: str
    source: str
    rate: float
    p50: float
    p99: float


@dataclass(frozen=True)
class PacedPoint:
    series: str
    date: str
    source: str
    rate: float
    caught_up_s: float
    kept_up: bool


def _field(entry: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in entry:
        raise ValueError(f"{where}: missing key {key!r}")
    value = entry[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ValueError(f"{where}: {key!r} is {value!r}, expected {kind}")
    return value


def _throughput(entry: dict[str, Any], where: str) -> ThroughputRun:
    rates = _field(entry, "lines_per_s", dict, where)
    if "passthrough" not in rates:
        raise ValueError(f"{where}: lines_per_s needs a 'passthrough' list, got keys {sorted(rates)}")
    rounds = len(rates["passthrough"])
    for variant, values in rates.items():
        if not isinstance(values, list) or len(values) != rounds:
            raise ValueError(f"{where}: lines_per_s[{variant!r}] must be a list of {rounds} values (one per round)")
    return ThroughputRun(
        _field(entry, "run", str, where),
        _field(entry, "date", str, where),
        _field(entry, "source", str, where),
        {k: [float(v) for v in vs] for k, vs in rates.items()},
    )


def load_points(path: Path) -> tuple[list[ThroughputRun], list[LatencyPoint], list[PacedPoint]]:
    if not path.is_file():
        raise FileNotFoundError(f"no points file at {path} (expected bench/results/perf_points.json)")
    data = json.loads(path.read_text(encoding="utf-8"))
    throughput = [_throughput(e, f"throughput[{i}]") for i, e in enumerate(data.get("throughput", []))]
    return throughput, _points(data, "latency", LatencyPoint), _points(data, "paced", PacedPoint)


_NUM = (int, float)
_KINDS: dict[str, type | tuple[type, ...]] = {"series": str, "date": str, "source": str, "rate": _NUM, "p50": _NUM,
                                              "p99": _NUM, "caught_up_s": _NUM, "kept_up": bool}


def _points(data: dict[str, Any], section: str, cls: type[T]) -> list[T]:
    """The entries of `section` as `cls`, one checked key per dataclass field, in field order."""
    return [cls(*(_field(e, f.name, _KINDS[f.name], f"{section}[{i}]") for f in fields(cls)))  # type: ignore[arg-type]
            for i, e in enumerate(data.get(section, []))]


def plot_worker_vs_passthrough(runs: list[ThroughputRun], out: Path) -> None:
    fig, ax = plt.subplots(figsize=(11, 6))
    markers = "oxs^Dv"  # a run's variants in the order it lists them
    top = 0.0
    for colour, run in zip(_colours(len(runs)), runs):
        base = run.lines_per_s["passthrough"]
        variants = [(v, values) for v, values in run.lines_per_s.items() if v != "passthrough"]
        for (variant, values), marker in zip(variants, markers * len(variants)):
            ax.scatter(base, values, color=colour, marker=marker, s=40, label=f"{run.run}: {variant}")
            top = max(top, *base, *values)
    top *= 1.08
    ax.plot([0, top], [0, top], color="grey", lw=1, label="worker = pass-through")
    ax.plot([0, top], [0, GOAL_RATIO * top], color="grey", lw=1, ls="--", label=f"goal: {GOAL_RATIO} x pass-through")
    ax.set(
        xlim=(0, top),
        ylim=(0, top),
        xlabel="bare Faust pass-through, lines/s (same round)",
        ylabel="variant, lines/s (pre-filled topic, until every alert is out)",
        title=f"Worker vs pass-through, one point per round ({_dates(runs)})\n2 shared cores: compare within a round",
    )
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.tight_layout()
    fig.savefig(out, dpi=110, bbox_inches="tight")  # the legends beside the axes too
    plt.close(fig)


def _colours(n: int) -> list[tuple[float, ...]]:
    """n distinct colours (tab10, tab20 beyond 10; repeated beyond 20), so no series is left out of a plot."""
    palette = plt.cm.tab10.colors if n <= 10 else plt.cm.tab20.colors
    return [palette[i % len(palette)] for i in range(n)]


def _dates(points: list[Any]) -> str:
    """'2026-11-29' or '2026-11-29 to 2026-11-30': the days the points were measured on."""
    days = sorted({p.date for p in points})
    return days[0] if len(days) == 1 else f"{days[0]} to {days[-1]}" if days else "no points"


def _by_series(points: list[Any]) -> dict[str, list[Any]]:
    series: dict[str, list[Any]] = defaultdict(list)
    for point in points:
        series[point.series].append(point)
    return {name: sorted(ps, key=lambda p: p.rate) for name, ps in series.items()}


def plot_rate_vs_latency(latency: list[LatencyPoint], paced: list[PacedPoint], out: Path) -> None:
    fig, (left, right) = plt.subplots(2, 1, figsize=(8, 10))  # a panel a row, each legend beside it
    latency_series = _by_series(latency)
    for colour, (name, points) in zip(_colours(len(latency_series)), latency_series.items()):
        rates = [p.rate for p in points]
        left.plot(rates, [p.p99 for p in points], "o-", color=colour, label=f"{name}: p99")
        left.plot(rates, [p.p50 for p in points], "o:", color=colour, mfc="none", label=f"{name}: p50")
    left.axhline(GOAL_P99_S, color="grey", ls="--", lw=1, label=f"goal: p99 <= {GOAL_P99_S:g} s")
    left.set(
        yscale="log",
        xlabel="lines/s produced (64 long sessions, every window alerts)",
        ylabel="window-completing line -> its alert (s)",
        title=f"Latency vs rate (bench_perf.py --section latency)\n{_dates(latency)}",
    )
    left.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    paced_series = _by_series(paced)
    for colour, (name, points) in zip(_colours(len(paced_series)), paced_series.items()):
        right.plot([p.rate for p in points], [p.caught_up_s for p in points], "-", color=colour, label=name)
        for p in points:
            right.scatter(p.rate, p.caught_up_s, color=colour, marker="o" if p.kept_up else "x", s=40)
    right.axhline(KEPT_UP_S, color="grey", ls="--", lw=1, label=f"kept up: caught up <= {KEPT_UP_S:g} s")
    right.set(
        xscale="log",
        xlabel="lines/s asked of the producer (dev stream keyed by block id)",
        ylabel="caught up after the producer stopped (s)",
        title=f"Paced rate (bench_perf.py --section paced)\n{_dates(paced)}; o kept up, x fell behind",
    )
    right.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.tight_layout()
    fig.savefig(out, dpi=110, bbox_inches="tight")  # the legends beside the axes too
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=Path, default=REPO / "bench" / "results" / "perf_points.json")
    parser.add_argument("--out-dir", type=Path, default=REPO / "bench" / "plots")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    throughput, latency, paced = load_points(args.points)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    plot_worker_vs_passthrough(throughput, args.out_dir / "worker_vs_passthrough.png")
    plot_rate_vs_latency(latency, paced, args.out_dir / "rate_vs_latency.png")
    log.info("wrote %s and %s", args.out_dir / "worker_vs_passthrough.png", args.out_dir / "rate_vs_latency.png")


if __name__ == "__main__":
    main()
