"""`python -m model.evaluate --checkpoint RUN --shards DIR --manifest corpus/manifest.jsonl`

Offset accuracy of a trained expert on preprocessed videos whose true offsets are known (the synthetic
generator's held-out part): every segment's offset is estimated over +-max_offset frames and compared with the
manifest's `offset_frames`. Prints a table per video and a summary line; `--json` writes the numbers.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from model.checkpoint import load_expert
from model.offset import offset_curve
from model.shard_reader import iter_segments, list_shards
from pipelines.storage import StorageConfig


@dataclass(frozen=True)
class EvaluateConfig:
    checkpoint: str = field(metadata={"help": "checkpoint file or training run folder"})
    shards: str = field(metadata={"help": "shards of the videos to evaluate"})
    manifest: Path = field(metadata={"help": "manifest.jsonl with path and offset_frames per video"})
    max_offset: int = field(default=15, metadata={"help": "offsets searched, in frames either way"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda"})
    json: Path | None = field(default=None, metadata={"help": "write the results here"})


def evaluate(config: EvaluateConfig) -> dict:
    device = ("cuda" if torch.cuda.is_available() else "cpu") if config.device == "auto" else config.device
    expert = load_expert(config.checkpoint, device)
    truth = {}
    for line in Path(config.manifest).read_text().splitlines():
        row = json.loads(line)
        truth[Path(row["path"]).name] = row["offset_frames"]
    rows = []
    for segment in iter_segments(list_shards(config.shards, StorageConfig()), StorageConfig(), split=None):
        source = Path(segment.source).name
        if source not in truth:
            continue
        try:
            result = offset_curve(expert, segment.faces, segment.mel, config.max_offset)
        except ValueError:  # too short for the search range
            continue
        rows.append({"segment": segment.key, "source": source, "truth": truth[source],
                     "estimate": result.offset_frames, "confidence": round(result.confidence, 4),
                     "similarity": round(result.best_similarity, 4)})
    errors = np.array([r["estimate"] - r["truth"] for r in rows])
    summary = {"segments": len(rows), "exact": float(np.mean(errors == 0)) if rows else 0.0,
               "within_1": float(np.mean(np.abs(errors) <= 1)) if rows else 0.0, "rows": rows}
    return summary


def main(argv: list[str] | None = None) -> int:
    from pipelines.cli import parse_config

    config = parse_config(EvaluateConfig, __doc__.split("\n")[0].strip("`"), argv)
    summary = evaluate(config)
    for row in summary["rows"]:
        mark = "ok" if row["estimate"] == row["truth"] else ("~1" if abs(row["estimate"] - row["truth"]) <= 1 else "MISS")
        print(f"{row['source']:>16}  true {row['truth']:+3d}  estimated {row['estimate']:+3d}  "
              f"confidence {row['confidence']:.3f}  {mark}")
    print(f"offset accuracy on {summary['segments']} segments: exact {summary['exact']:.1%}, "
          f"within +-1 frame {summary['within_1']:.1%}")
    if config.json:
        config.json.write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
