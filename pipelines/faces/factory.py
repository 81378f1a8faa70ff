"""The aligner a `FaceConfig` names, and what `--aligner auto` means."""

from __future__ import annotations

from pipelines.faces.base import Aligner, FaceConfig
from pipelines.faces.fan_weights import fan_detector, fan_weights_present
from pipelines.faces.retinaface_weights import retinaface_weights_present


def auto_aligner(config: FaceConfig, on_gpu: bool) -> str:
    """What `auto` picks, from what is installed and where the face stage runs (bench/README.md, "Choosing an
    aligner", has the measurements):

    * face-alignment when its weights are on disk (FAN's, and S3FD's unless RetinaFace can give the boxes): the
      users who have them chose it;
    * retinaface on a GPU: the only aligner with registry weights that batches there;
    * dlib on CPUs: on the real clips it was as fast end to end as retinaface and its 68 points shook the crop less
      (retinaface found faces on a few more frames: 100 % against 98.4 %).
    """
    retinaface = retinaface_weights_present()
    if fan_weights_present(config.face_weights, config.fan_detector) and (
            retinaface or fan_detector(config.face_weights, config.fan_detector) == "s3fd"):
        return "face-alignment"
    return "retinaface" if on_gpu and retinaface else "dlib"


def make_aligner(config: FaceConfig) -> Aligner:
    """The aligner `config.aligner` names (`auto`: `auto_aligner` for the device this process would use)."""
    # Each aligner is imported only when chosen: retinaface and face-alignment bring torch, dlib its own native library.
    choice = config.aligner
    if choice == "auto":
        from pipelines.core.device import resolve_device

        choice = auto_aligner(config, on_gpu=resolve_device(config.device).type == "cuda")
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
