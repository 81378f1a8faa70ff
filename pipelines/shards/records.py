"""What a producer (the sample stage, curation) hands the part writer about each video, as typed records.

Per video, a producer emits one `ChunkRecord` per chunk it wrote samples for (with the chunk's tar bytes) and then
one `EndRecord`: the chunk count, or the `Failure` that ended the video. The writer stores the records under
`_parts/` and, once a video is complete, makes its verdict for the shard's stats from them.

Records cross Ray Data batches in one column of JSON text: `batch_of` builds a producer's batch (records and
their tar bytes), `records_of` reads the records back; `record_json` / `record_from_json` are the same encoding
for the part files. Nothing else encodes or decodes a record.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

import numpy as np

from pipelines.core.clock import Clock
from pipelines.core.columns import object_column
from pipelines.shards.format import JPEG_QUALITY, sample_members, tar_bytes

RECORD, PART = "record", "part"  # the batch columns between a producer and the part writer


@dataclass(frozen=True)
class Failure:
    reason: str  # a short code to count by: no_audio, corrupt, no_face, ...
    detail: str  # for people: what went wrong and where


@dataclass(frozen=True)
class SampleSummary:
    """What a shard's stats and the index hold per sample (its json holds more)."""

    key: str
    start_frame: int
    num_frames: int
    start_s: float
    end_s: float
    speaker: str
    split: str
    aligner: str

    @classmethod
    def from_meta(cls, meta: dict) -> SampleSummary:
        return cls(**{field.name: meta[field.name] for field in fields(cls)})


@dataclass(frozen=True)
class ChunkRecord:
    key: str  # the video's
    uri: str
    chunk: int
    samples: tuple[SampleSummary, ...] = ()
    frames: int = 0  # frames the producer looked at
    frames_with_face: int = 0
    dropped_short: int = 0  # face segments shorter than the minimum
    annotations: tuple[dict, ...] = ()  # the producer's own notes (JSON objects), stored in the stats unread
    failure: Failure | None = None  # what stopped a stage on this chunk: the whole video fails with it
    cuts: tuple[int, ...] = ()  # video frames in this chunk that start a new shot (`pipelines.shots`)


@dataclass(frozen=True)
class EndRecord:
    key: str
    uri: str
    chunks: int  # ChunkRecords the video has, numbered 0 .. chunks-1
    failure: Failure | None = None
    empty_reason: str = ""  # the producer's word for a video left without samples; "" lets the counts say


Record = ChunkRecord | EndRecord


def chunk_part(samples: list[tuple[np.ndarray, np.ndarray, dict]], clock: Clock,
               quality: int = JPEG_QUALITY) -> tuple[bytes, tuple[SampleSummary, ...]]:
    """A chunk's samples, each (faces, mel, meta) as `format.sample_members` takes them: the tar of all their
    members (b"" for none) and their summaries."""
    members: dict[str, bytes] = {}
    summaries = []
    for faces, mel, meta in samples:
        sample, written = sample_members(faces, mel, meta, clock, quality)
        members.update(sample)
        summaries.append(SampleSummary.from_meta(written))
    return (tar_bytes(members) if members else b""), tuple(summaries)


def record_json(record: Record) -> str:
    kind = "end" if isinstance(record, EndRecord) else "chunk"
    return json.dumps({"kind": kind, **asdict(record)}, sort_keys=True)


def record_from_json(text: str | bytes) -> Record:
    data = json.loads(text)
    kind = data.pop("kind")
    if kind == "end":
        failure = data.pop("failure")
        return EndRecord(**data, failure=Failure(**failure) if failure else None)
    if kind == "chunk":
        samples = tuple(SampleSummary(**sample) for sample in data.pop("samples"))
        annotations = tuple(data.pop("annotations"))
        failure = data.pop("failure", None)  # absent from the records of earlier versions, as are cuts
        cuts = tuple(data.pop("cuts", ()))
        return ChunkRecord(**data, samples=samples, annotations=annotations,
                           failure=Failure(**failure) if failure else None, cuts=cuts)
    raise ValueError(f"unknown record kind {kind!r}")


def batch_of(items: list[tuple[Record, bytes]]) -> dict[str, np.ndarray]:
    """A producer's batch for the part writer: per row a record and its chunk's tar bytes (b"" for none)."""
    return {RECORD: np.array([record_json(record) for record, _ in items]),
            PART: object_column([part for _, part in items])}


def records_of(batch: dict[str, np.ndarray]) -> list[Record]:
    return [record_from_json(str(text)) for text in batch[RECORD]]
