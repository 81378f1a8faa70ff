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


def to_device(array, device: torch.device) -> torch.Tensor:
    """A host array on `device`; through pinned memory to a GPU, so that the copy runs at the link's speed and
    does not wait for the queue (a copy from pageable memory synchronises the stream). torch's host allocator
    keeps a pinned block until the copies that read it are done."""
    import torch

    tensor = torch.from_numpy(array)
    if device.type != "cuda":
        return tensor.to(device)
    pinned = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    pinned.copy_(tensor)
    return pinned.to(device, non_blocking=True)


def upload_frames(frames, device: torch.device) -> torch.Tensor:
    """Video frames uint8 [N, H, W, 3] (numpy, or a tensor already there) -> the same uint8 tensor on `device`.

    uint8 crosses (a quarter of the bytes of float; frames become float on the device, batch by batch)."""
    import numpy as np
    import torch

    if isinstance(frames, torch.Tensor):
        return frames.to(device)
    return to_device(np.ascontiguousarray(frames), device)
