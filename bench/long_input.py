"""One long input for the memory bench: synthetic clips played one after another, as one mp4 of any length.

H.264 at 25 fps, square frames of `size` px, AAC at 48 kHz stereo: the rate and layout whose native samples a
whole-file audio decoder holds at their largest (1.4 GB of float32 per hour). The file is written a clip at a
time from the clips decoded once (all of their frames in memory: keep them few and short) and atomically; an hour
at 256 px takes ~70 MB of disk.
"""

from __future__ import annotations

import itertools
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import soxr

from pipelines.audio_encoding import add_audio_stream, to_sample_format
from pipelines.core.clock import EXPERT_CLOCK
from pipelines.core.storage import atomic_local_path
from pipelines.decode import resample_indices
from pipelines.media import iter_frames, probe, read_audio

FPS = EXPERT_CLOCK.fps  # the long input is made on the expert's clock, so no frame is resampled
AUDIO_RATE = 48_000
SAMPLES_PER_FRAME = AUDIO_RATE // FPS


def write_long_input(path: Path, clips: list[Path], seconds: float, size: int = 256, face_every: int = 1) -> float:
    """Write `path`: `clips` in turn, cycling, until `seconds` of video; returns its length in seconds.

    Only every `face_every`-th clip shows its picture; the others keep their sound under a grey picture, so that an
    hour costs the face and sample stages a fraction of an hour's work (a grey frame has no face to align).
    """
    total = round(seconds * FPS)
    with atomic_local_path(Path(path)) as partial, av.open(str(partial), "w", format="mp4") as out:
        video = out.add_stream("libx264", rate=FPS, options={"preset": "ultrafast", "crf": "28"})
        video.width = video.height = size
        video.pix_fmt = "yuv420p"
        video.codec_context.time_base = Fraction(1, FPS)
        audio = add_audio_stream(out, "aac", AUDIO_RATE, 2)
        out.start_encoding()
        block = audio.codec_context.frame_size
        pending = np.zeros((2, 0), np.float32)  # audio not yet a whole encoder frame
        frames = audio_samples = 0
        for turn, (images, sound) in enumerate(itertools.cycle([_clip_on_the_grid(clip, size) for clip in clips])):
            if frames >= total:
                break
            images = images[:total - frames]
            if turn % face_every:
                images = [np.full_like(images[0], 128)] * len(images)
            sound = sound[:, :len(images) * SAMPLES_PER_FRAME]
            for image in images:
                picture = av.VideoFrame.from_ndarray(image, format="rgb24")
                picture.pts, picture.time_base = frames, Fraction(1, FPS)
                out.mux(video.encode(picture))
                frames += 1
            pending = np.concatenate([pending, sound], axis=1)
            whole = pending.shape[1] // block * block
            for start in range(0, whole, block):
                out.mux(audio.encode(_audio_frame(pending[:, start:start + block], audio, audio_samples)))
                audio_samples += block
            pending = pending[:, whole:]
        if pending.shape[1]:
            out.mux(audio.encode(_audio_frame(pending, audio, audio_samples)))
        for stream in (video, audio):
            out.mux(stream.encode(None))
    return frames / FPS


def _clip_on_the_grid(clip: Path, size: int) -> tuple[list[np.ndarray], np.ndarray]:
    """A clip's frames at 25 fps (nearest by time), `size` px square, and exactly their span of its audio at
    48 kHz stereo."""
    info = probe(clip)
    picks = resample_indices(info.frame_times, FPS, info.duration_s)
    wanted = set(picks.tolist())
    decoded = {i: cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
               for i, (_, image) in enumerate(iter_frames(clip)) if i in wanted}
    images = [decoded[min(int(i), max(decoded))] for i in picks]
    samples, rate = read_audio(clip)
    mono = soxr.resample(samples.mean(axis=0), rate, AUDIO_RATE).astype(np.float32)
    span = np.zeros(len(images) * SAMPLES_PER_FRAME, np.float32)
    span[:min(len(mono), len(span))] = mono[:len(span)]
    return images, np.stack([span, 0.8 * span])


def _audio_frame(samples: np.ndarray, stream: av.AudioStream, pts: int) -> av.AudioFrame:
    data = to_sample_format(samples, stream.codec_context.format.name)
    frame = av.AudioFrame.from_ndarray(data, format=stream.codec_context.format.name, layout="stereo")
    frame.sample_rate, frame.pts, frame.time_base = AUDIO_RATE, pts, Fraction(1, AUDIO_RATE)
    return frame
