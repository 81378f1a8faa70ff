"""How should a segment's aligned face crops be stored in a shard? Bytes per video hour against decode cost.

    python -m bench.face_encoding [--shards DIR] [--size 1] [--out runs/bench/face_encoding.json]

Reads real crops from existing shards (or makes a small synthetic corpus and preprocesses it), re-encodes each
segment every candidate way, and reports bytes per hour of 25 fps video, encode and decode time per segment,
decode time per training window (a loader decodes a segment once and draws windows from it), and PSNR
against the crops as aligned.
"""

from __future__ import annotations

import io
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from bench.report import bench_main
from pipelines.faces.base import FaceConfig

FPS = 25
WINDOWS_PER_SEGMENT = 16  # how many windows the loader draws from one decoded segment


@dataclass(frozen=True)
class FaceEncodingConfig:
    shards: Path | None = field(default=None, metadata={"help": "shards to read crops from (default: build a few)"})
    size: int = field(default=1, metadata={"help": "scale: segments measured = 8 * size (4 * size videos built)"})
    out: Path = field(default=Path("runs/bench/face_encoding.json"), metadata={"help": "JSON results"})

    def __post_init__(self):
        if self.size < 1:
            raise ValueError("--size must be at least 1")


@dataclass(frozen=True)
class Encoding:
    name: str
    encode: Callable[[np.ndarray], bytes]
    decode: Callable[[bytes, int], np.ndarray]


def _strip(faces: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(faces.reshape(-1, *faces.shape[2:])[..., ::-1])


def _unstrip(image: np.ndarray, size: int) -> np.ndarray:
    return image[..., ::-1].reshape(-1, size, size, 3)


def jpeg(quality: int) -> Encoding:
    return Encoding(f"jpeg strip q{quality}",
                    lambda f: cv2.imencode(".jpg", _strip(f), [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes(),
                    lambda b, s: _unstrip(cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR), s))


def jpeg_per_frame(quality: int) -> Encoding:
    """What research preprocessing does (one JPEG per frame), packed side by side for a fair byte count."""
    def encode(faces):
        frames = [cv2.imencode(".jpg", f[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes() for f in faces]
        return json.dumps([len(f) for f in frames]).encode() + b"\n" + b"".join(frames)

    def decode(data, size):
        header, body = data.split(b"\n", 1)
        out, offset = [], 0
        for length in json.loads(header):
            out.append(cv2.imdecode(np.frombuffer(body[offset:offset + length], np.uint8), cv2.IMREAD_COLOR)[..., ::-1])
            offset += length
        return np.stack(out)
    return Encoding(f"jpeg per frame q{quality}", encode, decode)


def png() -> Encoding:
    return Encoding("png strip",
                    lambda f: cv2.imencode(".png", _strip(f), [cv2.IMWRITE_PNG_COMPRESSION, 3])[1].tobytes(),
                    lambda b, s: _unstrip(cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR), s))


def raw_npy() -> Encoding:
    def encode(faces):
        buffer = io.BytesIO()
        np.save(buffer, faces, allow_pickle=False)
        return buffer.getvalue()
    return Encoding("raw npy", encode, lambda b, s: np.load(io.BytesIO(b), allow_pickle=False))


def h264(crf: int) -> Encoding:
    import av

    from pipelines.media import rgb

    def encode(faces):
        buffer = io.BytesIO()
        with av.open(buffer, "w", format="mp4") as out:
            stream = out.add_stream("libx264", rate=FPS)
            stream.width = stream.height = faces.shape[1]
            stream.pix_fmt = "yuv444p"  # 4:2:0 would halve the colour resolution of a 96 px crop
            stream.options = {"crf": str(crf), "preset": "veryfast", "tune": "fastdecode"}
            for face in faces:
                out.mux(stream.encode(av.VideoFrame.from_ndarray(face, format="rgb24")))
            out.mux(stream.encode(None))
        return buffer.getvalue()

    def decode(data, size):
        with av.open(io.BytesIO(data)) as container:
            return np.stack([rgb(f) for f in container.decode(video=0)])
    return Encoding(f"h264 crf{crf} (mp4)", encode, decode)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255 ** 2 / mse))


def load_segments(shards: Path, limit: int) -> list[np.ndarray]:
    from pipelines.core.storage import StorageConfig
    from pipelines.shards.reader import iter_segments, list_shards

    storage = StorageConfig()
    segments = []
    for segment in iter_segments(list_shards(str(shards), storage), storage, None):
        segments.append(segment.faces)
        if len(segments) == limit:
            break
    return segments


def make_shards(scratch: Path, videos: int) -> Path:
    from pipelines.preprocess import PreprocessConfig, run
    from pipelines.synthetic.corpus import SyntheticConfig, generate_corpus

    generate_corpus(SyntheticConfig(out=scratch / "corpus", num_videos=videos, seed=3, heldout_fraction=0,
                                    min_seconds=4, max_seconds=8, workers=2), progress=False)
    run(PreprocessConfig(input=str(scratch / "corpus"), output=str(scratch / "shards"), progress=False,
                         faces=FaceConfig(aligner="dlib")))
    return scratch / "shards"


def measure(encoding: Encoding, segments: list[np.ndarray]) -> dict:
    frames = sum(len(s) for s in segments)
    encoded, encode_s, decode_s, quality = [], 0.0, 0.0, []
    for faces in segments:
        start = time.perf_counter()
        data = encoding.encode(faces)
        encode_s += time.perf_counter() - start
        start = time.perf_counter()
        back = encoding.decode(data, faces.shape[1])
        decode_s += time.perf_counter() - start
        assert back.shape == faces.shape, (encoding.name, back.shape, faces.shape)
        encoded.append(len(data))
        quality.append(psnr(faces, back))
    return {
        "encoding": encoding.name,
        "bytes_per_frame": sum(encoded) / frames,
        "gb_per_video_hour": sum(encoded) / frames * FPS * 3600 / 1e9,
        "encode_ms_per_segment": 1000 * encode_s / len(segments),
        "decode_ms_per_segment": 1000 * decode_s / len(segments),
        "decode_ms_per_window": 1000 * decode_s / len(segments) / WINDOWS_PER_SEGMENT,
        "decode_us_per_frame": 1e6 * decode_s / frames,
        "psnr_db": float(np.mean([q for q in quality if np.isfinite(q)] or [float("inf")])),
    }


def bench_face_encoding(config: FaceEncodingConfig) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        shards = config.shards or make_shards(Path(scratch), videos=4 * config.size)
        segments = load_segments(shards, limit=8 * config.size)
    if not segments:
        raise ValueError(f"no samples found in {shards}: point --shards at the output of pipelines.preprocess")
    encodings = [jpeg(95), jpeg(90), jpeg_per_frame(95), png(), raw_npy(), h264(18)]
    return {"segments": len(segments), "frames": sum(len(s) for s in segments), "crop_size": segments[0].shape[1],
            "results": [measure(encoding, segments) for encoding in encodings]}


def format_table(result: dict) -> str:
    lines = [f"{result['segments']} segments, {result['frames']} frames of {result['crop_size']} px crops",
             f"{'encoding':22} {'B/frame':>8} {'GB/video-h':>10} {'enc ms/seg':>10} {'dec ms/seg':>10} "
             f"{'dec ms/window':>13} {'PSNR dB':>8}"]
    for row in result["results"]:
        lines.append(f"{row['encoding']:22} {row['bytes_per_frame']:8.0f} {row['gb_per_video_hour']:10.3f} "
                     f"{row['encode_ms_per_segment']:10.2f} {row['decode_ms_per_segment']:10.2f} "
                     f"{row['decode_ms_per_window']:13.3f} {row['psnr_db']:8.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return bench_main(FaceEncodingConfig, "face crops in shards: bytes against decode cost", bench_face_encoding,
                      format_table, argv)


if __name__ == "__main__":
    raise SystemExit(main())
