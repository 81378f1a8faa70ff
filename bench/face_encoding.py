"""How should a segment's aligned face crops be stored in a shard? Bytes per video hour against decode cost.

    python -m bench.face_encoding [--shards DIR] [--size N] [--out runs/bench/face_encoding.json]

Reads real crops from existing shards (or makes a small synthetic corpus and preprocesses it), re-encodes each
segment every candidate way, and reports bytes per hour of 25 fps video, encode and decode time per segment,
decode time per training window (a loader decodes a segment once and draws windows from it), and PSNR
against the crops as aligned.
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

FPS = 25
WINDOWS_PER_SEGMENT = 16  # how many windows the loader draws from one decoded segment


@dataclass(frozen=True)
class Encoding:
    name: str
    encode: callable
    decode: callable


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
            return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    return Encoding(f"h264 crf{crf} (mp4)", encode, decode)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255 ** 2 / mse))


def load_segments(shards: Path, limit: int) -> list[np.ndarray]:
    from pipelines.face_codec import decode_faces
    from pipelines.shards import read_samples
    from pipelines.storage import StorageConfig

    segments = []
    for shard in sorted(shards.glob("shard-*.tar")):
        for sample in read_samples(str(shard), StorageConfig()):
            meta = json.loads(sample["json"])
            segments.append(decode_faces(sample["jpg"], meta["crop_size"]))
            if len(segments) == limit:
                return segments
    return segments


def make_shards(scratch: Path, videos: int) -> Path:
    from pipelines.preprocess import PreprocessConfig, run
    from pipelines.synthetic.corpus import SyntheticConfig, generate_corpus

    generate_corpus(SyntheticConfig(out=scratch / "corpus", num_videos=videos, seed=3, heldout_fraction=0,
                                    min_seconds=4, max_seconds=8, workers=2), progress=False)
    # Lossless crops for a fair comparison: the shard's own JPEG would otherwise favour JPEG.
    run(PreprocessConfig(input=str(scratch / "corpus"), output=str(scratch / "shards"), aligner="dlib",
                         progress=False))
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shards", type=Path, help="existing shards to read crops from (default: build a few)")
    parser.add_argument("--size", type=int, default=1, help="scale: segments measured = 8 * size")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/face_encoding.json"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        shards = args.shards or make_shards(Path(scratch), videos=4 * args.size)
        segments = load_segments(shards, limit=8 * args.size)
    if not segments:
        raise SystemExit(f"no samples found in {shards}")
    encodings = [jpeg(95), jpeg(90), jpeg_per_frame(95), png(), raw_npy(), h264(18)]
    rows = [measure(encoding, segments) for encoding in encodings]
    print(f"{len(segments)} segments, {sum(len(s) for s in segments)} frames of {segments[0].shape[1]} px crops")
    print(f"{'encoding':22} {'B/frame':>8} {'GB/video-h':>10} {'enc ms/seg':>10} {'dec ms/seg':>10} "
          f"{'dec ms/window':>13} {'PSNR dB':>8}")
    for row in rows:
        print(f"{row['encoding']:22} {row['bytes_per_frame']:8.0f} {row['gb_per_video_hour']:10.3f} "
              f"{row['encode_ms_per_segment']:10.2f} {row['decode_ms_per_segment']:10.2f} "
              f"{row['decode_ms_per_window']:13.3f} {row['psnr_db']:8.1f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"segments": len(segments), "results": rows}, indent=1))
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
