"""Smoke runs of the preprocessing and aligner benchmarks at their smallest sizes, and the pieces they rest on:
the Wav2Lip-style reference's output layout and the process-tree sampler that measures Ray runs."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
import wave
from pathlib import Path

import pytest

from pipelines.synthetic.corpus import SyntheticConfig, generate_corpus

TINY = dict(seed=5, heldout_fraction=0.0, min_seconds=3.0, max_seconds=3.5, workers=2)


def finite_positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


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


def test_parallel_capacity_counts_what_spinning_processes_get_done():
    from bench.preprocess import parallel_capacity

    # Two processes on however many free cores there are: more than nothing, at most about two (timing noise aside).
    assert 0 < parallel_capacity(2, seconds=0.3) < 3


@pytest.mark.slow
def test_preprocess_bench_smoke(tmp_path):
    from bench.preprocess import GOALS, main

    out = tmp_path / "preprocess.json"
    # One short clip, doubled for the memory section: two Ray runs (each mostly Ray's start-up), the reference
    # and the stage profile. One worker count keeps it near a minute; scaling needs two and is left to the bench.
    code = main(["--videos-per-size", "1", "--min-seconds", "2.5", "--max-seconds", "3", "--workers", "1",
                 "--memory-scale", "2", "--corpus", str(tmp_path / "corpus"), "--out", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    assert [(r["system"], r["workers"], r["scale"]) for r in report["rows"]] == [("ours", 1, 1), ("reference", 1, 1)]
    assert [(r["workers"], r["scale"]) for r in report["memory"]] == [(1, 1), (1, 2)]
    for row in report["rows"] + report["memory"]:
        for name in ("video_seconds", "wall_s", "video_s_per_wall_s", "cpu_s", "cpu_s_per_video_s", "bytes",
                     "gb_per_video_hour", "peak_rss_mb", "peak_pss_mb"):
            assert finite_positive(row[name]), (row["system"], row["workers"], name, row[name])
    ours, reference = report["rows"]
    assert ours["peak_processes"] > 3 and reference["peak_processes"] == 1  # Ray's workers were in the tree
    assert reference["face_jpegs"] > 0 and reference["frames"] >= reference["face_jpegs"]
    assert report["memory"][1]["video_seconds"] > report["memory"][0]["video_seconds"]
    assert set(report["goals"]) == set(GOALS) - {"scaling_2_vs_1"}
    assert all(finite_positive(goal["measured"]) and isinstance(goal["met"], bool) for goal in report["goals"].values())
    assert set(report["profile_cpu_s"]) == {"ours", "reference"}
    assert report["machine"]["cpu_count"] >= 1 and report["machine"]["date"]


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


def test_aligner_bench_smoke(tmp_path, no_network):
    import torch

    from bench.aligner import main

    out = tmp_path / "aligner.json"
    threads = torch.get_num_threads()
    started = time.perf_counter()
    try:
        code = main(["--device", "cpu", "--frames-per-size", "2", "--width", "160", "--height", "128",
                     "--batch-size", "2", "--threads", "1", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert code == 0 and time.perf_counter() - started < 120
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["frames"] == 2 and "random weights" in report["weights"]
    assert [r["step"] for r in report["rows"]] == ["detect", "landmarks (boxes given)", "whole call"]
    for row in report["rows"]:
        assert finite_positive(row["library_per_s"]) and finite_positive(row["ours_per_s"])
        assert finite_positive(row["speedup"])
    landmarks = report["rows"][1]
    assert landmarks["library_faces_found"] == landmarks["ours_faces_found"] == 2
    # The random detector is biased to background: neither side may flood its post-processing with boxes.
    assert report["rows"][0]["library_faces_found"] == report["rows"][0]["ours_faces_found"] == 0
