"""Continuous face tracks: the runs of frames that show one face without a cut, and how good their landmarks are.

A track ends where the face is lost (no landmarks) or where its centre jumps further between two frames than a
head moves in 1/25 s: a shot cut or another person. Several faces in view are followed one after another, each
with the faces before it hidden (`hide_faces`); pieces of tracks that meet are linked by box overlap
(`link_pieces`), and tracks that overlap in time compete to be the one speaking (`overlapping_groups`). Landmarks are iBUG-68 or RetinaFace-5 points [N, K, 2] (x, y;
`pipelines.faces.landmarks`), NaN where a frame has no face; tracks are half-open frame ranges [start, end).
"""

from __future__ import annotations

import math

import numpy as np

from pipelines.faces.landmarks import face_width, interocular, rigid_points


def true_runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Half-open [start, end) runs of True in a 1-D boolean array."""
    edges = np.diff(np.concatenate([[False], np.asarray(mask, dtype=bool), [False]]).astype(np.int8))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


def has_face(landmarks: np.ndarray) -> np.ndarray:
    """[N, K, 2] -> bool [N]: the frame has a complete set of landmarks."""
    return np.isfinite(landmarks).all(axis=(1, 2))


def face_tracks(landmarks: np.ndarray, max_center_jump: float) -> list[tuple[int, int]]:
    """Runs [start, end) of consecutive frames with a face whose centre (mean of its points) moves at most
    `max_center_jump` face widths (`landmarks.face_width`, which rotation does not change) from one frame to
    the next."""
    present = has_face(landmarks)
    centres = landmarks.mean(axis=1)
    widths = face_width(landmarks)
    with np.errstate(invalid="ignore", divide="ignore"):
        jumps = np.linalg.norm(np.diff(centres, axis=0), axis=1) / widths[:-1]
    # NaN jumps (a missing face on either side) compare False, so they break the track too.
    continues = present[1:] & present[:-1] & (jumps <= max_center_jump)
    starts = present & ~np.concatenate([[False], continues])
    ends = present & ~np.concatenate([continues, [False]])
    return list(zip(np.flatnonzero(starts).tolist(), (np.flatnonzero(ends) + 1).tolist()))


def follow_face(boxes: np.ndarray, followed: np.ndarray | None) -> int:
    """Which of a frame's detections [K, 4] (x1, y1, x2, y2), K >= 1, continues the face being followed, whose box
    was `followed` [4] (None when no face is followed): the detection whose centre is nearest to that box's centre
    among those whose centre lies inside it; the largest when none does or nothing is followed.

    Taking the largest on every detection would flip between two people of nearly equal size and break the track
    into pieces too short to score; the largest is the speaker's best guess only where a track starts.
    """
    centres = (boxes[:, :2] + boxes[:, 2:4]) / 2
    if followed is not None:
        inside = np.all((centres >= followed[:2]) & (centres <= followed[2:4]), axis=1)
        if inside.any():
            distances = np.linalg.norm(centres - (followed[:2] + followed[2:4]) / 2, axis=1)
            return int(np.argmin(np.where(inside, distances, np.inf)))
    return int(np.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))


# Around a face already followed, the picture hidden before the next face is sought: this much of its box's side
# on every side, so that no edge of that face (chin, forehead) is found again as a face of its own.
HIDE_MARGIN = 0.15
# A face followed but lost on a few frames (a blink of the detector) is hidden there too, at its nearest box, or the
# next pass would take it up again on those frames.
HIDE_HOLD_FRAMES = 5


def held_boxes(boxes: np.ndarray, hold: int = HIDE_HOLD_FRAMES) -> np.ndarray:
    """Boxes [N, 4] with each NaN row (no face) that lies within `hold` frames of a frame with a box given that
    nearest box; rows further from any box stay NaN."""
    present = np.flatnonzero(np.isfinite(boxes).all(axis=1))
    if not len(present):
        return boxes.copy()
    frames = np.arange(len(boxes))
    after = np.clip(np.searchsorted(present, frames), 0, len(present) - 1)
    before = np.clip(after - 1, 0, len(present) - 1)
    nearest = np.where(np.abs(present[before] - frames) <= np.abs(present[after] - frames),
                       present[before], present[after])
    return np.where((np.abs(nearest - frames) <= hold)[:, None], boxes[nearest], np.nan).astype(boxes.dtype)


def hide_faces(frames: np.ndarray, boxes: np.ndarray, margin: float = HIDE_MARGIN) -> None:
    """Paint each frame's box [N, 4] (x1, y1, x2, y2; NaN: none) and `margin` of its side around it flat grey, in
    frames [N, H, W, 3] themselves (a chunk's frames are hundreds of MB): what a detector then finds is another
    face."""
    height, width = frames.shape[1:3]
    for i in np.flatnonzero(np.isfinite(boxes).all(axis=1)):
        x1, y1, x2, y2 = boxes[i]
        pad_x, pad_y = margin * (x2 - x1), margin * (y2 - y1)
        left, top = max(int(x1 - pad_x), 0), max(int(y1 - pad_y), 0)
        right, bottom = min(int(math.ceil(x2 + pad_x)), width), min(int(math.ceil(y2 + pad_y)), height)
        frames[i, top:bottom, left:right] = 128


def median_box(boxes: np.ndarray) -> np.ndarray | None:
    """The median of a track's boxes [T, 4] over its frames with a box; None when none has one."""
    present = boxes[np.isfinite(boxes).all(axis=1)]
    return np.median(present, axis=0) if len(present) else None


def box_overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boxes (x1, y1, x2, y2); 0 when either is missing."""
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return 0.0
    inter = np.prod(np.clip(np.minimum(a[2:], b[2:]) - np.maximum(a[:2], b[:2]), 0, None))
    union = np.prod(a[2:] - a[:2]) + np.prod(b[2:] - b[:2]) - inter
    return float(inter / union) if union > 0 else 0.0


# Two pieces of face track that meet (one ends where the other starts: a chunk boundary or a segment cut) are one
# person's when their boxes overlap this much (SyncNet's tracker links detections at IoU 0.5 likewise).
LINK_OVERLAP = 0.5


def link_pieces(pieces: list[tuple[int, int, np.ndarray]], min_overlap: float = LINK_OVERLAP) -> list[int]:
    """Pieces of face tracks (start frame, end frame, box [4]) -> a track number per piece: a piece continues the
    track of the piece that ends where it starts whose box overlaps its own most (at least `min_overlap`), else
    starts a new track. Numbers count tracks in the order they start."""
    order = sorted(range(len(pieces)), key=lambda i: (pieces[i][0], i))
    track = [-1] * len(pieces)
    open_ends: dict[int, list[int]] = {}  # end frame -> pieces ending there not yet continued
    next_track = 0
    for i in order:
        start, end, box = pieces[i]
        waiting = open_ends.get(start, [])
        overlaps = [box_overlap(pieces[j][2], box) for j in waiting]
        if overlaps and max(overlaps) >= min_overlap:
            best = waiting.pop(int(np.argmax(overlaps)))
            track[i] = track[best]
        else:
            track[i], next_track = next_track, next_track + 1
        open_ends.setdefault(end, []).append(i)
    return track


def overlapping_groups(spans: list[tuple[int, int]]) -> list[list[int]]:
    """Indices of spans [start, end) grouped where they overlap in time, directly or through others: the tracks
    that compete to be the one speaking. Groups in time order, indices in each ascending."""
    groups: list[list[int]] = []
    reach = None
    for i in sorted(range(len(spans)), key=lambda i: spans[i]):
        if reach is None or spans[i][0] >= reach:
            groups.append([])
            reach = spans[i][1]
        groups[-1].append(i)
        reach = max(reach, spans[i][1])
    return [sorted(group) for group in groups]


def split_track(start: int, end: int, min_frames: int, max_frames: int) -> list[tuple[int, int]]:
    """Cut [start, end) into pieces of at most `max_frames`: equal pieces when all can have `min_frames`,
    else full `max_frames` pieces and a short remainder (which then keeps the most frames)."""
    length = end - start
    pieces = math.ceil(length / max_frames)
    if pieces * min_frames <= length:
        bounds = np.linspace(start, end, pieces + 1).round().astype(int).tolist()
    else:
        bounds = list(range(start, end, max_frames)) + [end]
    return list(zip(bounds[:-1], bounds[1:]))


def split_and_filter(tracks: list[tuple[int, int]], min_frames: int,
                     max_frames: int) -> tuple[list[tuple[int, int]], int]:
    """Tracks cut to at most `max_frames`, pieces shorter than `min_frames` dropped: (kept, number dropped)."""
    if not 1 <= min_frames <= max_frames:
        raise ValueError(f"need 1 <= min_frames <= max_frames, got {min_frames} and {max_frames}")
    kept, dropped = [], 0
    for start, end in tracks:
        for piece in split_track(start, end, min_frames, max_frames):
            if piece[1] - piece[0] >= min_frames:
                kept.append(piece)
            else:
                dropped += 1
    return kept, dropped


def landmark_quality(landmarks: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Summary of one track's landmarks [T, K, 2] and detection scores [T] (NaN-tolerant):

    * score_mean, score_min: the detector's confidence (scale depends on the aligner);
    * interocular_px: mean eye-centre distance in pixels, the face's resolution;
    * motion: mean frame-to-frame displacement of all points, in interocular distances (head and mouth motion);
    * jitter: mean distance of the rigid points (`landmarks.rigid_points`) from their 3-frame moving average, in
      interocular distances. Smooth head motion leaves almost none; detector noise shows up here.
    NaN where undefined (no face; motion and jitter need 2 and 3 frames).
    """
    with np.errstate(invalid="ignore"):
        scale = interocular(landmarks)
        steps = np.linalg.norm(np.diff(landmarks, axis=0), axis=2).mean(axis=1) / scale[1:]
        rigid = rigid_points(landmarks)
        average = (rigid[:-2] + rigid[1:-1] + rigid[2:]) / 3
        wobble = np.linalg.norm(rigid[1:-1] - average, axis=2).mean(axis=1) / scale[1:-1]
    return {
        "frames": float(len(landmarks)),
        "score_mean": _nan_stat(np.nanmean, scores),
        "score_min": _nan_stat(np.nanmin, scores),
        "interocular_px": _nan_stat(np.nanmean, scale),
        "motion": _nan_stat(np.nanmean, steps),
        "jitter": _nan_stat(np.nanmean, wobble),
    }


def _nan_stat(stat, values: np.ndarray) -> float:
    values = np.asarray(values, dtype=np.float64)
    return float(stat(values)) if np.isfinite(values).any() else math.nan
