"""Broken inputs of the kinds real corpora contain, each with the verdict a pipeline should reach.

A truncated clip is cut from a file whose index sits at the front (as streaming-friendly muxers write it), so
it opens and then runs out of data: the hard case. A file that does not open at all is covered by `empty` and
`not_video`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipelines.core.clock import EXPERT_CLOCK
from pipelines.core.storage import StorageConfig, write_bytes_atomic

if TYPE_CHECKING:  # only for annotations: importing corpus here would be circular
    from pipelines.synthetic.corpus import HeadMotion, VideoPlan
    from pipelines.synthetic.face import FaceRenderer
    from pipelines.synthetic.visemes import MouthTrack

KINDS = ("truncated", "empty", "no_audio", "no_face", "not_video")
EXPECTED_REASON = {
    "truncated": "truncated",
    "empty": "unreadable",
    "no_audio": "no_audio",
    "no_face": "no_face",
    "not_video": "unreadable",
}
TRUNCATE_AT = 0.4  # share of the bytes kept


def write_broken(path: Path, kind: str, renderer: FaceRenderer, motion: HeadMotion, track: MouthTrack,
                 times: np.ndarray, audio: np.ndarray, plan: VideoPlan) -> None:
    from pipelines.synthetic.container import CONTAINERS, write_clip

    spec = CONTAINERS[plan.container]
    fps = plan.fps or EXPERT_CLOCK.fps  # a variable-rate plan is written at the expert's nominal rate

    def faces():
        return (renderer.render(motion.at(t), track.at(t)) for t in times)

    if kind == "empty":
        write_bytes_atomic(str(path), b"", StorageConfig())
    elif kind == "not_video":
        text = b"This is a text file that someone saved with a video extension.\n" * 20
        write_bytes_atomic(str(path), text, StorageConfig())
    elif kind == "no_audio":
        write_clip(path, faces(), times, None, plan.sample_rate, spec, fps=fps)
    elif kind == "no_face":
        backdrop = renderer.background.astype(np.uint8)
        write_clip(path, (backdrop for _ in times), times, audio, plan.sample_rate, spec, fps=fps)
    elif kind == "truncated":
        whole = path.with_name("." + path.stem + ".whole" + path.suffix)
        try:
            write_clip(whole, faces(), times, audio, plan.sample_rate, spec, fps=fps, index_first=True)
            data = whole.read_bytes()
        finally:
            whole.unlink(missing_ok=True)
        write_bytes_atomic(str(path), data[: int(len(data) * TRUNCATE_AT)], StorageConfig())
    else:
        raise ValueError(f"unknown broken-input kind {kind!r}; expected one of {KINDS}")
