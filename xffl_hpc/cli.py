"""The ``xffl-hpc`` command line. Subcommands import heavy modules only when they run."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from xffl_hpc.errors import XfflHpcError


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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; errors of the package become exit status 2 and one line."""
    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except XfflHpcError as error:
        print(f"xffl-hpc: error: {error}", file=sys.stderr)
        return 2
