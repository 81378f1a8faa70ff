"""Two people in one picture, one of them speaking: a clip for telling who speaks (`model.sync.speaker`).

The speaker's clip gives one side of the picture and the whole soundtrack; the other clip's picture goes beside
it, so its mouth moves to speech that is not heard (another speaker of the corpus), or, given the speaker's
own clip and `other_delay_frames`, to the heard speech shifted in time. Only the left face's lips follow the audio.
Clips of the synthetic corpus or real ones alike, at 25 fps.
"""

from __future__ import annotations

import itertools
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from pipelines.core.clock import EXPERT_CLOCK


def side_by_side(left: np.ndarray, right: np.ndarray, scale: float) -> np.ndarray:
    """One frame showing two people: `left` as it is, `right` beside it at `scale` of left's height (its own
    aspect kept, even sides for the encoder), top-aligned on black."""
    height, width = left.shape[:2]
    new_height = round(height * scale) // 2 * 2
    new_width = round(right.shape[1] * new_height / right.shape[0]) // 2 * 2
    small = cv2.resize(right, (new_width, new_height), interpolation=cv2.INTER_AREA)
    canvas = np.zeros((height, width + new_width, 3), np.uint8)
    canvas[:, :width] = left
    canvas[:new_height, width:] = small
    return canvas


def write_two_faces(target: Path, speaker: Path, other: Path, scale: float = 1.0, frames: int | None = None,
                    other_delay_frames: int = 0, speaker_on_right: bool = False) -> None:
    """Write a 25 fps Matroska clip of `speaker` (picture and sound) with `other`'s picture beside it, `other`
    `other_delay_frames` later than it was recorded (its first frame held meanwhile); the right-hand one scaled
    by `scale`, which is `other` unless `speaker_on_right`. The first `frames` frames and their audio only, when
    given. Both inputs must be 25 fps."""
    from pipelines.media import iter_frames, probe, read_audio
    from pipelines.synthetic.container import CONTAINERS, write_clip

    for path in (speaker, other):
        fps = probe(path).fps
        if round(fps, 3) != EXPERT_CLOCK.fps:
            raise ValueError(f"{path} is at {fps:.3f} fps; two faces are composed at {EXPERT_CLOCK.fps} fps")
    others = [image for _, image in iter_frames(other)]
    others = [others[0]] * other_delay_frames + others
    pairs = [(time, image, theirs)
             for (time, image), theirs in itertools.islice(zip(iter_frames(speaker), others), frames)]
    audio, rate = read_audio(speaker)
    audio = audio[:, :round(len(pairs) / EXPERT_CLOCK.fps * rate)]
    pictures = (side_by_side(other, mine, scale) if speaker_on_right else side_by_side(mine, other, scale)
                for _, mine, other in pairs)
    write_clip(target, pictures, [t for t, _, _ in pairs],
               audio, rate, CONTAINERS["mkv"], Fraction(EXPERT_CLOCK.fps))
