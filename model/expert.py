"""The sync expert: face and audio embeddings compared by cosine similarity, read as P(in sync).

Dimension legend: ``B`` batch, ``T`` window frames (``config.window_frames``), ``S`` crop side
(``config.face_size``), ``M`` mel bins (``config.mel_bins``), ``W`` mel frames per window (``config.mel_window``),
``D`` embedding dimension (``config.embedding_dim``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.checkpoint import read_checkpoint
from model.config import ModelConfig
from model.encoders import AudioEncoder, FaceEncoder


class SyncExpert(nn.Module):
    """Scores a face window against a mel window of the same 0.2 s.

    Both encoders end in a ReLU, so the embeddings are non-negative and their cosine similarity lies in [0, 1];
    trained with binary cross-entropy it is read directly as the probability that the pair is in sync.

    Inputs come from :meth:`prepare_faces` and :meth:`prepare_mels`:

    - faces ``[B, 3*T, S/2, S]`` float in [0, 1]: the lower half of each crop, RGB, frames stacked along channels
      in time order (channels ``3t, 3t+1, 3t+2`` are R, G, B of frame ``t``);
    - mels ``[B, 1, M, W]`` float, the log-mel window (values in [-4, 4] from the preprocessing).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.face_encoder = FaceEncoder(config)
        self.audio_encoder = AudioEncoder(config)

    @staticmethod
    def prepare_faces(windows: torch.Tensor) -> torch.Tensor:
        """uint8 crops ``[B, T, S, S, 3]`` (RGB) -> float ``[B, 3*T, S/2, S]`` in [0, 1], lower half, time order.

        Only the lower half is kept because the mouth is there and the upper face carries identity and pose,
        which the expert should not use to judge sync. Run it on the accelerator: uint8 is 4x less to copy.
        """
        if windows.dtype != torch.uint8 or windows.ndim != 5 or windows.shape[-1] != 3 \
                or windows.shape[2] != windows.shape[3] or windows.shape[2] % 2:
            raise ValueError(f"expected uint8 windows [B, T, S, S, 3] with even S, got {windows.dtype} "
                             f"{list(windows.shape)}")
        return SyncExpert.prepare_lower_faces(windows[:, :, windows.shape[2] // 2:])

    @staticmethod
    def prepare_lower_faces(lower: torch.Tensor) -> torch.Tensor:
        """The lower halves of the crops, uint8 ``[B, T, S/2, S, 3]`` (what the training loader holds) -> float
        ``[B, 3*T, S/2, S]`` in [0, 1], as `prepare_faces` gives for the whole crops."""
        if lower.dtype != torch.uint8 or lower.ndim != 5 or lower.shape[-1] != 3 or lower.shape[3] != 2 * lower.shape[2]:
            raise ValueError(f"expected uint8 lower halves [B, T, S/2, S, 3], got {lower.dtype} {list(lower.shape)}")
        batch, frames, height, side = lower.shape[:4]
        stacked = lower.permute(0, 1, 4, 2, 3).reshape(batch, 3 * frames, height, side)
        return stacked.float().div_(255.0)

    def prepare_generated(self, windows: torch.Tensor) -> torch.Tensor:
        """Generated faces float ``[B, 3, T, H, W]`` RGB in [0, 1] (a video generator's usual output) ->
        ``[B, 3*T, S/2, S]``, differentiable: frames resized to the expert's crop side ``S`` when they differ,
        lower half kept, frames stacked along channels in time order as :meth:`prepare_faces` does."""
        config = self.config
        if not windows.is_floating_point() or windows.ndim != 5 or windows.shape[1] != 3 \
                or windows.shape[2] != config.window_frames:
            raise ValueError(f"expected float windows [B, 3, {config.window_frames}, H, W] in [0, 1], got "
                             f"{windows.dtype} {list(windows.shape)}")
        batch, _, frames, height, width = windows.shape
        images = windows.transpose(1, 2).reshape(batch * frames, 3, height, width)
        side = config.face_size
        if (height, width) != (side, side):
            images = F.interpolate(images, size=(side, side), mode="bilinear", align_corners=False, antialias=True)
        lower = images[:, :, side // 2:]
        return lower.reshape(batch, 3 * frames, side // 2, side)

    @staticmethod
    def prepare_mels(mels: torch.Tensor) -> torch.Tensor:
        """float mel windows ``[B, M, W]`` -> ``[B, 1, M, W]`` float32: a one-channel image for the audio encoder."""
        if mels.ndim != 3 or not mels.is_floating_point():
            raise ValueError(f"expected float mel windows [B, M, W], got {mels.dtype} {list(mels.shape)}")
        return mels.float().unsqueeze(1)

    def embed_faces(self, faces: torch.Tensor) -> torch.Tensor:
        """faces ``[B, 3*T, S/2, S]`` -> unit-norm, non-negative embeddings ``[B, D]`` in float32."""
        # Normalised in fp32: under bf16 autocast the norm of a 512-d vector loses about 3 significant digits.
        return F.normalize(self.face_encoder(faces).float(), dim=1)

    def embed_audio(self, mels: torch.Tensor) -> torch.Tensor:
        """mels ``[B, 1, M, W]`` -> unit-norm, non-negative embeddings ``[B, D]`` in float32."""
        return F.normalize(self.audio_encoder(mels).float(), dim=1)

    @classmethod
    def from_checkpoint(cls, path, device: str | torch.device = "cpu") -> "SyncExpert":
        """A trained expert from a checkpoint file or a training run folder (its highest step): frozen
        (no parameter needs a gradient) and in eval mode (batch-norm statistics fixed), on `device`."""
        checkpoint = read_checkpoint(path)
        expert = cls(checkpoint.model_config)
        expert.load_state_dict(checkpoint.model)
        return expert.eval().requires_grad_(False).to(device)

    def similarity(self, faces: torch.Tensor, mels: torch.Tensor) -> torch.Tensor:
        """P(in sync) ``[B]`` of raw windows, on the expert's device:

        - faces: either uint8 ``[B, T, S, S, 3]`` RGB crops as the shards store them, or float
          ``[B, 3, T, H, W]`` RGB in [0, 1] as a generator produces them (resized to ``S`` if needed, and
          differentiable);
        - mels: float ``[B, M, W]``, log-mel windows in [-4, 4] (``M`` = 80 bins, ``W`` = 16 columns for 5 frames).
        """
        device = next(self.parameters()).device
        faces, mels = faces.to(device), mels.to(device)
        prepared = self.prepare_faces(faces) if faces.dtype == torch.uint8 else self.prepare_generated(faces)
        return self(prepared, self.prepare_mels(mels))

    def forward(self, faces: torch.Tensor, mels: torch.Tensor) -> torch.Tensor:
        """faces ``[B, 3*T, S/2, S]``, mels ``[B, 1, M, W]`` -> similarity ``[B]`` in [0, 1], float32."""
        return (self.embed_faces(faces) * self.embed_audio(mels)).sum(dim=1)
