"""Group layouts of ``xffl_hpc.topology``: the reference's examples, errors, and properties."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xffl_hpc.errors import TopologyError, XfflHpcError
from xffl_hpc.topology import (
    RankInfo,
    Topology,
    federated_from_components,
    federated_in_nodes,
    parse_federated,
)

# ------------------------------------------------------------------ reference examples


def test_plain_fsdp_is_one_shard_group_of_all_ranks() -> None:
    topology = Topology.build(8)
    assert topology.mode == "fsdp"
    assert topology.shard_groups() == [tuple(range(8))]
    assert topology.replica_groups() == []
    assert topology.averaging_groups() == []
    assert topology.mesh_shape() == ((8,), ("shard",))
    assert topology.replica_group(3) is None
    assert topology.averaging_group(3) is None
    assert topology.rank_info(3) == RankInfo(3, None, None, 3, None, False, None)


def test_hsdp_2_of_8_contiguous_shards_strided_replicas() -> None:
    topology = Topology.build(8, hsdp=2)
    assert topology.mode == "hsdp"
    assert topology.shard_groups() == [(0, 1), (2, 3), (4, 5), (6, 7)]
    assert topology.replica_groups() == [(0, 2, 4, 6), (1, 3, 5, 7)]
    assert topology.mesh_shape() == ((4, 2), ("replica", "shard"))
    assert topology.rank_info(5) == RankInfo(5, None, None, 1, 2, False, None)
    assert topology.averaging_group(5) is None


@pytest.mark.parametrize(("hsdp", "shape"), [(8, (1, 8)), (1, (8, 1))])
def test_hsdp_equal_to_world_or_one_is_accepted(hsdp: int, shape: tuple[int, int]) -> None:
    assert Topology.build(8, hsdp=hsdp).mesh_shape() == (shape, ("replica", "shard"))


def test_federated_4_of_8_without_hsdp() -> None:
    topology = Topology.build(8, federated=4)
    assert topology.federated == (4, 4)
    assert topology.mode == "federated"
    assert topology.shard_groups() == [(0, 1, 2, 3), (4, 5, 6, 7)]
    assert topology.averaging_groups() == [(0, 4), (1, 5), (2, 6), (3, 7)]
    assert topology.mesh_shape() == ((2, 4), ("federation", "shard"))
    assert topology.federation(1) == range(4, 8)
    assert topology.rank_info(6) == RankInfo(6, 1, 2, 2, None, True, None)
    assert topology.replica_group(6) is None


@pytest.mark.parametrize("federated", [4, (4,), [4], (4, 4)])
def test_federated_spellings_agree(federated: object) -> None:
    assert Topology.build(8, federated=federated).federated == (4, 4)  # type: ignore[arg-type]


def test_federated_4_of_8_with_hsdp_2() -> None:
    topology = Topology.build(8, hsdp=2, federated=4)
    assert topology.mode == "federated+hsdp"
    assert topology.shard_groups() == [(0, 1), (2, 3), (4, 5), (6, 7)]
    assert topology.replica_groups() == [(0, 2), (1, 3), (4, 6), (5, 7)]
    assert topology.averaging_groups() == [(0, 4), (1, 5), (2, 6), (3, 7)]
    assert topology.mesh_shape() == ((2, 2, 2), ("federation", "replica", "shard"))
    # Every rank averages; nobody waits for a sender (the reference's diagonal is not used).
    for rank in range(8):
        info = topology.rank_info(rank)
        assert info.is_sender and info.receive_from is None
    assert topology.rank_info(7) == RankInfo(7, 1, 3, 1, 1, True, None)


def test_asymmetric_2_6_with_hsdp_2_uses_the_diagonal_senders() -> None:
    topology = Topology.build(8, hsdp=2, federated=(2, 6))
    assert not topology.symmetric
    assert topology.mesh_shape() is None
    assert topology.offsets == (0, 2)
    senders = {rank for rank in range(8) if topology.rank_info(rank).is_sender}
    assert senders == {0, 1, 2, 5}
    assert topology.averaging_groups() == [(0, 2), (1, 5)]
    assert topology.averaging_group(5) == (1, 5)
    receive = {rank: topology.rank_info(rank).receive_from for rank in (3, 4, 6, 7)}
    assert receive == {3: 5, 4: 2, 6: 2, 7: 5}
    for rank in (3, 4, 6, 7):
        assert topology.averaging_group(rank) is None
    assert topology.replica_groups() == [(0,), (1,), (2, 4, 6), (3, 5, 7)]
    assert topology.replica_group(7) == (3, 5, 7)
    assert topology.shard_group(4) == (4, 5)


def test_group_of_and_federation_follow_the_offsets() -> None:
    topology = Topology.build(10, hsdp=1, federated=(3, 5, 2))
    assert topology.offsets == (0, 3, 8)
    assert [topology.group_of(rank) for rank in range(10)] == [0] * 3 + [1] * 5 + [2] * 2
    assert [list(topology.federation(group)) for group in range(3)] == [
        [0, 1, 2],
        [3, 4, 5, 6, 7],
        [8, 9],
    ]
    assert Topology.build(4).federation(0) == range(4)
    assert Topology.build(4).group_of(3) == 0


def test_constructor_normalises_like_build() -> None:
    assert Topology(8, 2, 4, [2, 2, 2, 2]) == Topology.build(  # type: ignore[arg-type]
        8, hsdp=2, federated=(4, 4), node_sizes=(2, 2, 2, 2)
    )
    assert Topology.build(8, node_sizes=[4, 4]).node_sizes == (4, 4)


# ------------------------------------------------------------------------- errors

ERRORS = [
    # Section 5: hsdp not dividing W was a silent fall-back with no mesh at all.
    ({"world_size": 8, "hsdp": 3}, ["hsdp=3", "world size 8"]),
    ({"world_size": 8, "hsdp": 16}, ["hsdp=16", "world size 8"]),
    # Section 7: f not dividing W, f == W were silent fall-backs.
    ({"world_size": 8, "federated": 3}, ["federated=3", "world size 8"]),
    ({"world_size": 8, "federated": 8}, ["federated=8", "world size 8", "drop federated"]),
    ({"world_size": 8, "federated": (8,)}, ["federated=8", "drop federated"]),
    ({"world_size": 8, "federated": 16}, ["federated=16", "world size 8"]),
    # Section 7: explicit sizes not adding up hung or asserted.
    ({"world_size": 8, "federated": (2, 4)}, ["federated=(2, 4) adds up to 6", "world size is 8"]),
    ({"world_size": 8, "federated": (4, 6)}, ["federated=(4, 6) adds up to 10", "world size is 8"]),
    # Section 6b: asymmetric without hsdp asserted; with a non-dividing hsdp fell back.
    (
        {"world_size": 8, "federated": (2, 6)},
        ["federated=(2, 6)", "different sizes", "cannot be averaged", "hsdp", "largest is 2"],
    ),
    (
        {"world_size": 16, "hsdp": 3, "federated": (4, 12)},
        ["hsdp=3 does not divide federated group size 4 (group 0)"],
    ),
    (
        {"world_size": 16, "hsdp": 4, "federated": (2, 2, 12)},
        ["hsdp=4", "sizes 2 (group 0), 2 (group 1)"],
    ),
    (
        {"world_size": 14, "hsdp": 4, "federated": (6, 8)},
        ["hsdp=4 does not divide federated group size 6 (group 0)"],
    ),
    (
        {"world_size": 16, "hsdp": 3, "federated": 8},
        ["hsdp=3 does not divide federated group size 8"],
    ),
    # Section 6a: f % h != 0 fell back to FSDP.
    ({"world_size": 16, "hsdp": 4, "federated": 2}, ["hsdp=4", "group size 2"]),
    # Types and ranges.
    ({"world_size": 0}, ["world_size", "0"]),
    ({"world_size": 8, "hsdp": 0}, ["hsdp", "0"]),
    ({"world_size": 8, "hsdp": True}, ["hsdp", "True"]),
    ({"world_size": 8, "federated": ()}, ["federated", "empty"]),
    ({"world_size": 8, "federated": (8, 0)}, ["federated[1]", "0"]),
    ({"world_size": 8, "federated": (4, -4, 8)}, ["federated[1]", "-4"]),
    ({"world_size": 8, "federated": "44"}, ["federated", "'44'"]),
    ({"world_size": 8, "federated": 2.0}, ["federated", "2.0"]),
    (
        {"world_size": 8, "node_sizes": (4, 3)},
        ["node_sizes=(4, 3) adds up to 7", "world size is 8"],
    ),
    ({"world_size": 8, "node_sizes": (8, 0)}, ["node_sizes[1]", "0"]),
]


@pytest.mark.parametrize(("kwargs", "expected"), ERRORS)
def test_invalid_sizes_raise_topology_error_naming_them(
    kwargs: dict[str, object], expected: list[str]
) -> None:
    with pytest.raises(TopologyError) as caught:
        Topology.build(**kwargs)  # type: ignore[arg-type]
    for text in expected:
        assert text in str(caught.value)
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, XfflHpcError)


@pytest.mark.parametrize("rank", [-1, 8, True, 2.0])
def test_rank_out_of_range_is_an_error(rank: object) -> None:
    topology = Topology.build(8, hsdp=2, federated=4)
    with pytest.raises(TopologyError, match="rank"):
        topology.rank_info(rank)  # type: ignore[arg-type]
    with pytest.raises(TopologyError, match="rank"):
        topology.averaging_group(rank)  # type: ignore[arg-type]


def test_federation_index_out_of_range_is_an_error() -> None:
    with pytest.raises(TopologyError, match=r"group=2 is outside 0\.\.1"):
        Topology.build(8, federated=4).federation(2)


# -------------------------------------------------------------- helpers for inputs


def test_federated_in_nodes_reads_nodes_per_group() -> None:
    # The reference's XFFL_FEDERATED_LOCAL_WORLD_SIZE examples with 2 ranks per node.
    assert federated_in_nodes((2, 2), (2, 2, 2, 2)) == (4, 4)
    assert federated_in_nodes((1, 3), (2, 2, 2, 2)) == (2, 6)
    # Section 7: "2" gave the unexpanded (4,) and a hang; it now means groups of 2 nodes.
    assert federated_in_nodes((2,), (2, 2, 2, 2)) == (4, 4)
    assert federated_in_nodes((1,), (4, 4, 2)) == (4, 4, 2)
    assert federated_in_nodes((2, 1), (4, 4, 2)) == (8, 2)


@pytest.mark.parametrize(
    ("nodes_per_group", "node_sizes", "expected"),
    [
        ((3,), (2, 2, 2, 2), ["nodes_per_group=3", "4 nodes"]),
        ((2, 1), (2, 2, 2, 2), ["nodes_per_group=(2, 1)", "add up to 3 nodes", "4 nodes"]),
        ((0,), (2, 2), ["nodes_per_group[0]", "0"]),
        ((), (2, 2), ["nodes_per_group", "empty"]),
        ((1,), (), ["node_sizes", "empty"]),
        ((1,), (2, 0), ["node_sizes[1]", "0"]),
    ],
)
def test_federated_in_nodes_errors(
    nodes_per_group: tuple[int, ...], node_sizes: tuple[int, ...], expected: list[str]
) -> None:
    with pytest.raises(TopologyError) as caught:
        federated_in_nodes(nodes_per_group, node_sizes)
    for text in expected:
        assert text in str(caught.value)


def test_federated_from_components_counts_contiguous_components() -> None:
    assert federated_from_components([0, 0, 1, 1, 1, 1, 1, 1]) == (2, 6)
    assert federated_from_components([0, 1, 2]) == (1, 1, 1)
    assert federated_from_components([0, 0]) == (2,)


@pytest.mark.parametrize(
    ("components", "expected"),
    [
        ([0, 0, 1, 0], ["rank 3 is in component 0", "after rank 2 in component 1", "contiguous"]),
        ([1, 1], ["rank 0 is in component 1", "expected 0"]),
        ([0, 2], ["rank 1 is in component 2", "expected 0 or 1"]),
        ([], ["empty"]),
        ([0, "1"], ["component_of_rank: rank 1", "'1'"]),
    ],
)
def test_federated_from_components_errors(components: list[object], expected: list[str]) -> None:
    with pytest.raises(TopologyError) as caught:
        federated_from_components(components)  # type: ignore[arg-type]
    for text in expected:
        assert text in str(caught.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("2,2", (2, 2)), ("(1,3)", (1, 3)), ("4", (4,)), (" [1, 3] ", (1, 3)), ("(4,)", (4,))],
)
def test_parse_federated(text: str, expected: tuple[int, ...]) -> None:
    assert parse_federated(text, "XFFL_FEDERATED_LOCAL_WORLD_SIZE") == expected


@pytest.mark.parametrize("text", ["", "a", "2,,2", "-1", "0", "2.5", "(2,2", "1 2", "٣"])
def test_parse_federated_garbage_names_the_variable(text: str) -> None:
    with pytest.raises(TopologyError) as caught:
        parse_federated(text, "XFFL_FEDERATED_LOCAL_WORLD_SIZE")
    assert f"XFFL_FEDERATED_LOCAL_WORLD_SIZE={text!r}" in str(caught.value)


# ---------------------------------------------------------------------- picture


def test_describe_draws_nodes_and_groups() -> None:
    text = Topology.build(8, hsdp=2, federated=(2, 6), node_sizes=(2, 2, 2, 2)).describe()
    lines = text.splitlines()
    assert lines[0].startswith("federated+hsdp: world size 8, 2 federated groups of (2, 6)")
    assert "node 1  [ 2:F1 R0 S0*  3:F1 R0 S1 <5 ]" in lines
    assert "averaging groups (2):  [0 2]  [1 5]" in lines
    assert "replica groups (4):  [0]  [1]  [2 4 6]  [3 5 7]" in lines


def test_describe_truncates_long_lists_and_huge_worlds() -> None:
    text = Topology.build(64, hsdp=2, node_sizes=(8,) * 8).describe()
    assert "... 24 more" in text  # 32 shard groups, 8 listed
    huge = Topology.build(100_000, hsdp=8, federated=(25_000,) * 4, node_sizes=(4,) * 25_000)
    lines = huge.describe().splitlines()
    assert len(lines) < 20
    assert any("... 24996 more nodes" in line for line in lines)
    assert max(len(line) for line in lines[3:]) <= 100


# ------------------------------------------------------------------- properties


@st.composite
def configurations(draw: st.DrawFn) -> Topology:
    """A random valid topology of at most 96 ranks, in every mode."""
    mode = draw(st.sampled_from(["fsdp", "hsdp", "federated", "federated+hsdp", "asymmetric"]))
    hsdp = draw(st.integers(1, 4))
    if mode == "fsdp":
        world, hsdp, federated = draw(st.integers(1, 48)), None, None
    elif mode == "hsdp":
        world, federated = hsdp * draw(st.integers(1, 12)), None
    elif mode in ("federated", "federated+hsdp"):
        if mode == "federated":
            hsdp = None
        size = (hsdp or 1) * draw(st.integers(1, 6))
        groups = draw(st.integers(2, 6))
        world = size * groups
        federated = draw(st.sampled_from([size, (size,), (size,) * groups]))
    else:
        replicas = draw(
            st.lists(st.integers(1, 4), min_size=2, max_size=6).filter(lambda r: len(set(r)) > 1)
        )
        federated = tuple(hsdp * count for count in replicas)
        world = sum(federated)
    node_sizes = None
    if draw(st.booleans()):
        cuts = sorted(draw(st.sets(st.integers(1, world - 1), max_size=8))) if world > 1 else []
        bounds = [0, *cuts, world]
        node_sizes = tuple(b - a for a, b in itertools.pairwise(bounds))
    return Topology.build(world, hsdp=hsdp, federated=federated, node_sizes=node_sizes)


PROPERTY = settings(max_examples=150, deadline=None)


@PROPERTY
@given(configurations())
def test_shard_groups_partition_the_ranks(topology: Topology) -> None:
    groups = topology.shard_groups()
    members = sorted(rank for group in groups for rank in group)
    assert members == list(range(topology.world_size))
    assert [group[0] for group in groups] == sorted(group[0] for group in groups)
    for group in groups:
        if topology.hsdp is not None:
            assert len(group) == topology.hsdp
        else:
            assert group == tuple(topology.federation(topology.group_of(group[0])))
        for position, rank in enumerate(group):
            assert topology.shard_group(rank) == group
            assert topology.rank_info(rank).shard_index == position


@PROPERTY
@given(configurations())
def test_replica_groups_partition_the_ranks_with_hsdp(topology: Topology) -> None:
    groups = topology.replica_groups()
    if topology.hsdp is None:
        assert groups == []
        assert all(topology.replica_group(r) is None for r in range(topology.world_size))
        return
    assert sorted(rank for group in groups for rank in group) == list(range(topology.world_size))
    assert len(groups) == topology.num_groups * topology.hsdp
    for group in groups:
        infos = [topology.rank_info(rank) for rank in group]
        assert len({info.shard_index for info in infos}) == 1
        assert len({info.federated_rank for info in infos}) == 1
        assert [info.replica_index for info in infos] == list(range(len(group)))
        assert all(topology.replica_group(rank) == group for rank in group)


@PROPERTY
@given(configurations())
def test_averaging_groups_take_one_rank_per_federated_group(topology: Topology) -> None:
    groups = topology.averaging_groups()
    if topology.federated is None:
        assert groups == []
        for rank in range(topology.world_size):
            info = topology.rank_info(rank)
            assert topology.averaging_group(rank) is None
            assert not info.is_sender and info.receive_from is None
            assert info.federated_rank is None and info.federated_local_rank is None
        return
    expected_count = topology.federated[0] if topology.symmetric else topology.hsdp
    assert len(groups) == expected_count
    assert len({rank for group in groups for rank in group}) == sum(map(len, groups))
    for group in groups:
        assert [topology.group_of(rank) for rank in group] == list(range(topology.num_groups))
        assert len({topology.rank_info(rank).shard_index for rank in group}) == 1
        for rank in group:
            assert topology.averaging_group(rank) == group
            assert topology.rank_info(rank).is_sender


@PROPERTY
@given(configurations())
def test_every_rank_averages_or_receives_from_its_sender(topology: Topology) -> None:
    if topology.federated is None:
        return
    for rank in range(topology.world_size):
        info = topology.rank_info(rank)
        assert info.federated_rank == topology.group_of(rank)
        assert info.federated_local_rank == rank - topology.offsets[info.federated_rank]
        if topology.symmetric:
            assert info.is_sender and info.receive_from is None
            continue
        if info.is_sender:
            assert info.receive_from is None
            continue
        assert topology.averaging_group(rank) is None
        source = topology.rank_info(info.receive_from)
        assert source.is_sender
        assert source.federated_rank == info.federated_rank
        assert source.shard_index == info.shard_index
        assert info.receive_from in topology.replica_group(rank)
    if not topology.symmetric:
        # exactly one sender per (group, shard)
        senders = [
            (info.federated_rank, info.shard_index)
            for info in map(topology.rank_info, range(topology.world_size))
            if info.is_sender
        ]
        assert sorted(senders) == [
            (group, shard) for group in range(topology.num_groups) for shard in range(topology.hsdp)
        ]


@PROPERTY
@given(configurations())
def test_mesh_shape_matches_the_groups(topology: Topology) -> None:
    mesh = topology.mesh_shape()
    if mesh is None:
        assert not topology.symmetric
        return
    shape, names = mesh
    assert math.prod(shape) == topology.world_size
    assert len(shape) == len(names) and names[-1] == "shard"
    # The mesh is arange(W).reshape(shape): varying one coordinate gives that dim's groups.
    strides = [math.prod(shape[i + 1 :]) for i in range(len(shape))]
    for rank in range(topology.world_size):
        coords = [(rank // stride) % size for stride, size in zip(strides, shape, strict=True)]
        for dim, name in enumerate(names):
            base = rank - coords[dim] * strides[dim]
            line = tuple(base + k * strides[dim] for k in range(shape[dim]))
            if name == "shard":
                assert topology.shard_group(rank) == line
            elif name == "replica":
                assert topology.replica_group(rank) == line
            else:
                assert topology.averaging_group(rank) == line


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.integers(1, 8), min_size=1, max_size=12),
    st.data(),
)
def test_federated_in_nodes_round_trips(node_sizes: list[int], data: st.DataObject) -> None:
    cuts = sorted(
        data.draw(st.sets(st.integers(1, len(node_sizes) - 1))) if len(node_sizes) > 1 else []
    )
    bounds = [0, *cuts, len(node_sizes)]
    per_group = tuple(b - a for a, b in itertools.pairwise(bounds))
    sizes = federated_in_nodes(per_group, node_sizes)
    assert sum(sizes) == sum(node_sizes)
    assert sizes == tuple(sum(node_sizes[a:b]) for a, b in itertools.pairwise(bounds))
    # the single-value form: groups of n nodes each
    n = data.draw(
        st.sampled_from([d for d in range(1, len(node_sizes) + 1) if len(node_sizes) % d == 0])
    )
    even = federated_in_nodes((n,), node_sizes)
    assert even == tuple(sum(node_sizes[i : i + n]) for i in range(0, len(node_sizes), n))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 6), min_size=1, max_size=10))
def test_federated_from_components_round_trips(sizes: list[int]) -> None:
    components = [index for index, size in enumerate(sizes) for _ in range(size)]
    assert federated_from_components(components) == tuple(sizes)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.integers(1, 10**6), min_size=1, max_size=8), st.sampled_from(["{}", "({})", "[{}]"])
)
def test_parse_federated_round_trips(values: list[int], form: str) -> None:
    text = form.format(",".join(map(str, values)))
    assert parse_federated(text, "X") == tuple(values)
