"""examples/federated_mlp.py run for real: one process per rank, each with srun's variables.

Every rank exits 0; rank 0 prints the layout, one "shards agree" line per averaging round
and a loss that falls. A separate run shows the agreement check does catch differing shards.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.fakeenv import clean_environ, free_port, srun_task
from tests.multiproc import ROOT, RUN_TIMEOUT, _kill_tree

EXAMPLE = ROOT / "examples" / "federated_mlp.py"
FEW_STEPS = ["--steps", "20", "--every", "5"]
STEP_LINE = re.compile(
    r"^step (\d+)  loss (\d+\.\d+)  \(averaged across (\d+) federated groups: shards agree\)$",
    re.MULTILINE,
)
FINAL_LINE = re.compile(
    r"^loss (\d+\.\d+) -> (\d+\.\d+) in (\d+) steps, \d+\.\d+ s "
    r"\(weights fingerprint ([\d.e+-]+)\)$",
    re.MULTILINE,
)


@dataclass
class Rank:
    returncode: int
    stdout: str
    stderr: str


def run_ranks(tmp_path: Path, counts: list[int], command: list[str], **extra: str) -> list[Rank]:
    """Run ``command`` once per rank of a block-distributed srun step over ``counts`` nodes.

    Output goes to files (no pipe can fill up and stall a rank); every process is killed,
    with its children, once ``RUN_TIMEOUT`` seconds have passed.
    """
    hosts = [f"n{i + 1}" for i in range(len(counts))]
    common = {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "XFFL_HPC_TIMEOUT": "60",
        "PYTHONPATH": str(ROOT),
        **extra,
    }
    processes, files = [], []
    try:
        for rank in range(sum(counts)):
            out, err = tmp_path / f"rank{rank}.out", tmp_path / f"rank{rank}.err"
            files.append((out, err))
            with out.open("w") as stdout, err.open("w") as stderr:
                processes.append(
                    subprocess.Popen(
                        command,
                        env=clean_environ() | srun_task(42, hosts, counts, rank) | common,
                        cwd=ROOT,
                        stdout=stdout,
                        stderr=stderr,
                    )
                )
        deadline = time.monotonic() + RUN_TIMEOUT
        for process in processes:
            try:
                process.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                raise AssertionError(f"ranks still running after {RUN_TIMEOUT} s") from None
    finally:
        for process in processes:
            _kill_tree(process)
    return [
        Rank(process.returncode, out.read_text(), err.read_text())
        for process, (out, err) in zip(processes, files, strict=True)
    ]


def run_example(tmp_path: Path, counts: list[int], *args: str, **extra: str) -> str:
    """Run the example; check every rank exits 0 and only rank 0 prints; its output."""
    ranks = run_ranks(tmp_path, counts, [sys.executable, str(EXAMPLE), *args], **extra)
    for rank, result in enumerate(ranks):
        assert result.returncode == 0, f"rank {rank} failed:\n{result.stderr[-3000:]}"
    for rank, result in enumerate(ranks[1:], start=1):
        assert result.stdout == "", f"rank {rank} printed:\n{result.stdout}"
    return ranks[0].stdout


def check_rounds(output: str, steps: list[int], groups: int = 2) -> None:
    """One "shards agree" line per averaging round; the logged loss clearly falls."""
    rounds = STEP_LINE.findall(output)
    assert [int(step) for step, _, _ in rounds] == steps, output
    assert {int(count) for _, _, count in rounds} == {groups}
    losses = [float(loss) for _, loss, _ in rounds]
    assert losses[-1] < losses[0] / 2, losses
    final = FINAL_LINE.search(output)
    assert final is not None, output
    assert (final[1], final[2], int(final[3])) == (rounds[0][1], rounds[-1][1], steps[-1])


def test_two_nodes_two_federated_groups(tmp_path: Path) -> None:
    output = run_example(tmp_path, [2, 2], "--federated", "2", *FEW_STEPS)
    assert "rank 0/4 on node 0/2 (local rank 0/2), backend gloo" in output
    assert "federated group 0 of 2 (sizes (2, 2)), local rank 0, sender" in output
    assert "federated: world size 4, 2 federated groups of 2 ranks" in output
    assert "averaging groups (2):  [0 2]  [1 3]" in output
    check_rounds(output, [5, 10, 15, 20])


def test_hsdp_inside_federated_groups(tmp_path: Path) -> None:
    output = run_example(tmp_path, [2, 2], "--hsdp", "2", "--federated", "2", *FEW_STEPS)
    assert "federated+hsdp: world size 4, 2 federated groups of 2 ranks, hsdp 2" in output
    check_rounds(output, [5, 10, 15, 20])


def test_asymmetric_groups_reach_non_senders(tmp_path: Path) -> None:
    output = run_example(tmp_path, [2, 2, 2], "--federated", "2,4", "--hsdp", "2", *FEW_STEPS)
    assert "2 federated groups of (2, 4) ranks, hsdp 2 (replicas per group (1, 2))" in output
    assert "3:F1 R0 S1 <5  4:F1 R1 S0 <2" in output
    check_rounds(output, [5, 10, 15, 20])


def test_layout_from_the_environment_and_a_last_partial_round(tmp_path: Path) -> None:
    """No layout flags: XFFL_HPC_FEDERATED decides; a run not a multiple of --every
    averages and logs once more at its last step."""
    output = run_example(tmp_path, [2, 2], "--steps", "12", "--every", "5", XFFL_HPC_FEDERATED="2")
    assert "mode federated;" in output
    check_rounds(output, [5, 10, 12])


CHECK_DIFFERENT_MODELS = f"""
import importlib.util
from xffl_hpc import cleanup_distributed_process_group, setup_distributed_process_group
spec = importlib.util.spec_from_file_location("federated_mlp", {str(EXAMPLE)!r})
example = importlib.util.module_from_spec(spec)
spec.loader.exec_module(example)
state = setup_distributed_process_group(federated=1)
try:
    model = example.build_model(state, seed=state.rank)  # a different model on each rank
    example.check_shards_agree(model, state)
finally:
    cleanup_distributed_process_group(state)
"""


def test_agreement_check_catches_differing_shards(tmp_path: Path) -> None:
    ranks = run_ranks(tmp_path, [1, 1], [sys.executable, "-c", CHECK_DIFFERENT_MODELS])
    for rank, result in enumerate(ranks):
        assert result.returncode != 0, f"rank {rank} did not fail"
        assert "RuntimeError: parameter '0.weight': the shard of rank(s) [1] differs" in (
            result.stderr
        ), result.stderr[-3000:]
        assert "averaging group [0, 1]" in result.stderr
