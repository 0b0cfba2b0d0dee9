"""Checkpoints: round trip, permissions, refusals, and no torn checkpoint under SIGKILL."""

from __future__ import annotations

import json
import os
import random
import signal
import stat
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from xffl_hpc import CheckpointError, load_checkpoint, save_checkpoint
from xffl_hpc.distributed.checkpoint import LATEST


def model_and_optimizer(seed: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 1))
    return model, torch.optim.Adam(model.parameters(), lr=0.01)


def train_steps(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int) -> None:
    generator = torch.Generator().manual_seed(7)
    for _ in range(steps):
        x = torch.randn(16, 4, generator=generator)
        loss = model(x).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_round_trip_restores_weights_buffers_optimizer_and_extra(tmp_path: Path) -> None:
    model, optimizer = model_and_optimizer(0)
    train_steps(model, optimizer, 3)
    extra = {"losses": [0.5, 0.25], "rng": torch.Generator().manual_seed(3).get_state()}
    save_checkpoint(tmp_path, 3, model, optimizer, extra)

    restored, restored_optimizer = model_and_optimizer(1)
    found = load_checkpoint(tmp_path, restored, restored_optimizer)
    assert found is not None and found.step == 3
    assert found.extra["losses"] == [0.5, 0.25]
    assert torch.equal(found.extra["rng"], extra["rng"])
    for (name, a), (_, b) in zip(
        model.state_dict().items(), restored.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    # Same optimizer state: one more identical step gives identical weights.
    train_steps(model, optimizer, 1)
    train_steps(restored, restored_optimizer, 1)
    for a, b in zip(model.parameters(), restored.parameters(), strict=True):
        assert torch.equal(a, b)


def test_no_checkpoint_yet_is_none(tmp_path: Path) -> None:
    model, optimizer = model_and_optimizer(0)
    assert load_checkpoint(tmp_path / "absent", model, optimizer) is None


def test_files_are_private_and_old_steps_pruned(tmp_path: Path) -> None:
    model, optimizer = model_and_optimizer(0)
    root = tmp_path / "ckpt"
    for step in (10, 20, 30):
        save_checkpoint(root, step, model, optimizer, keep=2)
    assert sorted(p.name for p in root.iterdir()) == [LATEST, "step-000000020", "step-000000030"]
    assert json.loads((root / LATEST).read_text()) == {
        "step": 30,
        "folder": "step-000000030",
        "world_size": 1,
    }
    for path in [root, root / "step-000000030"]:
        assert stat.S_IMODE(path.stat().st_mode) & 0o007 == 0, path
    for path in [root / LATEST, root / "step-000000030" / "rank-00000.pt"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert not list(root.rglob("*.tmp"))


def test_world_size_mismatch_is_refused_with_both_sizes(tmp_path: Path) -> None:
    model, optimizer = model_and_optimizer(0)
    save_checkpoint(tmp_path, 5, model, optimizer)
    pointer = json.loads((tmp_path / LATEST).read_text())
    (tmp_path / LATEST).write_text(json.dumps({**pointer, "world_size": 8}))
    with pytest.raises(CheckpointError, match=r"saved by 8 rank\(s\) but this job has 1"):
        load_checkpoint(tmp_path, model, optimizer)


@pytest.mark.parametrize("folder", ["../elsewhere", "/etc", "step-1/../../x", "rank-0"])
def test_pointer_outside_the_checkpoint_folder_is_refused(tmp_path: Path, folder: str) -> None:
    model, _ = model_and_optimizer(0)
    (tmp_path / LATEST).write_text(json.dumps({"step": 1, "folder": folder, "world_size": 1}))
    with pytest.raises(CheckpointError, match="is not a step folder"):
        load_checkpoint(tmp_path, model)


def test_broken_pointer_is_named(tmp_path: Path) -> None:
    model, _ = model_and_optimizer(0)
    (tmp_path / LATEST).write_text("{not json")
    with pytest.raises(CheckpointError, match=r"latest\.json: not a checkpoint pointer"):
        load_checkpoint(tmp_path, model)


class Payload:
    """Not a tensor or plain value: unpickling it would run code."""

    def __reduce__(self) -> tuple:
        return (os.system, ("touch PWNED",))


def test_loading_runs_no_code_from_the_file(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    model, _ = model_and_optimizer(0)
    save_checkpoint(tmp_path, 1, model)
    shard = tmp_path / "step-000000001" / "rank-00000.pt"
    torch.save({"step": 1, "model": Payload()}, shard)
    with pytest.raises(CheckpointError, match=r"rank-00000\.pt: cannot load"):
        load_checkpoint(tmp_path, model)
    assert not (tmp_path / "PWNED").exists()


def test_missing_model_entries_are_named(tmp_path: Path) -> None:
    small = nn.Linear(4, 1)
    save_checkpoint(tmp_path, 1, small)
    bigger = nn.Sequential(nn.Linear(4, 1))
    with pytest.raises(CheckpointError, match=r"no value for model entries \['0.bias'"):
        load_checkpoint(tmp_path, bigger)


def test_keep_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="keep=0"):
        save_checkpoint(tmp_path, 1, nn.Linear(1, 1), keep=0)


def many_small_layers() -> nn.Module:
    """1 MiB of weights (a wide window for a torn write) in tensors small enough that no
    operation on them starts OpenMP threads, which a forked child could not use."""
    return nn.Sequential(*[nn.Linear(64, 64) for _ in range(64)])


def _writer(root: Path, model: nn.Module) -> None:
    """Save ever newer checkpoints whose every value is the step number, forever."""
    step = json.loads((root / LATEST).read_text())["step"] if (root / LATEST).exists() else 0
    while True:
        step += 1
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.fill_(step)
        save_checkpoint(root, step, model, extra={"step": step})


def test_sigkill_at_random_moments_never_leaves_a_torn_checkpoint(tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    chance = random.Random(1234)
    model = many_small_layers()
    # the first save imports what saving needs (DTensor: about a second); done here once,
    # so that every forked writer starts saving at once instead of importing
    save_checkpoint(tmp_path / "warm", 0, model)
    seen = []
    for _ in range(40):
        pid = os.fork()
        if pid == 0:  # the child only writes; it never returns into pytest
            try:
                _writer(root, model)
            finally:
                os._exit(1)
        time.sleep(chance.uniform(0.0, 0.08))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        found = load_checkpoint(root, model)
        if found is None:
            continue
        seen.append(found.step)
        assert found.extra == {"step": found.step}
        for parameter in model.parameters():
            assert torch.all(parameter == found.step), f"torn checkpoint at step {found.step}"
    assert len(set(seen)) > 5, "the writer was killed too early to test anything"
