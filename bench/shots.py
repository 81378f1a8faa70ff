"""What does shot-cut detection cost per frame, and how right is it on real clips?

    python -m bench.shots --clips DIR [DIR ...] [--out runs/bench/shots.json]

Every clip is decoded as preprocessing decodes it (25 fps, longer side at most 640 px). Each detector then
runs on every clip, timed per frame, and is judged twice: false cuts, on the clips as they are (talking-head
clips of one shot each); and missed cuts, on real splices: the last `--splice-frames` frames of each clip
followed by the first ones of every other clip (resized to its frame size; both shrunk to at most 256 px), a
cut at the junction that only a detector finding it at exactly that frame gets right. Rows: ours (`pipelines.shots`), and, when the package is
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
from pipelines.decode import DecodeConfig, decode_chunks, fit_within
from pipelines.media import MediaError, probe
from pipelines.shots import ShotConfig, ShotState, detect_cuts
from pipelines.sources import VIDEO_EXTENSIONS

SPLICE_SIDE = 256


@dataclass(frozen=True)
class ShotsBenchConfig:
    clips: tuple[Path, ...] = field(metadata={"help": "folders of real clips, each of one shot"})
    splice_frames: int = field(default=30, metadata={"help": "frames of each clip on either side of a splice"})
    reference_splices: int = field(default=300, metadata={"help": "splices PySceneDetect's detectors are judged on (an even "
                                                                   "sample of all; ours is judged on all)"})
    out: Path = field(default=Path("runs/bench/shots.json"), metadata={"help": "JSON results"})

    def __post_init__(self):
        if self.splice_frames < 1 or self.reference_splices < 1:
            raise ValueError("--splice-frames and --reference-splices must be at least 1")


def ours(frames: list[np.ndarray]) -> list[int]:
    """Our detector, chunk by chunk as the decoder runs it (here one chunk: chunks do not change its cuts)."""
    return detect_cuts(frames, ShotState(), ShotConfig())[0].tolist()


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


def clip_paths(folders: tuple[Path, ...]) -> list[Path]:
    paths = [p for folder in folders for p in sorted(Path(folder).iterdir())
             if p.suffix.lower() in VIDEO_EXTENSIONS]
    if not paths:
        raise ValueError(f"no clips under {', '.join(map(str, folders))}")
    return paths


def decoded(path: Path) -> list[np.ndarray]:
    return [frame for chunk in decode_chunks(path, probe(path), DecodeConfig(), AudioConfig()) for frame in chunk.frames]


def splices(ends: dict[str, tuple[list, list]], most: int | None = None):
    """(junction frame, frames) for every ordered pair of clips (`most` of them, evenly spread, when given): the
    end of one, then the start of the other resized to its frame size. Made one at a time: all of them at once
    would not fit in memory."""
    pairs = list(itertools.permutations(ends, 2))
    if most is not None and most < len(pairs):
        pairs = [pairs[i] for i in np.linspace(0, len(pairs) - 1, most).round().astype(int)]
    for first, second in pairs:
        tail = ends[first][0]
        height, width = tail[0].shape[:2]
        head = [cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA) for frame in ends[second][1]]
        yield len(tail), tail + head


def bench_shots(config: ShotsBenchConfig) -> dict:
    cv2.setNumThreads(1)
    detectors = {"ours (colour histogram, adaptive)": (ours, None)}
    for name in ("ContentDetector", "AdaptiveDetector"):
        detect = scenedetect_detector(name)
        if detect is not None:
            detectors[f"PySceneDetect {detect.version} {name}"] = (detect, config.reference_splices)
    rows = {name: {"detector": name, "frames": 0, "cpu_s": 0.0, "false_cuts": 0, "false_cut_clips": []}
            for name in detectors}
    ends, decode_cpu_s, frames_total = {}, 0.0, 0
    for path in clip_paths(config.clips):
        started = time.process_time()
        try:
            frames = decoded(path)
        except MediaError as failure:
            print(f"skipped {path}: {failure}")
            continue
        decode_cpu_s += time.process_time() - started
        frames_total += len(frames)
        for name, (detect, _) in detectors.items():
            started = time.process_time()
            cuts = detect(frames)
            row = rows[name]
            row["cpu_s"] += time.process_time() - started
            row["frames"] += len(frames)
            if cuts:
                row["false_cuts"] += len(cuts)
                row["false_cut_clips"].append(path.name)
        # Splices are judged on frames shrunk to at most 256 px (PySceneDetect works at about that width anyway).
        small = [fit_within(frame, SPLICE_SIDE) for frame in frames]
        ends[path.name] = (small[-config.splice_frames:], small[:config.splice_frames])
        del frames
    if not ends:
        raise ValueError("no readable clips")
    for name, (detect, most) in detectors.items():
        junctions = missed = 0
        for junction, sequence in splices(ends, most):
            junctions += 1
            missed += junction not in detect(sequence)
        row = rows[name]
        row.update(clips=len(ends), clips_with_false_cuts=len(row["false_cut_clips"]), splices=junctions,
                   missed_splices=missed, us_per_frame=round(1e6 * row.pop("cpu_s") / row["frames"], 1))
    return {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, CPU, one thread",
            "decode_us_per_frame": round(1e6 * decode_cpu_s / frames_total, 1), "rows": list(rows.values())}


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
