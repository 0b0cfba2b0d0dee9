"""Federated training of a small MLP, sharded with FSDP2, started by any HPC launcher.

Run it unchanged in every process of a job; rank, world size, nodes and rendezvous come
from the launcher's environment:

    srun -N 2 --ntasks-per-node 2 python examples/federated_mlp.py --federated 2
    torchrun --nproc-per-node 4 examples/federated_mlp.py --hsdp 2 --federated 2
    xffl-hpc emulate --nodes 3 -- examples/federated_mlp.py --federated 2,4 --hsdp 2

Without ``--hsdp`` / ``--federated`` the layout comes from ``XFFL_HPC_HSDP`` and
``XFFL_HPC_FEDERATED`` (else it is plain FSDP over all ranks).

Every rank draws its own synthetic data (data parallel). Inside a federated group FSDP
keeps one model in step; the groups drift apart on their different data until, every
``--every`` steps, ``federated_average`` averages corresponding shards across the groups.
The script then checks that those shards really agree; rank 0 logs the mean loss.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import fully_shard

from xffl_hpc import (
    REQUEUE_EXIT_STATUS,
    DistributedState,
    Preemption,
    cleanup_distributed_process_group,
    federated_average,
    load_checkpoint,
    save_checkpoint,
    setup_distributed_process_group,
)
from xffl_hpc.topology import parse_federated

FEATURES = 16
HIDDEN = 64


def parse_args() -> argparse.Namespace:
    """Command-line options; the layout ones default to None (then the environment decides)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=60, help="training steps")
    parser.add_argument("--every", type=int, default=10, help="average and log every N steps")
    parser.add_argument("--hsdp", type=int, default=None, help="ranks per sharding group")
    parser.add_argument(
        "--federated",
        type=lambda text: parse_federated(text, "--federated"),
        default=None,
        help='federated group size in ranks ("2") or every group\'s size ("2,6")',
    )
    parser.add_argument(
        "--federated-from-het",
        action="store_true",
        help="one federated group per SLURM heterogeneous-job component",
    )
    parser.add_argument("--lr", type=float, default=0.005, help="Adam learning rate")
    parser.add_argument("--batch", type=int, default=32, help="samples per rank and step")
    parser.add_argument("--seed", type=int, default=0, help="seed of the model and the data")
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="folder for sharded checkpoints: resume from it, save every --every steps and "
        "when the scheduler's warning signal arrives (then exit 75: requeue me)",
    )
    parser.add_argument(
        "--step-time",
        type=float,
        default=0.0,
        help="pad every step to this many seconds, to rehearse preemption on a tiny model",
    )
    args = parser.parse_args()
    if args.steps < 1 or args.every < 1:
        parser.error("--steps and --every must be positive")
    return args


def build_model(state: DistributedState, seed: int) -> nn.Module:
    """A 16-64-64-1 MLP, each Linear sharded on the state's mesh, then the root (FSDP2)."""
    # The same seed on every rank: fully_shard keeps this rank's slice of the weights it
    # was given, so all ranks must start from the same full model.
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(FEATURES, HIDDEN),
        nn.Tanh(),
        nn.Linear(HIDDEN, HIDDEN),
        nn.Tanh(),
        nn.Linear(HIDDEN, 1),
    ).to(state.current_device)
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=state.mesh)  # the HSDP mesh when hsdp is set, else FSDP's
    fully_shard(model, mesh=state.mesh)
    return model


class SyntheticRegression:
    """An endless stream of (x, y) batches for this rank; y is the same function everywhere."""

    def __init__(self, seed: int, rank: int, batch: int, device: torch.device) -> None:
        truth = torch.Generator().manual_seed(seed)  # one true function for all ranks
        self.linear = torch.randn(FEATURES, 1, generator=truth) / FEATURES**0.5
        self.bend = torch.randn(FEATURES, 1, generator=truth) / FEATURES**0.5
        # Inputs depend on the rank: every rank, and so every federated group, sees
        # different samples of the same task.
        self.inputs = torch.Generator().manual_seed(1000 * (seed + 1) + rank)
        self.batch, self.device = batch, device

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next batch, on the compute device."""
        x = torch.randn(self.batch, FEATURES, generator=self.inputs)
        y = x @ self.linear + 0.5 * torch.sin(x @ self.bend)
        return x.to(self.device), y.to(self.device)


def check_shards_agree(model: nn.Module, state: DistributedState) -> None:
    """Raise RuntimeError unless ranks that must hold the same parameter shard do.

    Those are this rank's averaging group (one rank per federated group, right after
    ``federated_average``) and its replica group under HSDP: the other replicas of the
    shard in its group, among them, in asymmetric layouts, the rank it receives from.
    """
    groups = []
    if state.federated_group is not None:  # None for asymmetric non-senders
        groups.append(("averaging", state.federated_group[0]))
    if state.replica_group is not None:
        groups.append(("replica", state.replica_group[0]))
    for name, parameter in model.named_parameters():
        shard = parameter.to_local().detach().contiguous()
        if shard.numel() == 0:  # an uneven split can leave a shard empty, the same in a group
            continue
        for kind, group in groups:
            ranks = dist.get_process_group_ranks(group)
            gathered = [torch.empty_like(shard) for _ in ranks]
            dist.all_gather(gathered, shard, group=group)
            differ = [
                rank
                for rank, other in zip(ranks, gathered, strict=True)
                if not torch.allclose(other, gathered[0])
            ]
            if differ:
                raise RuntimeError(
                    f"parameter {name!r}: the shard of rank(s) {differ} differs from rank "
                    f"{ranks[0]}'s in {kind} group {ranks} (seen by rank {state.rank})"
                )


def global_mean(value: torch.Tensor) -> float:
    """Mean of a scalar tensor over all ranks."""
    total = value.clone()
    dist.all_reduce(total)  # SUM; gloo has no AVG
    return total.item() / dist.get_world_size()


def train(state: DistributedState, args: argparse.Namespace, preemption: Preemption) -> int:
    """Train, averaging across federated groups and logging every ``args.every`` steps.

    Returns the process's exit status: 0 when done, ``REQUEUE_EXIT_STATUS`` when the
    scheduler's warning arrived and the ranks checkpointed to be requeued.
    """
    model = build_model(state, args.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    data = SyntheticRegression(args.seed, state.rank, args.batch, state.current_device)
    federated = state.is_federated_scaling_setup()
    logged: list[float] = []  # global mean loss of each logging interval
    interval: list[torch.Tensor] = []  # this rank's losses since the last log
    first = 1
    if args.checkpoint:
        resumed = load_checkpoint(args.checkpoint, model, optimizer)
        if resumed is not None:
            first = resumed.step + 1
            logged = list(resumed.extra["logged"])
            interval = list(resumed.extra["interval"])
            data.inputs.set_state(resumed.extra["data"])
            if state.rank == 0:
                print(f"resumed from step {resumed.step} ({resumed.path})", flush=True)

    def checkpoint(step: int) -> None:
        extra = {"logged": logged, "interval": interval, "data": data.inputs.get_state()}
        save_checkpoint(args.checkpoint, step, model, optimizer, extra)

    start = time.perf_counter()
    for step in range(first, args.steps + 1):
        began = time.perf_counter()
        x, y = data.next()
        loss = nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()  # FSDP averages gradients over this rank's sharding/HSDP mesh
        optimizer.step()
        interval.append(loss.detach())
        time.sleep(max(0.0, args.step_time - (time.perf_counter() - began)))
        if step % args.every == 0 or step == args.steps:
            if federated:
                federated_average(model, state)  # every rank, at the same step
            check_shards_agree(model, state)
            logged.append(global_mean(torch.stack(interval).mean()))
            interval.clear()
            if state.rank == 0:
                note = ""
                if federated:
                    groups = state.federated_world_size
                    note = f"  (averaged across {groups} federated groups: shards agree)"
                elif state.replica_group is not None:
                    note = "  (HSDP replicas agree)"
                print(f"step {step}  loss {logged[-1]:.4f}{note}", flush=True)
            if args.checkpoint:
                checkpoint(step)
        if args.checkpoint and step < args.steps and preemption.requested():
            checkpoint(step)
            if state.rank == 0:
                print(f"preempted: checkpointed step {step}, asking to be requeued", flush=True)
            return REQUEUE_EXIT_STATUS
    seconds = time.perf_counter() - start
    # A fingerprint of the final weights: a requeued run must end with the very same one.
    squares = sum(p.to_local().double().square().sum() for p in model.parameters())
    weights = torch.as_tensor(squares, dtype=torch.float64).reshape(1)
    dist.all_reduce(weights)
    if state.rank == 0:
        print(
            f"loss {logged[0]:.4f} -> {logged[-1]:.4f} in {args.steps} steps, {seconds:.1f} s "
            f"(weights fingerprint {weights.item():.12g})",
            flush=True,
        )
    return 0


def main() -> None:
    """Set up from the launcher's environment, train, and always tear down."""
    args = parse_args()
    torch.set_num_threads(1)  # a tiny model; several ranks may share a node's cores
    with Preemption() as preemption:
        state = setup_distributed_process_group(
            hsdp=args.hsdp, federated=args.federated, federated_from_het=args.federated_from_het
        )
        try:
            if state.rank == 0:
                print(state, flush=True)
                if state.world_size <= 64:
                    print(state.topology.describe(), flush=True)
            status = train(state, args, preemption)
        finally:
            cleanup_distributed_process_group(state)
        if status == REQUEUE_EXIT_STATUS:
            preemption.exit_for_requeue()


if __name__ == "__main__":
    main()
