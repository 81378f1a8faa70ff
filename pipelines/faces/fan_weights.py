"""face-alignment's weight files: their names, where they come from, and where they are looked for.

Light on purpose (no torch until a folder has to be found): the preprocessing driver asks whether the weights
are present to decide which aligner `auto` means, without loading the aligner.
"""

from __future__ import annotations

from pathlib import Path

# face-alignment 1.5.0's weight files, by the names it looks for in the torch hub cache (its `models_urls`;
# tests check these against the installed package so an upgrade that renames them fails loudly).
FAN_WEIGHTS = "2DFAN4-11f355bf06.pth.tar"
S3FD_WEIGHTS = "s3fd-619a316812.pth"
WEIGHT_URLS = {
    FAN_WEIGHTS: "https://www.adrianbulat.com/downloads/python-fan/2DFAN4-11f355bf06.pth.tar",
    S3FD_WEIGHTS: "https://www.adrianbulat.com/downloads/python-fan/s3fd-619a316812.pth",
}


def fan_weights_dir(face_weights: Path | None) -> Path:
    """The folder face-alignment's weights are read from: `face_weights`, else the torch hub cache."""
    if face_weights is not None:
        return Path(face_weights)
    import torch.hub  # here, not at module level: the dlib path needs no torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def fan_detector(face_weights: Path | None, detector: str) -> str:
    """Which detector gives FAN its boxes: `detector`, where "auto" is S3FD when its weights are in the folder,
    else RetinaFace (whose weights ship in a registry package), so that FAN's weights alone are enough."""
    if detector != "auto":
        return detector
    return "s3fd" if (fan_weights_dir(face_weights) / S3FD_WEIGHTS).is_file() else "retinaface"


def missing_fan_weights(face_weights: Path | None, detector: str = "auto") -> list[str]:
    """The weight files that face-alignment with `detector` needs and the folder lacks."""
    needed = [FAN_WEIGHTS] + ([S3FD_WEIGHTS] if fan_detector(face_weights, detector) == "s3fd" else [])
    folder = fan_weights_dir(face_weights)
    return [name for name in needed if not (folder / name).is_file()]


def fan_weights_present(face_weights: Path | None, detector: str = "auto") -> bool:
    return not missing_fan_weights(face_weights, detector)
