"""Read talking-face media with PyAV: probe (with the frame timestamps), decoded frames and audio.

The preprocessing stage builds on these three calls, so they share two promises:

* Every failure a real corpus throws at us (empty, garbage, cut-off or audio-less files) comes out
  as one exception type, :class:`MediaError`, with a machine-readable ``reason`` that a pipeline
  can count and filter on, and the file's path in the message.
* Video and audio share one clock. :attr:`MediaInfo.frame_times` and :func:`iter_frames` report
  each frame's presentation time in seconds, and :func:`read_audio` returns audio whose sample ``i``
  plays at ``i / rate`` seconds on that same clock (codec priming removed by FFmpeg where the container
  records it, a late start padded with silence, encoder padding past the recorded end cut off).
  Lip sync is only as good as this. :func:`stream_audio` gives the same samples a block at a time, for
  inputs too long to hold (an hour of 48 kHz stereo is 1.4 GB of float32).
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import av
import av.container
import numpy as np

__all__ = ["MediaError", "MediaInfo", "iter_frames", "probe", "read_audio", "stream_audio"]

# Frame durations may jitter by one timestamp tick (a 23.976 fps stream in Matroska's 1 ms clock
# alternates 41/42 ms) without the stream being variable; beyond that, allow this much more.
VFR_TOLERANCE_S = 1e-3


@dataclass(frozen=True)
class MediaInfo:
    """What the preprocessing stage needs to know about a file before decoding it."""

    path: str
    container: str  # FFmpeg demuxer name(s), e.g. "mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm"
    duration_s: float
    has_video: bool
    width: int  # 0 without video; stored size, before applying `rotation`
    height: int
    fps: float  # declared average rate; for variable-frame-rate streams the measured mean rate
    variable_frame_rate: bool  # frame durations spread by more than one tick + VFR_TOLERANCE_S
    video_codec: str | None  # format name ("h264", "vp9", "mpeg4"), not the decoder's ("mp3float")
    rotation: int  # clockwise degrees to rotate stored frames for display (0, 90, 180, 270)
    has_audio: bool
    sample_rate: int | None
    channels: int | None
    audio_codec: str | None
    # Presentation time in seconds of every video frame, ascending, from packet timestamps (empty without
    # video): probing reads every packet anyway, so it keeps them and decoding need not demux again.
    frame_times: np.ndarray = field(compare=False, repr=False)

    @property
    def frame_count(self) -> int:
        """Frames with a timestamp, i.e. what iter_frames will yield."""
        return len(self.frame_times)


class MediaError(Exception):
    """A file that cannot be used, with a short machine-readable ``reason``.

    Reasons: ``missing`` (no such file), ``unreadable`` (empty, not media, or no decodable
    streams), ``truncated`` (cut off, e.g. an mp4 without its index), ``corrupt`` (opens but fails
    while decoding), ``no_video`` and ``no_audio`` (the stream asked for is absent). Decoding onto the
    expert's clock (`pipelines.decode`) adds ``too_few_frames`` and ``still_picture``: a picture that cannot
    show a moving face.
    """

    def __init__(self, reason: str, path: str | Path, detail: str = "") -> None:
        self.reason = reason
        self.path = str(path)
        super().__init__(f"{reason}: {self.path}" + (f" ({detail})" if detail else ""))


def probe(path: str | Path) -> MediaInfo:
    """Describe a file's streams. Reads every video packet but decodes only the first frame
    (FFmpeg attaches the display matrix to decoded frames only).

    Raises:
        MediaError: missing, unreadable or truncated file.
    """
    with _open(path) as container:
        video = _video_stream(container)
        audio = _audio_stream(container)
        # Timestamps first, from where the demuxer opened: a seek back to 0 does not always land on the first
        # packet (an MPEG-PS with two packets at dts 0 resumes at the second), and frame k of iter_frames must be
        # frame_times[k].
        times = _packet_times(container, video) if video is not None else np.empty(0)
        rotation = _rotation(container, video) if video is not None else 0
        vfr = _is_variable(times, video.time_base) if video is not None else False
        return MediaInfo(
            path=str(path),
            container=container.format.name,
            duration_s=_duration_s(container, times),
            has_video=video is not None,
            width=video.codec_context.width if video is not None else 0,
            height=video.codec_context.height if video is not None else 0,
            fps=_fps(video, times, vfr) if video is not None else 0.0,
            variable_frame_rate=vfr,
            video_codec=_codec_name(video) if video is not None else None,
            rotation=rotation,
            has_audio=audio is not None,
            sample_rate=audio.codec_context.sample_rate if audio is not None else None,
            channels=audio.codec_context.channels if audio is not None else None,
            audio_codec=_codec_name(audio) if audio is not None else None,
            frame_times=times,
        )


def iter_frames(path: str | Path) -> Iterator[tuple[float, np.ndarray]]:
    """Yield ``(time_s, rgb)`` for every frame in presentation order, one frame in memory at a time.

    Frames come as stored: apply ``probe(path).rotation`` to display them upright.

    Raises:
        MediaError: unusable file, ``no_video``, or ``corrupt`` if decoding fails midway.
    """
    for time_s, picture in iter_pictures(path):
        yield time_s, rgb(picture)


def iter_pictures(path: str | Path) -> Iterator[tuple[float, av.VideoFrame]]:
    """`iter_frames` with each frame as FFmpeg decoded it (`rgb` gives its pixels), valid until the next: for
    readers that keep only some frames, as the conversion costs more than decoding a small frame (0.33-0.47 against
    0.17-0.25 ms at 480x360, measured on the 2-core CPU)."""
    with _open(path) as container:
        stream = _require_video(container, path)
        rate = stream.average_rate or stream.guessed_rate
        for index, frame in enumerate(container.decode(stream)):
            yield _frame_time(frame, index, rate), frame


def rgb(picture: av.VideoFrame) -> np.ndarray:
    """A decoded frame's pixels, uint8 [H, W, 3] RGB, converted on this thread alone.

    FFmpeg's scaler otherwise starts a thread per CPU for every frame: converting the small frames of the synthetic
    corpus took 0.8 ms a frame that way on the 2-core CPU and 0.33-0.47 ms on one thread (the same pixels), and on
    the 16-core H200 machine, with 16 decoders doing it at once, the conversion was most of their CPU time."""
    return picture.to_ndarray(format="rgb24", threads=1)


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Decode the first audio stream to float32 ``[channels, samples]`` at its native rate.

    Sample ``i`` plays at ``i / rate`` seconds on the clock of ``MediaInfo.frame_times``: a stream that
    starts late is padded with leading silence, one that starts before zero is trimmed, and
    encoder padding past the stream's recorded end is dropped. Opus always decodes at 48 kHz.
    The whole track in memory: :func:`stream_audio` gives the same samples a block at a time.

    Raises:
        MediaError: unusable file, ``no_audio``, or ``corrupt`` if decoding fails midway.
    """
    rate, blocks = stream_audio(path)
    return np.concatenate(list(blocks), axis=1), rate


def stream_audio(path: str | Path) -> tuple[int, Iterator[np.ndarray]]:
    """The first audio stream's native rate, and its samples as float32 ``[channels, n]`` blocks in order, one
    decoded frame's worth at a time (a few ms; some may be empty): concatenated, exactly what :func:`read_audio`
    returns, on the same clock. Memory stays that of a block however long the file.

    Raises (opening at once, decoding as the blocks are read):
        MediaError: unusable file, ``no_audio``, or ``corrupt`` if decoding fails midway.
    """
    blocks = _audio_blocks(path)
    return next(blocks), blocks  # the generator opens the file and yields the rate before any sample


def _audio_blocks(path: str | Path) -> Iterator:
    """The rate, then the blocks of `stream_audio`, with the file open in between."""
    with _open(path) as container:
        stream = _audio_stream(container)
        if stream is None:
            raise MediaError("no_audio", path)
        rate = stream.codec_context.sample_rate
        yield rate
        start_s, blocks = _audio_start_s(_decoded_blocks(container, stream, path))
        aligned = _align_to_zero(blocks, round(start_s * rate))
        yield from _trim_to_declared_end(aligned, _declared_end(stream, rate))


@contextmanager
def _open(path: str | Path) -> Iterator[av.container.InputContainer]:
    """Open ``path`` for reading, turning every FFmpeg failure into a MediaError."""
    path = Path(path)
    if not path.is_file():
        raise MediaError("missing", path)
    if path.stat().st_size == 0:
        raise MediaError("unreadable", path, "empty file")
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except (av.FFmpegError, UnicodeDecodeError) as exc:
        reason = "truncated" if _looks_cut_off(path, opened=False) else "unreadable"
        raise MediaError(reason, path, str(exc)) from exc
    with container:
        if _video_stream(container) is None and _audio_stream(container) is None:
            raise MediaError("unreadable", path, "no decodable audio or video stream")
        # Matroska, and mp4 with its index up front, open fine when cut off and would silently
        # yield a shorter clip whose audio and video may end at different times.
        if _looks_cut_off(path, opened=True):
            raise MediaError("truncated", path, "container records more bytes than the file has")
        if _index_runs_past_end(container, path.stat().st_size):
            raise MediaError("truncated", path, "sample index points past the end of the file")
        try:
            yield container
        except av.FFmpegError as exc:
            raise MediaError("corrupt", path, str(exc)) from exc


def _video_stream(container: av.container.InputContainer) -> av.VideoStream | None:
    """First real video stream; cover art (an attached picture) is a video stream too, skip it."""
    for stream in container.streams.video:
        if stream.codec_context is not None and not stream.disposition & av.stream.Disposition.attached_pic:
            return stream
    return None


def _audio_stream(container: av.container.InputContainer) -> av.AudioStream | None:
    for stream in container.streams.audio:
        if stream.codec_context is not None and stream.codec_context.sample_rate:
            return stream
    return None


def _require_video(container: av.container.InputContainer, path: str | Path) -> av.VideoStream:
    stream = _video_stream(container)
    if stream is None:
        raise MediaError("no_video", path)
    return stream


def _codec_name(stream: av.VideoStream | av.AudioStream) -> str:
    """The codec's format name: stable across FFmpeg builds, unlike decoder names (mp3 -> mp3float)."""
    return stream.codec_context.codec.canonical_name


def _packet_times(container: av.container.InputContainer, stream: av.VideoStream) -> np.ndarray:
    """Sorted pts of the stream's packets, in seconds; packets arrive in decode order (B-frames).

    Packets the demuxer flags as discard lie outside the edit list and are never shown. If any
    packet lacks a pts (raw elementary streams), fall back to decoding for timestamps.
    """
    ticks = []
    for packet in container.demux(stream):
        if packet.size == 0 or packet.is_discard:  # the final empty packet only flushes the decoder
            continue
        if packet.pts is None:
            container.seek(0)
            return _decoded_times(container, stream)
        ticks.append(packet.pts)
    return np.sort(np.asarray(ticks, dtype=np.int64)) * float(stream.time_base)


def _decoded_times(container: av.container.InputContainer, stream: av.VideoStream) -> np.ndarray:
    rate = stream.average_rate or stream.guessed_rate
    return np.asarray([_frame_time(frame, i, rate) for i, frame in enumerate(container.decode(stream))])


def _frame_time(frame: av.VideoFrame, index: int, rate) -> float:
    """The frame's own timestamp, or its index on the nominal grid when the stream carries none."""
    if frame.time is not None:
        return float(frame.time)
    if not rate:
        raise av.InvalidDataError("frame without timestamp in a stream without frame rate")
    return index / float(rate)


def _is_variable(times: np.ndarray, time_base) -> bool:
    """True when frame durations spread by more than one timestamp tick plus VFR_TOLERANCE_S.

    One tick of spread is pure rounding: a constant rate that the time base cannot represent
    exactly (24000/1001 fps in milliseconds) alternates between two neighbouring durations.
    """
    if len(times) < 3:
        return False
    durations = np.diff(times)
    return float(durations.max() - durations.min()) > float(time_base) + VFR_TOLERANCE_S


def _fps(stream: av.VideoStream, times: np.ndarray, variable: bool) -> float:
    """Declared average rate when constant (exact, e.g. 30000/1001); measured mean when variable."""
    if (variable or not stream.average_rate) and len(times) > 1:
        return (len(times) - 1) / float(times[-1] - times[0])
    return float(stream.average_rate or stream.guessed_rate or 0.0)


def _duration_s(container: av.container.InputContainer, times: np.ndarray) -> float:
    """Container duration; else the longest stream; else the span of the frames we saw."""
    if container.duration:
        return container.duration / av.time_base
    streams = [s.duration * float(s.time_base) for s in container.streams if s.duration and s.time_base]
    if streams:
        return max(streams)
    return float(times[-1] - times[0]) if len(times) > 1 else 0.0


def _rotation(container: av.container.InputContainer, stream: av.VideoStream) -> int:
    """Clockwise display rotation, from the legacy ``rotate`` tag or else the display matrix.

    FFmpeg exposes the stream's display matrix on decoded frames only, so decode the first one.
    Its angle is counter-clockwise; the ``rotate`` tag (and what players apply) is clockwise.
    """
    tag = stream.metadata.get("rotate")
    if tag is not None and tag.lstrip("-").isdigit():
        return int(tag) % 360
    container.seek(0)  # the timestamps were read to the end; any frame carries the matrix
    for frame in container.decode(stream):
        return round(-frame.rotation) % 360
    return 0


def _float_planar(frame: av.AudioFrame) -> np.ndarray:
    """Any PyAV audio frame as float32 [channels, samples] in [-1, 1].

    Packed formats come out of to_ndarray as one interleaved row, planar ones as one row per channel.
    """
    data = frame.to_ndarray()
    channels = len(frame.layout.channels)
    if not frame.format.is_planar:
        data = data.reshape(-1, channels).T
    if data.dtype == np.uint8:
        return ((data.astype(np.float32) - 128.0) / 128.0).astype(np.float32)
    if np.issubdtype(data.dtype, np.integer):
        return (data / float(-np.iinfo(data.dtype).min)).astype(np.float32)
    return data.astype(np.float32, copy=False)


def _decoded_blocks(container: av.container.InputContainer, stream: av.AudioStream,
                    path: str | Path) -> Iterator[tuple[float | None, np.ndarray]]:
    """(timestamp or None, float32 [channels, samples]) of every decoded frame, in order."""
    decoded = False
    for frame in container.decode(stream):
        decoded = True
        yield frame.time, _float_planar(frame)
    if not decoded:
        raise MediaError("no_audio", path, "audio stream has no decodable samples")


def _audio_start_s(timed_blocks: Iterator[tuple[float | None, np.ndarray]]) -> tuple[float, Iterator[np.ndarray]]:
    """When the stream's first sample plays: the timestamp of the first frame that carries one (0 if none does),
    and every block from the first on. Frames before that one are held until it comes (none, in the files we know).
    """
    held = []
    for time, block in timed_blocks:
        held.append(block)
        if time is not None:
            return float(time), itertools.chain(held, (block for _, block in timed_blocks))
    return 0.0, iter(held)


# A late start's leading silence goes out in blocks of at most this many samples, not as one array.
_SILENCE_BLOCK = 1 << 16


def _align_to_zero(blocks: Iterator[np.ndarray], start: int) -> Iterator[np.ndarray]:
    """Shift audio so that sample 0 plays at time 0: pad a late start (``start`` > 0) with that many samples of
    silence, trim an early one's first ``-start`` samples."""
    if start > 0:
        first = next(blocks)
        for begin in range(0, start, _SILENCE_BLOCK):
            yield np.zeros((first.shape[0], min(_SILENCE_BLOCK, start - begin)), np.float32)
        yield first
        yield from blocks
        return
    to_drop = -start
    for block in blocks:
        dropped = min(to_drop, block.shape[1])
        to_drop -= dropped
        yield block[:, dropped:]


def _declared_end(stream: av.AudioStream, rate: int) -> int | None:
    """The sample (on the zero-aligned clock) where the stream's recorded duration ends, or None if it records none.

    AAC and MP3 encode whole frames (1024/1152 samples: 128 ms at 8 kHz), so the decoder returns
    the last frame's padding too; mp4 records the true length (edit list), which players honour.
    """
    if not stream.duration or stream.time_base is None:
        return None
    end = round((stream.duration + (stream.start_time or 0)) * stream.time_base * rate)
    return end if end > 0 else None


def _trim_to_declared_end(blocks: Iterator[np.ndarray], end: int | None) -> Iterator[np.ndarray]:
    """Drop encoder padding past the declared end (`_declared_end`). Decoding goes on past it, so that a file
    broken there still fails as corrupt."""
    if end is None:
        yield from blocks
        return
    kept = 0
    for block in blocks:
        take = max(0, min(block.shape[1], end - kept))
        kept += take
        yield block[:, :take]


def _index_runs_past_end(container: av.container.InputContainer, file_size: int) -> bool:
    """Whether the demuxer's sample index points beyond EOF: an mp4 with its index up front
    (faststart) opens fine even when the media data after it was cut off.

    Only each stream's last entry is checked: samples are stored in time order, so the last one
    lies furthest into the file, and an hour-long clip has ~10^5 entries to walk otherwise.
    """
    for stream in container.streams:
        entries = stream.index_entries
        if len(entries) and entries[-1].pos + entries[-1].size > file_size:
            return True
    return False


def _looks_cut_off(path: Path, opened: bool) -> bool:
    """Whether the container's own size bookkeeping says bytes are missing from the end.

    MP4/MOV boxes, Matroska/WebM segments and RIFF (AVI) chunks all record their length, so
    a claimed length past EOF means the tail is gone. For an mp4 that FFmpeg could not open at
    all, a missing 'moov' is enough: media-first writers add that index last, so a partial
    download or a killed writer leaves a file that is all 'mdat'.
    """
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(4096)
    if head[:4] == b"RIFF" and len(head) >= 8:
        return 8 + struct.unpack("<I", head[4:8])[0] > size
    if head[:4] == _EBML_MAGIC:
        return _matroska_end(head) > size
    layout = _bmff_layout(path, size)
    if layout is None:
        return False
    runs_past_end, has_moov = layout
    return runs_past_end or (not opened and not has_moov)


# Top-level ISO BMFF box types a QuickTime/MP4 file may start with.
_BMFF_FIRST_BOXES = {b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot"}


def _bmff_layout(path: Path, size: int) -> tuple[bool, bool] | None:
    """Walk an MP4/MOV's top-level boxes: (a box runs past EOF, a 'moov' was seen).

    None when the file does not start like ISO BMFF. The walk stops at an implausible box
    header (size < 8), e.g. the placeholder mdat of a writer that never finished.
    """
    offset, has_moov = 0, False
    with path.open("rb") as handle:
        while offset + 8 <= size:
            handle.seek(offset)
            header = handle.read(16)
            box_size, box_type = struct.unpack(">I4s", header[:8])
            if offset == 0 and box_type not in _BMFF_FIRST_BOXES:
                return None
            if box_size == 1 and len(header) == 16:  # 64-bit size follows the type
                box_size = struct.unpack(">Q", header[8:16])[0]
            elif box_size == 0:  # "extends to EOF", legal for the last box only
                box_size = size - offset
            if box_size < 8:
                break
            has_moov |= box_type == b"moov"
            offset += box_size
    return offset > size, has_moov


_EBML_MAGIC = b"\x1a\x45\xdf\xa3"
_MATROSKA_SEGMENT = b"\x18\x53\x80\x67"


def _matroska_end(head: bytes) -> int:
    """Byte offset where the Segment says the file ends; 0 if unknown (live-streamed) or unparsable."""
    header = _ebml_size(head, 4)
    if header is None:
        return 0
    segment_at = 4 + header[1] + header[0]
    if head[segment_at : segment_at + 4] != _MATROSKA_SEGMENT:
        return 0
    segment = _ebml_size(head, segment_at + 4)
    if segment is None or segment[2]:
        return 0
    return segment_at + 4 + segment[1] + segment[0]


def _ebml_size(data: bytes, pos: int) -> tuple[int, int, bool] | None:
    """Decode an EBML variable-length size at ``pos``: (value, bytes used, is "unknown size").

    The count of leading zero bits in the first byte gives the length; the rest is the value.
    """
    if pos >= len(data) or data[pos] == 0:
        return None
    length = 9 - data[pos].bit_length()
    if pos + length > len(data):
        return None
    value = data[pos] & ((1 << (8 - length)) - 1)
    for byte in data[pos + 1 : pos + length]:
        value = (value << 8) | byte
    return value, length, value == (1 << (7 * length)) - 1
