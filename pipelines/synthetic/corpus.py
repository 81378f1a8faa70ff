"""Planning and writing the synthetic corpus.

Every video is a pure function of (seed, index): its plan, speech, face, motion and noise all come from a
random generator seeded by both, so a corpus is reproducible, videos can be made in any order on any number of
processes, and a rerun skips the files that already exist.

Layout of `--out DIR`:
    DIR/videos/vidNNNNN.<ext>   in sync (offset 0): training material, plus the broken inputs of --corrupt
    DIR/heldout/vidNNNNN.<ext>  audio shifted by a known offset in [-max, +max] frames, unseen speakers
    DIR/manifest.jsonl          one JSON object per file, sorted by key (fields: `manifest_entry`)

With --splice K, K in-sync videos are two shots: mid-speech the picture cuts to another face on another
backdrop, framed the same (the head keeps its place and motion, the lips keep following the speech), so that
a face track would run across the cut. The manifest's `cuts_s` gives the time of the first frame of the
second shot.

Offsets are in frames of the expert's 25 fps clock (40 ms each) whatever the clip's own frame rate; positive
means the audio is late (the sound of a phoneme comes after the lips make it).
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

import numpy as np

from pipelines.core.clock import EXPERT_CLOCK
from pipelines.core.storage import StorageConfig, write_bytes_atomic
from pipelines.synthetic import background, corrupt, photo_face
from pipelines.synthetic.container import CONTAINERS, write_clip
from pipelines.synthetic.face import FaceRenderer, HeadPose, Identity, random_identity
from pipelines.synthetic.speech import Speech, Voice, synthesize, voice_variants
from pipelines.synthetic.text import random_sentences
from pipelines.synthetic.visemes import mouth_track

SPEECH_RATE = 22050  # espeak-ng's native rate; everything is mixed here, then resampled to the clip's rate

# Cycles of coprime lengths: any run of a few dozen consecutive videos covers every rate, container and
# their combinations, which random draws would not guarantee for the small corpora tests use.
# VFR sits where it meets "avi" (which cannot hold it) only at video 26, so small corpora get both.
FPS_CYCLE: tuple[Fraction | None, ...] = (Fraction(25), Fraction(30000, 1001), None, Fraction(24000, 1001),
                                          Fraction(30), Fraction(25))  # None: variable frame rate
RATE_CYCLE = (16000, 44100, 48000, 22050, 8000)
CONTAINER_CYCLE = ("mp4", "mp4", "mkv", "mp4", "mov", "avi", "mp4")
FRAME_SIZES = ((256, 256), (320, 240), (360, 360), (384, 288), (480, 360), (360, 480))
VFR_CONTAINERS = ("mp4", "mkv", "mov")  # AVI has no per-frame timestamps
# espeak-ng variants that sound like plain speakers: the others add echo that rings into pauses, whisper, or
# distort the voice on purpose.
VOICE_VARIANTS = ("", "m1", "m3", "m4", "m5", "m6", "m7", "f1", "klatt", "klatt2", "klatt3", "Andy", "Annie",
                  "Michael", "Mike", "Lee", "adam", "david", "john", "linda", "paul", "robert", "steph", "travis")


@dataclass(frozen=True)
class SyntheticConfig:
    out: Path = field(metadata={"help": "output folder (created); videos, heldout/ and manifest.jsonl go here"})
    num_videos: int = field(default=100, metadata={"help": "number of good videos (in sync plus held out)"})
    seed: int = field(default=0, metadata={"help": "the corpus is a pure function of this seed"})
    corrupt: int = field(default=0, metadata={"help": f"broken inputs to add, cycling through {corrupt.KINDS}"})
    heldout_fraction: float = field(default=0.2, metadata={
        "help": "share of videos, on their own speakers, whose audio is shifted by a known offset"})
    max_offset_frames: int = field(default=15, metadata={"help": "held-out offsets spread over [-max, +max] frames at 25 fps"})
    min_seconds: float = field(default=3.0, metadata={"help": "shortest video"})
    max_seconds: float = field(default=20.0, metadata={"help": "longest video"})
    background_fraction: float = field(default=0.3, metadata={"help": "share of videos with music or noise under the speech"})
    videos_per_speaker: int = field(default=3, metadata={"help": "videos that share one face and voice"})
    workers: int = field(default=os.cpu_count() or 1, metadata={"help": "parallel processes"})
    faces: str = field(default="drawn", metadata={
        "help": "drawn: painted faces (face.py); photo: real photographs with the mouth moved to the speech "
                "(photo_face.py)", "choices": ["drawn", "photo"]})
    face_sources: Path | None = field(default=None, metadata={
        "help": "with --faces photo: a folder of face images or clips to take identities from (read when the "
                "corpus is made); default skimage's astronaut photo"})
    splice: int = field(default=0, metadata={"help": "in-sync videos that cut mid-speech to another face and backdrop, framed the same"})

    def __post_init__(self):
        problems = []
        if self.num_videos < 1:
            problems.append("--num-videos must be at least 1")
        if not 0 <= self.heldout_fraction <= 1:
            problems.append("--heldout-fraction must lie in [0, 1]")
        if not 0 < self.min_seconds <= self.max_seconds:
            problems.append("need 0 < --min-seconds <= --max-seconds")
        if self.min_seconds < 2 * self.margin_s + 1.0:
            problems.append(f"--min-seconds must leave room for speech: at least {2 * self.margin_s + 1.0:.1f} s "
                            f"with --max-offset-frames {self.max_offset_frames}")
        if self.face_sources is not None and self.faces != "photo":
            problems.append("--face-sources needs --faces photo")
        if self.corrupt < 0 or self.workers < 1 or self.videos_per_speaker < 1:
            problems.append("--corrupt >= 0, --workers >= 1 and --videos-per-speaker >= 1")
        if not 0 <= self.splice <= self.num_videos - round(self.num_videos * self.heldout_fraction):
            problems.append("--splice must lie between 0 and the number of in-sync videos")
        if problems:
            raise ValueError("invalid synthetic corpus config: " + "; ".join(problems))

    @property
    def margin_s(self) -> float:
        """Silence before and after the speech, long enough that no offset pushes speech out of the clip."""
        return self.max_offset_frames / EXPERT_CLOCK.fps + 0.1


@dataclass(frozen=True)
class VideoPlan:
    index: int
    key: str
    subset: str  # "train" (in sync) or "heldout" (shifted, unseen speakers)
    speaker: int
    offset_frames: int
    fps: Fraction | None  # None: variable frame rate
    sample_rate: int
    channels: int
    container: str
    frame_size: tuple[int, int]
    seconds: float
    background: str
    corrupt: str | None = None  # which broken input this is, if any
    splice_at: float | None = None  # where in the clip (share of its length) the second shot begins, if any

    @property
    def relative_path(self) -> str:
        folder = "heldout" if self.subset == "heldout" else "videos"
        return f"{folder}/{self.key}.{self.container}"


def plan_corpus(config: SyntheticConfig) -> list[VideoPlan]:
    rng = np.random.default_rng([config.seed, 0])
    count = config.num_videos
    heldout = set(rng.permutation(count)[: round(count * config.heldout_fraction)].tolist())
    # Held-out offsets are spread evenly over the range, then shuffled: every offset size gets tested.
    offsets = iter(rng.permutation(np.round(np.linspace(-config.max_offset_frames, config.max_offset_frames,
                                                         len(heldout))).astype(int)).tolist())
    # Speakers are numbered train first, then held out, so the two sets never share a face or a voice.
    train_rank = {i: rank for rank, i in enumerate(i for i in range(count) if i not in heldout)}
    heldout_rank = {i: rank for rank, i in enumerate(sorted(heldout))}
    train_speakers = math.ceil(len(train_rank) / config.videos_per_speaker)
    spliced = set(sorted(train_rank)[:config.splice])
    plans = []
    for index in range(count + config.corrupt):
        video_rng = np.random.default_rng([config.seed, 1, index])
        is_heldout = index in heldout
        if index >= count:  # broken inputs live among the training videos, where a pipeline meets them
            speaker = int(video_rng.integers(max(train_speakers, 1)))
        elif is_heldout:
            speaker = train_speakers + heldout_rank[index] // config.videos_per_speaker
        else:
            speaker = train_rank[index] // config.videos_per_speaker
        fps = FPS_CYCLE[index % len(FPS_CYCLE)]
        container = CONTAINER_CYCLE[index % len(CONTAINER_CYCLE)]
        if fps is None and container not in VFR_CONTAINERS:
            container = "mkv"
        sample_rate = RATE_CYCLE[index % len(RATE_CYCLE)]
        if CONTAINERS[container].audio_rates and sample_rate not in CONTAINERS[container].audio_rates:
            container = "mp4"
        is_corrupt = index >= count
        plans.append(VideoPlan(
            index=index,
            key=f"vid{index:05d}",
            subset="heldout" if is_heldout else "train",
            speaker=speaker,
            offset_frames=next(offsets) if is_heldout else 0,
            fps=fps,
            sample_rate=sample_rate,
            channels=int(video_rng.choice([1, 2])),
            container="mp4" if is_corrupt else container,
            frame_size=FRAME_SIZES[int(video_rng.integers(len(FRAME_SIZES)))],
            seconds=float(video_rng.uniform(config.min_seconds, config.max_seconds)),
            background=str(video_rng.choice(["music", "noise"])) if video_rng.random() < config.background_fraction
            else "none",
            corrupt=corrupt.KINDS[(index - count) % len(corrupt.KINDS)] if is_corrupt else None,
            # Its own generator, so that a corpus without splices stays the same draw for draw.
            splice_at=float(np.random.default_rng([config.seed, 4, index]).uniform(0.4, 0.6))
            if index in spliced else None,
        ))
    return plans


@dataclass(frozen=True)
class Speaker:
    identity: Identity
    voice: Voice
    articulation: float  # how wide this speaker opens the mouth


def make_speaker(seed: int, speaker: int) -> Speaker:
    rng = np.random.default_rng([seed, 2, speaker])
    variants = [v for v in VOICE_VARIANTS if not v or v in voice_variants()]
    return Speaker(
        identity=random_identity(rng),
        voice=Voice(variant=str(rng.choice(variants)),
                    words_per_minute=int(rng.integers(140, 191)),
                    pitch=int(rng.integers(30, 71)),
                    pitch_range=int(rng.integers(30, 71))),
        articulation=float(rng.uniform(0.8, 1.1)),
    )


class HeadMotion:
    """Small, smooth head motion: roll, zoom and drift as sums of slow sinusoids."""

    def __init__(self, rng: np.random.Generator, frame_size: tuple[int, int]):
        width, height = frame_size
        self.base_scale = min(width, height) / 256 * rng.uniform(0.72, 0.9)
        self.base_center = (width / 2 + rng.uniform(-0.05, 0.05) * width, height / 2 + rng.uniform(-0.03, 0.03) * height)
        self.frame_size = frame_size
        self.frequencies = rng.uniform(0.1, 0.6, size=(4, 2))
        self.phases = rng.uniform(0, 2 * np.pi, size=(4, 2))
        self.amplitudes = np.array([rng.uniform(1, 6), rng.uniform(0.02, 0.06),
                                    rng.uniform(0.01, 0.04) * width, rng.uniform(0.01, 0.03) * height])

    def at(self, t: float) -> HeadPose:
        waves = np.sin(2 * np.pi * self.frequencies * t + self.phases).mean(axis=1) * self.amplitudes
        return HeadPose(angle_deg=float(waves[0]), scale=float(self.base_scale * (1 + waves[1])),
                        center=(self.base_center[0] + float(waves[2]), self.base_center[1] + float(waves[3])))


def frame_times(fps: Fraction | None, seconds: float, rng: np.random.Generator) -> np.ndarray:
    if fps is not None:
        return np.arange(int(seconds * fps)) / float(fps)
    # Variable frame rate as phones record it: frame durations wander between 20 and 50 ms.
    durations = rng.uniform(0.02, 0.05, size=int(seconds / 0.02) + 1)
    times = np.round(np.concatenate([[0.0], np.cumsum(durations)]), 3)
    return times[times < seconds]


def speak(plan: VideoPlan, speaker: Speaker, margin_s: float, min_seconds: float, max_seconds: float,
          rng: np.random.Generator) -> tuple[Speech, float]:
    """Speech that fits the planned duration between two margins of silence; returns it and the clip length."""
    target = plan.seconds - 2 * margin_s
    for _ in range(4):
        text = random_sentences(rng, max(target, 0.5), speaker.voice.words_per_minute)
        speech = synthesize(text, speaker.voice)
        spoken = len(speech.samples) / speech.sample_rate
        if spoken + 2 * margin_s <= max_seconds:
            break
        target *= 0.8 * (max_seconds - 2 * margin_s) / spoken
    seconds = min(max(spoken + 2 * margin_s, min_seconds), max_seconds)
    return speech, seconds


def soundtrack(speech: Speech, plan: VideoPlan, speech_start_s: float, seconds: float,
               rng: np.random.Generator) -> np.ndarray:
    """The clip's audio, float32 [channels, samples] at the plan's rate, speech placed late by the offset."""
    import soxr

    track = np.zeros(int(round(seconds * SPEECH_RATE)), np.float32)
    start = int(round((speech_start_s + plan.offset_frames / EXPERT_CLOCK.fps) * SPEECH_RATE))
    samples = speech.samples[: max(len(track) - start, 0)]
    track[start:start + len(samples)] = samples
    if plan.background != "none":
        bed = getattr(background, plan.background)(rng, len(track), SPEECH_RATE)
        track = background.mix(track, bed, snr_db=rng.uniform(5, 15))
    track = soxr.resample(track, SPEECH_RATE, plan.sample_rate).astype(np.float32)
    track *= rng.uniform(0.3, 0.9) / max(np.abs(track).max(), 1e-6)
    if plan.channels == 1:
        return track[None]
    return np.stack([track, track * rng.uniform(0.8, 1.0)])


def generate_video(plan: VideoPlan, config: SyntheticConfig) -> dict:
    """Write one clip (unless it already exists) and return its manifest entry."""
    import cv2

    cv2.setNumThreads(1)  # parallelism is across videos; threads inside would oversubscribe the cores
    rng = np.random.default_rng([config.seed, 3, plan.index])
    speaker = make_speaker(config.seed, plan.speaker)
    speech, seconds = speak(plan, speaker, config.margin_s, config.min_seconds, config.max_seconds, rng)
    speech_start = config.margin_s
    track = mouth_track(speech.phonemes, speech_start, speaker.articulation, rng)
    audio = soundtrack(speech, plan, speech_start, seconds, rng)
    times = frame_times(plan.fps, seconds, rng)
    renderer = make_renderer(config, plan, speaker)
    motion = HeadMotion(rng, plan.frame_size)
    sigma = rng.uniform(0.5, 3.0)
    width, height = plan.frame_size
    noise_bank = [rng.normal(0, sigma, (height, width, 3)).astype(np.float32) for _ in range(6)]

    cuts_s = splice_times(plan, times, seconds)
    # The second shot: a face of no speaker of the corpus, before its own backdrop.
    second = (FaceRenderer(random_identity(np.random.default_rng([config.seed, 5, plan.index])), plan.frame_size)
              if cuts_s else None)

    path = config.out / plan.relative_path
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        if plan.corrupt:
            corrupt.write_broken(path, plan.corrupt, renderer, motion, track, times, audio, plan)
        else:
            frames = ((second if cuts_s and t >= cuts_s[0] else renderer).render(
                motion.at(t), track.at(t), noise_bank[k % len(noise_bank)]) for k, t in enumerate(times))
            write_clip(path, frames, times, audio, plan.sample_rate, CONTAINERS[plan.container],
                       fps=plan.fps or Fraction(round(len(times) / seconds * 1000), 1000))
    return manifest_entry(plan, speaker, speech, speech_start, seconds, times, cuts_s)


def splice_times(plan: VideoPlan, times: np.ndarray, seconds: float) -> list[float]:
    """When the spliced second shot begins: the time of its first frame ([] for a single shot)."""
    if plan.splice_at is None:
        return []
    return [float(times[np.searchsorted(times, plan.splice_at * seconds)])]


def make_renderer(config: SyntheticConfig, plan: VideoPlan, speaker: Speaker):
    """The drawn face of the speaker, or with `--faces photo` a photo identity filmed by this clip's camera.

    The photo look and the camera come from their own random streams, so a photo corpus has the same speech,
    timing and head motion as the drawn corpus of the same seed: the two differ only in the faces.
    """
    if config.faces == "drawn":
        return FaceRenderer(speaker.identity, plan.frame_size)
    camera = photo_face.random_camera(np.random.default_rng([config.seed, 5, plan.index]))
    return photo_face.PhotoFaceRenderer(_photo_identity(config.seed, plan.speaker, config.face_sources),
                                        plan.frame_size, camera)


@lru_cache(maxsize=4)
def _photo_identity(seed: int, speaker: int, face_sources: Path | None) -> photo_face.PhotoIdentity:
    sources = photo_face.identity_sources(face_sources)
    rng = np.random.default_rng([seed, 4, speaker])
    first = int(rng.integers(len(sources)))
    # A source without a usable face (reported once by `generate_corpus`) passes its speakers to the next one.
    for source in sources[first:] + sources[:first]:
        try:
            return photo_face.photo_identity(source, rng)
        except photo_face.NoFaceError:
            continue
    raise photo_face.NoFaceError(f"{face_sources}: no face source has a face the offline aligner finds")


def check_face_sources(config: SyntheticConfig) -> list[str]:
    """Problems with the photo identities' sources, one line each; raises when none is usable."""
    problems = []
    sources = photo_face.identity_sources(config.face_sources)
    for source in sources:
        try:
            photo_face.source_still(source)
        except photo_face.NoFaceError as error:
            problems.append(f"face source skipped: {error}")
    if len(problems) == len(sources):
        raise photo_face.NoFaceError("no usable face source:\n" + "\n".join(problems))
    return problems


def manifest_entry(plan: VideoPlan, speaker: Speaker, speech: Speech, speech_start: float, seconds: float,
                   times: np.ndarray, cuts_s: list[float]) -> dict:
    spec = CONTAINERS[plan.container]
    return {
        "key": plan.key,
        "path": plan.relative_path,
        "subset": plan.subset,
        "speaker": f"spk{plan.speaker:04d}",
        "offset_frames": plan.offset_frames,
        "offset_s": plan.offset_frames / EXPERT_CLOCK.fps,
        "fps": round(len(times) / seconds, 4) if plan.fps is None else float(plan.fps),
        "fps_exact": None if plan.fps is None else f"{plan.fps.numerator}/{plan.fps.denominator}",
        "variable_frame_rate": plan.fps is None,
        "frame_count": len(times),
        "duration_s": round(seconds, 4),
        "width": plan.frame_size[0],
        "height": plan.frame_size[1],
        "sample_rate": plan.sample_rate,
        "channels": plan.channels,
        "container": plan.container,
        "video_codec": spec.video_codec,
        "audio_codec": spec.audio_codec,
        "background": plan.background,
        "voice": asdict(speaker.voice),
        "transcript": speech.text,
        # Phonemes on the lips' clock (video time); on the audio track each is offset_s later.
        "speech_start_s": speech_start,
        "phonemes": [[p.symbol, round(speech_start + p.start_s, 4), round(speech_start + p.end_s, 4)]
                     for p in speech.phonemes],
        "corrupt": plan.corrupt,
        "expected_error": corrupt.EXPECTED_REASON.get(plan.corrupt),
        "cuts_s": [round(cut, 4) for cut in cuts_s],  # where a new shot begins (its first frame's time)
    }


def _generate(job: tuple[VideoPlan, SyntheticConfig]) -> dict:
    return generate_video(*job)


def generate_corpus(config: SyntheticConfig, progress: bool = True) -> list[dict]:
    """Make every planned video with `config.workers` processes and write the manifest; returns its rows."""
    from tqdm import tqdm

    config.out.mkdir(parents=True, exist_ok=True)
    claim_folder(config)
    if config.faces == "photo":
        for problem in check_face_sources(config):
            print(problem)
    plans = plan_corpus(config)
    jobs = [(plan, config) for plan in plans]
    bar = tqdm(total=len(jobs), unit="video", desc="synthetic corpus", disable=not progress)
    if config.workers == 1:
        rows = []
        for job in jobs:
            rows.append(_generate(job))
            bar.update()
    else:
        # spawn, not fork: the speech engine and codecs hold process-wide state that must start clean.
        with multiprocessing.get_context("spawn").Pool(config.workers) as pool:
            rows = []
            for row in pool.imap_unordered(_generate, jobs):
                rows.append(row)
                bar.update()
    bar.close()
    rows.sort(key=lambda row: row["key"])
    write_manifest(config.out / "manifest.jsonl", rows)
    return rows


def claim_folder(config: SyntheticConfig) -> None:
    """Record the settings a corpus folder is made with, and refuse to add to one made with others.

    Existing files are kept on a rerun (they are deterministic); with other settings the same file names
    would hold other content than the new manifest says, and the ground truth would silently be wrong.
    """
    settings = {k: str(v) for k, v in asdict(config).items() if k not in ("out", "workers")}
    record = config.out / "generator.json"
    if record.exists() and json.loads(record.read_text()) != settings:
        raise ValueError(f"{config.out} was generated with other settings ({record}); "
                         f"use another --out or delete that folder")
    record.write_text(json.dumps(settings, indent=1, sort_keys=True))


def write_manifest(path: Path, rows: list[dict]) -> None:
    text = "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows)
    write_bytes_atomic(str(path), text.encode(), StorageConfig())


def read_manifest(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def summarize(rows: list[dict], wall_s: float) -> str:
    good = [r for r in rows if not r["corrupt"]]
    hours = sum(r["duration_s"] for r in good) / 3600
    lines = [
        f"{len(good)} videos ({Counter(r['subset'] for r in good)['heldout']} held out with shifted audio), "
        f"{len(rows) - len(good)} broken inputs, {hours * 60:.1f} min of video in {wall_s:.1f} s "
        f"({hours * 3600 / max(wall_s, 1e-9):.1f} video-s/s)",
        "  speakers:      " + str(len({r['speaker'] for r in good})),
        "  frame rates:   " + _counts("VFR" if r["variable_frame_rate"] else r["fps_exact"] for r in good),
        "  sample rates:  " + _counts(r["sample_rate"] for r in good),
        "  channels:      " + _counts(r["channels"] for r in good),
        "  containers:    " + _counts(r["container"] for r in good),
        "  background:    " + _counts(r["background"] for r in good),
        "  held-out offsets: " + " ".join(str(r["offset_frames"]) for r in good if r["subset"] == "heldout"),
    ]
    spliced = [r for r in good if r.get("cuts_s")]
    if spliced:
        lines.append(f"  spliced (two shots): {len(spliced)}")
    if len(rows) > len(good):
        lines.append("  broken inputs: " + _counts(r["corrupt"] for r in rows if r["corrupt"]))
    return "\n".join(lines)


def _counts(values) -> str:
    return ", ".join(f"{value}: {count}" for value, count in sorted(Counter(values).items(), key=lambda kv: str(kv[0])))
