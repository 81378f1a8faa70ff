"""Rendering a talking face: an identity, a head pose and a mouth shape in, an RGB frame out.

The face is drawn in a canonical sprite (face centred, upright) with shading where a real face has it, because
the offline aligner's HOG detector sees gradients: a flat cartoon is missed on a third of frames, a shaded one
is not. The sprite is then rotated, scaled and moved into the frame, so alignment has real work to do.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

SPRITE = 256  # canonical sprite side; the head is ~200 px tall in it
CENTER_X = SPRITE // 2
AA = cv2.LINE_AA
SHIFT = 4  # sub-pixel bits for cv2 drawing: smooth motion instead of whole-pixel jumps
ONE = 1 << SHIFT


@dataclass(frozen=True)
class Identity:
    """Everything that makes one synthetic speaker look unlike another."""

    skin: tuple[int, int, int]
    lips: tuple[int, int, int]
    hair: tuple[int, int, int]
    iris: tuple[int, int, int]
    clothes: tuple[int, int, int]
    background: tuple[tuple[int, int, int], tuple[int, int, int]]
    backdrop: int  # 0 plain gradient, 1 vertical stripes, 2 soft blobs, 3 horizon
    backdrop_seed: int  # places the stripes and blobs
    face_width: float  # half-width of the head in sprite pixels
    face_height: float  # half-height of the head (crown to chin / 2)
    eye_gap: float  # half distance between the eye centres
    mouth_width: float  # half-width of the mouth at rest
    brow_weight: int  # eyebrow thickness in pixels
    hair_style: int  # 0 short, 1 long, 2 bald-ish
    light_angle: float  # direction the key light comes from, radians
    light_strength: float  # 0 flat .. 0.5 strong side light


@dataclass(frozen=True)
class HeadPose:
    angle_deg: float  # in-plane roll
    scale: float  # sprite pixels -> frame pixels
    center: tuple[float, float]  # where the sprite centre lands in the frame (x, y)


@dataclass(frozen=True)
class MouthShape:
    """Mouth parameters, each in [0, 1]."""

    open: float  # jaw/lip opening
    width: float  # 0 rounded (oo), 0.5 neutral, 1 spread (ee)
    teeth: float  # how much of the teeth shows when open


REST = MouthShape(open=0.0, width=0.5, teeth=0.0)

SKIN_TONES = [(241, 194, 167), (224, 172, 140), (198, 134, 100), (161, 102, 72), (120, 76, 52), (90, 58, 40),
              (250, 214, 190), (210, 160, 120)]
HAIR_COLOURS = [(30, 22, 18), (70, 45, 25), (120, 80, 40), (200, 170, 110), (90, 90, 90), (15, 15, 15)]
IRIS_COLOURS = [(60, 40, 20), (40, 80, 140), (60, 110, 70), (90, 70, 40)]


def random_identity(rng: np.random.Generator) -> Identity:
    skin = np.array(SKIN_TONES[rng.integers(len(SKIN_TONES))]) + rng.integers(-12, 13, 3)
    # A camera exposes for the face: the darkest tones are brightened so their features keep contrast.
    skin = skin * max(1.0, 120.0 / skin.mean())
    lips = skin * np.array([0.85, 0.55, 0.55]) + rng.integers(-10, 11, 3)
    background = tuple(tuple(int(c) for c in rng.integers(20, 236, 3)) for _ in range(2))
    return Identity(
        skin=_colour(skin),
        lips=_colour(lips),
        hair=_colour(np.array(HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))]) + rng.integers(-8, 9, 3)),
        iris=_colour(IRIS_COLOURS[rng.integers(len(IRIS_COLOURS))]),
        clothes=_colour(rng.integers(10, 246, 3)),
        background=background,
        backdrop=int(rng.integers(4)),
        backdrop_seed=int(rng.integers(2 ** 31)),
        face_width=float(rng.uniform(70, 84)),
        face_height=float(rng.uniform(92, 104)),
        eye_gap=float(rng.uniform(30, 36)),
        mouth_width=float(rng.uniform(20, 26)),
        brow_weight=int(rng.integers(4, 8)),
        hair_style=int(rng.integers(3)),
        light_angle=float(rng.uniform(0, 2 * np.pi)),
        light_strength=float(rng.uniform(0.0, 0.35)),
    )


def _colour(values) -> tuple[int, int, int]:
    return tuple(int(np.clip(v, 0, 255)) for v in values)


def _shade(colour, factor: float) -> tuple[int, int, int]:
    return _colour(np.array(colour, dtype=float) * factor)


def _pts(points: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(points) * ONE).astype(np.int32)


def _ellipse_points(cx, cy, ax, ay, start_deg=0, end_deg=360, n=48) -> np.ndarray:
    t = np.radians(np.linspace(start_deg, end_deg, n))
    return np.stack([cx + ax * np.cos(t), cy + ay * np.sin(t)], axis=1)


class FaceRenderer:
    """Renders frames of one identity into frames of one size; `__init__` prepares what never changes."""

    def __init__(self, identity: Identity, frame_size: tuple[int, int]):
        self.identity = identity
        self.width, self.height = frame_size
        self.background = render_background(identity, frame_size, np.random.default_rng(identity.backdrop_seed))
        self._light = _light_map(identity)
        self._eye_y = 112.0
        self._mouth_y = 176.0
        # Brows must stand out from the skin whatever the two colours are: the detector keys on them.
        self._brow_colour = _colour(np.minimum(np.array(identity.hair), np.array(identity.skin) * 0.35))

    def render(self, pose: HeadPose, mouth: MouthShape, noise: np.ndarray | None = None) -> np.ndarray:
        sprite, alpha = self._sprite(mouth)
        matrix = cv2.getRotationMatrix2D((SPRITE / 2, SPRITE / 2), pose.angle_deg, pose.scale)
        matrix[:, 2] += np.array(pose.center) - SPRITE / 2
        size = (self.width, self.height)
        warped = cv2.warpAffine(sprite, matrix, size, flags=cv2.INTER_LINEAR, borderValue=0)
        weight = cv2.warpAffine(alpha, matrix, size, flags=cv2.INTER_LINEAR, borderValue=0)[..., None]
        frame = self.background * (1.0 - weight) + warped * weight
        if noise is not None:
            frame += noise
        return np.clip(frame, 0, 255).astype(np.uint8)

    def _sprite(self, mouth: MouthShape) -> tuple[np.ndarray, np.ndarray]:
        ident = self.identity
        canvas = np.zeros((SPRITE, SPRITE, 3), np.uint8)
        mask = np.zeros((SPRITE, SPRITE), np.uint8)
        jaw_drop = 10.0 * mouth.open  # the chin follows the jaw, as in a real face

        self._draw_body(canvas, mask)
        head = self._head_outline(jaw_drop)
        if ident.hair_style == 1:  # long hair falls behind the head
            back = _ellipse_points(CENTER_X, 118, ident.face_width + 14, ident.face_height + 6, 180, 360)
            back = np.vstack([back, [[CENTER_X + ident.face_width + 16, 200], [CENTER_X - ident.face_width - 16, 200]]])
            cv2.fillPoly(canvas, [_pts(back)], ident.hair, AA, SHIFT)
            cv2.fillPoly(mask, [_pts(back)], 255, AA, SHIFT)
        for side in (-1, 1):  # ears
            ear = (CENTER_X + side * (ident.face_width - 2), self._eye_y + 12)
            cv2.ellipse(canvas, _pts(ear), (9 * ONE, 17 * ONE), 0, 0, 360, _shade(ident.skin, 0.88), -1, AA, SHIFT)
            cv2.ellipse(mask, _pts(ear), (9 * ONE, 17 * ONE), 0, 0, 360, 255, -1, AA, SHIFT)
        cv2.fillPoly(canvas, [_pts(head)], ident.skin, AA, SHIFT)
        cv2.fillPoly(mask, [_pts(head)], 255, AA, SHIFT)
        self._draw_hair(canvas)
        self._draw_eyes(canvas)
        self._draw_nose(canvas)
        self._draw_mouth(canvas, mouth, jaw_drop)
        # Shading darkens towards the outline and away from the light, giving the detector the head contour
        # and the eye sockets it expects; it is a precomputed multiplicative map over the whole sprite.
        shaded = canvas.astype(np.float32) * self._light
        shaded = cv2.GaussianBlur(shaded, (3, 3), 0.7)
        return shaded, mask.astype(np.float32) / 255.0

    def _head_outline(self, jaw_drop: float) -> np.ndarray:
        ident = self.identity
        cy = 118.0
        top = _ellipse_points(CENTER_X, cy, ident.face_width, ident.face_height, 180, 360, 40)
        # The lower half narrows to a chin and stretches with the jaw.
        t = np.radians(np.linspace(0, 180, 40))
        chin = ident.face_height + 8 + jaw_drop
        x = CENTER_X + ident.face_width * np.cos(t) * (1 - 0.18 * np.sin(t) ** 4)
        y = cy + chin * np.sin(t)
        return np.vstack([np.stack([x, y], 1), top])

    def _draw_body(self, canvas, mask) -> None:
        ident = self.identity
        neck = np.array([[CENTER_X - 30, 180], [CENTER_X + 30, 180], [CENTER_X + 34, 240], [CENTER_X - 34, 240]])
        cv2.fillPoly(canvas, [_pts(neck)], _shade(ident.skin, 0.8), AA, SHIFT)
        cv2.fillPoly(mask, [_pts(neck)], 255, AA, SHIFT)
        shoulders = np.vstack([_ellipse_points(CENTER_X, 262, 120, 36, 180, 360, 30), [[248, 256], [8, 256]]])
        cv2.fillPoly(canvas, [_pts(shoulders)], ident.clothes, AA, SHIFT)
        cv2.fillPoly(mask, [_pts(shoulders)], 255, AA, SHIFT)

    def _draw_hair(self, canvas) -> None:
        ident = self.identity
        if ident.hair_style == 2:
            cap = _ellipse_points(CENTER_X, 84, ident.face_width - 6, 40, 195, 345, 30)
        else:
            # Crown, then back along a hairline that dips at the temples.
            crown = _ellipse_points(CENTER_X, 112, ident.face_width + 4, ident.face_height + 6, 180, 360, 40)
            hairline = _ellipse_points(CENTER_X, 80, ident.face_width - 2, 14, 0, -180, 40)
            hairline[:, 1] += 10 * (np.abs(hairline[:, 0] - CENTER_X) / ident.face_width) ** 2
            cap = np.vstack([crown, hairline])
        cv2.fillPoly(canvas, [_pts(cap)], ident.hair, AA, SHIFT)

    def _draw_eyes(self, canvas) -> None:
        ident = self.identity
        y = self._eye_y
        for side in (-1, 1):
            x = CENTER_X + side * ident.eye_gap
            socket = _shade(ident.skin, 0.82)
            cv2.ellipse(canvas, _pts((x, y - 1)), (int(17 * ONE), int(10 * ONE)), 0, 0, 360, socket, -1, AA, SHIFT)
            cv2.ellipse(canvas, _pts((x, y)), (int(13 * ONE), int(6 * ONE)), 0, 0, 360, (240, 240, 235), -1, AA, SHIFT)
            cv2.circle(canvas, _pts((x, y)), int(5.5 * ONE), ident.iris, -1, AA, SHIFT)
            cv2.circle(canvas, _pts((x, y)), int(2.5 * ONE), (10, 10, 10), -1, AA, SHIFT)
            cv2.ellipse(canvas, _pts((x, y)), (int(13 * ONE), int(6 * ONE)), 0, 180, 360, (40, 30, 30), 2, AA, SHIFT)
            brow = _ellipse_points(x, y - 10, 17, 8, 200, 340, 12)
            cv2.polylines(canvas, [_pts(brow)], False, self._brow_colour, ident.brow_weight, AA, SHIFT)

    def _draw_nose(self, canvas) -> None:
        ident = self.identity
        dark = _shade(ident.skin, 0.7)
        bridge = np.array([[CENTER_X - 6, self._eye_y + 4], [CENTER_X - 8, 146], [CENTER_X - 2, 152]])
        cv2.polylines(canvas, [_pts(bridge)], False, dark, 2, AA, SHIFT)
        for side in (-1, 1):
            cv2.ellipse(canvas, _pts((CENTER_X + side * 7, 152)), (int(4 * ONE), int(2.5 * ONE)), 0, 0, 360,
                        _shade(ident.skin, 0.45), -1, AA, SHIFT)
        wings = _ellipse_points(CENTER_X, 148, 14, 8, 10, 170, 20)
        cv2.polylines(canvas, [_pts(wings)], False, _shade(ident.skin, 0.78), 2, AA, SHIFT)

    def _draw_mouth(self, canvas, mouth: MouthShape, jaw_drop: float) -> None:
        ident = self.identity
        half_width = ident.mouth_width * (0.75 + 0.45 * mouth.width) - 3 * mouth.open * (1 - mouth.width)
        gap = 2.0 + 22.0 * mouth.open  # inner opening height
        y = self._mouth_y + 0.4 * jaw_drop
        top_inner, bottom_inner = y - 0.35 * gap, y + 0.65 * gap
        corners = np.array([[CENTER_X - half_width, y], [CENTER_X + half_width, y]])
        xs = np.linspace(-1, 1, 25)
        # Upper lip with a cupid's bow; lower lip a fuller curve; both thicken a little when rounded.
        upper_outer = np.stack([CENTER_X + half_width * xs,
                                top_inner - (7 + 2 * (1 - mouth.width)) * (1 - xs ** 2) ** 0.6
                                + 2.5 * np.exp(-(xs * 6) ** 2)], 1)
        lower_outer = np.stack([CENTER_X + half_width * xs[::-1],
                                bottom_inner + (8 + 2 * (1 - mouth.width)) * (1 - xs[::-1] ** 2) ** 0.7], 1)
        lips_outline = np.vstack([corners[:1], upper_outer, corners[1:], lower_outer])
        cv2.fillPoly(canvas, [_pts(lips_outline)], ident.lips, AA, SHIFT)
        inner_top = np.stack([CENTER_X + 0.9 * half_width * xs, top_inner + 0 * xs + 1.5 * xs ** 2], 1)
        inner_bottom = np.stack([CENTER_X + 0.9 * half_width * xs[::-1],
                                 bottom_inner - (bottom_inner - y) * xs[::-1] ** 2 * 0.9], 1)
        inner_top[:, 1] = y - (y - top_inner) * (1 - xs ** 2)
        cavity = np.vstack([inner_top, inner_bottom])
        cv2.fillPoly(canvas, [_pts(cavity)], (45, 12, 15), AA, SHIFT)
        if mouth.open > 0.1 and mouth.teeth > 0:
            teeth_h = min(gap * 0.35, 6.0) * mouth.teeth
            teeth = np.vstack([inner_top, inner_top[::-1] + [0, teeth_h]])
            cv2.fillPoly(canvas, [_pts(teeth)], (235, 232, 220), AA, SHIFT)
        cv2.polylines(canvas, [_pts(cavity)], True, _shade(ident.lips, 0.6), 1, AA, SHIFT)


def _light_map(ident: Identity) -> np.ndarray:
    """Multiplicative shading over the sprite: a key light from one side and falloff towards the outline."""
    yy, xx = np.mgrid[0:SPRITE, 0:SPRITE].astype(np.float32)
    dx, dy = (xx - CENTER_X) / ident.face_width, (yy - 125) / (ident.face_height + 8)
    radial = 1.0 - 0.28 * np.clip(dx ** 2 + dy ** 2, 0, 1.3) ** 2
    directional = 1.0 + ident.light_strength * (np.cos(ident.light_angle) * dx + np.sin(ident.light_angle) * dy) * 0.5
    return (radial * directional)[..., None].astype(np.float32)


def render_background(ident: Identity, frame_size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    width, height = frame_size
    a, b = (np.array(c, np.float32) for c in ident.background)
    t = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    image = np.broadcast_to(a * (1 - t) + b * t, (height, width, 3)).copy()
    if ident.backdrop == 1:
        period = int(rng.integers(24, 64))
        stripes = (np.arange(width) // period) % 2 == 0
        image[:, stripes] *= 0.85
    elif ident.backdrop == 2:
        for _ in range(6):
            centre = (int(rng.integers(width)), int(rng.integers(height)))
            cv2.circle(image, centre, int(rng.integers(20, 80)), tuple(float(c) for c in rng.integers(0, 255, 3)), -1)
        image = cv2.GaussianBlur(image, (0, 0), 12)
    elif ident.backdrop == 3:
        image[int(height * 0.6):] *= 0.7
    return image
