"""The synthetic corpus: what the manifest promises is what the files hold."""

from __future__ import annotations


import numpy as np
import pytest

from pipelines.media import MediaError, iter_frames, probe
from pipelines.synthetic.corpus import SyntheticConfig, generate_video, make_speaker, plan_corpus
from pipelines.synthetic.face import FaceRenderer, HeadPose, REST

from conftest import SMALL_CORPUS


def good(rows):
    return [row for row in rows if not row["corrupt"]]


def test_manifest_layout(small_corpus):
    out, rows = small_corpus
    assert [row["key"] for row in rows] == sorted({row["key"] for row in rows})
    assert len(good(rows)) == 12 and len(rows) == 17
    heldout = [row for row in good(rows) if row["subset"] == "heldout"]
    assert sorted(row["offset_frames"] for row in heldout) == [-15, -5, 5, 15]
    assert all(row["path"].startswith("heldout/") for row in heldout)
    assert all(row["offset_frames"] == 0 for row in rows if row["subset"] == "train")
    assert not {r["speaker"] for r in heldout} & {r["speaker"] for r in rows if r["subset"] == "train"}
    for row in rows:
        assert (out / row["path"]).is_file()
        assert row["offset_s"] == pytest.approx(row["offset_frames"] / 25)
    for row in good(rows):
        assert row["transcript"].strip()
        starts = [start for _, start, _ in row["phonemes"]]
        assert starts == sorted(starts) and 0 < starts[0] and row["phonemes"][-1][2] < row["duration_s"]


def test_rates_and_containers_are_covered(small_corpus):
    _, rows = small_corpus
    rows = good(rows)
    assert {row["fps_exact"] for row in rows} >= {"25/1", "30000/1001", "24000/1001", "30/1"}
    assert any(row["variable_frame_rate"] for row in rows)
    assert {row["sample_rate"] for row in rows} == {8000, 16000, 22050, 44100, 48000}
    assert {row["channels"] for row in rows} == {1, 2}
    assert {row["container"] for row in rows} >= {"mp4", "mkv", "mov", "avi"}
    assert {row["background"] for row in rows} >= {"none", "music"} or {"none", "noise"}


def test_clips_decode_as_the_manifest_says(small_corpus):
    out, rows = small_corpus
    for row in good(rows):
        info = probe(out / row["path"])
        assert info.has_video and info.has_audio, row["key"]
        assert (info.width, info.height) == (row["width"], row["height"])
        assert info.sample_rate == row["sample_rate"] and info.channels == row["channels"], row["key"]
        assert info.duration_s == pytest.approx(row["duration_s"], abs=0.1), row["key"]
        assert info.frame_count == row["frame_count"], row["key"]
        assert info.variable_frame_rate == row["variable_frame_rate"], row["key"]
        if not row["variable_frame_rate"]:
            assert info.fps == pytest.approx(row["fps"], abs=0.01), row["key"]


def test_broken_inputs_are_broken_as_stated(small_corpus):
    out, rows = small_corpus
    broken = {row["corrupt"]: out / row["path"] for row in rows if row["corrupt"]}
    assert set(broken) == {"truncated", "empty", "no_audio", "no_face", "not_video"}
    assert broken["empty"].stat().st_size == 0
    for kind in ("empty", "not_video"):
        with pytest.raises(MediaError) as error:
            probe(broken[kind])
        assert error.value.reason == "unreadable" and broken[kind].name in str(error.value)
    assert not probe(broken["no_audio"]).has_audio
    # A truncated clip still opens (its index is at the front) but delivers fewer frames than it declares.
    try:
        decoded = sum(1 for _ in iter_frames(broken["truncated"]))
        declared = probe(broken["truncated"]).frame_count
        assert decoded < declared
    except MediaError as error:
        assert error.reason in ("truncated", "unreadable")
    from pipelines.faces.dlib_aligner import DlibAligner
    frames = np.stack([frame for _, frame in iter_frames(broken["no_face"])][::10])
    _, scores = DlibAligner()(frames)
    assert np.isnan(scores).all()


def test_generation_is_deterministic(small_corpus, tmp_path):
    out, rows = small_corpus
    config = SyntheticConfig(out=tmp_path, **SMALL_CORPUS)
    assert plan_corpus(config) == plan_corpus(SyntheticConfig(out=out, **SMALL_CORPUS))
    for plan in plan_corpus(config)[:2]:
        row = generate_video(plan, config)
        assert row == next(r for r in rows if r["key"] == plan.key)
        assert (tmp_path / row["path"]).read_bytes() == (out / row["path"]).read_bytes()


def test_twenty_distinct_looks():
    speakers = [make_speaker(seed=0, speaker=k) for k in range(20)]
    assert len({speaker.identity for speaker in speakers}) == 20
    assert len({speaker.voice for speaker in speakers}) == 20
    pose = HeadPose(angle_deg=0, scale=1.0, center=(128, 128))
    images = [FaceRenderer(s.identity, (256, 256)).render(pose, REST).astype(np.float32) for s in speakers]
    distances = [np.abs(a - b).mean() for i, a in enumerate(images) for b in images[i + 1:]]
    assert min(distances) > 5  # mean absolute difference in grey levels between any two looks


def test_config_rejects_nonsense(tmp_path):
    with pytest.raises(ValueError, match="--min-seconds"):
        SyntheticConfig(out=tmp_path, min_seconds=1.0, max_seconds=2.0)
    with pytest.raises(ValueError, match="--num-videos"):
        SyntheticConfig(out=tmp_path, num_videos=0)


def test_a_folder_made_with_other_settings_is_refused(tmp_path):
    from pipelines.synthetic.corpus import generate_corpus

    generate_corpus(SyntheticConfig(out=tmp_path, num_videos=1, min_seconds=3, max_seconds=3, workers=1), progress=False)
    with pytest.raises(ValueError, match="other settings"):
        generate_corpus(SyntheticConfig(out=tmp_path, num_videos=2, min_seconds=3, max_seconds=3, workers=1),
                        progress=False)
