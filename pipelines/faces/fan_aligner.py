"""face-alignment's networks (S3FD detector, 2D-FAN-4 landmarks), run in batches.

The library's own `FaceAlignment` detects a batch at once but then runs FAN one image at a time in fp32, and
fetches missing weights from the internet. Here the library supplies the networks, its crop and its constants;
this module supplies the batching:

    frames uint8 [B, H, W, 3] --S3FD, one forward pass--> the followed face's box per frame
    boxes --crop (the library's `crop` geometry, on the device)--> FAN inputs [F, 3, 256, 256] (F <= B)
    FAN, one forward pass --> heatmaps [F, 68, 64, 64] --> landmarks in frame pixels [F, 68, 2]

On CUDA both networks run under bf16 autocast with channels_last tensors; on CPU in fp32.

Two deliberate departures from the library's post-processing:
* S3FD's boxes are decoded with tensor operations over all anchors at once (the library loops in Python over
  every anchor above 0.05, which random or weak detections turn into thousands of iterations).
* Heatmap peaks are mapped back to the frame in floating point (the library's numba `transform_np` truncates
  them to whole pixels, which shakes an aligned crop, and compiles for seconds in every new process).
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F
from face_alignment.detection.sfd.bbox import nms
from face_alignment.detection.sfd.net_s3fd import s3fd
from face_alignment.models import FAN
from face_alignment.utils import CENTER_Y_OFFSET, CROP_RESOLUTION, REFERENCE_SCALE, SCALE_FACTOR

from pipelines.core.device import resolve_device
from pipelines.faces.base import FaceConfig
from pipelines.faces.fan_weights import (FAN_WEIGHTS, S3FD_WEIGHTS, WEIGHT_URLS, fan_detector, fan_weights_dir,
                                         missing_fan_weights)
from pipelines.faces.tracks import follow_face

NUM_LANDMARKS = 68
FAN_STACKS = 4  # 2D-FAN-4: four stacked hourglasses; the last one's heatmaps are the prediction
DEFAULT_MIN_SCORE = 0.5  # the library's SFDDetector filter_threshold
CANDIDATE_SCORE = 0.05  # the library's pre-NMS cut: anchors below it are never boxes
NMS_OVERLAP = 0.3  # the library's SFDDetector NMS threshold
# Best-scoring anchors per frame that go on to NMS. Real weights put a handful above threshold; weak or random
# ones can put thousands there, and NMS in Python then costs seconds per frame.
MAX_CANDIDATES = 100
S3FD_BGR_MEAN = (104.0, 117.0, 123.0)  # S3FD was trained on mean-subtracted BGR in [0, 255]
S3FD_VARIANCES = (0.1, 0.2)  # SSD box-encoding variances for centre and size
# S3FD costs grow with pixels while talking-head faces are large: detecting on frames no larger than this
# (boxes scaled back) makes 1080p cost what 360p costs; its smallest anchor (16 px) then means ~50 px faces at 1080p.
DETECT_MAX_SIDE = 640


def missing_weights_message(folder, missing: list[str]) -> str:
    files = "; ".join(f"{name} (from {WEIGHT_URLS[name]})" for name in missing)
    return (f"face-alignment weights missing from {folder}: {files}. Nothing is downloaded here: fetch these files "
            "(the face-alignment project's release URLs above) into that folder or point --face-weights at a "
            "folder holding them, or use --aligner dlib, which works offline.")


def load_network(net: torch.nn.Module, path, device: torch.device, channels_last: bool) -> torch.nn.Module:
    state = torch.load(path, map_location="cpu", weights_only=True)
    net.load_state_dict(state)
    net.eval().to(device)
    if channels_last:
        net.to(memory_format=torch.channels_last)
    return net


def decode_s3fd(outputs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """S3FD's six (class logits, box offsets) pairs -> boxes [B, A, 4] (x1, y1, x2, y2) and face probabilities
    [B, A] over all A anchors, in the detector's input pixels. The same decoding as the library's
    `get_predictions`: anchor centres every `stride`, anchor side 4 * stride, SSD offsets."""
    all_boxes, all_scores = [], []
    for level, (logits, offsets) in enumerate(zip(outputs[0::2], outputs[1::2])):
        stride = 2 ** (level + 2)
        side = 4.0 * stride
        logits, offsets = logits.float(), offsets.float()
        height, width = logits.shape[2:]
        ys = torch.arange(height, device=logits.device, dtype=torch.float32) * stride + stride / 2
        xs = torch.arange(width, device=logits.device, dtype=torch.float32) * stride + stride / 2
        cx = xs.view(1, 1, width) + offsets[:, 0] * S3FD_VARIANCES[0] * side
        cy = ys.view(1, height, 1) + offsets[:, 1] * S3FD_VARIANCES[0] * side
        half_w = side * torch.exp(offsets[:, 2] * S3FD_VARIANCES[1]) / 2
        half_h = side * torch.exp(offsets[:, 3] * S3FD_VARIANCES[1]) / 2
        boxes = torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=-1)
        all_boxes.append(boxes.flatten(1, 2))
        all_scores.append(logits.softmax(dim=1)[:, 1].flatten(1))
    return torch.cat(all_boxes, dim=1), torch.cat(all_scores, dim=1)


def plausible_boxes(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Boxes [K, 4] that can be a face in an H x W frame: finite, centred inside it, no larger than its longer
    side. The crop for FAN allocates the box's full extent, so an absurd box must never reach it."""
    centre_x = (boxes[:, 0] + boxes[:, 2]) / 2
    centre_y = (boxes[:, 1] + boxes[:, 3]) / 2
    sides = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    return (np.isfinite(boxes).all(axis=1) & (centre_x >= 0) & (centre_x < width) & (centre_y >= 0)
            & (centre_y < height) & (sides > 1) & (sides <= max(height, width)))


def pick_face(candidates: np.ndarray, followed: np.ndarray | None) -> np.ndarray | None:
    """Candidates [K, 5] (box, score) of one frame -> the box surviving NMS that continues the `followed` box
    [4] of the previous frame, else the largest (`tracks.follow_face`); None without candidates."""
    if len(candidates) == 0:
        return None
    kept = candidates[nms(candidates, NMS_OVERLAP)]
    return kept[follow_face(kept[:, :4], followed)]


def fan_crop_params(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Face boxes [F, 4] -> FAN crop centres [F, 2] and scales [F], the library's convention: the centre is
    raised by CENTER_Y_OFFSET of the box height, and scale 1 means a 200 px face (the box's w + h over 195)."""
    width = boxes[:, 2] - boxes[:, 0]
    height = boxes[:, 3] - boxes[:, 1]
    centres = np.stack([boxes[:, 0] + width / 2, boxes[:, 1] + height / 2 - height * CENTER_Y_OFFSET], axis=1)
    return centres, (width + height) / REFERENCE_SCALE


def fan_crop_grid(centres: np.ndarray, scales: np.ndarray, height: int, width: int, device: torch.device,
                  resolution: int = CROP_RESOLUTION) -> torch.Tensor:
    """The sampling grid [F, res, res, 2] (grid_sample's normalised x, y) that reproduces the library's
    `face_alignment.utils.crop` on the GPU: the whole-pixel box from frame pixel (1/res - 0.5) * side + centre
    to (0.5 * side + centre), truncated as the library truncates, zeros outside the frame, resized bilinearly
    with half-pixel centres (cv2.resize's convention) to res x res. side = SCALE_FACTOR * scale."""
    side = SCALE_FACTOR * scales[:, None]
    upper_left = np.trunc((1 / resolution - 0.5) * side + centres)
    lower_right = np.trunc(0.5 * side + centres)
    steps = (np.arange(resolution) + 0.5) / resolution
    pixels = upper_left[:, None, :] + steps[None, :, None] * (lower_right - upper_left)[:, None, :] - 0.5
    normalised = torch.from_numpy((2 * pixels + 1) / np.array([width, height]) - 1).float().to(device)
    xs = normalised[:, None, :, 0].expand(-1, resolution, -1)
    ys = normalised[:, :, None, 1].expand(-1, -1, resolution)
    return torch.stack([xs, ys], dim=-1)


def heatmap_peaks(heatmaps: torch.Tensor) -> torch.Tensor:
    """FAN heatmaps [F, 68, h, w] -> sub-cell peak positions [F, 68, 2] (x, y) in heatmap cells, on the heatmaps'
    device (only these leave the GPU, not the heatmaps).

    The library's `get_preds_fromhm` without its final rounding: the arg-max cell, moved a quarter cell towards
    the higher neighbour (interior cells only), taken at its centre."""
    height, width = heatmaps.shape[2:]
    heatmaps = heatmaps.float()
    peak = heatmaps.flatten(2).argmax(dim=-1)
    y, x = peak // width, peak % width
    interior = (x > 0) & (x < width - 1) & (y > 0) & (y < height - 1)
    xi, yi = x.clamp(1, width - 2), y.clamp(1, height - 2)

    def value(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        return heatmaps.flatten(2).gather(2, (rows * width + cols)[..., None])[..., 0]

    dx = torch.sign(value(yi, xi + 1) - value(yi, xi - 1)) * interior
    dy = torch.sign(value(yi + 1, xi) - value(yi - 1, xi)) * interior
    return torch.stack([x + 0.5 + 0.25 * dx, y + 0.5 + 0.25 * dy], dim=-1)


def cells_to_frame(cells: np.ndarray, heatmap_size: int, centres: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Heatmap positions [F, 68, 2] -> frame pixels: the inverse of the crop's scale-and-shift (the crop covers
    SCALE_FACTOR * scale frame pixels around the centre with the whole heatmap), kept in floating point."""
    side = SCALE_FACTOR * scales[:, None, None]
    return (cells / heatmap_size - 0.5) * side + centres[:, None, :]


class FanAligner:
    """S3FD (or RetinaFace) boxes + FAN landmarks for one face followed through the frames (the largest where it
    starts); the contract of `pipelines.faces.base.Aligner`.

    Weights are read from `fan_weights_dir(config.face_weights)` only; a missing file raises FileNotFoundError before anything
    else happens. With `config.fan_detector` resolving to "retinaface" (`fan_weights.fan_detector`), the boxes are
    the retinaface aligner's, its keyframes and regions included, and only FAN's file is needed. Frames of one call
    share their size (they come as one array).
    """

    name = "face-alignment"

    def __init__(self, config: FaceConfig = FaceConfig()):
        folder = fan_weights_dir(config.face_weights)
        self.detector = fan_detector(config.face_weights, config.fan_detector)
        missing = missing_fan_weights(config.face_weights, self.detector)
        if missing:
            raise FileNotFoundError(missing_weights_message(folder, missing))
        self.config = config
        self.device = resolve_device(config.device)
        self.min_score = DEFAULT_MIN_SCORE if config.min_score is None else config.min_score
        on_gpu = self.device.type == "cuda"
        self._memory_format = torch.channels_last if on_gpu else torch.contiguous_format
        if self.detector == "s3fd":
            self._detector = load_network(s3fd(), folder / S3FD_WEIGHTS, self.device, on_gpu)
        else:
            from pipelines.faces.retinaface_aligner import RetinaFaceAligner

            self._retinaface = RetinaFaceAligner(config)
        self._fan = load_network(FAN(FAN_STACKS), folder / FAN_WEIGHTS, self.device, on_gpu)

    def __call__(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.track(frames)[:2]

    def track(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`__call__`'s landmarks and scores, and the S3FD (or RetinaFace) box [N, 4] (x1, y1, x2, y2) each frame's
        landmarks were found in (NaN without a face)."""
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 [N, H, W, 3] RGB, got {frames.dtype} {frames.shape}")
        landmarks = np.full((len(frames), NUM_LANDMARKS, 2), np.nan, dtype=np.float32)
        scores = np.full(len(frames), np.nan, dtype=np.float32)
        boxes = np.full((len(frames), 4), np.nan, dtype=np.float32)
        followed = None  # the face box on the last frame of the previous batch: the track goes on across batches
        # RetinaFace follows the face over the whole call itself (keyframes, then squares around the face).
        boxed = self._retinaface_boxes(frames) if self.detector == "retinaface" else None
        with torch.inference_mode():
            for start in range(0, len(frames), self.config.batch_size):
                images = self._to_tensor(frames[start:start + self.config.batch_size])  # one upload for both stages
                faces = self._detect(images, followed) if boxed is None else boxed[start:start + len(images)]
                followed = faces[-1, :4] if np.isfinite(faces[-1, 4]) else None
                found = np.flatnonzero(np.isfinite(faces[:, 4]))
                scores[start:start + len(images)] = faces[:, 4]
                boxes[start:start + len(images)] = faces[:, :4]
                if len(found):
                    on_device = torch.from_numpy(found).to(images.device)
                    landmarks[start + found] = self._landmarks(images[on_device], faces[found, :4])
        return landmarks, scores, boxes

    @torch.inference_mode()
    def detect(self, frames: np.ndarray) -> np.ndarray:
        """RGB uint8 [B, H, W, 3] -> the followed face per frame as float32 [B, 5] (x1, y1, x2, y2, score) in
        frame pixels; a row of NaN where no box scores above `min_score`."""
        if self.detector == "retinaface":
            return self._retinaface_boxes(frames)
        return self._detect(self._to_tensor(frames))

    @torch.inference_mode()
    def count_faces(self, frames: np.ndarray) -> np.ndarray:
        """Faces found in each of `frames` (RGB uint8 [N, H, W, 3]) after non-maximum suppression -> int [N]."""
        if self.detector == "retinaface":
            return self._retinaface.count_faces(frames)
        counts = [len(nms(found, NMS_OVERLAP)) if len(found) else 0
                  for found in self._candidates(self._to_tensor(frames))]
        return np.array(counts, dtype=np.int64)

    @torch.inference_mode()
    def landmarks(self, frames: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """One face box per frame: RGB uint8 [F, H, W, 3], boxes [F, 4] -> landmarks float32 [F, 68, 2]."""
        return self._landmarks(self._to_tensor(frames), boxes)

    def _autocast(self):
        if self.device.type == "cuda":
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _retinaface_boxes(self, frames: np.ndarray) -> np.ndarray:
        """RetinaFace's followed face per frame as `detect` gives S3FD's, [N, 5] (x1, y1, x2, y2, score): in S3FD's
        pixel convention (`retinaface_aligner.detector_boxes`), which FAN's crop and box crops expect."""
        from pipelines.faces.retinaface_aligner import detector_boxes

        faces = self._retinaface.detect(frames)
        return np.column_stack([detector_boxes(faces), faces[:, 4]])

    def _to_tensor(self, images: np.ndarray) -> torch.Tensor:
        # uint8 crosses to the device (a quarter of the bytes of float), then becomes float [B, 3, H, W] there.
        tensor = torch.from_numpy(np.ascontiguousarray(images)).to(self.device, non_blocking=True)
        return tensor.permute(0, 3, 1, 2).float().contiguous(memory_format=self._memory_format)

    def _detect(self, images: torch.Tensor, followed: np.ndarray | None = None) -> np.ndarray:
        """Frames as float [B, 3, H, W] on the device -> faces [B, 5] as `detect`; `followed` is the face box [4]
        on the frame before the first (None: no face there)."""
        faces = np.full((len(images), 5), np.nan, dtype=np.float32)
        for i, found in enumerate(self._candidates(images)):
            face = pick_face(found, followed)
            followed = None if face is None else face[:4]
            if face is not None:
                faces[i] = face
        return faces

    def _candidates(self, images: torch.Tensor) -> list[np.ndarray]:
        """Frames as float [B, 3, H, W] on the device -> per frame, the plausible boxes scoring above the
        threshold, [K, 5] (x1, y1, x2, y2, score) in frame pixels, before non-maximum suppression."""
        height, width = images.shape[2:]
        shrink = min(1.0, DETECT_MAX_SIDE / max(height, width))
        if shrink < 1.0:
            images = F.interpolate(images, scale_factor=shrink, mode="bilinear", antialias=True)
        mean = torch.tensor(S3FD_BGR_MEAN, device=images.device).view(1, 3, 1, 1)
        images = (images.flip(1) - mean).contiguous(memory_format=self._memory_format)
        with self._autocast():
            outputs = self._detector(images)
        boxes, probs = decode_s3fd(outputs)
        # Only each frame's best anchors leave the device.
        probs, anchor = probs.topk(min(MAX_CANDIDATES, probs.shape[1]), dim=1)
        boxes = boxes.gather(1, anchor[..., None].expand(-1, -1, 4)) / shrink
        candidates = torch.cat([boxes, probs[..., None]], dim=2).cpu().numpy()  # [B, k, 5]
        above = candidates[..., 4] > max(self.min_score, CANDIDATE_SCORE)
        found = [candidates[i, above[i]] for i in range(len(images))]
        return [mine[plausible_boxes(mine[:, :4], height, width)] for mine in found]

    def _landmarks(self, images: torch.Tensor, boxes: np.ndarray) -> np.ndarray:
        """Frames as float [F, 3, H, W] on the device, one face box [F, 4] each -> landmarks float32 [F, 68, 2]."""
        centres, scales = fan_crop_params(boxes.astype(np.float64))
        grid = fan_crop_grid(centres, scales, images.shape[2], images.shape[3], self.device)
        # Cropping on the device: the library's crop on the CPU managed ~1,000-1,600 faces/s per core, below FAN.
        inputs = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros",
                               align_corners=False) / 255.0
        inputs = inputs.contiguous(memory_format=self._memory_format)
        with self._autocast():
            heatmaps = self._fan(inputs)[-1]
        cells = heatmap_peaks(heatmaps).cpu().numpy().astype(np.float64)
        return cells_to_frame(cells, heatmaps.shape[-1], centres, scales).astype(np.float32)
