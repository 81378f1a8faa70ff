"""Move a video's audio in time: the video packets are copied as they are, the audio is re-encoded shifted.

This is what correcting lip-sync needs: a shift of 40 ms is rarely a whole number of the audio codec's frames
(1024 samples of AAC), so moving packets cannot be exact; re-encoding the audio is sample-exact and cheap,
while the video (the expensive, lossy part) is never touched. Written atomically, never through a shell.
"""

from __future__ import annotations

import heapq
from pathlib import Path

import av
import numpy as np

from pipelines.audio_encoding import add_audio_stream, audio_frames, encoder_priming
from pipelines.core.storage import atomic_local_path
from pipelines.media import read_audio

# FFmpeg's decoder (format) name -> an encoder of the same format, so the fixed file keeps its audio codec.
SAME_CODEC_ENCODERS = {"aac": "aac", "flac": "flac", "pcm_s16le": "pcm_s16le", "mp3": "libmp3lame",
                       "opus": "libopus", "vorbis": "libvorbis", "alac": "alac"}
# Where the source codec has no encoder here, one every player of that container reads.
CONTAINER_ENCODERS = {"mp4": "aac", "mov": "aac", "m4v": "aac", "mkv": "flac", "webm": "libopus",
                      "avi": "libmp3lame"}
MUXERS = {"mp4": "mp4", "m4v": "mp4", "mkv": "matroska", "mov": "mov", "avi": "avi", "webm": "webm"}
# AVI has no timestamps to shift a leading negative pts with, and no field for the encoder's priming.
NO_PRIMING_SIGNAL = {"avi"}
MUXER_OPTIONS = {"avi": {"avoid_negative_ts": "disabled"}}


def shifted(samples: np.ndarray, shift: int) -> np.ndarray:
    """[channels, N] moved `shift` samples later (earlier if negative), same length: silence fills the gap
    and what moves past either end is cut."""
    moved = np.zeros_like(samples)
    length = samples.shape[1]
    if abs(shift) >= length:
        return moved
    if shift >= 0:
        moved[:, shift:] = samples[:, :length - shift]
    else:
        moved[:, :length + shift] = samples[:, -shift:]
    return moved


def shift_audio(source: str | Path, target: str | Path, delay_s: float) -> None:
    """Write `target` with `source`'s video packets unchanged and its audio played `delay_s` seconds later
    (negative: earlier). The container follows `target`'s extension; the audio keeps its codec, rate and
    (up to stereo) channels where an encoder exists. Raises MediaError for unreadable input or no audio."""
    source, target = Path(source), Path(target)
    samples, rate = read_audio(source)
    if samples.shape[0] > 2:  # the encoders are set up for mono or stereo: keep the front pair
        samples = samples[:2]
    moved = shifted(samples, round(delay_s * rate))
    extension = target.suffix.lstrip(".").lower()
    with av.open(str(source)) as inp, atomic_local_path(target) as partial:
        muxer = MUXERS.get(extension) or inp.format.name.split(",")[0]
        encoder = _encoder(inp.streams.audio[0].codec_context.name, extension, rate)
        with av.open(str(partial), "w", format=muxer, container_options=MUXER_OPTIONS.get(extension, {})) as out:
            _remux(inp, out, moved, rate, encoder, extension in NO_PRIMING_SIGNAL)


def _encoder(decoder: str, extension: str, rate: int) -> str:
    encoder = SAME_CODEC_ENCODERS.get(decoder) or CONTAINER_ENCODERS.get(extension, "aac")
    if not _available(encoder) or not _accepts(encoder, rate):
        encoder = "flac" if extension in ("mkv",) else "aac"
    if not _accepts(encoder, rate):
        raise ValueError(f"no audio encoder here takes {rate} Hz for a .{extension} file; write .mkv instead")
    return encoder


def _available(encoder: str) -> bool:
    try:
        av.Codec(encoder, "w")
    except (av.codec.codec.UnknownCodecError, ValueError):
        return False
    return True


def _accepts(encoder: str, rate: int) -> bool:
    rates = av.Codec(encoder, "w").audio_rates
    return not rates or rate in rates


def _remux(inp, out, audio: np.ndarray, rate: int, encoder: str, pre_advance_priming: bool) -> None:
    video_in = inp.streams.video[0]
    video_out = out.add_stream_from_template(video_in)
    sound = add_audio_stream(out, encoder, rate, audio.shape[0])
    out.start_encoding()
    if pre_advance_priming:
        audio = audio[:, encoder_priming(encoder, rate, sound.codec_context.layout.name):]
    mux_in_time_order(out, video_in, video_out, sound, _video_packets(inp, video_in), audio_frames(sound, audio, rate))


def mux_in_time_order(out, video_in, video_out, sound, video_items, audio_items) -> None:
    """Mux (time, stream, item) entries of both streams interleaved by time, so that neither is buffered whole by
    the muxer: video packets copied from `video_in` to `video_out`, audio frames encoded by `sound` (then flushed)."""
    for _, stream, item in heapq.merge(video_items, audio_items, key=lambda entry: entry[0]):
        if stream is video_in:
            item.stream = video_out
            out.mux(item)
        else:
            out.mux(stream.encode(item))
    out.mux(sound.encode(None))


def _video_packets(inp, stream):
    for packet in inp.demux(stream):
        if packet.dts is None:  # the demuxer's end-of-stream marker, not data
            continue
        yield float(packet.dts * packet.time_base), stream, packet
