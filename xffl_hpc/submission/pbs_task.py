"""One rank of a PBS submitit job: ``python -m xffl_hpc.submission.pbs_task FOLDER``.

``mpiexec`` gathers every rank's output into the job's one output file; this sends the
rank's standard output and error to submitit's per-task logs (``%j_%t_log.out`` and
``.err``, as under SLURM) and then runs submitit's task.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from submitit.core.submission import process_job
from submitit.core.utils import JobPaths

from xffl_hpc.submission.pbs import PbsJobEnvironment


def main(argv: Sequence[str]) -> None:
    """Redirect this rank's output to its logs in ``argv[0]`` (the folder), run its task."""
    folder = argv[0]
    environment = PbsJobEnvironment()
    paths = JobPaths(folder, job_id=environment.job_id, task_id=environment.global_rank)
    paths.folder.mkdir(parents=True, exist_ok=True)
    for stream, path in ((sys.stdout, paths.stdout), (sys.stderr, paths.stderr)):
        stream.flush()
        with open(path, "a") as log:
            os.dup2(log.fileno(), stream.fileno())
    process_job(folder)


if __name__ == "__main__":
    main(sys.argv[1:])
