"""``xffl-hpc emulate``: real scheduler variables per rank, fail-fast, no orphans."""

from __future__ import annotations

import io
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.fakeenv import clean_environ, free_port, srun_task
from tests.multiproc import all_gone, launch, printed_pids
from xffl_hpc import ConfigurationError
from xffl_hpc.emulate import emulate

ROOT = Path(__file__).resolve().parent.parent
RANK_SCRIPT = [sys.executable, str(ROOT / "tests" / "rank_script.py")]
ENV_JSON = [sys.executable, "-m", "xffl_hpc", "env", "--json"]


def run(command: list[str], **options: object) -> tuple[object, str]:
    console = io.StringIO()
    result = emulate(command, console=console, **options)
    return result, console.getvalue()


def placements(output: str) -> list[dict]:
    found = {}
    for line in output.splitlines():
        rank, _, text = line.partition("] ")
        if text.startswith("{"):
            found[int(rank.lstrip("["))] = json.loads(text)
    return [found[rank] for rank in sorted(found)]


@pytest.mark.parametrize(
    ("scheduler", "launcher", "options"),
    [
        ("slurm", "srun", {}),
        ("pbs", "pmi", {"launcher": "pmi"}),
        ("pbs", "pals", {"launcher": "pals"}),
        ("torchrun", "torchrun", {}),
    ],
)
def test_every_rank_gets_its_placement(scheduler: str, launcher: str, options: dict) -> None:
    result, output = run(
        ENV_JSON, scheduler=scheduler, nodes=2, tasks_per_node=[2, 1], job_id="4321", **options
    )
    assert result.returncode == 0, output
    found = placements(output)
    assert [p["rank"] for p in found] == [0, 1, 2]
    for p in found:
        assert (p["launcher"], p["world_size"], p["master_addr"]) == (launcher, 3, "127.0.0.1")
        assert p["local_rank"] == [0, 1, 0][p["rank"]]
        assert p["local_world_size"] == [2, 2, 1][p["rank"]]
        if launcher in ("srun", "pals", "torchrun"):
            assert p["node_rank"] == [0, 0, 1][p["rank"]]
    assert len({p["master_port"] for p in found}) == 1


def test_env_json_is_clean_where_the_emulated_names_resolve_nowhere() -> None:
    result, output = run(ENV_JSON, nodes=2, tasks_per_node=1, node_prefix="xffl-nowhere-")
    assert result.returncode == 0, output
    rank_lines = [line for line in output.splitlines() if not line.startswith("[emulate]")]
    assert len(rank_lines) == 2, output
    for rank, line in enumerate(placements("\n".join(rank_lines))):
        assert line["hostnames"] == ["xffl-nowhere-1", "xffl-nowhere-2"]
        assert line["node_rank"] == rank
        assert line["interface"].startswith("lo 127.0.0.1 (from XFFL_HPC_IFNAME)")


def test_het_components_and_progress_lines() -> None:
    result, output = run(ENV_JSON, nodes=2, tasks_per_node=[2, 1], het=[1, 1])
    assert result.returncode == 0
    assert [p["het_group"] for p in placements(output)] == [0, 0, 1]
    assert "[emulate] starting 3 ranks" in output
    assert "all ranks succeeded" in output


def test_a_failing_rank_brings_the_job_down_with_its_status() -> None:
    started = time.monotonic()
    result, output = run([*RANK_SCRIPT, "fail", "2"], nodes=2, tasks_per_node=2)
    assert (result.returncode, result.failed_rank) == (1, 2)
    assert time.monotonic() - started < 10
    assert "rank 2 status 1; stopping the other 3 ranks" in output
    assert "rank 0: killed by SIGTERM" in output
    assert len(printed_pids(output)) == 8 and all_gone(printed_pids(output))


def test_a_killed_rank_brings_the_job_down() -> None:
    result, output = run([*RANK_SCRIPT, "kill", "1"], nodes=1, tasks_per_node=3)
    assert (result.returncode, result.failed_rank) == (128 + 9, 1)
    assert "rank 1 killed by SIGKILL" in output
    assert all_gone(printed_pids(output))


def test_an_exception_while_peers_wait_in_a_collective_ends_the_job_fast() -> None:
    started = time.monotonic()
    result, output = run([*RANK_SCRIPT, "collective", "1"], nodes=2, tasks_per_node=2)
    assert (result.returncode, result.failed_rank) == (1, 1)
    assert time.monotonic() - started < 30  # the collective timeout is 60 s
    assert "RuntimeError: rank 1 fails while its peers are in a collective" in output
    assert "rank 1 status 1; stopping the other 3 ranks" in output
    assert len(printed_pids(output)) == 8 and all_gone(printed_pids(output))


def test_rank_ignoring_sigterm_is_killed_after_the_grace_period() -> None:
    script = [*RANK_SCRIPT, "stubborn", "0"]
    started = time.monotonic()
    result, output = run(script, nodes=1, tasks_per_node=2, grace=1.0, job_id="7")
    assert result.returncode == 128 + 9
    assert "rank 1: killed by SIGKILL" in output
    assert time.monotonic() - started < 10
    assert all_gone(printed_pids(output))


def test_interrupt_stops_everything(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "xffl_hpc", "emulate", "--nodes", "2", "--log-dir"]
    emulator = subprocess.Popen(
        [*command, str(tmp_path / "logs"), "--", *RANK_SCRIPT, "sleep"],
        env=clean_environ(),
        stdout=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(emulator.stdout), daemon=True)
    reader.start()
    deadline = time.monotonic() + 30
    while sum("pids" in line for line in lines) < 4 and time.monotonic() < deadline:
        time.sleep(0.1)
    emulator.send_signal(signal.SIGINT)
    assert emulator.wait(timeout=20) == 130
    reader.join(timeout=5)
    output = "".join(lines)
    assert "SIGINT received; stopping all ranks" in output
    assert all_gone(printed_pids(output))
    logs = sorted((tmp_path / "logs").iterdir())
    assert [log.name for log in logs] == [f"rank-{r}.log" for r in range(4)]
    assert logs[0].read_text().startswith("pids ")
    assert not (tmp_path / "logs").stat().st_mode & stat.S_IWOTH


def test_two_jobs_at_once_get_different_ports_and_both_run() -> None:
    outputs: dict[str, str] = {}

    def job(job_id: str) -> None:
        result, outputs[job_id] = run([*RANK_SCRIPT, "allreduce"], nodes=1, job_id=job_id)
        assert result.returncode == 0, outputs[job_id]

    threads = [threading.Thread(target=job, args=(job_id,)) for job_id in ("101", "202")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    ports = set()
    for output in outputs.values():
        sums = [line for line in output.splitlines() if " sum " in line]
        assert len(sums) == 2 and all(line.endswith("sum 3") for line in sums)
        ports.add(sums[0].split()[2])
    assert len(ports) == 2


def test_a_rank_given_another_jobs_port_stops_naming_both_and_that_job_trains(
    tmp_path: Path,
) -> None:
    port = free_port()
    release = tmp_path / "release"
    outcome: dict[str, object] = {}

    def job_a() -> None:
        outcome["a"] = run(
            [*RANK_SCRIPT, "hold", str(release)],
            nodes=2,
            tasks_per_node=1,
            job_id="4242",
            extra_env={"MASTER_PORT": str(port)},
        )

    holder = threading.Thread(target=job_a)
    holder.start()
    try:
        deadline = time.monotonic() + 90
        while not all(Path(f"{release}.ready{rank}").exists() for rank in (0, 1)):
            assert time.monotonic() < deadline and holder.is_alive(), outcome
            time.sleep(0.1)
        intruder = srun_task(4339, ["n1", "n2"], [1, 1], 1)
        rdzv = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "XFFL_HPC_TIMEOUT": "20"}
        started = time.monotonic()
        [result] = launch([intruder | rdzv], {}, timeout=60)
        assert time.monotonic() - started < 15
    finally:
        release.touch()
        holder.join(120)
    assert result.returncode == 3 and result.report is not None, result.stderr[-2000:]
    assert result.report["message"].startswith(
        f"rank 1 of 2 (job 4339, step 0) reached the rendezvous at 127.0.0.1:{port}, "
        "which belongs to job 4242, step 0"
    )
    finished, output = outcome["a"]
    assert finished.returncode == 0, output
    assert output.count(f"port {port} sum 3") == 2


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"scheduler": "lsf"}, "scheduler='lsf'"),
        ({"nodes": 2, "tasks_per_node": [2]}, "tasks_per_node=[2] gives 1 node(s)"),
        ({"nodes": 2, "het": [1, 2]}, "het=[1, 2]"),
        ({"scheduler": "pbs", "het": [1, 1]}, "het=[1, 1]"),
        ({"job_id": "abc"}, "job_id='abc'"),
        ({"node_prefix": "gpu,"}, "node_prefix='gpu,'"),
    ],
)
def test_bad_options(options: dict, named: str) -> None:
    with pytest.raises(ConfigurationError) as error:
        emulate(ENV_JSON, **options)
    assert named in str(error.value)


def test_cli_without_command_exits_2() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "xffl_hpc", "emulate", "--nodes", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_environ() | {"PATH": os.environ["PATH"]},
    )
    assert done.returncode == 2
    assert "needs a command" in done.stderr


def test_log_dir_holds_each_ranks_output_and_is_not_open_to_others(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    result, _ = run(ENV_JSON, nodes=1, tasks_per_node=2, log_dir=logs)
    assert result.returncode == 0
    for rank in (0, 1):
        log = logs / f"rank-{rank}.log"
        assert json.loads(log.read_text())["rank"] == rank
        assert stat.S_IMODE(log.stat().st_mode) & 0o002 == 0
    assert stat.S_IMODE(logs.stat().st_mode) & 0o007 == 0
