"""The offline aligner: dlib's HOG face detector and its 68-point shape predictor.

Its weights ship inside a registry package (`face-recognition-models`), so it runs where nothing may be
downloaded. The 68 points follow the iBUG scheme, the same as face-alignment's FAN, so everything downstream
treats both aligners alike.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.faces.tracks import follow_face

NUM_LANDMARKS = 68


def bundled_model_dir() -> Path:
    """Where `face-recognition-models` keeps its model files.

    Found through the import system rather than by importing the package: its `__init__` needs
    `pkg_resources`, which recent setuptools no longer provides.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the offline aligner needs the package 'face-recognition-models' (pip install face-recognition-models)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "models"


@dataclass(frozen=True)
class DlibAlignerConfig:
    upsample: int = 1  # one upsampling finds faces down to ~40 px; the detector's native minimum is ~80 px
    min_score: float = 0.0  # HOG detection score threshold (dlib's default operating point)
    redetect_every: int = 5  # frames between detections; in between the box follows the landmarks


class DlibAligner:
    """Follows one face through the frames (the largest where it starts) and places 68 landmarks on it.

    `__call__` maps RGB frames uint8 [N, H, W, 3] to landmarks float32 [N, 68, 2] in (x, y) pixel
    coordinates, NaN for frames without a face, and detection scores float32 [N] (NaN likewise).

    The HOG detector costs ~50x the shape predictor, so frames are consecutive video frames and the detector
    runs on every `redetect_every`-th of them (and whenever the face was lost); between detections the box is
    carried by the landmarks of the previous frame. A tracked frame reports the score of its last detection.
    A re-detection keeps to the face being followed (`tracks.follow_face`), not to whichever face is largest.
    """

    name = "dlib"

    def __init__(self, config: DlibAlignerConfig = DlibAlignerConfig()):
        import dlib  # imported here so modules that only name the class don't need dlib installed

        predictor_path = bundled_model_dir() / "shape_predictor_68_face_landmarks.dat"
        if not predictor_path.is_file():
            raise FileNotFoundError(f"dlib landmark model missing: {predictor_path}; reinstall face-recognition-models")
        self.config = config
        self._detector = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(str(predictor_path))
        self._rectangle = dlib.rectangle

    def __call__(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.track(frames)[:2]

    def track(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`__call__`'s landmarks and scores, and the box [N, 4] (x1, y1, x2, y2) each frame's landmarks were
        placed in: the HOG detection, or between detections the box carried by the landmarks (NaN: no face)."""
        landmarks = np.full((len(frames), NUM_LANDMARKS, 2), np.nan, dtype=np.float32)
        scores = np.full(len(frames), np.nan, dtype=np.float32)
        boxes = np.full((len(frames), 4), np.nan, dtype=np.float32)
        track = None  # (box as (cx, cy, side) relative to the landmarks, score) while a face is followed
        since_detection = 0
        for i, frame in enumerate(frames):
            frame = np.ascontiguousarray(frame)
            if track is None or since_detection >= self.config.redetect_every:
                found = self.detect(frame, None if track is None else self._follow(landmarks[i - 1], track))
                if found is None:
                    track = None
                    continue
                box, score = found
                since_detection = 0
            else:
                box, score = self._follow(landmarks[i - 1], track), track[1]
            points = self._landmarks(frame, box)
            landmarks[i], scores[i], boxes[i] = points, score, _corners(box)
            track = (self._relative_box(box, points), score)
            since_detection += 1
        return landmarks, scores, boxes

    def count_faces(self, frames: np.ndarray) -> np.ndarray:
        """Faces the detector finds in each of `frames` (RGB uint8 [N, H, W, 3]) -> int [N]; every frame is
        detected, so pass a sample of a video's frames, not all of them."""
        counts = np.zeros(len(frames), dtype=np.int64)
        for i, frame in enumerate(frames):
            for upsample in sorted({0, self.config.upsample}):
                boxes, _, _ = self._detector.run(np.ascontiguousarray(frame), upsample, self.config.min_score)
                if boxes:
                    counts[i] = len(boxes)
                    break
        return counts

    def detect(self, frame: np.ndarray, followed=None):
        """Box and score of the face that continues `followed` (the followed face's dlib rectangle), or of the
        largest face when nothing is followed or it is gone; native scale first, upsampled only if that finds
        nothing."""
        for upsample in sorted({0, self.config.upsample}):
            boxes, scores, _ = self._detector.run(frame, upsample, self.config.min_score)
            if boxes:
                best = follow_face(np.array([_corners(box) for box in boxes], dtype=np.float64),
                                   None if followed is None else np.array(_corners(followed), dtype=np.float64))
                return boxes[best], float(scores[best])
        return None

    def _landmarks(self, frame: np.ndarray, box) -> np.ndarray:
        shape = self._predictor(frame, box)
        return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)

    @staticmethod
    def _relative_box(box, points: np.ndarray) -> tuple[float, float, float]:
        """The box in units of the face: offset of its centre from the landmarks' centroid, and its side,
        both over the interocular distance, so it can be re-placed on the next frame's face."""
        centroid, eyes = points.mean(axis=0), float(np.linalg.norm(points[45] - points[36])) or 1.0
        centre = ((box.left() + box.right()) / 2, (box.top() + box.bottom()) / 2)
        return ((centre[0] - centroid[0]) / eyes, (centre[1] - centroid[1]) / eyes, box.width() / eyes)

    def _follow(self, previous: np.ndarray, track):
        (dx, dy, side), _ = track
        centroid, eyes = previous.mean(axis=0), float(np.linalg.norm(previous[45] - previous[36])) or 1.0
        cx, cy, half = centroid[0] + dx * eyes, centroid[1] + dy * eyes, side * eyes / 2
        return self._rectangle(int(round(cx - half)), int(round(cy - half)), int(round(cx + half)),
                               int(round(cy + half)))


def _corners(box) -> tuple[int, int, int, int]:
    """A dlib rectangle as (x1, y1, x2, y2)."""
    return box.left(), box.top(), box.right(), box.bottom()
