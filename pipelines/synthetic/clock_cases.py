"""Files whose true audio and video start are known: the ways containers say when a stream begins.

Real files place their first audio sample with an mp4/mov edit list (which also hides the AAC encoder's 1024 or
2112 priming samples), Matroska's CodecDelay (Opus's 312 samples, AAC's 1024), an audio stream that starts late,
or a video stream that does. A decoder that ignores one of them hands the expert audio tens of milliseconds off
its picture, which reads as a lip-sync error of the file. Each case here copies a clip's video packets (shifted
or not) and encodes a waveform we hold with one of those devices, so where waveform sample 0 lands after decoding
can be checked against where it belongs, with no sync expert involved.

The GRID corpus's MPEG-PS files have one more trap: their first two video packets both carry dts 0, and a seek
back to the start resumes at the second. `MPEG_PS_CASE` writes that timestamp pattern.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from pipelines.audio_encoding import add_audio_stream, audio_frames, encoder_priming
from pipelines.core.storage import atomic_local_path
from pipelines.media import iter_frames, probe
from pipelines.remux import MUXERS, mux_in_time_order

__all__ = ["CLOCK_CASES", "ClockCase", "MPEG_PS_CASE", "mpeg1_rate", "write_case"]

# mp4/mov store an empty edit (a late start) in the movie's timescale, which FFmpeg writes as 1/1000 s.
MOVIE_TICK_S = 1e-3


@dataclass(frozen=True)
class ClockCase:
    """One way of placing streams in time, and where the signal must play because of it."""

    name: str
    extension: str  # picks the muxer, as pipelines.remux does
    audio_codec: str  # FFmpeg encoder
    device: str  # what the container does, for tables
    audio_delay_s: float = 0.0  # waveform sample 0 plays here; negative: an edit list cuts that much of its start
    video_delay_s: float = 0.0  # the video's first frame shows this much later than in the source
    tolerance_s: float = 0.0  # what the container can store exactly (beyond one sample)
    audio_rate: int | None = None  # the encoder's only rate, where it has one; else the waveform's


CLOCK_CASES: tuple[ClockCase, ...] = (
    ClockCase("mp4_aac_priming", "mp4", "aac", "AAC priming (1024 samples) hidden by the edit list's media_time"),
    ClockCase("mp4_aac_late_audio", "mp4", "aac", "audio starts 120 ms late: an empty edit, then the priming cut",
              audio_delay_s=0.12, tolerance_s=MOVIE_TICK_S),
    ClockCase("mp4_aac_trimmed_start", "mp4", "aac", "the edit list cuts the first 100 ms of the audio (and the priming)",
              audio_delay_s=-0.1),
    ClockCase("mp4_video_late", "mp4", "aac", "video starts 200 ms late: an empty edit in the video track",
              video_delay_s=0.2, tolerance_s=MOVIE_TICK_S),
    ClockCase("mov_aac_late_audio", "mov", "aac", "QuickTime: AAC priming and a 120 ms late start in one edit list",
              audio_delay_s=0.12, tolerance_s=MOVIE_TICK_S),
    ClockCase("mov_pcm_late_audio", "mov", "pcm_s16le", "QuickTime PCM (no priming) starting 80 ms late",
              audio_delay_s=0.08, tolerance_s=MOVIE_TICK_S),
    ClockCase("mkv_aac_codec_delay", "mkv", "aac", "Matroska CodecDelay for AAC's priming, first block at -21 ms"),
    ClockCase("mkv_opus_codec_delay", "mkv", "libopus", "Matroska CodecDelay for Opus's 312-sample pre-skip",
              audio_rate=48000),
    ClockCase("mkv_flac_late_audio", "mkv", "flac", "Matroska audio whose first block is at +100 ms",
              audio_delay_s=0.1),
    ClockCase("mkv_aac_video_late", "mkv", "aac", "Matroska video whose first block is at +200 ms",
              video_delay_s=0.2),
)

# FFmpeg's MP2 encoder primes 481 samples (512 - 32 + 1, its filterbank) and MPEG-PS has no field to skip them.
# Starting the waveform that much late puts the first audio packet at pts 0 beside the first picture, as in GRID.
MP2_PRIMING = 481
MPEG_PS_CASE = ClockCase("mpeg_ps_two_dts_zero", "mpg", "mp2", "MPEG-PS as GRID's: two video packets at dts 0, "
                         "MP2 priming unmarked", audio_delay_s=MP2_PRIMING / 44100, audio_rate=44100)


def write_case(case: ClockCase, video_source: str | Path, audio: np.ndarray, rate: int, target: str | Path) -> None:
    """Write `target`: `video_source`'s video and `audio` (float32 [channels, N] at `rate`, sample 0 meant to play
    with the source's first frame) placed in time as `case` says. Atomic; no shell. For `MPEG_PS_CASE` the video is
    re-encoded (MPEG-PS carries MPEG-1/2 video); otherwise its packets are copied."""
    if case.audio_rate and case.audio_rate != rate:
        raise ValueError(f"{case.name}: {case.audio_codec} is written at {case.audio_rate} Hz here, got {rate} Hz audio")
    with atomic_local_path(target) as partial:
        if case is MPEG_PS_CASE:
            _write_mpeg_ps(Path(video_source), audio, rate, partial)
        else:
            _write_remuxed(case, Path(video_source), audio, rate, partial)


def _write_remuxed(case: ClockCase, video_source: Path, audio: np.ndarray, rate: int, target: Path) -> None:
    with av.open(str(video_source)) as inp, av.open(str(target), "w", format=MUXERS[case.extension]) as out:
        video_in = inp.streams.video[0]
        video_out = out.add_stream_from_template(video_in)
        sound = add_audio_stream(out, case.audio_codec, rate, audio.shape[0])
        out.start_encoding()
        video_shift = round(case.video_delay_s / video_in.time_base)
        audio_shift = round(case.audio_delay_s * rate)
        mux_in_time_order(out, video_in, video_out, sound, _shifted_packets(inp, video_in, video_shift),
                          _shifted_frames(audio_frames(sound, audio, rate), audio_shift, rate))


def _shifted_packets(inp, stream, shift: int):
    for packet in inp.demux(stream):
        if packet.dts is None:  # the demuxer's end-of-stream marker
            continue
        packet.pts += shift
        packet.dts += shift
        yield float(packet.dts * packet.time_base), stream, packet


def _shifted_frames(frames, shift: int, rate: int):
    for time_s, stream, frame in frames:
        frame.pts += shift
        yield time_s + shift / rate, stream, frame


# The only frame rates MPEG-1 video can code.
MPEG1_RATES = (Fraction(24000, 1001), Fraction(24), Fraction(25), Fraction(30000, 1001), Fraction(30), Fraction(50),
               Fraction(60000, 1001), Fraction(60))


def mpeg1_rate(fps: float) -> Fraction:
    """The MPEG-1 frame rate `fps` is (within 0.01 %), or a ValueError naming the ones there are."""
    for rate in MPEG1_RATES:
        if abs(fps - float(rate)) <= 1e-4 * float(rate):
            return rate
    raise ValueError(f"MPEG-1 video codes {', '.join(f'{float(r):.3f}' for r in MPEG1_RATES)} fps, not {fps:.3f}")


def _write_mpeg_ps(video_source: Path, audio: np.ndarray, rate: int, target: Path) -> None:
    """MPEG-1 video and MP2 audio in a program stream, the video timestamped as GRID's files are: the first
    picture at pts = dts = 0, every later one decoded a frame before it shows (so the second is also at dts 0)."""
    info = probe(video_source)
    fps = mpeg1_rate(info.fps)
    even = (info.height - info.height % 2, info.width - info.width % 2)
    with av.open(str(target), "w", format="mpeg", container_options={"preload": "0"}) as out:
        video = out.add_stream("mpeg1video", rate=fps)
        video.height, video.width = even
        video.pix_fmt = "yuv420p"
        video.codec_context.time_base = 1 / fps
        video.codec_context.max_b_frames = 0
        sound = add_audio_stream(out, "mp2", rate, audio.shape[0])
        out.start_encoding()
        priming = encoder_priming("mp2", rate, sound.codec_context.layout.name)
        if priming != MP2_PRIMING:
            raise ValueError(f"this FFmpeg's MP2 encoder primes {priming} samples, MPEG_PS_CASE expects {MP2_PRIMING}")
        packets = []
        for index, (_, image) in enumerate(iter_frames(video_source)):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image[:even[0], :even[1]]), format="rgb24")
            frame.pts, frame.time_base = index, 1 / fps
            packets += video.encode(frame)
        packets += video.encode(None)
        for index, packet in enumerate(packets):
            packet.pts, packet.dts = index, max(index - 1, 0)
        pictures = ((float(p.dts / fps), video, p) for p in packets)
        sound_frames = _shifted_frames(audio_frames(sound, audio, rate), priming, rate)
        mux_in_time_order(out, video, video, sound, pictures, sound_frames)
