"""Every rank's node, host and het-job component, assembled once by rank 0 at the
rendezvous and published as one short text (runs of equal values), so that no rank reads
every other rank's facts and no object collective (which needs numpy) is involved."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from xffl_hpc.schedulers import Placement

_UNKNOWN = "-"


def facts(placement: Placement, host: str) -> str:
    """This rank's check-in value: its launcher node rank, het-job component and host."""

    def word(value: int | None) -> str:
        return _UNKNOWN if value is None else str(value)

    return f"{word(placement.node_rank)} {word(placement.het_group)} {host}"


def _runs(values: Sequence[Any]) -> list[list[Any]]:
    runs: list[list[Any]] = []
    for value in values:
        if runs and runs[-1][0] == value:
            runs[-1][1] += 1
        else:
            runs.append([value, 1])
    return runs


def _expand(runs: Sequence[Sequence[Any]]) -> tuple[Any, ...]:
    return tuple(value for value, count in runs for _ in range(count))


@dataclass(frozen=True)
class NodeLayout:
    """Per rank, in rank order: host name, node index and het-job component (or ``None``).

    Node indices are the launcher's when every rank has one, else the order in which host
    names first appear.
    """

    hosts: tuple[str, ...]
    nodes: tuple[int, ...]
    het_groups: tuple[int | None, ...]

    @property
    def sizes(self) -> tuple[int, ...]:
        """Ranks on each node, in node order."""
        counts = [0] * (max(self.nodes) + 1)
        for node in self.nodes:
            counts[node] += 1
        return tuple(counts)

    def encode(self) -> str:
        """One line of JSON, as short as the runs of equal values allow."""
        names = list(dict.fromkeys(self.hosts))
        index = {name: i for i, name in enumerate(names)}
        return json.dumps(
            {
                "names": names,
                "hosts": _runs([index[host] for host in self.hosts]),
                "nodes": _runs(self.nodes),
                "het": _runs(self.het_groups),
            },
            separators=(",", ":"),
        )

    @classmethod
    def decode(cls, text: str) -> NodeLayout:
        data = json.loads(text)
        names = data["names"]
        return cls(
            hosts=tuple(names[i] for i in _expand(data["hosts"])),
            nodes=_expand(data["nodes"]),
            het_groups=_expand(data["het"]),
        )


def assemble(values: Sequence[str]) -> str:
    """Rank 0: every rank's :func:`facts`, in rank order, as an encoded layout."""
    split = [value.split(" ", 2) for value in values]
    hosts = tuple(host for _, _, host in split)
    launcher_nodes = [node for node, _, _ in split]
    if _UNKNOWN not in launcher_nodes:
        nodes = tuple(int(node) for node in launcher_nodes)
    else:
        first: dict[str, int] = {}
        nodes = tuple(first.setdefault(host, len(first)) for host in hosts)
    groups = tuple(None if group == _UNKNOWN else int(group) for _, group, _ in split)
    return NodeLayout(hosts, nodes, groups).encode()
