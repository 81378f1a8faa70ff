"""`python -m model.sync curate`: the sync filter of a curation pipeline, distributed with Ray Data.

The input is either shards written by `pipelines.preprocess` or videos (a folder, glob, manifest or s3://
prefix, run through the preprocessing stages in process). Actors holding the expert (on a GPU when the cluster
has one) score every face segment over -K..K frames; a segment is kept when |offset| <= `max_abs_offset` and
confidence >= `min_confidence` (LatentSync's filter, here on this expert's scale), and is re-aligned to offset
0 by trimming `|offset|` frames so that faces and audio of the same instant line up. Where several faces are in
view, each face track is judged (`model.sync.scoring.face_tracks_of`): a track that is not the one speaking
among those in view at its time is left out (`not_speaking`), whatever its own offset.

Output, under `output`:
    report.parquet                      one row per segment: its face track, whether it speaks, offset,
                                        confidence, P(in sync), kept or why not;
                                        one row per input that failed, with its reason
    shard-NNNNNN.tar/.json, index.parquet    the kept, re-aligned segments (unless --no-write-shards), written
                                        through the preprocessing's part writer and packer: atomic, resumable

Per source video an actor emits the records preprocessing's sample stage does (`pipelines.shards.records`): a
chunk record with the kept samples and the video's real frame counts, whose annotations are the report rows of
its segments, and an end record (its failure, or `out_of_sync` as the reason it may be left without samples).
The shards' stats keep the annotations, so the report of a rerun is rebuilt from them.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from model.checkpoint import read_checkpoint
from model.offset import OffsetResult
from model.sync.scoring import (DEFAULT_MIN_CONFIDENCE, ScoreConfig, ScoreError, SegmentScore, VideoScorer, check_crop,
                                face_tracks_of)
from pipelines.core.clock import Clock
from pipelines.core.ray_session import quiet_ray_data, ray_for_job, size_thread_pools
from pipelines.core.storage import StorageConfig, check_output, join, local_copy, write_bytes_atomic
from pipelines.shards.reader import Segment, iter_segments, list_shards, read_stats
from pipelines.shards.records import RECORD, ChunkRecord, EndRecord, Failure, Record, batch_of, chunk_part, records_of
from pipelines.shards.writer import (PartWriter, ShardConfig, pack, packed_videos, shard_stats, video_verdict,
                                     write_index)
from pipelines.sources import list_sources

REPORT_FILE = "report.parquet"
OUT_OF_SYNC = "out_of_sync"  # the verdict on a video curation kept no segment of: no failure of the input


@dataclass(frozen=True)
class CurateConfig:
    input: str = field(metadata={"help": "shards of pipelines.preprocess, or videos: folder, glob, manifest or s3:// prefix"})
    output: str = field(metadata={"help": "folder or s3:// prefix for report.parquet and the curated shards"})
    score: ScoreConfig = field(metadata={"help": "scoring"})
    max_abs_offset: int = field(default=6, metadata={"help": "keep segments whose |offset| is at most this many frames"})
    min_confidence: float = field(default=DEFAULT_MIN_CONFIDENCE, metadata={"help": "... and whose confidence is at least this"})
    write_shards: bool = field(default=True, metadata={"help": "write the kept segments, re-aligned, as shards"})
    num_workers: int = field(default=2, metadata={"help": "scoring actors (one GPU each when the cluster has GPUs)"})
    ray_address: str | None = field(default=None, metadata={"help": "join this Ray cluster ('auto' for the one this node belongs to)"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})
    storage: StorageConfig = field(default_factory=StorageConfig, metadata={"help": "object storage"})

    def __post_init__(self):
        if self.max_abs_offset < 0 or self.num_workers < 1:
            raise ValueError("--max-abs-offset must be >= 0 and --num-workers >= 1")
        if self.max_abs_offset > self.score.max_offset:
            raise ValueError(f"--max-abs-offset {self.max_abs_offset} lies outside the searched --max-offset "
                             f"{self.score.max_offset}")


def verdict(result: OffsetResult | None, config: CurateConfig, speaking: bool | None = True) -> str:
    """'' to keep the segment, else why not: too_short (to search the range), not_speaking (another face in view
    at the same time follows the audio more clearly), offset, confidence."""
    if result is None:
        return "too_short"
    if speaking is False:
        return "not_speaking"
    if abs(result.offset_frames) > config.max_abs_offset:
        return "offset"
    if result.confidence < config.min_confidence:
        return "confidence"
    return ""


def realign(faces: np.ndarray, mel: np.ndarray, offset: int, clock: Clock) -> tuple[np.ndarray, np.ndarray, int]:
    """Trim a segment whose audio is `offset` frames late so that face frame t and mel frame t are the same
    instant: (faces [T', S, S, 3], mel [M, clock.mel_column(T')], index of the first face kept).

    Audio late by k: the sound of face frame t is at audio frame t + k, so faces [0, T-k) go with audio
    [k, T); audio early by k: faces [k, T) with audio [0, T-k). A frame more is dropped where rounding the
    mel columns would otherwise run one column past the end.
    """
    total = len(faces)
    first_face = max(0, -offset)
    first_audio = first_face + offset
    length = total - abs(offset)
    column = clock.mel_column(first_audio)
    while length > 0 and column + clock.mel_column(length) > mel.shape[1]:
        length -= 1
    if length <= 0:
        return faces[:0], mel[:, :0], first_face
    return (faces[first_face:first_face + length],
            mel[:, column:column + clock.mel_column(length)], first_face)


def curated_sample(segment: Segment, result: OffsetResult,
                   clock: Clock) -> tuple[np.ndarray, np.ndarray, dict] | None:
    """One kept segment, re-aligned, as a sample (faces, mel, meta) for `chunk_part`; None if too little remains."""
    faces, mel, first = realign(segment.faces, segment.mel, result.offset_frames, clock)
    if len(faces) < clock.window_frames:
        return None
    # What preprocessing always records, a shard made by other means may lack.
    meta = {"start_frame": 0, "aligner": "", **(segment.meta or {})}
    meta.update(key=segment.key, start_frame=int(meta["start_frame"]) + first,
                sync_offset_frames=result.offset_frames, sync_confidence=round(result.confidence, 4), realigned=True)
    return faces, mel, meta


@dataclass(frozen=True)
class ScoredVideo:
    """One source video's scored segments, or why it could not be scored."""

    key: str
    uri: str
    results: list[SegmentScore]  # each with its face track's number; `speaking` by track number
    speaking: dict[int, bool | None] = field(default_factory=dict)
    frames: int = 0
    frames_with_face: int = 0
    dropped_short: int = 0
    failure: Failure | None = None


class CurateStage:
    """Ray Data actor: one input (a shard or a video) in; per source video its records out (through the part
    writer when shards are written): a chunk record with the kept samples and, as its annotations, the report
    rows of its segments, then an end record."""

    def __init__(self, config: CurateConfig, cpus: float):
        size_thread_pools(cpus)
        self.config = config
        self.scorer = VideoScorer(config.score)
        self.expert = self.scorer.expert
        self.writer = PartWriter(config.output, config.storage) if config.write_shards else None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        items = []
        for kind, uri, key in zip(batch["kind"], batch["uri"], batch["key"]):
            videos = self._scored_shard(str(uri)) if kind == "shard" else [self._scored_video(str(uri), str(key))]
            for video in videos:
                items += self._records(video)
        out = batch_of(items)
        return self.writer(out) if self.writer is not None else {RECORD: out[RECORD]}

    def _scored_shard(self, uri: str) -> list[ScoredVideo]:
        by_source: dict[str, list[Segment]] = {}
        sources = {}
        for segment in iter_segments([uri], self.config.storage, split=None):
            check_crop(segment, self.expert.config)
            by_source.setdefault(segment.source_key, []).append(segment)
            sources[segment.source_key] = segment.source
        videos = []
        for key, segments in by_source.items():
            # A shard holds a video's segments only: its frames here are theirs, every one with a face, and
            # nothing was dropped (what preprocessing saw of the whole video is in the input shard's stats).
            frames = sum(segment.num_frames for segment in segments)
            videos.append(self._judged(key, sources[key], self.scorer.score_segments(segments), frames=frames,
                                       frames_with_face=frames))
        return videos

    def _scored_video(self, uri: str, key: str) -> ScoredVideo:
        try:
            with local_copy(uri, self.config.storage) as path:
                segments, seen = self.scorer.segments(path)
            scored = self.scorer.score_segments(segments)
        except ScoreError as failure:
            return ScoredVideo(key, uri, [], failure=Failure(failure.reason, str(failure)))
        return self._judged(key, uri, scored, frames=seen["frames"], frames_with_face=seen["frames_with_face"],
                            dropped_short=seen["dropped_short"])

    @staticmethod
    def _judged(key: str, uri: str, scored: list[SegmentScore], **seen) -> ScoredVideo:
        """A video's scored segments with its face tracks judged: who speaks where several are in view."""
        tracks = face_tracks_of(scored)
        return ScoredVideo(key, uri, scored, speaking={t.number: t.speaking for t in tracks}, **seen)

    def _records(self, video: ScoredVideo) -> list[tuple[Record, bytes]]:
        # A video curation leaves without samples was out of sync (or too short once re-aligned): no failure.
        end = EndRecord(key=video.key, uri=video.uri, chunks=0 if video.failure else 1, failure=video.failure,
                        empty_reason=OUT_OF_SYNC)
        if video.failure:
            return [(end, b"")]
        clock = self.expert.config.clock
        samples, report = [], []
        for scored in video.results:
            segment, result, speaks = scored.segment, scored.result, video.speaking.get(scored.track)
            reason = verdict(result, self.config, speaks)
            kept = None
            if not reason and self.config.write_shards:
                kept = curated_sample(segment, result, clock)
                reason = "" if kept else "too_short"
            if kept:
                samples.append(kept)
            report.append(report_row(video.key, video.uri, segment, result, reason, scored.track, speaks))
        part, summaries = chunk_part(samples, clock)
        chunk = ChunkRecord(key=video.key, uri=video.uri, chunk=0, samples=summaries, frames=video.frames,
                            frames_with_face=video.frames_with_face, dropped_short=video.dropped_short,
                            annotations=tuple(report))
        return [(chunk, part), (end, b"")]


def report_row(source_key: str, source: str, segment: Segment, result: OffsetResult | None, reason: str,
               track: int = 0, speaking: bool | None = True) -> dict:
    meta = segment.meta or {}
    return {"source_key": source_key, "source": source, "key": segment.key,
            "start_s": float(meta.get("start_s", 0.0)), "end_s": float(meta.get("end_s", 0.0)),
            "num_frames": segment.num_frames, "speaker": str(meta.get("speaker", "")),
            "split": str(meta.get("split", "")), "track": track, "speaking": speaking,
            "offset_frames": result.offset_frames if result else None,
            "confidence": round(result.confidence, 4) if result else None,
            "sync_probability": round(result.best_similarity, 4) if result else None,
            "kept": not reason, "reason": reason, "error": ""}


REPORT_SCHEMA = pa.schema([("source_key", pa.string()), ("source", pa.string()), ("key", pa.string()),
                           ("start_s", pa.float64()), ("end_s", pa.float64()), ("num_frames", pa.int64()),
                           ("speaker", pa.string()), ("split", pa.string()), ("track", pa.int64()),
                           ("speaking", pa.bool_()), ("offset_frames", pa.int64()),
                           ("confidence", pa.float64()), ("sync_probability", pa.float64()),
                           ("kept", pa.bool_()), ("reason", pa.string()), ("error", pa.string())])


def failure_row(video: dict) -> dict:
    return {"source_key": video["key"], "source": video["uri"], "key": "", "start_s": 0.0, "end_s": 0.0,
            "num_frames": 0, "speaker": "", "split": "", "track": None, "speaking": None,
            "offset_frames": None, "confidence": None,
            "sync_probability": None, "kept": False, "reason": "failed", "error": video["reason"]}


def list_units(config: CurateConfig) -> list[dict]:
    """The inputs to score: the shards under `input` if it holds any, else its videos."""
    shards = list_shards(config.input, config.storage)
    if shards:
        return [{"kind": "shard", "uri": uri, "key": ""} for uri in shards]
    return [{"kind": "video", "uri": source.uri, "key": source.key} for source in list_sources(config.input, config.storage)]


def pending_units(units: list[dict], config: CurateConfig) -> list[dict]:
    """Units some earlier run of this output has not finished (with shards written; reports alone are redone)."""
    if not config.write_shards:
        return units
    done = packed_videos(config.output, config.storage)
    pending = []
    for unit in units:
        keys = {unit["key"]} if unit["kind"] == "video" else _shard_videos(unit["uri"], config.storage)
        if not keys or not keys <= done:
            pending.append(unit)
    return pending


def _shard_videos(uri: str, storage: StorageConfig) -> set[str]:
    try:
        return {video["key"] for video in read_stats(uri, storage)["videos"] if video["status"] == "ok"}
    except (KeyError, TypeError):
        return set()


def curate(config: CurateConfig) -> dict:
    started = time.perf_counter()
    check_output(config.output, config.storage)
    if "://" not in config.score.checkpoint:  # actors may run in another working directory
        config = replace(config, score=replace(config.score, checkpoint=str(Path(config.score.checkpoint).resolve())))
    units = list_units(config)
    if not units:
        raise ValueError(f"no shards and no videos under {config.input}")
    if units[0]["kind"] == "shard":  # refused here, before any actor starts; each actor checks every segment too
        first = next(iter_segments([units[0]["uri"]], config.storage, split=None), None)
        if first is not None:
            check_crop(first, read_checkpoint(config.score.checkpoint).model_config)
    pending = pending_units(units, config)
    records = score_units(pending, config) if pending else []
    if config.write_shards:
        pack(config.output, config.storage, ShardConfig())
        write_index(config.output, config.storage)
        videos = [video for stats in shard_stats(config.output, config.storage) for video in stats["videos"]]
    else:
        videos = [video_verdict(group) for group in _by_video(records)]
    rows = report_rows(videos)
    table = pa.Table.from_pylist(rows, schema=REPORT_SCHEMA)
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer)
    write_bytes_atomic(join(config.output, REPORT_FILE), buffer.getvalue().to_pybytes(), config.storage)
    return summarize(rows, len(units), len(units) - len(pending), time.perf_counter() - started, config)


def score_units(pending: list[dict], config: CurateConfig) -> list[Record]:
    """Run the scoring actors over the pending inputs; their records, as they come."""
    import ray
    import ray.data
    from tqdm import tqdm

    records = []
    with ray_for_job(config.ray_address, config.num_workers):
        quiet_ray_data()
        gpus = ray.cluster_resources().get("GPU", 0) if config.score.device != "cpu" else 0
        resources = {"num_gpus": 1, "num_cpus": 1} if gpus else {"num_cpus": 1}
        workers = min(config.num_workers, int(gpus)) if gpus else config.num_workers
        scored = ray.data.from_items(pending, override_num_blocks=max(len(pending), 1)).map_batches(
            CurateStage, fn_constructor_args=(config, resources["num_cpus"]), batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=max(min(workers, len(pending)), 1)), **resources)
        bar = tqdm(total=len(pending), unit=pending[0]["kind"], desc="curate",
                   disable=not config.progress)
        for batch in scored.iter_batches(batch_size=None, batch_format="numpy"):
            records += records_of(batch)
            bar.update(1)
        bar.close()
    return records


def _by_video(records: list[Record]) -> list[list[Record]]:
    """Records grouped by video, in key order as packed shards hold them (they arrive in any order)."""
    groups: dict[str, list[Record]] = {}
    for record in records:
        groups.setdefault(record.key, []).append(record)
    return [groups[key] for key in sorted(groups)]


def report_rows(videos: list[dict]) -> list[dict]:
    """Report rows from the verdicts of videos (as shard stats hold them): a row per input that failed, and the
    rows of its segments that curation annotated its records with."""
    rows = []
    for video in videos:
        if video["status"] != "ok" and video["reason"] != OUT_OF_SYNC:
            rows.append(failure_row(video))
        # "report": the name these rows had in shards curated before producers' annotations were neutral
        rows += video.get("annotations", video.get("report", []))
    return rows


def summarize(rows: list[dict], units: int, skipped: int, wall_s: float, config: CurateConfig) -> dict:
    segments = [r for r in rows if r["key"]]
    offsets = [r["offset_frames"] for r in segments if r["offset_frames"] is not None]
    return {"inputs": units, "inputs_already_done": skipped,
            "failed": dict(Counter(r["error"] for r in rows if not r["key"])),
            "segments": len(segments), "kept": sum(r["kept"] for r in segments),
            "rejected": dict(Counter(r["reason"] for r in segments if not r["kept"])),
            "offset_histogram": dict(sorted(Counter(offsets).items())),
            "report": join(config.output, REPORT_FILE), "wall_s": round(wall_s, 2)}


def format_summary(summary: dict) -> str:
    rejected = ", ".join(f"{reason}: {n}" for reason, n in sorted(summary["rejected"].items())) or "none"
    failed = ", ".join(f"{reason}: {n}" for reason, n in sorted(summary["failed"].items())) or "none"
    histogram = " ".join(f"{k:+d}:{n}" for k, n in summary["offset_histogram"].items())
    return "\n".join([
        f"inputs: {summary['inputs']} ({summary['inputs_already_done']} done by an earlier run), failed: {failed}",
        f"segments: {summary['segments']} scored, {summary['kept']} kept, rejected by reason: {rejected}",
        f"offsets (frames:segments): {histogram}",
        f"report: {summary['report']}   time: {summary['wall_s']:.1f} s",
    ])
