"""setup_distributed_process_group's argument checks: raised before any rendezvous."""

from __future__ import annotations

import time

import pytest
import torch
import torch.distributed as dist

from tests.fakeenv import srun_task
from xffl_hpc import (
    ConfigurationError,
    PlacementError,
    TopologyError,
    cleanup_distributed_process_group,
    federated_average,
    get_appropriate_sharding_strategy,
    setup_distributed_process_group,
)

SLURM = srun_task(3, ["n1", "n2"], [2, 2], 1) | {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}


@pytest.mark.parametrize(
    ("kwargs", "environ", "error", "named"),
    [
        ({"backend": "tcp"}, {}, ConfigurationError, "backend='tcp'"),
        ({"backend": "nccl"}, {}, ConfigurationError, "backend='nccl' needs a CUDA device"),
        ({"backend": "mpi"}, {}, ConfigurationError, "backend='mpi': this torch build"),
        ({"device": "tpu"}, {}, ConfigurationError, "device='tpu'"),
        ({"device": "cuda"}, {}, ConfigurationError, "CUDA is not available"),
        ({"timeout": 0}, {}, ConfigurationError, "timeout=0"),
        ({}, {"XFFL_HPC_TIMEOUT": "soon"}, ConfigurationError, "XFFL_HPC_TIMEOUT='soon'"),
        ({"streams": 0}, {}, ConfigurationError, "streams=0"),
        ({"rank": 4}, SLURM, PlacementError, "argument rank=4 with SLURM_STEP_NUM_TASKS=4"),
        ({"hsdp": 3}, SLURM, TopologyError, "hsdp=3"),
        ({"federated": 4}, SLURM, TopologyError, "federated=4"),
        ({"federated": (1, 2)}, SLURM, TopologyError, "federated=(1, 2) adds up to 3"),
        (
            {},
            {"FLUX_JOB_ID": "f1", "FLUX_TASK_RANK": "0", "FLUX_JOB_SIZE": "2"}
            | {"FLUX_TASK_LOCAL_ID": "0"},
            ConfigurationError,
            "MASTER_ADDR is not set",
        ),
        ({}, {"XFFL_FEDERATED_LOCAL_WORLD_SIZE": "two"}, TopologyError, "two"),
        ({}, SLURM | {"XFFL_HPC_HSDP": "3"}, TopologyError, "XFFL_HPC_HSDP=3: "),
        ({}, SLURM | {"XFFL_HPC_HSDP": "x"}, PlacementError, "XFFL_HPC_HSDP='x'"),
        ({}, SLURM | {"XFFL_HPC_FEDERATED": "1,2"}, TopologyError, "XFFL_HPC_FEDERATED=1,2: "),
        (
            {"group_local_size": 4},
            SLURM,
            PlacementError,
            "argument group_local_size=4 but SLURM_STEP_TASKS_PER_NODE gives 2 task(s) to node 0",
        ),
        (
            {"group_world_size": 3},
            SLURM,
            PlacementError,
            "names 2 host(s) but argument group_world_size=3",
        ),
        (
            {},
            {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_PORT": "1"},
            ConfigurationError,
            "MASTER_ADDR is not set and no batch scheduler is in the environment to give the "
            "rendezvous address: set MASTER_ADDR or pass master_addr",
        ),
        ({}, SLURM | {"XFFL_HPC_FEDERATED": "(2"}, TopologyError, "XFFL_HPC_FEDERATED="),
    ],
)
def test_bad_arguments_fail_before_the_rendezvous(
    kwargs: dict, environ: dict[str, str], error: type, named: str
) -> None:
    started = time.monotonic()
    with pytest.raises(error) as raised:
        setup_distributed_process_group(**kwargs, environ=environ)
    assert named in str(raised.value)
    assert not dist.is_initialized()
    assert time.monotonic() - started < 5


def test_single_process_state_and_idempotent_cleanup() -> None:
    state = setup_distributed_process_group(environ={})
    try:
        assert (state.rank, state.world_size, state.backend) == (0, 1, "gloo")
        assert state.is_fsdp_setup() and not state.is_hsdp_setup()
        assert not state.is_federated_scaling_setup()
        assert get_appropriate_sharding_strategy(state).name == "FULL_SHARD"
        assert (state.current_device, state.init_device) == (torch.device("cpu"),) * 2
        with pytest.raises(ConfigurationError, match="needs federated scaling"):
            federated_average(torch.nn.Linear(2, 2), state)
    finally:
        cleanup_distributed_process_group(state)
    cleanup_distributed_process_group(state)
    cleanup_distributed_process_group()
    assert not dist.is_initialized()
    assert state.fsdp_mesh is None


def test_hsdp_from_the_environment_and_the_argument_winning() -> None:
    state = setup_distributed_process_group(environ={"XFFL_HPC_HSDP": "1"})
    try:
        assert state.is_hsdp_setup() and state.replica_local_size == 1
    finally:
        cleanup_distributed_process_group(state)
    state = setup_distributed_process_group(hsdp=1, environ={"XFFL_HPC_HSDP": "3"})
    try:
        assert state.replica_local_size == 1
    finally:
        cleanup_distributed_process_group(state)
