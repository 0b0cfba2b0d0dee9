"""The ``xffl-hpc`` command line. Subcommands import heavy modules only when they run."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from xffl_hpc.errors import ConfigurationError, XfflHpcError


def _env(args: argparse.Namespace) -> int:
    from xffl_hpc.schedulers import detect

    data = detect().to_json()
    if args.json:
        print(json.dumps(data))
        return 0
    width = max(len(key) for key in data)
    for key, value in data.items():
        if isinstance(value, list):
            value = ",".join(str(item) for item in value)
        print(f"{key:<{width}}  {'-' if value is None else value}")
    return 0


def _hostlist(args: argparse.Namespace) -> int:
    from xffl_hpc.schedulers import hostlist

    if args.action == "expand":
        for expression in args.items:
            for host in hostlist.expand(expression, variable="argument"):
                print(host)
    else:
        hosts = [host for item in args.items for host in item.replace(",", " ").split()]
        print(hostlist.compress(hosts))
    return 0


def _layout(args: argparse.Namespace) -> int:
    from xffl_hpc.errors import TopologyError
    from xffl_hpc.topology import Topology, federated_in_nodes, parse_federated

    def positive(value: str | None, option: str) -> int | None:
        if value is None:
            return None
        text = value.strip()
        if not (text.isascii() and text.isdigit() and int(text) > 0):
            raise TopologyError(f"{option}={value!r} is not a positive integer")
        return int(text)

    world = positive(args.world_size, "--world-size")
    assert world is not None
    if args.tasks_per_node is not None and args.node_sizes is not None:
        raise TopologyError("give --tasks-per-node or --node-sizes, not both")
    if args.federated is not None and args.federated_nodes is not None:
        raise TopologyError("give --federated (ranks) or --federated-nodes (nodes), not both")
    nodes = None
    per_node = positive(args.tasks_per_node, "--tasks-per-node")
    if per_node is not None:
        if world % per_node:
            raise TopologyError(
                f"--tasks-per-node={per_node} does not divide --world-size={world}; "
                "use --node-sizes for nodes with different numbers of ranks"
            )
        nodes = (per_node,) * (world // per_node)
    elif args.node_sizes is not None:
        nodes = parse_federated(args.node_sizes, "--node-sizes")
        if sum(nodes) != world:
            raise TopologyError(
                f"--node-sizes={args.node_sizes} adds up to {sum(nodes)} "
                f"but --world-size is {world}"
            )
    federated = None
    if args.federated is not None:
        federated = parse_federated(args.federated, "--federated")
    elif args.federated_nodes is not None:
        if nodes is None:
            raise TopologyError("--federated-nodes needs --tasks-per-node or --node-sizes")
        federated = federated_in_nodes(
            parse_federated(args.federated_nodes, "--federated-nodes"), nodes
        )
    topology = Topology.build(
        world, hsdp=positive(args.hsdp, "--hsdp"), federated=federated, node_sizes=nodes
    )
    print(topology.describe())
    return 0


def _emulate(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from xffl_hpc.emulate import emulate
    from xffl_hpc.topology import parse_federated

    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise ConfigurationError("emulate needs a command after '--', e.g. -- train.py")
    if command[0].endswith(".py"):
        command.insert(0, sys.executable)
    per_node = parse_federated(args.tasks_per_node, "--tasks-per-node")
    result = emulate(
        command,
        scheduler=args.scheduler,
        nodes=args.nodes,
        tasks_per_node=per_node[0] if len(per_node) == 1 else per_node,
        het=parse_federated(args.het, "--het") if args.het else None,
        hsdp=args.hsdp,
        federated=args.federated,
        launcher=args.launcher,
        job_id=args.job_id,
        log_dir=Path(args.log_dir) if args.log_dir else None,
        grace=args.grace,
    )
    return result.returncode


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xffl-hpc", description="Start PyTorch distributed training right on HPC schedulers."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    env = commands.add_parser("env", help="print this process's placement")
    env.add_argument("--json", action="store_true", help="one JSON object on stdout")
    env.set_defaults(run=_env)
    hosts = commands.add_parser("hostlist", help="expand or compress a SLURM hostlist")
    hosts.add_argument("action", choices=("expand", "compress"))
    hosts.add_argument(
        "items",
        nargs="+",
        metavar="ARG",
        help="expand: hostlist expressions such as 'gpu[001-004],login1'; "
        "compress: host names, separated by commas or given as several arguments",
    )
    hosts.set_defaults(run=_hostlist)
    layout = commands.add_parser(
        "layout", help="draw which ranks shard, replicate and average together"
    )
    layout.add_argument("--world-size", required=True, metavar="W", help="number of ranks")
    layout.add_argument("--hsdp", metavar="H", help="ranks per sharding group (one replica)")
    layout.add_argument(
        "--federated",
        metavar="F",
        help="federated group size in ranks ('4'), or every group's size ('2,6')",
    )
    layout.add_argument(
        "--federated-nodes",
        metavar="N[,N...]",
        help="federated groups in nodes, as XFFL_FEDERATED_LOCAL_WORLD_SIZE: nodes per group "
        "('2' for groups of 2 nodes) or one entry per group ('1,3')",
    )
    layout.add_argument("--tasks-per-node", metavar="N", help="ranks on every node")
    layout.add_argument("--node-sizes", metavar="N,N,...", help="ranks on each node ('4,4,2')")
    layout.set_defaults(run=_layout)
    emulate = commands.add_parser(
        "emulate",
        help="run a script as N emulated nodes x M tasks on this host",
        description="Start one process per rank, each with the variables a real SLURM "
        "step, PBS mpiexec or torchrun would give it; output is prefixed with the rank; "
        "when a rank fails every other rank is stopped and its status is the job's.",
    )
    emulate.add_argument("--scheduler", choices=("slurm", "pbs", "torchrun"), default="slurm")
    emulate.add_argument("--nodes", type=int, default=2)
    emulate.add_argument(
        "--tasks-per-node", default="2", help="one count, or one per node such as 2,1"
    )
    emulate.add_argument("--het", help="SLURM het-job components: nodes in each, e.g. 1,1")
    emulate.add_argument("--hsdp", type=int, help="sets XFFL_HPC_HSDP for the ranks")
    emulate.add_argument("--federated", help="sets XFFL_HPC_FEDERATED (ranks), e.g. 2 or 2,6")
    emulate.add_argument("--launcher", choices=("pmi", "pals"), default="pmi", help="PBS only")
    emulate.add_argument("--job-id", help="default: this process's id")
    emulate.add_argument("--log-dir", help="also write each rank's output to rank-N.log here")
    emulate.add_argument(
        "--grace", type=float, default=5.0, help="seconds between SIGTERM and SIGKILL"
    )
    emulate.add_argument("command", nargs=argparse.REMAINDER, help="-- SCRIPT [ARGS...]")
    emulate.set_defaults(run=_emulate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; errors of the package become exit status 2 and one line."""
    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except XfflHpcError as error:
        print(f"xffl-hpc: error: {error}", file=sys.stderr)
        return 2
