"""Batch columns whose rows hold arrays of different shapes (a chunk's frames, a segment's tar bytes).

Ray Data stores an object column like this as a variable-shaped tensor (or binary) column; building it
through numpy's usual constructors would instead try to stack the rows and fail on differing shapes.
"""

from __future__ import annotations

import numpy as np


def object_column(values: list) -> np.ndarray:
    column = np.empty(len(values), dtype=object)
    column[:] = values
    return column
