"""The distributed core: process group, devices, FSDP/HSDP meshes, federated scaling."""

from xffl_hpc.distributed.aggregation import federated_average
from xffl_hpc.distributed.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from xffl_hpc.distributed.devices import _get_current_device, _get_init_device, _setup_devices
from xffl_hpc.distributed.preemption import REQUEUE_EXIT_STATUS, Preemption
from xffl_hpc.distributed.setup import (
    cleanup_distributed_process_group,
    get_appropriate_sharding_strategy,
    init_distributed_process_group,
    setup_distributed_process_group,
)
from xffl_hpc.distributed.state import DistributedState

__all__ = [
    "REQUEUE_EXIT_STATUS",
    "Checkpoint",
    "DistributedState",
    "Preemption",
    "_get_current_device",
    "_get_init_device",
    "_setup_devices",
    "cleanup_distributed_process_group",
    "federated_average",
    "get_appropriate_sharding_strategy",
    "init_distributed_process_group",
    "load_checkpoint",
    "save_checkpoint",
    "setup_distributed_process_group",
]
