"""The face stage of preprocessing: frames in, face crops, landmarks and face tracks out.

Runs as a Ray Data actor so the aligner's models load once per worker; on a GPU worker the retinaface and
face-alignment aligners batch detection and landmarks across the chunk's frames. The tracks it finds (runs of one
face without a cut, `pipelines.faces.tracks.face_tracks`, also ended at the shot cuts the decoder found,
`pipelines.shots`) are the runs its landmarks are smoothed along, and go on
as the "tracks" column (int64 [n, 2], [start, end) per track) for the sample stage to cut segments from.

The crops are aligned (`align.crop_faces`, warped on the aligner's GPU when it has one) or the detector's boxes
(`align.box_crops`), as `config.crop` says; the kind goes on as the "crop" column, so that samples record what
their faces are.
"""

from __future__ import annotations

import numpy as np

from pipelines.core.columns import object_column
from pipelines.core.device import upload_frames
from pipelines.faces.align import box_crops, crop_faces, smooth_landmarks
from pipelines.faces.base import FaceConfig
from pipelines.faces.factory import make_aligner
from pipelines.faces.tracks import face_tracks
from pipelines.shots import split_at_cuts


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
        for i, (frames, cuts) in enumerate(zip(batch["frames"], batch.get("cuts", [None] * len(errors)))):
            try:
                found = self.align(frames, cuts)
            except Exception as failure:  # an unforeseen failure costs its video, not the run (as in decoding)
                found = self.align(frames[:0])
                errors[i], details[i] = "faces_error", f"{type(failure).__name__}: {failure}"
            for name, value in zip(columns, found):
                columns[name].append(value)
        out = {name: value for name, value in batch.items() if name != "frames"}
        out.update({name: object_column(values) for name, values in columns.items()})
        out["error"], out["detail"] = np.array(errors, dtype=str), np.array(details, dtype=str)
        out["aligner"] = np.array([self.aligner.name] * len(errors))
        out["crop"] = np.array([self.config.crop] * len(errors))
        return out

    def align(self, frames: np.ndarray,
              cuts: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """A chunk's frames, and those of them that start a new shot -> crops, landmarks, scores and tracks (see
        the module docstring)."""
        config = self.config
        if not len(frames):
            return (np.zeros((0, config.crop_size, config.crop_size, 3), np.uint8), *_no_faces(0),
                    np.zeros((0, 2), np.int64))
        # A chunk crosses to the GPU once, for detection and the warp, where the aligner takes frames there.
        on_device = self.crop_device is not None and getattr(self.aligner, "takes_device_frames", False)
        source = upload_frames(frames, self.crop_device) if on_device and config.crop != "box" else frames
        points, score, boxes = self.aligner.track(source)
        runs = split_at_cuts(face_tracks(points, config.max_center_jump), () if cuts is None else cuts)
        # Smooth within tracks only: averaging across a cut would blur the jump that ends a track.
        points = smooth_landmarks(points, tracks=runs)
        if config.crop == "box":
            # A box's two corners smoothed as points along the same tracks: detections shake by a few pixels from
            # frame to frame (Wav2Lip's inference smooths its boxes over 5 frames likewise).
            boxes = smooth_landmarks(boxes.reshape(-1, 2, 2), tracks=runs).reshape(-1, 4)
            crops = box_crops(frames, boxes, config.crop_size, config.crop_pad_bottom)
        else:
            crops = crop_faces(source, points, config.crop_size, self.crop_device)
        return crops, points, score, np.array(runs, np.int64).reshape(-1, 2)


def _no_faces(count: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((count, 68, 2), np.nan, np.float32), np.full(count, np.nan, np.float32)
