"""Federated averaging of corresponding model shards across federated groups."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import nullcontext

import torch
import torch.distributed as dist

from xffl_hpc.distributed.state import DistributedState
from xffl_hpc.errors import ConfigurationError

#: Bytes of parameters coalesced into one collective.
DEFAULT_BUCKET_BYTES = 64 * 2**20


def _local(parameter: torch.Tensor) -> torch.Tensor:
    """The part of a parameter this rank holds (its shard, for FSDP2's DTensors)."""
    from torch.distributed.tensor import DTensor  # here: importing it costs half a second

    return parameter.to_local() if isinstance(parameter, DTensor) else parameter.data


def _buckets(tensors: Iterable[torch.Tensor], limit: int) -> Iterator[list[torch.Tensor]]:
    """Consecutive runs of same-dtype, same-device tensors of at most ``limit`` bytes."""
    bucket: list[torch.Tensor] = []
    size = 0
    for tensor in tensors:
        if tensor.numel() == 0:
            continue
        nbytes = tensor.numel() * tensor.element_size()
        if bucket and (
            size + nbytes > limit
            or tensor.dtype != bucket[0].dtype
            or tensor.device != bucket[0].device
        ):
            yield bucket
            bucket, size = [], 0
        bucket.append(tensor)
        size += nbytes
    if bucket:
        yield bucket


def _reduce(flat: torch.Tensor, group: dist.ProcessGroup, size: int, backend: str) -> float:
    """Reduce ``flat`` in place over ``group``; the factor that still makes it the mean.

    NCCL averages itself (1.0); gloo has no AVG, so it sums and the caller scales by
    ``1 / size`` on a pass it makes anyway (copying the bucket back).
    """
    if backend == "nccl":
        dist.all_reduce(flat, op=dist.ReduceOp.AVG, group=group)
        return 1.0
    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
    return 1.0 / size


def _scatter_back(flat: torch.Tensor, bucket: list[torch.Tensor], scale: float) -> None:
    """Copy the (scaled) bucket back into its tensors: one pass over the bytes."""
    if len(bucket) == 1 and flat.data_ptr() == bucket[0].data_ptr():
        if scale != 1.0:
            flat.mul_(scale)
        return
    for tensor, averaged in zip(
        bucket, torch.split(flat, [t.numel() for t in bucket]), strict=True
    ):
        if scale != 1.0:
            torch.mul(averaged.view_as(tensor), scale, out=tensor)
        else:
            tensor.copy_(averaged.view_as(tensor))


def _flatten(bucket: list[torch.Tensor]) -> torch.Tensor:
    """One flat tensor for the collective: the tensor itself when it is alone and
    contiguous (reduced in place, no copies), else a concatenation."""
    if len(bucket) == 1 and bucket[0].is_contiguous():
        return bucket[0].view(-1)
    return torch.cat([tensor.reshape(-1) for tensor in bucket])


@torch.no_grad()
def federated_average(
    model: torch.nn.Module | Iterable[torch.Tensor],
    state: DistributedState,
    bucket_bytes: int = DEFAULT_BUCKET_BYTES,
) -> None:
    """Average every parameter shard with the corresponding shards of the other groups.

    Shards are coalesced into buckets of ``bucket_bytes`` (one collective each). With
    HSDP and groups of different sizes only one replica per shard (the sender) takes
    part; it then broadcasts the average to the other replicas of its group, so every
    rank ends with the averaged shard. Call it on every rank, at the same step.
    """
    if not state.is_federated_scaling_setup():
        raise ConfigurationError(
            "federated_average needs federated scaling: pass federated= to "
            "setup_distributed_process_group"
        )
    parameters = model.parameters() if isinstance(model, torch.nn.Module) else model
    shards = [_local(parameter) for parameter in parameters]
    groups = state.federated_group
    streams = state.streams
    broadcast_from = None
    if not state.topology.symmetric:
        broadcast_from = state.rank if state.is_sender else state.receive_from
    for index, bucket in enumerate(_buckets(shards, bucket_bytes)):
        flat = _flatten(bucket)
        stream = streams[index % len(streams)] if streams else None
        context = torch.cuda.stream(stream) if stream is not None else nullcontext()
        if stream is not None:
            stream.wait_stream(torch.cuda.current_stream(flat.device))
        with context:
            scale = 1.0
            if groups is not None:
                group = groups[index % len(groups)]
                scale = _reduce(flat, group, dist.get_world_size(group), state.backend)
            if broadcast_from is not None and state.replica_group is not None:
                if scale != 1.0:  # the receivers get the mean, not the sum
                    flat.mul_(scale)
                    scale = 1.0
                dist.broadcast(flat, src=broadcast_from, group=state.replica_group[0])
            _scatter_back(flat, bucket, scale)
    if streams:
        for stream in streams:
            torch.cuda.current_stream().wait_stream(stream)
