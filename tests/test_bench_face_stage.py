"""bench.face_stage on CPUs: the face stage over a clip's decoded chunks, its parts timed, its JSON."""

from __future__ import annotations

import json

import pytest

from pipelines.synthetic.corpus import SyntheticConfig, generate_corpus


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("face_stage_corpus")
    rows = generate_corpus(SyntheticConfig(out=out, num_videos=1, seed=4, min_seconds=3, max_seconds=3.5, workers=1,
                                           heldout_fraction=0), progress=False)
    return out / "videos", rows


def test_face_stage_bench_times_its_parts(clip_folder, tmp_path, capsys):
    import torch

    from bench.face_stage import main

    folder, rows = clip_folder
    out = tmp_path / "face_stage.json"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two OpenMP threads on 2 shared cores spin-wait on each other (see test_faces.py)
    try:
        assert main(["--clips", str(folder), "--device", "cpu", "--repeat", "2", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    report = json.loads(out.read_text())
    # every frame of the clip on the expert's 25 fps clock, twice
    assert abs(report["frames"] / 2 - 25 * rows[0]["duration_s"]) <= 2
    assert report["frames_per_s"] == pytest.approx(report["frames"] / report["wall_s"])
    parts = report["parts_wall_s"]
    # detection on whole frames and in squares is part of tracking, tracking part of the stage
    assert 0 < parts["detect whole frames"] + parts["detect in squares"] <= parts["track (all detection)"]
    assert parts["track (all detection)"] <= parts["face stage (all)"] <= report["wall_s"]
    assert "_in_regions" in report["profile_top"]
    assert f"{report['frames_per_s']:.0f} frames/s" in capsys.readouterr().out
