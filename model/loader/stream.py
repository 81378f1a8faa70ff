"""Batches of training pairs streamed from shards: segments decoded by loader processes, held in a pool on the
training device (`model.loader.pool`), pairs drawn there by tensor indexing.

    shards --(SegmentSource: read, decode, lower half; in DataLoader processes)--> segments
           --(SegmentPool: admit, draw windows as tickets; on the device)--> batches

Batches of `PairStream` (legend: B pairs, T window_frames, S crop side, F mel bins, W mel_window), the first
three on the stream's device, the rest on the host:

    faces     uint8   [B, T, S/2, S, 3]  lower halves of the RGB crops (`SyncExpert.prepare_lower_faces`)
    mels      float32 [B, F, W]          log-mel, column 0 at the window's first frame (for positives)
    labels    float32 [B]                1.0 in sync, 0.0 not
    shifts    int64   [B]                the pair's shift in frames, OTHER_SEGMENT_SHIFT for other audio
    kinds     int8    [B]                index into `model.loader.windows.KINDS`
    starts    int64   [B]                first frame of the face window in its segment
    columns   int64   [B]                first mel column of the audio window in its (or the other) segment
    keys, mel_keys   list[str]           the segments the faces and the audio come from
    segments  int                        distinct segments among the batch's faces
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator

import numpy as np
import torch

from model.loader.pool import PoolConfig, SegmentPool, kind_counts, pool_bytes
from model.loader.windows import PairConfig, source_weight
from pipelines.core.clock import Clock
from pipelines.core.storage import StorageConfig
from pipelines.shards.format import clock_json, sample_clock, sample_crop
from pipelines.shards.reader import Segment, iter_segments, shards_holding

__all__ = ["PairStream", "SegmentSource"]

# Each stream of randomness has its own SeedSequence entropy [seed, purpose, ...ids], so none repeats another;
# seed + epoch + rank folded into one number would give rank 1 in pass 0 the pairs of rank 0 in pass 1.
_SHARD_ORDER, _PAIRS, _DRAWS = 0, 1, 2
PREFETCH_SEGMENTS = 8  # per loader process: a few steps' worth at the default windows per segment


class SegmentSource(torch.utils.data.IterableDataset):
    """Decoded segments of one rank's share of `shard_uris`, for a DataLoader with `batch_size=None`.

    Each loader process reads its own share (reader rank * processes + process, of world_size * processes), so
    none repeats another's; with no loader processes the rank reads alone. repeat=True: pass after pass,
    forever, the shard order reshuffled each pass (the same on all ranks, so their shares stay disjoint).
    Items: faces (lower halves, uint8 [T, S/2, S, 3], built in shared memory inside a loader process so the
    DataLoader hands them over without a copy), mel (float32 [C, F]: column-major, as the pool stores it),
    video (a number for the source video), key, source (its URI), reader, passes (completed passes of this
    reader) and counters (the reader's counts so far: shards, bad_shards, bad_samples, ignored_members, segments,
    short_segments, ...).
    """

    def __init__(self, shard_uris: list[str], storage: StorageConfig, split: str | None, clock: Clock,
                 seed: tuple[int, ...], rank: int = 0, world_size: int = 1, repeat: bool = True):
        if not shard_uris:
            raise ValueError("no shards given (list them with pipelines.shards.reader.list_shards)")
        if min(seed) < 0 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need seed >= 0 and 0 <= rank < world_size; got seed={seed}, rank={rank}, "
                             f"world_size={world_size}")
        self.shard_uris, self.storage, self.split, self.clock = list(shard_uris), storage, split, clock
        self.seed, self.rank, self.world_size, self.repeat = seed, rank, world_size, repeat
        self._split_shards: list[str] | None = None  # the shards holding `split`, found at the first iter()

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        processes, index = (info.num_workers, info.id) if info else (1, 0)
        return self._segments(self.rank * processes + index, self.world_size * processes, shared=info is not None)

    def _segments(self, reader: int, readers: int, shared: bool) -> Iterator[dict]:
        if self._split_shards is None:
            self._split_shards = shards_holding(self.shard_uris, self.storage, self.split)
        candidates, counters = self._split_shards, {}
        expected = clock_json(self.clock)  # once: every segment is checked against it
        for epoch in itertools.count() if self.repeat else range(1):
            order = _rng(self.seed, _SHARD_ORDER, epoch).permutation(len(candidates))
            shards = [candidates[i] for i in order]
            usable = 0
            for segment in iter_segments(shards, self.storage, self.split, reader, readers, counters):
                _check_segment(segment, expected)
                if segment.num_frames < self.clock.window_frames:
                    counters["short_segments"] = counters.get("short_segments", 0) + 1
                    continue
                usable += 1
                yield {"faces": _lower_halves(segment.faces, shared), "mel": torch.from_numpy(segment.mel.T.copy()),
                       "video": video_number(segment.source_key), "key": segment.key, "source": segment.source,
                       "reader": reader, "passes": epoch, "counters": dict(counters)}
            if self.repeat and usable == 0:
                # Repeating an empty pass would spin forever while the other ranks wait for this one.
                raise RuntimeError(f"reader {reader} of {readers} found no segment of {self.clock.window_frames}+ "
                                   f"frames in {len(shards)} shards of split {self.split!r} in a whole pass; "
                                   f"counters {counters}")


class PairStream:
    """Batches of pairs for one rank, on `device` (see the module docstring), from `shard_uris`.

    `shard_uris`: the full list, the same on every rank; rank and world_size pick this rank's share of the
    shards that hold `split` (`pipelines.shards.reader.split_shards`). `loader_workers` DataLoader processes
    decode (0: this process). repeat=True: endless, the trainer decides the number of steps, so every rank runs
    the same number and none waits at an epoch end. repeat=False: one pass, every segment's pairs drawn, the
    last batch possibly short; with a fixed seed the same batches on every iteration (validation).
    `clock`: the expert's; every segment must be on it. `seed`: an int or a tuple (a run's seed and the step it
    resumes from), the entropy of every random stream here: the batches depend on it and on nothing else
    (not on the number of loader processes' timing).

    The pool fills to `batch_size // 4` segments before the first batch, then admits twice what each batch
    uses up until it reaches its memory bound or the stream comes round to its first segments again (a corpus
    smaller than the pool is held once); from there each batch's departures are replaced.
    `counters` (reset at each iter()): pairs by kind, segments admitted, the readers' counts summed over
    loader processes, and the pool's memory (`pool_*`).
    """

    def __init__(self, shard_uris: list[str], storage: StorageConfig, split: str | None, config: PairConfig,
                 clock: Clock, batch_size: int, seed: int | tuple[int, ...], rank: int = 0, world_size: int = 1,
                 repeat: bool = True, device: torch.device | str = "cpu", pool: PoolConfig = PoolConfig(),
                 loader_workers: int = 0):
        seed = (seed,) if isinstance(seed, int) else tuple(seed)
        if batch_size < 1 or loader_workers < 0:
            raise ValueError(f"PairStream: need batch_size >= 1 and loader_workers >= 0, got {batch_size}, "
                             f"{loader_workers}")
        self.source = SegmentSource(shard_uris, storage, split, clock, seed, rank, world_size, repeat)
        self.config, self.clock, self.batch_size, self.seed, self.rank = config, clock, batch_size, seed, rank
        self.device, self.pool_config, self.loader_workers = torch.device(device), pool, loader_workers
        self.counters: dict = {}

    def __iter__(self) -> Iterator[dict]:
        self.counters.clear()
        items = iter(torch.utils.data.DataLoader(
            self.source, batch_size=None, num_workers=self.loader_workers,
            pin_memory=self.device.type == "cuda", persistent_workers=False,
            prefetch_factor=PREFETCH_SEGMENTS if self.loader_workers else None))
        return self._batches(items)

    def _batches(self, items: Iterator[dict]) -> Iterator[dict]:
        pool = SegmentPool(self.config, self.clock, self.device, pool_bytes(self.pool_config, self.device))
        pair_rng, draw_rng = _rng(self.seed, _PAIRS, self.rank), _rng(self.seed, _DRAWS, self.rank)
        batch_size, readers = self.batch_size, {}
        growth = batch_size / self.config.windows_per_segment  # what a batch uses up, in segments
        target, growing = max(1, batch_size // 4), True
        pending, exhausted = None, False
        while True:
            while not exhausted:
                if pending is None:
                    pending = next(items, None)
                    if pending is None:
                        exhausted = True
                        break
                    readers[pending["reader"]] = pending["counters"]
                    if growing and pending["passes"] > 0:  # round to the first segments: the corpus is held once
                        growing, target = False, max(pool.resident, 1)
                room = pool.fits(len(pending["faces"]), len(pending["mel"]))
                if len(pool.tickets) >= batch_size and (pool.resident >= target or not room):
                    break
                if not room:
                    raise ValueError(f"the pair pool ({pool.max_bytes / 2**30:.2f} GiB) holds fewer than a "
                                     f"batch of {batch_size} pairs: raise --memory-gib or lower --batch-size")
                windows = pool.admit(pending["faces"], pending["mel"], pending["video"], pending["key"], pair_rng,
                                     source_weight(pending["source"], self.config.source_weights))
                self._count("segments_admitted", 1 if len(windows) else 0)
                for name, count in kind_counts(windows.kinds).items():
                    self._count(name, count)
                pending = None
            if not len(pool.tickets):
                return
            batch = pool.draw(min(batch_size, len(pool.tickets)), draw_rng)
            self._report(pool, readers)
            yield batch
            if growing:
                target += growth

    def _count(self, name: str, amount: int) -> None:
        self.counters[name] = self.counters.get(name, 0) + amount

    def _report(self, pool: SegmentPool, readers: dict[int, dict]) -> None:
        for name in {name for counts in readers.values() for name in counts}:
            self.counters[name] = sum(counts.get(name, 0) for counts in readers.values())
        self.counters.update({f"pool_{name}": value for name, value in pool.memory().items()})


def video_number(source_key: str) -> int:
    """A number for a source video, the same in every process (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.blake2b(source_key.encode(), digest_size=7).digest(), "little")


def _lower_halves(faces: np.ndarray, shared: bool) -> torch.Tensor:
    half = faces[:, faces.shape[1] // 2:]
    if not shared:
        return torch.from_numpy(np.ascontiguousarray(half))
    tensor = _shared_tensor(half.shape, half.dtype)
    np.copyto(tensor.numpy(), half)
    return tensor


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


def _check_segment(segment: Segment, expected_clock: str) -> None:
    """Training reads what preprocessing writes for it: the expert's clock (as `clock_json`), aligned crops."""
    written = clock_json(sample_clock(segment.meta))
    if written != expected_clock:
        raise ValueError(f"segment {segment.key} was written on the clock {written}; the expert's clock is "
                         f"{expected_clock}: preprocess with the expert's clock")
    crop = sample_crop(segment.meta)
    if crop != "aligned":
        raise ValueError(f"segment {segment.key} holds {crop} face crops (curated with an imported expert?); "
                         f"experts train on aligned crops: preprocess the videos with pipelines.preprocess")


def _rng(seed: tuple[int, ...], purpose: int, *ids: int) -> np.random.Generator:
    return np.random.default_rng([*seed, purpose, *ids])
