"""`python -m model.sync score|fix|curate`: measure and correct lip-sync with a trained expert.

    score VIDEO --checkpoint RUN [--json] [--plot PNG]    offset, confidence, sync over time of one video
    fix VIDEO --checkpoint RUN --out FIXED                 shift the audio by the measured offset (video copied)
    curate --input SHARDS|VIDEOS --checkpoint RUN --output DST
                                                           a corpus: Parquet report, and shards that keep only
                                                           segments in sync, re-aligned to offset 0 (Ray Data)

Sign convention everywhere: a positive offset means the audio is late (the sound of a mouth shape arrives
`offset` frames of 40 ms after the lips make it). LSE-D and LSE-C are SyncNet's figures computed on this
expert's cosine distances (1 - similarity); they rank videos the same way, but are not on the scale of
numbers published with SyncNet's own network.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from model.sync.scoring import DEFAULT_MIN_CONFIDENCE, ScoreConfig, ScoreError, VideoScore, VideoScorer


@dataclass(frozen=True)
class ScoreCommand:
    video: str = field(metadata={"help": "the video to score (any container, fps and sample rate)"})
    score: ScoreConfig = field(metadata={"help": "scoring"})
    json: bool = field(default=False, metadata={"help": "print one JSON object instead of the report"})
    plot: Path | None = field(default=None, metadata={"help": "draw the offset curve and sync over time into this PNG"})


@dataclass(frozen=True)
class FixCommand:
    video: str = field(metadata={"help": "the video to correct"})
    out: Path = field(metadata={"help": "where to write the corrected video (its extension picks the container)"})
    score: ScoreConfig = field(metadata={"help": "scoring"})
    min_confidence: float = field(default=DEFAULT_MIN_CONFIDENCE,
                                  metadata={"help": "refuse to shift when the offset is less certain than this"})
    verify: bool = field(default=True, metadata={"help": "score the corrected file and report its offset"})


def describe(score: VideoScore) -> str:
    result = score.result
    late = "audio late" if result.offset_frames > 0 else "audio early" if result.offset_frames < 0 else "in sync"
    lines = [
        f"{score.video}",
        f"  {score.frames / score.fps:.1f} s ({score.frames} frames at {score.fps} fps; source {score.source_fps:.3f} "
        f"fps, {score.source_sample_rate} Hz), {sum(s.result is not None for s in score.speaking_segments)} face "
        f"segment(s) of the speaker, "
        f"{len(result.window_starts)} windows scored",
        f"  offset      {result.offset_frames:+d} frames ({score.offset_ms:+.0f} ms): {late}   "
        f"[positive = audio late]",
        f"  confidence  {result.confidence:.3f} (LSE-C)   min distance {result.min_distance:.3f} (LSE-D)",
        f"  P(in sync)  {result.best_similarity:.3f} at the offset, {result.similarity_at(0):.3f} as it plays",
    ]
    if len(score.tracks) > 1:
        for track in score.tracks:
            box = ", ".join(f"{v:.2f}" for v in track.box) if np.isfinite(track.box).all() else "?"
            judged = (f"offset {track.result.offset_frames:+d}  confidence {track.result.confidence:.3f}"
                      if track.result else "too short to score")
            lines.append(f"  track {track.number}  {track.start_frame / score.fps:6.2f}-{track.end_frame / score.fps:6.2f} s"
                         f"  box ({box})  {judged}{'  <- speaking' if track.speaking else ''}")
    else:
        for segment in score.segments:
            if segment.result is not None and len(score.segments) > 1:
                lines.append(f"    {segment.start_s:6.2f}-{segment.end_s:6.2f} s  offset "
                             f"{segment.result.offset_frames:+d}  confidence {segment.result.confidence:.3f}")
    lines += [f"  note: {note}" for note in score.notes()]
    return "\n".join(lines)


def plot_score(score: VideoScore, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    result = score.result
    figure, (curve, timeline) = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [1, 2]})
    curve.plot(result.shifts, result.mean_similarity, marker=".")
    curve.axvline(result.offset_frames, color="tab:red", linestyle="--",
                  label=f"offset {result.offset_frames:+d} ({score.offset_ms:+.0f} ms)")
    curve.axvline(0, color="grey", linewidth=0.8)
    curve.set(xlabel="audio shift (frames; + = audio late)", ylabel="mean P(in sync)",
              title=f"offset curve, confidence {result.confidence:.2f}")
    curve.legend()
    times = score.window_times
    timeline.plot(times, result.window_similarity, ".", markersize=3, label=f"at the offset ({result.offset_frames:+d})")
    zero = list(result.shifts).index(0)
    if result.offset_frames != 0 and score.speaking_segments:
        at_zero = _window_similarity_at(score, zero)
        timeline.plot(times, at_zero, ".", markersize=3, alpha=0.6, label="as it plays (0)")
    timeline.set(xlabel="time (s)", ylabel="P(in sync) per window", ylim=(0, 1), title="sync over time")
    timeline.legend()
    figure.suptitle(Path(score.video).name)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _window_similarity_at(score: VideoScore, shift_index: int):
    return np.concatenate([s.grid[2][shift_index] for s in score.speaking_segments if s.grid is not None])


def run_score(command: ScoreCommand) -> int:
    score = VideoScorer(command.score).score(command.video)
    if command.plot:
        plot_score(score, command.plot)
    if command.json:
        print(json.dumps(score.to_json()))
    else:
        print(describe(score))
        if command.plot:
            print(f"  plot: {command.plot}")
    return 0


def run_fix(command: FixCommand) -> int:
    from pipelines.remux import shift_audio

    if Path(command.out).resolve() == Path(command.video).resolve():
        raise ScoreError("same_file", f"--out {command.out} is the input itself; write the fixed copy elsewhere")
    scorer = VideoScorer(command.score)
    score = scorer.score(command.video)
    print(describe(score))
    result = score.result
    if result.confidence < command.min_confidence:
        print(f"not fixed: confidence {result.confidence:.3f} is below --min-confidence {command.min_confidence}; "
              f"the offset is not clear enough to act on (no speech, or a face the expert does not read)",
              file=sys.stderr)
        return 3
    shift_audio(command.video, command.out, -score.offset_ms / 1000.0)
    print(f"wrote {command.out}: audio moved {-score.offset_ms:+.0f} ms, video packets copied")
    if command.verify:
        after = scorer.score(command.out).result
        print(f"  re-scored: offset {after.offset_frames:+d} frames, confidence {after.confidence:.3f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from model.sync.curate import CurateConfig, curate, format_summary
    from pipelines.core.cli import parse_command

    commands = {"score": (ScoreCommand, "measure one video's offset and sync"),
                "fix": (FixCommand, "shift one video's audio by its measured offset"),
                "curate": (CurateConfig, "score a corpus, keep what is in sync")}
    try:
        command, config = parse_command(commands, "python -m model.sync", "measure and correct lip-sync with a "
                                        "trained expert", epilog=__doc__, argv=argv, positional=("video",))
        if command == "score":
            return run_score(config)
        if command == "fix":
            return run_fix(config)
        summary = curate(config)
        print(format_summary(summary))
        return 0
    except (ScoreError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

