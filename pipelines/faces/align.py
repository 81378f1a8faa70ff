"""Similarity alignment of faces to a fixed template, the square crops the sync expert reads, and landmark smoothing.

The aligned crop maps three anchors, the two eye centres and the mouth centre, onto fixed positions with one
rotation, one uniform scale and one shift (no shear: face shape, and so lip shape, is kept). The expert reads the
lower half of the crop, so the template keeps mouth and chin there and lets the face fill the square.

The box crop (`box_crops`) is the other kind an expert may need (`base.CROPS`): the face detector's box, as
Wav2Lip cut its training faces, with no alignment at all.
"""

from __future__ import annotations

import cv2
import numpy as np

from pipelines.faces.tracks import has_face, true_runs

LEFT_EYE, RIGHT_EYE, MOUTH = slice(36, 42), slice(42, 48), slice(48, 68)

# Anchor positions as fractions of the crop side: left eye, right eye, mouth centre (image left/right).
# Measured with the dlib aligner on the real development clips, with the eye centres d apart: mouth centre
# 1.0-1.2 d below the eye line, upper lip 0.9-1.05 d, chin 1.8-2.1 d, brows 0.45 d above it, jaw 1.15 d either
# side. With d = 0.28 of the side and eyes at 0.33: brows at 0.2, upper lip at 0.6, chin at 0.86 (room for an
# open jaw), jaw from 0.18 to 0.82. So mouth and chin lie in the lower half, and the face fills the crop.
TEMPLATE = np.array([[0.36, 0.33], [0.64, 0.33], [0.50, 0.65]])


def anchor_points(landmarks: np.ndarray) -> np.ndarray:
    """iBUG-68 landmarks [..., 68, 2] -> [..., 3, 2]: left eye centre, right eye centre, mouth centre."""
    return np.stack([landmarks[..., part, :].mean(axis=-2) for part in (LEFT_EYE, RIGHT_EYE, MOUTH)], axis=-2)


def template_points(crop_size: int) -> np.ndarray:
    """TEMPLATE in crop pixels, where pixel centres sit at integers (OpenCV's convention), so the crop's
    middle is (size - 1) / 2 and a fraction of 0.5 lands exactly there."""
    return TEMPLATE * crop_size - 0.5


def similarity_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Least-squares rotation + uniform scale + translation [2, 3] taking points source [K, 2] onto target
    [K, 2] (Umeyama 1991; the sign fix keeps it a rotation, never a mirror)."""
    source_mean, target_mean = source.mean(axis=0), target.mean(axis=0)
    src, dst = source - source_mean, target - target_mean
    u, singular, vt = np.linalg.svd(dst.T @ src / len(source))
    signs = np.array([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])
    rotation = u @ np.diag(signs) @ vt
    scale = (singular * signs).sum() / (src ** 2).sum(axis=1).mean()
    return np.hstack([scale * rotation, (target_mean - scale * rotation @ source_mean)[:, None]])


def align_matrix(landmarks: np.ndarray, crop_size: int) -> np.ndarray:
    """Landmarks [68, 2] (x, y) -> the affine [2, 3] (for cv2.warpAffine) that maps the frame onto the crop."""
    return similarity_transform(anchor_points(landmarks.astype(np.float64)), template_points(crop_size))


def antialias_for_warp(frame: np.ndarray, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Halve the frame (Gaussian pyramid) while the warp would still shrink it by more than 2x, and adapt the
    matrix: bilinear sampling alone aliases fine texture (teeth, lip edges) when a large face becomes 96 px."""
    scale = np.sqrt(abs(np.linalg.det(matrix[:, :2])))
    matrix = matrix.copy()
    while scale < 0.5 and min(frame.shape[:2]) >= 2:
        frame = cv2.pyrDown(frame)  # output pixel i is centred on input pixel 2i
        matrix[:, :2] *= 2
        scale *= 2
    return frame, matrix


def crop_faces(frames: np.ndarray, landmarks: np.ndarray, crop_size: int) -> np.ndarray:
    """Aligned face crops: frames uint8 [N, H, W, 3], landmarks [N, 68, 2] -> uint8 [N, crop, crop, 3].
    Frames without landmarks give black crops; pixels beyond the frame edge repeat the edge."""
    crops = np.zeros((len(frames), crop_size, crop_size, 3), dtype=np.uint8)
    for i in np.flatnonzero(has_face(landmarks)):
        frame, matrix = antialias_for_warp(frames[i], align_matrix(landmarks[i], crop_size))
        crops[i] = cv2.warpAffine(frame, matrix, (crop_size, crop_size), flags=cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_REPLICATE)
    return crops


def box_crops(frames: np.ndarray, boxes: np.ndarray, crop_size: int, pad_bottom: float = 0.0) -> np.ndarray:
    """Detector-box crops: frames uint8 [N, H, W, 3], boxes [N, 4] (x1, y1, x2, y2) -> uint8 [N, crop, crop, 3].

    The box, extended downward by `pad_bottom` of its height, is cut at whole pixels and kept inside the frame
    (as Wav2Lip's preprocessing cut it), then resized to the square whatever its aspect. Frames whose box is NaN
    give black crops."""
    crops = np.zeros((len(frames), crop_size, crop_size, 3), dtype=np.uint8)
    height, width = frames.shape[1:3]
    for i in np.flatnonzero(np.isfinite(boxes).all(axis=1)):
        x1, y1, x2, y2 = boxes[i].astype(np.float64)
        y2 += pad_bottom * (y2 - y1)
        left, top = int(np.clip(x1, 0, width - 1)), int(np.clip(y1, 0, height - 1))
        right, bottom = max(int(min(x2, width)), left + 1), max(int(min(y2, height)), top + 1)
        # Area averaging when shrinking: the expert saw LRS2 faces near 96 px, which bilinear sampling of a large
        # face would alias (teeth, lip edges) beyond anything it saw.
        crops[i] = cv2.resize(frames[i, top:bottom, left:right], (crop_size, crop_size), interpolation=cv2.INTER_AREA)
    return crops


def smooth_landmarks(landmarks: np.ndarray, window: int = 5,
                     tracks: list[tuple[int, int]] | None = None) -> np.ndarray:
    """Centred moving average over `window` frames (odd) of landmarks [N, 68, 2], so per-frame detection noise
    does not shake the crop. Each run is smoothed on its own, and near a run's ends the window shrinks
    symmetrically (staying centred, so a moving face is not pulled back).

    Runs are `tracks` (from `face_tracks`) when given, else the runs of frames with a face. Pass the tracks
    whenever the frames may hold a cut: a cut is no gap, and averaging across it both blends two faces and
    spreads the centre's jump over several frames, where `face_tracks` can no longer see it.

    5 frames is 0.2 s at 25 fps: the jitter goes while the crop still follows head motion; the mouth centre
    still moves with the jaw, so keep it small."""
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be a positive odd number of frames, got {window}")
    smoothed = landmarks.astype(np.float64)
    for start, end in true_runs(has_face(landmarks)) if tracks is None else tracks:
        run = smoothed[start:end]
        sums = np.concatenate([np.zeros((1,) + run.shape[1:]), np.cumsum(run, axis=0)])
        index = np.arange(len(run))
        half = np.minimum(window // 2, np.minimum(index, len(run) - 1 - index))
        smoothed[start:end] = (sums[index + half + 1] - sums[index - half]) / (2 * half + 1)[:, None, None]
    return smoothed.astype(landmarks.dtype)
