"""A CPU smoke run of the DDP scaling benchmark, and its loss comparison at equal samples seen."""

from __future__ import annotations

import json
import math

import pytest

from bench.ddp_scaling import loss_gap, main, summarize


def test_loss_gap_compares_at_equal_samples_seen():
    one = summarize([{"step": s, "loss": 1.0 / s, "samples_per_s": 10.0} for s in (10, 20, 30, 40)], 1, 8)
    two = summarize([{"step": s, "loss": 1.0 / (2 * s), "samples_per_s": 20.0} for s in (5, 10, 15, 20)], 2, 8)
    assert two["samples_seen"] == [80, 160, 240, 320] == one["samples_seen"]
    assert loss_gap(one, two) == pytest.approx(0.0)
    shifted = dict(two, loss=[value + 0.1 for value in two["loss"]])
    assert loss_gap(one, shifted) == pytest.approx(0.1)


def test_ddp_scaling_bench_runs_one_and_two_workers(trained_expert, tmp_path, capsys):
    shards = trained_expert.parent / "shards"
    assert main(["--shards", str(shards), "--workers", "1", "2", "--steps", "12", "--batch-size", "8",
                 "--out", str(tmp_path / "ddp.json")]) == 0
    runs = json.loads((tmp_path / "ddp.json").read_text())["runs"]
    assert [run["workers"] for run in runs] == [1, 2] and runs[0]["efficiency"] == 1.0
    assert runs[0]["loss_gap_vs_first"] == 0.0  # the reference against itself
    # Efficiency is the rate per worker against one worker's.
    assert runs[1]["efficiency"] == pytest.approx(runs[1]["samples_per_s"] / 2 / runs[0]["samples_per_s"], abs=1e-3)
    for run in runs:
        assert math.isfinite(run["loss_gap_vs_first"]) and len(run["loss"]) == len(run["samples_seen"])
        assert run["samples_seen"][-1] == 12 * 8 * run["workers"]  # every step, batch 8 on each worker
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")][2:]
    assert [line.split("|")[1:3] for line in printed] == [[f" {r['workers']} ", f" {r['samples_per_s']} "]
                                                          for r in runs]
