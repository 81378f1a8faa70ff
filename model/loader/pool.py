"""Decoded segments resident on the training device, and batches of pairs drawn from them by tensor indexing.

A segment is admitted once, decoded (the lower half of each crop: all the expert reads) and its log-mel;
`PairConfig.windows_per_segment` pairs are drawn for it at once, as positions (`draw_window_arrays`), and wait
as *tickets*. A batch is `batch_size` tickets taken from segments picked at random among all the pool holds
(`Tickets`), gathered on the device in one indexing per tensor: a batch mixes hundreds of segments, and no
pixel crosses to the device twice. A segment leaves once its last ticket is drawn (and the last ticket that
reads its audio as another video's), so every segment gives exactly its pairs, at the rate batches are drawn.

Memory: faces and mels live in pages of rows (`PagedRows`: 16 frames, 64 mel columns) so that segments of any
length share one preallocated-as-needed tensor each without fragmenting it; the pool grows to at most
`PoolConfig.memory_gib` (auto: from the device's memory).
"""

from __future__ import annotations

import heapq
import math
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from model.loader.windows import KINDS, OTHER_CODE, POSITIVE_CODE, PairConfig, Windows, audio_windows, \
    draw_window_arrays, heaviest_weight
from pipelines.core.clock import Clock
from pipelines.core.device import to_device

__all__ = ["PoolConfig", "SegmentPool", "pool_bytes"]

FACE_PAGE, MEL_PAGE = 16, 64  # rows per page: frames, mel columns
GiB = 2**30


def grown(array: np.ndarray, rows: int) -> np.ndarray:
    """`array` with at least `rows` rows: the old ones kept, new ones zero (per-slot tables grow as slots do)."""
    if rows <= len(array):
        return array
    bigger = np.zeros((rows, *array.shape[1:]), array.dtype)
    bigger[:len(array)] = array
    return bigger


@dataclass(frozen=True)
class PoolConfig:
    """The pool of decoded segments that training pairs are drawn from, resident on the training device."""

    memory_gib: float = field(default=0.0, metadata={
        "help": "memory the pool of decoded segments may take on the training device, GiB (0: auto, a quarter of "
                "the GPU's memory up to 32 GiB, or a tenth of the free RAM up to 4 GiB on a CPU)"})

    def __post_init__(self):
        if self.memory_gib < 0:
            raise ValueError(f"--memory-gib must be 0 (auto) or positive, got {self.memory_gib}")


def pool_bytes(config: PoolConfig, device: torch.device) -> int:
    """The pool's memory bound on `device`, in bytes."""
    if config.memory_gib > 0:
        return int(config.memory_gib * GiB)
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return int(min(total / 4, free / 2, 32 * GiB))
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):  # not every platform reports it
        available = 8 * GiB
    return int(min(available / 10, 4 * GiB))


class PagedRows:
    """Sequences of rows (frames, mel columns) of any length, stored in fixed pages of one tensor on a device.

    A sequence is put under a slot number and read back by `rows_of(slots, starts, length)`, the flat row index of
    `length` consecutive rows from each start, which indexes `rows` directly. The tensor grows by doubling up to
    `max_pages`; freed pages are reused first, so memory stays at what the pool holds at its fullest.
    """

    def __init__(self, page: int, max_pages: int, row_shape: tuple[int, ...], dtype: torch.dtype,
                 device: torch.device):
        self.page, self.max_pages, self.row_shape, self.dtype, self.device = page, max_pages, row_shape, dtype, device
        self.rows = torch.empty((0, *row_shape), dtype=dtype, device=device)
        self.free: list[int] = []  # a heap: the lowest free page is reused first
        self.table = np.zeros((0, 0), np.int64)  # [slot, page of the sequence] -> page in `rows`

    @property
    def allocated_pages(self) -> int:
        return len(self.rows) // self.page

    def pages_for(self, length: int) -> int:
        return -(-length // self.page)

    def fits(self, length: int) -> bool:
        return self.pages_for(length) <= len(self.free) + self.max_pages - self.allocated_pages

    def put(self, slot: int, rows: torch.Tensor) -> None:
        """Store `rows` [L, *row_shape] (on any device; pinned memory copies without waiting) under `slot`."""
        needed = self.pages_for(len(rows))
        if len(self.free) < needed:
            self._grow(needed - len(self.free))
        pages = [heapq.heappop(self.free) for _ in range(needed)]
        if needed > self.table.shape[1]:  # a sequence longer than any before: a wider table
            self.table = grown(self.table.T, needed).T.copy()
        if slot >= len(self.table):
            self.table = grown(self.table, max(2 * len(self.table), slot + 1))
        self.table[slot, :needed] = pages
        index = self.rows_of(np.array([slot]), np.array([0]), len(rows))[0]
        if self.device.type == "cpu":  # numpy's fancy indexing copies rows as memcpy; torch's CPU kernels are ~5x slower
            self.rows.numpy()[index] = rows.numpy()
        else:
            self.rows.index_copy_(0, to_device(index, self.device), rows.to(self.device, non_blocking=True))

    def gather(self, index: np.ndarray | torch.Tensor) -> torch.Tensor:
        """rows[index] for flat indices (from `rows_of`; a tensor on the device for a GPU pool)."""
        if self.device.type == "cpu":
            flat = self.rows.numpy().reshape(len(self.rows), -1)
            return torch.from_numpy(np.take(flat, np.asarray(index), axis=0)).view(*index.shape, *self.row_shape)
        return self.rows.index_select(0, index.reshape(-1)).view(*index.shape, *self.row_shape)

    def release(self, slot: int, length: int) -> None:
        # Lowest pages reused first: a CPU pool touches only the memory it needs at its fullest.
        for page in self.table[slot, :self.pages_for(length)].tolist():
            heapq.heappush(self.free, page)

    def rows_of(self, slots: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
        """Flat indices [N, length] into `rows` of rows starts..starts+length-1 of each slot's sequence."""
        offsets = starts[:, None] + np.arange(length)
        pages = np.take_along_axis(self.table[slots], offsets // self.page, axis=1)
        return pages * self.page + offsets % self.page

    def _grow(self, at_least: int) -> None:
        have = self.allocated_pages
        pages = min(self.max_pages, max(have * 2, have + at_least, 64))
        if pages - have < at_least:
            raise MemoryError(f"pool: {at_least} more pages needed, {self.max_pages - have} left")
        grown = torch.empty((pages * self.page, *self.row_shape), dtype=self.dtype, device=self.device)
        if len(self.rows):
            grown[:len(self.rows)] = self.rows
        self.rows = grown
        self.free.extend(range(have, pages))
        heapq.heapify(self.free)


class Tickets:
    """The pairs drawn but not yet batched, a stack per slot: [slot, up to per_slot] arrays, per_slot the most a
    segment draws (`windows_per_segment` times the heaviest source weight).

    A batch takes its tickets segment first: `count` slots at random among those with tickets left (with
    replacement), then the top ticket of each slot's stack for each time it was picked. A segment's tickets
    are independent draws in random order (`draw_window_arrays`), so its top ones are as random as any;
    picking segments rather than tickets puts the most segments in a batch (about P(1 - exp(-B/P)) of the P
    in the pool) and spends every segment's tickets at one rate, so segments leave in the order they came.
    """

    FIELDS = {"mel_slot": np.int32, "start": np.int32, "column": np.int32, "shift": np.int32, "kind": np.int8}

    def __init__(self, per_slot: int):
        self.per_slot, self.size = per_slot, 0
        self.left = np.zeros(0, np.int64)  # tickets left per slot
        self.arrays = {name: np.zeros((0, per_slot), dtype) for name, dtype in self.FIELDS.items()}

    def __len__(self) -> int:
        return self.size

    def add(self, slot: int, **values: np.ndarray) -> None:
        if slot >= len(self.left):
            slots = max(64, 2 * len(self.left), slot + 1)
            self.left = grown(self.left, slots)
            self.arrays = {name: grown(array, slots) for name, array in self.arrays.items()}
        count = len(values["start"])
        for name, array in self.arrays.items():
            array[slot, :count] = values[name]
        self.left[slot] = count
        self.size += count

    def take(self, count: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """`count` tickets (all that are left if fewer), segment first (see the class docstring)."""
        slots, rows = [], []
        need = min(count, self.size)
        while need:
            active = np.flatnonzero(self.left)
            picked = np.sort(active[rng.integers(len(active), size=need)])
            first = np.r_[0, np.flatnonzero(np.diff(picked)) + 1]  # where each slot's run of picks starts
            rank = np.arange(len(picked)) - np.repeat(first, np.diff(np.r_[first, len(picked)]))
            fits = rank < self.left[picked]  # picks beyond a slot's last ticket are drawn again
            slot, rank = picked[fits], rank[fits]
            slots.append(slot)
            rows.append(self.left[slot] - 1 - rank)
            np.subtract.at(self.left, slot, 1)
            need -= len(slot)
        slot, row = np.concatenate(slots), np.concatenate(rows)
        self.size -= len(slot)
        taken = {name: array[slot, row] for name, array in self.arrays.items()}
        # Positions widen to int64 for index arithmetic; kinds stay codes.
        return {"slot": slot, **{name: value if name == "kind" else value.astype(np.int64)
                                 for name, value in taken.items()}}


@dataclass
class Segments:
    """Per-slot facts of the resident segments (numpy, grown as slots are added)."""

    frames: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    columns: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    video: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    references: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # tickets that read the slot
    held: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # in memory (departed ones too, until freed)

    def grow(self, slots: int) -> None:
        for name in ("frames", "columns", "video", "references", "held"):
            setattr(self, name, grown(getattr(self, name), slots))


class SegmentPool:
    """Segments resident on `device` and their tickets; `admit` adds a segment, `draw` takes a batch.

    `max_bytes` bounds the faces and mels held (the page tables and tickets are small and on the host).
    """

    def __init__(self, config: PairConfig, clock: Clock, device: torch.device, max_bytes: int):
        self.config, self.clock, self.device, self.max_bytes = config, clock, device, max_bytes
        self.faces: PagedRows | None = None  # [rows, S/2, S, 3] uint8, allocated at the first segment
        self.mels: PagedRows | None = None  # [rows, F] float32
        self.tickets = Tickets(config.windows_per_segment * heaviest_weight(config.source_weights))
        self.segments = Segments()
        self.free_slots: list[int] = []
        # Slots whose last ticket was drawn by the latest batch: still in memory until the next draw (or until
        # room is needed), so that the segments admitted in between can take their audio for other-video
        # negatives even when every segment of a small corpus left at once.
        self.departed: list[int] = []
        self.keys: dict[int, str] = {}
        self.resident = 0  # segments with tickets to give or to take audio from

    # --- admission -------------------------------------------------------------------------------------------

    def fits(self, frames: int, columns: int) -> bool:
        if self.faces is None:
            return True
        if not (self.faces.fits(frames) and self.mels.fits(columns)):
            self._free_departed()
        return self.faces.fits(frames) and self.mels.fits(columns)

    def admit(self, faces: torch.Tensor, mel: torch.Tensor, video: int, key: str, rng: np.random.Generator,
              weight: int = 1) -> Windows:
        """Hold a segment (faces: lower halves uint8 [T, S/2, S, 3]; mel float32 [C, F], column-major) and draw its
        tickets, `weight` times the configured number; returns what was drawn (none for a segment shorter than a
        window: it is not kept)."""
        if self.faces is None:
            self._allocate(tuple(faces.shape[1:]), mel.shape[1])
        elif tuple(faces.shape[1:]) != self.faces.row_shape or mel.shape[1:] != self.mels.row_shape:
            raise ValueError(f"segment {key}: lower-half crops {tuple(faces.shape[1:])} and {mel.shape[1]} mel "
                             f"bins, unlike the stream's first segment ({self.faces.row_shape}, "
                             f"{self.mels.row_shape[0]}): preprocess the corpus with one crop size")
        other = self._other_audio(video, rng)
        other_columns = audio_windows(int(self.segments.columns[other]), self.clock) if other is not None else 0
        windows = draw_window_arrays(len(faces), other_columns, self.config, self.clock, rng, weight)
        if not len(windows):
            return windows
        slot = self._free_slot()
        self.faces.put(slot, faces)
        self.mels.put(slot, mel)
        s = self.segments
        s.frames[slot], s.columns[slot], s.video[slot], s.held[slot] = len(faces), len(mel), video, True
        s.references[slot] = len(windows)
        self.keys[slot] = key
        self.resident += 1
        is_other = windows.kinds == OTHER_CODE
        mel_slot = np.full(len(windows), slot)
        if is_other.any():  # drawn only when another segment is there to lend its audio
            if s.references[other] == 0:  # a departed segment lends its audio: it stays
                self.resident += 1
            s.references[other] += int(is_other.sum())
            mel_slot[is_other] = other
        self.tickets.add(slot, mel_slot=mel_slot, start=windows.starts, column=windows.columns, shift=windows.shifts,
                         kind=windows.kinds)
        return windows

    def _other_audio(self, video: int, rng: np.random.Generator) -> int | None:
        """A resident segment of another video with at least one audio window, or None."""
        s = self.segments
        usable = np.flatnonzero(s.held & (s.video != video) & (s.columns >= self.clock.mel_window))
        return int(usable[rng.integers(len(usable))]) if len(usable) else None

    def _allocate(self, face_row: tuple[int, ...], mel_bins: int) -> None:
        face_bytes = math.prod(face_row)
        columns_per_frame = self.clock.mel_fps / self.clock.fps
        mel_bytes_per_frame = columns_per_frame * mel_bins * 4
        frames = self.max_bytes / (face_bytes + mel_bytes_per_frame)
        face_pages = int(frames // FACE_PAGE)
        mel_pages = int(frames * columns_per_frame // MEL_PAGE)
        if face_pages < 1 or mel_pages < 1:
            raise ValueError(f"pool: {self.max_bytes / GiB:.3f} GiB holds no page of crops {face_row}: raise "
                             f"--memory-gib")
        self.faces = PagedRows(FACE_PAGE, face_pages, face_row, torch.uint8, self.device)
        self.mels = PagedRows(MEL_PAGE, mel_pages, (mel_bins,), torch.float32, self.device)

    def _free_slot(self) -> int:
        if not self.free_slots:
            old = len(self.segments.frames)
            self.segments.grow(max(64, 2 * old))
            self.free_slots.extend(range(len(self.segments.frames) - 1, old - 1, -1))
        return self.free_slots.pop()

    # --- drawing ---------------------------------------------------------------------------------------------

    def draw(self, count: int, rng: np.random.Generator) -> dict:
        """`count` pairs at random among the tickets, gathered on the device (see `model.loader.stream`)."""
        self._free_departed()
        t = self.tickets.take(count, rng)
        clock = self.clock
        face_rows = self.faces.rows_of(t["slot"], t["start"], clock.window_frames)
        mel_rows = self.mels.rows_of(t["mel_slot"], t["column"], clock.mel_window)
        labels = (t["kind"] == POSITIVE_CODE).astype(np.int64)
        if self.device.type == "cpu":
            face_index, mel_index, label_values = face_rows, mel_rows, torch.from_numpy(labels)
        else:  # one host-to-device copy for all of it: indices and labels
            packed = to_device(np.concatenate([face_rows.ravel(), mel_rows.ravel(), labels]), self.device)
            face_index, mel_index, label_values = torch.split(packed, [face_rows.size, mel_rows.size, count])
            face_index, mel_index = face_index.view(face_rows.shape), mel_index.view(mel_rows.shape)
        faces = self.faces.gather(face_index)
        mels = self.mels.gather(mel_index).transpose(1, 2).contiguous()  # [B, F, W], as the audio encoder reads it
        keys = [self.keys[slot] for slot in t["slot"].tolist()]
        batch = {"faces": faces, "mels": mels, "labels": label_values.float(),
                 "shifts": torch.from_numpy(t["shift"]), "kinds": torch.from_numpy(t["kind"]),
                 "starts": torch.from_numpy(t["start"]), "columns": torch.from_numpy(t["column"]),
                 "keys": keys, "mel_keys": [self.keys[slot] for slot in t["mel_slot"].tolist()],
                 "segments": len(set(keys))}
        self._release(t["slot"], t["mel_slot"][t["kind"] == OTHER_CODE])
        return batch

    def _release(self, slots: np.ndarray, other_audio: np.ndarray) -> None:
        s = self.segments
        np.subtract.at(s.references, slots, 1)
        np.subtract.at(s.references, other_audio, 1)
        for slot in np.unique(np.concatenate([slots, other_audio])).tolist():
            if s.references[slot] == 0:
                self.departed.append(slot)
                self.resident -= 1

    def _free_departed(self) -> None:
        s = self.segments
        for slot in self.departed:
            if s.references[slot] == 0 and s.held[slot]:
                # The gathers that read these pages are queued on the device before any later write to them.
                self.faces.release(slot, int(s.frames[slot]))
                self.mels.release(slot, int(s.columns[slot]))
                s.held[slot] = False
                del self.keys[slot]
                self.free_slots.append(slot)
        self.departed.clear()

    # --- reporting -------------------------------------------------------------------------------------------

    def memory(self) -> dict:
        """Bytes allocated and the bound, and what the resident segments hold."""
        allocated = sum(p.rows.numel() * p.rows.element_size() for p in (self.faces, self.mels) if p is not None)
        return {"allocated_bytes": allocated, "max_bytes": self.max_bytes, "segments": self.resident,
                "frames": int(self.segments.frames[self.segments.held].sum()), "tickets": len(self.tickets)}


def kind_counts(kinds: np.ndarray) -> dict[str, int]:
    return {f"pairs_{KINDS[code]}": count for code, count in
            enumerate(np.bincount(kinds, minlength=len(KINDS)).tolist()) if count}
