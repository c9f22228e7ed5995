"""Numpy filters on one grey slice, shared by the stress transforms and the sequence / plane estimator.

Only numpy: a box mean by cumulative sums, an erosion built on it, a mask's bounding box,
and the check that an input is one uint8 slice.
"""

from __future__ import annotations

import numpy as np

from .exceptions import InvalidImageError


def check_gray(gray: np.ndarray) -> np.ndarray:
    """The input as a 2-D uint8 array, or an :class:`InvalidImageError` saying why not."""
    array = np.asarray(gray)
    if array.ndim != 2 or 0 in array.shape:
        raise InvalidImageError(
            f"Expected one grayscale slice, a 2-D array (H, W); got shape {array.shape}. "
            "Decode with tumor_classifier.load_image and np.asarray first."
        )
    if array.dtype != np.uint8:
        raise InvalidImageError(f"Expected a uint8 slice with values 0-255; got dtype {array.dtype}.")
    return array


def box_mean(image: np.ndarray, size: int, *, edge: str) -> np.ndarray:
    """Mean over a ``size`` x ``size`` window centred on each pixel (separable, by cumsum).

    Args:
        image: Array (H, W), any numeric or bool dtype.
        size: Odd window side in pixels, >= 1.
        edge: ``"replicate"`` (outside pixels repeat the border) or ``"zero"`` (outside
            counts as 0, which makes ``box_mean(mask) == 1`` an erosion of a mask).

    Returns:
        float64 array (H, W).
    """
    out = np.asarray(image, dtype=np.float64)
    radius = size // 2
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        # One extra leading slot: window i sums padded[i + 1 : i + 1 + size], which is
        # total[i + size] - total[i]; the slot itself is never inside a window.
        pad[axis] = (radius + 1, radius)
        padded = np.pad(out, pad, mode="edge" if edge == "replicate" else "constant")
        total = np.cumsum(padded, axis=axis)
        n = total.shape[axis]
        out = (np.take(total, np.arange(size, n), axis=axis) - np.take(total, np.arange(0, n - size), axis=axis)) / size
    return out


def head_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` of a non-empty mask, bottom and right exclusive."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def eroded(mask: np.ndarray, size: int) -> np.ndarray:
    """Pixels whose whole ``size`` x ``size`` neighbourhood lies inside ``mask``."""
    return box_mean(mask, size, edge="zero") > 1 - 1e-9


def odd_size(value: float) -> int:
    """The odd window side nearest below ``value``, at least 3."""
    return max(3, int(value) | 1)
