"""The expert's shapes and size, validated once so that a bad combination fails before any tensor is built."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def mel_columns(frames, video_fps: int, mel_fps: float):
    """Mel frames spanned by `frames` video frames, which is also the first mel column of frame `frames`
    counted from frame 0: round(frames * mel_fps / video_fps), derived from the two rates (16 per 5 frames at
    25 fps and 80 mel frames per second). Takes an int or an array."""
    if isinstance(frames, (int, np.integer)):
        return round(frames * mel_fps / video_fps)
    return np.round(np.asarray(frames) * mel_fps / video_fps).astype(int)


@dataclass(frozen=True)
class ModelConfig:
    """What the expert sees and how wide it is.

    The face input is the lower half of ``window_frames`` aligned crops of side ``face_size``; the audio input is
    the ``mel_window`` mel frames that cover the same time span, derived from the two rates.
    """

    window_frames: int = 5  # T consecutive video frames per window (0.2 s at 25 fps)
    face_size: int = 96  # aligned crop side; the model sees the lower half, face_size // 2 x face_size
    mel_bins: int = 80
    video_fps: int = 25
    mel_fps: float = 80.0
    width: int = 32  # channels of the first conv; 32 is the full Wav2Lip-size expert, 8 or 16 for CPU demos
    embedding_dim: int = 512

    def __post_init__(self) -> None:
        for name in ("window_frames", "face_size", "mel_bins", "video_fps", "mel_fps", "width", "embedding_dim"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ModelConfig.{name} must be positive, got {getattr(self, name)}")
        if self.face_size % 2:
            raise ValueError(f"ModelConfig.face_size must be even so the lower half is exact, got {self.face_size}")
        if self.mel_window < 1:
            raise ValueError(f"ModelConfig gives an empty mel window: {self.window_frames} frames at "
                             f"{self.video_fps} fps is less than one mel frame at {self.mel_fps} per second")

    @property
    def mel_window(self) -> int:
        """Mel frames that span the video window (16 for 5 frames at 25 fps and 80 mel frames per second)."""
        return mel_columns(self.window_frames, self.video_fps, self.mel_fps)

    @property
    def face_channels(self) -> int:
        """Input channels of the face encoder: RGB of every frame of the window stacked (15 by default)."""
        return 3 * self.window_frames

    @property
    def face_height(self) -> int:
        """Rows of the face input: the lower half of the crop, where the mouth is."""
        return self.face_size // 2


PRESETS: dict[str, ModelConfig] = {
    # Same inputs as the full expert so it reads the same shards; 1/4 of the channels, about 1/16 of the FLOPs.
    "cpu-small": ModelConfig(width=8),
    "full": ModelConfig(),
}
