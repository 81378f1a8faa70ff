"""How far does an expert trained on synthetic faces carry to real ones? Offsets recovered on real clips whose
audio was moved by known amounts.

    python -m bench.real_offsets --checkpoint RUN [--clips ../shared/data/real] [--offsets -10 -5 0 5 10]
                                 [--out runs/bench/real_offsets.json]

Each clip is copied with its audio moved by every offset (`pipelines.remux.shift_audio`: video packets
untouched) and scored as `python -m model.sync score` scores it. The clips' own sync is not known to be
perfect, so the table reports the estimate on the unshifted clip next to the others: `relative` counts an
estimate as right when it moved by the applied offset from that baseline; `absolute` when it equals the offset.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.report import bench_main

REAL_CLIPS = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"


@dataclass(frozen=True)
class RealOffsetsConfig:
    checkpoint: str = field(metadata={"help": "expert to score with (checkpoint file or run folder)"})
    clips: Path = field(default=REAL_CLIPS, metadata={"help": "folder of real talking-face clips"})
    offsets: tuple[int, ...] = field(default=(-10, -5, 0, 5, 10), metadata={"help": "audio shifts to apply, frames (+ = audio late)"})
    max_offset: int = field(default=15, metadata={"help": "offsets searched either way"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda", "choices": ["auto", "cpu", "cuda"]})
    out: Path = field(default=Path("runs/bench/real_offsets.json"), metadata={"help": "JSON results"})


def bench_real_offsets(config: RealOffsetsConfig) -> dict:
    from model.sync.scoring import ScoreConfig, ScoreError, VideoScorer
    from pipelines.remux import shift_audio
    from pipelines.sources import VIDEO_EXTENSIONS

    if 0 not in config.offsets:
        raise ValueError("--offsets must include 0: the unshifted clip is the baseline")
    scorer = VideoScorer(ScoreConfig(checkpoint=config.checkpoint, max_offset=config.max_offset, device=config.device))
    clips = sorted(p for p in Path(config.clips).iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS)
    fps = scorer.expert.config.clock.fps  # offsets are frames of the expert's clock
    rows, started, video_s = [], time.perf_counter(), 0.0
    with tempfile.TemporaryDirectory() as scratch:
        for clip in clips:
            estimates = {}
            for offset in config.offsets:
                # Matroska holds whatever the clip holds (an MPEG-PS file, e.g., takes no re-encoded AAC back).
                moved = Path(scratch) / f"{clip.stem}_{offset:+d}.mkv"
                shift_audio(clip, moved, offset / fps)  # positive: audio later, i.e. late
                try:
                    score = scorer.score(moved)
                except ScoreError as error:
                    estimates[offset] = None
                    print(f"skipped {moved.name}: {error}")
                    continue
                video_s += score.frames / score.fps
                estimates[offset] = (score.result.offset_frames, round(score.result.confidence, 4))
            rows.append({"clip": clip.name, "estimates": {str(k): v for k, v in estimates.items()}})
    wall = time.perf_counter() - started
    return {"checkpoint": config.checkpoint, "offsets": list(config.offsets), "rows": rows,
            **accuracy(rows, config.offsets), "video_seconds_per_second": round(video_s / wall, 2),
            "date": time.strftime("%Y-%m-%d")}


def accuracy(rows: list[dict], offsets) -> dict:
    absolute, relative, within_1, confidence = [], [], [], []
    for row in rows:
        base = row["estimates"].get("0")
        for offset in offsets:
            found = row["estimates"].get(str(offset))
            if found is None or base is None:
                continue
            confidence.append(found[1])
            absolute.append(found[0] == offset)
            relative.append(found[0] - base[0] == offset)
            within_1.append(abs(found[0] - base[0] - offset) <= 1)
    mean = lambda values: round(float(np.mean(values)), 3) if values else 0.0  # noqa: E731
    return {"scored": len(absolute), "absolute_exact": mean(absolute), "relative_exact": mean(relative),
            "relative_within_1": mean(within_1),
            "median_confidence": round(float(np.median(confidence)), 4) if confidence else 0.0}


def format_table(result: dict) -> str:
    offsets = result["offsets"]
    lines = ["| clip | " + " | ".join(f"{o:+d}" for o in offsets) + " |", "| --- |" + " ---: |" * len(offsets)]
    for row in result["rows"]:
        cells = [(f"{v[0]:+d} ({v[1]:.2f})" if v else "-") for v in (row["estimates"][str(o)] for o in offsets)]
        lines.append(f"| {row['clip']} | " + " | ".join(cells) + " |")
    lines.append(f"\nestimate (confidence) per applied offset; {result['scored']} scored: exact {result['absolute_exact']:.0%}, "
                 f"relative to the unshifted clip exact {result['relative_exact']:.0%}, within +-1 "
                 f"{result['relative_within_1']:.0%}; median confidence {result['median_confidence']:.3f}; "
                 f"{result['video_seconds_per_second']} video-s per s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return bench_main(RealOffsetsConfig, "offsets recovered on real clips with audio moved by known amounts", bench_real_offsets, format_table, argv)


if __name__ == "__main__":
    raise SystemExit(main())
