"""From a chunk's face crops, face tracks and audio to samples, one per continuous face segment.

The face stage's tracks (`FaceStage`, the same runs its landmarks were smoothed along, ended at shot cuts) are cut
into segments of at most the chunk's length and at least `min_segment_frames`; each becomes a sample of the shard format
(`pipelines.shards.format`: its faces, the log-mel of its (separated) voice, its json), and the chunk's samples
one tar. With it goes the chunk's record (`pipelines.shards.records`: sample summaries, frame counts, drops),
or, for the row that ends a video, the end record with the chunk count or the decoder's failure.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipelines.audio import AudioConfig, segment_mel, separate_voice
from pipelines.core.clock import EXPERT_CLOCK
from pipelines.decode import CONTEXT_FRAMES
from pipelines.faces.tracks import landmark_quality, split_and_filter
from pipelines.shots import shot_of
from pipelines.shards.format import JPEG_QUALITY, sample_key
from pipelines.shards.records import ChunkRecord, EndRecord, Failure, Record, batch_of, chunk_part


@dataclass(frozen=True)
class SampleConfig:
    separate: bool = field(default=True, metadata={"help": "separate the voice from background (REPET-SIM) before the mel"})
    min_segment_frames: int = field(default=EXPERT_CLOCK.window_frames, metadata={"help": "face segments shorter than this (one expert window) are dropped"})
    jpeg_quality: int = field(default=JPEG_QUALITY, metadata={"help": "JPEG quality of the stored face crops"})

    def __post_init__(self):
        if self.min_segment_frames < 1 or not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"--min-segment-frames must be at least 1 and --jpeg-quality in [1, 100], got "
                             f"{self.min_segment_frames} and {self.jpeg_quality}")


class SampleStage:
    def __init__(self, audio_config: AudioConfig, sample_config: SampleConfig):
        self.audio_config = audio_config
        self.config = sample_config

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return batch_of([self.chunk_samples({name: batch[name][i] for name in batch})
                         for i in range(len(batch["key"]))])

    def chunk_samples(self, row: dict) -> tuple[Record, bytes]:
        """One row's record and the tar bytes of its samples (b"" for none). A failure here or in an earlier stage
        (the row's `error`) is the record's: it fails the row's video, and the run goes on."""
        key, uri = str(row["key"]), str(row["uri"])
        failure = Failure(str(row["error"]), str(row["detail"])) if row["error"] else None
        if row["end"]:
            return EndRecord(key=key, uri=uri, chunks=int(row["chunk"]), failure=failure), b""
        if failure is None:
            try:
                return self.encode_chunk(row)
            except Exception as error:  # an unforeseen failure costs its video, not the run (as in decoding)
                failure = Failure("samples_error", f"{type(error).__name__}: {error}")
        return ChunkRecord(key=key, uri=uri, chunk=int(row["chunk"]), frames=len(row["faces"]), failure=failure), b""

    def encode_chunk(self, row: dict) -> tuple[ChunkRecord, bytes]:
        """A chunk's samples as one tar, and its record."""
        key, uri = str(row["key"]), str(row["uri"])
        # Tracks never outrun their chunk; a chunk's tail shorter than a window yields only a counted drop.
        tracks = [(int(start), int(end)) for start, end in row["tracks"]]
        longest = max(len(row["faces"]), self.config.min_segment_frames)
        segments, dropped = split_and_filter(tracks, self.config.min_segment_frames, longest)
        samples = []
        if segments:
            voice = separate_voice(row["audio"], self.audio_config) if self.config.separate else row["audio"]
            samples = [self.segment_sample(row, voice, begin, end) for begin, end in segments]
        part, summaries = chunk_part(samples, self.audio_config.clock, self.config.jpeg_quality)
        record = ChunkRecord(key=key, uri=uri, chunk=int(row["chunk"]), samples=summaries, frames=len(row["faces"]),
                             frames_with_face=int(np.isfinite(row["landmarks"][:, 0, 0]).sum()), dropped_short=dropped,
                             cuts=tuple(int(row["start_frame"]) + int(cut) for cut in row.get("cuts", ())))
        return record, part

    def segment_sample(self, row: dict, voice: np.ndarray, begin: int,
                       end: int) -> tuple[np.ndarray, np.ndarray, dict]:
        """Frames [begin, end) of the chunk as a sample: faces, mel, and what its json records of them."""
        start_frame = int(row["start_frame"]) + begin
        meta = {
            "key": sample_key(str(row["key"]), start_frame),
            "source": str(row["uri"]),
            "source_key": str(row["key"]),
            "start_frame": start_frame,
            "source_fps": float(row["source_fps"]),
            "source_sample_rate": int(row["source_rate"]),
            "speaker": str(row["speaker"]),
            "split": str(row["split"]),
            "aligner": str(row["aligner"]),
            "crop": str(row["crop"]),
            "shot": shot_of(begin, int(row.get("shot", 0)), row.get("cuts", ())),
            "separated": self.config.separate,
            "quality": landmark_quality(row["landmarks"][begin:end], row["scores"][begin:end]),
        }
        mel = self.segment_mel(voice, begin + CONTEXT_FRAMES, end + CONTEXT_FRAMES)
        return row["faces"][begin:end], mel, meta

    def segment_mel(self, audio: np.ndarray, begin: int, end: int) -> np.ndarray:
        """The mel of frames [begin, end) of `audio` (frame 0 at sample 0), column 0 at frame `begin`.

        Mel frames fall on video frames exactly only every `clock.aligned_frames` frames (5 at 25 fps and 80
        mel/s), so the STFT grid is anchored at the last such frame before `begin`: then every segment gets
        exactly clock.mel_column(T) columns and its column 0 lies at its first frame, wherever it starts.
        """
        clock = self.audio_config.clock
        origin = begin % clock.aligned_frames
        return segment_mel(audio[origin * clock.samples_per_frame:], begin - origin, end - origin, self.audio_config)
