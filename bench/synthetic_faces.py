"""How fast the synthetic generator makes faces and clips, per core: drawn faces against photo faces.

    python -m bench.synthetic_faces [--frames 300] [--videos 6] [--face-sources DIR] [--out runs/bench/synthetic_faces.json]

Two figures per face kind, both on one process with OpenCV on one thread (the generator's parallelism is one
process per video, so per-core figures multiply by the cores): frames rendered per second alone (pose, mouth,
noise, and for photos the camera marks), and whole clips (speech, audio, rendering, encoding, as
`python -m pipelines.synthetic --workers 1` makes them) in seconds of video per second. Seconds are CPU seconds
of the process (all its threads), so a machine shared with other work still gives per-core figures.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from bench.report import bench_main

FRAME_SIZES = ((256, 256), (480, 360))


@dataclass(frozen=True)
class SyntheticFacesConfig:
    frames: int = field(default=300, metadata={"help": "frames rendered per face kind and frame size"})
    videos: int = field(default=6, metadata={"help": "whole clips made per face kind"})
    face_sources: Path | None = field(default=None, metadata={"help": "photo identities' folder (default the astronaut)"})
    out: Path = field(default=Path("runs/bench/synthetic_faces.json"), metadata={"help": "JSON results"})


def bench_synthetic_faces(config: SyntheticFacesConfig) -> dict:
    import cv2

    from pipelines.synthetic.corpus import (SyntheticConfig, HeadMotion, VideoPlan, generate_video, make_renderer,
                                            make_speaker, plan_corpus)
    from pipelines.synthetic.face import MouthShape

    cv2.setNumThreads(1)
    rows = []
    for faces in ("drawn", "photo"):
        corpus = SyntheticConfig(out=Path("unused"), num_videos=config.videos, seed=0, max_seconds=8.0, workers=1,
                                 faces=faces, face_sources=config.face_sources if faces == "photo" else None)
        plan = plan_corpus(corpus)[0]
        for size in FRAME_SIZES:
            sized: VideoPlan = replace(plan, frame_size=size)
            renderer = make_renderer(corpus, sized, make_speaker(corpus.seed, sized.speaker))
            rng = np.random.default_rng(0)
            motion = HeadMotion(rng, size)
            noise = rng.normal(0, 2.0, (size[1], size[0], 3)).astype(np.float32)
            renderer.render(motion.at(0.0), MouthShape(0.5, 0.5, 0.5), noise)  # identity and caches ready
            started = time.process_time()
            for k in range(config.frames):
                t = k / 25
                renderer.render(motion.at(t), MouthShape(0.5 + 0.5 * np.sin(7 * t), 0.5, 0.5), noise)
            rows.append({"faces": faces, "frame_size": f"{size[0]}x{size[1]}",
                         "frames_per_s": round(config.frames / (time.process_time() - started), 1)})
        with tempfile.TemporaryDirectory() as scratch:
            corpus = replace(corpus, out=Path(scratch))
            plans = [p for p in plan_corpus(corpus) if not p.corrupt]
            generate_video(plans[0], corpus)  # loads the speech engine and the identity's source once
            started = time.process_time()
            made = [generate_video(p, corpus) for p in plans[1:]]
            wall = time.process_time() - started
        video_s = sum(row["duration_s"] for row in made)
        rows.append({"faces": faces, "frame_size": "corpus mix", "video_s_per_s": round(video_s / wall, 2),
                     "frames_per_s": round(sum(row["frame_count"] for row in made) / wall, 1)})
    return {"rows": rows, "date": time.strftime("%Y-%m-%d")}


def format_table(result: dict) -> str:
    lines = ["| faces | frames | rendered frames/s per core | whole clips, video-s/s per core |",
             "| --- | --- | ---: | ---: |"]
    for row in result["rows"]:
        clips = row.get("video_s_per_s")
        lines.append(f"| {row['faces']} | {row['frame_size']} | {row['frames_per_s']} | {clips if clips else ''} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return bench_main(SyntheticFacesConfig, "synthetic face rendering and clip speed per core", bench_synthetic_faces,
                      format_table, argv)


if __name__ == "__main__":
    raise SystemExit(main())
