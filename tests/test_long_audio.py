"""Long inputs: audio is decoded, aligned, resampled and cut into chunks as a stream, and gives the very samples the
whole-file path gives (read the whole track, `prepare` it, slice each chunk's span), at any block size, at 44.1
and 48 kHz, and when the audio ends before or after the picture."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from pipelines import audio as audio_module
from pipelines import media
from pipelines.audio import AudioConfig, prepare, prepare_stream
from pipelines.core.clock import EXPERT_CLOCK
from pipelines.decode import (CONTEXT_FRAMES, AudioSpans, DecodeConfig, decode_chunks, fit_within, output_picks,
                              upright)
from pipelines.media import iter_frames, probe, read_audio
from pipelines.samples import SampleConfig, SampleStage
from pipelines.synthetic.container import CONTAINERS, write_clip

CONFIG = AudioConfig()
SAMPLES_PER_FRAME = EXPERT_CLOCK.samples_per_frame


def split(array: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    """`array` ([C, N]) cut into consecutive blocks of the given sizes, cycling, the last one what is left."""
    blocks, start, turn = [], 0, 0
    while start < array.shape[-1]:
        size = sizes[turn % len(sizes)]
        blocks.append(array[..., start:start + size])
        start, turn = start + size, turn + 1
    return blocks


ODD_BLOCKS = [1, 7, 1023, 4097, 0, 333]


@pytest.mark.parametrize("rate", [8000, 16000, 22050, 44100, 48000])
@pytest.mark.parametrize("channels", [1, 2])
def test_streamed_resampling_equals_the_whole_track(rate, channels):
    rng = np.random.default_rng(rate + channels)
    track = (0.3 * rng.standard_normal((channels, 3 * rate + 101))).astype(np.float32)
    whole = prepare(track, rate, CONFIG)
    for sizes in (ODD_BLOCKS, [1024], [track.shape[1]]):
        streamed = np.concatenate(list(prepare_stream(split(track, sizes), rate, CONFIG)))
        assert streamed.dtype == np.float32
        assert np.array_equal(streamed, whole), (rate, channels, sizes)  # bit for bit, not within a tolerance


def test_streamed_resampling_refuses_non_finite_audio():
    track = np.zeros((1, 48_000), np.float32)
    track[0, 30_000] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        list(prepare_stream(split(track, [1024]), 48_000, CONFIG))


@pytest.mark.parametrize("start", [0, 5, 1500, 70_000, -1, -2000, -10**6])
@pytest.mark.parametrize("end", [None, 1, 2999, 10**7])
def test_alignment_and_trim_stream_as_on_the_whole_array(start, end):
    """What read_audio did to the whole decoded track (pad a late start, cut an early one, cut past the declared
    end), done block by block."""
    track = np.arange(2 * 6001, dtype=np.float32).reshape(2, 6001)
    aligned = np.pad(track, ((0, 0), (start, 0))) if start > 0 else track[:, -start:]
    expected = aligned if end is None else aligned[:, :end]
    blocks = media._trim_to_declared_end(media._align_to_zero(iter(split(track, ODD_BLOCKS)), start), end)
    assert np.array_equal(np.concatenate(list(blocks), axis=1), expected)


def test_audio_spans_read_only_as_far_as_asked_and_let_go():
    pieces = split(np.arange(10_000, dtype=np.float32), [37, 1, 640, 999])
    pulled = []

    def stream():
        for piece in pieces:
            pulled.append(len(piece))
            yield piece

    spans = AudioSpans(stream())
    whole = np.concatenate(pieces)
    first = spans.span(-300, 700)
    assert np.array_equal(first[:300], np.zeros(300)) and np.array_equal(first[300:], whole[:700])
    assert sum(pulled) < 700 + 999  # no further than the piece that reaches sample 700
    assert np.array_equal(spans.span(500, 2500), whole[500:2500])
    tail = spans.span(9_000, 11_000)
    assert np.array_equal(tail[:1000], whole[9000:]) and not tail[1000:].any()  # past the end: silence
    with pytest.raises(ValueError, match="let go"):
        spans.span(100, 12_000)


# --- decoding a file, streamed against the whole-file path ---------------------------------------------------


def write_test_clip(path: Path, rate: int, channels: int, video_s: float, audio_s: float) -> Path:
    """Distinct 64 px frames at 25 fps over `video_s`, a chirp with noise of `audio_s` at `rate`."""
    rng = np.random.default_rng(rate)
    count = round(video_s * 25)
    frames = [np.full((64, 64, 3), (7 * k) % 256, np.uint8) for k in range(count)]
    for k, frame in enumerate(frames):
        frame[k % 64, :, 1] = 255  # a moving line: every frame differs
    t = np.arange(round(audio_s * rate)) / rate
    mono = 0.4 * np.sin(2 * np.pi * (200 + 300 * t) * t) + 0.05 * rng.standard_normal(len(t))
    track = np.stack([mono, 0.5 * mono][:channels]).astype(np.float32)
    write_clip(path, frames, [k / 25 for k in range(count)], track, rate, CONTAINERS[path.suffix[1:]], Fraction(25))
    return path


def whole_file_chunks(path: Path, config: DecodeConfig) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """(start frame, frames, audio) of each chunk the way decoding worked before it streamed: the whole track read
    and prepared at once, the picked frames all decoded, each chunk's audio span sliced out of the whole."""
    info = probe(path)
    audio = prepare(*read_audio(path), CONFIG)
    picks = output_picks(info, len(audio) / CONFIG.clock.sample_rate, CONFIG.clock.fps)
    images = [fit_within(upright(image, info.rotation), config.max_side) for _, image in iter_frames(path)]
    chunk_frames = int(config.chunk_seconds * CONFIG.clock.fps)
    chunks = []
    for start in range(0, len(picks), chunk_frames):
        frames = np.stack([images[i] for i in picks[start:start + chunk_frames]])
        begin = (start - CONTEXT_FRAMES) * SAMPLES_PER_FRAME
        end = (start + len(frames) + CONTEXT_FRAMES) * SAMPLES_PER_FRAME
        span = np.zeros(end - begin, np.float32)
        lo, hi = max(begin, 0), min(end, len(audio))
        span[lo - begin:hi - begin] = audio[lo:hi]
        chunks.append((start, frames, span))
    return chunks


CLIPS = {  # name: (rate, channels, video seconds, audio seconds)
    "aac_44k1_stereo.mp4": (44_100, 2, 3.0, 3.0),
    "aac_48k_mono.mp4": (48_000, 1, 2.48, 2.48),
    "pcm_44k1_audio_shorter.mov": (44_100, 2, 3.0, 1.913),
    "flac_48k_audio_longer.mkv": (48_000, 2, 2.0, 3.37),
    "aac_22k05_audio_shorter.mp4": (22_050, 1, 2.6, 2.05),
}


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("long_audio")
    return {name: write_test_clip(folder / name, *spec) for name, spec in CLIPS.items()}


@pytest.mark.parametrize("name", CLIPS)
@pytest.mark.parametrize("chunk_seconds, piece_s", [(0.52, 0.0123), (1.0, 1.0), (10.0, 0.3)])
def test_streamed_chunks_equal_the_whole_file_path(name, chunk_seconds, piece_s, clips, monkeypatch):
    """Frames, audio and mels of every chunk, and the chunk and frame counts, exactly as before. Chunks of 13 and
    25 frames (8,320 and 16,000 samples at 16 kHz) against resampler pieces of 0.0123 s (542 samples at 44.1 kHz,
    590 at 48 kHz) and more: the two streams' boundaries fall anywhere relative to each other."""
    monkeypatch.setattr(audio_module, "_STREAM_PIECE_S", piece_s)
    path = clips[name]
    config = DecodeConfig(chunk_seconds=chunk_seconds)
    expected = whole_file_chunks(path, config)
    streamed = list(decode_chunks(path, probe(path), config, CONFIG))
    assert [c.start_frame for c in streamed] == [start for start, _, _ in expected]
    assert [c.index for c in streamed] == list(range(len(expected)))
    samples = SampleStage(CONFIG, SampleConfig())
    for chunk, (_, frames, audio) in zip(streamed, expected):
        assert np.array_equal(chunk.frames, frames)
        assert chunk.audio.dtype == np.float32 and np.array_equal(chunk.audio, audio)
        length = len(frames)
        mel = samples.segment_mel(chunk.audio, CONTEXT_FRAMES, CONTEXT_FRAMES + length)
        assert mel.shape == (CONFIG.n_mels, EXPERT_CLOCK.mel_column(length))
        assert np.array_equal(mel, samples.segment_mel(audio, CONTEXT_FRAMES, CONTEXT_FRAMES + length))


def test_audio_shorter_than_the_picture_ends_the_output_with_the_audio(clips):
    """1.913 s of sound under 3 s of picture: 47 frames (to the audio's end, rounded down to a whole frame), and
    the last chunk's span past the audio's end is silence."""
    path = clips["pcm_44k1_audio_shorter.mov"]
    chunks = list(decode_chunks(path, probe(path), DecodeConfig(chunk_seconds=1.0), CONFIG))
    assert sum(len(c.frames) for c in chunks) == int(1.913 * 25)
    audio_end = round(1.913 * 44_100) * 16_000 // 44_100  # within a sample of the resampled length
    last = chunks[-1]
    end_in_span = audio_end - (last.start_frame - CONTEXT_FRAMES) * SAMPLES_PER_FRAME
    assert last.audio[:end_in_span - 50].any() and not last.audio[end_in_span + 2:].any()


def test_audio_longer_than_the_picture_stops_at_the_picture(clips):
    """3.37 s of sound under 2 s of picture: 50 frames plus the one frame of grace past the picture's end, and every
    chunk's context span is audio, not silence, since the sound goes on."""
    path = clips["flac_48k_audio_longer.mkv"]
    chunks = list(decode_chunks(path, probe(path), DecodeConfig(chunk_seconds=1.0), CONFIG))
    assert sum(len(c.frames) for c in chunks) == 51
    assert np.abs(chunks[-1].audio[-CONTEXT_FRAMES * SAMPLES_PER_FRAME:]).max() > 0.1
