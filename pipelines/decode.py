"""Decode a video into chunks on the expert's clock: 25 fps frames and 16 kHz mono audio.

Real corpora arrive at 23.976, 29.97, 30 fps, variable frame rate, any sample rate. Frames are resampled by
presentation timestamp (each output instant k/25 takes the source frame nearest to it), never by index, and
audio by a real resampler, so frame k and audio sample k * 640 describe the same instant whatever the source.

Decoding streams: a video becomes chunks of at most `chunk_seconds`, each yielded as soon as it is complete,
so a one-hour input never sits in memory as frames, nor as audio: the audio is decoded and resampled alongside
the frames, each chunk's span as it is needed (`AudioSpans`), to the very samples resampling the whole track
gives. A chunk is also the longest sample we cut, as corpora for lip-sync are cut into segments of a few
seconds anyway.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterator

import cv2
import numpy as np

from pipelines.audio import AudioConfig, prepare_stream
from pipelines.core.columns import object_column
from pipelines.core.storage import StorageConfig, local_copy
from pipelines.media import MediaError, MediaInfo, iter_pictures, probe, rgb, stream_audio
from pipelines.shots import ShotConfig, mark_cuts

CONTEXT_FRAMES = 5  # audio kept beyond each end of a chunk, so a mel window at the edge has its STFT context


@dataclass(frozen=True)
class DecodeConfig:
    """Decoding: how long a chunk is, how large a frame."""

    chunk_seconds: float = field(default=10.0, metadata={"help": "longest piece a video is cut into (and the longest sample)"})
    max_side: int = field(default=640, metadata={"help": "frames are downscaled so their longer side is at most this before face detection"})
    shots: ShotConfig = field(default_factory=ShotConfig, metadata={"help": "shot cuts"})

    def __post_init__(self):
        if self.chunk_seconds <= 0 or self.max_side < 32:
            raise ValueError(f"--chunk-seconds must be positive and --max-side at least 32, got {self.chunk_seconds} "
                             f"and {self.max_side}")


@dataclass
class Chunk:
    """A piece of one video on the expert's clock (25 fps).

    frames: uint8 [T, H, W, 3] RGB, upright, frame t at time (start_frame + t) / fps.
    audio:  float32 mono at 16 kHz covering frames [start_frame - CONTEXT_FRAMES, start_frame + T + CONTEXT_FRAMES),
            zero where that lies outside the recording.
    cuts:   int64 [C] the frames (of this chunk) that start a new shot (`pipelines.shots`), ascending.
    shot:   the video's shot index at the chunk's first frame before any of its cuts (shots before it).
    """

    index: int
    start_frame: int
    frames: np.ndarray
    audio: np.ndarray
    cuts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    shot: int = 0


def resample_indices(source_times: np.ndarray, fps: float, duration_s: float) -> np.ndarray:
    """For each output instant k / fps in [0, duration), the index of the source frame nearest in time."""
    if len(source_times) == 0:
        return np.zeros(0, dtype=np.int64)
    targets = np.arange(int(math.floor(duration_s * fps + 1e-6))) / fps
    right = np.clip(np.searchsorted(source_times, targets), 1, max(len(source_times) - 1, 1))
    left = right - 1
    if len(source_times) == 1:
        return np.zeros(len(targets), dtype=np.int64)
    closer_left = np.abs(targets - source_times[left]) <= np.abs(source_times[right] - targets)
    return np.where(closer_left, left, right)


def picture_end_s(frame_times: np.ndarray, declared_fps: float) -> float:
    """When the video's own picture ends: its last frame's timestamp plus one frame duration, the median gap
    between frames (robust to a variable rate), or the declared rate's period when there is a single frame."""
    if len(frame_times) == 0:
        return 0.0
    if len(frame_times) > 1:
        frame_s = float(np.median(np.diff(frame_times)))
    else:
        frame_s = 1.0 / declared_fps if declared_fps > 0 else 0.0
    return float(frame_times[-1]) + frame_s


def output_picks(info: MediaInfo, audio_s: float, fps: int) -> np.ndarray:
    """The source frame behind each output frame, over the span that picture, container and audio all cover.

    The picture's own end bounds the output: a clip whose picture stops early (a single frame, a header claiming
    1000 fps) would otherwise be stretched over its whole soundtrack by repeating its last frame, a frozen face
    that trains as an in-sync positive. One output frame of grace past that end, because streams are cut in whole
    frames: the picture and audio of one ordinary recording end up to a frame apart, and that frame is kept.
    """
    picture_s = picture_end_s(info.frame_times, info.fps) + 1.0 / fps
    return resample_indices(info.frame_times, fps, min(info.duration_s, audio_s, picture_s))


def picture_problem(picks: np.ndarray, window_frames: int) -> str | None:
    """Why the picked source frames cannot show a moving face, or None.

    ``too_few_frames``: shorter than one window of the expert. ``still_picture``: fewer distinct source frames
    than a window has frames, or on average less than one new picture per window, so most windows would show a
    frozen face.
    """
    if len(picks) < window_frames:
        return "too_few_frames"
    distinct = len(np.unique(picks))
    if distinct < window_frames or distinct * window_frames < len(picks):
        return "still_picture"
    return None


def upright(frame: np.ndarray, rotation: int) -> np.ndarray:
    """Apply the display rotation (clockwise degrees) that phones record as metadata."""
    turns = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(frame, k=-turns)) if turns else frame


def fit_within(frame: np.ndarray, max_side: int) -> np.ndarray:
    height, width = frame.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1:
        return frame
    size = (max(2, round(width * scale)), max(2, round(height * scale)))
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA)


def decode_chunks(path, info: MediaInfo, config: DecodeConfig, audio_config: AudioConfig) -> Iterator[Chunk]:
    """Stream a video as chunks on the expert's clock. Raises MediaError (with a reason) for unusable input.

    Memory does not grow with the video's length: frames are decoded as the chunks fill, and the audio is read
    twice as a stream, first to count its samples (where the output ends, as the audio may end first), then
    alongside the frames, a chunk's span at a time (`AudioSpans`).
    """
    if not info.has_video:
        raise MediaError("no_video", path)
    if not info.has_audio:
        raise MediaError("no_audio", path)
    clock = audio_config.clock
    audio_s = sum(len(piece) for piece in prepared_audio(path, audio_config)) / clock.sample_rate
    picks = output_picks(info, audio_s, clock.fps)
    if len(picks) == 0:
        raise MediaError("truncated", path, "no decodable frames")
    problem = picture_problem(picks, clock.window_frames)
    if problem:
        raise MediaError(problem, path, f"{info.frame_count} frame(s) at a stated {info.fps:g} fps end at "
                                        f"{picture_end_s(info.frame_times, info.fps):.3f} s, the audio at "
                                        f"{audio_s:.3f} s: {len(np.unique(picks))} distinct picture(s) behind "
                                        f"{len(picks)} frames at {clock.fps} fps")

    chunk_frames = max(int(config.chunk_seconds * clock.fps), 1)
    audio = AudioSpans(prepared_audio(path, audio_config))
    frames: list[np.ndarray] = []
    chunk_index = produced = 0
    pending = iter(picks)  # numpy scalars one at a time: a list of an hour's picks would be 90,000 Python ints
    wanted = next(pending, None)
    # Frames are picked by their place in the probe's index: one the decoder dropped or added would move every
    # later picture against the audio, so each decoded frame's time must be the one the index holds.
    tolerance_s = 0.5 / max(info.fps, 1.0)
    for index, (time_s, picture) in enumerate(iter_pictures(path)):  # RGB only for the frames picked
        if wanted is None:
            break
        if index >= info.frame_count or abs(time_s - info.frame_times[index]) > tolerance_s:
            expected = f"{info.frame_times[index]:.3f} s" if index < info.frame_count else "no such frame"
            raise MediaError("corrupt", path, f"decoded frame {index} plays at {time_s:.3f} s, the stream's index "
                                              f"says {expected}: a frame was lost or added in decoding")
        if wanted != index:
            continue
        frame = fit_within(upright(rgb(picture), info.rotation), config.max_side)
        while wanted == index:  # one source frame may fill several output instants when upsampling
            frames.append(frame)
            produced += 1
            if len(frames) == chunk_frames:
                yield _chunk(chunk_index, produced - len(frames), frames, audio, clock.samples_per_frame)
                chunk_index, frames = chunk_index + 1, []
            wanted = next(pending, None)
    if wanted is not None and produced < 0.9 * len(picks):
        raise MediaError("truncated", path, f"decoding stopped after {produced} of {len(picks)} frames")
    if frames:
        yield _chunk(chunk_index, produced - len(frames), frames, audio, clock.samples_per_frame)


def prepared_audio(path, audio_config: AudioConfig) -> Iterator[np.ndarray]:
    """The file's audio as the expert hears it (`audio.prepare`: 16 kHz mono, sample 0 at time 0), in pieces."""
    rate, blocks = stream_audio(path)
    return prepare_stream(blocks, rate, audio_config)


class AudioSpans:
    """Spans of a stream of audio pieces, asked for in order (neither begin nor end ever earlier than the last
    request's): each request reads the stream only as far as its end, and lets go of what lies before its begin.
    A chunk's span starts CONTEXT_FRAMES before the chunk, the next chunk where this one ends, so what is held is
    one span and a piece, however long the recording."""

    def __init__(self, pieces: Iterator[np.ndarray]):
        self._pieces = pieces
        self._held = np.zeros(0, np.float32)
        self._held_from = 0  # the sample index of _held[0]

    def span(self, begin: int, end: int) -> np.ndarray:
        """Samples [begin, end), zero where that lies outside the recording (before 0 or past its end)."""
        if 0 < self._held_from and begin < self._held_from:
            raise ValueError(f"AudioSpans: samples from {begin} were asked for after those before "
                             f"{self._held_from} were let go")
        more = [self._held]
        available = self._held_from + len(self._held)
        while available < end:
            piece = next(self._pieces, None)
            if piece is None:  # the recording ends here
                break
            more.append(piece)
            available += len(piece)
        held = np.concatenate(more) if len(more) > 1 else self._held
        piece = np.zeros(max(end - begin, 0), dtype=np.float32)
        lo, hi = max(begin, 0), min(end, available)
        if hi > lo:
            piece[lo - begin:hi - begin] = held[lo - self._held_from:hi - self._held_from]
        forget = min(max(begin - self._held_from, 0), len(held))
        self._held, self._held_from = held[forget:], self._held_from + forget
        return piece


def _chunk(index: int, start_frame: int, frames: list[np.ndarray], audio: AudioSpans, samples_per_frame: int) -> Chunk:
    begin = (start_frame - CONTEXT_FRAMES) * samples_per_frame
    end = (start_frame + len(frames) + CONTEXT_FRAMES) * samples_per_frame
    return Chunk(index=index, start_frame=start_frame, frames=np.stack(frames), audio=audio.span(begin, end))


class DecodeStage:
    """Ray Data stage: one source row in, its chunks out (streamed), then one `end` row with the chunk count
    or the reason the video failed. Failures never raise: a corpus always has broken files."""

    def __init__(self, config: DecodeConfig, audio_config: AudioConfig, storage: StorageConfig):
        self.config, self.audio_config, self.storage = config, audio_config, storage

    def __call__(self, batch: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        for i in range(len(batch["key"])):
            source = {name: batch[name][i] for name in ("key", "uri", "speaker", "split")}
            yield from self.decode_source(source)

    def decode_source(self, source: dict) -> Iterator[dict[str, np.ndarray]]:
        count, error, detail, info = 0, "", "", None
        try:
            with local_copy(str(source["uri"]), self.storage) as path:
                info = probe(path)
                for chunk in mark_cuts(decode_chunks(path, info, self.config, self.audio_config), self.config.shots):
                    yield self._row(source, info, chunk.index, chunk.start_frame, chunk.frames, chunk.audio,
                                    cuts=chunk.cuts, shot=chunk.shot)
                    count += 1
        except MediaError as failure:
            error, detail = failure.reason, str(failure)
        except FileNotFoundError as failure:
            error, detail = "missing", str(failure)
        except Exception as failure:  # an unforeseen decoder failure must cost one video, not the run
            error, detail = "decode_error", f"{type(failure).__name__}: {failure}"
        empty = np.zeros((0, 2, 2, 3), np.uint8)
        yield self._row(source, info, count, 0, empty, np.zeros(0, np.float32), end=True, error=error, detail=detail)

    def _row(self, source, info, chunk, start_frame, frames, audio, end=False, error="", detail="", cuts=None, shot=0):
        return {
            **{name: np.array([str(value)]) for name, value in source.items()},
            "chunk": np.array([chunk]), "start_frame": np.array([start_frame]), "end": np.array([end]),
            "frames": object_column([frames]), "audio": object_column([audio]),
            "cuts": object_column([np.zeros(0, np.int64) if cuts is None else cuts]), "shot": np.array([shot]),
            "source_fps": np.array([info.fps if info else 0.0]),
            "source_rate": np.array([info.sample_rate or 0 if info else 0]),
            "error": np.array([error]), "detail": np.array([detail]),
        }
