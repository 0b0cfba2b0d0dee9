"""Which device a process computes on and where it initialises its model."""

from __future__ import annotations

import torch

from xffl_hpc.distributed.state import DistributedState
from xffl_hpc.errors import ConfigurationError


def resolve_device(device: torch.device | str | None) -> torch.device:
    """``cuda`` when available else ``cpu``; an explicit device must be cpu or cuda[:N]."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ConfigurationError(f"device={device!r}: not a torch device ({error})") from None
    if resolved.type not in ("cpu", "cuda"):
        raise ConfigurationError(f"device={device!r}: expected 'cpu', 'cuda' or 'cuda:N'")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigurationError(f"device={device!r}: CUDA is not available on this host")
    return resolved


def _get_current_device(state: DistributedState) -> torch.device:
    """This process's compute device: ``cuda:(local rank % GPUs)`` on CUDA, else cpu.

    On CUDA it also makes that device current and empties its cache.
    """
    if state.device_type != "cuda":
        return torch.device("cpu")
    index = state.current_device.index
    if index is None:
        index = state.node_local_rank % state.device_count
    device = torch.device("cuda", index)
    torch.cuda.set_device(device)
    torch.cuda.empty_cache()
    return device


def _is_loader(state: DistributedState) -> bool:
    """Whether this rank materialises the weights when the others start on ``meta``."""
    if state.hsdp_mesh is not None:
        return state.replica_local_rank == 0
    if state.federated_rank is not None:
        return state.federated_local_rank == 0
    return state.rank == 0


def _get_init_device(state: DistributedState) -> tuple[torch.device, bool]:
    """Where to build the model, and whether meta initialisation is on.

    With several GPUs per host, one rank per sharding group (the reference's choice:
    rank 0, federated local rank 0, or shard index 0 under HSDP) builds the model on
    the CPU and the others on ``meta``, so host memory holds one copy; the caller then
    loads or broadcasts the weights. Otherwise the model is built on the compute device.
    """
    if state.device_type == "cuda" and state.device_count > 1:
        return (torch.device("cpu") if _is_loader(state) else torch.device("meta")), True
    return state.current_device, False


def _setup_devices(state: DistributedState) -> tuple[torch.device, torch.device, bool]:
    """Compute device, initialisation device and whether meta initialisation is on."""
    current = _get_current_device(state)
    state.current_device = current
    init_device, meta = _get_init_device(state)
    return current, init_device, meta
