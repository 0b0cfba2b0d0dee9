"""A worker under real ``torchrun``: set up, all_reduce, print the sum.

``python tests/torchrun_worker.py die``: rank 1 dies right after the set-up on the first
attempt (its keys stay in the agent's store); ``absent``: also, on the second attempt,
rank 1 never arrives.
"""

from __future__ import annotations

import os
import sys
import time

import torch
import torch.distributed as dist

from xffl_hpc import cleanup_distributed_process_group, setup_distributed_process_group


def main() -> None:
    mode = sys.argv[1]
    attempt = int(os.environ["TORCHELASTIC_RESTART_COUNT"])
    rank = int(os.environ["RANK"])
    if mode == "absent" and attempt == 1 and rank == 1:
        time.sleep(600)
    state = setup_distributed_process_group()
    if attempt == 0 and rank == 1:
        os._exit(7)
    value = torch.tensor([float(rank + 1)])
    dist.all_reduce(value)
    print(f"attempt {attempt} rank {rank} sum {value.item():g}", flush=True)
    cleanup_distributed_process_group(state)


if __name__ == "__main__":
    main()
