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
