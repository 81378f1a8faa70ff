"""Score one video's lip-sync with a trained expert, through the very stages preprocessing runs.

A video is decoded (`pipelines.decode`), its faces aligned (`pipelines.faces.stage.FaceStage`) and cut into face
segments with the log-mel of their (separated) voice (`pipelines.samples.SampleStage`), in this process and in
the same order as `python -m pipelines.preprocess`; the samples are then read back as the trainer reads shards.
So segments end at shot cuts as preprocessing's do (`pipelines.shots`), and no window spans one.
So the expert scores exactly the kind of input it was trained on, whatever the file's fps, rate or container.

Every face in view is followed (`FaceConfig.max_faces`), its segments linked across chunks into face tracks by
box overlap (`pipelines.faces.tracks.link_pieces`), and every track scored. Every window of `window_frames`
frames is compared with the audio shifted by -K..K frames (`model.offset`); a track's grids are pooled, and the
track that speaks is the one of the highest confidence among those in view at the same time
(`model.sync.speaker`). The video's result pools the grids of the speaking tracks: SyncNet's rules give the offset
(positive = audio late), the confidence (median - min of the mean distance curve) and the sync over time.
"""

from __future__ import annotations

import functools
import warnings
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from model.config import ModelConfig
from model.expert import SyncExpert
from model.offset import OffsetResult, offset_from_grid, similarity_grid
from model.sync.speaker import speaking
from pipelines.audio import AudioConfig
from pipelines.core.device import resolve_device
from pipelines.core.storage import StorageConfig
from pipelines.decode import DecodeConfig, DecodeStage
from pipelines.faces.base import DEVICES, FaceConfig
from pipelines.faces.stage import FACE_COUNT_EVERY, FaceStage
from pipelines.faces.tracks import link_pieces
from pipelines.samples import SampleConfig, SampleStage
from pipelines.shards.format import sample_crop, sample_shot
from pipelines.shards.reader import Segment, segments_in_tar
from pipelines.sources import make_key

# Faces followed at once by default: a talk show's panel; each face in view costs the aligner a pass.
SCORE_MAX_FACES = 4

# Below this confidence (median - min of the mean cosine-distance curve) the curve has no clear dip and the
# offset is a guess. With a trained expert, synthetic speech at any offset scores 0.3-0.6, a face without
# speech or an untrained expert near 0. SyncNet's usual threshold (3) is on its own, other scale.
DEFAULT_MIN_CONFIDENCE = 0.1

FAILURE_MESSAGES = {
    "no_audio": "has no audio stream: there is nothing to measure lip-sync against",
    "no_video": "has no video stream",
    "missing": "does not exist",
    "unreadable": "cannot be read as a video (empty, not media, or no decodable stream)",
    "truncated": "is cut off (incomplete download or copy?)",
    "corrupt": "fails to decode midway",
    "decode_error": "failed to decode",
    "faces_error": "failed in the face stage",
    "samples_error": "failed while its samples were cut",
    "too_few_frames": "has too few picture frames to score (a single picture, or a header that states a wrong "
                      "frame rate?)",
    "still_picture": "shows a still picture, not a moving face: too few distinct frames behind its length",
}


@dataclass(frozen=True)
class ScoreConfig:
    """How a video is scored: the expert, the search, and the preprocessing stages it runs first."""

    checkpoint: str = field(metadata={"help": "checkpoint file (expert.pt) or training run folder (its newest checkpoint)"})
    max_offset: int = field(default=15, metadata={"help": "offsets searched, in frames (40 ms) either way"})
    step: int = field(default=1, metadata={"help": "score every step-th window (1 = every frame; larger is faster)"})
    device: str = field(default="auto", metadata={"help": "where the expert and face-alignment run", "choices": DEVICES})
    batch_size: int = field(default=128, metadata={"help": "windows per forward pass"})
    # The expert fixes the crop (its size and kind) and the shortest segment; the device is the one above.
    faces: FaceConfig = field(default_factory=FaceConfig, metadata={
        "help": "faces, found as preprocessing finds them",
        "omit": ("device", "batch_size", "crop_size", "crop", "crop_pad_bottom")})
    decode: DecodeConfig = field(default_factory=DecodeConfig, metadata={"help": "decoding"})
    samples: SampleConfig = field(default_factory=SampleConfig, metadata={
        "help": "segments, cut as preprocessing cuts them",
        "omit": ("min_segment_frames", "jpeg_quality", "speaker_expert", "keep_tracks")})

    def __post_init__(self):
        if self.max_offset < 0 or self.step < 1 or self.batch_size < 1:
            raise ValueError("--max-offset must be >= 0, --step and --batch-size >= 1")


def check_crop(segment: Segment, model: ModelConfig) -> None:
    """Raise ValueError when a stored segment's faces are not cut the way the expert of `model` reads them."""
    stored = sample_crop(segment.meta)
    if stored != model.crop:
        raise ValueError(f"{segment.source} ({segment.key}) holds {stored} face crops, the expert reads {model.crop} "
                         f"crops: give it the videos, whose faces are then cut for it as it scores them")


class ScoreError(Exception):
    """A video that cannot be scored; the message names the file and what to do."""

    def __init__(self, reason: str, message: str):
        self.reason = reason
        super().__init__(message)


def several_faces(face_counts: Counter) -> float:
    """Share of the sampled frames (faces detected -> frames) that show more than one face."""
    sampled = sum(face_counts.values())
    return sum(n for faces, n in face_counts.items() if faces > 1) / sampled if sampled else 0.0


def faces_in_view(face_counts: Counter) -> str:
    return f"up to {max(face_counts)} faces in view ({several_faces(face_counts):.0%} of sampled frames)"


def too_short_message(video, segment_frames: list[int], window_frames: int, max_offset: int, fps: int,
                      face_counts: Counter, faces_followed: int = 1) -> str:
    """Why no face segment can be searched, from what is true of this video; it names the --max-offset that fits
    the longest segment only when some offset does (a window needs `window_frames` plus the shifts either way)."""
    longest = max(segment_frames)
    parts = [f"{video}: no face segment is long enough to search +-{max_offset} frames "
             f"({window_frames + 2 * max_offset} needed): {len(segment_frames)} segment(s), the longest "
             f"{longest} frames ({longest / fps:.2f} s)"]
    if several_faces(face_counts) > 0:
        parts.append(f"{faces_in_view(face_counts)}, {faces_followed} followed, each as a track of its own: no "
                     f"face stays in view long enough at once")
    fitting = (longest - window_frames) // 2
    if fitting >= 1:
        parts.append(f"--max-offset {fitting} fits the longest segment")
    else:
        parts.append("the face is never seen long enough at once to measure an offset")
    return "; ".join(parts)


@dataclass
class SegmentScore:
    segment: Segment
    start_frame: int  # in the video, on the 25 fps clock
    grid: tuple[np.ndarray, np.ndarray, np.ndarray] | None  # `similarity_grid`'s; None: too short to search
    result: OffsetResult | None
    track: int = 0  # the face track it belongs to (`face_tracks_of`)

    @property
    def key(self) -> str:
        return self.segment.key

    @property
    def num_frames(self) -> int:
        return self.segment.num_frames

    @property
    def start_s(self) -> float:
        return self.start_frame / self.segment.meta["fps"]

    @property
    def end_s(self) -> float:
        return (self.start_frame + self.num_frames) / self.segment.meta["fps"]

    @property
    def box(self) -> np.ndarray:
        """The segment's median face box (x1, y1, x2, y2, fractions of the frame); NaN where none was recorded."""
        return np.array((self.segment.meta or {}).get("box", [np.nan] * 4), np.float64)


@dataclass
class TrackScore:
    """One face followed through the video: its segments (linked across chunks), their pooled result (None when
    none could be searched) and whether it is the one speaking (None: could not be judged)."""

    number: int
    segments: list[SegmentScore]
    result: OffsetResult | None
    speaking: bool | None = None

    @property
    def start_frame(self) -> int:
        return self.segments[0].start_frame

    @property
    def end_frame(self) -> int:
        return self.segments[-1].start_frame + self.segments[-1].num_frames

    @property
    def box(self) -> np.ndarray:
        """The median of its segments' boxes (fractions of the frame)."""
        boxes = np.array([s.box for s in self.segments])
        present = boxes[np.isfinite(boxes).all(axis=1)]
        return np.median(present, axis=0) if len(present) else np.full(4, np.nan)

    def to_json(self, fps: int) -> dict:
        box = self.box
        return {"track": self.number, "speaking": self.speaking, "start_s": self.start_frame / fps,
                "end_s": self.end_frame / fps, "frames": sum(s.num_frames for s in self.segments),
                "box": box.round(4).tolist() if np.isfinite(box).all() else None,
                "offset_frames": self.result.offset_frames if self.result else None,
                "confidence": self.result.confidence if self.result else None,
                "sync_probability": self.result.best_similarity if self.result else None,
                "segments": [s.key for s in self.segments]}


def pooled_result(segments: list[SegmentScore]) -> OffsetResult | None:
    """SyncNet's result over every scored window of the segments (None when none could be searched)."""
    usable = [s for s in segments if s.result is not None]
    if not usable:
        return None
    return offset_from_grid(usable[0].grid[0], np.concatenate([s.grid[1] + s.start_frame for s in usable]),
                            np.concatenate([s.grid[2] for s in usable], axis=1))


def face_tracks_of(segments: list[SegmentScore]) -> list[TrackScore]:
    """Segments grouped into face tracks (`link_pieces`), each scored, and who speaks judged among them."""
    numbers = link_pieces([(s.start_frame, s.start_frame + s.num_frames, s.box) for s in segments])
    tracks = []
    for number in sorted(set(numbers)):
        mine = sorted((s for s, n in zip(segments, numbers) if n == number), key=lambda s: s.start_frame)
        for segment in mine:
            segment.track = number
        tracks.append(TrackScore(number=number, segments=mine, result=pooled_result(mine)))
    verdicts = speaking([(t.start_frame, t.end_frame) for t in tracks],
                        [t.result.confidence if t.result else None for t in tracks])
    for track, verdict in zip(tracks, verdicts):
        track.speaking = verdict
    return tracks


def speaking_segments(tracks: list[TrackScore]) -> list[SegmentScore]:
    """The segments of the speaking tracks, in time order: those a video's result pools."""
    return sorted((s for t in tracks if t.speaking for s in t.segments), key=lambda s: s.start_frame)


@dataclass
class VideoScore:
    video: str
    fps: int
    frames: int
    frames_with_face: int
    source_fps: float
    source_sample_rate: int
    segments: list[SegmentScore]
    tracks: list[TrackScore]
    result: OffsetResult  # pooled over every scored window of the speaking tracks
    face_counts: Counter  # faces detected -> sampled frames
    max_offset: int
    window_frames: int

    @functools.cached_property
    def speaking_segments(self) -> list[SegmentScore]:
        """The segments of the speaking tracks, in time order: those the video's result pools."""
        return speaking_segments(self.tracks)

    @property
    def offset_ms(self) -> float:
        return 1000.0 * self.result.offset_frames / self.fps

    @property
    def window_times(self) -> np.ndarray:
        """Centre of each scored window, in seconds from the start of the video."""
        return (self.result.window_starts + self.window_frames / 2) / self.fps

    def notes(self) -> list[str]:
        notes = []
        speakers = [t.number for t in self.tracks if t.speaking]
        if len(speakers) < len(self.tracks):
            notes.append(f"{len(self.tracks)} face tracks scored; the offset is that of the one speaking (track "
                         f"{', '.join(map(str, speakers))}: the clearest sync among the faces in view at its time)")
        elif len(self.tracks) > 1:
            notes.append(f"{len(self.tracks)} face tracks scored, none in view with another: all pooled")
        elif several_faces(self.face_counts) > 0:
            notes.append(f"{faces_in_view(self.face_counts)}, but one face track found")
        short = [s for s in self.segments if s.result is None]
        if short:
            notes.append(f"{len(short)} face segment(s) too short for +-{self.max_offset} frames left out")
        if self.frames_with_face < self.frames:
            notes.append(f"a face on {self.frames_with_face} of {self.frames} frames")
        if abs(self.result.offset_frames) == self.max_offset:
            notes.append("the offset lies at the edge of the search range: the true one may be larger "
                         "(raise --max-offset)")
        return notes

    def to_json(self) -> dict:
        result = self.result
        return {
            "video": self.video,
            "offset_frames": result.offset_frames,
            "offset_ms": self.offset_ms,
            "confidence": result.confidence,
            "sync_probability": result.best_similarity,
            "sync_probability_at_zero": result.similarity_at(0),
            "lse_d": result.min_distance,
            "lse_c": result.confidence,
            "sign": "positive offset = audio late",
            "fps": self.fps,
            "frames": self.frames,
            "frames_with_face": self.frames_with_face,
            "duration_s": self.frames / self.fps,
            "source_fps": self.source_fps,
            "source_sample_rate": self.source_sample_rate,
            "faces_in_view": {str(k): v for k, v in sorted(self.face_counts.items())},
            "windows_scored": int(len(result.window_starts)),
            "segments": [{"key": s.key, "start_s": s.start_s, "end_s": s.end_s, "frames": s.num_frames,
                          "shot": sample_shot(s.segment.meta),
                          "track": s.track,
                          "offset_frames": s.result.offset_frames if s.result else None,
                          "confidence": s.result.confidence if s.result else None,
                          "sync_probability": s.result.best_similarity if s.result else None}
                         for s in self.segments],
            "tracks": [track.to_json(self.fps) for track in self.tracks],
            "speaking_tracks": [track.number for track in self.tracks if track.speaking],
            "curve": {"shifts": result.shifts.tolist(), "mean_similarity": result.mean_similarity.round(5).tolist()},
            "windows": {"time_s": self.window_times.round(3).tolist(),
                        "sync_probability": result.window_similarity.round(4).tolist(),
                        "confidence": result.window_confidence.round(4).tolist()},
            "notes": self.notes(),
        }


class VideoScorer:
    """Loads the expert and the preprocessing stages once; `score(path)` then measures one video."""

    def __init__(self, config: ScoreConfig):
        self.config = config
        self.expert = SyncExpert.from_checkpoint(config.checkpoint, resolve_device(config.device))
        model = self.expert.config
        self.fps = model.clock.fps
        audio = AudioConfig(clock=model.clock)  # the expert's clock drives decoding and the mel
        if audio.n_mels != model.mel_bins:
            raise ValueError(f"the checkpoint expects {model.mel_bins} mel bins; preprocessing makes {audio.n_mels}")
        # Faces cut as the expert's training faces were: aligned for ours, detector boxes for Wav2Lip's.
        faces = replace(config.faces, device=config.device, crop_size=model.face_size, crop=model.crop,
                        crop_pad_bottom=model.crop_pad_bottom, max_faces=config.faces.max_faces or SCORE_MAX_FACES)
        self.decode = DecodeStage(config.decode, audio, StorageConfig())
        self.faces = FaceStage(faces)
        aligner = self.faces.aligner
        # Only face-alignment with S3FD's weights draws S3FD's boxes: without them it takes RetinaFace's.
        if model.crop == "box" and getattr(aligner, "detector", None) != "s3fd":
            detector = "HOG" if aligner.name == "dlib" else "RetinaFace"
            warnings.warn(f"{config.checkpoint} was trained on S3FD's face boxes (face-alignment's detector); "
                          f"{detector}'s boxes are drawn otherwise, so it sees faces cut unlike its training "
                          f"faces: give face-alignment's weights, S3FD's included (--face-weights, or "
                          f"the torch hub cache), for faithful scores", stacklevel=2)
        self.samples = SampleStage(audio, replace(config.samples, min_segment_frames=model.window_frames))

    def segments(self, video: str | Path) -> tuple[list[Segment], dict]:
        """The video's face segments as preprocessing would store them, and what was seen on the way:
        frames, frames_with_face, dropped_short, face_counts, faces_followed, source_fps, source_sample_rate.
        Raises ScoreError."""
        source = {"key": make_key(Path(video).name), "uri": str(video), "speaker": "", "split": "score"}
        segments: list[Segment] = []
        seen = {"frames": 0, "frames_with_face": 0, "dropped_short": 0, "face_counts": Counter(), "source_fps": 0.0,
                "source_sample_rate": 0, "faces_followed": 1}
        for row in self.decode.decode_source(source):
            if row["end"][0]:
                if row["error"][0]:
                    reason = str(row["error"][0])
                    raise ScoreError(reason, f"{video} {FAILURE_MESSAGES.get(reason, reason)} ({row['detail'][0]})")
                break
            seen["source_fps"], seen["source_sample_rate"] = float(row["source_fps"][0]), int(row["source_rate"][0])
            frames = row["frames"][0]
            aligned = self.faces(row)
            counted = aligned["faces_counted"][0]  # what the face stage counted to know how many to follow
            if not len(counted):  # one face followed: counted here, to say when others are in view
                counted = self.faces.aligner.count_faces(frames[::FACE_COUNT_EVERY])
            seen["face_counts"].update(counted.tolist())
            seen["faces_followed"] = max(seen["faces_followed"], int(aligned["faces_followed"][0]))
            record, tar = self.samples.chunk_samples({name: column[0] for name, column in aligned.items()})
            if record.failure is not None:
                reason = record.failure.reason
                raise ScoreError(reason, f"{video} {FAILURE_MESSAGES.get(reason, reason)} ({record.failure.detail})")
            seen["frames"] += record.frames
            seen["frames_with_face"] += record.frames_with_face
            seen["dropped_short"] += record.dropped_short
            if tar:
                segments.extend(segments_in_tar(tar, str(video)))
        if not segments:
            raise ScoreError("no_face", f"no face found in {video}: {seen['frames_with_face']} of {seen['frames']} "
                                        f"frames show a face long enough to score; is the face small or turned away? "
                                        f"(--max-side {self.config.decode.max_side} is the frame size faces are sought at)")
        return segments, seen

    def score_segments(self, segments: list[Segment]) -> list[SegmentScore]:
        scores = []
        for segment in segments:
            try:
                grid = similarity_grid(self.expert, segment.faces, segment.mel, self.config.max_offset,
                                       step=self.config.step, batch_size=self.config.batch_size)
            except ValueError:  # shorter than the shifted windows need
                grid = None
            # What preprocessing always records, a shard made by other means may lack.
            start_frame = int((segment.meta or {}).get("start_frame", 0))
            scores.append(SegmentScore(segment=segment, start_frame=start_frame, grid=grid,
                                       result=offset_from_grid(*grid) if grid else None))
        return scores

    def score(self, video: str | Path) -> VideoScore:
        segments, seen = self.segments(video)
        scored = self.score_segments(segments)
        tracks = face_tracks_of(scored)
        pooled = pooled_result(speaking_segments(tracks))
        if pooled is None:
            raise ScoreError("too_short", too_short_message(video, [s.num_frames for s in scored],
                                                            self.expert.config.window_frames,
                                                            self.config.max_offset, self.fps, seen["face_counts"],
                                                            seen["faces_followed"]))
        return VideoScore(video=str(video), fps=self.fps, frames=seen["frames"],
                          frames_with_face=seen["frames_with_face"], source_fps=seen["source_fps"],
                          source_sample_rate=seen["source_sample_rate"], segments=scored, tracks=tracks,
                          result=pooled, face_counts=seen["face_counts"], max_offset=self.config.max_offset,
                          window_frames=self.expert.config.window_frames)
