"""The expert's clock: how video frames, audio samples and mel columns line up in time. Every module takes it from here.

The sync expert pairs a window of `window_frames` video frames at `fps` with the mel columns of the same span of
audio at `sample_rate`, one column every `hop_length` samples (Wav2Lip's and SyncNet's recipe: 5 frames at 25 fps,
16 kHz, 80 columns per second, so 16 columns per window). An index computed for the wrong rate (the classic
`80 * frame / fps` on 48 kHz audio) silently pairs faces with audio from another instant and leaves nothing to
learn, so there is one clock and one frame -> mel-column formula (:meth:`Clock.mel_column`), and every config
that needs a rate derives it from a `Clock`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Clock:
    fps: int = 25  # video frames per second on the expert's clock, whatever the source's rate
    sample_rate: int = 16000  # audio samples per second
    hop_length: int = 200  # audio samples per mel column (80 columns per second at 16 kHz)
    window_frames: int = 5  # video frames the expert sees at once (0.2 s at 25 fps)

    def __post_init__(self) -> None:
        for name in ("fps", "sample_rate", "hop_length", "window_frames"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"Clock.{name} must be a positive integer, got {value!r}")
        if self.sample_rate % self.fps:
            # Frame k starts at audio sample k * samples_per_frame: a fraction there would drift chunk by chunk.
            raise ValueError(f"Clock: sample_rate {self.sample_rate} is not a whole number of samples per frame at "
                             f"{self.fps} fps")
        if self.mel_window < 1:
            raise ValueError(f"Clock: {self.window_frames} frames at {self.fps} fps span less than one mel column")

    @property
    def mel_fps(self) -> float:
        """Mel columns per second (80.0 by default)."""
        return self.sample_rate / self.hop_length

    @property
    def samples_per_frame(self) -> int:
        """Audio samples per video frame (640 by default)."""
        return self.sample_rate // self.fps

    @property
    def mel_window(self) -> int:
        """Mel columns the expert's audio window has: those spanned by `window_frames` frames (16 by default)."""
        return self.mel_column(self.window_frames)

    @property
    def aligned_frames(self) -> int:
        """Every this many video frames a mel column starts exactly on a frame (5 by default): the period of the
        rounding in :meth:`mel_column`."""
        return self.hop_length // math.gcd(self.hop_length, self.samples_per_frame)

    def mel_column(self, frame):
        """The mel column at which video frame `frame` starts, counted from frame 0; also the number of columns
        that `frame` frames span. `round(frame * mel_fps / fps)` with halves rounded up, computed in integers so
        that it is exact for every frame. Takes an int (returns an int) or an integer array."""
        numerator = np.asarray(frame, dtype=np.int64) * self.sample_rate
        denominator = self.hop_length * self.fps
        column = (2 * numerator + denominator) // (2 * denominator)
        return int(column) if np.ndim(frame) == 0 else column

    def seconds(self, frames) -> float:
        """Frames on this clock as seconds."""
        return frames / self.fps


EXPERT_CLOCK = Clock()
