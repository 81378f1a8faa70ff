"""Training pairs for the sync expert: a window of faces and a window of mel, in sync (label 1) or not (0).

Every pair is cut from one decoded segment (`pipelines.shards.reader.Segment`); `windows_per_segment` pairs are
drawn from each segment, so shard I/O and the JPEG decode are paid once for all of them. Kinds of pair
(shift: how many frames the audio window lies after the face window; negative: before):

    positive  shift 0                                       label 1
    hard      hard_shift_min..hard_shift_max, either sign    label 0   small offsets: what offset estimation needs
    easy      hard_shift_max+1..easy_shift_max, either sign  label 0   far shifts within the segment
    other     audio of a segment of another video           label 0   shift = OTHER_SEGMENT_SHIFT

Both windows always lie entirely inside their segment: a shift is drawn among those that fit the segment
and the face window's start among those that keep both windows inside. A segment too short for the kind
drawn falls back to the nearest kind that fits:

    hard  -> other          (a segment too short for a hard shift has no room for an easy one either)
    easy  -> hard -> other
    other -> easy -> hard   (no other video's audio at hand, as for the first segment of a stream)

and a negative for which nothing fits (a segment shorter than window + hard_shift_min frames, with no other
audio) is not drawn. Segments shorter than one window give no pairs.

All of a segment's pairs are drawn at once, as arrays of positions (`draw_window_arrays`, from lengths alone);
the training loader (`model.loader.pool`) gathers them out of decoded segments held on the training device.
`cut_windows` and `sample_pairs` cut them out of a `Segment` in numpy, for inspection, evaluation and tests.
"""

from __future__ import annotations

import fnmatch
import functools
from dataclasses import dataclass, field

import numpy as np

from pipelines.core.clock import Clock
from pipelines.shards.reader import Segment

__all__ = ["KINDS", "OTHER_CODE", "OTHER_SEGMENT_SHIFT", "POSITIVE_CODE", "PairConfig", "Windows", "cut_windows",
           "audio_windows", "draw_window_arrays", "draw_windows", "heaviest_weight", "sample_pairs",
           "source_weight"]

OTHER_SEGMENT_SHIFT = 10**6  # no shift relates the audio of another video to these faces
POSITIVE, HARD, EASY, OTHER = "positive", "hard", "easy", "other"
KINDS = (POSITIVE, HARD, EASY, OTHER)  # a pair's kind as a code: its index here
_POSITIVE, _HARD, _EASY, _OTHER, _NONE = 0, 1, 2, 3, -1
FALLBACKS = {HARD: (HARD, OTHER), EASY: (EASY, HARD, OTHER), OTHER: (OTHER, EASY, HARD)}
POSITIVE_CODE, OTHER_CODE = _POSITIVE, _OTHER


@dataclass(frozen=True)
class PairConfig:
    """Which pairs are drawn from a segment (the window itself is the expert's clock)."""

    # One H200 steps 32k pairs/s; 4 loader processes decode ~190 segments/s: 256 pairs per decoded segment keep
    # the step fed (128 reach 0.8 of it; bench/README.md, the pool loader). The segment waits in the pool until
    # they are all drawn, among hundreds of others, so a batch still mixes hundreds of segments.
    windows_per_segment: int = field(default=256, metadata={"help": "pairs drawn from each decoded segment (it "
                                                                     "leaves the pool once they are all used)"})
    positive_fraction: float = field(default=0.5, metadata={"help": "share of pairs that are in sync"})
    hard_shift_min: int = field(default=2, metadata={"help": "hard negatives: audio shifted by at least this many frames"})
    hard_shift_max: int = field(default=6, metadata={"help": "... and at most this many"})
    easy_shift_max: int = field(default=75, metadata={"help": "easy negatives: shifts up to this many frames (3 s)"})
    hard_fraction: float = field(default=0.5, metadata={"help": "share of negatives that are hard shifts"})
    easy_fraction: float = field(default=0.25, metadata={"help": "share of negatives that are easy shifts (rest: another segment's audio)"})
    # A pool holds hundreds of segments and a batch draws from all of them, so a segment with K times the pairs
    # stays K times as long and is in about K times as many batches: a few real clips among hours of synthetic
    # ones are seen as often as their weight says, at no extra decoding or memory.
    source_weights: tuple[str, ...] = field(default=(), metadata={
        "help": "GLOB=K: segments whose source video's path matches GLOB (fnmatch; the first rule that matches) "
                "give K times --windows-per-segment training pairs, e.g. '*/real/*=8' (validation's are unweighted)"})

    def __post_init__(self):
        problems = []
        if self.windows_per_segment < 1:
            problems.append("windows_per_segment >= 1")
        if not all(0 <= f <= 1 for f in (self.positive_fraction, self.hard_fraction, self.easy_fraction)):
            problems.append("positive_fraction, hard_fraction and easy_fraction lie in [0, 1]")
        if self.hard_fraction + self.easy_fraction > 1:
            problems.append("hard_fraction + easy_fraction <= 1 (the rest are other-segment negatives)")
        if not 1 <= self.hard_shift_min <= self.hard_shift_max < self.easy_shift_max:
            problems.append("1 <= hard_shift_min <= hard_shift_max < easy_shift_max")
        for rule in self.source_weights:
            try:
                parse_weight(rule)
            except ValueError as error:
                problems.append(str(error))
        if problems:
            raise ValueError("PairConfig: " + "; ".join(problems))


@functools.lru_cache(maxsize=256)  # read at every segment the stream admits: parsed once per rule
def parse_weight(rule: str) -> tuple[str, int]:
    """'GLOB=K' -> (GLOB, K), K a whole number >= 1 (the last '=' splits, so a glob may hold one)."""
    glob, equals, weight = rule.rpartition("=")
    if not equals or not glob or not weight.isdigit() or int(weight) < 1:
        raise ValueError(f"--source-weights {rule!r}: write GLOB=K with K a whole number >= 1, e.g. '*/real/*=8'")
    return glob, int(weight)


def heaviest_weight(rules: tuple[str, ...]) -> int:
    """The largest K of the rules (1 without any): a segment draws at most that many times its pairs."""
    return max((parse_weight(rule)[1] for rule in rules), default=1)


def source_weight(source: str, rules: tuple[str, ...]) -> int:
    """The weight of a segment of video `source` (its URI as preprocessing recorded it): the K of the first rule
    whose glob matches, else 1."""
    for rule in rules:
        glob, weight = parse_weight(rule)
        if fnmatch.fnmatchcase(source, glob):
            return weight
    return 1


# --- drawing a segment's windows ---------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Windows:
    """The pairs drawn from one segment, one entry per pair (N of them).

    kinds    int8  [N]  index into KINDS
    starts   int64 [N]  first frame of the face window
    shifts   int64 [N]  frames from the face window to the audio window; OTHER_SEGMENT_SHIFT for other audio
    columns  int64 [N]  first mel column of the audio window, in the segment's mel or, for kind other, the
                        other segment's
    """

    kinds: np.ndarray
    starts: np.ndarray
    shifts: np.ndarray
    columns: np.ndarray

    def __len__(self) -> int:
        return len(self.kinds)

    @property
    def other(self) -> np.ndarray:
        return self.kinds == _OTHER


def draw_windows(segment: Segment, config: PairConfig, clock: Clock, rng: np.random.Generator,
                 other: Segment | None) -> Windows:
    """`draw_window_arrays` for a decoded segment; `other`: a segment of another video for other-audio negatives
    (only its key and mel are used), or None."""
    return draw_window_arrays(segment.num_frames, _usable_columns(segment, other, clock), config, clock, rng)


def draw_window_arrays(frames: int, other_columns: int, config: PairConfig, clock: Clock,
                       rng: np.random.Generator, weight: int = 1) -> Windows:
    """Up to `weight` x `windows_per_segment` pairs of a segment of `frames` frames (see the module docstring for
    the kinds).

    `other_columns`: how many audio windows another video's segment offers for other-audio negatives (0: none).
    Each pair draws whether it is positive, its kind, then |shift| among the sizes that fit the segment, its
    sign, and the start among those that keep both windows inside: the same as redrawing until they fit,
    without the loop. Other-audio pairs draw a start and a column of the other segment's mel instead.
    """
    room = frames - clock.window_frames  # the largest |shift| and the last start
    if room < 0:
        return _empty_windows()
    count = config.windows_per_segment * weight
    positive = rng.random(count) < config.positive_fraction
    u = rng.random(count)
    drawn = np.where(u < config.hard_fraction, _HARD,
                     np.where(u < config.hard_fraction + config.easy_fraction, _EASY, _OTHER))
    fitting = np.array([_NONE, *(_fitting_kind(kind, room, config, other_columns > 0) for kind in KINDS[1:])])
    kinds = np.where(positive, _POSITIVE, fitting[drawn])
    kinds = kinds[kinds != _NONE].astype(np.int8)

    low, high = _shift_bounds(config, room)
    size = rng.integers(low[kinds], high[kinds] + 1)  # 0 for positives and other-audio pairs
    shifts = size * (2 * rng.integers(0, 2, len(kinds)) - 1)
    starts = rng.integers(np.maximum(0, -shifts), room - np.maximum(0, shifts) + 1)
    columns = clock.mel_column(starts + shifts)
    is_other = kinds == _OTHER
    if is_other.any():
        columns = np.where(is_other, rng.integers(0, max(other_columns, 1), len(kinds)), columns)
        shifts = np.where(is_other, OTHER_SEGMENT_SHIFT, shifts)
    return Windows(kinds, starts.astype(np.int64), shifts.astype(np.int64), columns.astype(np.int64))


def sample_pairs(segment: Segment, config: PairConfig, clock: Clock, rng: np.random.Generator,
                 other: Segment | None) -> list[dict]:
    """The pairs of `draw_windows` as one dict each, for inspection and tests (the stream never builds these).

    Each pair: faces uint8 [T, S, S, 3], mel float32 [F, W], label, shift, key and start (the face window's
    first frame), kind, and mel_key / mel_column (where its mel was cut from).
    """
    windows = draw_windows(segment, config, clock, rng, other)
    faces, mels = cut_windows(segment, other, windows, clock)
    return [{"faces": faces[i], "mel": mels[i], "label": 1.0 if kind == _POSITIVE else 0.0,
             "shift": int(windows.shifts[i]), "key": segment.key, "start": int(windows.starts[i]),
             "kind": KINDS[kind], "mel_key": other.key if kind == _OTHER else segment.key,
             "mel_column": int(windows.columns[i])}
            for i, kind in enumerate(windows.kinds.tolist())]


def _empty_windows() -> Windows:
    return Windows(np.empty(0, np.int8), *(np.empty(0, np.int64) for _ in range(3)))


def _usable_columns(segment: Segment, other: Segment | None, clock: Clock) -> int:
    """How many audio windows `other` offers (0: it cannot serve: absent, the same segment, or too short)."""
    if other is None or other.key == segment.key:
        return 0
    return audio_windows(other.mel.shape[1], clock)


def audio_windows(columns: int, clock: Clock) -> int:
    """How many mel windows a segment of `columns` mel columns offers."""
    return max(columns - clock.mel_window + 1, 0)


def _fitting_kind(kind: str, room: int, config: PairConfig, has_other: bool) -> int:
    for candidate in FALLBACKS[kind]:
        if candidate == OTHER and has_other:
            return _OTHER
        if candidate != OTHER and room >= _shift_range(candidate, config)[0]:
            return KINDS.index(candidate)
    return _NONE


def _shift_range(kind: str, config: PairConfig) -> tuple[int, int]:
    """Smallest and largest |shift| of a kind, in frames."""
    return (config.hard_shift_min, config.hard_shift_max) if kind == HARD else \
        (config.hard_shift_max + 1, config.easy_shift_max)


def _shift_bounds(config: PairConfig, room: int) -> tuple[np.ndarray, np.ndarray]:
    """Smallest and largest |shift| per kind code that fit a segment with `room` frames to spare."""
    low = np.array([0, config.hard_shift_min, config.hard_shift_max + 1, 0])
    high = np.minimum(np.array([0, config.hard_shift_max, config.easy_shift_max, 0]), room)
    return low, high


def cut_windows(segment: Segment, other: Segment | None, windows: Windows, clock: Clock,
         faces_out: np.ndarray | None = None, mels_out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The face and mel windows of `windows`, copied out of the segment (into `faces_out` / `mels_out` if given).

    Copies, not views: a view would keep the whole decoded segment alive while its pairs wait to be batched.
    """
    frames = np.add.outer(windows.starts, np.arange(clock.window_frames))  # [N, T]
    _check_inside(frames, segment.num_frames, "face window", segment.key)
    # mode="clip" lets numpy write straight into `out` (mode="raise" buffers it); the check above is the guard.
    faces = np.take(segment.faces, frames, axis=0, out=faces_out, mode="clip")
    mels = np.empty((len(windows), segment.mel.shape[0], clock.mel_window), segment.mel.dtype) \
        if mels_out is None else mels_out
    for audio, rows in ((segment, ~windows.other), (other, windows.other)):
        if rows.any():
            columns = np.add.outer(windows.columns[rows], np.arange(clock.mel_window))  # [n, W]
            _check_inside(columns, audio.mel.shape[1], "mel window", audio.key)
            mels[rows] = np.moveaxis(audio.mel[:, columns], 1, 0)  # [F, n, W] -> [n, F, W]
    return faces, mels


def _check_inside(index: np.ndarray, length: int, what: str, key: str) -> None:
    # numpy would silently clip or wrap past the end; a short window is a bug, never a sample.
    if index.size and (index.min() < 0 or index.max() >= length):
        raise IndexError(f"{what} [{index.min()}, {index.max() + 1}) outside {key} of length {length}")


