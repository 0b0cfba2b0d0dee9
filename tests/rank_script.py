"""A rank for emulator tests: ``python tests/rank_script.py MODE [RANK]``.

Every rank prints its pid and starts a child (``sleep``) so tests can check that no
process outlives the job. Modes: ``sleep`` (wait), ``fail R`` (rank R exits 1),
``kill R`` (rank R SIGKILLs itself), ``stubborn`` (ignore SIGTERM), ``allreduce``,
``collective R`` (rank R raises while the others wait in an all-reduce), ``hold PATH``
(set up, write ``PATH.ready<rank>``, all-reduce once ``PATH`` exists).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def main() -> None:
    mode = sys.argv[1]
    rank = int(os.environ.get("SLURM_PROCID") or os.environ.get("PMI_RANK") or os.environ["RANK"])
    child = subprocess.Popen(["sleep", "120"])
    print(f"pids {os.getpid()} {child.pid}", flush=True)
    target = int(sys.argv[2]) if len(sys.argv) > 2 and mode != "hold" else -1
    if mode in ("allreduce", "collective", "hold"):
        import torch
        import torch.distributed as dist

        from xffl_hpc import cleanup_distributed_process_group, setup_distributed_process_group

        state = setup_distributed_process_group(timeout=60)
        if mode == "hold":
            release = Path(sys.argv[2])
            Path(f"{release}.ready{rank}").touch()
            while not release.exists():
                time.sleep(0.1)
        value = torch.tensor([rank + 1.0])
        if rank == target:  # the others wait for it inside the all-reduce
            time.sleep(0.5)
            raise RuntimeError(f"rank {rank} fails while its peers are in a collective")
        dist.all_reduce(value)
        print(f"port {state.master_port} sum {value.item():.0f}", flush=True)
        cleanup_distributed_process_group(state)
        child.kill()
        return
    if mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if rank == target:
        time.sleep(0.5)
        if mode == "fail":
            sys.exit(1)
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(120)


if __name__ == "__main__":
    main()
