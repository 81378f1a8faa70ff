"""Segments out of WebDataset shards: read only what the pipeline writes, never unpickle, survive bad shards.

A shard is streamed member by member with tarfile, grouped into samples by WebDataset's `group_by_keys`, over a
stream we open through `pipelines.core.storage`, so local folders and s3:// read the same way and no shell
command is ever built from a file name. Every member's claimed size is checked before tarfile acts on it: a
header may claim up to 2**63 bytes, and tarfile reads its way forward through what it skips, so one hostile
header would stall a reader for ever. Of each sample only the three members of the format
(`pipelines.shards.format`) are decoded, by its codecs:

    KEY.jpg       faces, one JPEG strip
    KEY.mel.npy   log-mel, `np.load(..., allow_pickle=False)`
    KEY.json      metadata (split, speaker, source_key, crop_size, num_frames, rates; the format version and
                  clock since format 1: samples of format 0 read as before, on the clock their rates give)

Any other member (`.pyd`, `.pickle`, ... which WebDataset's default decoders would unpickle) is passed over,
never extracted, counted, and warned about once per shard by extension. Damage is skipped, warned about once (a `ShardWarning` naming the shard and
the reason) and counted, never fatal:

    counters["bad_shards"]        a shard that cannot be opened, ends inside a member, has a member that
                                  claims more than MAX_MEMBER_BYTES or than is left of the shard, or holds
                                  fewer samples than its stats json (`shard-NNNNNN.json`) records
    counters["bad_samples"]       a sample with a member missing or undecodable, with shapes that disagree,
                                  a format version this reader does not know, or a key that is no key
    counters["ignored_members"]   members with an extension we do not read
    counters["shards"], counters["samples"], counters["segments"]   what was read and what was yielded

Segments a shard yielded before its damage showed are kept: the reader streams, it cannot take them back.
"""

from __future__ import annotations

import io
import json
import tarfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np
from webdataset.tariterators import base_plus_ext, group_by_keys

from pipelines.core.storage import StorageConfig, list_files, read_bytes, resolve
from pipelines.shards.format import META, MEMBERS, decode_arrays, decode_meta, is_safe_key, shard_number, stats_of

__all__ = ["Segment", "ShardWarning", "iter_segments", "list_shards", "read_stats", "segments_in_tar",
           "shards_holding", "split_shards"]

# What a damaged or unreadable shard raises while streaming: tarfile's own errors (a member's claim too
# big among them), I/O errors from the filesystem (pyarrow raises OSError subclasses, FileNotFoundError among
# them), and WebDataset's ValueError for a member name repeated within one sample.
SHARD_ERRORS = (tarfile.TarError, OSError, EOFError, ValueError)
# The most one member may hold: far above any real one (a 10 s segment's JPEG strip is a few MB), and small
# enough that reading a member whole never asks for more memory than a worker has.
MAX_MEMBER_BYTES = 2 ** 30
# What decoding one sample's members may raise; anything else is a bug and should surface.
SAMPLE_ERRORS = (ValueError, KeyError, TypeError, OSError, EOFError, cv2.error)


class ShardWarning(UserWarning):
    """A shard or sample was skipped; the message names it and says why."""


@dataclass(frozen=True, eq=False)  # eq=False: comparing arrays with == has no single truth value
class Segment:
    """One continuous face segment: T aligned crops and the log-mel of the same time span.

    faces  uint8 [T, S, S, 3] RGB
    mel    float32 [80, M], M = the sample's clock's mel_column(T); column 0 lies at the segment's first frame
    """

    key: str
    source_key: str
    speaker: str
    split: str
    faces: np.ndarray
    mel: np.ndarray
    source: str = ""  # the input video's URI, as preprocessing recorded it
    meta: dict | None = None  # the sample's whole json (times, rates, aligner, quality), as written


    @property
    def num_frames(self) -> int:
        return int(self.faces.shape[0])


def list_shards(shards: str, storage: StorageConfig) -> list[str]:
    """Sorted URIs of the finished `shard-NNNNNN.tar` files under `shards` (a folder or s3:// prefix).

    A shard is finished once its stats json is there: the packer writes it last, as the completion marker, so
    a tar without one is a run killed while packing, which the next run packs again. Per-chunk parts under
    `_parts/` are work in progress of the packer, never shards.
    """
    files = set(list_files(shards, storage))
    return sorted(uri for uri in files if shard_number(uri, "tar") is not None and stats_of(uri) in files)


def split_shards(shard_uris: list[str], rank: int, world_size: int) -> list[str]:
    """The shards rank `rank` of `world_size` reads: every world_size-th one, in the order given.

    With fewer shards than ranks every rank gets all of them and `iter_segments` splits by segment instead:
    a rank with nothing to read would stall the others at their first collective.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
    uris = list(shard_uris)
    if len(uris) < world_size:
        return uris
    return uris[rank::world_size]


def shards_holding(shard_uris: list[str], storage: StorageConfig, split: str | None) -> list[str]:
    """The shards that may hold samples of `split`, in the order given: those whose stats json lists one,
    and those without readable stats (read and filtered sample by sample). All of them for split None.

    Splitting ranks over these rather than over all shards keeps a rank from drawing only shards of the
    other split, where it would find nothing to train on.
    """
    if split is None:
        return list(shard_uris)
    return [uri for uri in shard_uris if (splits := _recorded_splits(uri, storage)) is None or split in splits]


def iter_segments(shard_uris: list[str], storage: StorageConfig, split: str | None, rank: int = 0,
                  world_size: int = 1, counters: dict | None = None) -> Iterator[Segment]:
    """The segments of rank `rank`'s share of `shard_uris` (the full list, the same on every rank).

    `split` ("train", "val") keeps only samples whose json says so; None keeps all. When there are fewer
    shards than ranks every rank reads every shard and keeps every world_size-th segment of the split, so
    the ranks' segments are disjoint and together are all of them. Only kept segments are decoded.
    """
    mine = split_shards(shard_uris, rank, world_size)
    stride = world_size if len(shard_uris) < world_size else 1
    seen = 0  # segments of the wanted split, counted over all shards: the segment-level split
    for uri in mine:
        for members in _shard_samples(uri, storage, counters):
            meta = _sample_meta(members, uri, counters)
            if meta is None or (split is not None and meta["split"] != split):
                continue
            seen += 1
            if (seen - 1) % stride != rank % stride:
                continue
            segment = _decode_segment(members, meta, uri, counters)
            if segment is not None:
                _count(counters, "segments")
                yield segment


def segments_in_tar(data: bytes, name: str, counters: dict | None = None) -> list[Segment]:
    """The segments of a tar held in memory (a chunk's samples as the sample stage wrote them), decoded as a
    shard's are; `name` labels warnings."""
    segments = []
    for members in group_by_keys(_tar_files(io.BytesIO(data), name, len(data), counters)):
        meta = _sample_meta(members, name, counters)
        segment = _decode_segment(members, meta, name, counters) if meta is not None else None
        if segment is not None:
            segments.append(segment)
    return segments


def _tar_files(stream, url: str, size: int, counters: dict | None) -> Iterator[dict]:
    """The members we read of the plain tar `stream` (`size` bytes), as `group_by_keys` takes them.

    Unknown members are passed over, never extracted or decoded. A claim is checked as soon as its header is
    read: tarfile would act on it when asked for the next member, by reading forward through it.
    """
    ignored: set[str] = set()
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for info in tar:
            _check_claim(info, size)
            if not info.isreg():
                continue
            _, ext = base_plus_ext(info.name)
            if ext is None or ext.lower() not in MEMBERS:
                _count(counters, "ignored_members")
                ignored.add(ext or "(none)")
                continue
            yield {"fname": info.name, "data": tar.extractfile(info).read(), "__url__": url}
            tar.members = []  # a stream of any length: keep no list of the members seen
    if ignored:  # once per shard: a shard full of them must not drown the log
        warnings.warn(f"shard {url}: members passed over, of extensions {', '.join(sorted(ignored))}", ShardWarning,
                      stacklevel=2)


def _check_claim(info: tarfile.TarInfo, size: int) -> None:
    if info.size > MAX_MEMBER_BYTES:
        raise tarfile.ReadError(f"member {info.name!r} claims {info.size} bytes, more than a member may hold "
                                f"({MAX_MEMBER_BYTES})")
    if info.offset_data + info.size > size:
        raise tarfile.ReadError(f"member {info.name!r} claims {info.size} bytes, "
                                f"{max(size - info.offset_data, 0)} are left")


def _until_damage(files: Iterator[dict], damage: list) -> Iterator[dict]:
    """The members of `files` up to the first that cannot be read, whose error goes to `damage`. Ending there
    rather than raising lets `group_by_keys` hand on the sample it holds: whole, if the damage begins after it
    (a sample it holds in part is missing a member, and is skipped as such)."""
    try:
        yield from files
    except SHARD_ERRORS as error:
        damage.append(error)


def _shard_samples(uri: str, storage: StorageConfig, counters: dict | None) -> Iterator[dict[str, bytes]]:
    """One shard's samples as {"__key__": key, ext: bytes} for the extensions we read; damage is warned."""
    _count(counters, "shards")
    read, damage = 0, []
    try:
        fs, path = resolve(uri, storage)
        size = fs.get_file_info(path).size  # None for nothing there: opening it then raises FileNotFoundError
        with fs.open_input_stream(path) as stream:
            for sample in group_by_keys(_until_damage(_tar_files(stream, uri, size or 0, counters), damage)):
                read += 1
                _count(counters, "samples")
                yield sample
    except SHARD_ERRORS as error:
        damage.append(error)
    if damage:
        _skip(counters, "bad_shards", f"shard {uri} skipped after {read} samples: {_reason(damage[0])}")
        return
    expected = _recorded_samples(uri, storage)
    if expected is not None and read < expected:
        # tarfile reads a tar cut at a member boundary as a shorter, valid archive: only the stats tell.
        _skip(counters, "bad_shards", f"shard {uri} is truncated: {read} samples read, its stats record {expected}")


def _recorded_samples(uri: str, storage: StorageConfig) -> int | None:
    """The sample count in the shard's stats json, or None without a readable one (it is optional here)."""
    try:
        return int(read_stats(uri, storage)["samples"])
    except (KeyError, TypeError, ValueError):
        return None


def _recorded_splits(uri: str, storage: StorageConfig) -> set[str] | None:
    try:
        return {sample["split"] for video in read_stats(uri, storage)["videos"] for sample in video["samples"]}
    except (KeyError, TypeError):
        return None


def read_stats(uri: str, storage: StorageConfig) -> dict | None:
    """The shard's stats json (`shard-NNNNNN.json` next to it), None if absent or unreadable."""
    try:
        return json.loads(read_bytes(stats_of(uri), storage))
    except (OSError, ValueError):
        return None


def _sample_meta(members: dict[str, bytes], uri: str, counters: dict | None) -> dict | None:
    key = members["__key__"]
    missing = sorted(MEMBERS - members.keys())
    if missing:
        _skip(counters, "bad_samples", f"sample {key} in {uri} skipped: no {', '.join(missing)} member")
        return None
    try:
        meta = decode_meta(members[META])
    except SAMPLE_ERRORS as error:
        _skip(counters, "bad_samples", f"sample {key} in {uri} skipped: bad json ({_reason(error)})")
        return None
    # Keys name folders downstream (curation's parts, layouts): one read from a shard must pick no other path.
    for name, value in (("key", key), ("source_key", meta["source_key"])):
        if not is_safe_key(value):
            _skip(counters, "bad_samples", f"sample {key!r} in {uri} skipped: {name} {value!r} is not a key")
            return None
    return meta


def _decode_segment(members: dict[str, bytes], meta: dict, uri: str, counters: dict | None) -> Segment | None:
    key = members["__key__"]
    try:
        faces, mel = decode_arrays(members, meta)  # faces contiguous: windows copy out as plain memcpy
    except SAMPLE_ERRORS as error:
        _skip(counters, "bad_samples", f"sample {key} in {uri} skipped: {_reason(error)}")
        return None
    return Segment(key=key, source_key=meta["source_key"], speaker=meta["speaker"], split=meta["split"],
                   faces=faces, mel=mel, source=meta.get("source", ""), meta=meta)


def _reason(error: BaseException) -> str:
    # WebDataset appends " @ <stream object>" and extra args to the message; the first part is the cause.
    message = str(error.args[0]) if error.args else ""
    return f"{type(error).__name__}: {message.split(' @ ')[0]}".rstrip(": ")


def _skip(counters: dict | None, name: str, message: str) -> None:
    _count(counters, name)
    warnings.warn(message, ShardWarning, stacklevel=3)


def _count(counters: dict | None, name: str, amount: int = 1) -> None:
    if counters is not None:
        counters[name] = counters.get(name, 0) + amount
