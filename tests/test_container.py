"""Round trips through pipelines.synthetic.container (writer) and pipelines.media (reader).

Clips are tiny (64x48, about a second) so the whole file runs in seconds on two cores; what is
checked is timing, rates and codecs, not picture quality.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from scipy.signal import correlate, resample_poly

from pipelines import media
from pipelines.media import MediaError
from pipelines.synthetic.container import CONTAINERS, ContainerSpec, write_clip

WIDTH, HEIGHT = 64, 48
FPS = Fraction(25)
FPS_VALUES = [Fraction(24000, 1001), Fraction(25), Fraction(30000, 1001), Fraction(30)]
AUDIO_RATES = [8000, 16000, 22050, 44100, 48000]

# What the reader reports (codec format names) for what each container entry writes.
EXPECTED_CODECS = {
    "mp4": ("h264", "aac"),
    "mkv": ("h264", "flac"),
    "mov": ("h264", "pcm_s16le"),
    "avi": ("mpeg4", "mp3"),
    "webm": ("vp9", "opus"),
}
VFR_CONTAINERS = ["mp4", "mkv", "mov", "webm"]  # AVI has no timestamps to carry VFR


# ---------------------------------------------------------------------------------------------
# Synthetic inputs


def moving_square(count: int, width: int = WIDTH, height: int = HEIGHT) -> Iterator[np.ndarray]:
    """A red square sliding right over a static gradient, so every frame differs."""
    rows, cols = np.mgrid[0:height, 0:width]
    background = np.stack([cols * 255 // width, rows * 255 // height, np.full_like(rows, 96)], axis=-1)
    background = background.astype(np.uint8)
    side = height // 3
    for k in range(count):
        frame = background.copy()
        left = (2 * k) % (width - side)
        frame[side : 2 * side, left : left + side] = (230, 30, 30)
        yield frame


def chirp(rate: int, seconds: float, channels: int) -> np.ndarray:
    """Float32 [channels, samples]: rising chirp on the left, falling on the right (distinct
    channels catch a swap), under a ramp envelope so a wrong alignment cannot look right."""
    t = np.arange(round(rate * seconds)) / rate
    low, high = 200.0, 0.35 * rate
    sweep = low * t + (high - low) / (2 * seconds) * t**2
    rising = np.sin(2 * np.pi * sweep)
    falling = np.sin(2 * np.pi * (high * t - (high - low) / (2 * seconds) * t**2))
    envelope = np.linspace(0.2, 0.8, t.size)
    return (np.stack([rising, falling][:channels]) * envelope).astype(np.float32)


def grid_times(count: int, fps: Fraction) -> list[float]:
    return [float(k / fps) for k in range(count)]


def irregular_times(count: int, seed: int = 0) -> np.ndarray:
    """Frame gaps of 20..60 ms, like a phone camera adapting its exposure."""
    gaps = np.random.default_rng(seed).uniform(0.020, 0.060, count - 1)
    return np.concatenate([[0.0], np.cumsum(gaps)])


def aligned_correlation(reference: np.ndarray, decoded: np.ndarray, max_lag: int) -> tuple[float, int]:
    """Pearson correlation at the best lag within +-max_lag samples (decoded lags by `lag`)."""
    n = min(reference.size, decoded.size)
    scores = correlate(decoded[:n], reference[:n], mode="full", method="fft")
    lags = np.arange(-n + 1, n)
    window = np.abs(lags) <= max_lag
    lag = int(lags[window][np.argmax(scores[window])])
    if lag >= 0:
        ref, dec = reference[: n - lag], decoded[lag:n]
    else:
        ref, dec = reference[-lag:n], decoded[: n + lag]
    return float(np.corrcoef(ref, dec)[0, 1]), lag


def write(path: Path, spec: ContainerSpec, count: int = 25, fps: Fraction = FPS, **audio) -> Path:
    """Write a CFR clip of `count` frames; pass audio=..., sample_rate=... to add sound."""
    sound, rate = audio.get("audio"), audio.get("sample_rate", 0)
    write_clip(path, moving_square(count), grid_times(count, fps), sound, rate, spec, fps)
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Frame rate and timestamps


@pytest.mark.parametrize("fps", FPS_VALUES, ids=lambda f: f"{float(f):.3f}")
@pytest.mark.parametrize("name", sorted(CONTAINERS))
def test_constant_frame_rate_round_trip(tmp_path: Path, name: str, fps: Fraction) -> None:
    spec = CONTAINERS[name]
    count = 36
    # With sound, as in the corpus: audio priming can shift video timestamps (it did in AVI).
    audio = chirp(48000, count / fps, 1)
    path = write(tmp_path / f"cfr.{spec.extension}", spec, count, fps, audio=audio, sample_rate=48000)

    info = media.probe(path)
    assert info.fps == pytest.approx(float(fps), abs=0.01)
    assert info.frame_count == count
    assert not info.variable_frame_rate
    assert (info.width, info.height) == (WIDTH, HEIGHT)
    # Matroska stores milliseconds, so k/fps comes back rounded to the nearest 1 ms.
    np.testing.assert_allclose(info.frame_times, grid_times(count, fps), atol=1e-3)


@pytest.mark.parametrize("name", VFR_CONTAINERS)
def test_variable_frame_rate_round_trip(tmp_path: Path, name: str) -> None:
    spec = CONTAINERS[name]
    times = irregular_times(40)
    path = tmp_path / f"vfr.{spec.extension}"
    write_clip(path, moving_square(times.size), times, None, 0, spec, Fraction(30))

    info = media.probe(path)
    assert info.variable_frame_rate
    assert info.frame_count == times.size
    assert info.duration_s >= times[-1]  # the clip must not end before its last frame starts
    np.testing.assert_allclose(info.frame_times, times, atol=1e-3)
    durations = np.diff(info.frame_times)
    assert durations.max() - durations.min() > 0.01


def test_iter_frames_yields_written_pictures_at_frame_times(tmp_path: Path) -> None:
    fps = Fraction(30000, 1001)
    path = write(tmp_path / "clip.mp4", CONTAINERS["mp4"], 20, fps)

    decoded = list(media.iter_frames(path))
    assert [t for t, _ in decoded] == pytest.approx(list(media.probe(path).frame_times))
    for (_, got), want in zip(decoded, moving_square(20), strict=True):
        assert got.shape == want.shape and got.dtype == np.uint8
        assert np.abs(got.astype(int) - want).mean() < 8  # lossy, but the same picture


def test_avi_refuses_timing_it_cannot_store(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="avi"):
        write_clip(tmp_path / "vfr.avi", moving_square(10), irregular_times(10), None, 0, CONTAINERS["avi"], 25)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# Audio


@pytest.mark.parametrize("channels", [1, 2], ids=["mono", "stereo"])
@pytest.mark.parametrize("rate", AUDIO_RATES)
def test_mp4_audio_round_trip(tmp_path: Path, rate: int, channels: int) -> None:
    # Not a whole number of 1024-sample AAC frames, so the last frame is mostly padding
    # (up to 128 ms at 8 kHz) that the reader must cut at the length mp4 records.
    seconds = 1.1
    audio = chirp(rate, seconds, channels)
    path = write(tmp_path / "a.mp4", CONTAINERS["mp4"], 28, audio=audio, sample_rate=rate)

    info = media.probe(path)
    assert (info.sample_rate, info.channels, info.audio_codec) == (rate, channels, "aac")
    assert info.duration_s == pytest.approx(seconds, abs=0.05)

    decoded, decoded_rate = media.read_audio(path)
    assert decoded_rate == rate and decoded.dtype == np.float32
    assert decoded.shape[0] == channels
    assert abs(decoded.shape[1] - audio.shape[1]) <= rate // 500  # 2 ms: priming and padding gone
    for channel in range(channels):
        score, lag = aligned_correlation(audio[channel], decoded[channel], max_lag=rate // 5)
        assert score > 0.9
        assert abs(lag) <= rate // 500  # priming is removed: audio sits on the video clock (2 ms)


@pytest.mark.parametrize("name", sorted(CONTAINERS))
def test_every_container_round_trips_with_its_codecs(tmp_path: Path, name: str) -> None:
    spec = CONTAINERS[name]
    rate, seconds = 48000, 1.0  # every audio codec in the table takes 48 kHz
    audio = chirp(rate, seconds, 2)
    path = write(tmp_path / f"clip.{spec.extension}", spec, 25, audio=audio, sample_rate=rate)

    info = media.probe(path)
    assert (info.video_codec, info.audio_codec) == EXPECTED_CODECS[name]
    assert info.has_video and info.has_audio and info.channels == 2 and info.sample_rate == rate
    assert info.frame_count == 25 and info.rotation == 0
    assert info.duration_s == pytest.approx(seconds, abs=0.05)

    decoded, decoded_rate = media.read_audio(path)
    assert decoded_rate == rate
    assert decoded.shape[1] / rate == pytest.approx(seconds, abs=0.05)
    score, lag = aligned_correlation(audio[0], decoded[0], max_lag=rate // 5)
    assert score > 0.9
    assert abs(lag) <= rate // 500  # including AVI, where the writer pre-advances MP3 priming


def test_container_table_covers_real_world_formats() -> None:
    assert set(EXPECTED_CODECS) <= set(CONTAINERS)
    assert CONTAINERS["webm"].audio_rates == (8000, 12000, 16000, 24000, 48000)


def test_webm_refuses_44100_naming_codec_and_rates(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"libopus.*44100.*48000"):
        write(tmp_path / "a.webm", CONTAINERS["webm"], audio=chirp(44100, 0.5, 1), sample_rate=44100)
    assert list(tmp_path.iterdir()) == []


def test_opus_decodes_at_48k_whatever_rate_it_was_encoded_at(tmp_path: Path) -> None:
    """Opus has one decoding rate; the encoder's rate is only a bandwidth hint in the header."""
    audio = chirp(16000, 1.0, 1)
    path = write(tmp_path / "a.webm", CONTAINERS["webm"], audio=audio, sample_rate=16000)

    assert media.probe(path).sample_rate == 48000
    decoded, rate = media.read_audio(path)
    assert rate == 48000
    score, lag = aligned_correlation(resample_poly(audio[0], 3, 1), decoded[0], max_lag=rate // 5)
    assert score > 0.9 and abs(lag) <= rate // 500


def test_clip_without_audio(tmp_path: Path) -> None:
    path = write(tmp_path / "silent.mp4", CONTAINERS["mp4"])

    info = media.probe(path)
    assert info.has_video and not info.has_audio
    assert info.sample_rate is None and info.channels is None and info.audio_codec is None
    with pytest.raises(MediaError) as caught:
        media.read_audio(path)
    assert caught.value.reason == "no_audio"
    assert str(path) in str(caught.value)


# ---------------------------------------------------------------------------------------------
# Broken inputs


def _truncated_mp4(tmp_path: Path) -> Path:
    rate = 16000
    whole = write(tmp_path / "whole.mp4", CONTAINERS["mp4"], 25, audio=chirp(rate, 1.0, 1), sample_rate=rate)
    cut = tmp_path / "cut.mp4"
    data = whole.read_bytes()
    cut.write_bytes(data[: int(len(data) * 0.4)])
    return cut


def _empty(tmp_path: Path) -> Path:
    path = tmp_path / "empty.mp4"
    path.write_bytes(b"")
    return path


def _text(tmp_path: Path) -> Path:
    path = tmp_path / "notes.mp4"
    path.write_text("this is a shopping list, not a video\n" * 20)
    return path


@pytest.mark.parametrize(
    ("make", "reasons"),
    [(_empty, {"unreadable"}), (_text, {"unreadable"}), (_truncated_mp4, {"truncated"})],
    ids=["zero-byte", "text-named-mp4", "mp4-cut-at-40%"],
)
def test_broken_files_raise_media_error(tmp_path: Path, make, reasons: set[str]) -> None:
    path = make(tmp_path)
    for read in (media.probe, media.read_audio, lambda p: next(media.iter_frames(p))):
        with pytest.raises(MediaError) as caught:
            read(path)
        assert caught.value.reason in reasons
        assert str(path) in str(caught.value)


@pytest.mark.parametrize("name", ["mkv", "webm", "avi", "mov"])
def test_other_truncated_containers_are_reported(tmp_path: Path, name: str) -> None:
    """Matroska opens fine when cut short and would silently lose its tail; AVI and MOV fail to
    open, and the reason must still say truncated rather than unreadable."""
    whole = write(tmp_path / f"whole.{CONTAINERS[name].extension}", CONTAINERS[name])
    data = whole.read_bytes()
    cut = tmp_path / f"cut.{CONTAINERS[name].extension}"
    cut.write_bytes(data[: int(len(data) * 0.9)])
    with pytest.raises(MediaError) as caught:
        media.probe(cut)
    assert caught.value.reason == "truncated"


def test_index_first_mp4_round_trips_and_its_cut_copy_is_reported(tmp_path: Path) -> None:
    """With the index up front a cut file still opens; the index then points past EOF."""
    rate = 16000
    path = tmp_path / "faststart.mp4"
    write_clip(path, moving_square(25), grid_times(25, FPS), chirp(rate, 1.0, 1), rate, CONTAINERS["mp4"], FPS,
               index_first=True)
    data = path.read_bytes()
    assert data.index(b"moov") < data.index(b"mdat")
    assert media.probe(path).frame_count == 25
    again = tmp_path / "again.mp4"
    write_clip(again, moving_square(25), grid_times(25, FPS), chirp(rate, 1.0, 1), rate, CONTAINERS["mp4"], FPS,
               index_first=True)
    assert digest(again) == digest(path)  # the faststart rewrite is deterministic too

    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.4)])
    with av.open(str(cut)):
        pass  # FFmpeg itself opens it without complaint
    for read in (media.probe, media.read_audio, lambda p: next(media.iter_frames(p))):
        with pytest.raises(MediaError) as caught:
            read(cut)
        assert caught.value.reason == "truncated"


def test_index_first_is_refused_where_it_means_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="index_first"):
        write_clip(tmp_path / "a.mkv", moving_square(3), grid_times(3, FPS), None, 0, CONTAINERS["mkv"], FPS,
                   index_first=True)
    assert list(tmp_path.iterdir()) == []


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MediaError) as caught:
        media.probe(tmp_path / "nope.mp4")
    assert caught.value.reason == "missing"


# ---------------------------------------------------------------------------------------------
# Metadata


@pytest.mark.parametrize(("matrix_ccw", "clockwise"), [(90, 270), (-90, 90), (180, 180)])
def test_rotation_from_display_matrix(tmp_path: Path, matrix_ccw: int, clockwise: int) -> None:
    path = tmp_path / "phone.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.set_display_rotation(matrix_ccw)
        for image in moving_square(5):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(stream.encode(None))
    info = media.probe(path)
    assert info.rotation == clockwise
    assert info.frame_count == 5  # reading the rotation must not eat frames


# ---------------------------------------------------------------------------------------------
# Writer guarantees


@pytest.mark.parametrize("name", sorted(CONTAINERS))
def test_writes_are_deterministic(tmp_path: Path, name: str) -> None:
    spec = CONTAINERS[name]
    audio = chirp(48000, 1.0, 2)
    first = write(tmp_path / f"one.{spec.extension}", spec, audio=audio, sample_rate=48000)
    second = write(tmp_path / f"two.{spec.extension}", spec, audio=audio, sample_rate=48000)
    assert digest(first) == digest(second)


def test_failure_midway_leaves_no_file(tmp_path: Path) -> None:
    def exploding_frames() -> Iterator[np.ndarray]:
        frames = moving_square(25)
        for _ in range(12):
            yield next(frames)
        raise RuntimeError("renderer crashed")

    target = tmp_path / "clip.mp4"
    with pytest.raises(RuntimeError, match="renderer crashed"):
        write_clip(target, exploding_frames(), grid_times(25, FPS), None, 0, CONTAINERS["mp4"], FPS)
    assert list(tmp_path.iterdir()) == []  # neither the clip nor its temporary file


def test_failure_keeps_previous_clip_intact(tmp_path: Path) -> None:
    target = write(tmp_path / "clip.mp4", CONTAINERS["mp4"])
    before = digest(target)
    with pytest.raises(ValueError):  # one frame short of the 25 times
        write_clip(target, moving_square(24), grid_times(25, FPS), None, 0, CONTAINERS["mp4"], FPS)
    assert digest(target) == before
    assert list(tmp_path.iterdir()) == [target]


def test_frames_are_consumed_lazily(tmp_path: Path) -> None:
    alive, peak = 0, 0

    def tracked_frames() -> Iterator[np.ndarray]:
        nonlocal alive, peak
        for frame in moving_square(60):
            alive += 1
            peak = max(peak, alive)
            weakref.finalize(frame, released)
            yield frame

    def released() -> None:
        nonlocal alive
        alive -= 1

    write_clip(tmp_path / "lazy.mp4", tracked_frames(), grid_times(60, FPS), None, 0, CONTAINERS["mp4"], FPS)
    assert peak <= 3  # the generator's own frame plus the one being encoded


@pytest.mark.parametrize("size", [(47, 64), (48, 63)])
def test_odd_frame_size_is_rejected(tmp_path: Path, size: tuple[int, int]) -> None:
    frames = [np.zeros((*size, 3), np.uint8)] * 3
    with pytest.raises(ValueError, match="even"):
        write_clip(tmp_path / "odd.mp4", frames, grid_times(3, FPS), None, 0, CONTAINERS["mp4"], FPS)
    assert list(tmp_path.iterdir()) == []
