"""`python -m pipelines.preprocess --input SRC --output DST`: talking-face videos -> WebDataset shards.

The chain, on Ray Data (one row per video, then one per chunk of up to `chunk_seconds`):

    list sources (driver: paths only, largest first)
      -> DecodeStage   decode, 25 fps by timestamp, 16 kHz mono
      -> FaceStage     detect, landmarks (68 or 5), align, crop               (GPU when asked)
      -> SampleStage   voice separation, the face stage's tracks -> segments, log-mel, samples and records
      -> PartWriter    each chunk's samples persisted atomically under _parts/
    then pack complete videos into shard-NNNNNN.tar (+ .json stats) and rebuild index.parquet.

Where the stages run: with the face stage on CPUs, a worker is one actor of one CPU that takes a video and runs
all four stages on one chunk at a time (`FusedStages`), so every worker is busy from start to end and no frames
wait in Ray's object store. A GPU face stage gets actors of its own between a CPU pool of decoders and one of
sample writers, with what queues between them capped (`build_dataset`).

A rerun with the same output skips every video a finished shard accounts for, and resumes the rest.
"""

from __future__ import annotations

import logging
import hashlib
import json
import math
import sys
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from pipelines.audio import AudioConfig, start_compiling_kernels, wait_for_kernels
from pipelines.core.clock import EXPERT_CLOCK
from pipelines.core.ray_session import quiet_ray_data, ray_for_job, size_thread_pools
from pipelines.core.storage import StorageConfig, check_output
from pipelines.decode import DecodeConfig, DecodeStage
from pipelines.faces.base import FaceConfig
from pipelines.faces.factory import auto_aligner
from pipelines.faces.stage import FaceStage
from pipelines.samples import SampleConfig, SampleStage
from pipelines.shards.records import EndRecord, Failure, batch_of, records_of
from pipelines.shards.writer import PartWriter, ShardConfig, pack, packed_videos, shard_stats, write_index
from pipelines.sources import Source, list_sources

logger = logging.getLogger(__name__)

# What the actors ask Ray for, in CPUs. Fused (the face stage on CPUs): a worker is one actor that runs every stage,
# one CPU. Separate pools (a GPU face stage, or --no-fuse-stages): per worker a decoder and a sample writer, plus
# the face actors; their shares follow where the CPU time goes (bench/README.md: decode ~0.04, faces on a CPU
# ~0.12, samples ~0.12 CPU-s per video-s) and add up to at most one CPU per worker while face actors are no more
# than workers, so that every pool fits in a local Ray instance of `num_workers` CPUs and streams.
WORKER_CPUS = 1.0
SEPARATE_CPUS = {"decode": 0.2, "faces": 0.4, "samples": 0.4}  # CPU face stage
SEPARATE_CPUS_GPU = {"decode": 0.25, "faces": 0.25, "samples": 0.5}  # the GPU does the face stage's work
# The smallest --max-cpus under which one actor of every stage still fits (min pool sizes are one).
MIN_CPUS = WORKER_CPUS
# When the stages run in separate pools, Ray Data's object store budget is this many decoded chunks per face actor,
# each counted at its bound (square frames at max_side: 307 MB for 10 s at 640 px; 16:9 frames take 56 % of that,
# so nearly two of those fit). Measured (bench/README.md): on CPUs, 2 chunks let the queue grow with the corpus and
# 1 kept peak RSS near flat at the same throughput; with the face stage on an H200, 4 chunks made an hour of
# synthetic video 1.41x faster than 1 (27.8 -> 39.2 video-s per s) and 8 no faster than 4.
QUEUED_CHUNKS_PER_FACE_ACTOR = 1
QUEUED_CHUNKS_PER_GPU_FACE_ACTOR = 4
# Face actors per GPU, each asking for that share of it: one actor leaves the GPU idle while it decodes its input
# from the object store, picks faces and smooths points on its CPU, and its network batches are small (a chunk's
# keyframes, then its squares of 160 px), so several actors overlap on one GPU (bench/README.md, GPU preprocessing).
FACE_ACTORS_PER_GPU = 4


@dataclass(frozen=True)
class PreprocessConfig:
    input: str = field(metadata={"help": "folder, glob, manifest (.csv/.jsonl/.parquet with a path column) or s3://bucket/prefix"})
    output: str = field(default="shards", metadata={"help": "folder or s3://bucket/prefix for shards and index.parquet"})
    val_fraction: float = field(default=0.2, metadata={"help": "share of speakers (or videos, without speakers) held out for validation"})
    num_workers: int = field(default=2, metadata={"help": "workers of one CPU each: an actor running every stage on one chunk "
                                                          "at a time, or a decoder and a sample writer in separate pools "
                                                          "(on a cluster: about its CPUs); also the CPUs of a local Ray "
                                                          "instance"})
    fuse_stages: bool = field(default=True, metadata={"help": "with the face stage on CPUs, run all stages in one actor per worker "
                                                               "(--no-fuse-stages: a pool of actors per stage, as a GPU "
                                                               "face stage always gets)"})
    max_cpus: float | None = field(default=None, metadata={"help": "most CPUs of the Ray cluster preprocessing may take "
                                                                    "(Ray Data's resource limit), so that a training job "
                                                                    "sharing the cluster keeps the rest"})
    face_workers: int = field(default=0, metadata={"help": "face-stage actors when stages run in separate pools; 0 = "
                                                          f"{FACE_ACTORS_PER_GPU} per GPU on GPUs (at most num_workers), "
                                                          "else num_workers"})
    queued_chunks: int = field(default=0, metadata={
        "help": "decoded chunks that may wait per face actor when stages run in separate pools (Ray Data's object "
                "store budget between them, each counted at its bound): more overlaps decoding with the face stage, "
                f"at that much memory; 0 = {QUEUED_CHUNKS_PER_GPU_FACE_ACTOR} with the face stage on GPUs, "
                f"{QUEUED_CHUNKS_PER_FACE_ACTOR} on CPUs"})
    ray_address: str | None = field(default=None, metadata={"help": "join this Ray cluster ('auto' for the one this node belongs to; "
                                                                      "under `ray job submit`, the job's cluster by default)"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar over videos"})
    storage: StorageConfig = field(default_factory=StorageConfig, metadata={"help": "object storage"})
    decode: DecodeConfig = field(default_factory=DecodeConfig, metadata={"help": "decoding"})
    # Shards train our experts, which read aligned crops (box crops are cut for an imported expert as it scores).
    faces: FaceConfig = field(default_factory=FaceConfig, metadata={"help": "faces: detection, landmarks, alignment",
                                                                    "omit": ("crop", "crop_pad_bottom")})
    samples: SampleConfig = field(default_factory=SampleConfig, metadata={"help": "samples: voice, segments, crops"})
    shards: ShardConfig = field(default_factory=ShardConfig, metadata={"help": "shards"})

    def __post_init__(self):
        problems = []
        if not 0 <= self.val_fraction < 1:
            problems.append("--val-fraction must lie in [0, 1)")
        if self.num_workers < 1:
            problems.append("--num-workers must be at least 1")
        if self.queued_chunks < 0:
            problems.append("--queued-chunks must be at least 1 (or 0: chosen by where the face stage runs)")
        if self.max_cpus is not None and self.max_cpus < MIN_CPUS:
            problems.append(f"--max-cpus must be at least {MIN_CPUS}: one actor of every stage runs whatever the cap")
        if self.decode.chunk_seconds * EXPERT_CLOCK.fps < self.samples.min_segment_frames:
            problems.append("--chunk-seconds is shorter than --min-segment-frames")
        if self.faces.face_weights is not None and not Path(self.faces.face_weights).is_dir():
            problems.append(f"--face-weights {self.faces.face_weights} is not a folder")
        if self.samples.speaker_expert:
            problems += speaker_expert_problems(self.samples.speaker_expert, self.faces)
        if problems:
            raise ValueError("invalid preprocess config: " + "; ".join(problems))


def speaker_expert_problems(checkpoint: str, faces: FaceConfig) -> list[str]:
    """What keeps `checkpoint` from judging who speaks among the faces preprocessing cuts: it must read these crops
    on this clock, and there must be several faces to judge."""
    from model.checkpoint import find_checkpoint, read_checkpoint

    if (faces.max_faces or 1) == 1:
        return ["--speaker-expert judges which of several faces speaks: give --max-faces 2 or more"]
    try:
        model = read_checkpoint(find_checkpoint(checkpoint)).model_config
    except (FileNotFoundError, ValueError) as error:
        return [f"--speaker-expert {checkpoint}: {error}"]
    if model.crop != faces.crop or model.face_size != faces.crop_size or model.clock != EXPERT_CLOCK:
        return [f"--speaker-expert {checkpoint} reads {model.crop} crops of {model.face_size} px on {model.clock}; "
                f"preprocessing cuts {faces.crop} crops of {faces.crop_size} px on {EXPERT_CLOCK}"]
    return []


def assign_split(group: str, val_fraction: float) -> str:
    """Validation or training by a stable hash of the speaker (or video): all of a group lands on one side."""
    bucket = int.from_bytes(hashlib.sha1(group.encode()).digest()[:8], "big") / 2 ** 64
    return "val" if bucket < val_fraction else "train"


def source_rows(sources: list[Source], val_fraction: float) -> list[dict]:
    return [{"key": s.key, "uri": s.uri, "speaker": s.speaker or "",
             "split": s.split or assign_split(s.speaker or s.key, val_fraction)} for s in sources]


class FusedStages:
    """Several stages in one actor: a batch goes through each in turn in this process, so what passes between them
    (a chunk's frames, its crops) never goes through Ray's object store, and one chunk at a time is in memory.

    Ray Data fuses a chain of task-pool stages by itself, but never two actor pools (its operator fusion rule);
    stateful stages that share a CPU are fused here instead. `stages` lists (class, constructor args); each is
    built once, here, after the process's thread pools are sized to the actor's `cpus`. Every actor pool of
    preprocessing is one of these, a single stage included. A stage returns a batch or yields several (DecodeStage yields a video's chunks), and each
    goes on to the next stage before the following one is made.
    """

    def __init__(self, stages: list[tuple[type, tuple]], cpus: float):
        size_thread_pools(cpus)
        self.stages = [stage(*args) for stage, args in stages]

    def __call__(self, batch: dict[str, np.ndarray]):
        yield from self._from(0, batch)

    def _from(self, index: int, batch: dict[str, np.ndarray]):
        if index == len(self.stages):
            yield batch
            return
        out = self.stages[index](batch)
        for piece in (out,) if isinstance(out, dict) else out:
            yield from self._from(index + 1, piece)


# The separate pools' classes, each a FusedStages under its own name: Ray Data names an operator, its stats and its
# actors' process titles after the class ("ray::MapWorker(MapBatches(DecodePool))"), so that a profile can tell the
# pools apart (bench/device_scale.sh adds up the CPU time of the machine's processes by title).
class DecodePool(FusedStages):
    pass


class FacePool(FusedStages):
    pass


class SamplePool(FusedStages):
    pass


def chunk_bytes_bound(decode: DecodeConfig) -> int:
    """The most a decoded chunk's frames take: every frame square at the longest side kept, RGB."""
    return int(decode.chunk_seconds * EXPERT_CLOCK.fps) * decode.max_side ** 2 * 3


def build_dataset(rows: list[dict], config: PreprocessConfig, use_gpu: bool):
    import ray.data

    audio = AudioConfig()
    stages = {
        "decode": (DecodeStage, (config.decode, audio, config.storage)),
        "faces": (FaceStage, (config.faces,)),
        "samples": (SampleStage, (audio, config.samples)),
        "write": (PartWriter, (config.output, config.storage)),
    }

    def pool(size: int, one_task_at_a_time: bool = False):
        # A fixed pool holds its CPUs for the whole run whatever Ray Data's resource limit says (measured with
        # Ray 2.60); under --max-cpus the pools grow from one actor only as far as the limit lets them.
        if config.max_cpus is None:
            # One task in flight per actor: a worker that finishes early takes the next input rather than one
            # queued behind another worker's.
            return ray.data.ActorPoolStrategy(size=size,
                                              max_tasks_in_flight_per_actor=1 if one_task_at_a_time else None)
        # Ray's default of two tasks in flight per actor here: its autoscaler adds an actor only when the tasks
        # submitted per actor exceed `DataContext.autoscaling_config.actor_pool_util_upscaling_threshold` (1.75).
        return ray.data.ActorPoolStrategy(min_size=1, max_size=size)

    dataset = ray.data.from_items(rows, override_num_blocks=max(len(rows), 1))
    if config.fuse_stages and not use_gpu:
        # A task is a whole video; only a few bytes per chunk leave an actor.
        dataset = dataset.map_batches(FusedStages, fn_constructor_args=(list(stages.values()), WORKER_CPUS),
                                      batch_size=1, compute=pool(config.num_workers, one_task_at_a_time=True),
                                      num_cpus=WORKER_CPUS)
        queued_bytes = None
    else:
        cpus = SEPARATE_CPUS_GPU if use_gpu else SEPARATE_CPUS
        gpus = max(int(ray.cluster_resources().get("GPU", 0)), 1)
        face_workers = config.face_workers or (min(gpus * FACE_ACTORS_PER_GPU, config.num_workers) if use_gpu
                                               else config.num_workers)
        # A share that packs: every GPU holds a whole number of actors (Ray counts shares to 1e-4: rounded down).
        gpu_share = math.floor(1e4 / math.ceil(face_workers / gpus)) / 1e4
        dataset = (
            dataset
            .map_batches(DecodePool, fn_constructor_args=([stages["decode"]], cpus["decode"]), batch_size=1,
                         compute=pool(config.num_workers), num_cpus=cpus["decode"])
            .map_batches(FacePool, fn_constructor_args=([stages["faces"]], cpus["faces"]), batch_size=1,
                         compute=pool(face_workers), num_cpus=cpus["faces"], **({"num_gpus": gpu_share} if use_gpu else {}))
            .map_batches(SamplePool, fn_constructor_args=([stages["samples"], stages["write"]], cpus["samples"]),
                         batch_size=1, compute=pool(config.num_workers), num_cpus=cpus["samples"])
        )
        # Decoding outruns the face stage; without a cap, decoded chunks pile up in the object store (and the
        # actors' memory) as far as Ray Data's default budget, half the object store, lets them.
        queued_chunks = config.queued_chunks or (QUEUED_CHUNKS_PER_GPU_FACE_ACTOR if use_gpu else QUEUED_CHUNKS_PER_FACE_ACTOR)
        queued_bytes = queued_chunks * face_workers * chunk_bytes_bound(config.decode)
    if config.max_cpus is not None or queued_bytes is not None:
        # Ray Data's documented limits on what a dataset takes: --max-cpus so that a training job sharing the
        # cluster keeps the rest; object store memory to bound what waits between stages. Unset fields stay
        # autodetected. Set on this dataset's own context (a copy), not on the process-wide one.
        dataset.context.execution_options.resource_limits = ray.data.ExecutionResources.for_limits(
            cpu=config.max_cpus, object_store_memory=queued_bytes)
    return dataset


def face_stage_on_gpu(config: PreprocessConfig) -> bool:
    """Whether face actors ask for a GPU. With --device auto, decided from the cluster's resources, not from torch
    in this process: on a cluster the driver (the head node) often has no GPU while workers do. The dlib aligner
    runs on CPUs only, so it never holds a GPU, nor does `auto` where it means dlib."""
    import ray

    faces = config.faces
    if faces.device == "cpu" or faces.aligner == "dlib":
        return False
    gpu = faces.device == "cuda" or ray.cluster_resources().get("GPU", 0) > 0
    return gpu and (faces.aligner != "auto" or auto_aligner(faces, on_gpu=True) != "dlib")


def run(config: PreprocessConfig) -> dict:
    """Process every video not yet in a shard, pack, index; returns the summary."""
    started = time.perf_counter()
    check_output(config.output, config.storage)
    if config.samples.speaker_expert and "://" not in config.samples.speaker_expert:  # actors may run elsewhere
        config = replace(config, samples=replace(config.samples,
                                                 speaker_expert=str(Path(config.samples.speaker_expert).resolve())))
    sources = list_sources(config.input, config.storage)
    done = packed_videos(config.output, config.storage)
    pending = [s for s in sources if s.key not in done]
    record_unusable([s for s in pending if s.error], config)
    readable = [s for s in pending if not s.error]
    if readable:
        compiling = start_compiling_kernels()  # while Ray starts, once, not in every sample writer
        with ray_for_job(config.ray_address, config.num_workers):
            wait_for_kernels(compiling)
            _process(readable, config)
    pack(config.output, config.storage, config.shards)
    write_index(config.output, config.storage)
    return summarize(config, len(sources), len(sources) - len(pending), time.perf_counter() - started)


def record_unusable(sources: list[Source], config: PreprocessConfig) -> None:
    """Inputs the listing already found unusable (a name that is not UTF-8, a broken link) get the end record of a
    video that failed, written by the part writer here in the driver: packing then counts each as failed with its
    reason, and none costs a trip through Ray."""
    if sources:
        PartWriter(config.output, config.storage)(batch_of(
            [(EndRecord(key=s.key, uri=s.uri, chunks=0, failure=Failure(s.error, s.detail)), b"") for s in sources]))


def _process(pending: list[Source], config: PreprocessConfig) -> None:
    from tqdm import tqdm

    quiet_ray_data()  # ours counts videos
    # Largest first: the last videos to start are short ones, so workers finish close together. (Shards do not
    # depend on the order: packing sorts videos by key.)
    pending = sorted(pending, key=lambda source: -source.size_bytes)
    dataset = build_dataset(source_rows(pending, config.val_fraction), config, face_stage_on_gpu(config))
    bar = tqdm(total=len(pending), unit="video", desc="preprocess", disable=not config.progress)
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        bar.update(sum(isinstance(record, EndRecord) for record in records_of(batch)))
    bar.close()
    # Each stage's busy time, for whoever profiles a run (bench.preprocess asks for it); not the user's business.
    logger.debug("Ray Data's stats of the run:\n%s", dataset.stats())


def summarize(config: PreprocessConfig, listed: int, skipped: int, wall_s: float) -> dict:
    stats = shard_stats(config.output, config.storage)
    videos = [v for s in stats for v in s["videos"]]
    samples = [x for v in videos for x in v["samples"]]
    speech_s = sum(x["end_s"] - x["start_s"] for x in samples)
    video_s = EXPERT_CLOCK.seconds(sum(v["frames"] for v in videos))
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
    from pipelines.core.cli import parse_config

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


