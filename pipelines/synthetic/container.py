"""Write synthetic talking-face clips in the containers, codecs and rates that real corpora use.

The corpus must look like what the preprocessing stage will meet in the wild: H.264/AAC mp4,
Matroska, QuickTime, MPEG-4 Part 2 AVI and VP9/Opus WebM, at NTSC (24000/1001, 30000/1001) and
integer frame rates, constant or variable, with audio from 8 kHz telephone quality to 48 kHz.

Everything goes through PyAV (no ffmpeg binary, no subprocess). Files are written atomically
(temporary name + ``os.replace``) and byte-for-byte deterministically, so a corpus can be rebuilt
and diffed, and a crashed generator never leaves a half-written clip under its final name.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from pipelines.audio_encoding import add_audio_stream, audio_frames, encoder_priming
from pipelines.core.storage import atomic_local_path

__all__ = ["CONTAINERS", "ContainerSpec", "write_clip"]


@dataclass(frozen=True)
class ContainerSpec:
    """A container/codec combination to write clips in."""

    extension: str  # "mp4", "mkv", "mov", "avi", "webm"
    video_codec: str  # FFmpeg encoder name, e.g. "libx264", "mpeg4", "libvpx-vp9"
    audio_codec: str  # FFmpeg encoder name, e.g. "aac", "libopus", "pcm_s16le"
    audio_rates: tuple[int, ...] | None = None  # rates the audio codec accepts; None = any


# The rate lists are the encoders' own (``av.Codec(name, "w").audio_rates``), spelled out so a bad
# rate fails with a clear ValueError before any file is opened instead of deep inside FFmpeg.
AAC_RATES = (7350, 8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000)
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
MP3_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)

CONTAINERS: dict[str, ContainerSpec] = {
    "mp4": ContainerSpec("mp4", "libx264", "aac", AAC_RATES),  # the web/LRS-style default
    "mkv": ContainerSpec("mkv", "libx264", "flac"),  # archival rips: lossless audio, any rate
    "mov": ContainerSpec("mov", "libx264", "pcm_s16le"),  # camera/phone footage: raw PCM
    "avi": ContainerSpec("avi", "mpeg4", "libmp3lame", MP3_RATES),  # old Xvid/MP3 material
    "webm": ContainerSpec("webm", "libvpx-vp9", "libopus", OPUS_RATES),  # YouTube downloads
}

# FFmpeg muxer names; passed explicitly so the temporary file name cannot pick the wrong muxer.
_MUXERS = {"mp4": "mp4", "mkv": "matroska", "mov": "mov", "avi": "avi", "webm": "webm"}

# Muxer options. AVI has no timestamps, only one chunk per frame period, so FFmpeg's default
# shift that makes the MP3 priming (negative pts) non-negative turns into an empty video chunk,
# i.e. a duplicated first frame and every later frame one period late. Leave the audio negative.
_MUXER_OPTIONS = {"avi": {"avoid_negative_ts": "disabled"}}

# Containers with no way to say "skip the encoder's priming samples" (mp4 has edit lists, Matroska
# CodecDelay; AVI has nothing). Their decoded audio would start late by the priming (1105 samples
# for LAME: 23 ms at 48 kHz, 138 ms at 8 kHz), which is a lip-sync error baked into the corpus.
_NO_PRIMING_SIGNAL = {"avi"}

# Ticks per second used for variable-frame-rate clips. MP4/MOV can store any timescale, so use the
# MPEG 90 kHz clock; Matroska/WebM store milliseconds, so anything finer would just be rounded.
# AVI has no per-frame timestamps at all, so it cannot carry VFR.
_VFR_TICKS = {"mp4": 90_000, "mov": 90_000, "mkv": 1_000, "webm": 1_000}

# A frame time counts as "on the k/fps grid" within this many frame periods. Callers compute
# k/fps in floating point, so the error is ~1e-12; anything bigger is a deliberate irregularity.
_CFR_TOLERANCE_FRAMES = 1e-4


def write_clip(
    path: Path,
    frames: Iterable[np.ndarray],
    frame_times_s: Sequence[float],
    audio: np.ndarray | None,
    sample_rate: int,
    spec: ContainerSpec,
    fps: Fraction,
    quality: int = 23,
    index_first: bool = False,
) -> None:
    """Encode ``frames`` (and ``audio``) into ``path`` atomically and deterministically.

    Args:
        path: final file name; its extension should match ``spec.extension``.
        frames: RGB uint8 HxWx3 arrays, one per entry of ``frame_times_s``; consumed lazily.
        frame_times_s: increasing presentation times. Times on the k/fps grid give a constant
            frame rate stream of exactly ``fps``; anything else gives variable frame rate.
        audio: float32 [channels, samples] in [-1, 1] (mono or stereo), or None for no audio.
        sample_rate: audio sample rate in Hz (ignored when ``audio`` is None).
        spec: container and codecs to use.
        fps: nominal frame rate as an exact fraction, e.g. ``Fraction(30000, 1001)``.
        quality: x264-style CRF (0-51, lower is better); mapped onto the other video codecs.
        index_first: mp4/mov only: move the sample index ('moov') to the front ("faststart"),
            as streaming sites serve files; a cut-off copy of such a file still opens.

    Raises:
        ValueError: bad frames/times/audio, a sample rate the audio codec does not accept, or
            timing the container cannot store (AVI: only k/fps from 0). Nothing is written then,
            and no file ever appears at ``path`` unless the whole clip was written.
    """
    path = Path(path)
    fps = Fraction(fps)
    options = _muxer_options(spec, index_first)
    time_base, pts = _video_timing(np.asarray(frame_times_s, dtype=np.float64), fps, spec)
    if audio is not None:
        audio = _checked_audio(audio, sample_rate, spec)

    images = iter(frames)
    first = next(images, None)
    if first is None:
        raise ValueError("write_clip needs at least one frame")
    height, width = _frame_size(first)

    with atomic_local_path(path) as tmp:
        images = itertools.chain([first], images)
        _encode(tmp, images, (height, width), time_base, pts, fps, audio, sample_rate, spec, quality, options)


def _encode(
    target: Path,
    images: Iterable[np.ndarray],
    size: tuple[int, int],
    time_base: Fraction,
    pts: np.ndarray,
    fps: Fraction,
    audio: np.ndarray | None,
    sample_rate: int,
    spec: ContainerSpec,
    quality: int,
    muxer_options: dict[str, str],
) -> None:
    """Encode and mux everything into ``target``; the caller owns atomicity and cleanup."""
    muxer = _MUXERS.get(spec.extension, spec.extension)
    with av.open(str(target), "w", format=muxer, container_options=muxer_options) as out:
        # Bitexact keeps Matroska from writing random segment/track UIDs and drops the
        # library-version tags, so identical inputs give identical bytes.
        out.flags |= av.container.Flags.bitexact.value
        video = _add_video_stream(out, spec, fps, time_base, size, quality)
        sound = None if audio is None else add_audio_stream(out, spec.audio_codec, sample_rate, audio.shape[0])
        out.start_encoding()  # opens the encoders, which is when the audio frame_size is known

        items = [_video_items(video, images, pts, time_base, fps, size)]
        if sound is not None:
            if spec.extension in _NO_PRIMING_SIGNAL:
                # Pre-advance the audio by the priming so decoded sample i plays at i / rate.
                priming = encoder_priming(spec.audio_codec, sample_rate, sound.codec_context.layout.name)
                audio = audio[:, priming:]
            items.append(audio_frames(sound, audio, sample_rate))
        # Interleave by time so the muxer never has to buffer a whole stream in memory.
        for _, stream, frame in heapq.merge(*items, key=lambda item: item[0]):
            out.mux(stream.encode(frame))
        for stream in out.streams:
            out.mux(stream.encode(None))  # flush delayed frames (B-frames, lookahead, AAC)


def _muxer_options(spec: ContainerSpec, index_first: bool) -> dict[str, str]:
    options = dict(_MUXER_OPTIONS.get(spec.extension, {}))
    if index_first:
        if spec.extension not in ("mp4", "mov"):
            raise ValueError(f"index_first is only supported for mp4/mov, not {spec.extension}")
        options["movflags"] = "+faststart"  # a second pass at the end rewrites the file index-first
    return options


def _video_timing(times: np.ndarray, fps: Fraction, spec: ContainerSpec) -> tuple[Fraction, np.ndarray]:
    """Choose the encoder time base and integer pts for every frame.

    Frames on the k/fps grid use time base 1/fps (pts = k), which makes the muxer store a true
    constant rate that reads back as exactly ``fps``. Otherwise a fine clock is used and each
    frame's pts is its own time, which is what makes the file variable frame rate.
    """
    if times.ndim != 1 or times.size == 0:
        raise ValueError("frame_times_s must be a non-empty sequence of times")
    if not np.all(np.isfinite(times)) or times[0] < 0 or np.any(np.diff(times) <= 0):
        raise ValueError("frame_times_s must be finite, non-negative and strictly increasing")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")

    grid = times * float(fps)
    ticks = np.round(grid)
    constant = bool(np.all(np.abs(grid - ticks) < _CFR_TOLERANCE_FRAMES) and np.all(np.diff(ticks) == 1))
    if spec.extension not in _VFR_TICKS and not (constant and ticks[0] == 0):
        # AVI has no timestamps: frame k of the file simply plays at k/fps.
        raise ValueError(f"{spec.extension} stores no timestamps; frame times must be k/fps from 0")
    if constant:
        return 1 / fps, ticks.astype(np.int64)

    rate = _VFR_TICKS[spec.extension]
    pts = np.round(times * rate).astype(np.int64)
    if np.any(np.diff(pts) <= 0):
        raise ValueError(f"frame times closer than one {spec.extension} tick (1/{rate} s)")
    return Fraction(1, rate), pts


def _checked_audio(audio: np.ndarray, sample_rate: int, spec: ContainerSpec) -> np.ndarray:
    """Validate the waveform and the rate against the codec before any file is touched."""
    if spec.audio_rates is not None and sample_rate not in spec.audio_rates:
        allowed = ", ".join(str(rate) for rate in spec.audio_rates)
        raise ValueError(f"{spec.audio_codec} does not accept {sample_rate} Hz; allowed rates: {allowed}")
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    audio = np.asarray(audio)
    if audio.ndim != 2 or audio.shape[0] not in (1, 2) or audio.shape[1] == 0:
        raise ValueError(f"audio must be [channels, samples] with 1 or 2 channels, got {audio.shape}")
    return np.clip(audio.astype(np.float32, copy=False), -1.0, 1.0)


def _frame_size(image: np.ndarray) -> tuple[int, int]:
    """(height, width) of a valid first frame; yuv420p halves chroma, so both must be even."""
    _check_image(image)
    height, width = image.shape[:2]
    if height % 2 or width % 2:
        raise ValueError(f"frame size must be even for yuv420p, got {width}x{height}")
    return height, width


def _check_image(image: np.ndarray, size: tuple[int, int] | None = None) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError("frames must be RGB uint8 arrays of shape HxWx3")
    if size is not None and image.shape[:2] != size:
        raise ValueError(f"frame size changed mid-clip: {image.shape[:2]} != {size}")


def _add_video_stream(
    out: av.container.OutputContainer,
    spec: ContainerSpec,
    fps: Fraction,
    time_base: Fraction,
    size: tuple[int, int],
    quality: int,
) -> av.VideoStream:
    variable = time_base != 1 / fps
    options = _video_options(spec.video_codec, quality, variable)
    stream = out.add_stream(spec.video_codec, rate=fps, options=options)
    stream.height, stream.width = size
    stream.pix_fmt = "yuv420p"
    stream.codec_context.time_base = time_base
    stream.time_base = time_base  # a hint only: each muxer rounds it to what it can store
    stream.codec_context.thread_count = 1  # multi-threaded encoders are not bit-reproducible
    if spec.video_codec == "mpeg4":
        # MPEG-4 Part 2 has no CRF; fixed quantiser (the -q:v knob) is its constant-quality mode.
        stream.codec_context.qscale = True
        stream.codec_context.global_quality = _mpeg4_quantiser(quality)  # PyAV scales to lambda
    return stream


def _video_options(codec: str, quality: int, variable: bool) -> dict[str, str]:
    """Fast, constant-quality settings per encoder; speed matters more than size for a corpus."""
    if codec == "libx264":
        # mbtree off: with it, this libx264 build reads uninitialised heap memory (output changed
        # with MALLOC_PERTURB_ and with whatever the audio encoder had freed), so identical inputs
        # gave different bytes. Costs a little compression; the corpus needs reproducibility.
        options = {"preset": "veryfast", "crf": str(quality), "x264-params": "mbtree=0"}
        if variable:
            # The mp4 muxer sizes the edit list from decode-time deltas. With B-frames and
            # irregular frame times those no longer sum to the presentation span, and the clip
            # would claim to end before its last frame. Without B-frames dts == pts.
            options["bf"] = "0"
        return options
    if codec == "libvpx-vp9":
        # Realtime deadline + cpu-used 8 is ~50x faster than the default "good" mode.
        # b=0 makes crf a pure constant-quality target instead of a cap.
        crf = round(quality * 63 / 51)
        return {"crf": str(crf), "b": "0", "deadline": "realtime", "cpu-used": "8", "row-mt": "0"}
    return {}


def _mpeg4_quantiser(quality: int) -> int:
    """Map x264 CRF to an MPEG-4 quantiser (2 best .. 31 worst); CRF 23 ~ q 4, typical Xvid."""
    return int(np.clip(round(quality / 6), 2, 31))


def _video_items(
    stream: av.VideoStream,
    images: Iterable[np.ndarray],
    pts: np.ndarray,
    time_base: Fraction,
    fps: Fraction,
    size: tuple[int, int],
) -> Iterator[tuple[float, av.VideoStream, av.VideoFrame]]:
    """Lazily turn arrays into timestamped frames; strict zip catches a frame/time count mismatch."""
    # Each frame lasts until the next; the last one a nominal period. Muxers that sum durations
    # (mp4) would otherwise end a VFR clip before its last frame is shown.
    last = max(1, round(1 / (fps * time_base)))
    durations = np.diff(pts, append=pts[-1] + last).tolist()
    for image, tick, duration in zip(images, pts.tolist(), durations, strict=True):
        _check_image(image, size)
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts, frame.duration, frame.time_base = tick, duration, time_base
        yield float(tick * time_base), stream, frame
