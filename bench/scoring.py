"""How fast does `python -m model.sync score` measure a video, and where does the time go?

    python -m bench.scoring [--videos DIR] [--checkpoint RUN] [--preset cpu-small|full] [--size N]
                            [--device auto|cpu|cuda] [--out runs/bench/scoring.json]
    python -m bench.scoring --shards DIR ...        the expert alone, on preprocessed segments (no media stack)

Two rows per preset: `video` scores whole videos as the command does (decode to 25 fps / 16 kHz, face
alignment, voice separation and mel, then the expert over -15..+15 frames), timed per stage; `expert only`
scores the same segments again with their crops and mels already in memory, which is all a GPU machine without
the media stack runs, and the part a GPU speeds up. Video-seconds per wall-second for each. Speed does not
depend on the weights, so without `--checkpoint` a randomly initialised expert of `--preset` is used.
"""

from __future__ import annotations

import platform
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from bench.report import bench_main


@dataclass(frozen=True)
class ScoringBenchConfig:
    videos: Path | None = field(default=None, metadata={"help": "folder of videos to score (default: a synthetic corpus of --size videos)"})
    shards: str | None = field(default=None, metadata={"help": "time only the expert, on these shards' segments (runs without PyAV, librosa, dlib)"})
    checkpoint: str | None = field(default=None, metadata={"help": "expert to score with (default: random weights of --preset)"})
    preset: str = field(default="cpu-small", metadata={"help": "model size without --checkpoint", "choices": ["cpu-small", "full"]})
    size: int = field(default=3, metadata={"help": "synthetic videos to make when --videos is not given"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda", "choices": ["auto", "cpu", "cuda"]})
    max_offset: int = field(default=15, metadata={"help": "offsets searched either way"})
    out: Path = field(default=Path("runs/bench/scoring.json"), metadata={"help": "JSON results"})


def random_checkpoint(preset: str, folder: Path) -> str:
    from model.checkpoint import save_checkpoint
    from model.config import PRESETS
    from model.expert import SyncExpert

    torch.manual_seed(0)
    return str(save_checkpoint(folder, SyncExpert(PRESETS[preset]), step=0))


def synthetic_videos(size: int, folder: Path) -> Path:
    from pipelines.synthetic.corpus import SyntheticConfig, generate_corpus

    generate_corpus(SyntheticConfig(out=folder, num_videos=size, seed=3, heldout_fraction=0, min_seconds=4,
                                    max_seconds=6, workers=1), progress=False)
    return folder / "videos"


def bench_expert_on_shards(config: ScoringBenchConfig) -> dict:
    """The `expert only` row from preprocessed segments: what a GPU machine without the media stack measures."""
    from model.expert import SyncExpert
    from pipelines.core.device import resolve_device
    from pipelines.core.storage import StorageConfig
    from pipelines.shards.reader import iter_segments, list_shards

    device = resolve_device(config.device)
    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = config.checkpoint or random_checkpoint(config.preset, Path(scratch))
        expert = SyncExpert.from_checkpoint(checkpoint, device)
    segments = list(iter_segments(list_shards(config.shards, StorageConfig()), StorageConfig(), split=None))
    usable = [s for s in segments if s.num_frames >= expert.config.window_frames + 2 * config.max_offset]
    video_s = expert.config.clock.seconds(sum(s.num_frames for s in usable))
    _grids(expert, usable[:2], config.max_offset)  # warm-up: cuDNN autotuning, allocator
    started = time.perf_counter()
    _grids(expert, usable, config.max_offset)
    wall = time.perf_counter() - started
    device = next(expert.parameters()).device
    rows = [{"mode": "expert only", "device": str(device), "video_s": round(video_s, 2), "wall_s": round(wall, 3),
             "video_s_per_s": round(video_s / wall, 1), "share_decode_faces_mel": 0.0}]
    return {"config": {k: str(v) for k, v in asdict(config).items()}, "model_width": expert.config.width,
            "segments": len(usable), "machine": _machine(device), "date": time.strftime("%Y-%m-%d"), "rows": rows}


def _grids(expert, segments, max_offset: int) -> None:
    from model.offset import similarity_grid

    for segment in segments:
        similarity_grid(expert, segment.faces, segment.mel, max_offset)
    _sync(next(expert.parameters()).device)


def bench_scoring(config: ScoringBenchConfig) -> dict:
    if config.shards:
        return bench_expert_on_shards(config)
    from model.offset import similarity_grid
    from model.sync.scoring import ScoreConfig, ScoreError, VideoScorer

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        checkpoint = config.checkpoint or random_checkpoint(config.preset, scratch)
        videos = config.videos or synthetic_videos(config.size, scratch / "corpus")
        scorer = VideoScorer(ScoreConfig(checkpoint=checkpoint, max_offset=config.max_offset, device=config.device))
        device = next(scorer.expert.parameters()).device
        paths = sorted(p for p in Path(videos).iterdir() if p.is_file())
        stages = {"decode+faces+mel": 0.0, "expert": 0.0}
        video_s, segments = 0.0, []
        for path in paths:
            started = time.perf_counter()
            try:
                found, seen = scorer.segments(path)
            except ScoreError:
                continue
            middle = time.perf_counter()
            scorer.score_segments(found)
            _sync(device)
            stages["decode+faces+mel"] += middle - started
            stages["expert"] += time.perf_counter() - middle
            video_s += seen["frames"] / scorer.fps
            segments += found
        # The expert alone, again, on the segments in memory (warm: the first pass paid for start-up).
        started = time.perf_counter()
        for segment in segments:
            try:
                similarity_grid(scorer.expert, segment.faces, segment.mel, config.max_offset)
            except ValueError:
                pass
        _sync(device)
        expert_only = time.perf_counter() - started
    whole = sum(stages.values())
    rows = [
        {"mode": "video", "device": str(device), "video_s": round(video_s, 2), "wall_s": round(whole, 2),
         "video_s_per_s": round(video_s / whole, 2) if whole else 0.0,
         "share_decode_faces_mel": round(stages["decode+faces+mel"] / whole, 3) if whole else 0.0},
        {"mode": "expert only", "device": str(device), "video_s": round(video_s, 2), "wall_s": round(expert_only, 3),
         "video_s_per_s": round(video_s / expert_only, 1) if expert_only else 0.0, "share_decode_faces_mel": 0.0},
    ]
    return {"config": {k: str(v) for k, v in asdict(config).items()}, "model_width": scorer.expert.config.width,
            "videos": len(paths), "machine": _machine(device),
            "date": time.strftime("%Y-%m-%d"), "rows": rows}


def _machine(device) -> dict:
    return {"platform": platform.platform(), "cpus": _cpus(),
            "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None}


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


def format_table(result: dict) -> str:
    lines = ["| mode | device | video s | wall s | video-s per s | share in decode+faces+mel |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for row in result["rows"]:
        lines.append(f"| {row['mode']} | {row['device']} | {row['video_s']} | {row['wall_s']} | "
                     f"{row['video_s_per_s']} | {row['share_decode_faces_mel']:.0%} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return bench_main(ScoringBenchConfig, "score speed: whole videos and the expert alone", bench_scoring, format_table, argv)


if __name__ == "__main__":
    raise SystemExit(main())
