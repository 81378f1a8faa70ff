"""`python -m pipelines.preprocess --input SRC --output DST`: talking-face videos -> WebDataset shards.

The chain, on Ray Data (one row per video, then one per chunk of up to `chunk_seconds`):

    list sources (driver: paths only)
      -> DecodeStage   decode, 25 fps by timestamp, 16 kHz mono              CPU tasks
      -> FaceStage     detect, 68 landmarks, align, crop                      actors (GPU when asked)
      -> SampleStage   voice separation, face tracks -> segments, log-mel    CPU
      -> PartWriter    each chunk's samples persisted atomically under _parts/
    then pack complete videos into shard-NNNNNN.tar (+ .json stats) and rebuild index.parquet.

A rerun with the same output skips every video a finished shard accounts for, and resumes the rest.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipelines.audio import AudioConfig
from pipelines.decode import DecodeConfig, DecodeStage
from pipelines.faces.base import FaceConfig
from pipelines.faces.stage import FaceStage
from pipelines.samples import SampleConfig, SampleStage
from pipelines.shards import PartWriter, ShardConfig, pack, packed_videos, shard_stats, write_index
from pipelines.sources import Source, list_sources
from pipelines.storage import StorageConfig


@dataclass(frozen=True)
class PreprocessConfig:
    input: str = field(metadata={"help": "folder, glob, manifest (.csv/.jsonl/.parquet with a path column) or s3://bucket/prefix"})
    output: str = field(default="shards", metadata={"help": "folder or s3://bucket/prefix for shards and index.parquet"})
    endpoint: str | None = field(default=None, metadata={"help": "S3-compatible endpoint URL, e.g. http://127.0.0.1:9000"})
    aligner: str = field(default="auto", metadata={"help": "auto | face-alignment | dlib (auto: face-alignment when its weights are present)",
                                                    "choices": ["auto", "face-alignment", "dlib"]})
    face_weights: Path | None = field(default=None, metadata={"help": "folder with face-alignment's weight files (default: the torch hub cache)"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda, for the face stage", "choices": ["auto", "cpu", "cuda"]})
    crop_size: int = field(default=96, metadata={"help": "side of the aligned face crops"})
    chunk_seconds: float = field(default=10.0, metadata={"help": "videos are cut into pieces of at most this length (the longest sample)"})
    max_side: int = field(default=640, metadata={"help": "frames are downscaled to this longer side before face detection"})
    separate: bool = field(default=True, metadata={"help": "separate the voice from background music/noise (REPET-SIM)"})
    min_segment_frames: int = field(default=5, metadata={"help": "face segments shorter than this are dropped (counted)"})
    val_fraction: float = field(default=0.2, metadata={"help": "share of speakers (or videos, without speakers) held out for validation"})
    num_workers: int = field(default=2, metadata={"help": "CPUs for a local Ray instance (ignored with --ray-address)"})
    face_workers: int = field(default=0, metadata={"help": "face-stage actors; 0 = one per GPU with --device cuda, else num_workers"})
    shard_max_samples: int = field(default=2000, metadata={"help": "a shard is closed after this many samples"})
    shard_max_mb: float = field(default=512.0, metadata={"help": "... or after this many megabytes"})
    ray_address: str | None = field(default=None, metadata={"help": "join this Ray cluster ('auto' for the one this node belongs to)"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar over videos"})

    def __post_init__(self):
        problems = []
        if not 0 <= self.val_fraction < 1:
            problems.append("--val-fraction must lie in [0, 1)")
        if self.min_segment_frames < 1 or self.num_workers < 1 or self.crop_size < 16:
            problems.append("--min-segment-frames >= 1, --num-workers >= 1, --crop-size >= 16")
        if self.chunk_seconds * 25 < self.min_segment_frames:
            problems.append("--chunk-seconds is shorter than --min-segment-frames")
        if self.face_weights is not None and not Path(self.face_weights).is_dir():
            problems.append(f"--face-weights {self.face_weights} is not a folder")
        if problems:
            raise ValueError("invalid preprocess config: " + "; ".join(problems))

    @property
    def storage(self) -> StorageConfig:
        return StorageConfig(endpoint=self.endpoint)

    @property
    def faces(self) -> FaceConfig:
        return FaceConfig(aligner=self.aligner, face_weights=self.face_weights, device=self.device,
                          crop_size=self.crop_size)


def assign_split(group: str, val_fraction: float) -> str:
    """Validation or training by a stable hash of the speaker (or video): all of a group lands on one side."""
    bucket = int.from_bytes(hashlib.sha1(group.encode()).digest()[:8], "big") / 2 ** 64
    return "val" if bucket < val_fraction else "train"


def source_rows(sources: list[Source], val_fraction: float) -> list[dict]:
    return [{"key": s.key, "uri": s.uri, "speaker": s.speaker or "",
             "split": s.split or assign_split(s.speaker or s.key, val_fraction)} for s in sources]


def build_dataset(rows: list[dict], config: PreprocessConfig, use_gpu: bool):
    import ray.data

    audio = AudioConfig()
    decode = DecodeConfig(chunk_seconds=config.chunk_seconds, max_side=config.max_side)
    faces = config.faces
    face_workers = config.face_workers or (max(int(ray.cluster_resources().get("GPU", 0)), 1) if use_gpu
                                           else config.num_workers)
    # Actors hold their CPU for the whole run; the decode and sample tasks must still get a share, or the
    # stream stalls. Half a CPU per face actor on CPU runs leaves room for both.
    face_resources = {"num_gpus": 1, "num_cpus": 1} if use_gpu else {"num_cpus": 0.5}
    return (
        ray.data.from_items(rows, override_num_blocks=max(len(rows), 1))
        .map_batches(DecodeStage, fn_constructor_args=(decode, audio, config.storage), batch_size=1,
                     compute=ray.data.ActorPoolStrategy(size=config.num_workers), num_cpus=0.5)
        .map_batches(FaceStage, fn_constructor_args=(faces,), batch_size=1,
                     compute=ray.data.ActorPoolStrategy(size=face_workers), **face_resources)
        .map_batches(SampleStage, fn_constructor_args=(audio, SampleConfig(config.separate, config.min_segment_frames),
                                                        faces.max_center_jump, decode.fps),
                     batch_size=1, compute=ray.data.ActorPoolStrategy(size=config.num_workers), num_cpus=0.5)
        .map_batches(PartWriter, fn_constructor_args=(config.output, config.storage), batch_size=1,
                     compute=ray.data.ActorPoolStrategy(size=1), num_cpus=0.1)
    )


def run(config: PreprocessConfig) -> dict:
    """Process every video not yet in a shard, pack, index; returns the summary."""
    import ray

    started = time.perf_counter()
    sources = list_sources(config.input, config.storage)
    done = packed_videos(config.output, config.storage)
    pending = [s for s in sources if s.key not in done]
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # A Ray instance this run starts is also stopped by it: its workers then always see this process's
    # environment (object-storage credentials among it), not that of an earlier run.
    own_ray = not ray.is_initialized()
    if own_ray:
        if config.ray_address:
            ray.init(address=config.ray_address)
        else:
            ray.init(num_cpus=config.num_workers, include_dashboard=False, log_to_driver=False)
    try:
        if pending:
            _process(pending, config)
    finally:
        if own_ray:
            ray.shutdown()
    pack(config.output, config.storage, ShardConfig(config.shard_max_samples, config.shard_max_mb))
    write_index(config.output, config.storage)
    return summarize(config, len(sources), len(sources) - len(pending), time.perf_counter() - started)


def _process(pending: list[Source], config: PreprocessConfig) -> None:
    import ray
    import ray.data
    from tqdm import tqdm

    ray.data.DataContext.get_current().enable_progress_bars = False  # ours counts videos, what a person waits for
    use_gpu = config.device == "cuda" or (config.device == "auto" and ray.cluster_resources().get("GPU", 0) > 0)
    dataset = build_dataset(source_rows(pending, config.val_fraction), config, use_gpu)
    bar = tqdm(total=len(pending), unit="video", desc="preprocess", disable=not config.progress)
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        bar.update(int(np.sum(batch["end"])))
    bar.close()


def summarize(config: PreprocessConfig, listed: int, skipped: int, wall_s: float) -> dict:
    stats = shard_stats(config.output, config.storage)
    videos = [v for s in stats for v in s["videos"]]
    samples = [x for v in videos for x in v["samples"]]
    speech_s = sum(x["end_s"] - x["start_s"] for x in samples)
    video_s = sum(v["frames"] for v in videos) / 25
    return {
        "videos_listed": listed,
        "videos_skipped_already_done": skipped,
        "videos_ok": sum(v["status"] == "ok" for v in videos),
        "videos_failed": dict(Counter(v["reason"] for v in videos if v["status"] != "ok")),
        "segments": len(samples),
        "segments_dropped_short": sum(v["dropped_short"] for v in videos),
        "splits": dict(Counter(x["split"] for x in samples)),
        "hours_of_face_segments": round(speech_s / 3600, 4),
        "shards": sum(1 for s in stats if s["shard"]),
        "bytes": sum(s["bytes"] for s in stats if s["shard"]),
        "wall_s": round(wall_s, 2),
        "video_seconds_per_second": round(video_s / wall_s, 2) if wall_s else 0.0,
    }


def format_summary(summary: dict) -> str:
    failed = ", ".join(f"{reason}: {count}" for reason, count in sorted(summary["videos_failed"].items())) or "none"
    return "\n".join([
        f"videos: {summary['videos_ok']} ok, failed by reason: {failed} "
        f"({summary['videos_skipped_already_done']} already done before this run)",
        f"segments: {summary['segments']} ({summary['hours_of_face_segments'] * 60:.1f} min), "
        f"{summary['segments_dropped_short']} dropped as too short, splits {summary['splits']}",
        f"shards: {summary['shards']}, {summary['bytes'] / 2 ** 20:.1f} MiB",
        f"time: {summary['wall_s']:.1f} s, {summary['video_seconds_per_second']:.1f} video-seconds per second",
    ])


def main(argv: list[str] | None = None) -> int:
    from pipelines.cli import parse_config

    try:
        config = parse_config(PreprocessConfig, __doc__.split("\n")[0].strip("`"), argv)
        summary = run(config)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_summary(summary))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())


