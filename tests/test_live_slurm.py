"""`xffl-hpc env` inside real SLURM 22.05 jobs on the emulated two-node cluster."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import pytest

from tests.live_slurm import ENV_COMMAND, placements, require_cluster, run, sbatch_and_wait

pytestmark = pytest.mark.slurm


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    return require_cluster()


def srun_placements(env: dict[str, str], *options: str) -> list[dict]:
    done = run(["srun", *options, *ENV_COMMAND], env)
    assert done.returncode == 0, done.stderr
    return placements(done.stdout)


def test_srun_two_nodes_two_tasks(env: dict[str, str]) -> None:
    found = srun_placements(env, "--nodes=2", "--ntasks-per-node=2")
    assert [p["rank"] for p in found] == [0, 1, 2, 3]
    for p in found:
        assert (p["scheduler"], p["launcher"], p["world_size"]) == ("slurm", "srun", 4)
        assert (p["node_rank"], p["local_rank"]) == divmod(p["rank"], 2)
        assert (p["local_world_size"], p["num_nodes"]) == (2, 2)
        assert p["hostnames"] == ["n1", "n2"]
        assert p["master_addr"] == "n1"
    assert len({(p["job_id"], p["master_port"]) for p in found}) == 1


def test_srun_non_uniform_tasks_per_node(env: dict[str, str]) -> None:
    found = srun_placements(env, "--nodes=2", "--ntasks=3")
    assert [p["rank"] for p in found] == [0, 1, 2]
    assert all(p["tasks_per_node"] == [2, 1] for p in found)
    assert [(p["node_rank"], p["local_rank"], p["local_world_size"]) for p in found] == [
        (0, 0, 2),
        (0, 1, 2),
        (1, 0, 1),
    ]


def test_srun_cyclic_distribution(env: dict[str, str]) -> None:
    found = srun_placements(env, "--nodes=2", "--ntasks-per-node=2", "--distribution=cyclic")
    assert [(p["rank"], p["node_rank"], p["local_rank"]) for p in found] == [
        (0, 0, 0),
        (1, 1, 0),
        (2, 0, 1),
        (3, 1, 1),
    ]


def test_batch_shell_and_salloc_are_single_processes(env: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "batch.out"
    command = shlex.join(ENV_COMMAND)
    options = ["--nodes=2", "--ntasks-per-node=2", f"--output={out}", "--wrap", command]
    batch, _ = sbatch_and_wait(options, lambda args: run(args, env))
    assert batch.returncode == 0, batch.stderr
    interactive = run(["salloc", "--nodes=2", *ENV_COMMAND], env)
    assert interactive.returncode == 0, interactive.stderr
    for found in (placements(out.read_text()), placements(interactive.stdout)):
        assert len(found) == 1
        p = found[0]
        assert (p["scheduler"], p["launcher"], p["rank"], p["world_size"]) == (
            "slurm",
            "none",
            0,
            1,
        )
        assert p["job_id"] is not None


def test_het_job_components(env: dict[str, str], tmp_path: Path) -> None:
    script = tmp_path / "het.sh"
    script.write_text(
        "#!/bin/bash\n"
        "#SBATCH --nodes=1 --ntasks-per-node=2\n"
        "#SBATCH hetjob\n"
        "#SBATCH --nodes=1 --ntasks-per-node=1\n"
        f"srun --het-group=0,1 {shlex.join(ENV_COMMAND)}\n"
    )
    out = tmp_path / "het.out"
    done, _ = sbatch_and_wait([f"--output={out}", str(script)], lambda args: run(args, env))
    assert done.returncode == 0, done.stderr
    found = placements(out.read_text())
    assert [(p["rank"], p["het_group"], p["het_size"]) for p in found] == [
        (0, 0, 2),
        (1, 0, 2),
        (2, 1, 2),
    ]
    assert all(p["tasks_per_node"] == [2, 1] and p["world_size"] == 3 for p in found)
    assert len({p["master_port"] for p in found}) == 1


def test_broken_environment_exits_2_naming_the_variable(env: dict[str, str]) -> None:
    done = run(["srun", "--ntasks=1", "env", "MASTER_PORT=99999", *ENV_COMMAND], env)
    assert done.returncode == 2
    assert "MASTER_PORT=99999" in done.stderr
    assert "Traceback" not in done.stderr


def test_example_trains_unchanged_under_srun(env: dict[str, str]) -> None:
    root = Path(__file__).resolve().parent.parent
    example = [sys.executable, str(root / "examples" / "federated_mlp.py"), "--steps", "20"]
    options = ["--nodes=2", "--ntasks-per-node=2"]
    done = run(["srun", *options, *example, "--federated", "2"], env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "shards agree" in done.stdout
    final = [line for line in done.stdout.splitlines() if " -> " in line][-1]
    first, last = (float(part.split()[-1]) for part in final.split(" in ")[0].split(" -> "))
    assert last < first
