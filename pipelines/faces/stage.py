"""The face stage of preprocessing: frames in, aligned face crops, landmarks and face tracks out.

Runs as a Ray Data actor so the aligner's models load once per worker; on a GPU worker the face-alignment
aligner batches detection and landmarks across the chunk's frames. The tracks it finds (runs of one face without
a cut, `pipelines.faces.tracks.face_tracks`) are the runs its landmarks are smoothed along, and go on as the
"tracks" column (int64 [n, 2], [start, end) per track) for the sample stage to cut segments from.
"""

from __future__ import annotations

import numpy as np

from pipelines.core.columns import object_column
from pipelines.faces.align import crop_faces, smooth_landmarks
from pipelines.faces.base import FaceConfig
from pipelines.faces.factory import make_aligner
from pipelines.faces.tracks import face_tracks


class FaceStage:
    def __init__(self, config: FaceConfig):
        self.config = config
        self.aligner = make_aligner(config)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        crops, landmarks, scores, tracks = [], [], [], []
        for frames in batch["frames"]:
            points, score = self.aligner(frames) if len(frames) else _no_faces(0)
            runs = face_tracks(points, self.config.max_center_jump)
            # Smooth within tracks only: averaging across a cut would blur the jump that ends a track.
            points = smooth_landmarks(points, tracks=runs)
            crops.append(crop_faces(frames, points, self.config.crop_size) if len(frames)
                         else np.zeros((0, self.config.crop_size, self.config.crop_size, 3), np.uint8))
            landmarks.append(points)
            scores.append(score)
            tracks.append(np.array(runs, np.int64).reshape(-1, 2))
        out = {name: value for name, value in batch.items() if name != "frames"}
        out["faces"] = object_column(crops)
        out["landmarks"] = object_column(landmarks)
        out["scores"] = object_column(scores)
        out["tracks"] = object_column(tracks)
        out["aligner"] = np.array([self.aligner.name] * len(crops))
        return out


def _no_faces(count: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((count, 68, 2), np.nan, np.float32), np.full(count, np.nan, np.float32)
