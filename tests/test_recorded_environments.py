"""Every recorded environment under tests/fixtures gives its process's true placement.

A fixture holds one process: its ``environ`` (and the ``files`` its variables point
to), its host name, ``truth`` (``null`` where even the truth is unknown) and
``undetermined``: the fields that environment cannot tell, which the placement must
leave ``None`` rather than guess. Where the environment cannot give a placement at all
(no rank, no world size), ``error`` lists what the error message must name. Real captures
come from real launches on this
machine (tests/fixtures/real/README.md); the others from the launchers' documentation
and source, cited in each file's ``source``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from xffl_hpc import PlacementError, detect
from xffl_hpc.schedulers.placement import CONTRACT_KEYS

FIXTURES = Path(__file__).parent / "fixtures"
CASES = sorted(FIXTURES.glob("*/*.json"))
#: Truth keys compared with the placement (``how`` and other notes are not; the port is
#: derived, not recorded).
COMPARED = tuple(key for key in CONTRACT_KEYS if key != "master_port")


def load(case: Path, tmp_path: Path) -> tuple[dict[str, str], str, dict[str, Any], list[str]]:
    data = json.loads(case.read_text())
    environ = dict(data["environ"])
    for variable, content in data.get("files", {}).items():
        path = tmp_path / variable
        path.write_text(content)
        environ[variable] = str(path)
    return environ, data["hostname"], data["truth"], data.get("undetermined", [])


def test_fixtures_exist() -> None:
    families = {case.parent.name for case in CASES}
    assert {"real", "recorded"} <= families, families


@pytest.mark.parametrize("case", CASES, ids=[f"{c.parent.name}/{c.stem}" for c in CASES])
def test_recorded_environment(case: Path, tmp_path: Path) -> None:
    environ, hostname, truth, undetermined = load(case, tmp_path)
    names = json.loads(case.read_text()).get("error")
    if names is not None:
        with pytest.raises(PlacementError) as error:
            detect(environ, hostname=hostname)
        assert [name for name in names if name not in str(error.value)] == []
        return
    placement = detect(environ, hostname=hostname).to_json()
    expected = {key: truth.get(key) for key in COMPARED if truth.get(key) is not None}
    expected.update(dict.fromkeys(undetermined))
    assert {key: placement[key] for key in expected} == expected
