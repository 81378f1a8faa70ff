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

All of a segment's pairs are drawn at once, as arrays (`draw_windows`), and their windows are copied straight
from the decoded segment into a pool of waiting pairs; a batch is `batch_size` pairs taken at random from
the pool once it holds `batch_size + shuffle_buffer` of them, so a batch mixes pairs of many segments. No
per-pair Python object is built on the way (`sample_pairs` builds them, for inspection and tests).

Batches of `PairStream` (legend: B pairs, T window_frames, S crop side, F mel bins, W mel_window):

    faces   uint8   [B, T, S, S, 3]  RGB crops, as stored; the model converts (on the accelerator)
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

__all__ = ["OTHER_SEGMENT_SHIFT", "PairBatches", "PairConfig", "PairStream", "Windows", "draw_windows", "mel_start",
           "sample_pairs", "to_torch"]

OTHER_SEGMENT_SHIFT = 10**6  # no shift relates the audio of another video to these faces
POSITIVE, HARD, EASY, OTHER = "positive", "hard", "easy", "other"
KINDS = (POSITIVE, HARD, EASY, OTHER)  # a pair's kind as a code: its index here
_POSITIVE, _HARD, _EASY, _OTHER, _NONE = 0, 1, 2, 3, -1
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
    shuffle_buffer: int = 64  # pairs left waiting when a batch is drawn: a batch is random among B + this many

    def __post_init__(self):
        problems = []
        if self.window_frames < 1 or self.video_fps <= 0 or self.mel_fps <= 0:
            problems.append("window_frames >= 1, video_fps > 0 and mel_fps > 0")
        elif abs(self.window_frames * self.mel_fps / self.video_fps - self.mel_window) > 1e-9:
            problems.append(f"window_frames * mel_fps / video_fps = "
                            f"{self.window_frames * self.mel_fps / self.video_fps:g} mel columns: choose a "
                            f"window_frames that spans a whole number of them")
        if self.windows_per_segment < 1 or self.shuffle_buffer < 0:
            problems.append("windows_per_segment >= 1 and shuffle_buffer >= 0")
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


def mel_start(frame, config: PairConfig):
    """The first mel column of video frame `frame` (an int or an array), counted from the segment's first frame."""
    return mel_columns(frame, config.video_fps, config.mel_fps)


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


def draw_windows(segment: Segment, config: PairConfig, rng: np.random.Generator,
                 other: Segment | None) -> Windows:
    """Up to `windows_per_segment` pairs of `segment`, as arrays (see the module docstring for the kinds).

    `other`: a segment of another video for other-audio negatives (only its key and mel are used), or None.
    Each pair draws whether it is positive, its kind, then |shift| among the sizes that fit the segment, its
    sign, and the start among those that keep both windows inside: the same as redrawing until they fit,
    without the loop. Other-audio pairs draw a start and a column of the other segment's mel instead.
    """
    room = segment.num_frames - config.window_frames  # the largest |shift| and the last start
    if room < 0:
        return _empty_windows()
    other_columns = _usable_columns(segment, other, config)
    count = config.windows_per_segment
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
    columns = mel_start(starts + shifts, config)
    is_other = kinds == _OTHER
    if is_other.any():
        columns = np.where(is_other, rng.integers(0, max(other_columns, 1), len(kinds)), columns)
        shifts = np.where(is_other, OTHER_SEGMENT_SHIFT, shifts)
    return Windows(kinds, starts.astype(np.int64), shifts.astype(np.int64), columns.astype(np.int64))


def sample_pairs(segment: Segment, config: PairConfig, rng: np.random.Generator,
                 other: Segment | None) -> list[dict]:
    """The pairs of `draw_windows` as one dict each, for inspection and tests (the stream never builds these).

    Each pair: faces uint8 [T, S, S, 3], mel float32 [F, W], label, shift, key and start (the face window's
    first frame), kind, and mel_key / mel_column (where its mel was cut from).
    """
    windows = draw_windows(segment, config, rng, other)
    faces, mels = _cut(segment, other, windows, config)
    return [{"faces": faces[i], "mel": mels[i], "label": 1.0 if kind == _POSITIVE else 0.0,
             "shift": int(windows.shifts[i]), "key": segment.key, "start": int(windows.starts[i]),
             "kind": KINDS[kind], "mel_key": other.key if kind == _OTHER else segment.key,
             "mel_column": int(windows.columns[i])}
            for i, kind in enumerate(windows.kinds.tolist())]


def _empty_windows() -> Windows:
    return Windows(np.empty(0, np.int8), *(np.empty(0, np.int64) for _ in range(3)))


def _usable_columns(segment: Segment, other: Segment | None, config: PairConfig) -> int:
    """How many audio windows `other` offers (0: it cannot serve: absent, the same segment, or too short)."""
    if other is None or other.key == segment.key:
        return 0
    return max(other.mel.shape[1] - config.mel_window + 1, 0)


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


def _cut(segment: Segment, other: Segment | None, windows: Windows, config: PairConfig,
         faces_out: np.ndarray | None = None, mels_out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The face and mel windows of `windows`, copied out of the segment (into `faces_out` / `mels_out` if given).

    Copies, not views: a view would keep the whole decoded segment alive while its pairs wait to be batched.
    """
    frames = np.add.outer(windows.starts, np.arange(config.window_frames))  # [N, T]
    _check_inside(frames, segment.num_frames, "face window", segment.key)
    # mode="clip" lets numpy write straight into `out` (mode="raise" buffers it); the check above is the guard.
    faces = np.take(segment.faces, frames, axis=0, out=faces_out, mode="clip")
    mels = np.empty((len(windows), segment.mel.shape[0], config.mel_window), segment.mel.dtype) \
        if mels_out is None else mels_out
    for audio, rows in ((segment, ~windows.other), (other, windows.other)):
        if rows.any():
            columns = np.add.outer(windows.columns[rows], np.arange(config.mel_window))  # [n, W]
            _check_inside(columns, audio.mel.shape[1], "mel window", audio.key)
            mels[rows] = np.moveaxis(audio.mel[:, columns], 1, 0)  # [F, n, W] -> [n, F, W]
    return faces, mels


def _check_inside(index: np.ndarray, length: int, what: str, key: str) -> None:
    # numpy would silently clip or wrap past the end; a short window is a bug, never a sample.
    if index.size and (index.min() < 0 or index.max() >= length):
        raise IndexError(f"{what} [{index.min()}, {index.max() + 1}) outside {key} of length {length}")


# --- the stream ------------------------------------------------------------------------------------------

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


class PairPool:
    """Pairs waiting to be batched, held in preallocated arrays: windows are copied in from their segment once,
    and out once into the batch that draws them. `capacity` pairs at most."""

    def __init__(self, capacity: int):
        self.capacity, self.size = capacity, 0
        self.arrays: dict[str, np.ndarray] | None = None  # faces, mels, labels, shifts; allocated at first add

    def __len__(self) -> int:
        return self.size

    def add(self, segment: Segment, other: Segment | None, windows: Windows, config: PairConfig) -> None:
        count = len(windows)
        if self.size + count > self.capacity:
            raise ValueError(f"PairPool: {count} more pairs overflow a pool of {self.capacity} holding {self.size}")
        if self.arrays is None:
            self.arrays = {"faces": np.empty((self.capacity, config.window_frames, *segment.faces.shape[1:]),
                                             segment.faces.dtype),
                           "mels": np.empty((self.capacity, segment.mel.shape[0], config.mel_window), np.float32),
                           "labels": np.empty(self.capacity, np.float32),
                           "shifts": np.empty(self.capacity, np.int64)}
        elif self.arrays["faces"].shape[2:] != segment.faces.shape[1:] or \
                self.arrays["mels"].shape[1] != segment.mel.shape[0]:
            raise ValueError(f"segment {segment.key}: crops {segment.faces.shape[1:]} and {segment.mel.shape[0]} "
                             f"mel bins, unlike the stream's first segment ({self.arrays['faces'].shape[2:]}, "
                             f"{self.arrays['mels'].shape[1]})")
        window = slice(self.size, self.size + count)
        _cut(segment, other, windows, config, self.arrays["faces"][window], self.arrays["mels"][window])
        self.arrays["labels"][window] = windows.kinds == _POSITIVE
        self.arrays["shifts"][window] = windows.shifts
        self.size += count

    def take(self, count: int, rng: np.random.Generator, shared: bool = False) -> dict:
        """`count` pairs at random, in random order, as a batch of fresh arrays; the pool keeps the rest.

        shared=True: the batch is torch tensors in shared memory, which a DataLoader worker hands to the
        main process as they are (fresh numpy arrays it would first copy into shared memory)."""
        picked = rng.choice(self.size, size=count, replace=False)
        batch = {}
        for name, array in self.arrays.items():
            if shared:
                batch[name] = _shared_tensor((count, *array.shape[1:]), array.dtype)
                np.take(array, picked, axis=0, out=batch[name].numpy(), mode="clip")  # picked < size: inside
            else:
                batch[name] = array[picked]
        # Close the holes below the new size with the pairs left above it (few: about count * rest / size).
        remaining = self.size - count
        taken = np.zeros(self.size, bool)
        taken[picked] = True
        holes, movers = np.flatnonzero(taken[:remaining]), remaining + np.flatnonzero(~taken[remaining:])
        for array in self.arrays.values():
            array[holes] = array[movers]
        self.size = remaining
        return batch


def _shared_tensor(shape: tuple[int, ...], dtype: np.dtype) -> torch.Tensor:
    """An uninitialised tensor allocated in shared memory (as DataLoader's own collate does in a worker)."""
    dtype = np.dtype(dtype)
    storage = torch.UntypedStorage._new_shared(int(np.prod(shape)) * dtype.itemsize)
    return torch.empty(0, dtype=torch.from_numpy(np.empty(0, dtype)).dtype).set_(storage, 0, shape)


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
        return self._batches(shared=False)

    def shared_batches(self) -> Iterator[dict[str, torch.Tensor]]:
        """The same batches as iter(), as torch tensors in shared memory (see `PairBatches`)."""
        self.counters.clear()
        return self._batches(shared=True)

    def _batches(self, shared: bool) -> Iterator[dict]:
        ready = self.batch_size + self.config.shuffle_buffer
        pool = PairPool(ready + self.config.windows_per_segment)
        rng = _rng(self.seed, _SHUFFLE, self.rank)
        for segment, other, windows in self._windows():
            pool.add(segment, other, windows, self.config)
            while len(pool) >= ready:  # more than once only when a segment gives more pairs than a batch holds
                yield pool.take(self.batch_size, rng, shared)
        while len(pool):
            yield pool.take(min(self.batch_size, len(pool)), rng, shared)

    def _windows(self) -> Iterator[tuple[Segment, Segment | None, Windows]]:
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
                other = bank.pick(rng, segment)
                windows = draw_windows(segment, self.config, rng, other)
                bank.add(segment)
                for code, count in enumerate(np.bincount(windows.kinds, minlength=len(KINDS)).tolist()):
                    if count:
                        self.counters[f"pairs_{KINDS[code]}"] = self.counters.get(f"pairs_{KINDS[code]}", 0) + count
                drawn += len(windows)
                if len(windows):
                    yield segment, other, windows
            self.counters["passes"] = self.counters.get("passes", 0) + 1
            if self.repeat and drawn == 0:
                # Repeating an empty pass would spin forever while the other ranks wait for this one.
                raise RuntimeError(f"PairStream: reader {self.rank} of {self.world_size} drew no pairs from "
                                   f"{len(shards)} shards of split {self.split!r} in a whole pass; "
                                   f"counters {self.counters}")


class PairBatches(torch.utils.data.IterableDataset):
    """This rank's pair batches for a torch DataLoader with `batch_size=None`, as dicts of tensors.

    Each loader process reads its own share of the data (reader rank * processes + process, of
    world_size * processes), so none repeats another's pairs; with no loader processes the rank reads alone.
    Inside a loader process batches are built straight in shared memory: the DataLoader passes them to the
    trainer without the copy it makes of any other batch (about 140 kB a pair of faces). The arguments are
    PairStream's.
    """

    def __init__(self, shard_uris: list[str], storage: StorageConfig, split: str | None, config: PairConfig,
                 batch_size: int, seed: int, rank: int = 0, world_size: int = 1, repeat: bool = True):
        PairStream(shard_uris, storage, split, config, batch_size, seed, rank, world_size, repeat)  # validates
        self.arguments = (list(shard_uris), storage, split, config, batch_size, seed, rank, world_size, repeat)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        shard_uris, storage, split, config, batch_size, seed, rank, world_size, repeat = self.arguments
        info = torch.utils.data.get_worker_info()
        processes, index = (info.num_workers, info.id) if info else (1, 0)
        stream = PairStream(shard_uris, storage, split, config, batch_size, seed, rank=rank * processes + index,
                            world_size=world_size * processes, repeat=repeat)
        return stream.shared_batches() if info else map(to_torch, iter(stream))


def collate(pairs: list[dict]) -> dict[str, np.ndarray]:
    """Pairs of `sample_pairs` as one batch, as `PairStream` yields it."""
    return {"faces": np.stack([p["faces"] for p in pairs]),
            "mels": np.stack([p["mel"] for p in pairs]),
            "labels": np.array([p["label"] for p in pairs], np.float32),
            "shifts": np.array([p["shift"] for p in pairs], np.int64)}


def to_torch(batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """The batch as tensors sharing its memory; faces stay uint8 (a quarter of float32 to move to a GPU)."""
    return {name: torch.from_numpy(array) for name, array in batch.items()}


def _rng(seed: int, purpose: int, *ids: int) -> np.random.Generator:
    return np.random.default_rng([seed, purpose, *ids])
