"""Decoding onto the expert's clock: the picture's own end bounds the output, and a picture that cannot show a
moving face (a single frame under seconds of audio, a header claiming 1000 fps, a slideshow) is refused with its
reason, by the preprocessing stage and by `score` alike."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from model.sync.scoring import FAILURE_MESSAGES, ScoreError
from pipelines.audio import AudioConfig, prepare
from pipelines.core.clock import EXPERT_CLOCK
from pipelines.core.storage import StorageConfig
from pipelines.decode import (DecodeConfig, DecodeStage, output_picks, picture_end_s, picture_problem,
                              resample_indices)
from pipelines.media import iter_frames, iter_pictures, probe, read_audio
from pipelines.synthetic.container import CONTAINERS, write_clip

FPS = EXPERT_CLOCK.fps
WINDOW = EXPERT_CLOCK.window_frames

# What each frozen clip is refused for.
FROZEN = {"one_frame": "too_few_frames", "header_1000fps": "too_few_frames", "slideshow": "still_picture"}


def test_picture_ends_one_frame_after_its_last_frame():
    assert picture_end_s(np.arange(10) / 30, declared_fps=30) == pytest.approx(10 / 30)
    assert picture_end_s(np.array([0.0]), declared_fps=25) == pytest.approx(0.04)
    # Variable rate: the typical gap, not the last one (a phone's final frame may come late or early).
    assert picture_end_s(np.array([0.0, 0.03, 0.06, 0.09, 0.2]), declared_fps=20) == pytest.approx(0.23)
    assert picture_end_s(np.zeros(0), declared_fps=25) == 0.0


def test_picture_problem_names_what_cannot_show_motion():
    assert picture_problem(np.zeros(2, np.int64), WINDOW) == "too_few_frames"
    assert picture_problem(np.repeat([0, 1, 2], 25), WINDOW) == "still_picture"  # 3 pictures over 3 s
    assert picture_problem(np.repeat(np.arange(10), 10), WINDOW) == "still_picture"  # 2.5 pictures a second
    assert picture_problem(np.repeat(np.arange(10), 5), WINDOW) is None  # one new picture per window
    assert picture_problem(resample_indices(np.arange(72) / 24, FPS, 3.0), WINDOW) is None  # 24 fps film


@pytest.fixture(scope="module")
def talking_clip(small_corpus) -> tuple[list[np.ndarray], np.ndarray, int]:
    """Frames, audio [channels, samples] and rate of a 25 fps clip of the corpus: a face that moves and speaks."""
    out, rows = small_corpus
    row = next(r for r in rows if not r["corrupt"] and r["fps"] == 25.0)
    audio, rate = read_audio(out / row["path"])
    return [image for _, image in iter_frames(out / row["path"])], audio, rate


def write_frozen(kind: str, folder: Path, talking_clip) -> Path:
    """A clip whose whole soundtrack plays under a picture that does not move."""
    frames, audio, rate = talking_clip
    if kind == "one_frame":
        name, frames, times, fps = "one.mp4", frames[:1], [0.0], FPS
    elif kind == "header_1000fps":  # a 25 fps recording whose header says 1000 fps: its picture lasts 1/40 as long
        name, times, fps = "fast.avi", [k / 1000 for k in range(len(frames))], 1000
    else:  # three pictures, a second each, under the whole soundtrack
        name, frames, times, fps = "slides.mkv", frames[:3], [0.0, 1.0, 2.0], FPS
    path = folder / name
    write_clip(path, frames, times, audio, rate, CONTAINERS[path.suffix[1:]], Fraction(fps))
    return path


def decode_rows(path: Path) -> list[dict]:
    stage = DecodeStage(DecodeConfig(), AudioConfig(), StorageConfig())
    return list(stage.decode_source({"key": path.stem, "uri": str(path), "speaker": "", "split": "train"}))


@pytest.mark.parametrize("kind", FROZEN)
def test_decode_records_a_frozen_picture_as_a_failure(kind, talking_clip, tmp_path):
    rows = decode_rows(write_frozen(kind, tmp_path, talking_clip))
    assert len(rows) == 1 and rows[0]["end"][0]  # no chunk: not one repeated face reaches the samples
    assert rows[0]["error"][0] == FROZEN[kind]
    detail = str(rows[0]["detail"][0])
    assert "the audio at" in detail and "distinct picture(s)" in detail, detail


@pytest.mark.parametrize("kind", FROZEN)
def test_score_refuses_a_frozen_picture_naming_the_file(kind, talking_clip, untrained_scorer, tmp_path):
    path = write_frozen(kind, tmp_path, talking_clip)
    with pytest.raises(ScoreError) as failure:
        untrained_scorer.score(path)
    assert failure.value.reason == FROZEN[kind]
    assert path.name in str(failure.value) and FAILURE_MESSAGES[FROZEN[kind]] in str(failure.value)


def test_ordinary_clips_keep_every_frame(small_corpus):
    """Every good clip of the corpus (4 frame rates and variable rate, 5 containers) is resampled as it was before
    the picture's end bounded the output: its picture and audio end within a frame of each other."""
    out, rows = small_corpus
    audio_config = AudioConfig()
    good = [row for row in rows if not row["corrupt"]]
    rates = {row["fps_exact"] for row in good}
    assert rates >= {"24000/1001", "25/1", "30000/1001", "30/1", None}  # None: variable frame rate
    for row in good:
        path = out / row["path"]
        info = probe(path)
        audio_s = len(prepare(*read_audio(path), audio_config)) / audio_config.clock.sample_rate
        picks = output_picks(info, audio_s, FPS)
        assert np.array_equal(picks, resample_indices(info.frame_times, FPS, min(info.duration_s, audio_s))), row
        assert picture_problem(picks, WINDOW) is None


def test_a_frame_lost_in_decoding_fails_the_video_instead_of_shifting_its_picture(talking_clip, tmp_path,
                                                                                   monkeypatch):
    """Frames are picked by the probe's index; a decoder that drops one frame would put every later picture a
    frame early. The video fails as corrupt, naming the frame, rather than reaching the samples out of sync."""
    import pipelines.decode as decode

    frames, audio, rate = talking_clip
    path = tmp_path / "clip.mp4"
    write_clip(path, frames, [k / FPS for k in range(len(frames))], audio, rate, CONTAINERS["mp4"], Fraction(FPS))
    assert [row["error"][0] for row in decode_rows(path)][-1] == ""  # as written, it decodes

    def dropping_frame_30(source):
        for index, frame in enumerate(iter_pictures(source)):
            if index != 30:
                yield frame

    monkeypatch.setattr(decode, "iter_pictures", dropping_frame_30)
    rows = decode_rows(path)
    assert rows[-1]["error"][0] == "corrupt" and rows[-1]["end"][0]
    assert "decoded frame 30 plays at 1.240 s, the stream's index says 1.200 s" in str(rows[-1]["detail"][0])


def test_a_50_fps_clip_converts_only_the_frames_the_25_fps_clock_picks(talking_clip, tmp_path, monkeypatch):
    """RGB conversion costs more than decoding a small frame: frames the clock skips are decoded, never converted."""
    import pipelines.decode as decode

    frames, audio, rate = talking_clip
    path = tmp_path / "fifty.mp4"
    doubled = [frame for frame in frames for _ in range(2)]
    write_clip(path, doubled, [k / 50 for k in range(len(doubled))], audio, rate, CONTAINERS["mp4"], Fraction(50))
    converted = []

    class Counted:
        def __init__(self, picture, index):
            self.picture, self.index = picture, index

        def to_ndarray(self, **kwargs):
            converted.append(self.index)
            return self.picture.to_ndarray(**kwargs)

    def counted_pictures(source):
        for index, (time_s, picture) in enumerate(iter_pictures(source)):
            yield time_s, Counted(picture, index)

    monkeypatch.setattr(decode, "iter_pictures", counted_pictures)
    rows = decode_rows(path)
    frames_out = sum(len(row["frames"][0]) for row in rows)  # the end row holds none
    assert rows[-1]["error"][0] == "" and len(converted) == frames_out
    assert converted[:4] == [0, 2, 4, 6] and len(converted) <= len(doubled) // 2 + 1
