"""Shot cuts: the detector on rendered frames, across chunk borders, and a spliced corpus through preprocessing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipelines.core.clock import EXPERT_CLOCK
from pipelines.core.storage import StorageConfig
from pipelines.decode import Chunk, DecodeConfig
from pipelines.faces.base import FaceConfig
from pipelines.preprocess import PreprocessConfig, run
from pipelines.shards.format import decode_meta, sample_shot
from pipelines.shards.reader import iter_segments, list_shards
from pipelines.shards.writer import shard_stats
from pipelines.shots import (ShotConfig, ShotState, content_changes, detect_cuts, frame_signatures, mark_cuts,
                             shot_of, split_at_cuts)
from pipelines.synthetic.corpus import HeadMotion, SyntheticConfig, generate_corpus
from pipelines.synthetic.face import FaceRenderer, MouthShape, random_identity

SIZE = (320, 240)
LOCAL = StorageConfig()


def talking_frames(identity_seed: int, times: np.ndarray, motion_seed: int = 0, light: np.ndarray | None = None):
    """A drawn face talking with head motion at the given times; `light` scales each frame's brightness."""
    renderer = FaceRenderer(random_identity(np.random.default_rng(identity_seed)), SIZE)
    motion = HeadMotion(np.random.default_rng(motion_seed), SIZE)
    frames = []
    for k, t in enumerate(times):
        mouth = MouthShape(open=0.5 + 0.5 * np.sin(9 * t), width=0.5, teeth=0.3)
        frame = renderer.render(motion.at(t), mouth)
        if light is not None:
            frame = np.clip(frame * light[k], 0, 255).astype(np.uint8)
        frames.append(frame)
    return np.stack(frames)


def test_a_continuous_shot_with_head_motion_and_a_lighting_change_has_no_cut():
    times = np.arange(100) / EXPERT_CLOCK.fps
    # Fast head motion (the motion's clock run 4 times as fast) and the light going from 70 % to 120 % in 4 s.
    frames = talking_frames(1, 4 * times, light=np.linspace(0.7, 1.2, len(times)))
    changes = content_changes(frame_signatures(frames))
    assert changes[1:].max() > 0  # the frames do change
    cuts, state = detect_cuts(frames, ShotState(), ShotConfig())
    assert cuts.tolist() == [] and state.shot == 0


def test_a_cut_to_another_face_in_the_same_place_is_found_at_its_frame():
    times = np.arange(80) / EXPERT_CLOCK.fps
    cut = 37
    # The same head motion on both sides: the face stays where it was, only who it is (and the backdrop) changes.
    frames = np.concatenate([talking_frames(1, times)[:cut], talking_frames(2, times)[cut:]])
    cuts, state = detect_cuts(frames, ShotState(), ShotConfig())
    assert cuts.tolist() == [cut] and state.shot == 1
    assert detect_cuts(frames, ShotState(), ShotConfig(split_shots=True, cut_threshold=99.0))[0].tolist() == []


@pytest.mark.parametrize("chunk_frames", [37, 20, 11, 80])
def test_cuts_do_not_depend_on_where_chunks_begin(chunk_frames):
    """Chunked as the decoder chunks a video, a cut on a chunk's first frame (37 = 37 + 0) included."""
    times = np.arange(120) / EXPERT_CLOCK.fps
    frames = np.concatenate([talking_frames(1, times)[:37], talking_frames(2, times)[37:90],
                             talking_frames(3, times)[90:]])
    chunks = [Chunk(index=i, start_frame=start, frames=frames[start:start + chunk_frames], audio=np.zeros(0))
              for i, start in enumerate(range(0, len(frames), chunk_frames))]
    marked = list(mark_cuts(iter(chunks), ShotConfig()))
    assert [chunk.start_frame + int(cut) for chunk in marked for cut in chunk.cuts] == [37, 90]
    shots = [shot_of(t, chunk.shot, chunk.cuts) for chunk in marked for t in range(len(chunk.frames))]
    assert shots == [0] * 37 + [1] * 53 + [2] * 30
    assert all(len(chunk.cuts) == 0 for chunk in mark_cuts(iter(chunks), ShotConfig(split_shots=False)))


def test_tracks_are_split_at_cuts_inside_them():
    assert split_at_cuts([(0, 10), (12, 30), (40, 50)], np.array([5, 12, 20, 35])) == [
        (0, 5), (5, 10), (12, 20), (20, 30), (40, 50)]
    assert split_at_cuts([(0, 10)], np.zeros(0, np.int64)) == [(0, 10)]


def test_the_shot_field_is_checked_and_old_samples_are_shot_0():
    meta = {"split": "train", "source_key": "v", "speaker": "", "crop_size": 96, "num_frames": 5, "fps": 25,
            "mel_fps": 80}
    assert sample_shot(decode_meta(json.dumps(meta).encode())) == 0
    assert sample_shot(decode_meta(json.dumps(dict(meta, shot=2)).encode())) == 2
    with pytest.raises(TypeError, match="shot"):
        decode_meta(json.dumps(dict(meta, shot="2")).encode())


@pytest.fixture(scope="module")
def spliced_corpus(tmp_path_factory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("spliced")
    rows = generate_corpus(SyntheticConfig(out=out, num_videos=3, seed=21, splice=1, heldout_fraction=0,
                                           min_seconds=3.0, max_seconds=3.5, workers=2), progress=False)
    return out, rows


def preprocess(corpus: Path, output: Path, split_shots: bool) -> list:
    run(PreprocessConfig(input=str(corpus / "videos"), output=str(output), num_workers=2, progress=False,
                         faces=FaceConfig(aligner="dlib"),
                         decode=DecodeConfig(chunk_seconds=2.4, shots=ShotConfig(split_shots=split_shots))))
    return list(iter_segments(list_shards(str(output), LOCAL), LOCAL, None))


def test_no_sample_spans_a_spliced_cut_and_the_cut_is_recorded(spliced_corpus, tmp_path):
    corpus, rows = spliced_corpus
    truth = {row["key"]: [cut * EXPERT_CLOCK.fps for cut in row["cuts_s"]] for row in rows}
    assert sorted(len(cuts) for cuts in truth.values()) == [0, 0, 1]

    segments = preprocess(corpus, tmp_path / "split", split_shots=True)
    videos = {Path(video["uri"]).stem: video for stats in shard_stats(str(tmp_path / "split"), LOCAL)
              for video in stats["videos"]}
    assert {key: video["status"] for key, video in videos.items()} == {key: "ok" for key in truth}
    for key, cuts in truth.items():
        found = videos[key].get("cuts", [])
        assert len(found) == len(cuts) and all(abs(f - c) <= 1 for f, c in zip(found, cuts)), (key, found, cuts)
        mine = [s for s in segments if Path(s.meta["source"]).stem == key]
        assert mine
        for segment in mine:
            start, end = segment.meta["start_frame"], segment.meta["start_frame"] + segment.num_frames
            assert not any(start < cut < end for cut in found), (key, start, end, found)
            assert segment.meta["shot"] == sum(cut <= start for cut in found)
        assert {s.meta["shot"] for s in mine} == set(range(len(cuts) + 1))  # faces on both sides of the cut

    # Without shot detection the same corpus gives a sample across the cut: the face track alone runs on. (The
    # cuts lie at 40-60 % of 3-3.5 s, inside the first chunk of 60 frames.)
    unsplit = preprocess(corpus, tmp_path / "unsplit", split_shots=False)
    spanning = [s for s in unsplit for cut in truth[Path(s.meta["source"]).stem]
                if s.meta["start_frame"] + 1 < cut < s.meta["start_frame"] + s.num_frames - 1]
    assert spanning


def test_scoring_cuts_its_segments_at_the_same_cuts(spliced_corpus, untrained_scorer):
    """The scorer runs preprocessing's stages: its segments, the only spans its windows are drawn from, end at
    the cut too."""
    corpus, rows = spliced_corpus
    row = next(row for row in rows if row["cuts_s"])
    cut = row["cuts_s"][0] * EXPERT_CLOCK.fps
    segments, _ = untrained_scorer.segments(corpus / row["path"])
    spans = [(s.meta["start_frame"], s.meta["start_frame"] + s.num_frames, sample_shot(s.meta)) for s in segments]
    assert all(end <= cut + 1 or start >= cut - 1 for start, end, _ in spans), (spans, cut)
    assert {shot for _, _, shot in spans} == {0, 1}


def test_the_bench_finds_no_cut_in_single_shots_and_the_cut_of_each_splice(spliced_corpus, tmp_path):
    from bench.shots import main

    corpus, rows = spliced_corpus
    clips = tmp_path / "clips"
    clips.mkdir()
    for row in rows:
        if not row["cuts_s"]:
            (clips / Path(row["path"]).name).symlink_to(corpus / row["path"])
    assert main(["--clips", str(clips), "--out", str(tmp_path / "shots.json")]) == 0
    ours = json.loads((tmp_path / "shots.json").read_text())["rows"][0]
    assert (ours["clips"], ours["false_cuts"], ours["splices"], ours["missed_splices"]) == (2, 0, 2, 0)
    assert ours["us_per_frame"] > 0
