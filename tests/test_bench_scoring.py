"""A CPU smoke run of the scoring benchmark: it measures, per stage, on real (synthetic) videos."""

from __future__ import annotations

import json
import math
from pathlib import Path

from bench.scoring import main


def test_scoring_bench_writes_both_rows(small_corpus, tmp_path):
    out, rows = small_corpus
    videos = tmp_path / "videos"
    videos.mkdir()
    row = next(r for r in rows if r["subset"] == "heldout" and not r["corrupt"])
    (videos / Path(row["path"]).name).symlink_to(out / row["path"])
    assert main(["--videos", str(videos), "--device", "cpu", "--out", str(tmp_path / "scoring.json")]) == 0
    result = json.loads((tmp_path / "scoring.json").read_text())
    assert [r["mode"] for r in result["rows"]] == ["video", "expert only"]
    for bench_row in result["rows"]:
        assert math.isfinite(bench_row["video_s_per_s"]) and bench_row["video_s_per_s"] > 0
        assert bench_row["video_s"] == result["rows"][0]["video_s"] > 3
    # The expert alone is a fraction of scoring a video, which also decodes, aligns and separates.
    assert result["rows"][1]["video_s_per_s"] > result["rows"][0]["video_s_per_s"]
    assert 0 < result["rows"][0]["share_decode_faces_mel"] < 1


def test_real_offsets_bench_scores_every_applied_shift(small_corpus, trained_expert, tmp_path):
    """Run on a synthetic clip (the real ones may be absent): a shift moves the estimate by the same amount."""
    from bench.real_offsets import main as real_main

    out, rows = small_corpus
    clips = tmp_path / "clips"
    clips.mkdir()
    row = next(r for r in rows if r["subset"] == "heldout" and not r["corrupt"] and abs(r["offset_frames"]) <= 5)
    (clips / Path(row["path"]).name).symlink_to(out / row["path"])
    assert real_main(["--checkpoint", str(trained_expert), "--clips", str(clips), "--offsets", "-5", "0", "5",
                      "--device", "cpu", "--out", str(tmp_path / "real.json")]) == 0
    result = json.loads((tmp_path / "real.json").read_text())
    assert result["scored"] == 3 and set(result["rows"][0]["estimates"]) == {"-5", "0", "5"}
    base = result["rows"][0]["estimates"]["0"][0]
    assert abs(base - row["offset_frames"]) <= 1  # the clip's own offset, seen on the unshifted copy
    assert result["relative_within_1"] >= 2 / 3


def test_scoring_bench_times_the_expert_alone_on_shards(trained_expert, tmp_path):
    shards = trained_expert.parent / "shards"  # the fixture's training shards
    assert main(["--shards", str(shards), "--checkpoint", str(trained_expert), "--device", "cpu",
                 "--out", str(tmp_path / "scoring.json")]) == 0
    result = json.loads((tmp_path / "scoring.json").read_text())
    [row] = result["rows"]
    assert row["mode"] == "expert only" and result["segments"] >= 4
    assert row["video_s"] > 10 and math.isfinite(row["video_s_per_s"]) and row["video_s_per_s"] > 0
