"""The two landmark layouts the aligners give, and the few face measures everything downstream takes from them.

* iBUG-68 [..., 68, 2] (dlib, face-alignment's FAN): jaw 0-16, brows, nose 27-35, eyes 36-47, mouth 48-67.
* RetinaFace-5 [..., 5, 2] (retinaface): left eye, right eye, nose tip, left and right mouth corner.

Left and right are the image's. Points are (x, y) frame pixels, NaN where a frame has no face. Alignment, tracks and
track quality ask only for what both layouts define: eye centres, mouth centre, face width and points that stay put
while a person speaks. So the crops of either aligner put the same parts of the face in the same places.
"""

from __future__ import annotations

import numpy as np

IBUG_68, RETINAFACE_5 = 68, 5
LEFT_EYE_68, RIGHT_EYE_68, MOUTH_68 = slice(36, 42), slice(42, 48), slice(48, 68)
JAW_LEFT_68, JAW_RIGHT_68 = 0, 16
# Points that do not move when a person speaks or blinks: iBUG's nose bridge and base and eye corners; RetinaFace's
# eyes and nose (its mouth corners move with the lips).
RIGID_68 = [27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 39, 42, 45]
RIGID_5 = [0, 1, 2]
# Jaw corner to jaw corner over the eye-centre distance, measured with the dlib aligner on the real development clips
# (1.15 either side, `pipelines.faces.align`): RetinaFace-5 has no jaw, so its face width is derived from its eyes.
FACE_WIDTH_PER_EYES = 2.3


def layout(landmarks: np.ndarray) -> int:
    """68 or 5, the number of points per face; anything else is an error."""
    points = landmarks.shape[-2]
    if points not in (IBUG_68, RETINAFACE_5):
        raise ValueError(f"landmarks must be iBUG-68 or RetinaFace-5 points [..., K, 2], got K = {points}")
    return points


def eye_centres(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[..., K, 2] -> left and right eye centres, [..., 2] each."""
    if layout(landmarks) == IBUG_68:
        return landmarks[..., LEFT_EYE_68, :].mean(axis=-2), landmarks[..., RIGHT_EYE_68, :].mean(axis=-2)
    return landmarks[..., 0, :], landmarks[..., 1, :]


def mouth_centre(landmarks: np.ndarray) -> np.ndarray:
    """[..., K, 2] -> [..., 2]: the mean of the mouth's points (iBUG: both lips' outlines; RetinaFace: its corners)."""
    if layout(landmarks) == IBUG_68:
        return landmarks[..., MOUTH_68, :].mean(axis=-2)
    return landmarks[..., 3:5, :].mean(axis=-2)


def interocular(landmarks: np.ndarray) -> np.ndarray:
    """[..., K, 2] -> distance between the eye centres [...], the face's natural unit of length."""
    left, right = eye_centres(landmarks)
    return np.linalg.norm(right - left, axis=-1)


def face_width(landmarks: np.ndarray) -> np.ndarray:
    """[..., K, 2] -> the face's width [...] (iBUG: jaw corner to jaw corner), which rotation does not change."""
    if layout(landmarks) == IBUG_68:
        return np.linalg.norm(landmarks[..., JAW_RIGHT_68, :] - landmarks[..., JAW_LEFT_68, :], axis=-1)
    return FACE_WIDTH_PER_EYES * interocular(landmarks)


def rigid_points(landmarks: np.ndarray) -> np.ndarray:
    """[..., K, 2] -> the points that speech and blinks leave in place, [..., R, 2]."""
    return landmarks[..., RIGID_68 if layout(landmarks) == IBUG_68 else RIGID_5, :]
