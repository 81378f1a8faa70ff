"""The face stage of preprocessing: frames in, aligned face crops, landmarks and face tracks out.

Runs as a Ray Data actor so the aligner's models load once per worker; on a GPU worker the retinaface and
face-alignment aligners batch detection and landmarks across the chunk's frames. The tracks it finds (runs of one face without
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
        # An aligner on a GPU has its batches there: the crops are warped there too, all of a chunk at once.
        device = getattr(self.aligner, "device", None)
        self.crop_device = device if device is not None and device.type == "cuda" else None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        columns = {"faces": [], "landmarks": [], "scores": [], "tracks": []}
        errors, details = list(batch["error"]), list(batch["detail"])
        for i, frames in enumerate(batch["frames"]):
            try:
                found = self.align(frames)
            except Exception as failure:  # an unforeseen failure costs its video, not the run (as in decoding)
                found = self.align(frames[:0])
                errors[i], details[i] = "faces_error", f"{type(failure).__name__}: {failure}"
            for name, value in zip(columns, found):
                columns[name].append(value)
        out = {name: value for name, value in batch.items() if name != "frames"}
        out.update({name: object_column(values) for name, values in columns.items()})
        out["error"], out["detail"] = np.array(errors, dtype=str), np.array(details, dtype=str)
        out["aligner"] = np.array([self.aligner.name] * len(errors))
        return out

    def align(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """A chunk's frames -> crops, landmarks, scores and tracks (see the module docstring)."""
        points, score = self.aligner(frames) if len(frames) else _no_faces(0)
        runs = face_tracks(points, self.config.max_center_jump)
        # Smooth within tracks only: averaging across a cut would blur the jump that ends a track.
        points = smooth_landmarks(points, tracks=runs)
        crops = crop_faces(frames, points, self.config.crop_size, self.crop_device) if len(frames) \
            else np.zeros((0, self.config.crop_size, self.config.crop_size, 3), np.uint8)
        return crops, points, score, np.array(runs, np.int64).reshape(-1, 2)


def _no_faces(count: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((count, 68, 2), np.nan, np.float32), np.full(count, np.nan, np.float32)
