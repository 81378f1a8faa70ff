"""The face aligners side by side on real clips and the synthetic corpus: which one `--aligner auto` should be.

    python -m bench.face_aligners --clips DIR [DIR ...] [--aligners dlib retinaface] [--frames-per-clip 100]
        [--sheet runs/bench/aligner_sheet.png] [--out runs/bench/face_aligners.json]

Each clip's first `--frames-per-clip` frames are decoded as preprocessing decodes them (longer side at most
`--max-side`), and every aligner sees the same frames, one call per clip, as the face stage calls it. Per aligner:

* found: fraction of frames with a face;
* ms/frame: wall time of the call over the frames (`--threads` torch threads; dlib runs on one);
* jitter: mean distance of the three alignment anchors (eye centres, mouth centre) from their 3-frame moving
  average within a track, in interocular distances, before smoothing. This is what shakes a crop, and the one
  measure both landmark layouts define alike;
* vs dlib: mean distance of the anchors from dlib's on frames where both found a face, in interocular distances;
* crop vs dlib: on those frames, how far dlib's anchors land from their template positions in this aligner's crop,
  in the template's interocular distances: 0 where both aligners' crops agree.

With dlib among the aligners, the RetinaFace-5 points are also mapped into the crop that dlib's anchors define
(`pipelines.faces.align.TEMPLATE`) and averaged per clip, then over clips: where a 5-point template must put them for
both aligners' crops to agree (`retinaface_in_dlib_crop` in the JSON). The contact sheet has one row per clip and
four crops per aligner (from the stage's own smoothing and cropping), to look at.

Real clips are read where they lie; nothing derived from them is written except under `runs/` (git-ignored).
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from pipelines.sources import VIDEO_EXTENSIONS

SHEET_CROPS = 4
CROP = 96


@dataclass(frozen=True)
class FaceAlignersBenchConfig:
    clips: tuple[Path, ...] = field(default=(), metadata={"help": "folders of clips (searched recursively)"})
    aligners: tuple[str, ...] = field(default=("dlib", "retinaface"), metadata={"help": "aligners to compare"})
    frames_per_clip: int = field(default=100, metadata={"help": "first frames of each clip"})
    max_side: int = field(default=640, metadata={"help": "frames are downscaled to this longer side, as decoding does"})
    device: str = field(default="cpu", metadata={"help": "device of retinaface", "choices": ["auto", "cpu", "cuda"]})
    threads: int = field(default=1, metadata={"help": "torch CPU threads"})
    sheet: Path | None = field(default=Path("runs/bench/aligner_sheet.png"), metadata={
        "help": "contact sheet (PNG); keep it under runs/"})
    out: Path = field(default=Path("runs/bench/face_aligners.json"), metadata={"help": "JSON results"})

    def __post_init__(self):
        if not self.clips:
            raise ValueError("--clips needs at least one folder")
        missing = [str(c) for c in self.clips if not Path(c).is_dir()]
        if missing:
            raise ValueError(f"--clips: not folders: {', '.join(missing)}")
        if self.frames_per_clip < 3:
            raise ValueError("--frames-per-clip must be at least 3")


def read_frames(path: Path, count: int, max_side: int) -> np.ndarray:
    from itertools import islice

    from pipelines.decode import fit_within
    from pipelines.media import iter_frames

    return np.stack([fit_within(frame, max_side) for _, frame in islice(iter_frames(path), count)])


def anchor_jitter(landmarks: np.ndarray) -> float:
    """Mean distance of the anchors from their 3-frame moving average within tracks, in interocular distances."""
    from pipelines.faces.align import anchor_points
    from pipelines.faces.landmarks import interocular
    from pipelines.faces.tracks import face_tracks

    wobbles = []
    for start, end in face_tracks(landmarks, 0.3):
        if end - start < 3:
            continue
        anchors = anchor_points(landmarks[start:end].astype(np.float64))
        average = (anchors[:-2] + anchors[1:-1] + anchors[2:]) / 3
        scale = interocular(landmarks[start + 1:end - 1].astype(np.float64))
        wobbles.append(np.linalg.norm(anchors[1:-1] - average, axis=-1).mean(axis=-1) / scale)
    return float(np.concatenate(wobbles).mean()) if wobbles else float("nan")


def make_aligners(names: tuple[str, ...], device: str) -> dict:
    from pipelines.faces.base import FaceConfig
    from pipelines.faces.factory import make_aligner

    return {name: make_aligner(FaceConfig(aligner=name, device=device)) for name in names}


def sheet_row(frames: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """SHEET_CROPS crops spread over the clip, as the face stage makes them: uint8 [CROP, SHEET_CROPS * CROP, 3]."""
    from pipelines.faces.align import crop_faces, smooth_landmarks
    from pipelines.faces.tracks import face_tracks

    smoothed = smooth_landmarks(landmarks, tracks=face_tracks(landmarks, 0.3))
    picks = np.linspace(0, len(frames) - 1, SHEET_CROPS).round().astype(int)
    return np.concatenate(list(crop_faces(frames[picks], smoothed[picks], CROP)), axis=1)


def run_bench(config: FaceAlignersBenchConfig) -> dict:
    import torch

    from pipelines.faces.align import TEMPLATE, align_matrix, anchor_points, template_points
    from pipelines.faces.landmarks import interocular
    from pipelines.faces.tracks import has_face

    torch.set_num_threads(config.threads)
    aligners = make_aligners(config.aligners, config.device)
    paths = sorted(p for folder in config.clips for p in Path(folder).rglob("*")
                   if p.suffix.lower() in VIDEO_EXTENSIONS)
    clips, rows, in_dlib_crop = [], [], []
    for path in paths:
        frames = read_frames(path, config.frames_per_clip, config.max_side)
        results, clip = {}, {"clip": path.name, "frames": len(frames), "size": list(frames.shape[1:3])}
        for name, aligner in aligners.items():
            aligner(frames[:2])  # warm-up: the first call pays for allocations
            start = time.perf_counter()
            landmarks, _ = aligner(frames)
            seconds = time.perf_counter() - start
            results[name] = landmarks
            clip[name] = {"found": float(has_face(landmarks).mean()), "ms_per_frame": 1000 * seconds / len(frames),
                          "jitter": anchor_jitter(landmarks)}
        if "dlib" in results:
            reference = results["dlib"].astype(np.float64)
            for name, landmarks in results.items():
                both = has_face(reference) & has_face(landmarks)
                if name != "dlib" and both.any():
                    gap = np.linalg.norm(anchor_points(landmarks[both].astype(np.float64))
                                         - anchor_points(reference[both]), axis=-1).mean(axis=-1)
                    clip[name]["vs_dlib"] = float((gap / interocular(reference[both])).mean())
                    crop_gap = [np.linalg.norm(np.c_[anchors, np.ones(3)] @ align_matrix(points, CROP).T
                                               - template_points(CROP), axis=-1).mean()
                                for anchors, points in zip(anchor_points(reference[both]), landmarks[both])]
                    clip[name]["crop_vs_dlib"] = float(np.mean(crop_gap) / ((TEMPLATE[1, 0] - TEMPLATE[0, 0]) * CROP))
                if name == "retinaface" and both.any():
                    mapped = [np.c_[points, np.ones(len(points))] @ align_matrix(ref, CROP).T
                              for points, ref in zip(landmarks[both].astype(np.float64), reference[both])]
                    in_dlib_crop.append(np.median((np.array(mapped) + 0.5) / CROP, axis=0))
        clips.append(clip)
        if config.sheet is not None:
            rows.append(np.concatenate([sheet_row(frames, results[name]) for name in aligners], axis=1))
        print(clip["clip"], {name: {k: round(v, 3) for k, v in clip[name].items()} for name in aligners}, flush=True)
    if config.sheet is not None and rows:
        import cv2

        config.sheet.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(config.sheet), cv2.cvtColor(np.concatenate(rows, axis=0), cv2.COLOR_RGB2BGR))
    summary = {name: {key: float(np.nanmean([c[name][key] for c in clips if key in c[name]]))
                      for key in ("found", "ms_per_frame", "jitter", "vs_dlib", "crop_vs_dlib") if any(key in c[name] for c in clips)}
               for name in aligners}
    for name in aligners:
        summary[name]["clips_all_frames_found"] = sum(c[name]["found"] == 1.0 for c in clips)
    return {"bench": "face_aligners", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "torch_threads": torch.get_num_threads(), "device": config.device,
            "config": {k: [str(p) for p in v] if k == "clips" else str(v) for k, v in vars(config).items()},
            "clips": clips, "summary": summary,
            "retinaface_in_dlib_crop": np.mean(in_dlib_crop, axis=0).round(4).tolist() if in_dlib_crop else None}


def format_table(result: dict) -> str:
    lines = [f"{len(result['clips'])} clips, {result['date']}, {result['processor']}, torch threads "
             f"{result['torch_threads']}, device {result['device']}",
             f"{'aligner':16} {'found':>7} {'all found':>10} {'ms/frame':>9} {'jitter':>8} {'vs dlib':>8} "
             f"{'crop vs dlib':>12}"]
    for name, row in result["summary"].items():
        lines.append(f"{name:16} {row['found']:7.3f} {row['clips_all_frames_found']:>10} {row['ms_per_frame']:9.1f} "
                     f"{row['jitter']:8.4f} {row.get('vs_dlib', float('nan')):8.3f} "
                     f"{row.get('crop_vs_dlib', float('nan')):12.3f}")
    if result["retinaface_in_dlib_crop"] is not None:
        lines.append(f"RetinaFace-5 points in dlib's crop (fractions of the side): {result['retinaface_in_dlib_crop']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from bench.report import bench_main

    return bench_main(FaceAlignersBenchConfig, __doc__.split("\n")[0], run_bench, format_table, argv)


if __name__ == "__main__":
    raise SystemExit(main())
