"""Training pairs for the sync expert: a window of faces and a window of mel, in sync (label 1) or not (0).

Every pair is cut from one decoded segment (`model.shard_reader.Segment`); many windows are drawn from each
segment, so shard I/O and the JPEG decode are paid once per `windows_per_segment` pairs. Kinds of pair
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
    other -> easy -> hard   (no other video's audio seen yet, as for the first segment of a stream)

and a negative for which nothing fits (a segment shorter than window + hard_shift_min frames, with no other
audio) is not drawn. Segments shorter than one window give no pairs.

Batches of `PairStream` (legend: B pairs, T window_frames, S crop side, F mel bins, W mel_window):

    faces   uint8   [B, T, S, S, 3]  RGB crops, as stored; the model converts
    mels    float32 [B, F, W]        log-mel, column 0 at the window's first frame (for positives)
    labels  float32 [B]              1.0 in sync, 0.0 not
    shifts  int64   [B]              the pair's shift in frames, OTHER_SEGMENT_SHIFT for other audio
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from model.config import mel_columns
from model.shard_reader import Segment, iter_segments, shards_holding
from pipelines.storage import StorageConfig

__all__ = ["OTHER_SEGMENT_SHIFT", "PairConfig", "PairStream", "mel_start", "sample_pairs", "to_torch"]

OTHER_SEGMENT_SHIFT = 10**6  # no shift relates the audio of another video to these faces
POSITIVE, HARD, EASY, OTHER = "positive", "hard", "easy", "other"
FALLBACKS = {HARD: (HARD, OTHER), EASY: (EASY, HARD, OTHER), OTHER: (OTHER, EASY, HARD)}
AUDIO_BANK_VIDEOS = 16  # other-video audio is drawn from the latest segment of this many recent videos

# Each stream of randomness has its own SeedSequence entropy [seed, purpose, ...ids], so none repeats another;
# seed + epoch + rank folded into one number would give rank 1 in pass 0 the pairs of rank 0 in pass 1.
_SHARD_ORDER, _PAIRS, _SHUFFLE = 0, 1, 2


@dataclass(frozen=True)
class PairConfig:
    window_frames: int = 5
    video_fps: int = 25
    mel_fps: float = 80.0
    windows_per_segment: int = 16  # many windows per decoded segment: I/O and JPEG decode amortised
    positive_fraction: float = 0.5
    hard_shift_min: int = 2  # frames; hard negatives: audio shifted by a few frames
    hard_shift_max: int = 6
    easy_shift_max: int = 75  # frames (3 s); easy negatives: far shifts within the segment
    hard_fraction: float = 0.5  # of the negatives
    easy_fraction: float = 0.25  # of the negatives; the rest: audio from another segment
    shuffle_buffer: int = 64  # pairs mixed across segments before batching

    def __post_init__(self):
        problems = []
        if self.window_frames < 1 or self.video_fps <= 0 or self.mel_fps <= 0:
            problems.append("window_frames >= 1, video_fps > 0 and mel_fps > 0")
        elif abs(self.window_frames * self.mel_fps / self.video_fps - self.mel_window) > 1e-9:
            problems.append(f"window_frames * mel_fps / video_fps = "
                            f"{self.window_frames * self.mel_fps / self.video_fps:g} mel columns: choose a "
                            f"window_frames that spans a whole number of them")
        if self.windows_per_segment < 1 or self.shuffle_buffer < 1:
            problems.append("windows_per_segment >= 1 and shuffle_buffer >= 1 (1: no mixing)")
        if not all(0 <= f <= 1 for f in (self.positive_fraction, self.hard_fraction, self.easy_fraction)):
            problems.append("positive_fraction, hard_fraction and easy_fraction lie in [0, 1]")
        if self.hard_fraction + self.easy_fraction > 1:
            problems.append("hard_fraction + easy_fraction <= 1 (the rest are other-segment negatives)")
        if not 1 <= self.hard_shift_min <= self.hard_shift_max < self.easy_shift_max:
            problems.append("1 <= hard_shift_min <= hard_shift_max < easy_shift_max")
        if problems:
            raise ValueError("PairConfig: " + "; ".join(problems))

    @property
    def mel_window(self) -> int:
        """Mel columns spanned by `window_frames` video frames (16 at 5 frames, 25 fps, 80 mel/s)."""
        return mel_columns(self.window_frames, self.video_fps, self.mel_fps)


def mel_start(frame: int, config: PairConfig) -> int:
    """The first mel column of video frame `frame`, both counted from the segment's first frame."""
    return mel_columns(frame, config.video_fps, config.mel_fps)


def sample_pairs(segment: Segment, config: PairConfig, rng: np.random.Generator,
                 other: Segment | None) -> list[dict]:
    """Up to `windows_per_segment` pairs drawn from `segment` (see the module docstring for the kinds).

    `other`: a segment of another video for other-audio negatives; only its key and mel are used, None
    when there is none. Each pair: faces uint8 [T, S, S, 3], mel float32 [F, W], label, shift, key and
    start (the face window's first frame), kind, and mel_key / mel_column (where its mel was cut from).
    """
    if segment.num_frames < config.window_frames:
        return []
    if other is not None and (other.key == segment.key or other.mel.shape[1] < config.mel_window):
        other = None
    pairs = []
    for _ in range(config.windows_per_segment):
        if rng.random() < config.positive_fraction:
            pairs.append(_shifted_pair(segment, config, rng, POSITIVE, 0, 0))
            continue
        kind = _fitting_kind(_drawn_kind(config, rng), segment.num_frames, config, other is not None)
        if kind == OTHER:
            pairs.append(_other_pair(segment, other, config, rng))
        elif kind is not None:
            low, high = _shift_range(kind, config)
            pairs.append(_shifted_pair(segment, config, rng, kind, low, high))
    return pairs


def _drawn_kind(config: PairConfig, rng: np.random.Generator) -> str:
    u = rng.random()
    if u < config.hard_fraction:
        return HARD
    return EASY if u < config.hard_fraction + config.easy_fraction else OTHER


def _fitting_kind(kind: str, frames: int, config: PairConfig, has_other: bool) -> str | None:
    for candidate in FALLBACKS[kind]:
        if candidate == OTHER and has_other:
            return OTHER
        if candidate != OTHER and frames - config.window_frames >= _shift_range(candidate, config)[0]:
            return candidate
    return None


def _shift_range(kind: str, config: PairConfig) -> tuple[int, int]:
    """Smallest and largest |shift| of a kind, in frames."""
    return (config.hard_shift_min, config.hard_shift_max) if kind == HARD else \
        (config.hard_shift_max + 1, config.easy_shift_max)


def _shifted_pair(segment: Segment, config: PairConfig, rng: np.random.Generator, kind: str,
                  low: int, high: int) -> dict:
    """Faces at `start`, audio of the same segment at `start + shift`, low <= |shift| <= high.

    |shift| is drawn among the sizes that fit the segment (the caller made sure one does), then the start
    among those that keep both windows inside it: the same as redrawing until they fit, without the loop.
    """
    room = segment.num_frames - config.window_frames  # the largest |shift| and the last start
    size = int(rng.integers(low, min(high, room) + 1))
    shift = size * int(rng.choice((-1, 1))) if size else 0
    start = int(rng.integers(max(0, -shift), room - max(0, shift) + 1))
    column = mel_start(start + shift, config)
    return _pair(segment, start, config, kind, shift, segment, column)


def _other_pair(segment: Segment, other: Segment, config: PairConfig, rng: np.random.Generator) -> dict:
    start = int(rng.integers(0, segment.num_frames - config.window_frames + 1))
    column = int(rng.integers(0, other.mel.shape[1] - config.mel_window + 1))
    return _pair(segment, start, config, OTHER, OTHER_SEGMENT_SHIFT, other, column)


def _pair(segment: Segment, start: int, config: PairConfig, kind: str, shift: int, audio: Segment,
          column: int) -> dict:
    # Copies, not views: a view would keep the whole decoded segment alive while the pair waits in the
    # shuffle buffer.
    return {"faces": _window(segment.faces, 0, start, config.window_frames).copy(),
            "mel": _window(audio.mel, 1, column, config.mel_window).copy(),
            "label": 1.0 if kind == POSITIVE else 0.0, "shift": shift, "key": segment.key, "start": start,
            "kind": kind, "mel_key": audio.key, "mel_column": column}


def _window(array: np.ndarray, axis: int, begin: int, width: int) -> np.ndarray:
    # numpy would silently return a shorter slice past the end; a short window is a bug, never a sample.
    if begin < 0 or begin + width > array.shape[axis]:
        raise IndexError(f"window [{begin}, {begin + width}) outside axis {axis} of length {array.shape[axis]}")
    return array[(slice(None),) * axis + (slice(begin, begin + width),)]


class AudioBank:
    """The latest segment's mel of each of the last few videos seen: the audio of other-video negatives."""

    def __init__(self, videos: int = AUDIO_BANK_VIDEOS):
        self.videos = videos
        self.entries: OrderedDict[str, Segment] = OrderedDict()

    def add(self, segment: Segment) -> None:
        # Keep the mel only: a bank of decoded faces would hold hundreds of megabytes.
        empty = np.empty((0, *segment.faces.shape[1:]), segment.faces.dtype)
        self.entries[segment.source_key] = Segment(segment.key, segment.source_key, segment.speaker,
                                                   segment.split, empty, segment.mel)
        self.entries.move_to_end(segment.source_key)
        while len(self.entries) > self.videos:
            self.entries.popitem(last=False)

    def pick(self, rng: np.random.Generator, segment: Segment) -> Segment | None:
        candidates = [audio for source, audio in self.entries.items() if source != segment.source_key]
        return candidates[int(rng.integers(len(candidates)))] if candidates else None


class PairStream:
    """Batches of pairs for one rank (see the module docstring for the batch), read from `shard_uris`.

    `shard_uris`: the full list, the same on every reader; rank and world_size pick this reader's share
    (`model.shard_reader.split_shards`) of the shards that hold `split` (by their stats json). Readers are
    all the processes that read: inside DataLoader workers pass rank = ddp_rank * num_workers + worker_id
    and world_size = ddp_world_size * num_workers (PairStream does not look at the worker itself).
    repeat=True: pass after pass over the shards, forever; the trainer decides the number of steps, so every
    rank runs the same number and none waits at the end of an epoch for the others. Each pass reshuffles
    the shard order (the same on all ranks, so their shares stay disjoint) and draws new pairs (per rank).
    repeat=False: one pass, the last batch possibly short; with a fixed seed the same batches on every
    call (validation). Ranks may then get different numbers of batches: sum metrics across ranks after the
    loop, with no per-batch collectives.
    `counters`: the reader's counts (shards, bad_shards, bad_samples, ignored_members, ...) and pairs by
    kind (pairs_positive, pairs_hard, pairs_easy, pairs_other), reset at each iter(); inside DataLoader
    workers they stay in the workers.
    """

    def __init__(self, shard_uris: list[str], storage: StorageConfig, split: str | None, config: PairConfig,
                 batch_size: int, seed: int, rank: int = 0, world_size: int = 1, repeat: bool = True):
        if not shard_uris:
            raise ValueError("PairStream: no shards given (list them with model.shard_reader.list_shards)")
        if batch_size < 1 or seed < 0 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"PairStream: need batch_size >= 1, seed >= 0 and 0 <= rank < world_size; got "
                             f"batch_size={batch_size}, seed={seed}, rank={rank}, world_size={world_size}")
        self.shard_uris = list(shard_uris)
        self.storage, self.split, self.config = storage, split, config
        self.batch_size, self.seed, self.rank, self.world_size, self.repeat = batch_size, seed, rank, world_size, repeat
        self.counters: dict = {}
        self._split_shards: list[str] | None = None  # the shards holding `split`, found at the first iter()

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        self.counters.clear()
        pairs = self._pairs()
        shuffled = _shuffled(pairs, self.config.shuffle_buffer, _rng(self.seed, _SHUFFLE, self.rank))
        return _batches(shuffled, self.batch_size)

    def _pairs(self) -> Iterator[dict]:
        if self._split_shards is None:
            self._split_shards = shards_holding(self.shard_uris, self.storage, self.split)
        candidates = self._split_shards
        bank = AudioBank()
        for epoch in itertools.count() if self.repeat else range(1):
            order = _rng(self.seed, _SHARD_ORDER, epoch).permutation(len(candidates))
            shards = [candidates[i] for i in order]
            rng = _rng(self.seed, _PAIRS, self.rank, epoch)
            drawn = 0
            for segment in iter_segments(shards, self.storage, self.split, self.rank, self.world_size,
                                         self.counters):
                pairs = sample_pairs(segment, self.config, rng, bank.pick(rng, segment))
                bank.add(segment)
                for pair in pairs:
                    _tally(self.counters, f"pairs_{pair['kind']}")
                drawn += len(pairs)
                yield from pairs
            _tally(self.counters, "passes")
            if self.repeat and drawn == 0:
                # Repeating an empty pass would spin forever while the other ranks wait for this one.
                raise RuntimeError(f"PairStream: reader {self.rank} of {self.world_size} drew no pairs from "
                                   f"{len(shards)} shards of split {self.split!r} in a whole pass; "
                                   f"counters {self.counters}")


def collate(pairs: list[dict]) -> dict[str, np.ndarray]:
    return {"faces": np.stack([p["faces"] for p in pairs]),
            "mels": np.stack([p["mel"] for p in pairs]),
            "labels": np.array([p["label"] for p in pairs], np.float32),
            "shifts": np.array([p["shift"] for p in pairs], np.int64)}


def to_torch(batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """The batch as tensors sharing its memory; faces stay uint8 (a quarter of float32 to move to a GPU)."""
    return {name: torch.from_numpy(array) for name, array in batch.items()}


def _shuffled(items: Iterator[dict], size: int, rng: np.random.Generator) -> Iterator[dict]:
    """Items in random order within a window of `size`, so a batch mixes pairs of several segments."""
    buffer: list[dict] = []
    for item in items:
        buffer.append(item)
        if len(buffer) >= size:
            yield _pop_random(buffer, rng)
    while buffer:
        yield _pop_random(buffer, rng)


def _pop_random(buffer: list, rng: np.random.Generator):
    i = int(rng.integers(len(buffer)))
    buffer[i], buffer[-1] = buffer[-1], buffer[i]
    return buffer.pop()


def _batches(pairs: Iterator[dict], batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    batch: list[dict] = []
    for pair in pairs:
        batch.append(pair)
        if len(batch) == batch_size:
            yield collate(batch)
            batch = []
    if batch:
        yield collate(batch)


def _tally(counters: dict, name: str) -> None:
    counters[name] = counters.get(name, 0) + 1


def _rng(seed: int, purpose: int, *ids: int) -> np.random.Generator:
    return np.random.default_rng([seed, purpose, *ids])
