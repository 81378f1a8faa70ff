"""Batches of training pairs streamed from shards: segments in, windows drawn (`model.loader.windows`), batches out.

All of a segment's pairs are drawn at once, as arrays (`draw_windows`), and their windows are copied straight
from the decoded segment into a pool of waiting pairs; a batch is `batch_size` pairs taken at random from
the pool once it holds `batch_size + shuffle_buffer` of them, so a batch mixes pairs of many segments. No
per-pair Python object is built on the way.

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

import numpy as np
import torch

from model.loader.windows import KINDS, POSITIVE_CODE, PairConfig, Windows, cut_windows, draw_windows
from pipelines.core.clock import Clock
from pipelines.core.storage import StorageConfig
from pipelines.shards.format import clock_json, sample_clock
from pipelines.shards.reader import Segment, iter_segments, shards_holding

__all__ = ["PairBatches", "PairStream", "to_torch"]

AUDIO_BANK_VIDEOS = 16  # other-video audio is drawn from the latest segment of this many recent videos

# Each stream of randomness has its own SeedSequence entropy [seed, purpose, ...ids], so none repeats another;
# seed + epoch + rank folded into one number would give rank 1 in pass 0 the pairs of rank 0 in pass 1.
_SHARD_ORDER, _PAIRS, _SHUFFLE = 0, 1, 2


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

    def add(self, segment: Segment, other: Segment | None, windows: Windows, clock: Clock) -> None:
        count = len(windows)
        if self.size + count > self.capacity:
            raise ValueError(f"PairPool: {count} more pairs overflow a pool of {self.capacity} holding {self.size}")
        if self.arrays is None:
            self.arrays = {"faces": np.empty((self.capacity, clock.window_frames, *segment.faces.shape[1:]),
                                             segment.faces.dtype),
                           "mels": np.empty((self.capacity, segment.mel.shape[0], clock.mel_window), np.float32),
                           "labels": np.empty(self.capacity, np.float32),
                           "shifts": np.empty(self.capacity, np.int64)}
        elif self.arrays["faces"].shape[2:] != segment.faces.shape[1:] or \
                self.arrays["mels"].shape[1] != segment.mel.shape[0]:
            raise ValueError(f"segment {segment.key}: crops {segment.faces.shape[1:]} and {segment.mel.shape[0]} "
                             f"mel bins, unlike the stream's first segment ({self.arrays['faces'].shape[2:]}, "
                             f"{self.arrays['mels'].shape[1]})")
        window = slice(self.size, self.size + count)
        cut_windows(segment, other, windows, clock, self.arrays["faces"][window], self.arrays["mels"][window])
        self.arrays["labels"][window] = windows.kinds == POSITIVE_CODE
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
    # Private, and deliberately so: torch has no public way to allocate straight into shared memory.
    # `Tensor.share_memory_()` (and `UntypedStorage.share_memory_()`) allocate a new shared segment and copy the
    # existing storage into it, which is the copy this avoids; so would pickling an ordinary tensor out of a
    # worker (torch.multiprocessing's reduce_storage shares it the same way). `torch.from_file(shared=True)` maps
    # a file of ours that torch neither shares by fd nor cleans up. `_new_shared` follows the sharing strategy in
    # use and is what DataLoader's own default_collate calls in workers (torch/utils/data/_utils/collate.py).
    storage = torch.UntypedStorage._new_shared(int(np.prod(shape)) * dtype.itemsize)
    return torch.empty(0, dtype=torch.from_numpy(np.empty(0, dtype)).dtype).set_(storage, 0, shape)


class PairStream:
    """Batches of pairs for one rank (see the module docstring for the batch), read from `shard_uris`.

    `shard_uris`: the full list, the same on every reader; rank and world_size pick this reader's share
    (`pipelines.shards.reader.split_shards`) of the shards that hold `split` (by their stats json). Readers are
    all the processes that read: inside DataLoader workers pass rank = ddp_rank * num_workers + worker_id
    and world_size = ddp_world_size * num_workers (PairStream does not look at the worker itself).
    repeat=True: pass after pass over the shards, forever; the trainer decides the number of steps, so every
    rank runs the same number and none waits at the end of an epoch for the others. Each pass reshuffles
    the shard order (the same on all ranks, so their shares stay disjoint) and draws new pairs (per rank).
    repeat=False: one pass, the last batch possibly short; with a fixed seed the same batches on every
    call (validation). Ranks may then get different numbers of batches: sum metrics across ranks after the
    loop, with no per-batch collectives.
    `clock`: the expert's (its window and rates); every segment must be on it. `seed`: an int or a tuple of them
    (a run's seed and the step it resumes from), the entropy of every random stream here.
    `counters`: the reader's counts (shards, bad_shards, bad_samples, ignored_members, ...) and pairs by
    kind (pairs_positive, pairs_hard, pairs_easy, pairs_other), reset at each iter(); inside DataLoader
    workers they stay in the workers.
    """

    def __init__(self, shard_uris: list[str], storage: StorageConfig, split: str | None, config: PairConfig,
                 clock: Clock, batch_size: int, seed: int | tuple[int, ...], rank: int = 0, world_size: int = 1,
                 repeat: bool = True):
        if not shard_uris:
            raise ValueError("PairStream: no shards given (list them with pipelines.shards.reader.list_shards)")
        seed = (seed,) if isinstance(seed, int) else tuple(seed)
        if batch_size < 1 or min(seed) < 0 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"PairStream: need batch_size >= 1, seed >= 0 and 0 <= rank < world_size; got "
                             f"batch_size={batch_size}, seed={seed}, rank={rank}, world_size={world_size}")
        self.shard_uris = list(shard_uris)
        self.storage, self.split, self.config, self.clock = storage, split, config, clock
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
            pool.add(segment, other, windows, self.clock)
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
                _check_clock(segment, self.clock)
                other = bank.pick(rng, segment)
                windows = draw_windows(segment, self.config, self.clock, rng, other)
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
                 clock: Clock, batch_size: int, seed: int | tuple[int, ...], rank: int = 0, world_size: int = 1,
                 repeat: bool = True):
        self.stream = PairStream(shard_uris, storage, split, config, clock, batch_size, seed, rank, world_size,
                                 repeat)  # validates the arguments here, in the trainer, not in a loader process

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        mine = self.stream
        info = torch.utils.data.get_worker_info()
        processes, index = (info.num_workers, info.id) if info else (1, 0)
        stream = PairStream(mine.shard_uris, mine.storage, mine.split, mine.config, mine.clock, mine.batch_size,
                            mine.seed, rank=mine.rank * processes + index, world_size=mine.world_size * processes,
                            repeat=mine.repeat)
        return stream.shared_batches() if info else map(to_torch, iter(stream))


def to_torch(batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """The batch as tensors sharing its memory; faces stay uint8 (a quarter of float32 to move to a GPU)."""
    return {name: torch.from_numpy(array) for name, array in batch.items()}


def _check_clock(segment: Segment, clock: Clock) -> None:
    written = clock_json(sample_clock(segment.meta))
    if written != clock_json(clock):
        raise ValueError(f"segment {segment.key} was written on the clock {written}; the expert's clock is "
                         f"{clock_json(clock)}: preprocess with the expert's clock")


def _rng(seed: tuple[int, ...], purpose: int, *ids: int) -> np.random.Generator:
    return np.random.default_rng([*seed, purpose, *ids])
