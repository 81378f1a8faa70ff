"""The aligner a `FaceConfig` names."""

from __future__ import annotations

from pipelines.faces.base import Aligner, FaceConfig
from pipelines.faces.fan_weights import fan_weights_present


def make_aligner(config: FaceConfig) -> Aligner:
    """The aligner `config.aligner` names; `auto` prefers face-alignment (more accurate, GPU-batched) but only
    when its weights are already on disk, so an offline machine falls back to dlib instead of failing."""
    # Each aligner is imported only when chosen: retinaface and face-alignment bring torch, dlib its own native library.
    choice = config.aligner
    if choice == "auto":
        choice = "face-alignment" if fan_weights_present(config.face_weights) else "dlib"
    if choice == "retinaface":
        from pipelines.faces.retinaface_aligner import RetinaFaceAligner

        return RetinaFaceAligner(config)
    if choice == "face-alignment":
        from pipelines.faces.fan_aligner import FanAligner

        return FanAligner(config)
    from pipelines.faces.dlib_aligner import DlibAligner, DlibAlignerConfig

    if config.min_score is None:
        return DlibAligner()
    return DlibAligner(DlibAlignerConfig(min_score=config.min_score))
