"""Finding and loading a trained expert: a checkpoint file, or a run folder (its newest checkpoint)."""

from __future__ import annotations

from pathlib import Path

import torch

from model.config import ModelConfig
from model.expert import SyncExpert

CHECKPOINT_FILE = "expert.pt"


def find_checkpoint(path: str | Path) -> Path:
    """`path` itself if it is a file, else the checkpoint with the highest step anywhere under the folder
    (Ray Train's checkpoint_* folders and the local launcher's checkpoints/step_* alike)."""
    path = Path(path)
    if path.is_file():
        return path
    found = list(path.rglob(CHECKPOINT_FILE)) if path.is_dir() else []
    if not found:
        raise FileNotFoundError(f"no {CHECKPOINT_FILE} under {path}: pass a checkpoint file or a training run "
                                f"folder (python train_ray.py --output RUN)")
    return max(found, key=lambda p: (_step(p), p.stat().st_mtime))


def _step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True).get("step", 0))


def load_expert(path: str | Path, device: str | torch.device = "cpu") -> SyncExpert:
    """The expert of a checkpoint, frozen, in eval mode, on `device`."""
    state = torch.load(find_checkpoint(path), map_location="cpu", weights_only=True)
    expert = SyncExpert(ModelConfig.from_dict(state["model_config"]))
    expert.load_state_dict(state["model"])
    expert.eval().requires_grad_(False)
    return expert.to(device)
