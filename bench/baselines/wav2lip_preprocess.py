"""A reference preprocessor that works the way Wav2Lip's `preprocess.py` does, for benchmarks only.

    python -m bench.baselines.wav2lip_preprocess --input DIR_OR_MANIFEST --output DIR

Our own code, written to reproduce the research script's costs, not its source:

* every frame of a video is read into memory first, with `cv2.VideoCapture`, at the video's own frame rate
  (no resampling to 25 fps, no streaming: memory grows with the video's length);
* a face detector runs over all those frames in batches of 32 (the script's `--batch_size` default), on every
  frame (no tracking between detections). The detector is the one our pipeline ships offline (dlib's HOG, with
  our `DlibAligner.detect` settings), so both systems pay for the same detector and the comparison measures the
  pipeline around it. On a CPU the "batch" is a loop: HOG has no batched form;
* each detected face is cropped from its frame with the script's padding (10 px extra below, for the chin) and
  written as its own JPEG (OpenCV's default quality 95), `OUT/<folder>/<video>/<frame>.jpg`; frames without a
  face get no file;
* the audio track is written once per video as `OUT/<folder>/<video>/audio.wav`. The research script keeps the
  source rate and channels (an external ffmpeg call); here it is 16 kHz mono 16-bit, which is smaller, so the
  byte count favours the reference.

Sequential, one process: the research script's default of one GPU. (It can start one detector thread per
GPU with `--ngpu`; on a CPU that would be processes, which this reference does not model.)
"""

from __future__ import annotations

import json
import sys
import time
import wave
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

DETECT_BATCH = 32  # the research script's default detection batch
# (top, bottom, left, right) pixels added around a detected box: the script's default keeps the chin in.
CROP_PADS = (0, 10, 0, 0)
WAV_RATE = 16000  # the expert's audio rate; the research script keeps the source rate (larger files)


@dataclass(frozen=True)
class Wav2LipPreprocessConfig:
    input: str = field(metadata={"help": "folder of videos (recursive) or a manifest .jsonl with a path column"})
    output: Path = field(default=Path("runs/wav2lip_preprocessed"), metadata={
        "help": "folder for the JPEG folders and wavs"})
    batch_size: int = field(default=DETECT_BATCH, metadata={"help": "frames per detector batch"})


@dataclass
class VideoResult:
    """What one video cost and produced."""

    path: str
    frames: int  # frames read (native rate)
    faces: int  # frames with a detected face = JPEGs written
    jpeg_bytes: int
    wav_bytes: int
    error: str = ""  # the failure, when the video could not be read (the research script would skip it too)


class FaceDetector:
    """The pipeline's offline detector, one box per frame (the largest face), as the research script keeps
    the first (and, for talking heads, only) face it finds."""

    def __init__(self):
        from pipelines.faces.dlib_aligner import DlibAligner

        self._aligner = DlibAligner()

    def __call__(self, frames_bgr: list[np.ndarray]) -> list[tuple[int, int, int, int] | None]:
        """BGR frames -> (x1, y1, x2, y2) per frame, or None where no face is found."""
        boxes = []
        for frame in frames_bgr:
            found = self._aligner.detect(np.ascontiguousarray(frame[..., ::-1]))
            if found is None:
                boxes.append(None)
            else:
                rect = found[0]
                boxes.append((rect.left(), rect.top(), rect.right(), rect.bottom()))
        return boxes


def read_all_frames(path: Path) -> list[np.ndarray]:
    """Every frame of the video as BGR uint8, all held in memory, as the research script does."""
    capture = cv2.VideoCapture(str(path))
    frames = []
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            frames.append(frame)
    finally:
        capture.release()
    return frames


def detect_in_batches(detector, frames: list[np.ndarray], batch_size: int) -> list:
    boxes = []
    for start in range(0, len(frames), batch_size):
        boxes.extend(detector(frames[start:start + batch_size]))
    return boxes


def padded_crop(frame: np.ndarray, box: tuple[int, int, int, int], pads=CROP_PADS) -> np.ndarray:
    """The box grown by `pads` (top, bottom, left, right) and clipped to the frame."""
    top, bottom, left, right = pads
    height, width = frame.shape[:2]
    x1, y1 = max(0, box[0] - left), max(0, box[1] - top)
    x2, y2 = min(width, box[2] + right), min(height, box[3] + bottom)
    return frame[y1:y2, x1:x2]


def write_face_jpegs(frames: list[np.ndarray], boxes: list, folder: Path) -> tuple[int, int]:
    """One JPEG per frame with a face, named by frame index; returns (files, bytes)."""
    count = total = 0
    for index, (frame, box) in enumerate(zip(frames, boxes)):
        if box is None:
            continue
        crop = padded_crop(frame, box)
        if crop.size == 0:
            continue
        path = folder / f"{index}.jpg"
        if not cv2.imwrite(str(path), crop):
            raise OSError(f"could not write {path}")
        count += 1
        total += path.stat().st_size
    return count, total


def write_wav(video: Path, wav_path: Path, rate: int = WAV_RATE) -> int:
    """The video's audio as 16-bit mono PCM at `rate`; decoded in-process (no shell command built from a
    file name). Returns the bytes written."""
    from pipelines.audio import AudioConfig, prepare
    from pipelines.core.clock import EXPERT_CLOCK
    from pipelines.media import read_audio

    samples, source_rate = read_audio(video)
    mono = prepare(samples, source_rate, AudioConfig(clock=replace(EXPERT_CLOCK, sample_rate=rate)))
    pcm = (np.clip(mono, -1.0, 1.0) * 32767).astype("<i2")
    with wave.open(str(wav_path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm.tobytes())
    return wav_path.stat().st_size


@contextmanager
def cpu_timer(timings: dict[str, float] | None, step: str):
    """Adds this process's CPU seconds inside the block to `timings[step]` (a profile by step); no-op on None."""
    start = time.process_time()
    try:
        yield
    finally:
        if timings is not None:
            timings[step] = timings.get(step, 0.0) + time.process_time() - start


def output_folder(video: Path, root: Path) -> Path:
    """`root/<parent folder>/<video stem>`, the research script's layout."""
    return root / video.parent.name / video.stem


def preprocess_video(video: Path, root: Path, detector, batch_size: int = DETECT_BATCH,
                     timings: dict[str, float] | None = None) -> VideoResult:
    folder = output_folder(video, root)
    folder.mkdir(parents=True, exist_ok=True)
    with cpu_timer(timings, "read frames"):
        frames = read_all_frames(video)
    if not frames:
        return VideoResult(str(video), 0, 0, 0, 0, error="no frames decoded")
    with cpu_timer(timings, "detect"):
        boxes = detect_in_batches(detector, frames, batch_size)
    with cpu_timer(timings, "write jpegs"):
        faces, jpeg_bytes = write_face_jpegs(frames, boxes, folder)
    del frames  # the research script drops a video's frames only when it moves on to the next
    try:
        with cpu_timer(timings, "write wav"):
            wav_bytes = write_wav(video, folder / "audio.wav")
    except Exception as failure:  # noqa: BLE001 - the reference records and goes on, as the script does
        return VideoResult(str(video), len(boxes), faces, jpeg_bytes, 0, error=f"audio: {failure}")
    return VideoResult(str(video), len(boxes), faces, jpeg_bytes, wav_bytes)


def preprocess_videos(videos: list[Path], root: Path, batch_size: int = DETECT_BATCH,
                      timings: dict[str, float] | None = None) -> list[VideoResult]:
    detector = FaceDetector()
    return [preprocess_video(video, root, detector, batch_size, timings) for video in videos]


def list_videos(spec: str) -> list[Path]:
    """A folder's videos (recursive, sorted) or a manifest's `path` entries (relative to the manifest)."""
    from pipelines.sources import VIDEO_EXTENSIONS

    path = Path(spec)
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [path.parent / row["path"] for row in rows]
    return sorted(p for p in path.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS)


def main(argv: list[str] | None = None) -> int:
    from pipelines.core.cli import parse_config

    config = parse_config(Wav2LipPreprocessConfig, __doc__.split("\n")[0], argv)
    videos = list_videos(config.input)
    started = time.perf_counter()
    results = preprocess_videos(videos, config.output, config.batch_size)
    wall = time.perf_counter() - started
    written = sum(r.jpeg_bytes + r.wav_bytes for r in results)
    print(f"{len(results)} videos, {sum(r.frames for r in results)} frames, {sum(r.faces for r in results)} face "
          f"JPEGs, {written / 2 ** 20:.1f} MiB in {wall:.1f} s; failed: {sum(bool(r.error) for r in results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
