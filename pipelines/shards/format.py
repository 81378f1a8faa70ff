"""How a segment's aligned face crops are stored in a shard: one JPEG of the crops stacked vertically.

Kept free of heavy imports: the training loader needs this and nothing else of preprocessing. The choice was
measured against the alternatives in bench/face_encoding.py.
"""

from __future__ import annotations

import cv2
import numpy as np


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
