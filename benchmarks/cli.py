"""CLI: whole-process time of ``xffl-hpc env --json``, against ``python -c pass`` and
``python -c "import torch"``.

Ours runs as ``python -m xffl_hpc env --json`` (what the ``xffl-hpc`` script runs, without
the script's own start, which a pyenv or conda shim can make slower than Python itself),
as task 1 of a 4-task srun step on this host. All three commands run interleaved.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable

from benchmarks.common import Row, Target, interleaved, median
from xffl_hpc.emulate.environments import clean_environ, slurm_task

#: ``env`` must stay near a bare interpreter start; importing torch is shown for scale.
TARGETS: dict[str, Target | None] = {
    "python -c pass": Target(2.0),
    'python -c "import torch"': None,
}
COMMANDS = {
    "ours": [sys.executable, "-m", "xffl_hpc", "env", "--json"],
    "python -c pass": [sys.executable, "-c", "pass"],
    'python -c "import torch"': [sys.executable, "-c", "import torch"],
}


def _timed(command: list[str], environ: dict[str, str], timeout: float) -> Callable[[], float]:
    def run() -> float:
        start = time.perf_counter()
        subprocess.run(command, env=environ, check=True, capture_output=True, timeout=timeout)
        return 1e3 * (time.perf_counter() - start)

    return run


def run(repetitions: int, timeout: float) -> list[Row]:
    """Milliseconds per whole process, ours against each baseline."""
    environ = clean_environ() | slurm_task("4245", [socket.gethostname()], [4], 1)
    answer = subprocess.run(
        COMMANDS["ours"], env=environ, check=True, capture_output=True, timeout=timeout, text=True
    )
    assert json.loads(answer.stdout)["rank"] == 1
    samples = interleaved(
        {name: _timed(command, environ, timeout) for name, command in COMMANDS.items()},
        repetitions,
    )
    ours = median(samples["ours"])
    return [
        Row(
            benchmark="cli",
            case=f"env --json vs {name}",
            ranks=None,
            unit="ms",
            ours=ours,
            baseline=median(samples[name]),
            baseline_name=name,
            target=target,
            samples={"ours": samples["ours"], "baseline": samples[name]},
        )
        for name, target in TARGETS.items()
    ]
