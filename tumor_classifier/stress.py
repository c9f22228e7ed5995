"""Stress transforms and a sequence / plane estimator, for the shortcut audit.

The 4-class Kaggle set lets a model separate "tumour" from "no tumour" by MRI contrast
and plane instead of by the tumour (its tumour slices are almost all T1, a third of them
coronal or sagittal; its no-tumour slices are mostly axial T2 / FLAIR). This module gives
``benchmarks/audit.py`` the two tools it needs to measure that:

* **Stress transforms** (:data:`STRESSES`): pure functions on one grayscale uint8 slice
  (H, W) that keep the tumour but change the contrast (:func:`invert_in_head`,
  :func:`gamma`) or the image quality (:func:`gaussian_noise`, :func:`blur`). A model that
  reads the tumour should still call a stressed tumour slice a tumour.
* **A sequence and plane estimator** (:func:`estimate_sequence`,
  :func:`estimate_plane`): a few transparent intensity and shape rules, so recall can be
  reported per (class, sequence, plane) group.

How good the estimator is (by-eye labels of 198 slices in
``benchmarks/sequence_plane_labels.csv``; its thresholds were set on the 150 rows marked
``tuning`` and then checked once on the 48 rows marked ``holdout``): see the agreement
``benchmarks/audit.py`` prints. It is a heuristic, moderately good and no better: the
plane rules mostly look for a neck (coronal / sagittal) and for left-right asymmetry
(sagittal); the sequence rules look at the sign of small local contrasts and at the
ventricles. Heavily windowed or cropped images, CT slices (which it calls T1 or T2: it
has no "other"), post-operative and skull-base slices, and slices where a large bright
tumour dominates the statistics fool it. Use its groups to see *where* a model fails,
not as ground truth; the ``T1`` group includes contrast-enhanced T1.

Only numpy is used (the head silhouette comes from
:func:`tumor_classifier.localisation.head_mask`, also numpy only).

Example:
    >>> gray = np.asarray(load_image("scan.jpg"))              # doctest: +SKIP
    >>> {name: stress(gray).shape for name, stress in STRESSES.items()}  # doctest: +SKIP
    >>> estimate_sequence(gray), estimate_plane(gray)          # doctest: +SKIP
    ('T1', 'coronal')
"""

from __future__ import annotations

import functools
import zlib
from typing import Callable

import numpy as np

from .exceptions import InvalidImageError
from .localisation import head_mask

#: Labels :func:`estimate_sequence` returns ("T1" includes contrast-enhanced T1).
SEQUENCES: tuple[str, ...] = ("T1", "T2", "FLAIR")
#: Labels :func:`estimate_plane` returns.
PLANES: tuple[str, ...] = ("axial", "coronal", "sagittal")

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


# --------------------------------------------------------------------------- helpers


def _check_gray(gray: np.ndarray) -> np.ndarray:
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


def _box_mean(image: np.ndarray, size: int, *, edge: str) -> np.ndarray:
    """Mean over a ``size`` x ``size`` window centred on each pixel (separable, by cumsum).

    Args:
        image: Array (H, W), any numeric or bool dtype.
        size: Odd window side in pixels, >= 1.
        edge: ``"replicate"`` (outside pixels repeat the border) or ``"zero"`` (outside
            counts as 0, which makes ``_box_mean(mask) == 1`` an erosion of a mask).

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


def _head_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` of a non-empty mask, bottom and right exclusive."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _eroded(mask: np.ndarray, size: int) -> np.ndarray:
    """Pixels whose whole ``size`` x ``size`` neighbourhood lies inside ``mask``."""
    return _box_mean(mask, size, edge="zero") > 1 - 1e-9


def _odd(value: float) -> int:
    return max(3, int(value) | 1)


# --------------------------------------------------------------------------- stresses


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
    gray = _check_gray(gray)
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
    gray = _check_gray(gray)
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
    gray = _check_gray(gray)
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
    gray = _check_gray(gray)
    if int(pixels) != pixels or pixels < 1 or pixels % 2 == 0:
        raise ValueError(f"blur needs a positive odd window side in pixels; got {pixels}.")
    return np.clip(np.round(_box_mean(gray, int(pixels), edge="replicate")), 0, 255).astype(np.uint8)


def content_seed(gray: np.ndarray) -> int:
    """A seed derived from the pixels (CRC-32), so each image gets its own fixed noise."""
    gray = _check_gray(gray)
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


# --------------------------------------------------------------------------- sequence


def sequence_features(gray: np.ndarray) -> dict[str, float]:
    """The three numbers :func:`estimate_sequence` decides on.

    All are measured on the brain: the head silhouette
    (:func:`~tumor_classifier.localisation.head_mask`) eroded by about 6% of the head's
    shorter side, which drops most of the scalp and skull.

    * ``local_polarity``: share of brain pixels at least 15% brighter than the mean of
      their neighbourhood (a square of 15/224 of the head's side) minus the share at
      least 15% darker. Thin dark lines (CSF in sulci and fissures on T1) make it
      negative; thin bright lines (grey matter on FLAIR, CSF on T2) make it positive.
    * ``inner_polarity``: in the inner part of the head (eroded by 20% of its side,
      where the ventricles are), ``(p95 + p5 - 2 * median) / median``: positive when the
      bright extremes reach further from the median than the dark ones (bright
      ventricles: T2), negative for dark ventricles.
    * ``inner_dark``: share of that inner part darker than 0.6 times its median (dark
      ventricles: T1, FLAIR).

    Args:
        gray: uint8 array (H, W).

    Returns:
        ``{"local_polarity", "inner_polarity", "inner_dark"}``, floats; 0.0 each for an
        image without a usable head.

    Raises:
        InvalidImageError: ``gray`` is not a 2-D uint8 array.
    """
    gray = _check_gray(gray)
    image = gray.astype(np.float64)
    mask = head_mask(gray)
    top, bottom, left, right = _head_box(mask)
    side = min(bottom - top, right - left)
    brain = _eroded(mask, _odd(0.12 * side))
    inner = _eroded(mask, _odd(0.40 * side))
    if brain.sum() < 50 or inner.sum() < 20:
        return {"local_polarity": 0.0, "inner_polarity": 0.0, "inner_dark": 0.0}
    level = max(float(np.median(image[brain])), 1.0)
    residual = (image - _box_mean(image, _odd(15 / 224 * side), edge="replicate"))[brain] / level
    centre = image[inner]
    centre_level = max(float(np.median(centre)), 1.0)
    p5, p95 = np.percentile(centre, [5, 95])
    return {
        "local_polarity": float(np.mean(residual > 0.15) - np.mean(residual < -0.15)),
        "inner_polarity": float((p95 + p5 - 2 * centre_level) / centre_level),
        "inner_dark": float(np.mean(centre < 0.6 * centre_level)),
    }


def estimate_sequence(gray: np.ndarray, *, return_features: bool = False):
    """Guesses the MRI contrast of a slice: ``"T1"``, ``"T2"`` or ``"FLAIR"``.

    The rule, in the terms of :func:`sequence_features`:

    1. ``local_polarity <= 0.01`` (thin dark structures dominate: dark CSF in the sulci
       with white matter at least as bright as grey matter) -> **T1**, unless
       ``inner_polarity > 0.6`` (the centre's bright extremes dominate: bright
       ventricles) -> **T2**;
    2. otherwise (thin bright structures dominate) -> **FLAIR** if ``inner_dark > 0.07``
       (dark ventricles in the centre), else **T2**.

    The thresholds were read off 150 slices labelled by eye (the ``tuning`` rows of
    ``benchmarks/sequence_plane_labels.csv``). It is a weak estimator: contrast-enhanced
    T1 with a large bright tumour or heavy windowing can pass for T2 or FLAIR, and
    slices far above or below the ventricles lack the structures it looks for. The
    agreement with the by-eye labels is printed by ``benchmarks/audit.py``.

    Args:
        gray: uint8 array (H, W), a grayscale slice (any size).
        return_features: Also return the :func:`sequence_features` dict.

    Returns:
        One of :data:`SEQUENCES`; with ``return_features`` a tuple ``(label, features)``.

    Raises:
        InvalidImageError: ``gray`` is not a 2-D uint8 array.

    Example:
        >>> estimate_sequence(np.asarray(load_image("scan.jpg")))  # doctest: +SKIP
        'T1'
    """
    features = sequence_features(gray)
    if features["local_polarity"] <= 0.01:
        label = "T2" if features["inner_polarity"] > 0.6 else "T1"
    else:
        label = "FLAIR" if features["inner_dark"] > 0.07 else "T2"
    return (label, features) if return_features else label


# --------------------------------------------------------------------------- plane


def plane_features(gray: np.ndarray) -> dict[str, float]:
    """The shape and symmetry numbers :func:`estimate_plane` decides on.

    Measured on the head silhouette (:func:`~tumor_classifier.localisation.head_mask`)
    and its bounding box; the mirror axis is the silhouette's centre column.

    * ``symmetry``: correlation of the head's pixels with their left-right mirror image
      (-1..1; axial and coronal slices are near 0.5-0.9, sagittal ones near 0-0.35).
    * ``mask_symmetry``: overlap (intersection over union) of the silhouette's two
      halves, mirrored (0..1).
    * ``aspect``: box height / width (axial heads are longer front to back, ~1.2;
      sagittal ones ~1.0).
    * ``touches_bottom``: 1.0 when the silhouette reaches the image's last two rows (a
      neck cut by the field of view), else 0.0.
    * ``bottom_width``: silhouette width at 90% of the box height / its widest row (a
      neck or jaw keeps it wide; an axial skull narrows).
    * ``bottom_top_ratio``: mean intensity of the lowest quarter of the head / of the
      top quarter (the neck's muscles and air below a coronal brain are dark).
    * ``fill``: silhouette area / area of the ellipse inscribed in the box (above ~1.15
      the silhouette is a rectangle: a grey background or a frame, no usable outline).

    Args:
        gray: uint8 array (H, W).

    Returns:
        Dict of the floats above.

    Raises:
        InvalidImageError: ``gray`` is not a 2-D uint8 array.
    """
    gray = _check_gray(gray)
    image = gray.astype(np.float64)
    mask = head_mask(gray)
    height = mask.shape[0]
    top, bottom, left, right = _head_box(mask)
    box_h, box_w = bottom - top, right - left
    columns = np.nonzero(mask)[1]
    centre = int(columns.mean())
    half = int(min(centre - left, right - 1 - centre))

    def halves(array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = array[top:bottom]
        return rows[:, centre - half : centre], rows[:, centre + 1 : centre + 1 + half][:, ::-1]

    symmetry, mask_symmetry = 0.0, 0.0
    if half >= 4:
        first, second = halves(image)
        if first.std() > 0 and second.std() > 0:
            symmetry = float(np.corrcoef(first.ravel(), second.ravel())[0, 1])
        mask_first, mask_second = halves(mask)
        mask_symmetry = float((mask_first & mask_second).sum() / max((mask_first | mask_second).sum(), 1))
    widths = mask[top:bottom].sum(axis=1)
    quarter = max(box_h // 4, 1)
    upper = image[top : top + quarter][mask[top : top + quarter]]
    lower = image[bottom - quarter : bottom][mask[bottom - quarter : bottom]]
    return {
        "symmetry": symmetry,
        "mask_symmetry": mask_symmetry,
        "aspect": box_h / box_w,
        "touches_bottom": float(bottom >= height - 1),
        "bottom_width": float(widths[int(0.9 * (box_h - 1))] / max(widths.max(), 1)),
        "bottom_top_ratio": float(lower.mean() / max(upper.mean(), 1.0)) if upper.size and lower.size else 1.0,
        "fill": float(mask[top:bottom, left:right].mean() / (np.pi / 4)),
    }


def estimate_plane(gray: np.ndarray, *, return_features: bool = False):
    """Guesses the slice plane: ``"axial"``, ``"coronal"`` or ``"sagittal"``.

    The rule, in the terms of :func:`plane_features`:

    1. ``fill > 1.15`` (no usable head outline) -> **axial**, the commonest plane;
    2. ``symmetry < 0.38`` and ``mask_symmetry < 0.93`` and ``aspect < 1.17`` (not
       left-right symmetric, about as tall as long) -> **sagittal**;
    3. ``touches_bottom`` and ``bottom_width > 0.68`` and ``bottom_top_ratio < 0.9``
       (a wide, darker neck running off the bottom of the image) -> **coronal**;
    4. otherwise -> **axial**.

    Thresholds were read off 150 slices labelled by eye (the ``tuning`` rows of
    ``benchmarks/sequence_plane_labels.csv``). Known failures: coronal slices without a
    visible neck (cropped to the skull) come out axial; axial skull-base slices whose
    outline runs off the bottom can come out coronal; strongly asymmetric axial slices
    (a large tumour, a tilted head) can come out sagittal.

    Args:
        gray: uint8 array (H, W), a grayscale slice.
        return_features: Also return the :func:`plane_features` dict.

    Returns:
        One of :data:`PLANES`; with ``return_features`` a tuple ``(label, features)``.

    Raises:
        InvalidImageError: ``gray`` is not a 2-D uint8 array.

    Example:
        >>> estimate_plane(np.asarray(load_image("scan.jpg")))  # doctest: +SKIP
        'axial'
    """
    f = plane_features(gray)
    if f["fill"] > 1.15:
        label = "axial"
    elif f["symmetry"] < 0.38 and f["mask_symmetry"] < 0.93 and f["aspect"] < 1.17:
        label = "sagittal"
    elif f["touches_bottom"] and f["bottom_width"] > 0.68 and f["bottom_top_ratio"] < 0.9:
        label = "coronal"
    else:
        label = "axial"
    return (label, f) if return_features else label
