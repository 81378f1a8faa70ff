"""Photo faces (`--faces photo`): a real identity, its mouth moved by the speech, the ground truth still exact."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pipelines.faces.align import similarity_transform
from pipelines.synthetic import photo_face
from pipelines.synthetic.corpus import SyntheticConfig, check_face_sources, generate_corpus
from pipelines.synthetic.envelope_check import estimate_offset, mouth_opening
from pipelines.synthetic.face import REST, HeadPose, MouthShape
from pipelines.synthetic.speech import Phoneme
from pipelines.synthetic.visemes import mouth_track

from conftest import SHARED_DATA

REAL_MORE = SHARED_DATA / "real_more"
SHARP = photo_face.Camera(blur_sigma=0.0, jpeg_quality=100, gain=(1.0, 1.0, 1.0), gamma=1.0)
SIZE = (320, 320)
POSE = HeadPose(angle_deg=4.0, scale=320 / 256 * 0.85, center=(162.0, 158.0))


@pytest.fixture(scope="module")
def aligner():
    from pipelines.faces.dlib_aligner import DlibAligner

    return DlibAligner()


@pytest.fixture(scope="module")
def astronaut():
    return photo_face.photo_identity("astronaut", np.random.default_rng(3))


def eye_centres(points: np.ndarray) -> np.ndarray:
    return np.stack([points[36:42].mean(0), points[42:48].mean(0)])


def test_frames_show_the_source_identity_outside_the_mouth(astronaut, aligner):
    renderer = photo_face.PhotoFaceRenderer(astronaut, SIZE, SHARP)
    frames = np.stack([renderer.render(POSE, REST), renderer.render(POSE, MouthShape(open=0.9, width=0.6, teeth=0.5))])
    landmarks, _ = aligner(frames)
    assert np.isfinite(landmarks).all()
    # The astronaut photo itself, brought to where the aligner sees the rendered face, matches it above the mouth.
    still, still_points = photo_face.source_still("astronaut")
    mirrored = astronaut_is_mirrored(frames[0], still, landmarks[0])
    if mirrored:
        still, still_points = still[:, ::-1], photo_face.mirror_landmarks(still_points, still.shape[1])
    matrix = similarity_transform(eye_centres(still_points), eye_centres(landmarks[0]))
    source = cv2.warpAffine(np.ascontiguousarray(still), matrix, SIZE[::-1])
    x0, y0 = landmarks[0][[17, 19]].min(0).astype(int)
    x1, y1 = landmarks[0][[26, 33]].max(0).astype(int)
    grey = lambda image: image[y0:y1, x0:x1].astype(np.float32).mean(-1).ravel()
    assert np.corrcoef(grey(frames[0]), grey(source))[0, 1] > 0.9
    # Opening the mouth changes the lower face and nothing above the middle of the nose.
    above = slice(0, int(landmarks[0][29, 1]))
    below = slice(int(landmarks[0][51, 1]), int(landmarks[0][8, 1]))
    difference = np.abs(frames[0].astype(int) - frames[1].astype(int)).mean(-1)
    assert difference[above].max() <= 2 and difference[below].mean() > 8


def astronaut_is_mirrored(frame: np.ndarray, still: np.ndarray, points: np.ndarray) -> bool:
    """Whether the identity was made from the mirrored photo: the face's lit side tells."""
    left, right = points[[1, 2, 3]].mean(0).astype(int), points[[13, 14, 15]].mean(0).astype(int)
    frame_side = frame[left[1], left[0] + 8].mean() - frame[right[1], right[0] - 8].mean()
    _, still_points = photo_face.source_still("astronaut")
    l, r = still_points[[1, 2, 3]].mean(0).astype(int), still_points[[13, 14, 15]].mean(0).astype(int)
    still_side = still[l[1], l[0] + 8].mean() - still[r[1], r[0] - 8].mean()
    return np.sign(frame_side) != np.sign(still_side)


def test_mouth_opening_follows_the_viseme_timeline(astronaut, aligner):
    # "ma pa ba ma": lips shut on every consonant, wide open on every vowel.
    phonemes, t = [], 0.0
    for symbol in ["m", "a", "p", "a", "b", "a", "m", "a"]:
        length = 0.09 if symbol in "mpb" else 0.16
        phonemes.append(Phoneme(symbol=symbol, start_s=t, end_s=t + length))
        t += length
    track = mouth_track(phonemes, 0.3, articulation=1.0, rng=np.random.default_rng(0))
    times = np.arange(0, t + 0.6, 0.02)
    renderer = photo_face.PhotoFaceRenderer(astronaut, SIZE, SHARP)
    frames = np.stack([renderer.render(POSE, track.at(time)) for time in times])
    landmarks, _ = aligner(frames)
    seen = mouth_opening(landmarks)
    planned = track.sample(times)[:, 0]
    assert np.isfinite(seen).all()
    assert np.corrcoef(seen, planned)[0, 1] > 0.9
    vowels = [0.3 + (p.start_s + p.end_s) / 2 - 0.025 for p in phonemes if p.symbol == "a"]
    stops = [0.3 + (p.start_s + p.end_s) / 2 - 0.025 for p in phonemes if p.symbol != "a"]
    at = lambda instants: seen[np.searchsorted(times, instants)]
    assert at(vowels).min() > at(stops).max() + 0.05, (at(vowels), at(stops))


def test_an_identity_and_its_frames_are_a_function_of_the_seed():
    def frame(seed):
        identity = photo_face.photo_identity("astronaut", np.random.default_rng(seed))
        camera = photo_face.random_camera(np.random.default_rng(seed))
        return photo_face.PhotoFaceRenderer(identity, (256, 256), camera).render(
            HeadPose(2.0, 0.8, (128.0, 128.0)), MouthShape(0.5, 0.5, 0.5))

    assert np.array_equal(frame(11), frame(11))
    assert not np.array_equal(frame(11), frame(12))


def test_mirrored_landmarks_match_the_mirrored_photo(aligner):
    still, points = photo_face.source_still("astronaut")
    found, _ = aligner(np.ascontiguousarray(still[:, ::-1])[None])
    assert np.abs(found[0] - photo_face.mirror_landmarks(points, still.shape[1])).max() < 6


def test_photo_corpus_keeps_the_ground_truth(tmp_path, aligner):
    """The envelope check recovers every stated offset from the photo faces, as it does from the drawn ones."""
    from pipelines.media import iter_frames, read_audio

    rows = generate_corpus(SyntheticConfig(out=tmp_path, num_videos=6, seed=5, heldout_fraction=0.5, min_seconds=3.0,
                                           max_seconds=4.0, max_offset_frames=10, videos_per_speaker=2, workers=2,
                                           faces="photo"), progress=False)
    assert sorted(row["offset_frames"] for row in rows if row["subset"] == "heldout") == [-10, 0, 10]
    for row in rows:
        times, frames = zip(*iter_frames(tmp_path / row["path"]))
        landmarks, _ = aligner(np.stack(frames))
        assert np.isfinite(landmarks[:, 0, 0]).mean() >= 0.95, row["key"]
        audio, sample_rate = read_audio(tmp_path / row["path"])
        lag, agreement = estimate_offset(mouth_opening(landmarks), np.array(times), audio.mean(0), sample_rate,
                                         max_lag=15)
        assert abs(lag - row["offset_frames"]) <= 1, (row["key"], lag, row["offset_frames"])
        elsewhere = max(score for k, score in agreement.items() if abs(k - row["offset_frames"]) >= 4)
        assert agreement[lag] > elsewhere + 0.1, row["key"]


def test_face_sources_folder(tmp_path):
    import skimage.data

    cv2.imwrite(str(tmp_path / "person.png"), cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(tmp_path / "wall.png"), np.full((200, 200, 3), 128, np.uint8))
    (tmp_path / "notes.txt").write_text("not a face")
    config = SyntheticConfig(out=tmp_path / "out", faces="photo", face_sources=tmp_path)
    assert photo_face.identity_sources(tmp_path) == [str(tmp_path / "person.png"), str(tmp_path / "wall.png")]
    problems = check_face_sources(config)
    assert len(problems) == 1 and "wall.png" in problems[0] and "finds no face" in problems[0]
    # Every speaker gets a face from a usable source, whichever source its draw names first.
    from pipelines.synthetic.corpus import _photo_identity

    assert {_photo_identity(0, speaker, tmp_path).source for speaker in range(6)} == {str(tmp_path / "person.png")}
    (tmp_path / "person.png").unlink()
    with pytest.raises(photo_face.NoFaceError, match="no usable face source"):
        check_face_sources(config)
    with pytest.raises(FileNotFoundError, match="no such folder"):
        photo_face.identity_sources(tmp_path / "missing")
    with pytest.raises(ValueError, match="--face-sources needs --faces photo"):
        SyntheticConfig(out=tmp_path / "out", face_sources=tmp_path)


def test_the_command_line_takes_photo_faces(tmp_path):
    from pipelines.core.cli import parse_config

    config = parse_config(SyntheticConfig, "", ["--out", str(tmp_path), "--faces", "photo",
                                                 "--face-sources", str(tmp_path)])
    assert config.faces == "photo" and config.face_sources == tmp_path
    with pytest.raises(SystemExit):
        parse_config(SyntheticConfig, "", ["--out", str(tmp_path), "--faces", "cartoon"])


@pytest.mark.skipif(not REAL_MORE.is_dir(), reason="needs ../shared/data/real_more (development clips)")
def test_an_identity_from_a_real_clip(aligner):
    clip = str(REAL_MORE / "lipnet_bbaf2n.mpg")
    identity = photo_face.photo_identity(clip, np.random.default_rng(0))
    frame = photo_face.PhotoFaceRenderer(identity, (256, 256), SHARP).render(HeadPose(0.0, 0.8, (128.0, 128.0)), REST)
    landmarks, _ = aligner(frame[None])
    assert np.isfinite(landmarks).all() and mouth_opening(landmarks)[0] < 0.08


def test_a_saved_still_animates_without_the_aligner(tmp_path, monkeypatch):
    """Stills saved with their landmarks (made where dlib's model is) give the same identity where it is not."""
    png = photo_face.save_still("astronaut", tmp_path)
    image, landmarks = photo_face.source_still("astronaut")

    def no_aligner():
        raise AssertionError("the aligner ran although the landmarks were given")

    monkeypatch.setattr(photo_face, "_aligner", no_aligner)
    loaded, given = photo_face.source_still(str(png))
    assert np.array_equal(loaded, image)
    assert np.abs(given - landmarks).max() < 1e-3  # stored as float32
    rendered = photo_face.photo_identity(str(png), np.random.default_rng(7)).sprite
    assert np.abs(rendered - photo_face.photo_identity("astronaut", np.random.default_rng(7)).sprite).max() < 0.5
    photo_face.landmarks_path(png).write_bytes(b"not an array")
    photo_face.source_still.cache_clear()
    with pytest.raises(ValueError):
        photo_face.source_still(str(png))
