"""Tests for xffl_hpc.schedulers.hostlist, compared with SLURM's scontrol when it is installed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xffl_hpc.errors import HostlistError
from xffl_hpc.schedulers.hostlist import (
    MAX_EXPANDED_LENGTH,
    MAX_EXPRESSION_LENGTH,
    MAX_HOSTS,
    MAX_RANGE,
    compress,
    count,
    expand,
)

EXPANSIONS: list[tuple[str, list[str]]] = [
    ("", []),
    (" , ,\t,,", []),
    ("n1", ["n1"]),
    ("node-1.cluster", ["node-1.cluster"]),
    ("a,b c\td", ["a", "b", "c", "d"]),
    ("n[1-3]", ["n1", "n2", "n3"]),
    ("n[1-3,5,7-8]", ["n1", "n2", "n3", "n5", "n7", "n8"]),
    ("n[5]", ["n5"]),
    ("n[5-5]", ["n5"]),
    ("n[5-]", ["n5"]),
    ("[1-3]", ["1", "2", "3"]),
    ("n[01-03]", ["n01", "n02", "n03"]),
    ("n[08-11]", ["n08", "n09", "n10", "n11"]),
    ("n[098-101]", ["n098", "n099", "n100", "n101"]),
    ("n[9-11]", ["n9", "n10", "n11"]),
    ("n[1-010]", ["n1", "n2", "n3", "n4", "n5", "n6", "n7", "n8", "n9", "n10"]),
    ("n[001,2,03]", ["n001", "n2", "n03"]),
    ("n[3,1,1]", ["n3", "n1", "n1"]),
    ("n2,n1,n1", ["n2", "n1", "n1"]),
    ("n1,n[1-2] m[1,2]", ["n1", "n1", "n2", "m1", "m2"]),
    (
        "gpu[001-004,010],login-[1-2]a",
        ["gpu001", "gpu002", "gpu003", "gpu004", "gpu010", "login-1a", "login-2a"],
    ),
    ("login-[1-2]a", ["login-1a", "login-2a"]),
    ("n[1-2].ib0,n[3]-ib", ["n1.ib0", "n2.ib0", "n3-ib"]),
    ("n[1-2]]", ["n1]", "n2]"]),
    ("a[1-2]b[3-4]", ["a1b3", "a1b4", "a2b3", "a2b4"]),
    ("a[1-2]b[3,4]", ["a1b3", "a1b4", "a2b3", "a2b4"]),
    # With three groups SLURM varies the last fastest, then the first, then the middle one.
    (
        "a[1-2]b[3-4]c[5-6]",
        ["a1b3c5", "a1b3c6", "a2b3c5", "a2b3c6", "a1b4c5", "a1b4c6", "a2b4c5", "a2b4c6"],
    ),
    ("rack[1-2]-n[01-02].ib", ["rack1-n01.ib", "rack1-n02.ib", "rack2-n01.ib", "rack2-n02.ib"]),
    ("rack[1,2]-n[01,02]", ["rack1-n01", "rack1-n02", "rack2-n01", "rack2-n02"]),
    ("a[1-2],b", ["a1", "a2", "b"]),
    ("a\nb,n[1,\n2]", ["a", "b", "n1", "n02"]),
    # C strtoul quirks SLURM accepts: blanks and '+' count towards the width, text after the
    # low number is ignored when a '-' follows.
    ("n[1, 2]", ["n1", "n02"]),
    ("n[ 1-3]", ["n01", "n02", "n03"]),
    ("n[1a-3]", ["n01", "n02", "n03"]),
    ("n[1-+3]", ["n1", "n2", "n3"]),
    ("n[0- -0]", ["n0"]),
    # Bracket pairing quirks.
    ("]", ["]"]),
    ("]a[1]", ["]a1"]),
    ("x[1[2,3]", ["x[12", "x[13"]),
    ("a[1]-3]b[5]", ["a01b5", "a02b5", "a03b5"]),
    ("n[18446744073709551615]", ["n18446744073709551615"]),
]

# Grammar of current hostlist.c that Debian's SLURM 22.05 does not have, with the release that
# introduced it. 22.05 splits names only at ',', ' ' and '\t', rejects text after ']' and turns
# an unclosed "n[1-" into the host "n]".
NEWER_GRAMMAR: dict[str, tuple[int, int, int]] = {
    "a\nb,n[1,\n2]": (23, 2, 0),
    "gpu[001-004,010],login-[1-2]a": (23, 2, 5),
    "login-[1-2]a": (23, 2, 5),
    "n[1-2].ib0,n[3]-ib": (23, 2, 5),
    "n[1-2]]": (23, 2, 5),
    "rack[1-2]-n[01-02].ib": (23, 2, 5),
    "n[1-": (23, 2, 0),
    "n[1-3": (23, 2, 0),
    "a]b[1,2]": (23, 2, 0),
}

ERRORS: list[tuple[str, str]] = [
    ("n[1-", "unclosed '[' at position 1"),
    ("n[1-3", "unclosed '[' at position 1"),
    ("a]b[1,2]", "unclosed '[' at position 3"),
    ("n[]", "invalid range '' at position 2"),
    ("n[1,,2]", "invalid range '' at position 4"),
    ("n[1,]", "invalid range '' at position 4"),
    ("n[-1]", "invalid range '-1'"),
    ("n[1--3]", "invalid range '1--3'"),
    ("n[1-2-3]", "invalid range '1-2-3'"),
    ("n[a]", "invalid range 'a'"),
    ("n[1 2]", "invalid range '1 2'"),
    ("n[1x2]", "invalid range '1x2'"),
    ("n[1-10:2]", "invalid range '1-10:2'"),
    ("n[5-3]", "reversed range '5-3' at position 2"),
    ("n[0-65536]", f"range '0-65536' at position 2 has more than {MAX_RANGE} hosts"),
    ("n[0-999999999]", "has more than 65536 hosts"),
    ("a[0-40000,40001-65536]b[1]", "bracket group at position 1 has more than 65536 hosts"),
    ("n[99999999999999999999]", "number '99999999999999999999' at position 2 exceeds 2**64-1"),
    ("a[x]b[1]c[1]", "invalid range 'x' at position 2"),
    ("n1\r", "control character '\\r' at position 2"),
    ("a[0-65535]b[0-65535]", f"expands to more than {MAX_HOSTS} hosts"),
    ("n[1-65536]," * 16, f"expands to more than {MAX_HOSTS} hosts"),
    ("p" * 1100 + "[1-65536]", f"expands to more than {MAX_EXPANDED_LENGTH} characters"),
    ("n" * (MAX_EXPRESSION_LENGTH + 1), f"longer than {MAX_EXPRESSION_LENGTH} characters"),
    ("n[1-2]," * 200_000, f"longer than {MAX_EXPRESSION_LENGTH} characters"),
]

# Refused here although SLURM accepts them: it silently drops the hosts of a name whose third
# from last (or earlier) bracket group is invalid, clamps numbers above 2**64-1, merges names
# that differ by '\r', and has no limits on the size of an expansion.
REFUSED_UNLIKE_SLURM = {
    "n[99999999999999999999]",
    "a[x]b[1]c[1]",
    "n1\r",
    "a[0-65535]b[0-65535]",
    "n[1-65536]," * 16,
    "p" * 1100 + "[1-65536]",
    "n" * (MAX_EXPRESSION_LENGTH + 1),
    "n[1-2]," * 200_000,
}

COMPRESSIONS: list[tuple[list[str], str]] = [
    ([], ""),
    (["n1"], "n1"),
    (["n1", "n2", "n3"], "n[1-3]"),
    (["n1", "n2", "n01", "n3"], "n[1-2,01,3]"),
    (["n2", "n1", "n1"], "n[2,1,1]"),
    (["a", "b1", "b2", "b4", "c"], "a,b[1-2,4],c"),
    (["n9", "n10", "n11"], "n[9-11]"),
    (["n08", "n09", "n10"], "n[08-10]"),
    (["n8", "n09"], "n[8,09]"),
    (["n099", "n100"], "n[099-100]"),
    (["n0099", "n100"], "n[0099,100]"),
    (["1", "2", "3"], "[1-3]"),
    (["n1", "m1", "n2"], "n1,m1,n2"),
    (["n1", "n", "n2"], "n1,n,n2"),
    (["n1a", "n2a"], "n1a,n2a"),
    (["login-1a", "login-2a", "gpu001", "gpu002"], "login-1a,login-2a,gpu[001-002]"),
    (["a1b1", "a1b2", "a2b1"], "a1b[1-2],a2b1"),
    (["n99999999999999999999"], "n99999999999999999999"),
]


def test_expand_gives_hosts_in_order() -> None:
    for expression, hosts in EXPANSIONS:
        assert expand(expression) == hosts, expression
        assert count(expression) == len(hosts), expression


def test_large_expansions() -> None:
    hosts = expand("gpu[00001-10000]")
    assert (len(hosts), hosts[0], hosts[-1]) == (10000, "gpu00001", "gpu10000")
    hosts = expand("n[" + ",".join(f"{i}-{i + 1}" for i in range(0, 30000, 3)) + "],m[7]")
    assert (len(hosts), hosts[:3], hosts[-2:]) == (20001, ["n0", "n1", "n3"], ["n29998", "m7"])


@pytest.mark.parametrize(("expression", "reason"), ERRORS, ids=lambda value: value[:20])
def test_errors_name_variable_and_value(expression: str, reason: str) -> None:
    for function in (expand, count):
        with pytest.raises(HostlistError) as caught:
            function(expression, "SLURM_JOB_NODELIST")
        message = str(caught.value)
        assert message.startswith(f"SLURM_JOB_NODELIST={expression[:80]!r}")
        assert reason in message
        assert len(message) < 250


def test_error_message_format() -> None:
    with pytest.raises(HostlistError) as caught:
        expand("n[1-", variable="SLURM_STEP_NODELIST")
    assert str(caught.value) == "SLURM_STEP_NODELIST='n[1-': unclosed '[' at position 1"
    assert isinstance(caught.value, ValueError)


def test_error_for_a_non_string() -> None:
    with pytest.raises(HostlistError, match=r"^SLURM_NODELIST: expected a string, got NoneType$"):
        expand(None, "SLURM_NODELIST")  # type: ignore[arg-type]


def test_count_limit_is_exact() -> None:
    assert count("a[0-65535]b[0-14],c[1-16960]") == MAX_HOSTS
    with pytest.raises(HostlistError, match="more than 1000000 hosts"):
        count("a[0-65535]b[0-14],c[1-16961]")


@pytest.mark.parametrize(("hosts", "expression"), COMPRESSIONS)
def test_compress(hosts: list[str], expression: str) -> None:
    assert compress(hosts) == expression
    assert compress(iter(hosts)) == expression
    assert expand(expression) == hosts


def test_compress_splits_runs_longer_than_slurm_accepts() -> None:
    hosts = [f"n{i}" for i in range(70000)]
    assert compress(hosts) == "n[0-65535,65536-69999]"
    assert expand(compress(hosts)) == hosts


@pytest.mark.parametrize(
    ("hosts", "message"),
    [
        ("n1", "hosts='n1': expected host names, not one string"),
        (["n1", ""], "hosts[1]='': not usable in a hostlist"),
        (["a,b"], "hosts[0]='a,b': not usable"),
        (["a b"], "not usable"),
        (["a\tb"], "not usable"),
        (["n[1]"], "not usable"),
        (["n]"], "not usable"),
        (["n\r1"], "not usable"),
        (["n1", 2], "hosts[1]: expected a string, got int"),
    ],
)
def test_compress_refuses_unusable_names(hosts: list[str], message: str) -> None:
    with pytest.raises(HostlistError, match=re.escape(message)):
        compress(hosts)


# ---- property tests -----------------------------------------------------------------------

_LITERALS = st.text(alphabet="abn.-_", max_size=3)
_GOOD_ITEMS = st.one_of(
    st.integers(0, 30).map(str),
    st.builds(
        lambda low, span, width: f"{low:0{width}d}-{low + span:0{width}d}",
        st.integers(0, 30),
        st.integers(0, 4),
        st.integers(0, 3),
    ),
    st.sampled_from(["01", "001", "1-010", "9-11", "08-10", "3-", " 2", "+1", "1a-2", "2- 3"]),
)
_BAD_ITEMS = st.sampled_from(["", "x", "5-3", "-1", "1--2", "1-2-3", " ", "a", "1 "])


@st.composite
def _expressions(draw: st.DrawFn) -> str:
    """Expressions SLURM 22.05 and current SLURM read alike: no newline, suffix or unclosed '['.

    Only names with at most two bracket groups get invalid ranges: SLURM ignores errors in
    earlier groups (see REFUSED_UNLIKE_SLURM).
    """
    names: list[str] = []
    for _ in range(draw(st.integers(1, 3))):
        groups = draw(st.integers(0, 3))
        items = st.one_of(_GOOD_ITEMS, _BAD_ITEMS) if groups <= 2 else _GOOD_ITEMS
        name = draw(_LITERALS)
        for index in range(groups):
            if index:
                name += draw(_LITERALS)
            name += "[" + ",".join(draw(st.lists(items, min_size=1, max_size=3))) + "]"
        names.append(name)
    return draw(st.sampled_from([",", " ", ",,", "\t", ", "])).join(names)


@st.composite
def _host_lists(draw: st.DrawFn) -> list[str]:
    """Runs of numbered names with random prefixes, padding and suffixes, some shuffled."""
    hosts: list[str] = []
    for _ in range(draw(st.integers(0, 5))):
        prefix = draw(st.text(alphabet="abn-._0", max_size=3))
        suffix = draw(st.sampled_from(["", "", "a", "-ib", ".x1"]))
        if not draw(st.integers(0, 9)):
            hosts.append(f"z{prefix}{suffix}")
            continue
        start, length = draw(st.integers(0, 120)), draw(st.integers(1, 12))
        width, step = draw(st.integers(0, 4)), draw(st.sampled_from([1, 1, 2, -1]))
        numbers = [start + step * i for i in range(length) if start + step * i >= 0]
        hosts.extend(f"{prefix}{n:0{width}d}{suffix}" for n in numbers)
    if hosts and draw(st.booleans()):
        hosts.insert(draw(st.integers(0, len(hosts))), draw(st.sampled_from(hosts)))
    return draw(st.permutations(hosts)) if draw(st.booleans()) else hosts


_ANY_NAME = st.text(
    st.characters(exclude_categories=("Cc", "Cs"), exclude_characters=",[] \t\n"), min_size=1
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(_host_lists(), st.lists(_ANY_NAME, max_size=8)))
def test_compress_round_trips(hosts: list[str]) -> None:
    assert expand(compress(hosts)) == hosts


@settings(max_examples=300, deadline=None)
@given(st.one_of(_expressions(), st.text(alphabet="n1[]-, x0+\t\n", max_size=20)))
def test_count_agrees_with_expand(expression: str) -> None:
    try:
        hosts = expand(expression)
    except HostlistError as error:
        with pytest.raises(HostlistError, match=re.escape(str(error))):
            count(expression)
    else:
        assert count(expression) == len(hosts)


# ---- comparison with SLURM's scontrol ------------------------------------------------------


@dataclass(frozen=True)
class _Scontrol:
    """Runs ``scontrol show hostnames|hostlist`` against a two-line slurm.conf, no cluster."""

    path: str
    environment: dict[str, str]

    def _run(self, *arguments: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.path, *arguments],
            env=self.environment,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def version(self) -> tuple[int, ...]:
        found = re.search(r"(\d+)\.(\d+)\.(\d+)", self._run("--version").stdout)
        assert found, "cannot read scontrol's version"
        return tuple(int(part) for part in found.groups())

    def hostnames(self, expression: str) -> list[str] | None:
        """The hosts scontrol prints, or None when it finds the expression invalid."""
        result = self._run("show", f"hostnames={expression}")
        if "Invalid hostlist" in result.stderr:
            return None
        lines = result.stdout.split("\n")
        assert lines.pop() == "", result
        return lines

    def hostlist(self, hosts: list[str]) -> str:
        result = self._run("show", f"hostlist={','.join(hosts)}")
        assert result.returncode == 0, result
        return result.stdout.removesuffix("\n")


@pytest.fixture(scope="session")
def scontrol(tmp_path_factory: pytest.TempPathFactory) -> _Scontrol:
    path = shutil.which("scontrol")
    if path is None:
        pytest.skip("scontrol (SLURM client commands) is not on PATH")
    conf: Path = tmp_path_factory.mktemp("slurm") / "slurm.conf"
    conf.write_text("ClusterName=xffl\nSlurmctldHost=localhost\n")
    return _Scontrol(path, {**os.environ, "SLURM_CONF": str(conf)})


def _ours(expression: str) -> list[str] | None:
    try:
        return expand(expression)
    except HostlistError:
        return None


def test_table_matches_scontrol(scontrol: _Scontrol) -> None:
    version = scontrol.version()
    cases = [expression for expression, _ in EXPANSIONS + ERRORS]
    compared = [
        expression
        for expression in cases
        if expression not in REFUSED_UNLIKE_SLURM and version >= NEWER_GRAMMAR.get(expression, ())
    ]
    for expression in compared:
        assert scontrol.hostnames(expression) == _ours(expression), expression


@settings(max_examples=150, deadline=None)
@given(_expressions())
def test_generated_expressions_match_scontrol(scontrol: _Scontrol, expression: str) -> None:
    assert scontrol.hostnames(expression) == _ours(expression)


def test_compress_table_matches_scontrol(scontrol: _Scontrol) -> None:
    for hosts, expression in COMPRESSIONS:
        if "99999999999999999999" not in expression:  # SLURM clamps numbers above 2**64-1
            assert scontrol.hostlist(hosts) == expression


# SLURM's "show hostlist" keeps order and duplicates like compress(); the texts would only
# differ for runs longer than MAX_RANGE (SLURM prints them unsplit and cannot read them back)
# and numbers above 2**64-1, which these lists do not contain, so the texts are compared as is.
@settings(max_examples=150, deadline=None)
@given(_host_lists())
def test_compress_matches_scontrol_hostlist(scontrol: _Scontrol, hosts: list[str]) -> None:
    assert scontrol.hostlist(hosts) == compress(hosts)
