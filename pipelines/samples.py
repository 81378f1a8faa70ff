"""From a chunk's face crops and audio to WebDataset samples, one per continuous face segment.

A sample holds, under one key without dots:
    KEY.jpg       the segment's aligned faces, T crops stacked vertically in one JPEG ([T*S, S, 3])
    KEY.mel.npy   float32 [80, T * 16 / 5] log-mel of the (separated) voice, column j at time j / 80 s
    KEY.json      source, segment times, rates, speaker, split, aligner, landmark quality
One JPEG per segment rather than per frame: a loader decodes a whole segment in one call and draws many
windows from it; see bench/ for the bytes and decode cost of the alternatives.
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass, field

import numpy as np

from pipelines.audio import AudioConfig, segment_mel, separate_voice
from pipelines.core.clock import EXPERT_CLOCK
from pipelines.core.columns import object_column
from pipelines.shards.format import encode_faces
from pipelines.decode import CONTEXT_FRAMES
from pipelines.faces.tracks import face_tracks, landmark_quality, split_and_filter


@dataclass(frozen=True)
class SampleConfig:
    separate: bool = field(default=True, metadata={"help": "separate the voice from background (REPET-SIM) before the mel"})
    min_segment_frames: int = field(default=EXPERT_CLOCK.window_frames, metadata={"help": "face segments shorter than this (one expert window) are dropped"})
    jpeg_quality: int = field(default=95, metadata={"help": "JPEG quality of the stored face crops"})


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def tar_bytes(members: dict[str, bytes]) -> bytes:
    """A tar archive of the given members, with fixed metadata so equal content gives equal bytes."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class SampleStage:
    def __init__(self, audio_config: AudioConfig, sample_config: SampleConfig, max_center_jump: float):
        self.audio_config = audio_config
        self.config = sample_config
        self.max_center_jump = max_center_jump

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = [self.chunk_samples({name: batch[name][i] for name in batch}) for i in range(len(batch["key"]))]
        return {
            "key": batch["key"],
            "chunk": batch["chunk"],
            "end": batch["end"],
            "part": object_column([tar for tar, _ in rows]),
            "record": np.array([json.dumps(record, sort_keys=True) for _, record in rows]),
        }

    def chunk_samples(self, row: dict) -> tuple[bytes, dict]:
        """Encode one chunk's samples; return its tar bytes and its record (counts, drops, sample metadata)."""
        record = {"key": str(row["key"]), "uri": str(row["uri"]), "chunk": int(row["chunk"]),
                  "end": bool(row["end"]), "error": str(row["error"]), "detail": str(row["detail"]),
                  "frames": int(len(row["faces"])), "samples": [], "dropped_short": 0,
                  "frames_with_face": 0}
        if record["end"] or record["error"] or not len(row["faces"]):
            return b"", record
        landmarks = row["landmarks"]
        record["frames_with_face"] = int(np.isfinite(landmarks[:, 0, 0]).sum())
        tracks = face_tracks(landmarks, self.max_center_jump)
        # Tracks never outrun their chunk; a chunk's tail shorter than a window yields only a counted drop.
        longest = max(len(row["faces"]), self.config.min_segment_frames)
        segments, dropped = split_and_filter(tracks, self.config.min_segment_frames, longest)
        record["dropped_short"] = dropped
        if not segments:
            return b"", record
        voice = separate_voice(row["audio"], self.audio_config) if self.config.separate else row["audio"]
        members: dict[str, bytes] = {}
        start_frame = int(row["start_frame"])
        clock = self.audio_config.clock
        for begin, end in segments:
            key = f"{row['key']}_f{start_frame + begin:07d}"
            mel = self.segment_mel(voice, begin + CONTEXT_FRAMES, end + CONTEXT_FRAMES)
            meta = {
                "key": key,
                "source": str(row["uri"]),
                "source_key": str(row["key"]),
                "start_frame": start_frame + begin,
                "num_frames": end - begin,
                "start_s": clock.seconds(start_frame + begin),
                "end_s": clock.seconds(start_frame + end),
                "fps": clock.fps,
                "mel_fps": clock.mel_fps,
                "crop_size": int(row["faces"].shape[1]),
                "source_fps": float(row["source_fps"]),
                "source_sample_rate": int(row["source_rate"]),
                "speaker": str(row["speaker"]),
                "split": str(row["split"]),
                "aligner": str(row["aligner"]),
                "separated": self.config.separate,
                "quality": landmark_quality(landmarks[begin:end], row["scores"][begin:end]),
            }
            members[f"{key}.jpg"] = encode_faces(row["faces"][begin:end], self.config.jpeg_quality)
            members[f"{key}.mel.npy"] = npy_bytes(mel.astype(np.float32))
            members[f"{key}.json"] = json.dumps(meta, sort_keys=True).encode()
            record["samples"].append({k: meta[k] for k in ("key", "start_frame", "num_frames", "start_s", "end_s",
                                                            "speaker", "split", "aligner")})
        return tar_bytes(members), record


    def segment_mel(self, audio: np.ndarray, begin: int, end: int) -> np.ndarray:
        """The mel of frames [begin, end) of `audio` (frame 0 at sample 0), column 0 at frame `begin`.

        Mel frames fall on video frames exactly only every `clock.aligned_frames` frames (5 at 25 fps and 80
        mel/s), so the STFT grid is anchored at the last such frame before `begin`: then every segment gets
        exactly clock.mel_column(T) columns and its column 0 lies at its first frame, wherever it starts.
        """
        clock = self.audio_config.clock
        origin = begin % clock.aligned_frames
        return segment_mel(audio[origin * clock.samples_per_frame:], begin - origin, end - origin, self.audio_config)
