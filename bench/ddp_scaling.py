"""Data-parallel scaling of training: the same run from shards on 1, 2, ... workers, same batch per worker.

    python -m bench.ddp_scaling --shards DIR [--workers 1 2 4] [--use-gpu] [--preset cpu-small|full]
                                [--batch-size 32] [--steps 60] [--out runs/bench/ddp_scaling.json]

Each row is `train_ray.train` (Ray Train, DDP) for `--steps` steps: samples/s over every rank after the first
logging window (start-up and the first steps left out), scaling efficiency (samples/s per worker against one
worker; goal >= 0.9), and the training loss at equal samples seen against the one-worker run (the same global
data rate of learning: the curves should match). On GPUs one worker per GPU; on CPUs the workers share the
machine's cores, so CPU efficiency says how well the cores were used, not how a cluster scales.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from bench.report import bench_main
from model.loader.windows import PairConfig


@dataclass(frozen=True)
class ScalingConfig:
    shards: str = field(metadata={"help": "training shards (folder or s3:// prefix)"})
    workers: tuple[int, ...] = field(default=(1, 2), metadata={"help": "worker counts to run (the first is the reference)"})
    use_gpu: bool = field(default=False, metadata={"help": "one GPU per worker"})
    preset: str = field(default="cpu-small", metadata={"help": "model size", "choices": ["cpu-small", "full"]})
    batch_size: int = field(default=32, metadata={"help": "pairs per step per worker"})
    steps: int = field(default=60, metadata={"help": "steps per run"})
    loader_workers: int = field(default=-1, metadata={"help": "loader processes per worker (-1: training's default)"})
    windows_per_segment: int = field(default=PairConfig.windows_per_segment,
                                     metadata={"help": "pairs drawn from each decoded segment"})
    scale_lr: bool = field(default=True, metadata={"help": "learning rate times the workers (train_ray --scale-lr), "
                                                   "so that equal samples seen should give equal loss"})
    out: Path = field(default=Path("runs/bench/ddp_scaling.json"), metadata={"help": "JSON results"})


def run_one(config: ScalingConfig, workers: int, folder: Path) -> list[dict]:
    from train_ray import TrainConfig, train

    log_every = max(config.steps // 6, 1)
    train(TrainConfig(shards=config.shards, output=str(folder), preset=config.preset, num_workers=workers,
                      use_gpu=config.use_gpu, max_steps=config.steps, batch_size=config.batch_size,
                      log_every=log_every, val_every=config.steps, checkpoint_every=config.steps, val_batches=1,
                      val_segments=1, loader_workers=config.loader_workers, progress=False,
                      pairs=PairConfig(windows_per_segment=config.windows_per_segment), scale_lr=config.scale_lr))
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def summarize(rows: list[dict], workers: int, batch_size: int) -> dict:
    steady = rows[1:] or rows  # the first window holds worker start-up and the first, slow steps
    return {"workers": workers, "samples_per_s": round(float(np.mean([r["samples_per_s"] for r in steady])), 1),
            "samples_seen": [r["step"] * batch_size * workers for r in rows],
            "loss": [round(r["loss"], 4) for r in rows]}


def loss_gap(reference: dict, other: dict) -> float:
    """Largest absolute difference of training loss at equal samples seen, over the overlap of the two runs."""
    seen = np.array(reference["samples_seen"], float)
    inside = seen[(seen >= other["samples_seen"][0]) & (seen <= other["samples_seen"][-1])]
    if len(inside) == 0:
        return float("nan")
    mine = np.interp(inside, reference["samples_seen"], reference["loss"])
    theirs = np.interp(inside, other["samples_seen"], other["loss"])
    return round(float(np.max(np.abs(mine - theirs))), 4)


def bench_scaling(config: ScalingConfig) -> dict:
    runs = []
    with tempfile.TemporaryDirectory() as scratch:
        for workers in config.workers:
            started = time.perf_counter()
            rows = run_one(config, workers, Path(scratch) / f"w{workers}")
            runs.append(summarize(rows, workers, config.batch_size) | {"wall_s": round(time.perf_counter() - started, 1)})
    reference = runs[0]
    for run in runs:
        per_worker = run["samples_per_s"] / run["workers"]
        run["efficiency"] = round(per_worker / (reference["samples_per_s"] / reference["workers"]), 3)
        run["loss_gap_vs_first"] = loss_gap(reference, run)
    return {"config": {k: str(v) for k, v in asdict(config).items()}, "date": time.strftime("%Y-%m-%d"), "runs": runs}


def format_table(result: dict) -> str:
    lines = ["| workers | samples/s | efficiency | max loss gap at equal samples | wall s |",
             "| ---: | ---: | ---: | ---: | ---: |"]
    for run in result["runs"]:
        lines.append(f"| {run['workers']} | {run['samples_per_s']} | {run['efficiency']:.2f} | "
                     f"{run['loss_gap_vs_first']} | {run['wall_s']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return bench_main(ScalingConfig, "data-parallel scaling of training", bench_scaling, format_table, argv)


if __name__ == "__main__":
    raise SystemExit(main())
