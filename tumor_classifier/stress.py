"""Stress transforms for the shortcut audit.

The 4-class Kaggle set lets a model separate "tumour" from "no tumour" by MRI contrast
and plane instead of by the tumour (its tumour slices are almost all T1, a third of them
coronal or sagittal; its no-tumour slices are mostly axial T2 / FLAIR).
:data:`STRESSES` are pure functions on one grayscale uint8 slice (H, W) that keep the
tumour but change the contrast (:func:`invert_in_head`, :func:`gamma`) or the image
quality (:func:`gaussian_noise`, :func:`blur`). A model that reads the tumour should
still call a stressed tumour slice a tumour. ``benchmarks/audit.py`` runs them beside
the sequence / plane estimator of :mod:`tumor_classifier.sequence_plane` (whose names
are importable from here as before).

Only numpy is used (the head silhouette comes from
:func:`tumor_classifier.localisation.head_mask`, also numpy only).

Example:
    >>> gray = np.asarray(load_image("scan.jpg"))              # doctest: +SKIP
    >>> {name: stress(gray).shape for name, stress in STRESSES.items()}  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import zlib
from typing import Callable

import numpy as np

from .localisation import head_mask
from .sequence_plane import PLANES, SEQUENCES, estimate_plane, estimate_sequence, plane_features, sequence_features  # noqa: F401 - importable from here as before
from .slice_filters import box_mean, check_gray

__all__ = [
    "PLANES",
    "SEQUENCES",
    "STRESSES",
    "blur",
    "content_seed",
    "estimate_plane",
    "estimate_sequence",
    "gamma",
    "gaussian_noise",
    "invert_in_head",
    "plane_features",
    "sequence_features",
]


def invert_in_head(gray: np.ndarray, threshold: float = 0.1) -> np.ndarray:
    """Inverts the intensities inside the head (``255 - x``); the background stays as it is.

    The head is :func:`tumor_classifier.localisation.head_mask`: pixels above
    ``threshold`` times the 99.5th percentile, filled along rows and columns. Inverting
    a T1 slice gives bright CSF and dark fat, a T2-like contrast, while every edge of the
    tumour stays where it was.

    Args:
        gray: uint8 array (H, W), a grayscale slice.
        threshold: Fraction in (0, 1) of the bright level that counts as head.

    Returns:
        uint8 array (H, W): ``255 - gray`` inside the head, ``gray`` outside it
        (dark background stays dark, so the head's outline is unchanged). An image
        whose 99.5th percentile is 0 has no head and is returned unchanged (a copy).

    Raises:
        InvalidImageError: ``gray`` is not a 2-D uint8 array.
    """
    gray = check_gray(gray)
    if np.percentile(gray, 99.5) <= 0:  # head_mask calls all of a black image "head"
        return gray.copy()
    mask = head_mask(gray, threshold)
    out = gray.copy()
    out[mask] = 255 - gray[mask]
    return out


def gamma(gray: np.ndarray, g: float) -> np.ndarray:
    """Gamma curve ``255 * (x / 255) ** g``: g < 1 brightens the dark range, g > 1 darkens it.

    Args:
        gray: uint8 array (H, W).
        g: Exponent, > 0.

    Returns:
        uint8 array (H, W); 0 and 255 are kept, the order of intensities is kept.

    Raises:
        InvalidImageError: ``gray`` is not a 2-D uint8 array.
        ValueError: ``g`` is not positive.
    """
    gray = check_gray(gray)
    if not g > 0:
        raise ValueError(f"gamma needs an exponent g > 0; got {g}.")
    table = np.round(255.0 * (np.arange(256) / 255.0) ** g).astype(np.uint8)
    return table[gray]


def gaussian_noise(gray: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    """Adds Gaussian noise of standard deviation ``sigma`` (a fraction of the range 0-255).

    Noise is added everywhere, background included (as MRI noise is), then rounded and
    clipped to 0-255.

    Args:
        gray: uint8 array (H, W).
        sigma: Standard deviation as a fraction of 255, >= 0 (0.1 = 25.5 grey levels).
        seed: Seed of the noise (``numpy.random.default_rng``); the same seed and image
            give the same result.

    Returns:
        uint8 array (H, W).

    Raises:
        InvalidImageError: ``gray`` is not a 2-D uint8 array.
        ValueError: ``sigma`` is negative.
    """
    gray = check_gray(gray)
    if not sigma >= 0:
        raise ValueError(f"gaussian_noise needs sigma >= 0 (a fraction of 255); got {sigma}.")
    noise = np.random.default_rng(seed).normal(0.0, sigma * 255.0, size=gray.shape)
    return np.clip(np.round(gray + noise), 0, 255).astype(np.uint8)


def blur(gray: np.ndarray, pixels: int) -> np.ndarray:
    """Box blur: each pixel becomes the mean of the ``pixels`` x ``pixels`` square around it.

    Borders repeat the edge pixels. A box of 7 px on a 224 px slice blurs away the
    cortex's folds but leaves a tumour of 20 px or more visible.

    Args:
        gray: uint8 array (H, W).
        pixels: Odd window side, >= 1 (1 returns a copy).

    Returns:
        uint8 array (H, W), rounded.

    Raises:
        InvalidImageError: ``gray`` is not a 2-D uint8 array.
        ValueError: ``pixels`` is not a positive odd integer.
    """
    gray = check_gray(gray)
    if int(pixels) != pixels or pixels < 1 or pixels % 2 == 0:
        raise ValueError(f"blur needs a positive odd window side in pixels; got {pixels}.")
    return np.clip(np.round(box_mean(gray, int(pixels), edge="replicate")), 0, 255).astype(np.uint8)


def content_seed(gray: np.ndarray) -> int:
    """A seed derived from the pixels (CRC-32), so each image gets its own fixed noise."""
    gray = check_gray(gray)
    return zlib.crc32(np.ascontiguousarray(gray).tobytes()) ^ (gray.shape[0] << 16 | gray.shape[1])


def _noise_01(gray: np.ndarray) -> np.ndarray:
    """:func:`gaussian_noise` with sigma 0.1 and the image's :func:`content_seed`."""
    return gaussian_noise(gray, 0.1, seed=content_seed(gray))


#: Name -> transform (uint8 (H, W) -> uint8 (H, W)), as the audit benchmark runs them.
STRESSES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "inverted": invert_in_head,
    "gamma_0.4": functools.partial(gamma, g=0.4),
    "gamma_2.5": functools.partial(gamma, g=2.5),
    "noise_0.1": _noise_01,
    "blur_7px": functools.partial(blur, pixels=7),
}
