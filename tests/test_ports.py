"""Derived rendezvous ports: a block of four per job, one per step; README's example."""

from __future__ import annotations

import json
import re

from hypothesis import given
from hypothesis import strategies as st

from tests.multiproc import ROOT
from xffl_hpc.schedulers.rendezvous import derive_port

#: (job id, step id) -> port, worked out by hand: 20000 + 4 * (job mod 2500) + step mod 4.
PORTS = [
    ("4242", "0", 26968),
    ("4242", "1", 26969),
    ("4339", "0", 27356),
    ("4242.pbs01", None, 26968),
    ("6742", "0", 26968),
    ("2499", "3", 29999),
    ("2500", "0", 20000),
]


def test_ports_by_hand() -> None:
    for job, step, port in PORTS:
        assert derive_port(job, step) == port, (job, step)


def test_the_collision_of_the_issue_is_gone() -> None:
    assert derive_port("4242", "1") != derive_port("4339", "0")


@given(
    st.integers(0, 10**9),
    st.integers(1, 2499),
    st.integers(0, 3),
    st.integers(0, 3),
)
def test_jobs_closer_than_2500_never_share_a_port_in_their_first_four_steps(
    job: int, gap: int, step: int, other_step: int
) -> None:
    assert derive_port(str(job), str(step)) != derive_port(str(job + gap), str(other_step))


def test_readmes_env_example_is_what_the_code_derives() -> None:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"\$ srun .*? xffl-hpc env --json.*?\n(\{.*?\})\n", text, re.S)
    assert block is not None
    example = json.loads(block.group(1))
    assert example["master_port"] == derive_port(example["job_id"], example["step_id"])
