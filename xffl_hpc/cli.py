"""The ``xffl-hpc`` command line. Subcommands import heavy modules only when they run."""

from __future__ import annotations

import argparse
import json
import socket
import sys
from collections.abc import Sequence

from xffl_hpc.errors import ConfigurationError, XfflHpcError


def _env(args: argparse.Namespace) -> int:
    from xffl_hpc.network import choose_interface
    from xffl_hpc.schedulers import detect

    placement = detect()
    data = placement.to_json()
    try:
        data["interface"] = str(choose_interface(placement.hostnames or (), socket.gethostname()))
    except XfflHpcError as error:
        data["interface"] = None
        print(f"xffl-hpc: warning: {error}", file=sys.stderr)
    if args.json:
        print(json.dumps(data))
        return 0
    width = max(len(key) for key in data)
    for key, value in data.items():
        if isinstance(value, list):
            value = ",".join(str(item) for item in value)
        print(f"{key:<{width}}  {'-' if value is None else value}")
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from xffl_hpc import doctor

    return doctor.main()


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
            parse_federated(args.federated_nodes, "--federated-nodes"),
            nodes,
            f"--federated-nodes={args.federated_nodes}",
        )
    topology = Topology.build(
        world, hsdp=positive(args.hsdp, "--hsdp"), federated=federated, node_sizes=nodes
    )
    print(topology.describe())
    return 0


def _command(args: argparse.Namespace, missing: str) -> list[str]:
    """The command after ``--``; ``missing`` is the error when there is none."""
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise ConfigurationError(missing)
    return command


def _emulate(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from xffl_hpc.emulate import emulate
    from xffl_hpc.topology import parse_federated

    command = _command(args, "emulate needs a command after '--', e.g. -- train.py")
    if command[0].endswith(".py") or command[0] == "-m":
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
        node_prefix=args.node_prefix,
        log_dir=Path(args.log_dir) if args.log_dir else None,
        grace=args.grace,
    )
    return result.returncode


def _submit(args: argparse.Namespace) -> int:
    import os

    from xffl_hpc.errors import JobFailedError
    from xffl_hpc.submission import submit

    command = _command(args, "submit needs a script after '--', e.g. -- train.py --epochs 2")
    # the ranks' logs then hold the script's output, not submitit's progress lines
    os.environ.setdefault("SUBMITIT_LOG_LEVEL", "WARNING")
    job = submit(
        command[0],
        *command[1:],
        nodes=args.nodes,
        tasks_per_node=args.tasks_per_node,
        cluster=args.cluster,
        folder=args.folder,
        timeout_min=args.timeout_min,
        partition=args.partition,
        name=args.name,
    )
    print(job.job_id, flush=True)
    print(f"xffl-hpc: logs in {job.submitit_job.paths.folder}", file=sys.stderr)
    if not args.wait:
        return 0
    try:
        job.result()
    except JobFailedError as error:
        sys.stdout.write(job.stdout(0) or "")
        print(f"xffl-hpc: {error}", file=sys.stderr)
        return 1
    sys.stdout.write(job.stdout(0) or "")
    print(
        f"xffl-hpc: job {job.job_id}: all {job.world_size} ranks exited with status 0",
        file=sys.stderr,
    )
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xffl-hpc", description="Start PyTorch distributed training right on HPC schedulers."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    env = commands.add_parser("env", help="print this process's placement")
    env.add_argument("--json", action="store_true", help="one JSON object on stdout")
    env.set_defaults(run=_env)
    doctor = commands.add_parser(
        "doctor",
        help="check name resolution, interface, port, GPUs and clocks on every rank",
        description="Run it as a job step on every rank (srun, mpiexec, xffl-hpc emulate): "
        "each rank prints what it found and one line per problem with its fix; rank 0 "
        "serves the rendezvous port for a few seconds and the others reach it. Exit 1 "
        "when any problem is found.",
    )
    doctor.set_defaults(run=_doctor)
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
    emulate.add_argument(
        "--node-prefix", default="n", help="emulated node names: PREFIX1, PREFIX2, ..."
    )
    emulate.add_argument("--log-dir", help="also write each rank's output to rank-N.log here")
    emulate.add_argument(
        "--grace", type=float, default=5.0, help="seconds between SIGTERM and SIGKILL"
    )
    emulate.add_argument("command", nargs=argparse.REMAINDER, help="-- SCRIPT [ARGS...]")
    emulate.set_defaults(run=_emulate)
    submit = commands.add_parser(
        "submit",
        help="submit a script as N nodes x M tasks with submitit (SLURM, PBS or local)",
        description="Submit 'python SCRIPT ARGS...' (this Python, arguments verbatim, no "
        "shell) as one task per rank; print the job id; with --wait, print rank 0's "
        "output and how the job ended (status 1 when a rank failed).",
    )
    submit.add_argument("--nodes", type=int, default=1)
    submit.add_argument("--tasks-per-node", type=int, default=1)
    submit.add_argument(
        "--cluster", choices=("slurm", "pbs", "local"), help="default: submitit's choice"
    )
    submit.add_argument("--folder", default="xffl-jobs/%j", help="logs and pickles (%%j: job id)")
    submit.add_argument("--timeout-min", type=int, default=60, help="wall-clock limit")
    submit.add_argument("--partition", help="SLURM partition or PBS queue")
    submit.add_argument("--name", help="job name (default: xffl-SCRIPT)")
    submit.add_argument("--wait", action="store_true", help="wait for the job's end")
    submit.add_argument("command", nargs=argparse.REMAINDER, help="-- SCRIPT [ARGS...]")
    submit.set_defaults(run=_submit)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; errors of the package become exit status 2 and one line."""
    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except XfflHpcError as error:
        print(f"xffl-hpc: error: {error}", file=sys.stderr)
        return 2
