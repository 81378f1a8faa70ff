"""Encoding a waveform into an audio stream of a container being written, through PyAV.

Shared by the synthetic clip writer and by `model.sync fix`, which re-encodes a video's audio shifted in time
(a lip-sync correction is rarely a whole number of the codec's frames) while the video packets are copied.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from fractions import Fraction

import av
import numpy as np

__all__ = ["add_audio_stream", "audio_frames", "encoder_priming", "sample_format"]

# Encoder sample formats in order of preference: float first (no quantisation), then integers.
SAMPLE_FORMAT_PREFERENCE = ("fltp", "flt", "s16p", "s16", "s32p", "s32")

# Encoders that accept any frame size report 0; feed them blocks of this many samples.
DEFAULT_AUDIO_BLOCK = 1024


def add_audio_stream(out: av.container.OutputContainer, codec: str, rate: int, channels: int) -> av.AudioStream:
    stream = out.add_stream(codec, rate=rate)
    stream.codec_context.format = sample_format(codec)
    stream.codec_context.layout = "mono" if channels == 1 else "stereo"
    stream.codec_context.time_base = Fraction(1, rate)
    stream.codec_context.thread_count = 1
    return stream


@functools.lru_cache(maxsize=None)
def encoder_priming(codec: str, rate: int, layout: str) -> int:
    """Samples of silence the encoder emits before the signal.

    PyAV does not expose AVCodecContext.initial_padding, but the encoder reports it as the
    negative pts of its first packet, so encode one silent frame with a throwaway context.
    """
    ctx = av.CodecContext.create(codec, "w")
    ctx.sample_rate, ctx.layout, ctx.format = rate, layout, sample_format(codec)
    ctx.time_base = Fraction(1, rate)
    ctx.open()
    samples = ctx.frame_size or DEFAULT_AUDIO_BLOCK
    silence = np.zeros((len(ctx.layout.channels), samples), dtype=np.float32)
    samples = to_sample_format(silence, ctx.format.name)
    frame = av.AudioFrame.from_ndarray(samples, format=ctx.format.name, layout=layout)
    frame.sample_rate, frame.pts, frame.time_base = rate, 0, Fraction(1, rate)
    packets = ctx.encode(frame) + ctx.encode(None)
    first = packets[0].pts if packets else None
    return max(0, -first) if first is not None else 0


def sample_format(codec: str) -> str:
    supported = {fmt.name for fmt in av.Codec(codec, "w").audio_formats or ()}
    for name in SAMPLE_FORMAT_PREFERENCE:
        if name in supported:
            return name
    raise ValueError(f"{codec} supports none of the sample formats {SAMPLE_FORMAT_PREFERENCE}")


def audio_frames(stream: av.AudioStream, audio: np.ndarray,
                 rate: int) -> Iterator[tuple[float, av.AudioStream, av.AudioFrame]]:
    """Cut the waveform [channels, samples] into encoder-sized frames (only the last may be short) with sample
    pts, as (time in seconds, stream, frame) so they merge by time with another stream's items."""
    ctx = stream.codec_context
    block = ctx.frame_size or DEFAULT_AUDIO_BLOCK
    layout = "mono" if audio.shape[0] == 1 else "stereo"
    for start in range(0, audio.shape[1], block):
        samples = to_sample_format(audio[:, start : start + block], ctx.format.name)
        frame = av.AudioFrame.from_ndarray(samples, format=ctx.format.name, layout=layout)
        frame.sample_rate, frame.pts, frame.time_base = rate, start, Fraction(1, rate)
        yield start / rate, stream, frame


def to_sample_format(block: np.ndarray, fmt: str) -> np.ndarray:
    """Convert float [channels, n] to the array layout PyAV expects for ``fmt``.

    Planar formats are [channels, n]; packed ones are a single interleaved row [1, channels*n].
    """
    base = fmt.rstrip("p")
    if base == "flt":
        data = block.astype(np.float32)
    elif base == "s16":
        data = np.round(block * 32767.0).astype(np.int16)
    elif base == "s32":
        data = np.round(block.astype(np.float64) * 2147483647.0).astype(np.int32)
    else:
        raise ValueError(f"unsupported sample format {fmt}")
    planar = fmt.endswith("p")
    return np.ascontiguousarray(data if planar else data.T.reshape(1, -1))
