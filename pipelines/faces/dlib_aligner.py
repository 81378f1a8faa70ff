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


class DlibAligner:
    """Finds the largest face in each frame and places 68 landmarks on it.

    `__call__` maps RGB frames uint8 [N, H, W, 3] to landmarks float32 [N, 68, 2] in (x, y) pixel
    coordinates, NaN for frames without a face, and detection scores float32 [N] (NaN likewise).
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
        landmarks = np.full((len(frames), NUM_LANDMARKS, 2), np.nan, dtype=np.float32)
        scores = np.full(len(frames), np.nan, dtype=np.float32)
        for i, frame in enumerate(frames):
            found = self.align_one(np.ascontiguousarray(frame))
            if found is not None:
                landmarks[i], scores[i] = found
        return landmarks, scores

    def align_one(self, frame: np.ndarray) -> tuple[np.ndarray, float] | None:
        boxes, scores, _ = self._detector.run(frame, self.config.upsample, self.config.min_score)
        if not boxes:
            return None
        # The main speaker is assumed to be the largest face: the usual case in talking-head footage.
        best = max(range(len(boxes)), key=lambda k: boxes[k].area())
        shape = self._predictor(frame, boxes[best])
        points = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)
        return points, float(scores[best])
