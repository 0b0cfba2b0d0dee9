"""SLURM allocations and srun steps, from hand-made and generated environments."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fakeenv import srun_task
from xffl_hpc import PlacementError, detect
from xffl_hpc.schedulers.rendezvous import PORT_BASE, PORT_SPAN
from xffl_hpc.schedulers.slurm import parse_tasks_per_node

HOSTS = ["gpu001", "gpu002", "gpu003"]


@pytest.mark.parametrize(
    ("text", "counts"),
    [
        ("4", (4,)),
        ("4(x2)", (4, 4)),
        ("4(x2),2", (4, 4, 2)),
        ("2,1", (2, 1)),
        ("1,3(x3),2(x1)", (1, 3, 3, 3, 2)),
    ],
)
def test_tasks_per_node_forms(text: str, counts: tuple[int, ...]) -> None:
    assert parse_tasks_per_node("SLURM_STEP_TASKS_PER_NODE", text) == counts


@pytest.mark.parametrize("text", ["4(x)", "x2", "4(2)", "0", "4(x0)", "", "4,,2", "-1", "٣"])
def test_tasks_per_node_malformed_names_variable(text: str) -> None:
    with pytest.raises(PlacementError, match="SLURM_STEP_TASKS_PER_NODE="):
        parse_tasks_per_node("SLURM_STEP_TASKS_PER_NODE", text)


def test_srun_task_of_non_uniform_step() -> None:
    env = srun_task(4242, HOSTS, [4, 4, 2], rank=9)
    placement = detect(env, hostname="gpu003")
    assert placement.to_json() | {"master_port": None} == {
        "scheduler": "slurm",
        "launcher": "srun",
        "job_id": "4242",
        "rank": 9,
        "world_size": 10,
        "local_rank": 1,
        "local_world_size": 2,
        "node_rank": 2,
        "num_nodes": 3,
        "master_addr": "gpu001",
        "master_port": None,
        "hostnames": HOSTS,
        "tasks_per_node": [4, 4, 2],
        "step_id": "0",
        "het_group": None,
        "het_size": None,
        "cpus_per_task": None,
        "gpus_per_task": None,
    }
    assert PORT_BASE <= placement.master_port < PORT_BASE + PORT_SPAN


def test_batch_shell_is_a_single_process() -> None:
    env = srun_task(7, HOSTS, [2, 2, 2], rank=0)
    for name in ("SLURM_STEP_ID", "SLURM_STEPID"):
        del env[name]
    placement = detect(env, hostname="gpu001")
    assert (placement.scheduler, placement.launcher, placement.job_id) == ("slurm", "none", "7")
    assert (placement.rank, placement.world_size, placement.local_world_size) == (0, 1, 1)
    assert placement.hostnames == ("gpu001",)
    assert placement.master_addr == "127.0.0.1"


#: A SLURM task outside any step: what srun's task 3 of 4 would have, less the step.
OUTSIDE_STEP = {
    "SLURM_JOB_ID": "7",
    "SLURM_JOB_NODELIST": "n[1-2]",
    "SLURM_NTASKS": "4",
    "SLURM_PROCID": "3",
    "SLURM_NODEID": "1",
    "SLURM_LOCALID": "1",
}


def test_nonzero_rank_outside_a_step_is_refused() -> None:
    with pytest.raises(PlacementError) as error:
        detect(OUTSIDE_STEP, hostname="n2")
    message = str(error.value)
    assert message.startswith("SLURM_PROCID=3 but SLURM_STEP_ID is not set: ")
    assert "SLURM_NTASKS counts the job's tasks" in message
    assert message.endswith("start the tasks with srun, or set RANK, WORLD_SIZE and LOCAL_RANK")


def test_malformed_rank_outside_a_step_names_it() -> None:
    with pytest.raises(PlacementError, match=r"^SLURM_PROCID='x': expected a whole number"):
        detect(OUTSIDE_STEP | {"SLURM_PROCID": "x"})


@pytest.mark.parametrize(
    ("launcher_env", "launcher", "rank", "local_rank"),
    [
        # Open MPI's mpirun: the rank's SLURM_PROCID is its daemon's node index.
        (
            {
                "OMPI_COMM_WORLD_RANK": "3",
                "OMPI_COMM_WORLD_SIZE": "4",
                "OMPI_COMM_WORLD_LOCAL_RANK": "1",
                "OMPI_COMM_WORLD_LOCAL_SIZE": "2",
            },
            "openmpi",
            3,
            1,
        ),
        # Hydra's mpiexec over ssh: the batch shell's variables are forwarded.
        (
            {"PMI_RANK": "2", "PMI_SIZE": "4", "MPI_LOCALRANKID": "0", "MPI_LOCALNRANKS": "2"},
            "pmi",
            2,
            0,
        ),
        # env:// set by hand (or by torchrun) wins over any SLURM variable.
        ({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}, "torchrun", 1, 1),
    ],
)
def test_launcher_outside_a_step_wins_over_slurm_procid(
    launcher_env: dict[str, str], launcher: str, rank: int, local_rank: int
) -> None:
    placement = detect(OUTSIDE_STEP | launcher_env, hostname="n2")
    assert (placement.launcher, placement.rank, placement.world_size) == (launcher, rank, 4)
    assert (placement.scheduler, placement.local_rank) == ("slurm", local_rank)


def test_no_scheduler_is_a_single_process() -> None:
    placement = detect({}, hostname="laptop")
    assert placement.to_json() | {"hostnames": None} == {
        "scheduler": "none",
        "launcher": "none",
        "job_id": None,
        "rank": 0,
        "world_size": 1,
        "local_rank": 0,
        "local_world_size": 1,
        "node_rank": 0,
        "num_nodes": 1,
        "master_addr": "127.0.0.1",
        "master_port": None,
        "hostnames": None,
        "tasks_per_node": None,
        "step_id": None,
        "het_group": None,
        "het_size": None,
        "cpus_per_task": None,
        "gpus_per_task": None,
    }
    assert placement.hostnames == ("laptop",)


def test_port_is_shared_by_ranks_and_differs_between_jobs() -> None:
    ports = {detect(srun_task(100, HOSTS, [2, 2, 2], r)).master_port for r in range(6)}
    assert len(ports) == 1
    others = {detect(srun_task(job, HOSTS, [2, 2, 2], 0)).master_port for job in range(100, 200)}
    assert len(others) == 100


def test_port_differs_between_steps_of_one_job() -> None:
    env = srun_task(100, HOSTS, [2, 2, 2], 0)
    first = detect(env).master_port
    env["SLURM_STEP_ID"] = env["SLURM_STEPID"] = "1"
    assert detect(env).master_port != first


def test_master_variables_win() -> None:
    env = srun_task(100, HOSTS, [2, 2, 2], 3) | {"MASTER_ADDR": "10.1.2.3", "MASTER_PORT": "4000"}
    placement = detect(env)
    assert (placement.master_addr, placement.master_port) == ("10.1.2.3", 4000)


def test_interface_address_on_master_node() -> None:
    env = srun_task(100, HOSTS, [2, 2, 2], 1) | {"XFFL_HPC_IFNAME": "lo"}
    assert detect(env).master_addr == "127.0.0.1"
    other_node = srun_task(100, HOSTS, [2, 2, 2], 2) | {"XFFL_HPC_IFNAME": "lo"}
    assert detect(other_node).master_addr == "gpu001"


def test_unknown_interface_names_variable() -> None:
    env = srun_task(100, HOSTS, [2, 2, 2], 0) | {"XFFL_HPC_IFNAME": "ib9"}
    with pytest.raises(PlacementError, match=r"XFFL_HPC_IFNAME='ib9': no such network interface"):
        detect(env)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"SLURM_PROCID": "6"}, "SLURM_PROCID=6 with SLURM_STEP_NUM_TASKS=6"),
        ({"SLURM_PROCID": "two"}, "SLURM_PROCID='two'"),
        ({"SLURM_LOCALID": "2"}, "SLURM_LOCALID=2 with SLURM_STEP_TASKS_PER_NODE=2"),
        ({"SLURM_NODEID": "3"}, "SLURM_NODEID=3 with SLURM_STEP_NUM_NODES=3"),
        ({"SLURM_STEP_TASKS_PER_NODE": "2(x2)"}, "SLURM_STEP_TASKS_PER_NODE adds up to 4"),
        ({"SLURM_STEP_TASKS_PER_NODE": "2,2,1,1"}, "SLURM_STEP_TASKS_PER_NODE gives 4 node(s)"),
        ({"SLURM_STEP_NODELIST": "gpu[001-002]"}, "SLURM_STEP_NODELIST names 2 host(s)"),
        ({"SLURM_STEP_NODELIST": "gpu[001-"}, "SLURM_STEP_NODELIST='gpu[001-'"),
        ({"SLURM_JOB_ID": "12a"}, "SLURM_JOB_ID='12a'"),
        ({"SLURM_STEP_NUM_TASKS": "0"}, "SLURM_STEP_NUM_TASKS='0'"),
        ({"SLURM_GPUS_PER_TASK": "gpu:x"}, "SLURM_GPUS_PER_TASK='x'"),
    ],
)
def test_inconsistent_step_names_variables(change: dict[str, str], named: str) -> None:
    env = srun_task(100, HOSTS, [2, 2, 2], 1) | change
    with pytest.raises(PlacementError) as error:
        detect(env)
    assert named in str(error.value)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"SLURM_NODEID": "3"}, "SLURM_NODEID=3 with the host count of SLURM_STEP_NODELIST=3"),
        (
            {"SLURM_STEP_TASKS_PER_NODE": "2,2,1,1"},
            "SLURM_STEP_TASKS_PER_NODE gives 4 node(s) but the host count of SLURM_STEP_NODELIST=3",
        ),
    ],
)
def test_node_count_from_the_node_list_names_it(change: dict[str, str], named: str) -> None:
    env = srun_task(100, HOSTS, [2, 2, 2], 1) | change
    del env["SLURM_STEP_NUM_NODES"]
    with pytest.raises(PlacementError) as error:
        detect(env)
    assert named in str(error.value)


def test_gpus_and_cpus_per_task() -> None:
    env = srun_task(5, HOSTS, [1, 1, 1], 0) | {
        "SLURM_GPUS_PER_TASK": "a100:1",
        "SLURM_CPUS_PER_TASK": "8",
    }
    placement = detect(env)
    assert (placement.gpus_per_task, placement.cpus_per_task) == (1, 8)


def test_torchrun_inside_srun_takes_precedence() -> None:
    srun = srun_task(55, HOSTS[:2], [1, 1], rank=0)
    env = srun | {
        "RANK": "3",
        "WORLD_SIZE": "4",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "2",
        "GROUP_RANK": "1",
        "GROUP_WORLD_SIZE": "2",
        "MASTER_ADDR": "gpu002",
        "MASTER_PORT": "29400",
        "TORCHELASTIC_RUN_ID": "55",
    }
    placement = detect(env, hostname="gpu001")
    assert placement.to_json() | {"tasks_per_node": None} == {
        "scheduler": "slurm",
        "launcher": "torchrun",
        "job_id": "55",
        "rank": 3,
        "world_size": 4,
        "local_rank": 1,
        "local_world_size": 2,
        "node_rank": 1,
        "num_nodes": 2,
        "master_addr": "gpu002",
        "master_port": 29400,
        "hostnames": None,
        "tasks_per_node": None,
        "step_id": None,
        "het_group": None,
        "het_size": None,
        "cpus_per_task": None,
        "gpus_per_task": None,
    }


def test_hand_set_env_vars_agreeing_with_srun_keep_srun() -> None:
    env = srun_task(9, HOSTS, [2, 2, 2], rank=3) | {"RANK": "3", "WORLD_SIZE": "6"}
    placement = detect(env)
    assert (placement.launcher, placement.local_rank, placement.node_rank) == ("srun", 1, 1)
    assert placement.hostnames == tuple(HOSTS)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"RANK": "1"}, "RANK='1' is set but WORLD_SIZE is not"),
        ({"WORLD_SIZE": "2"}, "WORLD_SIZE='2' is set but RANK is not"),
        ({"RANK": "1", "WORLD_SIZE": "2"}, "LOCAL_RANK is not"),
        ({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}, "RANK=2 with WORLD_SIZE=2"),
        ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "x"}, "LOCAL_RANK='x'"),
        ({"MASTER_PORT": "70000"}, "MASTER_PORT=70000"),
    ],
)
def test_bad_env_rendezvous_names_variables(env: dict[str, str], named: str) -> None:
    with pytest.raises(PlacementError) as error:
        detect(env)
    assert named in str(error.value)


def test_standalone_torchrun_is_one_node() -> None:
    env = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    placement = detect(env | {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}, "box")
    assert (placement.node_rank, placement.num_nodes, placement.hostnames) == (0, 1, ("box",))


node_counts = st.lists(st.integers(min_value=1, max_value=5), min_size=1, max_size=12)


@settings(max_examples=150, deadline=None)
@given(counts=node_counts, job=st.integers(min_value=1, max_value=10**9))
def test_every_rank_once_and_local_ranks_per_node(counts: list[int], job: int) -> None:
    hosts = [f"node{i:03d}" for i in range(len(counts))]
    placements = [
        detect(srun_task(job, hosts, counts, rank), hostname=hosts[0])
        for rank in range(sum(counts))
    ]
    assert sorted(p.rank for p in placements) == list(range(sum(counts)))
    for node, count in enumerate(counts):
        on_node = [p for p in placements if p.node_rank == node]
        assert sorted(p.local_rank for p in on_node) == list(range(count))
        assert {p.local_world_size for p in on_node} == {count}
        assert {p.hostnames[node] for p in on_node} == {hosts[node]}
    assert len({(p.master_addr, p.master_port) for p in placements}) == 1
    assert placements[0].tasks_per_node == tuple(counts)
