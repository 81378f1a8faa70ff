"""The one checkpoint format: what training saves, what a resumed run restores, what scoring loads.

A checkpoint is a file `expert.pt`, a `torch.save`d dict (readable with `weights_only=True`) holding "format"
(`FORMAT`) and the fields of `Checkpoint`, `model_config` as `ModelConfig.to_dict()`. Format 2 added `source`
and the model config's crop; format 1 files lack both (so: trained here, aligned crops). Format 0 is a file
without "format", written before there was one: the same fields, `model_config` possibly in the flat form
that `ModelConfig.from_dict` also reads. A run folder holds many checkpoints; `find_checkpoint` picks the
newest that loads, passing over (with a `CheckpointWarning` naming it) any that a full disk or a copy cut short.

This module reads and writes state; `SyncExpert.from_checkpoint` builds the expert from it, so the expert
depends on the format and not the other way round.
"""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from torch import nn

from model.config import PRESETS, ModelConfig
from pipelines.core.storage import atomic_local_path

CHECKPOINT_FILE = "expert.pt"
FORMAT = 2
# What loading a damaged checkpoint file raises: torch's RuntimeError for a zip cut short ("PytorchStreamReader
# failed reading zip archive"), the unpickler's errors, and _decode's for fields missing or of another type.
# A format newer than ours is no damage and is not among them: that needs newer code, not an older checkpoint.
DAMAGE = (RuntimeError, EOFError, OSError, pickle.UnpicklingError, KeyError, TypeError)


class CheckpointWarning(UserWarning):
    """A checkpoint file was passed over because it does not load; the message names it."""


@dataclass(frozen=True)
class Checkpoint:
    step: int  # optimizer steps taken
    model: dict  # the expert's state_dict
    model_config: ModelConfig
    optimizer: dict | None = None  # the optimizer's state_dict; None in an expert saved for scoring only
    train_config: dict | None = None  # the run's training config, for the record: nothing reads it back
    # Where weights not trained here came from (`model.import_expert`: file, its checksum, the conversion), for
    # the record likewise; None for experts trained here.
    source: dict | None = None


def save_checkpoint(folder: str | Path, expert: nn.Module, step: int, optimizer: torch.optim.Optimizer | None = None,
                    train_config: dict | None = None) -> Path:
    """Write `expert` (a SyncExpert: its state and its `config`) and the rest into `folder`/expert.pt."""
    checkpoint = Checkpoint(step=step, model=expert.state_dict(), model_config=expert.config,
                            optimizer=optimizer.state_dict() if optimizer is not None else None,
                            train_config=train_config)
    return write_checkpoint(Path(folder) / CHECKPOINT_FILE, checkpoint)


def write_checkpoint(path: str | Path, checkpoint: Checkpoint) -> Path:
    """Write `checkpoint` to the file `path` (any name; training's are all `CHECKPOINT_FILE`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_local_path(path) as partial:  # a kill mid-write never leaves a torn checkpoint behind
        torch.save(_encode(checkpoint), partial)
    return path


def read_checkpoint(path: str | Path) -> Checkpoint:
    """The checkpoint at `path`, a checkpoint file or a folder (its highest step: `find_checkpoint`)."""
    path = find_checkpoint(path)
    return _decode(torch.load(path, map_location="cpu", weights_only=True), path)


def restore_checkpoint(path: str | Path, expert: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Load a training checkpoint into `expert` and `optimizer`; returns the step to continue from.

    The expert must be built with the checkpoint's model config: weights of another size or clock would not
    fit, or worse, fit and mean something else. The optimizer keeps the learning rates it was built with: a
    resumed run may have another --lr, or other workers under --scale-lr.
    """
    path = find_checkpoint(path)
    checkpoint = read_checkpoint(path)
    check_resumable(path, expert.config, checkpoint)
    expert.load_state_dict(checkpoint.model)
    rates = [group["lr"] for group in optimizer.param_groups]
    optimizer.load_state_dict(checkpoint.optimizer)
    for group, rate in zip(optimizer.param_groups, rates):
        group["lr"] = rate
    return checkpoint.step


def load_weights(path: str | Path, expert: nn.Module) -> Path:
    """Start `expert` from the weights of the checkpoint at `path` (a file or a run folder; its step and optimizer
    are not taken: a new run begins at step 0); returns the file read. Its expert must be of `expert`'s config."""
    path = find_checkpoint(path)
    checkpoint = read_checkpoint(path)
    check_startable(path, expert.config, checkpoint)
    expert.load_state_dict(checkpoint.model)  # bf16 pieces load into the float parameters as they are
    return path


def check_startable(path: str | Path, config: ModelConfig, checkpoint: Checkpoint | None = None) -> None:
    """`check_resumable` for a run that starts from the checkpoint's weights (`load_weights`)."""
    _check_config(path, config, checkpoint, "start from",
                  "Start from an expert of this --preset, or pick the --preset it has.")


def check_resumable(path: str | Path, config: ModelConfig, checkpoint: Checkpoint | None = None) -> None:
    """Raise ValueError, naming both, when the checkpoint at `path` holds an expert of another config than `config`
    (its preset or its clock); FileNotFoundError when there is none."""
    _check_config(path, config, checkpoint, "resume from",
                  "Resume with the --preset that run had, or start a new run with another --output.")


def _check_config(path: str | Path, config: ModelConfig, checkpoint: Checkpoint | None, action: str, fix: str) -> None:
    path = find_checkpoint(path)  # once: a folder's search loads every candidate
    saved = (checkpoint or read_checkpoint(path)).model_config
    if saved != config:
        raise ValueError(_mismatch(path, saved, config, action, fix))


def find_checkpoint(path: str | Path) -> Path:
    """`path` itself if it is a file, else the checkpoint with the highest step anywhere under the folder
    (Ray Train's checkpoint_* folders and the local launcher's checkpoints/step_* alike) that loads."""
    path = Path(path)
    if path.is_file():
        return path
    found = list(path.rglob(CHECKPOINT_FILE)) if path.is_dir() else []
    if not found:
        raise FileNotFoundError(f"no {CHECKPOINT_FILE} under {path}: pass a checkpoint file or a training run "
                                f"folder (python train_ray.py --output RUN)")
    good = latest_good_checkpoint(found)
    if good is None:
        raise FileNotFoundError(f"no {CHECKPOINT_FILE} under {path} loads: all {len(found)} are damaged")
    return good


def latest_good_checkpoint(candidates: Iterable[str | Path]) -> Path | None:
    """Of the checkpoint files `candidates`, the one of the highest step (then the newest) that loads; None if
    none does. Each that does not load is warned about by name, so that a resume that goes back further than
    expected says why."""
    best: tuple[tuple[int, float], Path] | None = None
    for candidate in map(Path, candidates):
        try:
            rank = (read_checkpoint(candidate).step, candidate.stat().st_mtime)
        except DAMAGE as error:
            warnings.warn(f"checkpoint {candidate} passed over: it does not load ({type(error).__name__}: "
                          f"{str(error).splitlines()[0] if str(error) else ''})", CheckpointWarning, stacklevel=2)
            continue
        if best is None or rank > best[0]:
            best = (rank, candidate)
    return best[1] if best else None


def _encode(checkpoint: Checkpoint) -> dict:
    values = {field.name: getattr(checkpoint, field.name) for field in fields(Checkpoint)}
    return {"format": FORMAT, **values, "model_config": checkpoint.model_config.to_dict()}


def _decode(values: dict, path: Path) -> Checkpoint:
    values = dict(values)
    version = values.pop("format", 0)
    if version > FORMAT:
        raise ValueError(f"{path} is checkpoint format {version}; this code reads formats 0 to {FORMAT}: update it")
    return Checkpoint(**{**values, "step": int(values["step"]),
                         "model_config": ModelConfig.from_dict(values["model_config"])})


def _mismatch(path: Path, saved: ModelConfig, ours: ModelConfig, action: str, fix: str) -> str:
    # Only the fields that differ, to stay short: of a failed worker's traceback Ray Train shows the first and the
    # last 500 characters, and this message is at the end.
    theirs, mine = _flat(saved.to_dict()), _flat(ours.to_dict())
    differing = [name for name in theirs if theirs[name] != mine[name]]
    return (f"cannot {action} {path}: its expert ({_preset(saved)}) has "
            f"{', '.join(f'{name}={theirs[name]}' for name in differing)}, this run's ({_preset(ours)}) "
            f"{', '.join(f'{name}={mine[name]}' for name in differing)}. {fix}")


def _flat(values: dict, prefix: str = "") -> dict:
    flat = {}
    for name, value in values.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{name}."))
        else:
            flat[prefix + name] = value
    return flat


def _preset(config: ModelConfig) -> str:
    name = next((name for name, preset in PRESETS.items() if preset == config), None)
    return f"preset {name!r}" if name else "no preset"
