"""What does shot-cut detection cost per frame, and how right is it on real clips?

    python -m bench.shots --clips DIR [DIR ...] [--out runs/bench/shots.json]

Every clip is decoded as preprocessing decodes it (25 fps, longer side at most 640 px). Each detector then
runs on every clip, timed per frame, and is judged twice: false cuts, on the clips as they are (talking-head
clips of one shot each); and missed cuts, on real splices: the last `--splice-frames` frames of each clip
followed by the first ones of every other clip (resized to its frame size), a cut at the junction that only a
detector finding it at exactly that frame gets right. Rows: ours (`pipelines.shots`), and, when the package is
importable, PySceneDetect's ContentDetector and AdaptiveDetector at their defaults, fed frames the way its
SceneManager does (downscaled to about 256 px wide, BGR).
"""

from __future__ import annotations

import itertools
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from bench.report import bench_main
from pipelines.audio import AudioConfig
from pipelines.decode import DecodeConfig, decode_chunks
from pipelines.media import MediaError, probe
from pipelines.shots import ShotConfig, ShotState, detect_cuts

VIDEO_SUFFIXES = (".mp4", ".mpg", ".mkv", ".mov", ".avi", ".webm")


@dataclass(frozen=True)
class ShotsBenchConfig:
    clips: tuple[Path, ...] = field(metadata={"help": "folders of real clips, each of one shot"})
    splice_frames: int = field(default=30, metadata={"help": "frames of each clip on either side of a splice"})
    out: Path = field(default=Path("runs/bench/shots.json"), metadata={"help": "JSON results"})

    def __post_init__(self):
        if self.splice_frames < 1:
            raise ValueError("--splice-frames must be at least 1")


def ours(frames: list[np.ndarray]) -> list[int]:
    """Our detector, chunk by chunk as the decoder runs it (here one chunk: chunks do not change its cuts)."""
    return detect_cuts(np.stack(frames), ShotState(), ShotConfig())[0].tolist()


def scenedetect_detector(name: str) -> Callable[[list[np.ndarray]], list[int]] | None:
    """PySceneDetect's detector `name` at its defaults as a function of frames, or None without the package."""
    try:
        import scenedetect
        from scenedetect.common import FrameTimecode
        from scenedetect.scene_manager import compute_downscale_factor
    except ImportError:
        return None

    def detect(frames: list[np.ndarray]) -> list[int]:
        detector = getattr(scenedetect, name)()
        step = max(int(compute_downscale_factor(frames[0].shape[1])), 1)
        cuts = []
        for index, frame in enumerate(frames):
            small = np.ascontiguousarray(frame[::step, ::step, ::-1])  # SceneManager's downscale; BGR as OpenCV reads
            cuts += detector.process_frame(FrameTimecode(index, fps=25.0), small)
        cuts += detector.post_process(FrameTimecode(len(frames), fps=25.0)) or []
        return [int(cut.frame_num) for cut in cuts]

    detect.version = scenedetect.__version__
    return detect


def decoded_clips(folders: tuple[Path, ...]) -> dict[str, list[np.ndarray]]:
    clips = {}
    for folder in folders:
        for path in sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in VIDEO_SUFFIXES):
            try:
                info = probe(path)
                clips[path.name] = [frame for chunk in decode_chunks(path, info, DecodeConfig(), AudioConfig())
                                    for frame in chunk.frames]
            except MediaError as failure:
                print(f"skipped {path}: {failure}")
    if not clips:
        raise ValueError(f"no readable clips under {', '.join(map(str, folders))}")
    return clips


def splices(clips: dict[str, list[np.ndarray]], frames: int):
    """(junction frame, frames) for every ordered pair of clips: the end of one, then the start of the other."""
    for first, second in itertools.permutations(clips, 2):
        tail = clips[first][-frames:]
        height, width = tail[0].shape[:2]
        head = [cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA) for frame in clips[second][:frames]]
        yield len(tail), tail + head


def judge(detect: Callable, clips: dict[str, list[np.ndarray]], splice_frames: int) -> dict:
    frames = sum(len(v) for v in clips.values())
    started = time.process_time()
    false = {name: cuts for name, frames_ in clips.items() if (cuts := detect(frames_))}
    cpu_s = time.process_time() - started
    junctions = list(splices(clips, splice_frames))
    missed = sum(junction not in detect(sequence) for junction, sequence in junctions)
    return {"frames": frames, "us_per_frame": round(1e6 * cpu_s / frames, 1), "clips": len(clips),
            "clips_with_false_cuts": len(false), "false_cuts": sum(len(c) for c in false.values()),
            "false_cut_clips": sorted(false), "splices": len(junctions), "missed_splices": missed}


def bench_shots(config: ShotsBenchConfig) -> dict:
    cv2.setNumThreads(1)
    started = time.process_time()
    clips = decoded_clips(config.clips)
    frames = sum(len(v) for v in clips.values())
    decode_us = 1e6 * (time.process_time() - started) / frames
    rows = [{"detector": "ours (colour histogram, adaptive)", **judge(ours, clips, config.splice_frames)}]
    for name in ("ContentDetector", "AdaptiveDetector"):
        detect = scenedetect_detector(name)
        if detect is not None:
            rows.append({"detector": f"PySceneDetect {detect.version} {name}",
                         **judge(detect, clips, config.splice_frames)})
    return {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, CPU, one thread",
            "decode_us_per_frame": round(decode_us, 1), "rows": rows}


def format_table(result: dict) -> str:
    lines = [f"decoding to 25 fps at <= 640 px: {result['decode_us_per_frame']:.0f} us per frame (CPU)",
             "| detector | us/frame | false cuts (clips) | missed splices |", "| --- | ---: | ---: | ---: |"]
    for row in result["rows"]:
        lines.append(f"| {row['detector']} | {row['us_per_frame']:.0f} | {row['false_cuts']} "
                     f"({row['clips_with_false_cuts']} of {row['clips']}) | {row['missed_splices']} of {row['splices']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return bench_main(ShotsBenchConfig, "shot-cut detection: cost per frame, false and missed cuts on real clips",
                      bench_shots, format_table, argv)


if __name__ == "__main__":
    raise SystemExit(main())
