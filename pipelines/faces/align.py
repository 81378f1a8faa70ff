"""Similarity alignment of faces to a fixed template, the square crops the sync expert reads, and landmark smoothing.

The aligned crop maps landmarks onto fixed positions with one rotation, one uniform scale and one shift (no shear:
face shape, and so lip shape, is kept): for iBUG-68 points three anchors, the two eye centres and the mouth centre
(TEMPLATE); for RetinaFace-5 points all five (TEMPLATE_5, placed where the iBUG-68 crop puts them, so both layouts
give the same crop). The expert reads the lower half of the crop, so the template keeps mouth and chin there and
lets the face fill the square.

The box crop (`box_crops`) is the other kind an expert may need (`base.CROPS`): the face detector's box, as
Wav2Lip cut its training faces, with no alignment at all.
"""

from __future__ import annotations

import cv2
import numpy as np

from pipelines.faces.landmarks import RETINAFACE_5, eye_centres, layout, mouth_centre
from pipelines.faces.tracks import has_face, true_runs

# Anchor positions as fractions of the crop side: left eye, right eye, mouth centre (image left/right).
# Measured with the dlib aligner on the real development clips, with the eye centres d apart: mouth centre
# 1.0-1.2 d below the eye line, upper lip 0.9-1.05 d, chin 1.8-2.1 d, brows 0.45 d above it, jaw 1.15 d either
# side. With d = 0.28 of the side and eyes at 0.33: brows at 0.2, upper lip at 0.6, chin at 0.86 (room for an
# open jaw), jaw from 0.18 to 0.82. So mouth and chin lie in the lower half, and the face fills the crop.
TEMPLATE = np.array([[0.36, 0.33], [0.64, 0.33], [0.50, 0.65]])
# RetinaFace-5 points (left eye, right eye, nose tip, left and right mouth corner) as fractions of the side: where
# they land in the crop that TEMPLATE gives dlib's landmarks of the same frames, the median per clip averaged over the
# 45 real development clips (`python -m bench.face_aligners`; bench/README.md), then made left-right symmetric (the
# measured halves differed by under 0.01).
TEMPLATE_5 = np.array([[0.359, 0.321], [0.641, 0.321], [0.500, 0.482], [0.383, 0.629], [0.617, 0.629]])


def anchor_points(landmarks: np.ndarray) -> np.ndarray:
    """Landmarks [..., K, 2] (iBUG-68 or RetinaFace-5, `pipelines.faces.landmarks`) -> [..., 3, 2]: left eye
    centre, right eye centre, mouth centre."""
    return np.stack([*eye_centres(landmarks), mouth_centre(landmarks)], axis=-2)


def template_points(crop_size: int, template: np.ndarray = TEMPLATE) -> np.ndarray:
    """A template in crop pixels, where pixel centres sit at integers (OpenCV's convention), so the crop's
    middle is (size - 1) / 2 and a fraction of 0.5 lands exactly there."""
    return template * crop_size - 0.5


def similarity_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Least-squares rotation + uniform scale + translation [2, 3] taking points source [K, 2] onto target
    [K, 2] (Umeyama 1991; the sign fix keeps it a rotation, never a mirror)."""
    return similarity_transforms(source[None], target)[0]


def similarity_transforms(sources: np.ndarray, target: np.ndarray) -> np.ndarray:
    """`similarity_transform` of each point set of sources [F, K, 2] onto one target [K, 2] -> [F, 2, 3], in one
    batched SVD."""
    source_means, target_mean = sources.mean(axis=1), target.mean(axis=0)
    src, dst = sources - source_means[:, None], target - target_mean
    u, singular, vt = np.linalg.svd(np.einsum("ki,fkj->fij", dst, src) / sources.shape[1])
    signs = np.ones((len(sources), 2))
    signs[:, 1] = np.sign(np.linalg.det(u) * np.linalg.det(vt))
    signs[signs[:, 1] == 0, 1] = 1.0
    rotations = u @ (signs[:, :, None] * vt)
    scales = (singular * signs).sum(axis=1) / (src ** 2).sum(axis=2).mean(axis=1)
    shifts = target_mean - scales[:, None] * np.einsum("fij,fj->fi", rotations, source_means)
    return np.concatenate([scales[:, None, None] * rotations, shifts[:, :, None]], axis=2)


def align_matrix(landmarks: np.ndarray, crop_size: int) -> np.ndarray:
    """Landmarks [K, 2] (x, y) -> the affine [2, 3] (for cv2.warpAffine) that maps the frame onto the crop."""
    return align_matrices(landmarks[None], crop_size)[0]


def align_matrices(landmarks: np.ndarray, crop_size: int) -> np.ndarray:
    """`align_matrix` of each frame's landmarks [F, K, 2] -> [F, 2, 3]."""
    points = landmarks.astype(np.float64)
    if layout(points) == RETINAFACE_5:
        return similarity_transforms(points, template_points(crop_size, TEMPLATE_5))
    return similarity_transforms(anchor_points(points), template_points(crop_size))


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


def crop_faces(frames: np.ndarray, landmarks: np.ndarray, crop_size: int, device=None) -> np.ndarray:
    """Aligned face crops: frames uint8 [N, H, W, 3], landmarks [N, K, 2] -> uint8 [N, crop, crop, 3].
    Frames without landmarks give black crops; pixels beyond the frame edge repeat the edge.

    `device` (a torch device) warps every frame in batches there (`crop_faces_on_device`), for a face stage whose
    frames are on a GPU anyway (they may be given as a uint8 tensor there); None warps them one by one with
    OpenCV."""
    crops = np.zeros((len(frames), crop_size, crop_size, 3), dtype=np.uint8)
    found = np.flatnonzero(has_face(landmarks))
    if device is not None:
        if len(found):
            crops[found] = crop_faces_on_device(frames, found, align_matrices(landmarks[found], crop_size),
                                                crop_size, device)
        return crops
    for i in found:
        frame, matrix = antialias_for_warp(frames[i], align_matrix(landmarks[i], crop_size))
        crops[i] = cv2.warpAffine(frame, matrix, (crop_size, crop_size), flags=cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_REPLICATE)
    return crops


# Frames warped per grid_sample on the device: a bound on the float copies of whole frames made for it.
WARP_BATCH = 256


def crop_faces_on_device(frames, chosen: np.ndarray, matrices: np.ndarray, crop_size: int, device) -> np.ndarray:
    """`crop_faces`' warp as batched `grid_sample`s on `device`: frames uint8 [N, H, W, 3] (numpy, or a tensor on
    `device`), the frames to crop `chosen` [F] and their affines [F, 2, 3] (frame pixels -> crop pixels, OpenCV's
    convention) -> uint8 [F, crop, crop, 3]. Only the crops come back to the host.

    As `antialias_for_warp`, a frame the warp would shrink by more than 2x is first halved, as often as needed (2x2
    means here, where OpenCV's pyramid uses a Gaussian), and sampled from there; frames are grouped by how often."""
    import torch
    import torch.nn.functional as F

    from pipelines.core.device import upload_frames

    images = upload_frames(frames, device)
    scales = np.sqrt(np.abs(np.linalg.det(matrices[:, :, :2])))
    halvings = np.maximum(np.ceil(-np.log2(np.maximum(scales, 1e-6)) - 1), 0).astype(int)
    rows, cols = torch.meshgrid(torch.arange(crop_size, dtype=torch.float64, device=device),
                                torch.arange(crop_size, dtype=torch.float64, device=device), indexing="ij")
    crop_pixels = torch.stack([cols, rows, torch.ones_like(rows)], dim=-1).reshape(-1, 3)  # (x, y, 1)
    # Crop pixel -> frame pixel (the inverse affine), all frames at once: [F, crop * crop, 2], in float64 on the
    # device: on the host, this and the grids below took 80 of the 200 s py-spy found the face actors awake in the
    # drawn hour on the H200 machine.
    full = np.concatenate([matrices, np.tile([[[0.0, 0.0, 1.0]]], (len(matrices), 1, 1))], axis=1)
    frame_xy = torch.einsum("fij,pj->fpi", torch.from_numpy(np.linalg.inv(full)[:, :2]).to(device), crop_pixels)
    crops = torch.zeros(len(chosen), 3, crop_size, crop_size, device=device)
    for level in np.unique(halvings):
        factor = 2 ** int(level)
        for part in np.array_split(np.flatnonzero(halvings == level),
                                   max(1, -(-int((halvings == level).sum()) // WARP_BATCH))):
            source = images[torch.from_numpy(chosen[part]).to(device)].permute(0, 3, 1, 2).float()
            source = F.avg_pool2d(source, factor) if factor > 1 else source
            # -> pixel of the halved frame, whose pixel j averages frame pixels factor * j .. factor * j + factor - 1,
            # -> grid_sample's [-1, 1] over pixel edges.
            on_device = torch.from_numpy(part).to(device)
            halved_xy = (frame_xy[on_device] - (factor - 1) / 2) / factor
            size = torch.tensor([source.shape[3], source.shape[2]], dtype=torch.float64, device=device)
            grid = ((2 * halved_xy + 1) / size - 1).reshape(len(part), crop_size, crop_size, 2)
            crops[on_device] = F.grid_sample(source, grid.float(), mode="bilinear", padding_mode="border",
                                             align_corners=False)
    return crops.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


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
    """Centred moving average over `window` frames (odd) of landmarks [N, K, 2], so per-frame detection noise
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
