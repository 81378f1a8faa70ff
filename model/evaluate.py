"""`python -m model.evaluate --checkpoint RUN --manifest corpus/manifest.jsonl [--protocol]`

Offset accuracy of a trained expert on a corpus: videos whose true offsets a manifest gives (the synthetic
generator's held-out part, or any manifest with `path` and `offset_frames`), videos assumed in sync (`--videos`),
or the segments of preprocessed shards (`--shards`: no decoding, the expert's share of the work alone; their
offsets from `--manifest` by file name, else taken to be 0). Videos are scored as `python -m model.sync score`
scores them (decode, faces, voice, mel in process). Prints true against estimated whole-video offsets, exact and
+-1 accuracy and the scoring speed; `--json` writes the numbers.

`--protocol` adds the published per-window protocol on the same segments (`model.protocol`): offset accuracy
by context length (C = 5..15 frames), binary accuracy and BCE on positives against hard, easy and other-video
negatives, LSE-D / LSE-C; printed as a table, under "protocol" in the JSON, and drawn by `--plot`.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from model.expert import SyncExpert
from model.offset import offset_from_grid, similarity_grid
from model.protocol import PerWindowProtocol, ProtocolConfig, format_table, plot_protocol
from pipelines.core.device import resolve_device
from pipelines.core.storage import StorageConfig
from pipelines.faces.base import ALIGNERS, DEVICES, FaceConfig
from pipelines.shards.reader import iter_segments, list_shards


@dataclass(frozen=True)
class EvaluateConfig:
    checkpoint: str = field(metadata={"help": "checkpoint file or training run folder"})
    manifest: Path | None = field(default=None, metadata={
        "help": "manifest.jsonl of videos with known offsets: path (relative to it), offset_frames, subset"})
    videos: str | None = field(default=None, metadata={
        "help": "videos assumed in sync instead (a folder, glob or list of inputs, as preprocessing takes them)"})
    subset: str = field(default="heldout", metadata={"help": "manifest rows of this subset ('' for all)"})
    shards: str | None = field(default=None, metadata={
        "help": "score these shards' segments instead of decoding videos (offsets from --manifest, else 0)"})
    split: str = field(default="", metadata={"help": "with --shards: samples of this split only ('' for all)"})
    max_offset: int = field(default=15, metadata={"help": "offsets searched, in frames either way"})
    aligner: str = field(default="auto", metadata={"help": "face aligner when scoring videos", "choices": ALIGNERS})
    device: str = field(default="auto", metadata={"help": "where the expert (and face-alignment) run", "choices": DEVICES})
    protocol: bool = field(default=False, metadata={
        "help": "also the published per-window protocol: accuracy by context length, pairs, LSE-D/LSE-C"})
    per_window: ProtocolConfig = field(default_factory=ProtocolConfig, metadata={"help": "the per-window protocol"})
    json: Path | None = field(default=None, metadata={"help": "write the results here"})
    plot: Path | None = field(default=None, metadata={"help": "with --protocol: accuracy against context length (PNG)"})

    def __post_init__(self):
        if not (self.manifest or self.videos or self.shards):
            raise ValueError("name a corpus: --manifest (known offsets), --videos (in sync) or --shards")
        if self.videos and (self.manifest or self.shards):
            raise ValueError("--videos are taken to be in sync: give it without --manifest and --shards")
        if self.plot and not self.protocol:
            raise ValueError("--plot draws the per-window protocol: add --protocol")


@dataclass
class Scored:
    rows: list[dict]  # one per video (per segment with --shards): true and estimated offset
    seconds: float  # of video scored
    protocol: PerWindowProtocol | None


def truth_of(config: EvaluateConfig) -> dict[str, dict]:
    """What is scored, by name: manifest rows of the subset with a known offset (broken inputs left out), or
    the inputs of --videos at offset 0; each row with the video's `uri` and its `offset_frames`."""
    if config.videos:
        from pipelines.sources import list_sources

        return {source.key: {"uri": source.uri, "offset_frames": 0}
                for source in list_sources(config.videos, StorageConfig()) if not source.error}
    rows = {}
    for line in Path(config.manifest).read_text().splitlines():
        row = json.loads(line)
        if row.get("corrupt") or (config.subset and row.get("subset") != config.subset):
            continue
        rows[Path(row["path"]).name] = dict(row, uri=str(Path(config.manifest).parent / row["path"]))
    return rows


def score_videos(config: EvaluateConfig, truth: dict[str, dict]) -> Scored:
    from model.sync.scoring import ScoreConfig, ScoreError, VideoScorer

    scorer = VideoScorer(ScoreConfig(checkpoint=config.checkpoint, max_offset=config.max_offset, device=config.device,
                                     faces=FaceConfig(aligner=config.aligner)))
    scored = Scored([], 0.0, PerWindowProtocol(scorer.expert, config.per_window) if config.protocol else None)
    for name, row in sorted(truth.items()):
        try:
            score = scorer.score(row["uri"])
        except ScoreError as error:
            print(f"skipped: {error}", file=sys.stderr)
            continue
        scored.seconds += score.frames / score.fps
        scored.rows.append(_row(name, row["offset_frames"], score.result))
        if scored.protocol is not None:
            for segment in score.speaking_segments:  # another face in view is not what the offset is of
                if segment.grid is not None:
                    scored.protocol.add(name, row["offset_frames"], segment.segment, segment.grid)
    return scored


def score_shards(config: EvaluateConfig, truth: dict[str, dict] | None) -> Scored:
    """The shards' segments; with `truth` (by file name) only those of its videos, else all at offset 0."""
    from model.sync.scoring import check_crop

    expert = SyncExpert.from_checkpoint(config.checkpoint, resolve_device(config.device))
    scored = Scored([], 0.0, PerWindowProtocol(expert, config.per_window) if config.protocol else None)
    storage = StorageConfig()
    for segment in iter_segments(list_shards(config.shards, storage), storage, split=config.split or None):
        name = Path(segment.source).name if truth is not None else segment.source_key
        if truth is not None and name not in truth:
            continue
        check_crop(segment, expert.config)
        offset = truth[name]["offset_frames"] if truth is not None else 0
        try:
            grid = similarity_grid(expert, segment.faces, segment.mel, config.max_offset)
        except ValueError:  # too short for the search range
            continue
        scored.seconds += expert.config.clock.seconds(segment.num_frames)
        scored.rows.append(_row(name, offset, offset_from_grid(*grid)))
        if scored.protocol is not None:
            scored.protocol.add(name, offset, segment, grid)
    return scored


def _row(name: str, truth: int, result) -> dict:
    return {"source": name, "truth": truth, "estimate": result.offset_frames,
            "confidence": round(result.confidence, 4), "similarity": round(result.best_similarity, 4)}


def evaluate(config: EvaluateConfig) -> dict:
    started = time.perf_counter()
    if config.shards:
        truth = truth_of(config) if config.manifest else None
        scored = score_shards(config, truth)
        videos = len(truth) if truth is not None else len({r["source"] for r in scored.rows})
    else:
        truth = truth_of(config)
        scored = score_videos(config, truth)
        videos = len(truth)
    wall = time.perf_counter() - started
    errors = np.array([r["estimate"] - r["truth"] for r in scored.rows])
    summary = {"scored": len(scored.rows), "of": videos, "mode": "shards" if config.shards else "videos",
               "exact": float(np.mean(errors == 0)) if scored.rows else 0.0,
               "within_1": float(np.mean(np.abs(errors) <= 1)) if scored.rows else 0.0,
               "video_seconds": round(scored.seconds, 2), "wall_s": round(wall, 2),
               "video_seconds_per_second": round(scored.seconds / wall, 2) if wall else 0.0, "rows": scored.rows}
    if scored.protocol is not None:
        summary["protocol"] = scored.protocol.summary()
    return summary


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
    print(f"whole-video offset accuracy on {scored}: exact {summary['exact']:.1%}, "
          f"within +-1 frame {summary['within_1']:.1%}; {summary['video_seconds_per_second']:.1f} video-seconds "
          f"per second ({summary['video_seconds']:.0f} s of video in {summary['wall_s']:.0f} s)")
    if "protocol" in summary:
        print(format_table(summary["protocol"]))
        # The grids are the scoring's own: what the protocol adds is its pairs and its tables.
        print(f"(the protocol added {summary['protocol']['seconds']:.1f} s to the scoring)")
        if config.plot:
            plot_protocol(summary["protocol"], config.plot)
            print(f"plot: {config.plot}")
    if config.json:
        config.json.write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
