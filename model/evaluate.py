"""`python -m model.evaluate --checkpoint RUN --manifest corpus/manifest.jsonl`

Offset accuracy of a trained expert on videos whose true offsets are known (the synthetic generator's
held-out part, or any manifest with `path` and `offset_frames`). By default every video of `--subset` is scored
as `python -m model.sync score` scores it (decode, faces, voice, mel in process); with `--shards` the segments
of already preprocessed shards are scored instead (no decoding: the expert's share of the work alone). Prints
true against estimated offsets, exact and +-1 accuracy and the scoring speed; `--json` writes the numbers.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from model.expert import SyncExpert
from model.offset import offset_curve
from pipelines.core.device import resolve_device
from pipelines.core.storage import StorageConfig
from pipelines.faces.base import ALIGNERS, DEVICES, FaceConfig
from pipelines.shards.reader import iter_segments, list_shards


@dataclass(frozen=True)
class EvaluateConfig:
    checkpoint: str = field(metadata={"help": "checkpoint file or training run folder"})
    manifest: Path = field(metadata={"help": "manifest.jsonl with path (relative to it), offset_frames, subset"})
    subset: str = field(default="heldout", metadata={"help": "manifest rows of this subset ('' for all)"})
    shards: str | None = field(default=None, metadata={"help": "score these shards' segments instead of decoding the videos"})
    max_offset: int = field(default=15, metadata={"help": "offsets searched, in frames either way"})
    aligner: str = field(default="auto", metadata={"help": "face aligner when scoring videos", "choices": ALIGNERS})
    device: str = field(default="auto", metadata={"help": "where the expert (and face-alignment) run", "choices": DEVICES})
    json: Path | None = field(default=None, metadata={"help": "write the results here"})


def truth_of(config: EvaluateConfig) -> dict[str, dict]:
    """Manifest rows of the subset with a known offset (broken inputs left out), by file name."""
    rows = {}
    for line in Path(config.manifest).read_text().splitlines():
        row = json.loads(line)
        if row.get("corrupt") or (config.subset and row.get("subset") != config.subset):
            continue
        rows[Path(row["path"]).name] = row
    return rows


def score_videos(config: EvaluateConfig, truth: dict[str, dict]) -> tuple[list[dict], float]:
    from model.sync.scoring import ScoreConfig, ScoreError, VideoScorer

    scorer = VideoScorer(ScoreConfig(checkpoint=config.checkpoint, max_offset=config.max_offset, device=config.device,
                                     faces=FaceConfig(aligner=config.aligner)))
    rows, seconds = [], 0.0
    for name, row in sorted(truth.items()):
        try:
            score = scorer.score(Path(config.manifest).parent / row["path"])
        except ScoreError as error:
            print(f"skipped: {error}", file=sys.stderr)
            continue
        seconds += score.frames / score.fps
        rows.append(_row(name, row["offset_frames"], score.result))
    return rows, seconds


def score_shards(config: EvaluateConfig, truth: dict[str, dict]) -> tuple[list[dict], float]:
    from model.sync.scoring import check_crop

    expert = SyncExpert.from_checkpoint(config.checkpoint, resolve_device(config.device))
    rows, seconds = [], 0.0
    for segment in iter_segments(list_shards(config.shards, StorageConfig()), StorageConfig(), split=None):
        name = Path(segment.source).name
        if name not in truth:
            continue
        check_crop(segment, expert.config)
        try:
            result = offset_curve(expert, segment.faces, segment.mel, config.max_offset)
        except ValueError:  # too short for the search range
            continue
        seconds += expert.config.clock.seconds(segment.num_frames)
        rows.append(_row(name, truth[name]["offset_frames"], result))
    return rows, seconds


def _row(name: str, truth: int, result) -> dict:
    return {"source": name, "truth": truth, "estimate": result.offset_frames,
            "confidence": round(result.confidence, 4), "similarity": round(result.best_similarity, 4)}


def evaluate(config: EvaluateConfig) -> dict:
    truth = truth_of(config)
    started = time.perf_counter()
    rows, seconds = score_shards(config, truth) if config.shards else score_videos(config, truth)
    wall = time.perf_counter() - started
    errors = np.array([r["estimate"] - r["truth"] for r in rows])
    return {"scored": len(rows), "of": len(truth), "mode": "shards" if config.shards else "videos",
            "exact": float(np.mean(errors == 0)) if rows else 0.0,
            "within_1": float(np.mean(np.abs(errors) <= 1)) if rows else 0.0,
            "video_seconds": round(seconds, 2), "wall_s": round(wall, 2),
            "video_seconds_per_second": round(seconds / wall, 2) if wall else 0.0, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    from pipelines.core.cli import parse_config

    config = parse_config(EvaluateConfig, __doc__.split("\n")[0].strip("`"), argv)
    summary = evaluate(config)
    for row in summary["rows"]:
        error = row["estimate"] - row["truth"]
        mark = "ok" if error == 0 else ("~1" if abs(error) <= 1 else "MISS")
        print(f"{row['source']:>16}  true {row['truth']:+3d}  estimated {row['estimate']:+3d}  "
              f"confidence {row['confidence']:.3f}  {mark}")
    scored = f"{summary['scored']} segments of {summary['of']} videos" if config.shards else \
        f"{summary['scored']} of {summary['of']} videos"
    print(f"offset accuracy on {scored}: exact {summary['exact']:.1%}, "
          f"within +-1 frame {summary['within_1']:.1%}; {summary['video_seconds_per_second']:.1f} video-seconds "
          f"per second ({summary['video_seconds']:.0f} s of video in {summary['wall_s']:.0f} s)")
    if config.json:
        config.json.write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
