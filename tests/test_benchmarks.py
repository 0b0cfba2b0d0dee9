"""Smoke test of ``python -m benchmarks --quick``: it runs, prints the table and writes
the JSON. Timings and ratios are never asserted on (see benchmarks/)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: Hard limit on the whole quick run, ranks included.
TIMEOUT = 50.0
BENCHMARKS = {"detect", "topology", "cli", "averaging", "bootstrap"}
HEADER = ["benchmark", "case", "ranks", "ours", "baseline", "ratio", "best", "target", "met"]
ROW_KEYS = {
    "benchmark",
    "case",
    "ranks",
    "unit",
    "ours",
    "baseline",
    "baseline_name",
    "ratio",
    "best_ratio",
    "target",
    "met",
    "samples",
}


def test_quick_run_prints_the_table_and_writes_the_json(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks", "--quick", "--json", str(results)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=TIMEOUT)
    finally:
        # The ranks share the benchmark's process group: this ends them all.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == 0, err
    header = next(line for line in out.splitlines() if line.startswith("benchmark"))
    assert header.split() == HEADER
    assert out.startswith("machine: ")
    assert str(results) in out
    data = json.loads(results.read_text())
    assert data["quick"] is True
    assert {"cpus", "python", "torch"} <= set(data["machine"])
    assert {row["benchmark"] for row in data["rows"]} == BENCHMARKS
    for row in data["rows"]:
        assert set(row) >= ROW_KEYS, row
        assert set(row["samples"]) == {"ours", "baseline"}
        assert row["benchmark"] in out
    bootstrap = [row for row in data["rows"] if row["benchmark"] == "bootstrap"]
    assert {row["case"] for row in bootstrap} == {"fsdp", "hsdp", "federated+hsdp"}
