"""Check-ins on a real TCP store with simulated ranks (threads, one store client each):
what every rank gets back, who names the missing ranks, how a failure travels, which job
owns the store, and what is printed while ranks wait."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta

import pytest

from tests.fakeenv import free_port
from xffl_hpc.distributed import rendezvous as rendezvous_module
from xffl_hpc.distributed.rendezvous import Rendezvous, join
from xffl_hpc.errors import DistributedError
from xffl_hpc.schedulers import Placement


def placement(rank: int, world: int, port: int, job: str = "7") -> Placement:
    return Placement(
        scheduler="slurm",
        launcher="srun",
        job_id=job,
        rank=rank,
        world_size=world,
        local_rank=0,
        local_world_size=1,
        node_rank=rank,
        num_nodes=world,
        master_addr="127.0.0.1",
        master_port=port,
        hostnames=None,
        step_id="0",
    )


def run_ranks(
    ranks: list[int],
    world: int,
    body: Callable[[Rendezvous], object],
    timeout: float = 10.0,
    environ: dict[str, str] | None = None,
    job: str = "7",
) -> dict[int, object]:
    """Each of ``ranks`` joins the rendezvous (rank 0 first, as it serves) in a thread and
    runs ``body``; what each returned or raised."""
    port = free_port()
    outcome: dict[int, object] = {}
    # a rendezvous lives as long as its process: rank 0's holds the server, which must
    # outlive the other ranks' last read, as it does in a job
    joined: list[Rendezvous] = []

    def rank_main(rank: int) -> None:
        try:
            found = join(
                placement(rank, world, port, job),
                "127.0.0.1",
                port,
                timedelta(seconds=timeout),
                environ or {},
            )
            joined.append(found)
            outcome[rank] = body(found)
        except DistributedError as error:
            outcome[rank] = error

    threads = [threading.Thread(target=rank_main, args=(rank,)) for rank in ranks]
    for thread in threads:
        thread.start()
        time.sleep(0.05)
    for thread in threads:
        thread.join(timeout + 40)
    assert not any(thread.is_alive() for thread in threads)
    return outcome


def test_rank_zero_summarizes_once_and_every_rank_gets_the_summary() -> None:
    def body(found: Rendezvous) -> str:
        return found.check_in("check", f"host{found.rank % 2}", lambda values: "|".join(values))

    outcome = run_ranks([0, 1, 2, 3], 4, body)
    assert outcome == {rank: "host0|host1|host0|host1" for rank in range(4)}


def test_missing_ranks_are_named_by_rank_zero_at_the_deadline_with_quiet_progress(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(rendezvous_module, "REPORT_SECONDS", 0.5)
    started = time.monotonic()
    outcome = run_ranks([0, 1, 3], 5, lambda found: found.check_in("check"), timeout=2.2)
    assert time.monotonic() - started < 6
    for rank in (0, 1, 3):
        assert isinstance(outcome[rank], DistributedError)
        assert str(outcome[rank]).startswith(
            f"rank {rank} of 5: rank(s) 2, 4 did not reach the check within 2.2 s (3 of 5 arrived)"
        )
    err = capfd.readouterr().err
    progress = [line for line in err.splitlines() if line.startswith("[xffl-hpc]")]
    assert 2 <= len(progress) <= 5, err
    assert all("at the check for 2 of 5 rank(s): 2, 4" in line for line in progress)
    assert "c10d" not in err and "waitForInput" not in err, err


def test_a_failure_on_one_rank_ends_every_wait_at_once() -> None:
    def body(found: Rendezvous) -> str:
        found.check_in("first")
        if found.rank == 2:
            time.sleep(0.5)
            raise found.fail("rank 2: its network check failed")
        return found.check_in("second")

    started = time.monotonic()
    outcome = run_ranks([0, 1, 2], 3, body, timeout=60)
    assert time.monotonic() - started < 5
    for rank in range(3):
        assert str(outcome[rank]) == f"rank {rank} of 3: rank 2: its network check failed"


def test_a_rank_of_another_job_fails_at_once_naming_both_jobs() -> None:
    port = free_port()
    wait = timedelta(seconds=10)
    owner = join(placement(0, 2, port, "4242"), "127.0.0.1", port, wait, {})
    started = time.monotonic()
    with pytest.raises(DistributedError) as raised:
        join(placement(1, 2, port, "4339"), "127.0.0.1", port, wait, {})
    assert time.monotonic() - started < 2
    assert str(raised.value).startswith(
        f"rank 1 of 2 (job 4339, step 0) reached the rendezvous at 127.0.0.1:{port}, "
        "which belongs to job 4242, step 0"
    )
    assert "MASTER_PORT" in str(raised.value)
    assert owner.store.add("check-in 0/count", 0) == 0


def test_restart_attempts_never_read_each_others_keys() -> None:
    def first(found: Rendezvous) -> str:
        return found.check_in("check", "attempt 0", lambda values: ",".join(values))

    def second(found: Rendezvous) -> str:
        return found.check_in("check", "attempt 1", lambda values: ",".join(values))

    port = free_port()
    wait = timedelta(seconds=10)
    agent = join(placement(0, 2, port), "127.0.0.1", port, wait, {})
    outcome: dict[int, object] = {}

    def rank_main(rank: int, attempt: str, body: Callable[[Rendezvous], str]) -> None:
        environ = {"TORCHELASTIC_RESTART_COUNT": attempt, "TORCHELASTIC_USE_AGENT_STORE": "True"}
        found = join(placement(rank, 2, port), "127.0.0.1", port, wait, environ)
        outcome[(int(attempt), rank)] = body(found)

    for attempt, body in (("0", first), ("1", second)):
        threads = [threading.Thread(target=rank_main, args=(r, attempt, body)) for r in (0, 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    assert outcome == {
        (0, 0): "attempt 0,attempt 0",
        (0, 1): "attempt 0,attempt 0",
        (1, 0): "attempt 1,attempt 1",
        (1, 1): "attempt 1,attempt 1",
    }
    assert agent.store.add("check-in 0/count", 0) == 2
