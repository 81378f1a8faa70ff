"""The expert's loss and accuracy on cosine similarities read as P(in sync)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Cosine similarity of two ReLU embeddings is exactly 0 when they share no active unit (or one is all zero) and
# exactly 1 when they are parallel, where log(0) makes binary cross-entropy infinite. Clamping caps the loss
# at -log(EPS) = 13.8 per pair. 1e-6 rather than smaller because 1 - EPS must stay below 1 in fp32.
EPS = 1e-6


def sync_loss(similarity: torch.Tensor, labels: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Mean binary cross-entropy of similarities ``[B]`` in [0, 1] against labels ``[B]`` (1 in sync, 0 not).

    Computed in float32 with autocast off: in bf16, 1 - 1e-6 rounds to 1 and the log loses its precision;
    CUDA autocast also refuses ``binary_cross_entropy`` outright.
    """
    if similarity.shape != labels.shape:
        raise ValueError(f"similarity {list(similarity.shape)} and labels {list(labels.shape)} must match")
    with torch.autocast(device_type=similarity.device.type, enabled=False):
        probability = similarity.float().clamp(eps, 1.0 - eps)
        return F.binary_cross_entropy(probability, labels.float())


@torch.no_grad()
def accuracy(similarity: torch.Tensor, labels: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Fraction of pairs whose decision ``similarity > threshold`` matches the label, as a float32 scalar."""
    if similarity.shape != labels.shape:
        raise ValueError(f"similarity {list(similarity.shape)} and labels {list(labels.shape)} must match")
    return ((similarity.float() > threshold) == (labels > 0.5)).float().mean()
