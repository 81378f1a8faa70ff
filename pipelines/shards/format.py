"""The shard format, in one place: file names, sample members, their codecs and the sample json's keys.

An output folder (local or s3://) holds

    shard-NNNNNN.tar     WebDataset samples: per face segment KEY.jpg, KEY.mel.npy and KEY.json (below)
    shard-NNNNNN.json    the shard's stats: sample count, and per video its verdict, sample summaries and
                         "cuts" (the frames that start a new shot, on the expert's clock; absent: none found)
    index.parquet        one row per sample and per failed video, rebuilt from the stats
    _parts/VIDEO/        work in progress of the part writer: cNNNNN.tar + cNNNNN.json per chunk, end.json

A sample is three members under one KEY (letters, digits, "_" and "-": WebDataset splits a member name at its
first dot, and keys name folders):

    KEY.jpg       uint8 [T, S, S, 3] RGB face crops stacked vertically in one JPEG ([T*S, S, 3]); one JPEG per
                  segment, not per frame: a loader decodes a segment in one call (bench/face_encoding.py)
    KEY.mel.npy   float32 [80, clock.mel_column(T)] log-mel, column 0 at the first frame; never a pickle
    KEY.json      key, source, source_key, speaker, split, aligner, start_frame, num_frames, start_s, end_s,
                  fps, mel_fps, crop_size (`sample_members` derives the last six), what the producer adds
                  (preprocessing: source_fps, source_sample_rate, separated, quality, crop, shot, face, track,
                  box; curation: realigned, sync_offset_frames, sync_confidence) and, since format 1, "format":
                  FORMAT_VERSION and "clock": {fps, sample_rate, hop_length}. "shot" is the index (from 0) of the
                  camera shot of the video the sample lies in: no sample spans a cut (`pipelines.shots`);
                  `sample_shot` reads it (0 for samples without it)

Several faces in view (`--max-faces`): a sample is one face's, and records its face track: "face" (0 = the first
followed, also in its key, `sample_key`), "track" (the track's number within its chunk), "box" (its median
detector box, x1, y1, x2, y2 as fractions of the frame's width and height), and where an expert judged who speaks,
"sync_confidence" and "speaking" (`SPEAKER_KEYS`). Samples without them are a single face's: face 0, track 0
(`sample_track`).

Samples without "format" are version 0: they record only fps and mel_fps, and were all written at 16 kHz
(`sample_clock`). Kept free of heavy imports: the training loader needs this and nothing else of preprocessing.
"""

from __future__ import annotations

import io
import json
import re
import tarfile

import cv2
import numpy as np

from pipelines.core.clock import Clock
from pipelines.core.storage import join

FORMAT_VERSION = 1
V0_SAMPLE_RATE = 16000  # the rate every sample without a format version was written at

FACES, MEL, META = "jpg", "mel.npy", "json"
MEMBERS = frozenset({FACES, MEL, META})
JPEG_QUALITY = 95

# The json fields a reader relies on, with their types; a sample lacking one is damaged.
META_TYPES = {"split": str, "source_key": str, "speaker": str, "crop_size": int, "num_frames": int,
              "fps": (int, float), "mel_fps": (int, float)}
# Fields samples of earlier versions lack, with their types where present.
OPTIONAL_META_TYPES = {"shot": int}

# A shard is a USTAR tar, whose member name field holds tarfile.LENGTH_NAME (100) bytes; the 155-byte prefix field
# takes only what precedes a "/", and member names have none. The longest name a sample gets is its video's key,
# the sample's suffix (`sample_key`) and the longest extension: video keys are cut to fit (pipelines.sources).
MAX_VIDEO_KEY_CHARS = tarfile.LENGTH_NAME - len("_f0000000") - len("." + max(MEMBERS, key=len))

PARTS = "_parts"
INDEX_FILE = "index.parquet"
END_PART = "end.json"
_SHARD = re.compile(r"(^|/)shard-(\d{6})\.(tar|json)$")
_KEY = re.compile(r"[A-Za-z0-9_-]+")


# --- paths ---------------------------------------------------------------------------------------------

# One letter per face followed at once (`pipelines.faces.base.MAX_FACES`): "f" for the first, which every sample
# written before several faces were followed has, then "g", "h", ...; one letter keeps a key the length that
# MAX_VIDEO_KEY_CHARS was sized for.
FACE_LETTERS = "fghijklm"


def sample_key(video_key: str, start_frame: int, face: int = 0) -> str:
    """The key of a video's sample of face `face` (0: the first followed) that starts at `start_frame` (7 digits:
    over 110 hours at 25 fps)."""
    return f"{video_key}_{FACE_LETTERS[face]}{start_frame:07d}"


def is_safe_key(key: str) -> bool:
    """Whether `key` may name a sample or a video: no dots, no slashes, so it can pick no other path."""
    return isinstance(key, str) and _KEY.fullmatch(key) is not None


def _checked(key: str) -> str:
    if not is_safe_key(key):
        raise ValueError(f"{key!r} is not a key: only letters, digits, '_' and '-'")
    return key


def shard_file(output: str, number: int) -> str:
    return join(output, shard_name(number, "tar"))


def stats_file(output: str, number: int) -> str:
    return join(output, shard_name(number, "json"))


def shard_name(number: int, ext: str) -> str:
    return f"shard-{number:06d}.{ext}"


def stats_of(shard_uri: str) -> str:
    """The stats json of the shard `shard_uri` (`shard-NNNNNN.tar` -> `shard-NNNNNN.json`, next to it)."""
    return shard_uri[: -len(".tar")] + ".json"


def shard_number(uri: str, ext: str) -> int | None:
    """NNNNNN of a finished `shard-NNNNNN.<ext>` ("tar" or "json"); None for anything else, parts included."""
    match = _SHARD.search(uri)
    if match is None or match.group(3) != ext or f"/{PARTS}/" in uri:
        return None
    return int(match.group(2))


def part_folder(output: str, video_key: str) -> str:
    """Where the part writer keeps one video's chunks until they are packed."""
    return join(output, PARTS, _checked(video_key))


def chunk_part_name(chunk: int, ext: str) -> str:
    """A chunk's samples ("tar") or its record ("json"); the record is written last, as its completion marker."""
    return f"c{chunk:05d}.{ext}"


def chunk_part(output: str, video_key: str, chunk: int, ext: str) -> str:
    return join(part_folder(output, video_key), chunk_part_name(chunk, ext))


def end_part(output: str, video_key: str) -> str:
    return join(part_folder(output, video_key), END_PART)


# --- codecs --------------------------------------------------------------------------------------------

def encode_faces(faces: np.ndarray, quality: int) -> bytes:
    """uint8 [T, S, S, 3] RGB -> one JPEG of the crops stacked vertically."""
    strip = faces.reshape(-1, *faces.shape[2:])[..., ::-1]  # OpenCV encodes BGR
    ok, data = cv2.imencode(".jpg", np.ascontiguousarray(strip), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return data.tobytes()


# Decoding straight to RGB gives a contiguous array; reversing BGR afterwards gives a view whose copy (windows
# for training need one) costs about 60 % of the decode itself. OpenCV < 4.11 lacks the flag: convert there.
_IMREAD_RGB = getattr(cv2, "IMREAD_COLOR_RGB", None)


def decode_faces(data: bytes, crop_size: int) -> np.ndarray:
    """Inverse of encode_faces: uint8 [T, S, S, 3] RGB, contiguous."""
    buffer = np.frombuffer(data, np.uint8)
    strip = cv2.imdecode(buffer, cv2.IMREAD_COLOR if _IMREAD_RGB is None else _IMREAD_RGB)
    if strip is None:
        raise ValueError("not a JPEG")
    if _IMREAD_RGB is None:
        strip = cv2.cvtColor(strip, cv2.COLOR_BGR2RGB)
    return strip.reshape(-1, crop_size, crop_size, 3)


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def load_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def tar_bytes(members: dict[str, bytes]) -> bytes:
    """A tar archive of the given members, with fixed metadata so equal content gives equal bytes."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


# --- samples -------------------------------------------------------------------------------------------

def clock_json(clock: Clock) -> dict:
    return {"fps": clock.fps, "sample_rate": clock.sample_rate, "hop_length": clock.hop_length}


def sample_members(faces: np.ndarray, mel: np.ndarray, meta: dict, clock: Clock,
                   quality: int = JPEG_QUALITY) -> tuple[dict[str, bytes], dict]:
    """One sample's members under meta["key"], and its json as written: `meta` (key, source, source_key,
    start_frame, speaker, split, aligner and what else the producer records) completed with what the arrays
    and the clock determine (frame count, crop size, times, rates) and the format version."""
    key = _checked(meta["key"])
    start, frames = int(meta["start_frame"]), len(faces)
    written = dict(meta, format=FORMAT_VERSION, clock=clock_json(clock), fps=clock.fps, mel_fps=clock.mel_fps,
                   num_frames=frames, crop_size=int(faces.shape[1]), start_s=clock.seconds(start),
                   end_s=clock.seconds(start + frames))
    members = {f"{key}.{FACES}": encode_faces(faces, quality), f"{key}.{MEL}": npy_bytes(mel.astype(np.float32)),
               f"{key}.{META}": json.dumps(written, sort_keys=True).encode()}
    return members, written


# What a sample records of its face track and of the expert's judgement of who speaks (module docstring).
TRACK_KEYS = ("face", "track", "box")
SPEAKER_KEYS = ("sync_confidence", "speaking")


def track_json(face: int, track: int, box: np.ndarray | None) -> dict:
    """The sample json's record of its face track (`box` None: the producer knew no box)."""
    written = {"face": int(face), "track": int(track)}
    if box is not None and np.isfinite(box).all():
        written["box"] = [round(float(value), 4) for value in box]
    return written


def sample_track(meta: dict) -> tuple[int, int]:
    """(face, track) of a sample: (0, 0) for samples written before several faces were followed."""
    return int(meta.get("face", 0)), int(meta.get("track", 0))


def format_version(meta: dict) -> int:
    version = meta.get("format", 0)
    if not isinstance(version, int) or isinstance(version, bool) or not 0 <= version <= FORMAT_VERSION:
        raise ValueError(f"format {version!r}: this reader knows versions 0 to {FORMAT_VERSION}")
    return version


def sample_clock(meta: dict) -> Clock:
    """The clock a sample was written on: recorded since format 1; before, derived from its rates at 16 kHz."""
    if format_version(meta) == 0:
        return Clock(fps=int(meta["fps"]), hop_length=round(V0_SAMPLE_RATE / meta["mel_fps"]))
    return Clock(**{name: meta["clock"][name] for name in ("fps", "sample_rate", "hop_length")})


def decode_meta(data: bytes) -> dict:
    """A sample's json, checked: the fields readers rely on have their types, the version is one we know."""
    meta = json.loads(data)
    if not isinstance(meta, dict):
        raise TypeError(f"json is a {type(meta).__name__}, not an object")
    for field, kind in META_TYPES.items():
        if not isinstance(meta[field], kind):
            raise TypeError(f"json field {field!r} is {type(meta[field]).__name__}")
    for field, kind in OPTIONAL_META_TYPES.items():
        if field in meta and (not isinstance(meta[field], kind) or isinstance(meta[field], bool)):
            raise TypeError(f"json field {field!r} is {type(meta[field]).__name__}")
    format_version(meta)
    return meta


def sample_shot(meta: dict) -> int:
    """The shot of its video a sample lies in; samples written before shots were told apart count as shot 0."""
    return meta.get("shot", 0)


def sample_crop(meta: dict | None) -> str:
    """What a sample's faces are: "aligned" crops or the detector's "box"; samples written before the crop was
    recorded are aligned."""
    return (meta or {}).get("crop", "aligned")


def decode_arrays(members: dict[str, bytes], meta: dict) -> tuple[np.ndarray, np.ndarray]:
    """A sample's faces and mel, checked against its json: both cover its frames on its clock, or every window
    drawn from them would be misaligned."""
    faces = decode_faces(members[FACES], meta["crop_size"])
    mel = load_npy(members[MEL])
    frames = meta["num_frames"]
    if faces.shape[0] != frames:
        raise ValueError(f"{faces.shape[0]} face crops, json says {frames} frames")
    if not isinstance(mel, np.ndarray) or mel.dtype != np.float32 or mel.ndim != 2:
        raise ValueError(f"mel is not a 2-D float32 array ({getattr(mel, 'dtype', type(mel))})")
    columns = sample_clock(meta).mel_column(frames)
    if mel.shape[1] != columns:
        raise ValueError(f"mel has {mel.shape[1]} columns, {frames} frames need {columns}")
    return faces, mel
