"""``python -m benchmarks [--quick] [--json PATH] [--only NAME ...]``: run, print, save.

Prints one table row per case (ours, the baseline measured in the same run, their
ratio, the target and whether it is met) and writes every sample to a JSON file.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks import averaging, bootstrap, cli, placement
from benchmarks.common import BenchmarkError, Row, machine

DEFAULT_JSON = Path(__file__).resolve().parent / "results.json"


@dataclass(frozen=True)
class Settings:
    """Sizes and repetitions of one mode (full or quick)."""

    bootstrap_ranks: tuple[int, ...]
    bootstrap_repetitions: int
    average_tiny: bool
    average_warmup: int
    average_repetitions: int
    detect_nodes: tuple[int, ...]
    detect_repetitions: int
    detect_sample_seconds: float
    topology_ranks: int
    topology_repetitions: int
    cli_repetitions: int
    #: Hard limit on one multi-process run or command, seconds.
    timeout: float


FULL = Settings(
    bootstrap_ranks=(2, 4, 8),
    bootstrap_repetitions=3,
    average_tiny=False,
    average_warmup=3,
    average_repetitions=20,
    detect_nodes=(1, 100, 10_000),
    detect_repetitions=7,
    detect_sample_seconds=0.05,
    topology_ranks=100_000,
    topology_repetitions=3,
    cli_repetitions=8,
    timeout=90.0,
)
QUICK = Settings(
    bootstrap_ranks=(2,),
    bootstrap_repetitions=1,
    average_tiny=True,
    average_warmup=1,
    average_repetitions=2,
    detect_nodes=(1, 100, 10_000),
    detect_repetitions=1,
    detect_sample_seconds=0.002,
    topology_ranks=10_000,
    topology_repetitions=1,
    cli_repetitions=1,
    timeout=30.0,
)


def benchmarks(s: Settings) -> dict[str, Callable[[], list[Row]]]:
    """Each benchmark by name, in the order they run: cheap in-process ones first."""
    return {
        "detect": lambda: placement.run_detect(
            list(s.detect_nodes), s.detect_repetitions, s.detect_sample_seconds
        ),
        "topology": lambda: placement.run_topology(s.topology_ranks, s.topology_repetitions),
        "cli": lambda: cli.run(s.cli_repetitions, s.timeout),
        "averaging": lambda: averaging.run(
            s.average_tiny, s.average_warmup, s.average_repetitions, s.timeout
        ),
        "bootstrap": lambda: bootstrap.run(
            list(s.bootstrap_ranks), s.bootstrap_repetitions, s.timeout
        ),
    }


def _number(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def table(rows: Sequence[Row]) -> str:
    """The rows as a plain-text table, then what each benchmark's baseline is.

    ``ratio`` is ours / baseline of the medians, ``best`` of the best samples (the
    fastest, or the highest throughput), which other load on the machine cannot inflate.
    """
    header = ("benchmark", "case", "ranks", "ours", "baseline", "ratio", "best", "target", "met")
    lines = [header]
    for row in rows:
        met = {None: "-", True: "yes", False: "NO"}[row.met]
        lines.append(
            (
                row.benchmark,
                row.case,
                "-" if row.ranks is None else str(row.ranks),
                f"{_number(row.ours)} {row.unit}",
                f"{_number(row.baseline)} {row.unit}",
                f"{row.ratio:.2f}",
                f"{row.best_ratio:.2f}",
                "-" if row.target is None else str(row.target),
                met,
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = [
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True))
        for line in lines
    ]
    legend = {}
    for row in rows:
        legend.setdefault(row.benchmark, set()).add(row.baseline_name)
    text.append("")
    text.extend(f"{name} baseline: {'; '.join(sorted(names))}" for name, names in legend.items())
    return "\n".join(line.rstrip() for line in text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Run the benchmarks, print the table of ratios, write the samples.",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repetition")
    parser.add_argument(
        "--json", type=Path, default=DEFAULT_JSON, help="results file (default: %(default)s)"
    )
    parser.add_argument(
        "--only", nargs="+", choices=list(benchmarks(FULL)), metavar="NAME", help="%(choices)s"
    )
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    found = machine()
    print(
        f"machine: {found['cpus_usable']} of {found['cpus']} CPUs usable, "
        f"Python {found['python']}, torch {found['torch']}, {found['platform']}",
        flush=True,
    )
    started = time.time()
    rows: list[Row] = []
    for name, benchmark in benchmarks(settings).items():
        if args.only and name not in args.only:
            continue
        begun = time.monotonic()
        try:
            rows.extend(benchmark())
        except BenchmarkError as error:
            print(f"benchmarks: {name} failed: {error}", file=sys.stderr)
            return 1
        print(f"[{name}: {time.monotonic() - begun:.1f} s]", file=sys.stderr, flush=True)
    seconds = time.time() - started
    print(table(rows))
    result = {
        "quick": args.quick,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "seconds": seconds,
        "machine": found | {"load_average_after": list(machine()["load_average"])},
        "settings": settings.__dict__,
        "rows": [row.to_json() for row in rows],
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{len(rows)} rows in {seconds:.0f} s; samples in {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
