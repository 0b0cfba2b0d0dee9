"""``setup_distributed_process_group`` and its companions (the reference API)."""

from __future__ import annotations

import gc
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from xffl_hpc.distributed.devices import _setup_devices, resolve_device
from xffl_hpc.distributed.groups import build_meshes_and_groups
from xffl_hpc.distributed.netcheck import network_check
from xffl_hpc.distributed.nodes import NodeLayout, assemble, facts
from xffl_hpc.distributed.rendezvous import join
from xffl_hpc.distributed.state import DistributedState
from xffl_hpc.errors import ConfigurationError, DistributedError, TopologyError
from xffl_hpc.schedulers import Placement, detect
from xffl_hpc.schedulers.variables import parse_int
from xffl_hpc.topology import (
    Topology,
    federated_from_components,
    federated_in_nodes,
    parse_federated,
)

#: Seconds every rendezvous and collective may wait, unless set otherwise.
DEFAULT_TIMEOUT = 600.0
TIMEOUT_VARIABLE = "XFFL_HPC_TIMEOUT"
#: The reference's variable: nodes per federated group, e.g. "2,2".
FEDERATED_NODES_VARIABLE = "XFFL_FEDERATED_LOCAL_WORLD_SIZE"
#: ``hsdp`` and ``federated`` (in ranks) when not passed, e.g. from a batch script.
HSDP_VARIABLE = "XFFL_HPC_HSDP"
FEDERATED_VARIABLE = "XFFL_HPC_FEDERATED"
_BACKENDS = ("nccl", "gloo", "mpi")


def _timeout(timeout: float | timedelta | None, environ: Mapping[str, str]) -> timedelta:
    if isinstance(timeout, timedelta):
        seconds, name = timeout.total_seconds(), "timeout"
    elif timeout is not None:
        seconds, name = float(timeout), "timeout"
    elif environ.get(TIMEOUT_VARIABLE, "").strip():
        name = TIMEOUT_VARIABLE
        try:
            seconds = float(environ[TIMEOUT_VARIABLE])
        except ValueError:
            raise ConfigurationError(
                f"{TIMEOUT_VARIABLE}={environ[TIMEOUT_VARIABLE]!r}: expected seconds"
            ) from None
    else:
        seconds, name = DEFAULT_TIMEOUT, "timeout"
    if not seconds > 0:
        raise ConfigurationError(f"{name}={seconds!r}: expected a positive number of seconds")
    return timedelta(seconds=seconds)


def _backend(backend: str | None, device: torch.device) -> str:
    if backend is None:
        return "nccl" if device.type == "cuda" else "gloo"
    name = str(backend).lower()
    if name not in _BACKENDS:
        raise ConfigurationError(f"backend={backend!r}: expected one of {', '.join(_BACKENDS)}")
    if name == "nccl" and device.type != "cuda":
        raise ConfigurationError(f"backend='nccl' needs a CUDA device, got device={device}")
    available = {
        "nccl": dist.is_nccl_available(),
        "gloo": dist.is_gloo_available(),
        "mpi": dist.is_mpi_available(),
    }
    if not available[name]:
        raise ConfigurationError(f"backend={backend!r}: this torch build does not provide it")
    return name


#: Placement fields and the arguments of ``setup_distributed_process_group`` that set them.
_ARGUMENTS = {
    "rank": "rank",
    "world_size": "world_size",
    "local_rank": "group_local_rank",
    "local_world_size": "group_local_size",
    "node_rank": "group_rank",
    "num_nodes": "group_world_size",
    "master_addr": "master_addr",
    "master_port": "master_port",
}


def _placement(placement: Placement, given: dict[str, Any]) -> Placement:
    """The detected placement with the explicit arguments (by argument name) put in,
    validated again; messages name the arguments."""
    explicit = {
        field: given[argument]
        for field, argument in _ARGUMENTS.items()
        if given.get(argument) is not None
    }
    if not explicit:
        return placement
    sources = {
        **placement.sources,
        **{field: f"argument {_ARGUMENTS[field]}" for field in explicit},
    }
    return replace(placement, **explicit, sources=sources)


def init_distributed_process_group(
    state: DistributedState, environ: Mapping[str, str] | None = None
) -> None:
    """Join the default process group: every rank checks in at a TCP store that rank 0
    (or torchrun's agent) serves at ``master_addr:master_port`` (a local store for 1 rank).

    Fills ``state.nodes`` with every rank's node and host, as the ranks found them."""
    if dist.is_initialized():
        if (dist.get_rank(), dist.get_world_size()) != (state.rank, state.world_size):
            raise DistributedError(
                f"torch.distributed is already initialised as rank {dist.get_rank()} of "
                f"{dist.get_world_size()}, not {state.rank} of {state.world_size}: call "
                "cleanup_distributed_process_group first"
            )
        return
    if state.world_size == 1:
        store: dist.Store = dist.HashStore()
    else:
        if state.master_port is None:
            raise ConfigurationError(
                "master_port is not set and the environment gives none: set MASTER_PORT"
            )
        placement = state.placement or detect(environ)
        rendezvous = join(
            placement,
            state.master_addr,
            state.master_port,
            state.timeout,
            os.environ if environ is None else environ,
        )
        state.rendezvous = rendezvous
        label = f"rendezvous at {rendezvous.where}"
        state.nodes = NodeLayout.decode(
            rendezvous.check_in(label, facts(placement, socket.gethostname()), assemble)
        )
        state.interface = network_check(rendezvous, state.nodes.hosts)
        store = rendezvous.store
    try:
        dist.init_process_group(
            state.backend,
            store=dist.PrefixStore("default_pg", store),
            rank=state.rank,
            world_size=state.world_size,
            timeout=state.timeout,
        )
    except (RuntimeError, ValueError) as error:
        raise DistributedError(
            f"rank {state.rank} of {state.world_size} joined the rendezvous at "
            f"{state.master_addr}:{state.master_port} but could not start the "
            f"{state.backend} process group within {state.timeout}: {error}"
        ) from error


def _contiguous_node_sizes(nodes: Sequence[int], sizes: Sequence[int], why: str) -> tuple[int, ...]:
    """Node sizes, provided every node's ranks form one block in node order."""
    expected = [node for node, size in enumerate(sizes) for _ in range(size)]
    if list(nodes) != expected:
        raise ConfigurationError(
            f"{why} needs each node's ranks to be one contiguous block in node order "
            f"(block distribution); node of each rank: {list(nodes)[:32]}"
        )
    return tuple(sizes)


def setup_distributed_process_group(
    rank: int | None = None,
    world_size: int | None = None,
    group_local_rank: int | None = None,
    group_local_size: int | None = None,
    group_rank: int | None = None,
    group_world_size: int | None = None,
    backend: str | None = None,
    master_addr: str | None = None,
    master_port: int | None = None,
    device: torch.device | str | None = None,
    hsdp: int | None = None,
    federated: int | Sequence[int] | None = None,
    streams: int | None = None,
    *,
    timeout: float | timedelta | None = None,
    federated_from_het: bool = False,
    environ: Mapping[str, str] | None = None,
) -> DistributedState:
    """Set up PyTorch's distributed environment; call it once in every process.

    Values not given come from the scheduler environment (:func:`xffl_hpc.detect`), so a
    plain call under srun, mpiexec, torchrun, jsrun or flux run just works. ``hsdp`` is
    the size of one sharding group (else ``XFFL_HPC_HSDP``); ``federated`` is the size
    of a federated group in ranks (int) or every group's size (tuple), else
    ``XFFL_HPC_FEDERATED`` (the same, in ranks), else ``XFFL_FEDERATED_LOCAL_WORLD_SIZE``
    (nodes per group), else, with ``federated_from_het``, one group per SLURM het-job
    component. ``streams`` CUDA streams (one process group each) are made on CUDA only.
    ``timeout`` (seconds, default ``XFFL_HPC_TIMEOUT`` or 600) bounds the rendezvous
    and every collective. Invalid input raises :class:`~xffl_hpc.XfflHpcError`.
    """
    env = os.environ if environ is None else environ
    placement = _placement(
        detect(env),
        {
            "rank": rank,
            "world_size": world_size,
            "group_local_rank": group_local_rank,
            "group_local_size": group_local_size,
            "group_rank": group_rank,
            "group_world_size": group_world_size,
            "master_addr": master_addr,
            "master_port": master_port,
        },
    )
    resolved_device = resolve_device(device)
    chosen_backend = _backend(backend, resolved_device)
    wait = _timeout(timeout, env)
    world = placement.world_size
    if world > 1 and (placement.master_addr is None or placement.master_port is None):
        missing = "MASTER_ADDR" if placement.master_addr is None else "MASTER_PORT"
        where = (
            "no batch scheduler is in the environment to give"
            if placement.scheduler == "none"
            else f"the {placement.scheduler.upper()} job's variables do not give"
        )
        raise ConfigurationError(
            f"{missing} is not set and {where} the rendezvous "
            f"{'address' if missing == 'MASTER_ADDR' else 'port'}: "
            f"set {missing} or pass {missing.lower()}"
        )
    if streams is not None and streams < 1:
        raise ConfigurationError(f"streams={streams!r}: expected a positive number of streams")
    variables = []
    hsdp_text = env.get(HSDP_VARIABLE, "").strip()
    if hsdp is None and hsdp_text:
        hsdp = parse_int(HSDP_VARIABLE, hsdp_text, minimum=1)
        variables.append(f"{HSDP_VARIABLE}={hsdp_text}")
    federated_text = env.get(FEDERATED_VARIABLE, "").strip()
    if federated is None and federated_text:
        federated = parse_federated(federated_text, FEDERATED_VARIABLE)
        variables.append(f"{FEDERATED_VARIABLE}={federated_text}")
    nodes_text = env.get(FEDERATED_NODES_VARIABLE, "").strip()
    nodes_per_group = None
    if federated is None and nodes_text:
        nodes_per_group = parse_federated(nodes_text, FEDERATED_NODES_VARIABLE)
        variables.append(f"{FEDERATED_NODES_VARIABLE}={nodes_text}")
    topology = None
    if nodes_per_group is None and not federated_from_het:
        topology = _build(world, hsdp, federated, variables)
    state = DistributedState(
        backend=chosen_backend,
        master_addr=placement.master_addr or "127.0.0.1",
        master_port=placement.master_port,
        rank=placement.rank,
        world_size=world,
        node_local_rank=placement.local_rank,
        node_local_size=placement.local_world_size or 1,
        node_rank=placement.node_rank or 0,
        node_world_size=placement.num_nodes or 1,
        topology=topology or Topology.build(world),
        timeout=wait,
        placement=placement,
        device_type=resolved_device.type,
        device_count=torch.cuda.device_count() if resolved_device.type == "cuda" else 0,
        current_device=resolved_device,
    )
    init_distributed_process_group(state, env)
    try:
        if state.nodes is not None:
            _apply_nodes(state, placement, state.nodes)
        if topology is None:
            topology = _grouped_topology(
                state, hsdp, federated, nodes_per_group, variables, federated_from_het
            )
        _finish(state, topology, hsdp, streams)
    except BaseException:
        cleanup_distributed_process_group(state)
        raise
    return state


def _grouped_topology(
    state: DistributedState,
    hsdp: int | None,
    federated: int | Sequence[int] | None,
    nodes_per_group: tuple[int, ...] | None,
    variables: list[str],
    federated_from_het: bool,
) -> Topology:
    """The topology when federated groups come from nodes or het-job components, which
    the rendezvous found (``state.nodes``) on more than one rank."""
    layout = state.nodes
    if nodes_per_group is not None:
        what = next(v for v in variables if v.startswith(FEDERATED_NODES_VARIABLE))
        if layout is None:
            node_sizes: tuple[int, ...] = (state.world_size,)
        else:
            node_sizes = _contiguous_node_sizes(layout.nodes, layout.sizes, what)
        federated = federated_in_nodes(nodes_per_group, node_sizes, what)
    if federated_from_het and federated is None:
        components = layout.het_groups if layout is not None else (state.placement.het_group,)
        if None in components:
            raise ConfigurationError(
                "federated_from_het=True but some ranks are not in a SLURM "
                "heterogeneous job (no het-job component in their environment)"
            )
        federated = federated_from_components(components, "federated_from_het=True")
        variables = [*variables, "federated_from_het=True"]
    return _build(state.world_size, hsdp, federated, variables)


def _build(
    world: int, hsdp: int | None, federated: int | Sequence[int] | None, variables: list[str]
) -> Topology:
    """``Topology.build``; its errors name the variables the sizes came from, if any."""
    try:
        return Topology.build(world, hsdp=hsdp, federated=federated)
    except TopologyError as error:
        if not variables:
            raise
        raise TopologyError(f"{', '.join(variables)}: {error}") from None


def _apply_nodes(state: DistributedState, placement: Placement, layout: NodeLayout) -> None:
    """Set the node fields from the layout the ranks found, where the environment left
    them unknown; an explicit argument must agree with it."""
    node = layout.nodes[state.rank]
    sizes = layout.sizes
    for field, argument, found in (
        ("local_world_size", "group_local_size", sizes[node]),
        ("num_nodes", "group_world_size", len(sizes)),
    ):
        given = getattr(placement, field)
        if placement.sources.get(field) == f"argument {argument}" and given != found:
            raise ConfigurationError(
                f"{argument}={given} but the ranks found {found} "
                f"{'rank(s) on node ' + str(node) if field == 'local_world_size' else 'node(s)'}"
                f" (rank {state.rank} runs on {layout.hosts[state.rank]}): pass "
                f"{argument} only when the launcher does not give it, and as the job runs"
            )
    if placement.node_rank is None or placement.num_nodes is None:
        state.node_rank, state.node_world_size = node, len(sizes)
    if placement.local_world_size is None:
        state.node_local_size = sizes[node]


def _finish(
    state: DistributedState, topology: Topology, hsdp: int | None, streams: int | None
) -> None:
    """Everything after the topology is known: devices, meshes, groups."""
    state.topology = topology
    info = topology.rank_info(state.rank)
    if hsdp is not None:
        state.replica_local_rank = info.shard_index
        state.replica_local_size = hsdp
        state.replica_rank = info.replica_index
        sizes = topology.federated or (state.world_size,)
        state.replica_world_size = tuple(size // hsdp for size in sizes)
    if topology.federated is not None:
        state.federated_local_rank = info.federated_local_rank
        state.federated_local_size = topology.federated
        state.federated_rank = info.federated_rank
        state.federated_world_size = topology.num_groups
        state.is_sender = info.is_sender
        state.receive_from = info.receive_from
    copies = 1
    if streams is not None and state.device_type == "cuda" and topology.federated is not None:
        copies = streams
    state.current_device, state.init_device, state.meta_initialization = _setup_devices(state)
    if copies > 1:
        state.streams = tuple(torch.cuda.Stream(state.current_device) for _ in range(copies))
    if state.rendezvous is not None:
        state.rendezvous.check_in("group creation")
    build_meshes_and_groups(state, copies)


def cleanup_distributed_process_group(
    state: DistributedState | None = None, del_obj: Sequence[Any] = ()
) -> None:
    """Destroy the process groups; safe to call twice and after a failed set-up.

    ``del_obj`` is accepted for compatibility with the reference API: Python frees
    those objects once the caller drops its own references to them.
    """
    del del_obj
    if state is not None:
        state.fsdp_mesh = state.hsdp_mesh = None
        state.federated_group = state.replica_group = None
        state.federation = None
        state.rendezvous = None
    if dist.is_initialized():
        dist.destroy_process_group()
    # Free the groups now, while the interpreter is whole: FSDP modules and meshes sit in
    # reference cycles that only the cycle collector frees, and a gloo group destroyed
    # during interpreter shutdown can abort the process (SIGABRT) after a clean run.
    gc.collect()


def get_appropriate_sharding_strategy(state: DistributedState) -> Any:
    """``HYBRID_SHARD`` when HSDP is set up, else ``FULL_SHARD`` (FSDP1's enum)."""
    from torch.distributed.fsdp import ShardingStrategy

    if state.is_hsdp_setup():
        return ShardingStrategy.HYBRID_SHARD
    return ShardingStrategy.FULL_SHARD
