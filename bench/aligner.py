"""The GPU aligner alone: face-alignment batched (ours) against the library one image at a time.

    python -m bench.aligner [--size N] [--device auto|cpu|cuda] [--weights DIR] [--out runs/bench/aligner.json]

Same frames, same weights, same networks (S3FD detector, 2D-FAN-4 landmarks) for both sides:

* library: `face_alignment.FaceAlignment` as its README calls it, one image per call: detection alone
  (`face_detector.detect_from_image`), landmarks for a given box (`get_landmarks_from_image(frame,
  detected_faces=[box])`), and the whole call (`get_landmarks_from_image(frame)`); fp32, as the library runs,
  `flip_input=False` (FAN once per face, as ours), `compile` off unless `--library-compile`;
* ours: `pipelines.faces.fan_aligner.FanAligner` over batches of `--batch-size` frames: `detect`, `landmarks`
  and the whole `__call__`; bf16 autocast + channels_last on CUDA, fp32 on CPU.

Frames are synthetic talking faces rendered at `--width` x `--height` with the corpus' renderer; the landmark
rows get each frame's true face box from the renderer's geometry.

Nothing is downloaded. Without `--weights` (a folder with face-alignment's real weight files) both networks
get random weights: speed does not depend on the values, but what the networks find does. Random S3FD scores
every anchor near 0.5, which would send thousands of boxes into the library's Python post-processing (real
weights put a handful there), so the random detector's classifier is biased to "background": it finds no
face, and the whole-call rows then measure detection only (the table says how many faces were found). The
landmark rows, with boxes given, are the faces-per-second comparison either way.
"""

from __future__ import annotations

import contextlib
import json
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

CPU_FRAMES_PER_SIZE = 4  # FAN costs ~2 s per face on a CPU core: a CPU run is a smoke test, not a figure
CUDA_FRAMES_PER_SIZE = 256
BACKGROUND_BIAS = 50.0  # logit margin that keeps every random-S3FD anchor far below the candidate score
HEAD_CENTRE_Y = 118.0  # the renderer's head centre in sprite pixels (pipelines.synthetic.face)
CHIN_MARGIN = 8.0  # the renderer's chin sits this far below the head ellipse, and drops with the jaw:
JAW_DROP = 10.0  # sprite pixels at a fully open mouth
FOREHEAD = 0.55  # a face detector's box starts about this far up the half-height (brows, not the crown)


@dataclass(frozen=True)
class AlignerBenchConfig:
    size: int = field(default=1, metadata={"help": "scale: frames = size * frames_per_size"})
    frames_per_size: int = field(default=0, metadata={
        "help": f"frames per unit of --size; 0 = {CUDA_FRAMES_PER_SIZE} on CUDA, {CPU_FRAMES_PER_SIZE} on CPU"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda", "choices": ["auto", "cpu", "cuda"]})
    weights: Path | None = field(default=None, metadata={
        "help": "folder with face-alignment's real weights (2DFAN4-11f355bf06.pth.tar, s3fd-619a316812.pth); "
                "default: random weights made here"})
    batch_size: int = field(default=64, metadata={"help": "frames per batch for ours"})
    width: int = field(default=640, metadata={"help": "frame width"})
    height: int = field(default=360, metadata={"help": "frame height"})
    library_compile: bool = field(default=False, metadata={"help": "let the library torch.compile FAN (its default)"})
    threads: int = field(default=0, metadata={"help": "torch CPU threads; 0 = torch's default"})
    seed: int = field(default=0, metadata={"help": "frames and random weights follow this seed"})
    out: Path = field(default=Path("runs/bench/aligner.json"), metadata={"help": "JSON results"})

    def __post_init__(self):
        if self.size < 1 or self.frames_per_size < 0 or self.batch_size < 1 or min(self.width, self.height) < 64:
            raise ValueError("--size >= 1, --frames-per-size >= 0, --batch-size >= 1, frames at least 64 px")
        if self.weights is not None and not Path(self.weights).is_dir():
            raise ValueError(f"--weights {self.weights} is not a folder")


# --- inputs ----------------------------------------------------------------------------------------------------

def render_frames(count: int, width: int, height: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic talking-face frames uint8 [N, H, W, 3] (a few identities, moving heads and mouths) and each
    frame's face box float32 [N, 4] (x1, y1, x2, y2), from the renderer's own geometry."""
    from pipelines.synthetic.face import SPRITE, FaceRenderer, HeadPose, MouthShape, random_identity

    rng = np.random.default_rng(seed)
    renderers = [FaceRenderer(random_identity(rng), (width, height)) for _ in range(min(count, 4))]
    frames, boxes = [], []
    for i in range(count):
        renderer = renderers[i % len(renderers)]
        scale = min(width, height) / SPRITE * rng.uniform(0.75, 0.9)
        centre = (width / 2 + rng.uniform(-0.05, 0.05) * width, height / 2 + rng.uniform(-0.03, 0.03) * height)
        pose = HeadPose(angle_deg=float(rng.uniform(-5, 5)), scale=float(scale), center=centre)
        mouth = MouthShape(open=float(rng.uniform(0, 1)), width=float(rng.uniform(0, 1)), teeth=float(rng.uniform(0, 1)))
        frames.append(renderer.render(pose, mouth))
        ident = renderer.identity
        # Forehead to chin in sprite pixels, moved into the frame (the small roll is ignored).
        x1, x2 = SPRITE / 2 - ident.face_width, SPRITE / 2 + ident.face_width
        y1 = HEAD_CENTRE_Y - FOREHEAD * ident.face_height
        y2 = HEAD_CENTRE_Y + ident.face_height + CHIN_MARGIN + JAW_DROP * mouth.open
        corners = (np.array([[x1, y1], [x2, y2]]) - SPRITE / 2) * scale + np.array(centre)
        boxes.append(corners.reshape(4))
    return np.stack(frames), np.array(boxes, dtype=np.float32)


def random_weights(folder: Path, seed: int) -> Path:
    """Randomly initialised FAN and S3FD weights under the library's file names, the detector's classifier
    biased to background (see the module docstring)."""
    import torch
    from face_alignment.detection.sfd.net_s3fd import s3fd
    from face_alignment.models import FAN

    from pipelines.faces.fan_weights import FAN_WEIGHTS, S3FD_WEIGHTS

    torch.manual_seed(seed)
    torch.save(FAN(4).state_dict(), folder / FAN_WEIGHTS)
    state = s3fd().state_dict()
    for name, value in state.items():
        if "mbox_conf" in name and name.endswith("bias"):
            value[:-1], value[-1] = BACKGROUND_BIAS, -BACKGROUND_BIAS  # the last channel is "face"
    torch.save(state, folder / S3FD_WEIGHTS)
    return folder


@contextlib.contextmanager
def hub_with_fan(weights: Path):
    """The library reads FAN only from torch hub's cache (`<hub>/checkpoints/`): point the hub at a temporary
    folder that holds a link to our file, so it never reaches for the network, and restore it after."""
    import torch.hub

    from pipelines.faces.fan_weights import FAN_WEIGHTS

    previous = torch.hub.get_dir()
    with tempfile.TemporaryDirectory() as hub:
        (Path(hub) / "checkpoints").mkdir()
        (Path(hub) / "checkpoints" / FAN_WEIGHTS).symlink_to(Path(weights).resolve() / FAN_WEIGHTS)
        torch.hub.set_dir(hub)
        try:
            yield
        finally:
            torch.hub.set_dir(previous)


# --- the two sides ---------------------------------------------------------------------------------------------

def library_aligner(weights: Path, device: str, compile_fan: bool):
    import face_alignment

    from pipelines.faces.fan_weights import S3FD_WEIGHTS

    return face_alignment.FaceAlignment(face_alignment.LandmarksType.TWO_D, device=device, flip_input=False,
                                        face_detector="sfd", compile=compile_fan,
                                        face_detector_kwargs={"path_to_detector": str(weights / S3FD_WEIGHTS)})


def our_aligner(weights: Path, device: str, batch_size: int):
    from pipelines.faces.base import FaceConfig
    from pipelines.faces.fan_aligner import FanAligner

    return FanAligner(FaceConfig(aligner="face-alignment", face_weights=weights, device=device, batch_size=batch_size))


def timed(call, items: list) -> tuple[float, list]:
    """Wall seconds for `call` over every item (after one untimed warm-up call on the first), and the results.
    Every call here returns host arrays, so the device has finished when the clock stops."""
    call(items[0])
    start = time.perf_counter()
    results = [call(item) for item in items]
    return time.perf_counter() - start, results


def batches(array: np.ndarray, size: int) -> list[np.ndarray]:
    return [array[i:i + size] for i in range(0, len(array), size)]


def library_faces(result) -> int:
    return 0 if result is None else len(result)


def measure_library(fa, frames: np.ndarray, boxes: np.ndarray) -> dict[str, dict]:
    import warnings

    singles = list(frames)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "No faces were detected", once per frame
        detect_s, found = timed(fa.face_detector.detect_from_image, singles)
        landmark_s, _ = timed(lambda pair: fa.get_landmarks_from_image(pair[0], detected_faces=[pair[1]]),
                              list(zip(singles, boxes.astype(np.float64))))  # float32 trips its crop
        full_s, results = timed(fa.get_landmarks_from_image, singles)
    return {
        "detect": {"seconds": detect_s, "items": len(frames), "faces_found": sum(len(f) for f in found)},
        "landmarks (boxes given)": {"seconds": landmark_s, "items": len(frames), "faces_found": len(frames)},
        "whole call": {"seconds": full_s, "items": len(frames), "faces_found": sum(map(library_faces, results))},
    }


def measure_ours(aligner, frames: np.ndarray, boxes: np.ndarray, batch_size: int) -> dict[str, dict]:
    frame_batches = batches(frames, batch_size)
    detect_s, found = timed(aligner.detect, frame_batches)
    landmark_s, _ = timed(lambda pair: aligner.landmarks(*pair),
                          list(zip(frame_batches, batches(boxes, batch_size))))
    full_s, results = timed(aligner, frame_batches)
    return {
        "detect": {"seconds": detect_s, "items": len(frames),
                   "faces_found": int(sum(np.isfinite(f[:, 4]).sum() for f in found))},
        "landmarks (boxes given)": {"seconds": landmark_s, "items": len(frames), "faces_found": len(frames)},
        "whole call": {"seconds": full_s, "items": len(frames),
                       "faces_found": int(sum(np.isfinite(scores).sum() for _, scores in results))},
    }


# --- report ----------------------------------------------------------------------------------------------------

def make_rows(library: dict[str, dict], ours: dict[str, dict]) -> list[dict]:
    rows = []
    for step in library:
        lib, own = library[step], ours[step]
        lib_rate, own_rate = lib["items"] / lib["seconds"], own["items"] / own["seconds"]
        rows.append({"step": step, "unit": "faces/s" if step.startswith("landmarks") else "frames/s",
                     "library_per_s": lib_rate, "ours_per_s": own_rate, "speedup": own_rate / lib_rate,
                     "library_faces_found": lib["faces_found"], "ours_faces_found": own["faces_found"],
                     "frames": lib["items"]})
    return rows


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(0)
    return platform.processor() or platform.machine()


def format_table(rows: list[dict]) -> str:
    lines = [f"{'step':24} {'unit':>8} {'library 1-by-1':>14} {'ours batched':>12} {'speedup':>8} "
             f"{'faces found (lib/ours)':>23}"]
    for r in rows:
        lines.append(f"{r['step']:24} {r['unit']:>8} {r['library_per_s']:14.2f} {r['ours_per_s']:12.2f} "
                     f"{r['speedup']:7.1f}x {str(r['library_faces_found']) + ' / ' + str(r['ours_faces_found']):>23}")
    return "\n".join(lines)


def run_bench(config: AlignerBenchConfig) -> dict:
    import torch

    from pipelines.core.device import resolve_device

    device = resolve_device(config.device).type  # a plain name: the library, FaceConfig and the report take one
    if config.threads:
        torch.set_num_threads(config.threads)
    per_size = config.frames_per_size or (CUDA_FRAMES_PER_SIZE if device.startswith("cuda") else CPU_FRAMES_PER_SIZE)
    frames, boxes = render_frames(config.size * per_size, config.width, config.height, config.seed)
    with tempfile.TemporaryDirectory() as scratch:
        weights = Path(config.weights) if config.weights else random_weights(Path(scratch), config.seed)
        with hub_with_fan(weights):
            library = measure_library(library_aligner(weights, device, config.library_compile), frames, boxes)
        ours = measure_ours(our_aligner(weights, device, config.batch_size), frames, boxes, config.batch_size)
    rows = make_rows(library, ours)
    caveat = ("random weights: speeds are real, detections and landmarks are not; the detector is biased to find "
              "no face, so 'whole call' rows time detection only" if config.weights is None else "real weights")
    return {"bench": "aligner", "command": " ".join(["python -m bench.aligner", *sys.argv[1:]]),
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()},
            "device": device, "device_name": device_name(device), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "frames": len(frames),
            "frame_size": [config.width, config.height], "weights": caveat,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "platform": platform.platform(),
            "rows": rows}


def main(argv: list[str] | None = None) -> int:
    from bench.report import parse_bench_config

    config = parse_bench_config(AlignerBenchConfig, __doc__.split("\n")[0], argv)
    if config is None:
        return 2
    report = run_bench(config)
    print(f"{report['frames']} frames of {config.width}x{config.height} on {report['device']} "
          f"({report['device_name']}), ours in batches of {config.batch_size}; {report['weights']}")
    print(format_table(report["rows"]))
    config.out.parent.mkdir(parents=True, exist_ok=True)
    config.out.write_text(json.dumps(report, indent=1))
    print(f"written {config.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
