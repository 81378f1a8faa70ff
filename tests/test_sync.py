"""Measuring and fixing lip-sync with a trained expert: offsets, score/fix/curate commands, SyncLoss."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from model.evaluate import EvaluateConfig, evaluate
from model.expert import SyncExpert
from model.loss import SyncLoss
from model.offset import median_filter, offset_from_grid
from model.sync.cli import main as sync_main
from model.sync.curate import CurateConfig, curate, realign
from model.sync.scoring import ScoreConfig, ScoreError, VideoScorer, too_short_message
from pipelines.core.clock import EXPERT_CLOCK
from pipelines.core.storage import StorageConfig
from pipelines.faces.base import FaceConfig
from pipelines.remux import shift_audio, shifted
from pipelines.shards.reader import iter_segments, list_shards
from pipelines.synthetic.two_faces import write_two_faces
from conftest import REAL_CLIPS


def dlib_scoring(trained_expert: Path) -> ScoreConfig:
    return ScoreConfig(checkpoint=str(trained_expert), faces=FaceConfig(aligner="dlib"))


def heldout(corpus) -> list[dict]:
    return [row for row in corpus[1] if row["subset"] == "heldout" and not row["corrupt"]]


def video_packets(path: Path) -> list[bytes]:
    with av.open(str(path)) as container:
        return [bytes(p) for p in container.demux(container.streams.video[0]) if p.size]


# --- pure parts -----------------------------------------------------------------------------------------------

def test_offset_and_confidence_from_a_grid():
    shifts = np.arange(-3, 4)
    similarity = np.full((7, 20), 0.2, np.float32)
    similarity[5] = 0.9  # every window agrees on +2
    similarity[4, :5] = 0.95  # a few windows prefer +1, the mean still +2
    result = offset_from_grid(shifts, np.arange(20), similarity)
    assert result.offset_frames == 2
    assert result.best_similarity == pytest.approx(0.9)
    assert result.confidence == pytest.approx((1 - 0.2) - (1 - 0.9), abs=1e-6)  # median - min of distance
    assert result.similarity_at(0) == pytest.approx(0.2)
    assert result.window_similarity.shape == (20,) and result.window_confidence.shape == (20,)


def test_median_filter_removes_a_spike_and_keeps_length():
    values = np.array([1, 1, 1, 9, 1, 1, 1], np.float32)
    assert median_filter(values, 3).tolist() == [1] * 7
    assert median_filter(values, 1) is values


@pytest.mark.parametrize("offset", [-7, -5, 0, 3, 5])
def test_realign_pairs_each_face_with_the_audio_of_its_instant(offset):
    frames, clock = 60, EXPERT_CLOCK
    faces = np.arange(frames, dtype=np.uint8)[:, None, None, None] * np.ones((1, 4, 4, 3), np.uint8)
    mel = np.tile(np.arange(clock.mel_column(frames), dtype=np.float32), (2, 1))  # value = column index
    kept, kept_mel, first = realign(faces, mel, offset, clock)
    assert kept_mel.shape[1] == clock.mel_column(len(kept))
    assert len(kept) >= frames - abs(offset) - 1
    # Face frame t was heard at audio frame t + offset: the kept mel starts at that instant.
    assert kept[0, 0, 0, 0] == first == max(0, -offset)
    assert kept_mel[0, 0] == clock.mel_column(first + offset)


def test_shifted_moves_samples_and_keeps_length():
    samples = np.arange(1, 11, dtype=np.float32)[None]
    assert shifted(samples, 3).tolist() == [[0, 0, 0, 1, 2, 3, 4, 5, 6, 7]]
    assert shifted(samples, -2).tolist() == [[3, 4, 5, 6, 7, 8, 9, 10, 0, 0]]
    assert not shifted(samples, 20).any()


def lag_in_samples(reference: np.ndarray, moved: np.ndarray) -> int:
    """How many samples later `moved` plays `reference`, by the peak of their cross-correlation."""
    size = 1 << int(np.ceil(np.log2(len(reference) + len(moved))))
    spectrum = np.fft.rfft(moved, size) * np.conj(np.fft.rfft(reference, size))
    correlation = np.fft.irfft(spectrum, size)
    lag = int(np.argmax(correlation))
    return lag if lag < size // 2 else lag - size


@pytest.mark.parametrize("container", ["mp4", "mkv", "mov", "avi"])
def test_shift_audio_moves_the_sound_and_copies_the_video(small_corpus, tmp_path, container):
    from pipelines.media import probe, read_audio

    out, rows = small_corpus
    row = next(r for r in rows if r["container"] == container and not r["corrupt"])
    source, target = out / row["path"], tmp_path / f"moved.{container}"
    shift_audio(source, target, 0.2)  # 5 frames later
    before, rate = read_audio(source)
    after, after_rate = read_audio(target)
    assert after_rate == rate and after.shape[0] == before.shape[0]
    assert abs(after.shape[1] - before.shape[1]) <= 1152  # the length, up to the codec's last frame (MP3: 1152)
    assert abs(lag_in_samples(before.mean(axis=0), after.mean(axis=0)) - 0.2 * rate) <= 2
    assert video_packets(target) == video_packets(source)  # not one video byte re-encoded
    assert probe(target).frame_count == probe(source).frame_count
    assert probe(target).audio_codec == probe(source).audio_codec


# --- with a trained expert ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def scorer(trained_expert) -> VideoScorer:
    return VideoScorer(dlib_scoring(trained_expert))


def test_score_recovers_the_heldout_offsets(small_corpus, trained_expert):
    """Unseen speakers, offsets -15, -5, 5, 15, scored through the decode/face/voice stages (model.evaluate)."""
    summary = evaluate(EvaluateConfig(checkpoint=str(trained_expert), manifest=small_corpus[0] / "manifest.jsonl",
                                      aligner="dlib"))
    assert summary["scored"] == summary["of"] == 4
    assert summary["exact"] >= 0.75 and summary["within_1"] == 1.0, summary["rows"]
    heldout = [r for r in small_corpus[1] if r["subset"] == "heldout" and not r["corrupt"]]
    # All of each video is scored, counted in whole frames of the expert's 25 fps clock.
    assert summary["video_seconds"] == pytest.approx(sum(r["duration_s"] for r in heldout), abs=len(heldout) / 25)


def test_score_command_prints_json_and_draws_the_plot(small_corpus, trained_expert, tmp_path, capsys):
    row = heldout(small_corpus)[0]
    plot = tmp_path / "score.png"
    assert sync_main(["score", str(small_corpus[0] / row["path"]), "--checkpoint", str(trained_expert),
                      "--aligner", "dlib", "--json", "--plot", str(plot)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["offset_ms"] == pytest.approx(40 * report["offset_frames"])
    assert 0 <= report["sync_probability"] <= 1 and report["confidence"] > 0
    assert report["lse_c"] == report["confidence"] and report["lse_d"] == pytest.approx(1 - report["sync_probability"])
    assert len(report["windows"]["time_s"]) == len(report["windows"]["sync_probability"]) == report["windows_scored"]
    assert report["frames"] == pytest.approx(row["duration_s"] * 25, abs=2)
    assert plot.stat().st_size > 10_000


def test_score_command_reports_for_people_and_names_the_problem(small_corpus, trained_expert, capsys):
    out, rows = small_corpus
    row = next(r for r in heldout(small_corpus) if r["offset_frames"] != 0)
    assert sync_main(["score", str(out / row["path"]), "--checkpoint", str(trained_expert), "--aligner", "dlib"]) == 0
    report = capsys.readouterr().out
    offset = int(re.search(r"offset\s+([+-]\d+) frames", report).group(1))
    assert f"{offset:+d} frames ({40 * offset:+d} ms)" in report and "[positive = audio late]" in report
    assert {1: "audio late", -1: "audio early", 0: "in sync"}[int(np.sign(offset))] in report and "confidence" in report
    broken = next(r for r in rows if r["corrupt"] == "no_audio")
    assert sync_main(["score", str(out / broken["path"]), "--checkpoint", str(trained_expert), "--aligner",
                      "dlib"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error:") and Path(broken["path"]).name in error and "audio" in error


def test_fix_round_trip_rescores_at_zero(small_corpus, trained_expert, tmp_path, capsys):
    row = next(r for r in heldout(small_corpus) if abs(r["offset_frames"]) < 15)
    fixed = tmp_path / ("fixed" + Path(row["path"]).suffix)
    # The session's expert is small, its confidence near the default threshold; refusing is tested below.
    assert sync_main(["fix", str(small_corpus[0] / row["path"]), "--checkpoint", str(trained_expert),
                      "--aligner", "dlib", "--out", str(fixed), "--no-verify", "--min-confidence", "0.05"]) == 0
    assert "video packets copied" in capsys.readouterr().out
    after = VideoScorer(dlib_scoring(trained_expert)).score(fixed)
    assert after.result.offset_frames == 0
    assert video_packets(fixed) == video_packets(small_corpus[0] / row["path"])


def test_fix_refuses_an_uncertain_offset(small_corpus, trained_expert, tmp_path, capsys):
    row = heldout(small_corpus)[0]
    fixed = tmp_path / "fixed.mp4"
    assert sync_main(["fix", str(small_corpus[0] / row["path"]), "--checkpoint", str(trained_expert),
                      "--aligner", "dlib", "--out", str(fixed), "--min-confidence", "5"]) == 3
    assert "below --min-confidence" in capsys.readouterr().err and not fixed.exists()


@pytest.mark.parametrize("kind, reason", [("no_audio", "no_audio"), ("no_face", "no_face"),
                                          ("not_video", "unreadable"), ("truncated", "truncated")])
def test_score_says_why_a_video_cannot_be_scored(small_corpus, scorer, kind, reason, capsys):
    out, rows = small_corpus
    row = next(r for r in rows if r["corrupt"] == kind)
    with pytest.raises(ScoreError) as failure:
        scorer.score(out / row["path"])
    assert failure.value.reason == reason and row["path"].split("/")[-1] in str(failure.value)


def two_faces_one_speaking(corpus) -> tuple[dict, Path]:
    """A held-out clip at 25 fps (an unseen speaker, a known offset) and another speaker's 25 fps clip."""
    out, rows = corpus
    row = next(r for r in heldout(corpus) if r["fps"] == 25.0 and abs(r["offset_frames"]) < 15)
    other = next(r for r in rows if not r["corrupt"] and r["fps"] == 25.0 and r["speaker"] != row["speaker"])
    return row, out / other["path"]


def test_the_face_whose_lips_follow_the_audio_is_the_one_speaking(small_corpus, trained_expert, tmp_path, capsys):
    """Two people side by side, only one of whom is heard; the other's lips move to speech that is not. The
    speaker is the smaller face, on the right, so neither the largest nor the first face is what is chosen."""
    row, other = two_faces_one_speaking(small_corpus)
    target = tmp_path / "two.mkv"
    write_two_faces(target, small_corpus[0] / row["path"], other, scale=2 / 3, speaker_on_right=True)
    assert sync_main(["score", str(target), "--checkpoint", str(trained_expert), "--aligner", "dlib", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["faces_in_view"]) == {"2"}  # every sampled frame shows both
    tracks = {track["track"]: track for track in report["tracks"]}
    assert len(tracks) == 2 and all(t["start_s"] == 0 and t["frames"] == report["frames"] for t in tracks.values())
    # The speaker's picture fills the right third of the frame: its box lies there, the other's left of it.
    speaker = next(t for t in tracks.values() if t["box"][0] > 0.6)
    listener = next(t for t in tracks.values() if t["box"][2] < 0.6)
    assert speaker["speaking"] and not listener["speaking"] and report["speaking_tracks"] == [speaker["track"]]
    assert speaker["confidence"] > listener["confidence"], tracks
    assert abs(speaker["offset_frames"] - row["offset_frames"]) <= 1 and report["offset_frames"] == speaker["offset_frames"]
    assert [s["track"] for s in report["segments"]] and {s["track"] for s in report["segments"]} == set(tracks)

    assert sync_main(["score", str(target), "--checkpoint", str(trained_expert), "--aligner", "dlib"]) == 0
    text = capsys.readouterr().out
    assert f"track {speaker['track']} " in text and f"track {listener['track']} " in text
    assert re.search(rf"track {speaker['track']} .*<- speaking", text) and "2 face tracks scored" in text


def test_preprocessing_with_a_speaker_expert_keeps_the_one_speaking(small_corpus, trained_expert, tmp_path):
    """The preprocessing stages on two faces, one heard: with --keep-tracks all both faces' samples, tagged; by
    default the speaker's alone."""
    from pipelines.audio import AudioConfig
    from pipelines.decode import DecodeConfig, DecodeStage
    from pipelines.faces.stage import FaceStage
    from pipelines.samples import SampleConfig, SampleStage
    from pipelines.shards.reader import segments_in_tar

    row, other = two_faces_one_speaking(small_corpus)
    target = tmp_path / "two.mkv"
    write_two_faces(target, small_corpus[0] / row["path"], other)
    audio = AudioConfig()
    source = {"key": "two", "uri": str(target), "speaker": "spk", "split": "train"}
    chunks = [chunk for chunk in DecodeStage(DecodeConfig(), audio, StorageConfig()).decode_source(source)
              if not chunk["end"][0]]
    faces = FaceStage(FaceConfig(aligner="dlib", max_faces=2))
    aligned = [{name: column[0] for name, column in faces(chunk).items()} for chunk in chunks]
    kept = {}
    for keep in ("all", "speaker"):
        stage = SampleStage(audio, SampleConfig(speaker_expert=str(trained_expert), keep_tracks=keep))
        kept[keep] = [s.meta for chunk in aligned for s in segments_in_tar(stage.chunk_samples(chunk)[1], "two")]
    both = sorted(kept["all"], key=lambda meta: meta["box"][0])
    assert [meta["box"][2] < 0.5 for meta in both] == [True, False] and len({m["face"] for m in both}) == 2
    speaker, listener = both
    assert speaker["speaking"] is True and listener["speaking"] is False
    assert speaker["sync_confidence"] > listener["sync_confidence"], both
    assert [meta["key"] for meta in kept["speaker"]] == [speaker["key"]]


def test_curate_judges_each_face_track(small_corpus, trained_expert, tmp_path):
    """Curating a video of two faces: a report row per face track, the one not speaking left out for that."""
    row, other = two_faces_one_speaking(small_corpus)
    inputs = tmp_path / "videos"
    inputs.mkdir()
    write_two_faces(inputs / "two.mkv", small_corpus[0] / row["path"], other)
    summary = curate(CurateConfig(input=str(inputs), output=str(tmp_path / "report"),
                                  score=dlib_scoring(trained_expert), max_abs_offset=15, min_confidence=0.05,
                                  write_shards=False, num_workers=1, progress=False))
    report = sorted(pq.read_table(tmp_path / "report" / "report.parquet").to_pylist(), key=lambda r: r["key"])
    assert summary["segments"] == len(report) == 2 and len({r["track"] for r in report}) == 2
    speaker = next(r for r in report if r["speaking"])
    listener = next(r for r in report if r["speaking"] is False)
    assert speaker["kept"] and abs(speaker["offset_frames"] - row["offset_frames"]) <= 1
    assert not listener["kept"] and listener["reason"] == "not_speaking"
    assert summary["rejected"] == {"not_speaking": 1}


def two_speakers(corpus) -> tuple[Path, Path]:
    """Two 25 fps clips of different speakers."""
    out, rows = corpus
    first = next(r for r in rows if not r["corrupt"] and r["fps"] == 25.0)
    second = next(r for r in rows if not r["corrupt"] and r["fps"] == 25.0 and r["speaker"] != first["speaker"])
    return out / first["path"], out / second["path"]


def test_two_nearly_equal_faces_give_a_whole_track_each(small_corpus, untrained_scorer, tmp_path):
    """Side by side at 97% of each other's size: each face is followed as its own track from start to end,
    neither flipping to the other (a single track taking the larger face cut itself into 5-25-frame pieces)."""
    target = tmp_path / "two.mkv"
    write_two_faces(target, *two_speakers(small_corpus), scale=0.97)
    score = untrained_scorer.score(target)
    assert max(score.face_counts) == 2 and score.frames_with_face == score.frames
    assert len(score.tracks) == 2 and [len(t.segments) for t in score.tracks] == [1, 1]
    assert all((t.start_frame, t.end_frame) == (0, score.frames) for t in score.tracks)
    boxes = sorted((t.box for t in score.tracks), key=lambda box: box[0])
    assert boxes[0][2] < 0.5 < boxes[1][0]  # one face in each half, each the whole time
    assert sum(bool(t.speaking) for t in score.tracks) == 1
    speaking = next(t for t in score.tracks if t.speaking)
    assert len(score.result.window_starts) == len(speaking.result.window_starts) == \
        score.frames - score.window_frames - 2 * score.max_offset + 1
    assert any("2 face tracks scored" in note for note in score.notes())


def test_too_short_says_what_is_true_and_which_offset_fits():
    counts = Counter({1: 3})
    message = too_short_message("clip.mp4", [25, 12], window_frames=5, max_offset=15, fps=25, face_counts=counts)
    assert "2 segment(s), the longest 25 frames (1.00 s)" in message and "35 needed" in message
    assert "--max-offset 10 fits" in message and "faces in view" not in message
    # Only 6 frames at once, two people in view, both followed: no offset fits, so none is suggested.
    message = too_short_message("clip.mp4", [6, 6, 5], window_frames=5, max_offset=15, fps=25,
                                face_counts=Counter({2: 4, 1: 1}), faces_followed=2)
    assert "--max-offset" not in message and "up to 2 faces in view (80% of sampled frames), 2 followed" in message
    assert "never seen long enough" in message and "breaks" not in message


def test_a_short_clip_is_too_short_and_names_the_offset_that_fits(small_corpus, untrained_scorer, tmp_path):
    """One second of two people: each face is followed for all of it, and that second is what is too short."""
    target = tmp_path / "short.mkv"
    write_two_faces(target, *two_speakers(small_corpus), scale=0.97, frames=25)
    with pytest.raises(ScoreError) as failure:
        untrained_scorer.score(target)
    message = str(failure.value)
    assert failure.value.reason == "too_short" and target.name in message
    assert "2 segment(s), the longest 25 frames" in message and "--max-offset 10 fits" in message
    assert "up to 2 faces in view" in message and "2 followed, each as a track of its own" in message


REAL_PAIR = ("pcavs_00015.mp4", "pcavs_741400104.mp4")  # two 25 fps interview crops of different people


@pytest.mark.skipif(not all((REAL_CLIPS / name).is_file() for name in REAL_PAIR), reason="real clips absent")
def test_two_real_people_side_by_side_are_two_tracks(untrained_scorer, tmp_path, capsys):
    """Two real clips side by side, the left one heard: each face is one track over the whole clip, in its own
    half of the picture, both reported, one named speaking (which one, an untrained expert cannot know)."""
    target = tmp_path / "real_two.mkv"
    write_two_faces(target, REAL_CLIPS / REAL_PAIR[0], REAL_CLIPS / REAL_PAIR[1], frames=100)
    report = untrained_scorer.score(target).to_json()
    assert report["frames"] == 100 and max(map(int, report["faces_in_view"])) == 2
    tracks = sorted(report["tracks"], key=lambda t: t["box"][0])
    assert len(tracks) == 2 and tracks[0]["box"][2] < 0.5 < tracks[1]["box"][0]
    assert all(t["frames"] >= 90 for t in tracks), tracks
    assert sum(t["speaking"] for t in tracks) == 1 and len(report["speaking_tracks"]) == 1


def test_curate_keeps_segments_in_sync_and_realigns_them(small_corpus, trained_expert, tmp_path):
    from pipelines.preprocess import PreprocessConfig, run

    out, rows = small_corpus
    shards = tmp_path / "heldout_shards"
    run(PreprocessConfig(input=str(out / "heldout"), output=str(shards), val_fraction=0, progress=False,
                         faces=FaceConfig(aligner="dlib")))
    config = CurateConfig(input=str(shards), output=str(tmp_path / "curated"), score=dlib_scoring(trained_expert),
                          max_abs_offset=6, min_confidence=0.05, num_workers=1, progress=False)
    summary = curate(config)
    truth = {Path(r["path"]).name: r["offset_frames"] for r in heldout(small_corpus)}
    report = pq.read_table(tmp_path / "curated" / "report.parquet").to_pylist()
    assert summary["segments"] == len(report) == len(truth)  # one segment per short held-out clip
    for row in report:
        assert row["kept"] == (abs(truth[Path(row["source"]).name]) <= 6), row
    assert summary["kept"] == 2 and summary["rejected"] == {"offset": 2}

    expert = SyncExpert.from_checkpoint(trained_expert)
    from model.offset import offset_curve

    curated = list(iter_segments(list_shards(str(tmp_path / "curated"), StorageConfig()), StorageConfig(), None))
    assert len(curated) == 2
    for segment in curated:
        # Trimmed by the offset the expert found (the session's small expert is right within a frame), after
        # which the same expert finds it in sync.
        found, true = segment.meta["sync_offset_frames"], truth[Path(segment.source).name]
        assert segment.meta["realigned"] and abs(found - true) <= 1
        assert offset_curve(expert, segment.faces, segment.mel, 15).offset_frames == 0

    again = curate(config)  # a rerun finds everything done and duplicates nothing
    assert again["inputs_already_done"] == 1 and again["segments"] == summary["segments"]
    assert len(list((tmp_path / "curated").glob("shard-*.tar"))) == 1


def test_curate_videos_records_failures_and_goes_on(small_corpus, trained_expert, tmp_path, capfd):
    out, rows = small_corpus
    inputs = tmp_path / "videos"
    inputs.mkdir()
    good = heldout(small_corpus)[:2]
    broken = next(r for r in rows if r["corrupt"] == "no_audio")
    for row in good + [broken]:
        (inputs / Path(row["path"]).name).symlink_to(out / row["path"])
    summary = curate(CurateConfig(input=str(inputs), output=str(tmp_path / "report"), score=dlib_scoring(trained_expert),
                                  write_shards=False, num_workers=1, progress=False))
    report = pq.read_table(tmp_path / "report" / "report.parquet").to_pylist()
    assert summary["failed"] == {"no_audio": 1}
    assert [r["error"] for r in report if not r["key"]] == ["no_audio"]
    assert summary["segments"] == len([r for r in report if r["key"]]) == 2
    assert not list((tmp_path / "report").glob("shard-*"))
    console = "".join(capfd.readouterr())
    assert "Starting execution" not in console and "Progress bars disabled" not in console  # Ray Data's, not ours


def test_curate_refuses_an_output_that_is_a_file_before_it_starts(tmp_path, capsys):
    (tmp_path / "report").write_bytes(b"x")
    argv = ["curate", "--input", str(tmp_path), "--checkpoint", str(tmp_path / "none.pt"), "--output",
            str(tmp_path / "report")]
    assert sync_main(argv) == 2
    assert capsys.readouterr().err == f"error: output {str(tmp_path / 'report')!r} is not a folder; name a new " \
                                      f"folder, or one that exists\n"


def test_shards_of_aligned_crops_are_refused_to_an_expert_of_box_crops(small_corpus, tmp_path, capsys):
    """An imported Wav2Lip expert reads detector boxes; preprocessed shards hold aligned crops."""
    from dataclasses import replace

    from model.checkpoint import Checkpoint, write_checkpoint
    from model.config import PRESETS
    from pipelines.preprocess import PreprocessConfig, run

    shards = tmp_path / "shards"
    run(PreprocessConfig(input=str(small_corpus[0] / "heldout"), output=str(shards), val_fraction=0, progress=False,
                         faces=FaceConfig(aligner="dlib")))

    config = replace(PRESETS["cpu-small"], crop="box")
    checkpoint = write_checkpoint(tmp_path / "box.pt", Checkpoint(step=0, model=SyncExpert(config).state_dict(),
                                                                  model_config=config))
    refusal = "holds aligned face crops, the expert reads box crops: give it the videos"
    assert sync_main(["curate", "--input", str(shards), "--checkpoint", str(checkpoint), "--output",
                      str(tmp_path / "curated"), "--aligner", "dlib"]) == 2
    assert refusal in capsys.readouterr().err
    assert not (tmp_path / "curated" / "report.parquet").exists()
    with pytest.raises(ValueError, match=refusal):
        evaluate(EvaluateConfig(checkpoint=str(checkpoint), manifest=small_corpus[0] / "manifest.jsonl", subset="",
                                shards=str(shards)))


# --- the Python API for generator training ----------------------------------------------------------------------

def test_expert_from_checkpoint_is_frozen_and_scores_raw_windows(trained_expert):
    expert = SyncExpert.from_checkpoint(trained_expert)
    assert not expert.training and not any(p.requires_grad for p in expert.parameters())
    faces = torch.randint(0, 256, (3, 5, 96, 96, 3), dtype=torch.uint8)
    mels = torch.randn(3, 80, 16)
    similarity = expert.similarity(faces, mels)
    assert similarity.shape == (3,) and bool(((similarity >= 0) & (similarity <= 1)).all())
    as_float = faces.permute(0, 4, 1, 2, 3).float() / 255  # the generator layout [B, 3, T, H, W]
    assert torch.allclose(expert.similarity(as_float, mels), similarity, atol=1e-5)


def test_sync_loss_gradients_reach_the_faces_only(trained_expert, small_corpus):
    loss_fn = SyncLoss.from_checkpoint(trained_expert).train()
    assert not loss_fn.expert.training  # stays in eval even when the generator trains
    faces = torch.rand(4, 3, 5, 128, 128, requires_grad=True)  # resized to the expert's 96 inside
    loss = loss_fn(faces, torch.randn(4, 80, 16))
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert faces.grad is not None and faces.grad.abs().sum() > 0
    assert faces.grad[:, :, :, :40].abs().sum() == 0  # the expert never looks at the upper half
    assert all(p.grad is None for p in loss_fn.expert.parameters())
    with pytest.raises(ValueError):
        loss_fn(torch.rand(4, 3, 4, 96, 96), torch.randn(4, 80, 16))  # 4 frames, the expert takes 5


def test_sync_loss_is_lower_for_lips_in_sync(trained_expert, small_corpus, tmp_path):
    """Real windows from held-out clips: the loss of the true pairing beats the same faces with shifted audio."""
    from pipelines.preprocess import PreprocessConfig, run

    out, _ = small_corpus
    shards = tmp_path / "shards"
    run(PreprocessConfig(input=str(out / "videos"), output=str(shards), val_fraction=0, progress=False,
                         faces=FaceConfig(aligner="dlib")))
    loss_fn = SyncLoss.from_checkpoint(trained_expert)
    faces, in_sync, shifted_audio = [], [], []
    for segment in iter_segments(list_shards(str(shards), StorageConfig()), StorageConfig(), None):
        for start in range(10, segment.num_frames - 20, 7):
            faces.append(segment.faces[start:start + 5])
            column = EXPERT_CLOCK.mel_column(start)
            in_sync.append(segment.mel[:, column:column + 16])
            later = EXPERT_CLOCK.mel_column(start + 8)
            shifted_audio.append(segment.mel[:, later:later + 16])
    faces = torch.from_numpy(np.stack(faces)).permute(0, 4, 1, 2, 3).float() / 255
    good = loss_fn(faces, torch.from_numpy(np.stack(in_sync)))
    bad = loss_fn(faces, torch.from_numpy(np.stack(shifted_audio)))
    assert good < 0.5 < bad, (float(good), float(bad))
