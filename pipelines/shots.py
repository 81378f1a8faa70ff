"""Shot cuts: where one camera shot ends and the next begins, found from the decoded frames alone.

A cut between two shots of the same framing (a studio's two cameras, an edited interview) leaves the face where
it was: a face track (`pipelines.faces.tracks.face_tracks`) would run straight through it, and a sample would
pair one person's lips with the next one's voice. LatentSync splits every video into shots before anything else
(PySceneDetect); here the decoder marks the cuts of each chunk as it yields it, and face tracks end there.

The measure: how far the colour histogram (HSV, 16 x 4 x 4 bins) of a small copy of the frame moves from the
previous frame's, as the share of pixels that would have to change bin. Talking, head motion and slow lighting
changes leave the colours where they were, so it stays at a few percent; a cut to another scene, or to another
person in front of the same backdrop, moves tens of percent. The threshold adapts (PySceneDetect's
AdaptiveDetector's idea, made causal): a frame starts a new shot when its change is at least `cut_threshold` and
at least `cut_ratio` times the mean change of the `HISTORY_FRAMES` before it, so a shaky or fast-moving shot,
whose every change is large, is not cut into pieces. Only past frames are used: a chunk's cuts are known when
the chunk is, and a cut at a chunk's first frame is found from the previous chunk's last histogram (`ShotState`,
carried from chunk to chunk). Chosen by measurement (bench/README.md): PySceneDetect's own measure (the mean
HSV pixel difference) at the thresholds that kept single-shot real clips uncut missed more cuts between real
clips than the histogram.

Cuts are frame indices t: frames t-1 and t belong to different shots.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterator

import cv2
import numpy as np

# Pixels a side of the frame copy whose colours are counted: each the mean of a 4 x 4 block of a bilinear
# resample to 4 times that side. Averaging keeps fine texture (hands, hair, noise) from moving colours across bins
# (a bilinear sample alone cut a single-shot clip twice); OpenCV's area resize straight from any frame size to
# this one averages too, but costs 3 times as much (bench/README.md).
SIGNATURE_SIDE = 48
SAMPLE_SIDE = 4 * SIGNATURE_SIDE
HISTOGRAM_BINS = (16, 4, 4)  # hue, saturation, value
HISTOGRAM_RANGES = [0, 180, 0, 256, 0, 256]  # OpenCV's 8-bit HSV: hue 0..179
HISTORY_FRAMES = 10  # frames whose mean change a cut must stand out from (0.4 s at 25 fps)
MIN_SHOT_FRAMES = 5  # no cut this soon after another or the start (a flash, a fade); one expert window at 25 fps


@dataclass(frozen=True)
class ShotConfig:
    """Shot-cut detection: whether it runs and how large a frame-to-frame change counts as a cut."""

    split_shots: bool = field(default=True, metadata={"help": "end face tracks (and samples) at shot cuts found in the frames"})
    cut_threshold: float = field(default=10.0, metadata={"help": "smallest colour-histogram change between two frames that is a cut, in percent of the pixels"})
    cut_ratio: float = field(default=6.0, metadata={"help": "... and at least this many times the mean change over the frames before it"})

    def __post_init__(self):
        if self.cut_threshold <= 0 or self.cut_ratio < 1:
            raise ValueError(f"--cut-threshold must be positive and --cut-ratio at least 1, got {self.cut_threshold} "
                             f"and {self.cut_ratio}")


@dataclass
class ShotState:
    """What detection carries from one chunk of a video to the next."""

    last_signature: np.ndarray | None = None  # the previous frame's, None before the first frame
    recent_changes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # oldest first
    since_cut: int = 0  # frames since the last cut or the video's start
    shot: int = 0  # index of the shot the last frame belongs to


def frame_signatures(frames: np.ndarray) -> np.ndarray:
    """uint8 [T, H, W, 3] RGB -> float32 [T, B] colour histograms (HSV, `HISTOGRAM_BINS`, summing to 1) of each
    frame shrunk to SIGNATURE_SIDE pixels a side."""
    size, sample = (SIGNATURE_SIDE, SIGNATURE_SIDE), (SAMPLE_SIDE, SAMPLE_SIDE)
    histograms = np.zeros((len(frames), int(np.prod(HISTOGRAM_BINS))), np.float32)
    for t, frame in enumerate(frames):
        small = cv2.resize(cv2.resize(frame, sample, interpolation=cv2.INTER_LINEAR), size, interpolation=cv2.INTER_AREA)
        hsv = cv2.cvtColor(small, cv2.COLOR_RGB2HSV)
        histograms[t] = cv2.calcHist([hsv], [0, 1, 2], None, list(HISTOGRAM_BINS), HISTOGRAM_RANGES).ravel()
    return histograms / (SIGNATURE_SIDE * SIGNATURE_SIDE)


def content_changes(signatures: np.ndarray, previous: np.ndarray | None = None) -> np.ndarray:
    """float32 [T]: how much of each frame's colour histogram differs from the one before it (the first frame's
    from `previous`; 0 when there is none), in percent: half the L1 distance, the share of pixels that would have
    to change colour bin."""
    if len(signatures) == 0:
        return np.zeros(0, np.float32)
    before = np.concatenate([(signatures[:1] if previous is None else previous[None]), signatures[:-1]])
    return (50.0 * np.abs(signatures - before).sum(axis=1)).astype(np.float32)


def find_cuts(changes: np.ndarray, state: ShotState, config: ShotConfig) -> tuple[np.ndarray, ShotState]:
    """The frames of `changes` (one chunk's, `content_changes`) that start a new shot, and the state after them.
    The history of changes runs on across chunks, so a chunk's cuts do not depend on where chunks begin."""
    history = list(state.recent_changes.tolist())
    since_cut, cuts = state.since_cut, []
    for t, change in enumerate(changes.tolist()):
        baseline = float(np.mean(history)) if history else 0.0
        if (since_cut >= MIN_SHOT_FRAMES and change >= config.cut_threshold
                and change >= config.cut_ratio * baseline):
            cuts.append(t)
            since_cut = 0
        since_cut += 1
        history = (history + [change])[-HISTORY_FRAMES:]
    after = ShotState(last_signature=state.last_signature, recent_changes=np.array(history, np.float32),
                      since_cut=since_cut, shot=state.shot + len(cuts))
    return np.array(cuts, np.int64), after


def detect_cuts(frames: np.ndarray, state: ShotState, config: ShotConfig) -> tuple[np.ndarray, ShotState]:
    """One chunk's frames [T, H, W, 3] -> the frames that start a new shot (int64, ascending, in [0, T)) and the
    state to pass with the next chunk of the same video."""
    signatures = frame_signatures(frames)
    cuts, after = find_cuts(content_changes(signatures, state.last_signature), state, config)
    if len(signatures):
        after.last_signature = signatures[-1]
    return cuts, after


def split_at_cuts(tracks: list[tuple[int, int]], cuts: np.ndarray) -> list[tuple[int, int]]:
    """Tracks [start, end) cut in two at every cut frame inside them: no piece holds frames of two shots."""
    pieces = []
    for start, end in tracks:
        inside = [int(cut) for cut in cuts if start < cut < end]
        bounds = [start, *inside, end]
        pieces.extend(zip(bounds[:-1], bounds[1:]))
    return pieces


def shot_of(frame: int, first_shot: int, cuts: np.ndarray) -> int:
    """The shot index of a chunk's frame, from the chunk's `first_shot` (the shot before any of its cuts)."""
    return first_shot + int(np.count_nonzero(np.asarray(cuts) <= frame))


def mark_cuts(chunks: Iterator, config: ShotConfig) -> Iterator:
    """A video's chunks (`pipelines.decode.Chunk`, in order) with their `cuts` and `shot` filled in; as they
    came (no cuts, shot 0) when `config.split_shots` is off."""
    state = ShotState()
    for chunk in chunks:
        if config.split_shots:
            shot = state.shot
            cuts, state = detect_cuts(chunk.frames, state, config)
            chunk = replace(chunk, cuts=cuts, shot=shot)
        yield chunk
