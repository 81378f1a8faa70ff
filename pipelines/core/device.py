"""The `--device auto|cpu|cuda` choice every command offers, turned into the torch device to run on."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported on use: pipelines.core is imported by processes that never run a network
    import torch


def resolve_device(name: str) -> torch.device:
    """"auto" -> CUDA where torch sees a GPU, else the CPU; any other name as torch spells it ("cuda:1").

    Raises RuntimeError for CUDA on a machine without it, rather than failing later at the first tensor moved.
    """
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"--device {name} asked for, but torch sees no CUDA device; use --device cpu or auto")
    return device


def upload_frames(frames, device: torch.device) -> torch.Tensor:
    """Video frames uint8 [N, H, W, 3] (numpy, or a tensor already there) -> the same uint8 tensor on `device`.

    uint8 crosses (a quarter of the bytes of float; frames become float on the device, batch by batch), and to a
    GPU from pinned memory, so that the copy runs at the link's speed and does not hold this thread."""
    import numpy as np
    import torch

    if isinstance(frames, torch.Tensor):
        return frames.to(device)
    tensor = torch.from_numpy(np.ascontiguousarray(frames))
    if device.type != "cuda":
        return tensor
    return tensor.pin_memory().to(device, non_blocking=True)
