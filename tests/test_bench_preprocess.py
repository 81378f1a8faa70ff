"""Smoke runs of the preprocessing and aligner benchmarks at their smallest sizes, and the pieces they rest on:
the Wav2Lip-style reference's output layout and the process-tree sampler that measures Ray runs."""

from __future__ import annotations

import json
import subprocess
import sys
import wave
from pathlib import Path

import pytest

from pipelines.synthetic.corpus import SyntheticConfig, generate_corpus, read_manifest

TINY = dict(seed=5, heldout_fraction=0.0, min_seconds=3.0, max_seconds=3.5, workers=2)


def fixed_spin(seconds: float, count) -> None:
    """Stands in for the spinning process: the same work however the machine is loaded."""
    count.value = 1000.0


def printed_rows(output: str, first_words: list[str]) -> list[list[str]]:
    """The fields of each printed table line that starts with one of `first_words`, in order."""
    return [line[len(word):].split() for line in output.splitlines() for word in first_words
            if line.startswith(word + " ")]


@pytest.fixture(scope="module")
def tiny_clips(tmp_path_factory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("bench_corpus")
    return out, generate_corpus(SyntheticConfig(out=out, num_videos=2, **TINY), progress=False)


def test_reference_writes_a_jpeg_per_face_frame_and_a_wav_per_video(tiny_clips, tmp_path):
    from bench.baselines.wav2lip_preprocess import list_videos, output_folder, preprocess_videos

    corpus, rows = tiny_clips
    videos = list_videos(str(corpus / "videos"))
    assert len(videos) == len(rows)
    timings: dict[str, float] = {}
    results = preprocess_videos(videos, tmp_path, timings=timings)
    for video, result, row in zip(videos, results, rows):
        folder = output_folder(video, tmp_path)
        jpegs = sorted(folder.glob("*.jpg"))
        assert not result.error and result.frames == row["frame_count"]  # native rate: every stored frame
        assert 0 < result.faces <= result.frames and len(jpegs) == result.faces
        assert result.jpeg_bytes == sum(p.stat().st_size for p in jpegs)
        assert {int(p.stem) for p in jpegs} <= set(range(result.frames))  # named by frame index
        assert sorted(p.name for p in folder.glob("*.wav")) == ["audio.wav"]
        with wave.open(str(folder / "audio.wav")) as wav:
            assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (16000, 1, 2)
            assert wav.getnframes() / 16000 == pytest.approx(row["duration_s"], abs=0.1)
    assert set(timings) == {"read frames", "detect", "write jpegs", "write wav"}


def test_tree_sampler_sums_a_process_and_its_children():
    from bench.preprocess import TreeSampler

    # A parent holding ~100 MB starts a child holding ~100 MB; both burn a little CPU, then wait.
    hold = "import time; x = b'1' * (100 * 2**20); [i for i in range(2 * 10**6)]; time.sleep(1.5)"
    script = (f"import subprocess, sys; child = subprocess.Popen([sys.executable, '-c', {hold!r}]); "
              f"{hold}; child.wait()")
    process = subprocess.Popen([sys.executable, "-c", script])
    sampler = TreeSampler(process.pid, interval_s=0.05, pss_interval_s=0.2)
    sampler.start()
    process.wait()
    sampler.stop()
    assert sampler.peak_processes == 2
    assert sampler.peak_rss > 200 * 2 ** 20 and sampler.peak_pss > 200 * 2 ** 20
    assert sampler.cpu_s > 0


def test_parallel_capacity_counts_what_spinning_processes_get_done(monkeypatch):
    import bench.preprocess
    from bench.preprocess import parallel_capacity

    # With each process's work fixed, N processes get N times what one gets done: the sum over all of them.
    monkeypatch.setattr(bench.preprocess, "_spin", fixed_spin)
    assert parallel_capacity(3, seconds=0.0) == 3.0


@pytest.mark.slow
def test_preprocess_bench_smoke(tmp_path, capsys):
    from bench.preprocess import GOALS, format_table, main

    out = tmp_path / "preprocess.json"
    # One short clip, doubled for the memory section: two Ray runs (each mostly Ray's start-up), the reference
    # and the stage profile. One worker count keeps it near a minute; scaling needs two and is left to the bench.
    code = main(["--videos-per-size", "1", "--min-seconds", "2.5", "--max-seconds", "3", "--workers", "1",
                 "--memory-scale", "2", "--corpus", str(tmp_path / "corpus"), "--out", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    assert [(r["system"], r["workers"], r["scale"]) for r in report["rows"]] == [("ours", 1, 1), ("reference", 1, 1)]
    assert [(r["workers"], r["scale"]) for r in report["memory"]] == [(1, 1), (1, 2)]
    clips = read_manifest(tmp_path / "corpus" / "manifest.jsonl")  # the 1x run reads the first, memory's both
    ours, reference = report["rows"]
    assert report["clips"] == 1 and reference["video_seconds"] == ours["video_seconds"]
    assert ours["video_seconds"] == pytest.approx(clips[0]["duration_s"])
    assert report["memory"][1]["video_seconds"] == pytest.approx(sum(c["duration_s"] for c in clips))
    for row in report["rows"] + report["memory"]:  # each rate is its own measurements' quotient
        assert row["video_s_per_wall_s"] == pytest.approx(row["video_seconds"] / row["wall_s"])
        assert row["cpu_s_per_video_s"] == pytest.approx(row["cpu_s"] / row["video_seconds"])
        assert row["gb_per_video_hour"] == pytest.approx(row["bytes"] / row["video_seconds"] * 3600 / 1e9)
        assert row["bytes"] > 0 and row["peak_rss_mb"] > 0  # output written, memory seen
    assert ours["peak_processes"] > 3 and reference["peak_processes"] == 1  # Ray's workers were in the tree
    assert "MapBatches(FusedStages)" in ours["ray_data_stats"]  # Ray Data's account of our stages' busy time
    assert reference["frames"] == clips[0]["frame_count"] and 0 < reference["face_jpegs"] <= reference["frames"]
    # The goals are ratios of the rows above, met or not in the goal's direction.
    goals = report["goals"]
    assert set(goals) == set(GOALS) - {"scaling_2_vs_1"}
    assert goals["throughput_vs_reference"]["measured"] == pytest.approx(
        ours["video_s_per_wall_s"] / reference["video_s_per_wall_s"])
    assert goals["bytes_vs_reference"]["measured"] == pytest.approx(ours["bytes"] / reference["bytes"])
    memory = report["memory"]
    assert goals["memory_4x_vs_1x"]["measured"] == pytest.approx(memory[1]["peak_rss_mb"] / memory[0]["peak_rss_mb"])
    for name, goal in goals.items():
        at_most = name in ("bytes_vs_reference", "memory_4x_vs_1x")
        assert goal["met"] == (goal["measured"] <= goal["goal"] if at_most else goal["measured"] >= goal["goal"])
    assert set(report["profile_cpu_s"]) == {"ours", "reference"}
    assert report["machine"]["cpu_count"] >= 1 and report["machine"]["date"]
    printed = capsys.readouterr().out
    assert format_table(report["rows"]) in printed and format_table(report["memory"]) in printed


@pytest.mark.slow
def test_preprocess_bench_long_inputs_smoke(tmp_path, capsys):
    """--long-seconds: one input per length, built from the corpus's clips, and each run's largest Ray worker peak
    RSS, the ratio of the longest to the shortest against its goal."""
    from bench.preprocess import LONG_INPUT_GOAL, main

    out = tmp_path / "long.json"
    code = main(["--long-seconds", "3", "7", "--videos-per-size", "1", "--min-seconds", "2.5", "--max-seconds", "3",
                 "--corpus", str(tmp_path / "corpus"), "--out", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    assert [row["video_seconds"] for row in report["rows"]] == [3.0, 7.0]
    for row in report["rows"]:
        assert 100 < row["worker_peak_rss_mb"] < row["peak_rss_mb"]  # one process of the tree, and a Python one
        summary = row["summary"]
        assert row["input_bytes"] > 0 and summary["videos_ok"] + sum(summary["videos_failed"].values()) == 1
    shortest, longest = (row["worker_peak_rss_mb"] for row in report["rows"])
    goal = report["goals"]["worker_memory_longest_vs_shortest"]
    assert goal["measured"] == pytest.approx(longest / shortest)
    assert goal["met"] == (goal["measured"] <= LONG_INPUT_GOAL["worker_memory_longest_vs_shortest"])
    assert "worker peak RSS MB" in capsys.readouterr().out


@pytest.mark.slow
def test_preprocess_bench_on_a_folder_of_clips(tiny_clips, tmp_path):
    """`--clips DIR`: both systems on the same files of a folder (here the tiny synthetic clips standing in for real
    ones), the memory section on copies of them; nothing is written next to the clips."""
    from bench.preprocess import main

    corpus, rows = tiny_clips
    clips = corpus / "videos"
    before = sorted(clips.rglob("*"))
    out = tmp_path / "preprocess.json"
    code = main(["--clips", str(clips), "--workers", "1", "--memory-scale", "2", "--no-profile", "--out", str(out)])
    assert code == 0 and sorted(clips.rglob("*")) == before
    report = json.loads(out.read_text())
    assert report["corpus_kind"] == "real" and report["clips"] == len(rows)
    seconds = sum(r["duration_s"] for r in rows)
    ours, reference = report["rows"]
    assert ours["video_seconds"] == pytest.approx(seconds, rel=0.05)
    assert reference["video_seconds"] == ours["video_seconds"]
    assert reference["frames"] == sum(r["frame_count"] for r in rows)  # the reference read the same files
    assert report["memory"][1]["video_seconds"] == pytest.approx(2 * ours["video_seconds"])
    assert all(len(row["load_average"]) == 3 for row in report["rows"] + report["memory"])
    assert main(["--clips", str(tmp_path / "missing"), "--out", str(out)]) == 2


def test_aligner_bench_smoke(tmp_path, no_network, capsys):
    import torch

    from bench.aligner import main

    out = tmp_path / "aligner.json"
    threads = torch.get_num_threads()
    try:
        code = main(["--device", "cpu", "--frames-per-size", "2", "--width", "160", "--height", "128",
                     "--batch-size", "2", "--threads", "1", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["frames"] == 2 and "random weights" in report["weights"]
    steps = ["detect", "landmarks (boxes given)", "whole call"]
    assert [r["step"] for r in report["rows"]] == steps
    printed = printed_rows(capsys.readouterr().out, steps)
    assert len(printed) == len(steps)
    for row, (unit, library, ours, speedup, library_found, _, ours_found) in zip(report["rows"], printed):
        assert row["frames"] == report["frames"]
        assert row["speedup"] == pytest.approx(row["ours_per_s"] / row["library_per_s"])
        # The printed table is the JSON's numbers, rounded.
        assert unit == row["unit"] and float(library) == pytest.approx(row["library_per_s"], abs=0.005)
        assert float(ours) == pytest.approx(row["ours_per_s"], abs=0.005)
        assert float(speedup.rstrip("x")) == pytest.approx(row["speedup"], abs=0.05)
        assert (int(library_found), int(ours_found)) == (row["library_faces_found"], row["ours_faces_found"])
    landmarks = report["rows"][1]
    assert landmarks["library_faces_found"] == landmarks["ours_faces_found"] == 2
    # The random detector is biased to background: neither side may flood its post-processing with boxes.
    assert report["rows"][0]["library_faces_found"] == report["rows"][0]["ours_faces_found"] == 0
