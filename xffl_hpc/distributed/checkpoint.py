"""Sharded checkpoints that are never torn.

Every rank writes its own shard to ``DIR/step-NNNNNNNNN/rank-NNNNN.pt`` (temporary file,
fsync, rename); once all ranks have written, rank 0 points ``DIR/latest.json`` at the new
step the same way. A job killed at any moment therefore finds ``latest.json`` naming the
previous or the new checkpoint, and every shard it names complete. Loading uses
``torch.load(weights_only=True)``: a checkpoint can hold tensors and plain values, never
code.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch
import torch.distributed as dist

from xffl_hpc.errors import CheckpointError

LATEST = "latest.json"
#: Checkpoint directories and files are readable by the owner's group, by nobody else.
DIRECTORY_MODE = 0o750


@dataclass(frozen=True)
class Checkpoint:
    """What :func:`load_checkpoint` restored: the step it was taken at and the extras."""

    step: int
    path: Path
    extra: Any


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` through ``write`` so that it holds the old or the new bytes, never
    part of them: a temporary file (mode 0600) beside it, fsync, rename, fsync the folder."""
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    _fsync_directory(path.parent)


def _make_directory(path: Path) -> None:
    path.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _to_local(tensors: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """CPU copies of this rank's shards; also the keys that were DTensors."""
    from torch.distributed.tensor import DTensor  # here: importing it costs half a second

    local, sharded = {}, []
    for key, value in tensors.items():
        if isinstance(value, DTensor):
            sharded.append(key)
            value = value.to_local()
        local[key] = value.detach().to("cpu", copy=True) if torch.is_tensor(value) else value
    return local, sharded


def _like(saved: torch.Tensor, target: Any) -> Any:
    """``saved`` (a local shard) as a tensor that fits ``target`` (a DTensor or not)."""
    from torch.distributed.tensor import DTensor

    if not isinstance(target, DTensor):
        return saved
    return DTensor.from_local(
        saved.to(target.device),
        target.device_mesh,
        target.placements,
        run_check=False,
        shape=target.shape,
        stride=target.stride(),
    )


def _optimizer_payload(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    saved = optimizer.state_dict()
    state, sharded = {}, {}
    for index, values in saved["state"].items():
        state[index], sharded[index] = _to_local(values)
    return {"state": state, "sharded": sharded, "param_groups": saved["param_groups"]}


def _restore_optimizer(optimizer: torch.optim.Optimizer, payload: dict[str, Any]) -> None:
    params = [param for group in optimizer.param_groups for param in group["params"]]
    state = {}
    for index, values in payload["state"].items():
        if index >= len(params):
            raise CheckpointError(
                f"the checkpoint's optimizer has state for parameter {index} but this "
                f"optimizer has {len(params)} parameter(s)"
            )
        param = params[index]
        state[index] = {
            key: _like(value, param) if key in payload["sharded"][index] else value
            for key, value in values.items()
        }
    optimizer.load_state_dict({"state": state, "param_groups": payload["param_groups"]})


def save_checkpoint(
    directory: str | os.PathLike[str],
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    extra: Any = None,
    keep: int = 2,
) -> Path:
    """Save this rank's shards of ``model`` and ``optimizer`` (plus ``extra``, tensors and
    plain values) as step ``step``; call it on every rank. Returns the step's folder.

    Returns once ``latest.json`` names the new step; older steps beyond the newest
    ``keep`` are removed.
    """
    if keep < 1:
        raise CheckpointError(f"keep={keep}: at least the newest checkpoint must be kept")
    root = Path(directory)
    folder = root / f"step-{step:09d}"
    rank, world = _rank_and_world()
    try:
        _make_directory(root)
        _make_directory(folder)
        model_state, model_sharded = _to_local(model.state_dict())
        payload = {
            "step": step,
            "rank": rank,
            "world_size": world,
            "model": model_state,
            "model_sharded": model_sharded,
            "optimizer": None if optimizer is None else _optimizer_payload(optimizer),
            "extra": extra,
        }
        atomic_write(folder / f"rank-{rank:05d}.pt", lambda handle: torch.save(payload, handle))
    except OSError as error:
        raise CheckpointError(f"cannot write checkpoint {folder}: {error}") from error
    _barrier()
    if rank == 0:
        pointer = {"step": step, "folder": folder.name, "world_size": world}
        atomic_write(root / LATEST, lambda handle: handle.write(json.dumps(pointer).encode()))
        steps = sorted(path for path in root.glob("step-*") if path.is_dir())
        for old in steps[:-keep]:
            if old.name != folder.name:
                shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return folder


def _read_pointer(root: Path) -> dict[str, Any] | None:
    path = root / LATEST
    try:
        pointer = json.loads(path.read_text())
        found = {**pointer, "step": int(pointer["step"]), "folder": str(pointer["folder"])}
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"{path}: not a checkpoint pointer ({error})") from None
    if not found["folder"].startswith("step-") or Path(found["folder"]).name != found["folder"]:
        raise CheckpointError(f"{path}: folder {found['folder']!r} is not a step folder")
    return found


def load_checkpoint(
    directory: str | os.PathLike[str],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
) -> Checkpoint | None:
    """Restore this rank's shards from the newest complete checkpoint in ``directory``;
    ``None`` when there is none yet. The job must have the world size that saved it."""
    root = Path(directory)
    pointer = _read_pointer(root)
    if pointer is None:
        return None
    rank, world = _rank_and_world()
    if pointer.get("world_size") != world:
        raise CheckpointError(
            f"{root / LATEST}: step {pointer['step']} was saved by "
            f"{pointer.get('world_size')} rank(s) but this job has {world}; "
            "sharded checkpoints load only into the same world size"
        )
    path = root / pointer["folder"] / f"rank-{rank:05d}.pt"
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing, though {root / LATEST} names it") from None
    except Exception as error:
        raise CheckpointError(f"{path}: cannot load ({error})") from error
    target = model.state_dict()
    missing = sorted(set(target) - set(payload["model"]))
    if missing:
        raise CheckpointError(f"{path}: no value for model entries {missing}")
    sharded = set(payload["model_sharded"])
    model.load_state_dict(
        {
            key: _like(payload["model"][key], value) if key in sharded else payload["model"][key]
            for key, value in target.items()
        }
    )
    if optimizer is not None and payload["optimizer"] is not None:
        _restore_optimizer(optimizer, payload["optimizer"])
    return Checkpoint(step=payload["step"], path=path.parent, extra=payload["extra"])
