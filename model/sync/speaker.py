"""Who is speaking when several faces are in view: the face track whose lips follow the audio most clearly.

SyncNet's pipeline (syncnet_python) tracks every face and scores each track; "Out of time" (Chung & Zisserman,
2016) uses that sync confidence for active-speaker detection. Here the same: face tracks that overlap in time
compete (`pipelines.faces.tracks.overlapping_groups`), and in each such group the track of the highest confidence
(median - min of its mean distance curve, `model.offset`) is the one speaking. A track nothing overlaps speaks by
default: it is the only face there, as a single-face video's tracks always are. A track too short to search
(confidence None) loses to any that could be judged; when none in a group could, nobody is named (None).

Used by `model.sync score` (tracks linked across chunks), `curate` (each segment judged) and, with
`--speaker-expert`, by preprocessing (`pipelines.samples`).
"""

from __future__ import annotations

import math

import numpy as np

from pipelines.faces.tracks import overlapping_groups


def speaking(spans: list[tuple[int, int]], confidences: list[float | None]) -> list[bool | None]:
    """Per track (span [start, end) in frames, confidence or None): whether it is the one speaking in its time,
    None where nobody in its group could be judged."""
    verdicts: list[bool | None] = [None] * len(spans)
    for group in overlapping_groups(spans):
        if len(group) == 1:
            verdicts[group[0]] = True
            continue
        judged = [i for i in group if confidences[i] is not None and math.isfinite(confidences[i])]
        if not judged:
            continue
        best = max(judged, key=lambda i: confidences[i])
        for i in group:
            verdicts[i] = i == best
    return verdicts


# Offsets a judge searches: `model.sync score`'s default, so that preprocessing and scoring judge alike.
JUDGE_MAX_OFFSET = 15


class SpeakerJudge:
    """An expert loaded once; `confidence(faces, mel)` is one segment's sync confidence (None: too short)."""

    def __init__(self, checkpoint: str, device: str = "cpu", max_offset: int = JUDGE_MAX_OFFSET):
        from model.expert import SyncExpert

        self.expert = SyncExpert.from_checkpoint(checkpoint, device)
        self.max_offset = max_offset

    def confidence(self, faces: np.ndarray, mel: np.ndarray) -> float | None:
        from model.offset import offset_curve

        try:
            return float(offset_curve(self.expert, faces, mel, self.max_offset).confidence)
        except ValueError:  # shorter than the shifted windows need
            return None
