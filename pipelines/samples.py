"""From a chunk's face crops, face tracks and audio to samples, one per continuous face segment.

The face stage's tracks (`FaceStage`, the same runs its landmarks were smoothed along, ended at shot cuts) are cut
into segments of at most the chunk's length and at least `min_segment_frames`; each becomes a sample of the shard format
(`pipelines.shards.format`: its faces, the log-mel of its (separated) voice, its json), and the chunk's samples
one tar. Where the face stage followed several faces, each face's tracks give samples of their own, each
recording its face, track and box (`pipelines.shards.format.track_json`). With `speaker_expert` an expert judges
the segments that overlap in time (`model.sync.speaker`): only the one speaking is kept, or all of them, each
with its `sync_confidence` and whether it is `speaking`, with `keep_tracks all`. Without an expert every face's
segments are kept; with one face followed (`--max-faces 1`, the default) that is the largest face, as always.
With it goes the chunk's record (`pipelines.shards.records`: sample summaries, frame counts, drops),
or, for the row that ends a video, the end record with the chunk count or the decoder's failure.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipelines.audio import AudioConfig, segment_mel, separate_voice
from pipelines.core.clock import EXPERT_CLOCK
from pipelines.decode import CONTEXT_FRAMES
from pipelines.faces.tracks import landmark_quality, median_box, split_and_filter
from pipelines.shots import shot_of
from pipelines.shards.format import JPEG_QUALITY, sample_key, track_json
from pipelines.shards.records import ChunkRecord, EndRecord, Failure, Record, batch_of, chunk_part


KEEP_TRACKS = ("speaker", "all")


@dataclass(frozen=True)
class SampleConfig:
    separate: bool = field(default=True, metadata={"help": "separate the voice from background (REPET-SIM) before the mel"})
    min_segment_frames: int = field(default=EXPERT_CLOCK.window_frames, metadata={"help": "face segments shorter than this (one expert window) are dropped"})
    jpeg_quality: int = field(default=JPEG_QUALITY, metadata={"help": "JPEG quality of the stored face crops"})
    speaker_expert: str | None = field(default=None, metadata={
        "help": "checkpoint of a trained expert (aligned crops) that judges which of the faces in view speaks "
                "(with --max-faces above 1); without one, every followed face's segments are kept"})
    keep_tracks: str = field(default="speaker", metadata={
        "help": "with --speaker-expert: speaker = keep only the segment speaking among those overlapping in "
                "time; all = keep every one, tagged with its sync_confidence", "choices": KEEP_TRACKS})

    def __post_init__(self):
        if self.min_segment_frames < 1 or not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"--min-segment-frames must be at least 1 and --jpeg-quality in [1, 100], got "
                             f"{self.min_segment_frames} and {self.jpeg_quality}")
        if self.keep_tracks not in KEEP_TRACKS:
            raise ValueError(f"--keep-tracks must be one of {KEEP_TRACKS}, not {self.keep_tracks!r}")


class SampleStage:
    def __init__(self, audio_config: AudioConfig, sample_config: SampleConfig):
        self.audio_config = audio_config
        self.config = sample_config
        self.judge = None
        if sample_config.speaker_expert:
            from model.sync.speaker import SpeakerJudge  # only preprocessing that judges speakers needs torch's expert

            self.judge = SpeakerJudge(sample_config.speaker_expert)

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
        layers = int(row.get("faces_followed", 1))
        frames = len(row["faces"]) // layers
        # Tracks never outrun their chunk; a chunk's tail shorter than a window yields only a counted drop.
        tracks = [(int(track[0]), int(track[1]), int(track[2]) if len(track) > 2 else 0) for track in row["tracks"]]
        longest = max(frames, self.config.min_segment_frames)
        segments, dropped = [], 0
        for number, (start, end, layer) in enumerate(tracks):
            pieces, short = split_and_filter([(start, end)], self.config.min_segment_frames, longest)
            segments += [(begin, stop, layer, number) for begin, stop in pieces]
            dropped += short
        samples = []
        if segments:
            voice = separate_voice(row["audio"], self.audio_config) if self.config.separate else row["audio"]
            samples = [self.segment_sample(row, voice, *segment, frames) for segment in segments]
            if self.judge is not None:
                samples = self.judge_speakers(samples, [segment[:2] for segment in segments])
        part, summaries = chunk_part(samples, self.audio_config.clock, self.config.jpeg_quality)
        with_face = np.isfinite(row["landmarks"][:, 0, 0]).reshape(layers, frames).any(axis=0)
        record = ChunkRecord(key=key, uri=uri, chunk=int(row["chunk"]), samples=summaries, frames=frames,
                             frames_with_face=int(with_face.sum()), dropped_short=dropped,
                             cuts=tuple(int(row["start_frame"]) + int(cut) for cut in row.get("cuts", ())))
        return record, part

    def judge_speakers(self, samples: list, spans: list[tuple[int, int]]) -> list:
        """The samples kept once the expert has judged who speaks (module docstring), their json tagged."""
        from model.sync.speaker import speaking

        confidences = [self.judge.confidence(faces, mel) for faces, mel, _ in samples]
        kept = []
        for (faces, mel, meta), confidence, verdict in zip(samples, confidences, speaking(spans, confidences)):
            meta = dict(meta, sync_confidence=None if confidence is None else round(confidence, 4), speaking=verdict)
            if self.config.keep_tracks == "all" or verdict is not False:
                kept.append((faces, mel, meta))
        return kept

    def segment_sample(self, row: dict, voice: np.ndarray, begin: int, end: int, layer: int = 0, track: int = 0,
                       frames: int | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
        """Frames [begin, end) of the chunk, face `layer` (whose frames start at layer * `frames` in the face
        columns), as a sample: faces, mel, and what its json records of them."""
        start_frame = int(row["start_frame"]) + begin
        first = layer * (frames or 0) + begin
        rows = slice(first, first + end - begin)
        boxes = row.get("boxes")
        meta = {
            "key": sample_key(str(row["key"]), start_frame, layer),
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
            "quality": landmark_quality(row["landmarks"][rows], row["scores"][rows]),
            **track_json(layer, track, None if boxes is None else median_box(boxes[rows])),
        }
        mel = self.segment_mel(voice, begin + CONTEXT_FRAMES, end + CONTEXT_FRAMES)
        return row["faces"][rows], mel, meta

    def segment_mel(self, audio: np.ndarray, begin: int, end: int) -> np.ndarray:
        """The mel of frames [begin, end) of `audio` (frame 0 at sample 0), column 0 at frame `begin`.

        Mel frames fall on video frames exactly only every `clock.aligned_frames` frames (5 at 25 fps and 80
        mel/s), so the STFT grid is anchored at the last such frame before `begin`: then every segment gets
        exactly clock.mel_column(T) columns and its column 0 lies at its first frame, wherever it starts.
        """
        clock = self.audio_config.clock
        origin = begin % clock.aligned_frames
        return segment_mel(audio[origin * clock.samples_per_frame:], begin - origin, end - origin, self.audio_config)
