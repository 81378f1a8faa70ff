"""The face stage alone, where its time goes: decoded chunks of real or synthetic clips through `FaceStage.align`.

    python -m bench.face_stage --clips DIR [--aligner retinaface] [--device auto] [--repeat 1] [--out runs/bench/face_stage.json]

Every clip under DIR is decoded once, as preprocessing decodes it (chunks of up to `chunk_seconds`, frames at most
`max_side`), then the face stage runs on every chunk `--repeat` times, after one warm-up chunk (model load,
kernel selection). Reported: frames per second of the stage (wall, the device synchronised at the end of each
chunk, as a chunk's crops come back to the host), its CPU seconds per wall second, and the wall time of each of
its parts: the aligner's methods are wrapped with timers that synchronise the device on the way out, so that a
part's time holds its device work. A cProfile of the last pass names the host-side functions that cost most.
"""

from __future__ import annotations

import cProfile
import functools
import io
import pstats
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

# Parts of the retinaface aligner and the stage, by the method that does them.
PARTS = {
    "upload": ("aligner", "_upload"),
    "detect whole frames": ("aligner", "_whole"),
    "detect in squares": ("aligner", "_in_regions"),
    "track (all detection)": ("aligner", "track"),
}


@dataclass(frozen=True)
class FaceStageBenchConfig:
    clips: Path = field(metadata={"help": "folder of clips (recursive)"})
    aligner: str = field(default="retinaface", metadata={"help": "face aligner",
                                                         "choices": ["retinaface", "face-alignment", "dlib"]})
    device: str = field(default="auto", metadata={"help": "the aligner's device", "choices": ["auto", "cpu", "cuda"]})
    batch_size: int = field(default=0, metadata={"help": "frames per forward pass; 0 = the face config's default"})
    max_clips: int = field(default=0, metadata={"help": "take at most this many clips (0: all)"})
    repeat: int = field(default=1, metadata={"help": "passes over the decoded chunks"})
    out: Path = field(default=Path("runs/bench/face_stage.json"), metadata={"help": "JSON results"})


def decoded_chunks(config: FaceStageBenchConfig) -> list:
    from pipelines.audio import AudioConfig
    from pipelines.decode import DecodeConfig, decode_chunks
    from pipelines.media import probe
    from pipelines.sources import VIDEO_EXTENSIONS

    clips = sorted(p for p in Path(config.clips).rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS)
    if config.max_clips:
        clips = clips[:config.max_clips]
    if not clips:
        raise ValueError(f"no video files under --clips {config.clips}")
    return [chunk.frames for clip in clips for chunk in decode_chunks(clip, probe(clip), DecodeConfig(), AudioConfig())]


def timed(function, name: str, totals: dict, synchronise):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        result = function(*args, **kwargs)
        synchronise()
        totals[name] += time.perf_counter() - start
        return result
    return wrapper


def run(config: FaceStageBenchConfig) -> dict:
    import torch

    from pipelines.faces.base import FaceConfig
    from pipelines.faces.stage import FaceStage

    chunks = decoded_chunks(config)
    faces = FaceConfig(aligner=config.aligner, device=config.device,
                       **({"batch_size": config.batch_size} if config.batch_size else {}))
    stage = FaceStage(faces)
    device = getattr(stage.aligner, "device", torch.device("cpu"))
    synchronise = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    stage.align(chunks[0])  # warm-up
    totals: dict[str, float] = defaultdict(float)
    owners = {"aligner": stage.aligner, "stage": stage}
    for name, (owner, method) in PARTS.items():
        target = owners[owner]
        if hasattr(target, method):
            setattr(target, method, timed(getattr(target, method), name, totals, synchronise))
    stage.align = timed(stage.align, "face stage (all)", totals, synchronise)
    profiler = cProfile.Profile()
    frames = 0
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    for index in range(config.repeat):
        if index == config.repeat - 1:
            profiler.enable()
        for chunk in chunks:
            stage.align(chunk)
            frames += len(chunk)
        profiler.disable()
    wall, cpu = time.perf_counter() - wall_start, time.process_time() - cpu_start
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(15)
    shapes = sorted({tuple(c.shape[1:3]) for c in chunks})
    return {"bench": "face_stage", "command": " ".join(["python -m bench.face_stage", *sys.argv[1:]]),
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()},
            "device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "",
            "frame_shapes": shapes, "chunks": len(chunks), "frames": frames, "wall_s": wall,
            "frames_per_s": frames / wall, "video_s_per_s": frames / 25 / wall, "cpu_s_per_wall_s": cpu / wall,
            "parts_wall_s": dict(totals), "profile_top": text.getvalue()}


def format_table(result: dict) -> str:
    lines = [f"{result['chunks']} chunks, {result['frames']} frames {result['frame_shapes']} on {result['device']} "
             f"{result['device_name']}: {result['frames_per_s']:.0f} frames/s ({result['video_s_per_s']:.1f} video-s "
             f"per s), {result['cpu_s_per_wall_s']:.2f} CPU-s per s",
             f"{'part':28} {'wall s':>8} {'share':>6}"]
    whole = result["parts_wall_s"].get("face stage (all)", result["wall_s"]) or 1.0
    lines += [f"{name:28} {value:8.2f} {value / whole:6.1%}" for name, value in result["parts_wall_s"].items()]
    return "\n".join(lines) + "\n" + "\n".join(result["profile_top"].splitlines()[:40])


def main(argv: list[str] | None = None) -> int:
    from bench.report import bench_main

    return bench_main(FaceStageBenchConfig, __doc__.split("\n")[0], run, format_table, argv)


if __name__ == "__main__":
    raise SystemExit(main())
