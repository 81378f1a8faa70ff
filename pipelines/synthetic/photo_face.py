"""Talking faces made from photographs: a real identity whose mouth is moved to each viseme.

`face.py` draws a face; an expert that has only seen drawn faces carries poorly to real ones. Here the identity
is a photograph (skimage's astronaut, or frames of clips and images from a folder): its 68 landmarks are found
once, the photo is brought to the drawn sprite's canonical pose (so `HeadPose` and `HeadMotion` mean the same
for both renderers), its mouth is closed, and for every frame the lips and chin are moved to the mouth shape by
a smooth warp driven from the landmarks, with the mouth cavity and the teeth painted into the opening. The mouth
shape comes from the same `MouthTrack` as the drawn faces, so the ground truth is the same function of time.

What a camera and an upload do to real footage (blur, JPEG blocks, colour casts, uneven light) is applied per
clip here, where the frames are made, rather than in training: the aligner then meets degraded faces just as it
does on real footage, and the misalignment it makes on them is the real kind, not a simulated one.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from pipelines.faces.align import similarity_transform
from pipelines.sources import VIDEO_EXTENSIONS
from pipelines.synthetic.face import HeadPose, MouthShape

SPRITE = 512  # canonical photo sprite side; the drawn sprite's 256 px sit at its centre, 128 px in
OFFSET = (SPRITE - 256) // 2
EYE_CENTRES = np.array([[128 - 33 + OFFSET, 112 + OFFSET], [128 + 33 + OFFSET, 112 + OFFSET]], np.float64)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
SEAM_PX = 0.75  # how far either side of the closed lips' seam the parted lips' edges are taken from
FRAMES_PER_CLIP = 8  # candidate stills read from a clip; the one with the most closed mouth is used
MAX_STILL_SIDE = 720  # larger stills are shrunk first: the sprite needs far fewer pixels, the detector time

# iBUG-68 groups.
JAW_MOVING = {4: 0.25, 5: 0.55, 6: 0.85, 7: 1.0, 8: 1.0, 9: 1.0, 10: 0.85, 11: 0.55, 12: 0.25}  # share of the drop
OUTER_UPPER = [48, 49, 50, 51, 52, 53, 54]
OUTER_LOWER = [55, 56, 57, 58, 59]
INNER_UPPER = [60, 61, 62, 63, 64]
INNER_LOWER = [65, 66, 67]
FIXED = [0, 1, 2, 3, 13, 14, 15, 16, 27, 28, 29, 30, 31, 32, 33, 34, 35] + list(range(36, 48))


class NoFaceError(ValueError):
    """An identity source in which the offline aligner finds no face."""


@dataclass(frozen=True, eq=False)
class PhotoIdentity:
    """A photo in the canonical pose with its mouth closed: sprite float32 [S, S, 3] RGB, landmarks [68, 2]."""

    sprite: np.ndarray
    landmarks: np.ndarray
    source: str


@dataclass(frozen=True)
class Camera:
    """What one clip's camera and upload did to it."""

    blur_sigma: float  # 0: sharp
    jpeg_quality: int  # 100: none
    gain: tuple[float, float, float]  # white balance
    gamma: float


def random_camera(rng: np.random.Generator) -> Camera:
    return Camera(blur_sigma=float(rng.choice([0.0, rng.uniform(0.4, 1.4)])),
                  jpeg_quality=int(rng.choice([100, rng.integers(30, 90)])),
                  gain=tuple(float(g) for g in rng.uniform(0.9, 1.1, 3)),
                  gamma=float(rng.uniform(0.8, 1.25)))


# ---------------------------------------------------------------------------------------------- identities


def identity_sources(folder: Path | None) -> list[str]:
    """The images and clips identities are taken from (sorted), or ["astronaut"] without a folder."""
    if folder is None:
        return ["astronaut"]
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"--face-sources {folder}: no such folder; give a folder of face images or clips")
    sources = sorted(str(p) for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES + VIDEO_EXTENSIONS)
    if not sources:
        raise FileNotFoundError(f"--face-sources {folder}: no images ({', '.join(IMAGE_SUFFIXES)}) or clips "
                                f"({', '.join(VIDEO_EXTENSIONS)}) in it")
    return sources


@lru_cache(maxsize=8)
def source_still(source: str) -> tuple[np.ndarray, np.ndarray]:
    """The still of a source to animate and its landmarks: the frame (of a clip) with the most closed mouth."""
    if source == "astronaut":
        import skimage.data

        candidates = [skimage.data.astronaut()]
    elif source.lower().endswith(IMAGE_SUFFIXES):
        image = cv2.imread(source, cv2.IMREAD_COLOR)
        if image is None:
            raise NoFaceError(f"{source}: not a readable image; remove it from the face sources")
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        given = given_landmarks(source)
        if given is not None:
            image.setflags(write=False)
            return image, given
        candidates = [_at_most(image, MAX_STILL_SIDE)]
    else:
        candidates = _clip_frames(source)
    best = None
    # The candidates are frames of one shot in order: the aligner follows the face from one to the next
    # (detecting on a few only), and all of them go through it at once. Stills of other sizes go alone.
    sizes = {frame.shape for frame in candidates}
    batches = [np.stack(candidates)] if len(sizes) == 1 else [frame[None] for frame in candidates]
    found = np.concatenate([_aligner()(batch)[0] for batch in batches])
    for frame, points in zip(candidates, found):
        if not np.isfinite(points).all():
            continue
        opening = np.linalg.norm(points[66] - points[62]) / np.linalg.norm(points[45] - points[36])
        if best is None or opening < best[0]:
            best = (opening, frame, points.astype(np.float64))
    if best is None:
        raise NoFaceError(f"{source}: the offline aligner finds no face in it; remove it from the face sources")
    best[1].setflags(write=False)  # shared by every speaker made from it
    return best[1], best[2]


def landmarks_path(image: str | Path) -> Path:
    """Where an image's 68 landmarks may lie beside it (`NAME.landmarks.npy`, 68 x 2, x then y, in pixels of
    the image): given, they are used as they are, so stills made where dlib's model is can animate faces where
    it is not (`save_still`)."""
    image = Path(image)
    return image.with_name(image.stem + ".landmarks.npy")


def given_landmarks(image: str | Path) -> np.ndarray | None:
    path = landmarks_path(image)
    if not path.is_file():
        return None
    landmarks = np.load(path, allow_pickle=False)
    if landmarks.shape != (68, 2) or not np.isfinite(landmarks).all():
        raise NoFaceError(f"{path}: not 68 finite (x, y) landmarks; delete it to find them again")
    return landmarks.astype(np.float64)


def save_still(source: str, folder: str | Path) -> Path:
    """Write `source`'s still (the frame `source_still` picks) as a PNG in `folder` with its landmarks beside it;
    returns the PNG's path."""
    image, landmarks = source_still(source)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    png = folder / (Path(source).stem + ".png")
    cv2.imwrite(str(png), cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR))
    np.save(landmarks_path(png), landmarks.astype(np.float32), allow_pickle=False)
    return png


@lru_cache(maxsize=1)
def _aligner():
    from pipelines.faces.dlib_aligner import DlibAligner

    return DlibAligner()  # loading its landmark model takes seconds: once per process


def _clip_frames(path: str) -> list[np.ndarray]:
    from pipelines.media import MediaError, iter_frames

    frames = []
    try:
        # Every 6th of the first frames: a couple of seconds of speech hold a closed mouth, and decoding a long
        # high-resolution clip to its end would cost more than the whole corpus's rendering from it.
        for index, (_, frame) in enumerate(iter_frames(Path(path))):
            if index % 6 == 0:
                frames.append(_at_most(frame, MAX_STILL_SIDE))
            if len(frames) == FRAMES_PER_CLIP:
                break
    except MediaError as error:
        raise NoFaceError(f"{path}: {error}; remove it from the face sources") from error
    if not frames:
        raise NoFaceError(f"{path}: no frames decoded; remove it from the face sources")
    return frames


def _at_most(image: np.ndarray, side: int) -> np.ndarray:
    scale = side / max(image.shape[:2])
    return image if scale >= 1 else cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)


def photo_identity(source: str, rng: np.random.Generator) -> PhotoIdentity:
    """One speaker's look from a source: mirrored or not, its face size, colour and light varied by `rng`."""
    image, landmarks = source_still(source)
    if rng.random() < 0.5:  # a mirrored face is another face to the expert, and keeps the landmark scheme
        image, landmarks = image[:, ::-1], mirror_landmarks(landmarks, image.shape[1])
    eyes = np.stack([landmarks[36:42].mean(0), landmarks[42:48].mean(0)])
    target = EYE_CENTRES.copy()
    target = (target - target.mean(0)) * rng.uniform(0.9, 1.12) + target.mean(0)
    matrix = similarity_transform(eyes, target)  # two points: the exact similarity
    sprite = cv2.warpAffine(np.ascontiguousarray(image), matrix, (SPRITE, SPRITE), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_REPLICATE).astype(np.float32)
    landmarks = landmarks @ matrix[:, :2].T + matrix[:, 2]
    sprite = sprite * _light_field(rng)
    sprite = np.clip(sprite * rng.uniform(0.92, 1.08, 3).astype(np.float32), 0, 255)
    sprite = _fill_inner_mouth(sprite, landmarks)
    closed = _closed_mouth(landmarks)
    sprite = _warp_mouth(sprite, landmarks, closed, seam=False)
    return PhotoIdentity(sprite=sprite, landmarks=closed, source=source)


def mirror_landmarks(landmarks: np.ndarray, width: int) -> np.ndarray:
    """iBUG-68 landmarks of the mirrored image: x flipped and left/right points swapped."""
    order = (list(range(16, -1, -1)) + list(range(26, 16, -1)) + [27, 28, 29, 30] + [35, 34, 33, 32, 31]
             + [45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40]
             + [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55] + [64, 63, 62, 61, 60, 67, 66, 65])
    mirrored = landmarks[order].copy()
    mirrored[:, 0] = width - 1 - mirrored[:, 0]
    return mirrored


def _light_field(rng: np.random.Generator) -> np.ndarray:
    """A soft key light from a random side, as a multiplicative map over the sprite."""
    yy, xx = np.mgrid[0:SPRITE, 0:SPRITE].astype(np.float32) / SPRITE - 0.5
    angle, strength = rng.uniform(0, 2 * np.pi), rng.uniform(0.0, 0.3)
    return (1.0 + strength * (np.cos(angle) * xx + np.sin(angle) * yy))[..., None].astype(np.float32)


# ---------------------------------------------------------------------------------------------- the mouth


def _fill_inner_mouth(sprite: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """Teeth or a smile's opening painted over with the lips around them, so that closing the mouth closes it
    and the only teeth seen are the ones `_paint_opening` draws in time with the speech."""
    x0, y0 = np.floor(landmarks[48:60].min(0)).astype(int) - 6
    x1, y1 = np.ceil(landmarks[48:60].max(0)).astype(int) + 7
    patch = np.clip(sprite[y0:y1, x0:x1], 0, 255).astype(np.uint8)
    mask = np.zeros(patch.shape[:2], np.uint8)
    cv2.fillPoly(mask, [np.round(landmarks[60:68] - [x0, y0]).astype(np.int32)], 255)
    mask = cv2.dilate(mask, np.ones((3, 3), np.uint8))
    out = sprite.copy()
    out[y0:y1, x0:x1] = cv2.inpaint(patch, mask, 3, cv2.INPAINT_TELEA).astype(np.float32)
    return out


def _closed_mouth(landmarks: np.ndarray) -> np.ndarray:
    """The landmarks with the inner lips brought together on their midline (the photo may show an open mouth)."""
    closed = landmarks.copy()
    for upper, lower in ((61, 67), (62, 66), (63, 65)):
        middle = (landmarks[upper, 1] + landmarks[lower, 1]) / 2
        gap = landmarks[lower, 1] - landmarks[upper, 1]
        closed[upper, 1], closed[lower, 1] = middle, middle
        # The outer lips follow their inner edge.
        closed[upper - 11, 1] += gap / 2  # 50..52 above 61..63
        closed[lower - 9 if lower > 65 else 56, 1] -= gap / 2  # 58, 57 below 67, 66; 56 below 65
    return closed


def articulate(neutral: np.ndarray, mouth: MouthShape) -> np.ndarray:
    """Landmarks [68, 2] of the closed-mouth `neutral` moved to `mouth`: lips parted, jaw dropped, corners
    spread or rounded. Fully open, the inner lips part by about half the mouth's width, as a real mouth
    on a wide vowel does."""
    points = neutral.copy()
    corners = neutral[[48, 54]]
    centre_x = corners[:, 0].mean()
    half = (corners[1, 0] - corners[0, 0]) / 2
    spread = (0.75 + 0.45 * mouth.width) / 0.975 - 0.13 * mouth.open * (1 - mouth.width)
    gap = 1.05 * half * mouth.open
    mouth_points = list(range(48, 68))
    offsets = neutral[mouth_points, 0] - centre_x
    points[mouth_points, 0] = centre_x + offsets * spread
    profile = np.sqrt(np.clip(1 - (offsets / (half * 1.02)) ** 2, 0, 1))
    upper = np.isin(mouth_points, OUTER_UPPER + INNER_UPPER)
    lower = np.isin(mouth_points, OUTER_LOWER + INNER_LOWER)
    pucker = 0.08 * half * max(0.0, 0.5 - mouth.width)  # rounded lips push out and look fuller
    points[np.array(mouth_points)[upper], 1] -= 0.3 * gap * profile[upper] + pucker * profile[upper]
    points[np.array(mouth_points)[lower], 1] += 0.7 * gap * profile[lower] + pucker * profile[lower]
    for index, share in JAW_MOVING.items():
        points[index, 1] += 0.75 * gap * share
    return points


def _warp_mouth(image: np.ndarray, source: np.ndarray, target: np.ndarray, seam: bool = True) -> np.ndarray:
    """`image` with the pixels at `source` landmarks moved to `target`, smoothly, only around the mouth and chin.

    A backward map: every pixel of the region looks up where it came from, by Gaussian radial basis functions
    centred on the target points (lips and jaw moving, the rest of the face and the region's border held).
    `seam`: the source's inner lips meet (a closed mouth), and the parted inner lips are controls too.
    """
    controls = OUTER_UPPER + OUTER_LOWER + list(JAW_MOVING)
    moved_t, moved_s = target[controls], source[controls]
    if seam:  # the inner lips part from the closed seam: each lip's edge comes from its own side of it
        inner = INNER_UPPER[1:-1] + INNER_LOWER
        side = np.array([[0, -SEAM_PX]] * 3 + [[0, SEAM_PX]] * 3)
        moved_t, moved_s = np.vstack([moved_t, target[inner]]), np.vstack([moved_s, source[inner] + side])
    x0, y0 = np.floor(target[[2, 14, 8, 30]].min(0) - [4, 4]).astype(int)
    x1, y1 = np.ceil(np.maximum(target[[2, 14, 8, 30]].max(0), source[[8]].max(0)) + [4, 14]).astype(int)
    x0, y0 = max(x0, 0), max(y0, 0)
    x1, y1 = min(x1, image.shape[1]), min(y1, image.shape[0])
    border = _ring(x0, y0, x1, y1)
    centres = np.vstack([moved_t, target[FIXED], border])
    shifts = np.vstack([moved_s - moved_t, np.zeros((len(FIXED) + len(border), 2))])
    sigma = 0.45 * (target[54, 0] - target[48, 0])
    kernel = np.exp(-_square_distances(centres, centres) / (2 * sigma ** 2))
    weights = np.linalg.solve(kernel + 1e-3 * np.eye(len(centres)), shifts)
    step = 4  # the field is smooth: evaluate on a coarser grid and interpolate
    ys, xs = np.mgrid[y0:y1:step, x0:x1:step].astype(np.float64)
    grid = np.stack([xs.ravel(), ys.ravel()], 1)
    field = (np.exp(-_square_distances(grid, centres) / (2 * sigma ** 2)) @ weights).reshape(*xs.shape, 2)
    # Grid nodes sit at region pixels 0, step, 2 step...: resizing by exactly `step` keeps them there.
    field = cv2.resize(field.astype(np.float32), None, fx=step, fy=step, interpolation=cv2.INTER_LINEAR)
    field = field[:y1 - y0, :x1 - x0]
    map_y, map_x = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    region = cv2.remap(image, map_x + field[..., 0], map_y + field[..., 1], cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_REFLECT101)
    out = image.copy()
    out[y0:y1, x0:x1] = region
    return out


def _ring(x0: int, y0: int, x1: int, y1: int, per_side: int = 6) -> np.ndarray:
    t = np.linspace(0, 1, per_side, endpoint=False)
    xs, ys = x0 + (x1 - x0) * t, y0 + (y1 - y0) * t
    return np.vstack([np.stack([xs, np.full_like(xs, y0)], 1), np.stack([np.full_like(ys, x1), ys], 1),
                      np.stack([xs + (x1 - x0) / per_side, np.full_like(xs, y1)], 1),
                      np.stack([np.full_like(ys, x0), ys + (y1 - y0) / per_side], 1)])


def _square_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T, 0.0)


def inner_contour(points: np.ndarray, samples: int = 6) -> np.ndarray:
    """The inner lip outline as a smooth closed curve (Catmull-Rom through landmarks 60-67)."""
    ring = points[60:68]
    curve = []
    for k in range(8):
        p0, p1, p2, p3 = ring[k - 1], ring[k], ring[(k + 1) % 8], ring[(k + 2) % 8]
        t = np.linspace(0, 1, samples, endpoint=False)[:, None]
        curve.append(0.5 * (2 * p1 + (p2 - p0) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t ** 2
                            + (3 * p1 - p0 - 3 * p2 + p3) * t ** 3))
    return np.vstack(curve)


def _paint_opening(image: np.ndarray, points: np.ndarray, mouth: MouthShape) -> np.ndarray:
    """The dark cavity between the inner lips, the upper teeth under the upper lip, the tongue and, wide open,
    the lower teeth; shaded to the face's own brightness and edged softly, as a lens would."""
    outline = inner_contour(points)
    x0, y0 = np.floor(outline.min(0)).astype(int) - 4
    x1, y1 = np.ceil(outline.max(0)).astype(int) + 5
    patch = image[y0:y1, x0:x1]
    origin = np.array([x0, y0])
    skin = float(np.median(image[int(points[33, 1]) - 2:int(points[33, 1]) + 3,
                                 int(points[31, 0]):int(points[35, 0])].mean(-1)))
    light = np.clip(skin / 170.0, 0.45, 1.3)
    width = points[54, 0] - points[48, 0]

    def draw(canvas, polygon, value):
        cv2.fillPoly(canvas, [np.round((polygon - origin) * 8).astype(np.int32)], value, cv2.LINE_AA, 3)

    mask = np.zeros(patch.shape[:2], np.float32)
    draw(mask, outline, 1.0)
    # Darker deeper in: a vertical falloff from the lips' edge.
    rows = (np.arange(y0, y1, dtype=np.float32) - outline[:, 1].min()) / max(np.ptp(outline[:, 1]), 1.0)
    depth = (0.75 + 0.5 * np.abs(np.clip(rows, 0, 1) - 0.45))[:, None, None]
    layer = np.broadcast_to(np.array([70, 26, 30], np.float32) * light * depth, patch.shape).copy()
    gap = float(np.mean(points[[65, 66, 67], 1] - points[[63, 62, 61], 1]))
    if gap > 3.0:  # the tongue lies low in an open mouth
        centre = (points[66] + points[62]) / 2 + [0, 0.3 * gap]
        cv2.ellipse(layer, tuple(np.round((centre - origin) * 8).astype(int)),
                    (int(0.3 * width * 8), int(0.3 * gap * 8)), 0, 0, 360,
                    tuple(float(c) for c in np.array([150, 62, 66]) * light), -1, cv2.LINE_AA, 3)
    if gap > 1.0 and mouth.teeth > 0:
        height = min(0.45 * gap, 0.12 * width) * mouth.teeth
        upper = outline[:4 * 6 + 1]  # 60 round the top to 64
        draw(layer, np.vstack([upper, upper[::-1] + [0, height]]), tuple(float(c) for c in np.array([228, 222, 208]) * light))
        if mouth.open > 0.6:
            lower = np.vstack([outline[4 * 6:], outline[:1]])
            draw(layer, np.vstack([lower, lower[::-1] - [0, 0.4 * height]]),
                 tuple(float(c) for c in np.array([200, 192, 180]) * light))
    layer = cv2.GaussianBlur(layer, (3, 3), 0.7)
    # The seam between closed lips is a dark line, whatever the photo showed there.
    cv2.polylines(mask, [np.round((outline - origin) * 8).astype(np.int32)], True, 0.5, 1, cv2.LINE_AA, 3)
    mask = cv2.GaussianBlur(mask, (3, 3), 0.6)[..., None]
    out = image.copy()
    out[y0:y1, x0:x1] = patch * (1 - mask) + layer * mask
    return out


class PhotoFaceRenderer:
    """`face.FaceRenderer`'s interface (`render(pose, mouth, noise)`, `background`) over a photo identity."""

    def __init__(self, identity: PhotoIdentity, frame_size: tuple[int, int], camera: Camera):
        self.identity = identity
        self.width, self.height = frame_size
        self.camera = camera
        # What is left when the speaker steps out (the broken "no face" input): the scene, blurred beyond a face.
        self.background = cv2.resize(cv2.GaussianBlur(identity.sprite, (0, 0), 40), frame_size)
        self._lut = np.clip(((np.arange(256) / 255.0) ** camera.gamma) * 255, 0, 255).astype(np.uint8)

    def render(self, pose: HeadPose, mouth: MouthShape, noise: np.ndarray | None = None) -> np.ndarray:
        ident = self.identity
        points = articulate(ident.landmarks, mouth)
        sprite = _warp_mouth(ident.sprite, ident.landmarks, points)
        sprite = _paint_opening(sprite, points, mouth)
        matrix = cv2.getRotationMatrix2D((SPRITE / 2, SPRITE / 2), pose.angle_deg, pose.scale)
        matrix[:, 2] += np.array(pose.center) - SPRITE / 2
        frame = cv2.warpAffine(sprite, matrix, (self.width, self.height), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REPLICATE)
        return self.film(frame, noise)

    def film(self, frame: np.ndarray, noise: np.ndarray | None) -> np.ndarray:
        """The camera's and the upload's marks on a float frame: blur, sensor noise, colour, tone, JPEG."""
        camera = self.camera
        if camera.blur_sigma > 0:
            frame = cv2.GaussianBlur(frame, (0, 0), camera.blur_sigma)
        frame = frame * np.array(camera.gain, np.float32)
        if noise is not None:
            frame += noise
        frame = cv2.LUT(np.clip(frame, 0, 255).astype(np.uint8), self._lut)
        if camera.jpeg_quality < 100:
            ok, data = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, camera.jpeg_quality])
            frame = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
        return frame
