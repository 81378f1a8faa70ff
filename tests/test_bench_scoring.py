"""A CPU smoke run of the scoring benchmark: it measures, per stage, on real (synthetic) videos."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.scoring import main

FPS = 25  # the expert's clock: video seconds are counted in its frames


def printed_rows(output: str) -> list[list[str]]:
    """The cells of the printed markdown table's data rows."""
    lines = [line for line in output.splitlines() if line.startswith("| ")][2:]  # past the header and the rule
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def assert_rates_are_their_quotients(rows: list[dict]) -> None:
    for row in rows:  # wall_s is rounded to 2 or 3 decimals, video_s_per_s to 1 or 2
        assert row["video_s_per_s"] == pytest.approx(row["video_s"] / row["wall_s"], rel=0.05, abs=0.05)


def test_scoring_bench_writes_both_rows(small_corpus, tmp_path, capsys):
    out, rows = small_corpus
    videos = tmp_path / "videos"
    videos.mkdir()
    row = next(r for r in rows if r["subset"] == "heldout" and not r["corrupt"])
    (videos / Path(row["path"]).name).symlink_to(out / row["path"])
    assert main(["--videos", str(videos), "--device", "cpu", "--out", str(tmp_path / "scoring.json")]) == 0
    result = json.loads((tmp_path / "scoring.json").read_text())
    assert [r["mode"] for r in result["rows"]] == ["video", "expert only"] and result["videos"] == 1
    # Both rows measure the one video, all of it, in the expert's frames.
    for bench_row in result["rows"]:
        assert bench_row["video_s"] == pytest.approx(row["duration_s"], abs=1 / FPS + 0.01)
        assert bench_row["video_s"] == result["rows"][0]["video_s"]
    assert_rates_are_their_quotients(result["rows"])
    assert 0 < result["rows"][0]["share_decode_faces_mel"] < 1
    printed = printed_rows(capsys.readouterr().out)
    assert [cells[:4] for cells in printed] == [[r["mode"], r["device"], str(r["video_s"]), str(r["wall_s"])]
                                                for r in result["rows"]]


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
    from model.expert import SyncExpert
    from pipelines.core.storage import StorageConfig
    from pipelines.shards.reader import iter_segments, list_shards

    shards = trained_expert.parent / "shards"  # the fixture's training shards
    assert main(["--shards", str(shards), "--checkpoint", str(trained_expert), "--device", "cpu",
                 "--out", str(tmp_path / "scoring.json")]) == 0
    result = json.loads((tmp_path / "scoring.json").read_text())
    [row] = result["rows"]
    # Every segment long enough for the -15..+15 search is scored, and its frames are the video seconds.
    model = SyncExpert.from_checkpoint(trained_expert).config
    frames = [s.num_frames for s in iter_segments(list_shards(str(shards), StorageConfig()), StorageConfig(), None)]
    usable = [count for count in frames if count >= model.window_frames + 2 * 15]
    assert row["mode"] == "expert only" and result["segments"] == len(usable) >= 4
    assert row["video_s"] == pytest.approx(model.clock.seconds(sum(usable)), abs=0.01)
    assert_rates_are_their_quotients(result["rows"])
