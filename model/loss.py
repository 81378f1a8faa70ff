"""The expert's loss and accuracy on cosine similarities read as P(in sync)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

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


class SyncLoss(nn.Module):
    """The lip-sync loss of Wav2Lip-style generators: BCE of a frozen expert's P(in sync) against "in sync".

    ``SyncLoss.from_checkpoint(path, device)(faces, mels)`` -> scalar float32 tensor, differentiable with
    respect to ``faces`` (the expert's weights never change and stay in eval mode, also under ``.train()``).

    - faces: float ``[B, 3, T, H, W]`` RGB in [0, 1], ``T`` consecutive generated frames (5 for the default
      expert) of the whole face, cut as the expert's crops are (:attr:`crop`): "aligned", eyes level and the face
      filling the frame as our preprocessing aligns it; "box", the face detector's box without alignment, the
      frames a Wav2Lip-style generator takes and makes (a generator of Wav2Lip's own code works in OpenCV's BGR:
      flip its channels to RGB first). ``H x W`` is resized to the expert's crop side (96) when different; the
      expert looks at the lower half.
    - mels: float ``[B, 80, W]``: the log-mel of the real audio over the same 0.2 s (``W`` = 16 columns at
      80 per second), scaled to [-4, 4] as `pipelines.audio.log_mel` makes it.
    A loss near 0 means the expert reads the lips as in sync with the audio; ln 2 = 0.69 means it cannot tell.
    """

    def __init__(self, expert: nn.Module):
        super().__init__()
        self.expert = expert.eval().requires_grad_(False)

    @classmethod
    def from_checkpoint(cls, path, device: str | torch.device = "cpu") -> "SyncLoss":
        from model.expert import SyncExpert

        return cls(SyncExpert.from_checkpoint(path, device))

    @property
    def crop(self) -> str:
        """How the expert's faces are cut (`pipelines.faces.base.CROPS`): the generator's frames must be cut alike."""
        return self.expert.config.crop

    def train(self, mode: bool = True) -> "SyncLoss":
        super().train(mode)
        self.expert.eval()  # a generator's .train() must not let batch norm learn from generated faces
        return self

    def forward(self, faces: torch.Tensor, mels: torch.Tensor) -> torch.Tensor:
        if not faces.is_floating_point():
            raise ValueError("SyncLoss needs float faces [B, 3, T, H, W] in [0, 1] (the generator's output)")
        similarity = self.expert.similarity(faces, mels)
        return sync_loss(similarity, torch.ones_like(similarity))
