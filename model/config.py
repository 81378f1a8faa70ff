"""The expert's shapes and size, validated once so that a bad combination fails before any tensor is built."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from pipelines.core.clock import EXPERT_CLOCK, Clock
from pipelines.faces.base import crop_problems


@dataclass(frozen=True)
class ModelConfig:
    """What the expert sees and how wide it is.

    The face input is the lower half of ``clock.window_frames`` crops of side ``face_size``, cut the way ``crop``
    says (`pipelines.faces.base.CROPS`): an expert must see faces cut as those it was trained on, so the kind
    travels with its weights and every tool that prepares faces for it reads it from here. The audio input is the
    ``clock.mel_window`` mel columns that cover the same time span.
    """

    clock: Clock = field(default=EXPERT_CLOCK)  # frame rate, audio rates and the window, shared with the shards
    face_size: int = 96  # aligned crop side; the model sees the lower half, face_size // 2 x face_size
    mel_bins: int = 80
    width: int = 32  # channels of the first conv; 32 is the full Wav2Lip-size expert, 8 or 16 for CPU demos
    embedding_dim: int = 512
    crop: str = "aligned"  # "aligned" for experts trained here, "box" for Wav2Lip's (model.import_expert)
    crop_pad_bottom: float = 0.0  # box crops: the detector's box extended downward by this fraction of its height

    def __post_init__(self) -> None:
        for name in ("face_size", "mel_bins", "width", "embedding_dim"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ModelConfig.{name} must be positive, got {getattr(self, name)}")
        problems = crop_problems(self.crop, self.crop_pad_bottom)
        if problems:
            raise ValueError(f"ModelConfig: {problems[0]}")
        if self.face_size % 2:
            raise ValueError(f"ModelConfig.face_size must be even so the lower half is exact, got {self.face_size}")

    @property
    def window_frames(self) -> int:
        """T: video frames per window (5 by default)."""
        return self.clock.window_frames

    @property
    def mel_window(self) -> int:
        """W: mel columns per window, those spanned by the video window (16 by default)."""
        return self.clock.mel_window

    @property
    def face_channels(self) -> int:
        """Input channels of the face encoder: RGB of every frame of the window stacked (15 by default)."""
        return 3 * self.window_frames

    @property
    def face_height(self) -> int:
        """Rows of the face input: the lower half of the crop, where the mouth is."""
        return self.face_size // 2

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "ModelConfig":
        """Inverse of `to_dict`; also reads the flat form of checkpoints written before the clock had a module
        (`window_frames`, `video_fps`, `mel_fps` beside the sizes; their audio was always 16 kHz), and those
        written before the crop was recorded (all aligned: the default)."""
        values = dict(values)
        if "clock" in values:
            clock = Clock(**values.pop("clock"))
        else:
            fps, mel_fps = values.pop("video_fps"), values.pop("mel_fps")
            clock = Clock(fps=int(fps), window_frames=int(values.pop("window_frames")),
                          hop_length=round(EXPERT_CLOCK.sample_rate / mel_fps))
        return cls(clock=clock, **values)


PRESETS: dict[str, ModelConfig] = {
    # Same inputs as the full expert so it reads the same shards; 1/4 of the channels, about 1/16 of the FLOPs.
    "cpu-small": ModelConfig(width=8),
    "full": ModelConfig(),
}
