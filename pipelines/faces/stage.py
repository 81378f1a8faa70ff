"""The face stage of preprocessing: frames in, face crops, landmarks and face tracks out.

Runs as a Ray Data actor so the aligner's models load once per worker; on a GPU worker the retinaface and
face-alignment aligners batch detection and landmarks across the chunk's frames. The tracks it finds (runs of one
face without a cut, `pipelines.faces.tracks.face_tracks`, also ended at the shot cuts the decoder found,
`pipelines.shots`) are the runs its landmarks are smoothed along, and go on
as the "tracks" column ([start, end) and the face's layer, below) for the sample stage to cut segments from.

With `config.max_faces` above 1 (default 1) every face in view is followed, each as its own layer of the chunk: the aligner
follows one face (its own continuity keeps it there), then runs again on the frames with that face hidden
(`tracks.hide_faces`), and so on, as many times as faces were counted on sampled frames. Identity comes from that
continuity and from the centre-jump rule of `face_tracks`, so a track never flips to another face. The columns
then hold layer after layer: "faces", "landmarks", "scores" and "boxes" are [L * N, ...] for L layers of N
frames ("faces_followed": L), and "tracks" is int64 [n, 3]: [start, end) in the chunk's frames and the layer.
"boxes" are the detector's boxes as fractions of the frame's width and height (NaN: no face); "faces_counted" the
faces detected on the sampled frames that decided how many to follow.

The crops are aligned (`align.crop_faces`, warped on the aligner's GPU when it has one) or the detector's boxes
(`align.box_crops`), as `config.crop` says; the kind goes on as the "crop" column, so that samples record what
their faces are.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from pipelines.core.columns import object_column
from pipelines.core.device import upload_frames
from pipelines.faces.align import box_crops, crop_faces, smooth_landmarks
from pipelines.faces.base import FaceConfig
from pipelines.faces.factory import make_aligner
from pipelines.faces.tracks import face_tracks, held_boxes, hide_faces
from pipelines.shots import split_at_cuts


# Faces are counted (to know how many to follow) on one frame in this many: who is in the picture changes slowly,
# and counting detects on every frame it is given.
FACE_COUNT_EVERY = 25


class AlignedChunk(NamedTuple):
    """What `FaceStage.align` finds in a chunk's N frames, L faces followed (the module docstring)."""

    crops: np.ndarray  # uint8 [L * N, S, S, 3]
    landmarks: np.ndarray  # float32 [L * N, K, 2]
    scores: np.ndarray  # float32 [L * N]
    boxes: np.ndarray  # float32 [L * N, 4], fractions of the frame
    tracks: np.ndarray  # int64 [n, 3]: start, end, layer
    faces_counted: np.ndarray  # int64 [sampled frames]; empty when one face is followed


class FaceStage:
    def __init__(self, config: FaceConfig):
        self.config = config
        self.max_faces = config.max_faces or 1  # what a job does not choose: one face, the largest
        self.aligner = make_aligner(config)
        # An aligner on a GPU has its batches there: the crops are warped there too, all of a chunk at once.
        device = getattr(self.aligner, "device", None)
        self.crop_device = device if device is not None and device.type == "cuda" else None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # AlignedChunk's fields, by the column names the sample stage reads
        columns = {"faces": [], "landmarks": [], "scores": [], "boxes": [], "tracks": [], "faces_counted": []}
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
        out["faces_followed"] = np.array([len(faces) // max(len(frames), 1) if len(frames) else 1
                                          for faces, frames in zip(columns["faces"], batch["frames"])], np.int64)
        out["error"], out["detail"] = np.array(errors, dtype=str), np.array(details, dtype=str)
        out["aligner"] = np.array([self.aligner.name] * len(errors))
        out["crop"] = np.array([self.config.crop] * len(errors))
        return out

    def align(self, frames: np.ndarray, cuts: np.ndarray | None = None) -> AlignedChunk:
        """A chunk's frames, and those of them that start a new shot -> crops, landmarks, scores, boxes (layer
        after layer), tracks and faces counted."""
        config = self.config
        if not len(frames):
            return AlignedChunk(np.zeros((0, config.crop_size, config.crop_size, 3), np.uint8), *_no_faces(0),
                                np.zeros((0, 4), np.float32), np.zeros((0, 3), np.int64), np.zeros(0, np.int64))
        # A chunk crosses to the GPU once, for detection and the warp, where the aligner takes frames there.
        on_device = self.crop_device is not None and getattr(self.aligner, "takes_device_frames", False)
        source = upload_frames(frames, self.crop_device) if on_device and config.crop != "box" else frames
        followed, counted = self.follow_faces(frames, source)
        cuts = () if cuts is None else cuts
        layers = [self.align_layer(frames, source, cuts, *found) for found in followed]
        height, width = frames.shape[1:3]
        tracks = [(start, end, layer) for layer, found in enumerate(layers) for start, end in found[4]]
        return AlignedChunk(
            np.concatenate([found[0] for found in layers]), np.concatenate([found[1] for found in layers]),
            np.concatenate([found[2] for found in layers]),
            np.concatenate([found[3] for found in layers]) / np.array([width, height, width, height], np.float32),
            np.array(tracks, np.int64).reshape(-1, 3), counted)

    def follow_faces(self, frames: np.ndarray, source) -> tuple[list[tuple[np.ndarray, np.ndarray, np.ndarray]],
                                                                 np.ndarray]:
        """The aligner's `track` (landmarks, scores, boxes) of each face followed: the first on the frames as they
        are (`source`: the same frames, on the device where the aligner takes them there), every further one on
        the frames with the faces before it hidden; and the faces counted on every FACE_COUNT_EVERY-th frame
        (none counted when one face is followed)."""
        layers = [self.aligner.track(source)]
        if self.max_faces == 1:
            return layers, np.zeros(0, np.int64)
        counted = np.asarray(self.aligner.count_faces(frames[::FACE_COUNT_EVERY]), np.int64)
        wanted = min(self.max_faces, int(counted.max(initial=1)))
        hidden = frames.copy() if wanted > 1 else frames
        while len(layers) < wanted:
            hide_faces(hidden, held_boxes(layers[-1][2]))
            found = self.aligner.track(hidden)
            if not np.isfinite(found[1]).any():
                break
            layers.append(found)
        return layers, counted

    def align_layer(self, frames: np.ndarray, source, cuts, points: np.ndarray, score: np.ndarray,
                    boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list]:
        """One followed face's crops (from the frames as they are), smoothed landmarks, scores, boxes and tracks
        (ended at the shot cuts)."""
        config = self.config
        runs = split_at_cuts(face_tracks(points, config.max_center_jump), cuts)
        # Smooth within tracks only: averaging across a cut would blur the jump that ends a track.
        points = smooth_landmarks(points, tracks=runs)
        if config.crop == "box":
            # A box's two corners smoothed as points along the same tracks: detections shake by a few pixels from
            # frame to frame (Wav2Lip's inference smooths its boxes over 5 frames likewise).
            boxes = smooth_landmarks(boxes.reshape(-1, 2, 2), tracks=runs).reshape(-1, 4)
            crops = box_crops(frames, boxes, config.crop_size, config.crop_pad_bottom)
        else:
            crops = crop_faces(source, points, config.crop_size, self.crop_device)
        return crops, points, score, boxes.astype(np.float32), runs


def _no_faces(count: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((count, 68, 2), np.nan, np.float32), np.full(count, np.nan, np.float32)
