"""Which ranks form which process group: FSDP, HSDP and federated scaling, in pure Python.

Terms: ``W`` is the world size; ``hsdp`` (h) is the size of one sharding group, the ranks that
together hold one full model replica; ``federated`` lists the federated groups' sizes in ranks.
Federated groups are contiguous rank ranges; inside a group (or the world, without federation)
sharding groups are contiguous blocks of h ranks and replica groups are strided by h.

Positions are arithmetic on a rank (a bisect over the group offsets). Groups that can be long
(whole federated groups, replica groups, averaging groups) are built once, on first use, and
shared between ranks, so querying every rank costs O(W) time and memory in all.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property

from xffl_hpc.errors import TopologyError

__all__ = [
    "RankInfo",
    "Topology",
    "federated_from_components",
    "federated_in_nodes",
    "parse_federated",
]

#: ``describe()`` draws every node up to this world size, and only the first few beyond it.
_FULL_PICTURE_MAX = 64
#: Nodes (or rows of ranks) drawn when the world is larger than ``_FULL_PICTURE_MAX``.
_HEAD_NODES = 4
#: Ranks drawn per row; the rest of a larger node is summarised.
_ROW_RANKS = 16
#: Groups listed per kind before "... N more".
_LISTED_GROUPS = 8
#: Members written per group before eliding the middle.
_LISTED_MEMBERS = 8
#: Group listings wrap at this width.
_LINE_WIDTH = 100


@dataclass(frozen=True)
class RankInfo:
    """Where one rank sits: its federated group, replica and shard, and its averaging role."""

    rank: int
    #: Index of its federated group; None without federation.
    federated_rank: int | None
    #: Position inside its federated group; None without federation.
    federated_local_rank: int | None
    #: Position inside its sharding group (the reference's ``replica_local_rank``).
    shard_index: int
    #: Which replica, counted inside its federated group, holds this rank; None without hsdp.
    replica_index: int | None
    #: Takes part in the cross-group averaging (all ranks of a symmetric federation do).
    is_sender: bool
    #: Asymmetric hsdp non-senders: the rank of its replica group that averages for it.
    receive_from: int | None


def _positive_int(value: object, name: str) -> int:
    """``value`` if it is an int >= 1 (not a bool), else a TopologyError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TopologyError(f"{name} must be a positive integer, got {value!r}")
    if value < 1:
        raise TopologyError(f"{name} must be a positive integer, got {value}")
    return value


def _int_sequence(values: object, name: str) -> tuple[int, ...]:
    """A non-empty tuple of positive ints from a sequence, else a TopologyError naming ``name``."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TopologyError(f"{name} must be a sequence of positive integers, got {values!r}")
    result = tuple(values)
    if not result:
        raise TopologyError(f"{name} must not be empty")
    for index, value in enumerate(result):
        _positive_int(value, f"{name}[{index}]")
    return result


def _show(sizes: tuple[int, ...], limit: int = 8) -> str:
    """``sizes`` as a tuple literal, eliding the middle of long ones."""
    if len(sizes) <= limit:
        return repr(sizes)
    head = ", ".join(str(size) for size in sizes[: limit - 2])
    return f"({head}, ... {len(sizes) - limit + 1} more ..., {sizes[-1]})"


@dataclass(frozen=True)
class Topology:
    """The group layout of ``world_size`` ranks; build it with :meth:`Topology.build`.

    The constructor normalises and validates its arguments like :meth:`build`, so every
    instance is consistent: ``federated`` is None or the group sizes in ranks (at least two
    groups) and ``node_sizes`` is None or ranks per node adding up to ``world_size``.
    """

    world_size: int
    hsdp: int | None = None
    federated: tuple[int, ...] | None = None
    node_sizes: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        world = _positive_int(self.world_size, "world_size")
        hsdp = None if self.hsdp is None else _positive_int(self.hsdp, "hsdp")
        federated = _normalise_federated(self.federated, world)
        nodes = None
        if self.node_sizes is not None:
            nodes = _int_sequence(self.node_sizes, "node_sizes")
            if sum(nodes) != world:
                raise TopologyError(
                    f"node_sizes={_show(nodes)} adds up to {sum(nodes)} "
                    f"but the world size is {world}"
                )
        if hsdp is not None and federated is None and world % hsdp:
            raise TopologyError(
                f"hsdp={hsdp} does not divide the world size {world}; "
                f"hsdp must be a divisor of {world}"
            )
        if federated is not None:
            _check_federated_hsdp(federated, hsdp)
        object.__setattr__(self, "hsdp", hsdp)
        object.__setattr__(self, "federated", federated)
        object.__setattr__(self, "node_sizes", nodes)

    @classmethod
    def build(
        cls,
        world_size: int,
        hsdp: int | None = None,
        federated: int | Sequence[int] | None = None,
        node_sizes: Sequence[int] | None = None,
    ) -> Topology:
        """Validate and normalise the sizes; raise TopologyError naming what does not fit.

        ``federated`` is a group size in ranks (an int or a 1-tuple: ``W // f`` groups of
        ``f`` ranks) or the explicit sizes of two or more groups, which must add up to W.
        """
        return cls(world_size, hsdp, federated, node_sizes)  # type: ignore[arg-type]

    # ----------------------------------------------------------------- shape

    @cached_property
    def symmetric(self) -> bool:
        """True without federation or when all federated groups have the same size."""
        return self.federated is None or len(set(self.federated)) == 1

    @property
    def num_groups(self) -> int:
        """Number of federated groups (1 without federation)."""
        return 1 if self.federated is None else len(self.federated)

    @property
    def mode(self) -> str:
        """One of "fsdp", "hsdp", "federated", "federated+hsdp"."""
        if self.federated is None:
            return "fsdp" if self.hsdp is None else "hsdp"
        return "federated" if self.hsdp is None else "federated+hsdp"

    @cached_property
    def offsets(self) -> tuple[int, ...]:
        """Start rank of each federated group (``(0,)`` without federation)."""
        if self.federated is None:
            return (0,)
        return tuple(itertools.accumulate(self.federated, initial=0))[:-1]

    @cached_property
    def _sizes(self) -> tuple[int, ...]:
        return (self.world_size,) if self.federated is None else self.federated

    def _check_rank(self, rank: int) -> int:
        if isinstance(rank, bool) or not isinstance(rank, int):
            raise TopologyError(f"rank must be an integer, got {rank!r}")
        if not 0 <= rank < self.world_size:
            raise TopologyError(f"rank={rank} is outside 0..{self.world_size - 1}")
        return rank

    def group_of(self, rank: int) -> int:
        """Index of the federated group holding ``rank`` (0 without federation)."""
        self._check_rank(rank)
        if self.federated is None:
            return 0
        return bisect.bisect_right(self.offsets, rank) - 1

    def federation(self, group: int) -> range:
        """Ranks of federated group ``group`` (``range(W)`` without federation)."""
        if isinstance(group, bool) or not isinstance(group, int):
            raise TopologyError(f"group must be an integer, got {group!r}")
        if not 0 <= group < self.num_groups:
            raise TopologyError(f"group={group} is outside 0..{self.num_groups - 1}")
        start = self.offsets[group]
        return range(start, start + self._sizes[group])

    def _sender(self, group: int, shard: int) -> int:
        """Rank that sends shard ``shard`` of ``group`` (asymmetric hsdp: the diagonal)."""
        assert self.hsdp is not None
        replicas = self._sizes[group] // self.hsdp
        return self.offsets[group] + (shard % replicas) * self.hsdp + shard

    # ------------------------------------------------------------- per rank

    def rank_info(self, rank: int) -> RankInfo:
        """The position and averaging role of ``rank``."""
        group = self.group_of(rank)
        local = rank - self.offsets[group]
        if self.hsdp is None:
            shard, replica = local, None
        else:
            shard, replica = local % self.hsdp, local // self.hsdp
        sender, source = self.federated is not None, None
        if self.federated is not None and self.hsdp is not None and not self.symmetric:
            first = self._sender(group, shard)
            sender, source = first == rank, (None if first == rank else first)
        return RankInfo(
            rank=rank,
            federated_rank=None if self.federated is None else group,
            federated_local_rank=None if self.federated is None else local,
            shard_index=shard,
            replica_index=replica,
            is_sender=sender,
            receive_from=source,
        )

    def shard_group(self, rank: int) -> tuple[int, ...]:
        """Ranks that together hold the model replica ``rank`` holds a shard of."""
        group = self.group_of(rank)
        if self.hsdp is None:
            return self._whole_groups[group]
        start = rank - (rank - self.offsets[group]) % self.hsdp
        return tuple(range(start, start + self.hsdp))

    def replica_group(self, rank: int) -> tuple[int, ...] | None:
        """Ranks of the same federated group holding the same shard as ``rank``; None without
        hsdp."""
        group = self.group_of(rank)
        if self.hsdp is None:
            return None
        return self._replica_tuples[group * self.hsdp + (rank - self.offsets[group]) % self.hsdp]

    def averaging_group(self, rank: int) -> tuple[int, ...] | None:
        """Ranks, one per federated group, that average the shard ``rank`` holds.

        None without federation and for asymmetric non-senders (they receive the average from
        ``rank_info(rank).receive_from``).
        """
        group = self.group_of(rank)
        if self.federated is None:
            return None
        if self.symmetric:
            return self._averaging_by_column[rank - self.offsets[group]]
        assert self.hsdp is not None
        shard = (rank - self.offsets[group]) % self.hsdp
        if self._sender(group, shard) != rank:
            return None
        return self._averaging_by_column[shard]

    @cached_property
    def _whole_groups(self) -> tuple[tuple[int, ...], ...]:
        """Ranks of each federated group (or of the world); O(W), built on first use."""
        return tuple(tuple(self.federation(group)) for group in range(self.num_groups))

    @cached_property
    def _replica_tuples(self) -> tuple[tuple[int, ...], ...]:
        """Replica groups, h per federated group in shard order; O(W), built on first use."""
        return tuple(self._iter_replica_groups())

    @cached_property
    def _averaging_by_column(self) -> tuple[tuple[int, ...], ...]:
        """Averaging groups indexed by local rank (symmetric) or shard (asymmetric); O(W)."""
        assert self.federated is not None
        if self.symmetric:
            size = self.federated[0]
            return tuple(tuple(range(local, self.world_size, size)) for local in range(size))
        assert self.hsdp is not None
        return tuple(
            tuple(self._sender(group, shard) for group in range(self.num_groups))
            for shard in range(self.hsdp)
        )

    # -------------------------------------------------------------- listings

    def _iter_shard_groups(self) -> Iterator[tuple[int, ...]]:
        if self.hsdp is None:
            yield from self._whole_groups
            return
        for start in range(0, self.world_size, self.hsdp):
            yield tuple(range(start, start + self.hsdp))

    def _iter_replica_groups(self) -> Iterator[tuple[int, ...]]:
        if self.hsdp is None:
            return
        for group in range(self.num_groups):
            start, stop = self.offsets[group], self.offsets[group] + self._sizes[group]
            for shard in range(self.hsdp):
                yield tuple(range(start + shard, stop, self.hsdp))

    def shard_groups(self) -> list[tuple[int, ...]]:
        """Every sharding group, ordered by first member."""
        return list(self._iter_shard_groups())

    def replica_groups(self) -> list[tuple[int, ...]]:
        """Every replica group, ordered by first member ([] without hsdp)."""
        return list(self._iter_replica_groups())

    def averaging_groups(self) -> list[tuple[int, ...]]:
        """Every cross-group averaging group, ordered by first member ([] without federation)."""
        if self.federated is None:
            return []
        return sorted(self._averaging_by_column)

    def _group_counts(self) -> tuple[int, int, int]:
        """Numbers of shard, replica and averaging groups."""
        shards = self.num_groups if self.hsdp is None else self.world_size // self.hsdp
        replicas = 0 if self.hsdp is None else self.num_groups * self.hsdp
        if self.federated is None:
            averaging = 0
        elif self.symmetric:
            averaging = self.federated[0]
        else:
            averaging = self.hsdp or 0
        return shards, replicas, averaging

    def mesh_shape(self) -> tuple[tuple[int, ...], tuple[str, ...]] | None:
        """Shape and dimension names of the one device mesh covering all ranks.

        None for asymmetric federation, whose groups need one mesh each.
        """
        world, hsdp = self.world_size, self.hsdp
        if self.federated is None:
            if hsdp is None:
                return (world,), ("shard",)
            return (world // hsdp, hsdp), ("replica", "shard")
        if not self.symmetric:
            return None
        groups, size = self.num_groups, self.federated[0]
        if hsdp is None:
            return (groups, size), ("federation", "shard")
        return (groups, size // hsdp, hsdp), ("federation", "replica", "shard")

    # --------------------------------------------------------------- picture

    def describe(self) -> str:
        """A text picture: header, one row per node of annotated ranks, then the groups."""
        lines = [self._header()]
        fields = ("F<group> " if self.federated is not None else "") + (
            "R<replica> " if self.hsdp is not None else ""
        )
        marks = [f"legend: rank:{fields}S<shard index>"]
        if self.federated is not None:
            marks.append("* averages across groups")
            if not self.symmetric:
                marks.append("<n gets the average from rank n")
        lines.append(",  ".join(marks))
        mesh = self.mesh_shape()
        if mesh is None:
            lines.append("mesh: none spanning all ranks (asymmetric groups: one mesh per group)")
        else:
            lines.append(f"mesh: shape {mesh[0]}, dims {mesh[1]}")
        lines.append("")
        lines.extend(self._rows())
        shards, replicas, averaging = self._group_counts()
        huge = self.world_size > _FULL_PICTURE_MAX
        lines.append("")
        if huge:
            lines.append(
                f"{shards} shard groups, {replicas} replica groups, {averaging} averaging groups"
                f" (lists omitted above {_FULL_PICTURE_MAX} ranks)"
            )
            return "\n".join(lines)
        lines.extend(_listing("shard groups", self._iter_shard_groups(), shards))
        if self.hsdp is not None:
            lines.extend(_listing("replica groups", self._iter_replica_groups(), replicas))
        if self.federated is not None:
            lines.extend(_listing("averaging groups", iter(self.averaging_groups()), averaging))
        return "\n".join(lines)

    def _header(self) -> str:
        parts = [f"{self.mode}: world size {self.world_size}"]
        if self.federated is not None:
            if self.symmetric:
                parts.append(f"{self.num_groups} federated groups of {self.federated[0]} ranks")
            else:
                parts.append(f"{self.num_groups} federated groups of {_show(self.federated)} ranks")
        if self.hsdp is not None:
            replicas = tuple(size // self.hsdp for size in self._sizes)
            if len(set(replicas)) == 1:
                parts.append(f"hsdp {self.hsdp} ({replicas[0]} replicas per group)")
            else:
                parts.append(f"hsdp {self.hsdp} (replicas per group {_show(replicas)})")
        if self.node_sizes is not None:
            if len(set(self.node_sizes)) == 1:
                parts.append(f"{len(self.node_sizes)} nodes of {self.node_sizes[0]} ranks")
            else:
                parts.append(f"{len(self.node_sizes)} nodes of {_show(self.node_sizes)} ranks")
        return ", ".join(parts)

    def _rows(self) -> list[str]:
        """One line per node (or per 8 ranks without node sizes), few of them when huge."""
        if self.node_sizes is not None:
            sizes, label = self.node_sizes, "node"
        else:
            full, rest = divmod(self.world_size, 8)
            sizes = (8,) * full + ((rest,) if rest else ())
            label = "ranks"
        count = len(sizes)
        shown = count if self.world_size <= _FULL_PICTURE_MAX else min(count, _HEAD_NODES)
        width = len(str(count - 1)) if label == "node" else len(str(self.world_size - 1))
        rows, start = [], 0
        for index in range(shown):
            ranks = range(start, start + sizes[index])
            start += sizes[index]
            cells = [self._cell(rank) for rank in ranks[:_ROW_RANKS]]
            if len(ranks) > _ROW_RANKS:
                cells.append(f"... {len(ranks) - _ROW_RANKS} more")
            if label == "node":
                name = f"node {index:<{width}}"
            else:
                name = f"ranks {f'{ranks[0]}-{ranks[-1]}':<{2 * width + 1}}"
            line = f"{name}  [ {cells[0]}"
            for cell in cells[1:]:
                if len(line) + 2 + len(cell) > _LINE_WIDTH:
                    rows.append(line)
                    line = " " * (len(name) + 4) + cell
                else:
                    line += "  " + cell
            rows.append(line + " ]")
        if shown < count:
            rest = self.world_size - start
            unit = "nodes" if label == "node" else "rows"
            rows.append(f"... {count - shown} more {unit} ({rest} ranks)")
        return rows

    def _cell(self, rank: int) -> str:
        info = self.rank_info(rank)
        parts = []
        if info.federated_rank is not None:
            parts.append(f"F{info.federated_rank}")
        if info.replica_index is not None:
            parts.append(f"R{info.replica_index}")
        parts.append(f"S{info.shard_index}")
        text = f"{rank}:{' '.join(parts)}"
        if info.is_sender:
            text += "*"
        elif info.receive_from is not None:
            text += f" <{info.receive_from}"
        return text


def _format_group(group: tuple[int, ...]) -> str:
    if len(group) <= _LISTED_MEMBERS:
        return "[" + " ".join(str(rank) for rank in group) + "]"
    head = " ".join(str(rank) for rank in group[: _LISTED_MEMBERS - 2])
    return f"[{head} ... {group[-1]}] ({len(group)} ranks)"


def _listing(title: str, groups: Iterator[tuple[int, ...]], count: int) -> list[str]:
    shown = [_format_group(group) for group in itertools.islice(groups, _LISTED_GROUPS)]
    if count > len(shown):
        shown.append(f"... {count - len(shown)} more")
    lines, line = [], f"{title} ({count}):"
    for item in shown:
        if len(line) + 2 + len(item) > _LINE_WIDTH and line.strip():
            lines.append(line)
            line = "   "
        line += "  " + item
    return [*lines, line]


def _normalise_federated(federated: object, world: int) -> tuple[int, ...] | None:
    """Group sizes in ranks (two or more groups) from an int, a 1-tuple or explicit sizes."""
    if federated is None:
        return None
    if isinstance(federated, bool) or not isinstance(federated, (int, Sequence)):
        raise TopologyError(
            f"federated must be a group size or a sequence of group sizes, got {federated!r}"
        )
    if isinstance(federated, int):
        sizes: tuple[int, ...] = (_positive_int(federated, "federated"),)
    else:
        sizes = _int_sequence(federated, "federated")
    if len(sizes) == 1:
        size = sizes[0]
        shown = f"federated={size}"
        if size == world:
            raise TopologyError(
                f"{shown} equals the world size {world}: one group is no federation; "
                "drop federated (or use hsdp alone)"
            )
        if world % size:
            raise TopologyError(
                f"{shown} (group size in ranks) does not divide the world size {world}; "
                "give a divisor of the world size or the explicit sizes of every group"
            )
        return (size,) * (world // size)
    if sum(sizes) != world:
        raise TopologyError(
            f"federated={_show(sizes)} adds up to {sum(sizes)} but the world size is {world}"
        )
    return sizes


def _check_federated_hsdp(sizes: tuple[int, ...], hsdp: int | None) -> None:
    """Every group must split into whole replicas; different sizes need hsdp."""
    if hsdp is None:
        if len(set(sizes)) > 1:
            divisor = math.gcd(*sizes)
            raise TopologyError(
                f"federated={_show(sizes)} has groups of different sizes, and without hsdp "
                "each group shards the model over all its ranks, so the groups' shards are "
                "cut differently and cannot be averaged; set hsdp to a size dividing every "
                f"group (the largest is {divisor})"
            )
        return
    bad = [(index, size) for index, size in enumerate(sizes) if size % hsdp]
    if not bad:
        return
    if len(set(sizes)) == 1:
        raise TopologyError(
            f"hsdp={hsdp} does not divide federated group size {sizes[0]} (all {len(sizes)} groups)"
        )
    listed = ", ".join(f"{size} (group {index})" for index, size in bad[:5])
    if len(bad) > 5:
        listed += f", ... {len(bad) - 5} more"
    noun = "size" if len(bad) == 1 else "sizes"
    raise TopologyError(f"hsdp={hsdp} does not divide federated group {noun} {listed}")


def federated_in_nodes(
    nodes_per_group: Sequence[int], node_sizes: Sequence[int], name: str | None = None
) -> tuple[int, ...]:
    """Federated group sizes in ranks from group sizes in nodes (contiguous nodes).

    ``nodes_per_group`` has one entry per group, as the reference's
    ``XFFL_FEDERATED_LOCAL_WORLD_SIZE`` (e.g. ``(2, 2)``), or a single value n: groups of n
    nodes each covering all nodes. ``node_sizes`` gives the ranks of each node. Errors
    name ``name`` (the user's option or variable with its value), else the argument.
    """
    nodes = _int_sequence(node_sizes, "node_sizes")
    groups = _int_sequence(nodes_per_group, "nodes_per_group")
    given = name or f"nodes_per_group={_show(groups) if len(groups) > 1 else groups[0]}"
    if len(groups) == 1:
        if len(nodes) % groups[0]:
            raise TopologyError(
                f"{given}: {groups[0]} node(s) per group does not divide the {len(nodes)} "
                "nodes; give a divisor of the node count or one entry per group"
            )
        groups = groups * (len(nodes) // groups[0])
    elif sum(groups) != len(nodes):
        raise TopologyError(
            f"{given}: the groups add up to {sum(groups)} nodes but there are {len(nodes)} nodes"
        )
    starts = list(itertools.accumulate(groups, initial=0))
    return tuple(sum(nodes[starts[i] : starts[i + 1]]) for i in range(len(groups)))


def federated_from_components(
    component_of_rank: Sequence[int], name: str = "component_of_rank"
) -> tuple[int, ...]:
    """Federated group sizes in ranks from each rank's SLURM het-job component.

    Ranks of one component must be contiguous and the components numbered 0..K-1 in rank
    order. Errors name ``name`` (what the user asked for).
    """
    components = tuple(component_of_rank)
    if not components:
        raise TopologyError(f"{name} must not be empty")
    sizes: list[int] = []
    expected = 0
    for rank, component in enumerate(components):
        if isinstance(component, bool) or not isinstance(component, int):
            raise TopologyError(
                f"{name}: rank {rank}'s component must be an integer, got {component!r}"
            )
        if component == expected - 1:
            sizes[-1] += 1
            continue
        if component != expected:
            if rank == 0:
                raise TopologyError(
                    f"{name}: rank 0 is in component {component}; expected 0: "
                    "components must be numbered 0..K-1 in rank order"
                )
            raise TopologyError(
                f"{name}: rank {rank} is in component {component} after rank "
                f"{rank - 1} in component {expected - 1}; expected {expected - 1} or {expected}: "
                "ranks of one component must be contiguous and components numbered 0..K-1 "
                "in rank order"
            )
        sizes.append(1)
        expected += 1
    return tuple(sizes)


def parse_federated(text: str, variable: str) -> tuple[int, ...]:
    """Positive ints from ``"2,2"``, ``"(1,3)"`` or ``"4"``; errors name ``variable``."""
    body = text.strip()
    if len(body) >= 2 and (body[0], body[-1]) in (("(", ")"), ("[", "]")):
        body = body[1:-1]
    items = [item.strip() for item in body.split(",")]
    if len(items) > 1 and items[-1] == "":
        items.pop()
    if not all(item.isascii() and item.isdigit() and int(item) > 0 for item in items):
        raise TopologyError(
            f"{variable}={text!r} is not a comma-separated list of positive integers "
            "(expected e.g. '4', '2,2' or '(1,3)')"
        )
    return tuple(int(item) for item in items)
