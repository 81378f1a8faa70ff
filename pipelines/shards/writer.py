"""Writing shards so that nothing half-written is ever visible and a rerun duplicates nothing.

Two steps, after datatrove and video2dataset (file names in `pipelines.shards.format`):
1. Parts. While Ray Data streams, a producer hands `PartWriter` batches of records and tar bytes
   (`pipelines.shards.records`); each chunk of each video is written as `_parts/KEY/cNNNNN.tar` (its samples)
   and then `cNNNNN.json` (its record: the json is the chunk's completion marker); the end of a video writes
   `_parts/KEY/end.json` with its chunk count or its failure. All writes are atomic.
2. Packing. When the stream is done, every video whose parts are complete and that no shard holds yet is
   packed, in key order, into `shard-NNNNNN.tar`; then `shard-NNNNNN.json` (the shard's stats and the verdicts
   of its videos, failures included) is written; only then are the parts deleted. The stats json is the
   shard's completion marker and the list of videos it holds, so a rerun skips those videos, and a run killed
   while packing redoes exactly the unfinished shard from the parts still there. Parts of videos a finished
   shard holds (a run killed before it deleted them) are deleted when packing starts.
The corpus index (`index.parquet`) is rebuilt from the stats jsons at the end of every run.

A video's verdict (`video_verdict`) is ok, or failed with a reason: the producer's failure, else, when no
sample is left, the producer's `empty_reason` or what the counts say (no_face, too_short). What a producer
annotates its chunks with is kept in the verdict as it came, never read here.
"""

from __future__ import annotations

import io
import json
import tarfile
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipelines.core.storage import (StorageConfig, delete, join, list_files, read_bytes, resolve, upload_file_atomic,
                                    write_bytes_atomic)
from pipelines.shards.format import (END_PART, INDEX_FILE, PARTS, chunk_part, chunk_part_name, end_part,
                                     is_safe_key, part_folder, shard_file, shard_name, shard_number, stats_file)
from pipelines.shards.records import (PART, RECORD, ChunkRecord, EndRecord, Record, record_from_json, record_json,
                                      records_of)


@dataclass(frozen=True)
class ShardConfig:
    shard_max_samples: int = field(default=2000, metadata={"help": "a shard is closed after this many samples"})
    shard_max_mb: float = field(default=512.0, metadata={"help": "... or after this many megabytes"})


class PartWriter:
    """The last stage of the stream: persist each chunk's samples and record under `_parts/`."""

    def __init__(self, output: str, storage: StorageConfig):
        self.output, self.storage = output, storage

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for record, part in zip(records_of(batch), batch[PART]):
            if isinstance(record, EndRecord):
                write_bytes_atomic(end_part(self.output, record.key), record_json(record).encode(), self.storage)
                continue
            if part:
                write_bytes_atomic(chunk_part(self.output, record.key, record.chunk, "tar"), bytes(part),
                                   self.storage)
            write_bytes_atomic(chunk_part(self.output, record.key, record.chunk, "json"),
                               record_json(record).encode(), self.storage)
        return {RECORD: batch[RECORD]}  # the records go on; the samples' bytes stop here


def packed_videos(output: str, storage: StorageConfig) -> set[str]:
    """Keys of every video some finished shard already accounts for (ok or failed)."""
    return {video["key"] for stats in shard_stats(output, storage) for video in stats["videos"]}


def shard_stats(output: str, storage: StorageConfig) -> list[dict]:
    files = [f for f in list_files(output, storage, suffix=".json") if shard_number(f, "json") is not None]
    return [json.loads(read_bytes(f, storage)) for f in sorted(files)]


def video_verdict(records: list[Record]) -> dict:
    """One video's entry in its shard's stats, from its chunk records and end record."""
    end = next(r for r in records if isinstance(r, EndRecord))
    chunks = [r for r in records if isinstance(r, ChunkRecord)]
    samples = [asdict(s) for r in chunks for s in r.samples]
    verdict = {"key": end.key, "uri": end.uri, "frames": sum(r.frames for r in chunks),
               "frames_with_face": sum(r.frames_with_face for r in chunks),
               "dropped_short": sum(r.dropped_short for r in chunks), "samples": samples,
               "status": "ok", "reason": "", "detail": ""}
    cuts = sorted(cut for r in chunks for cut in r.cuts)
    if cuts:
        verdict["cuts"] = cuts
    annotations = [note for r in chunks for note in r.annotations]
    if annotations:
        verdict["annotations"] = annotations
    failure = next((r.failure for r in [*chunks, end] if r.failure is not None), None)
    if failure is not None:
        verdict.update(status="failed", reason=failure.reason, detail=failure.detail, samples=[])
    elif not samples:
        reason = end.empty_reason or ("no_face" if verdict["frames_with_face"] == 0 else "too_short")
        verdict.update(status="failed", reason=reason,
                       detail=f"{verdict['frames_with_face']} of {verdict['frames']} frames with a face, "
                              f"{verdict['dropped_short']} segments shorter than the minimum")
    return verdict


def part_files(output: str, storage: StorageConfig) -> dict[str, dict[str, str]]:
    """The files under `_parts/`, {file name: URI} by video key, complete or not."""
    by_video: dict[str, dict[str, str]] = {}
    for path in list_files(join(output, PARTS), storage):
        key, name = path.rsplit("/", 2)[-2:]
        if is_safe_key(key):  # anything else under _parts/ is no video's
            by_video.setdefault(key, {})[name] = path
    return by_video


def complete_videos(output: str, storage: StorageConfig) -> dict[str, list[Record]]:
    """Videos whose parts are all written, with their records, by key."""
    complete = {}
    for key, files in sorted(part_files(output, storage).items()):
        if END_PART not in files:
            continue
        try:
            end = record_from_json(read_bytes(files[END_PART], storage))
            names = [chunk_part_name(i, "json") for i in range(end.chunks)]
            if all(name in files for name in names):
                complete[key] = [record_from_json(read_bytes(files[name], storage)) for name in names] + [end]
        except (KeyError, TypeError, ValueError):
            continue  # parts an older version wrote: the video is processed again, which replaces them
    return complete


def pack(output: str, storage: StorageConfig, config: ShardConfig) -> list[dict]:
    """Pack every complete, not yet packed video into new shards; returns the stats of the shards written."""
    done = packed_videos(output, storage)
    for key in done & part_files(output, storage).keys():
        delete(part_folder(output, key), storage)
    existing = [shard_number(f, "json") for f in list_files(output, storage, suffix=".json")]
    number = max((n for n in existing if n is not None), default=-1) + 1
    videos = {k: v for k, v in complete_videos(output, storage).items() if k not in done}
    written: list[dict] = []
    batch: list[dict] = []
    size = count = 0
    for key in sorted(videos):
        verdict = video_verdict(videos[key])
        batch.append(verdict)
        count += len(verdict["samples"])
        if verdict["status"] == "ok":
            size += _parts_bytes(output, key, storage)
        if count >= config.shard_max_samples or size >= config.shard_max_mb * 2 ** 20:
            written.append(_write_shard(output, storage, number, batch))
            number, batch, size, count = number + 1, [], 0, 0
    if batch:
        written.append(_write_shard(output, storage, number, batch))
    for stats in written:
        for video in stats["videos"]:
            delete(part_folder(output, video["key"]), storage)
    return written


def _parts_bytes(output: str, key: str, storage: StorageConfig) -> int:
    fs, path = resolve(part_folder(output, key), storage)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    return sum(info.size or 0 for info in infos if info.path.endswith(".tar"))


def _write_shard(output: str, storage: StorageConfig, number: int, videos: list[dict]) -> dict:
    shard = shard_file(output, number)
    samples = [s for v in videos for s in v["samples"]]
    stats = {"shard": shard_name(number, "tar"), "samples": len(samples), "videos": videos}
    with tempfile.TemporaryDirectory() as scratch:
        local = Path(scratch) / "shard.tar"
        with tarfile.open(local, "w", format=tarfile.USTAR_FORMAT) as tar:
            for video in videos:
                if video["status"] != "ok":
                    continue
                parts = list_files(part_folder(output, video["key"]), storage, suffix=".tar")
                for part in sorted(parts):
                    with tarfile.open(fileobj=io.BytesIO(read_bytes(part, storage))) as source:
                        for member in source.getmembers():
                            tar.addfile(member, source.extractfile(member))
        stats["bytes"] = local.stat().st_size
        if samples:
            upload_file_atomic(local, shard, storage)
        else:
            stats["shard"] = None  # only failures: nothing for a loader to read
    write_bytes_atomic(stats_file(output, number), json.dumps(stats, indent=1, sort_keys=True).encode(), storage)
    return stats


def write_index(output: str, storage: StorageConfig) -> dict[str, int]:
    """Rebuild `index.parquet`: one row per sample and one per failed video, from every shard's stats."""
    rows = []
    for stats in shard_stats(output, storage):
        for video in stats["videos"]:
            if video["status"] != "ok":
                rows.append({"kind": "failure", "key": "", "source_key": video["key"], "source": video["uri"],
                             "shard": "", "reason": video["reason"], "detail": video["detail"], "speaker": "",
                             "split": "", "start_s": 0.0, "end_s": 0.0, "num_frames": 0, "aligner": ""})
            for sample in video["samples"]:
                rows.append({"kind": "sample", "key": sample["key"], "source_key": video["key"],
                             "source": video["uri"], "shard": stats["shard"], "reason": "", "detail": "",
                             "speaker": sample["speaker"], "split": sample["split"], "start_s": sample["start_s"],
                             "end_s": sample["end_s"], "num_frames": sample["num_frames"],
                             "aligner": sample["aligner"]})
    table = pa.Table.from_pylist(rows, schema=INDEX_SCHEMA)
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer)
    write_bytes_atomic(join(output, INDEX_FILE), buffer.getvalue().to_pybytes(), storage)
    return Counter(row["kind"] for row in rows)


INDEX_SCHEMA = pa.schema([("kind", pa.string()), ("key", pa.string()), ("source_key", pa.string()),
                      ("source", pa.string()), ("shard", pa.string()), ("reason", pa.string()),
                      ("detail", pa.string()), ("speaker", pa.string()), ("split", pa.string()),
                      ("start_s", pa.float64()), ("end_s", pa.float64()), ("num_frames", pa.int64()),
                      ("aligner", pa.string())])
