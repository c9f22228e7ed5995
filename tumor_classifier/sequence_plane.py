"""A sequence and plane estimator for one grey slice, for the shortcut audit.

:func:`estimate_sequence` (T1 / T2 / FLAIR) and :func:`estimate_plane` (axial / coronal /
sagittal) are a few transparent intensity and shape rules, so that
``benchmarks/audit.py`` can report tumour recall per (class, sequence, plane) group and
show whether a model decides by contrast and plane instead of by the tumour.

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
    >>> estimate_sequence(gray), estimate_plane(gray)          # doctest: +SKIP
    ('T1', 'coronal')
"""

from __future__ import annotations

import numpy as np

from .localisation import head_mask
from .slice_filters import box_mean, check_gray, eroded, head_box, odd_size

#: Labels :func:`estimate_sequence` returns ("T1" includes contrast-enhanced T1).
SEQUENCES: tuple[str, ...] = ("T1", "T2", "FLAIR")
#: Labels :func:`estimate_plane` returns.
PLANES: tuple[str, ...] = ("axial", "coronal", "sagittal")


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
    gray = check_gray(gray)
    image = gray.astype(np.float64)
    mask = head_mask(gray)
    top, bottom, left, right = head_box(mask)
    side = min(bottom - top, right - left)
    brain = eroded(mask, odd_size(0.12 * side))
    inner = eroded(mask, odd_size(0.40 * side))
    if brain.sum() < 50 or inner.sum() < 20:
        return {"local_polarity": 0.0, "inner_polarity": 0.0, "inner_dark": 0.0}
    level = max(float(np.median(image[brain])), 1.0)
    residual = (image - box_mean(image, odd_size(15 / 224 * side), edge="replicate"))[brain] / level
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
    gray = check_gray(gray)
    image = gray.astype(np.float64)
    mask = head_mask(gray)
    height = mask.shape[0]
    top, bottom, left, right = head_box(mask)
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
