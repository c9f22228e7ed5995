"""Does a heatmap point at the tumour? Scores of attribution maps against tumour boxes.

The scores take plain numpy arrays, so they judge any map (ours, a peer's, a baseline):

* :func:`pointing_game` - is the map's maximum on the tumour (Zhang et al. 2018,
  "Top-down neural attention by excitation backprop": a hit if the maximum lies within
  15 px of the object at the original resolution);
* :func:`mass_in_box` - the share of the map's (positive) mass inside the tumour box;
  chance is the box's share of the image (or of the head, see
  :attr:`tumor_classifier.localisation_runs.ImageScore.head_chance`);
* :func:`mass_in_mask` - the same for any mask, e.g. :func:`head_mask` as a sanity check
  (a map on the background is looking at the wrong thing whatever the box says);
* :func:`rank_correlation` - Spearman correlation of two maps, for the model-randomisation
  check of Adebayo et al. 2018 ("Sanity checks for saliency maps"): a map that barely
  changes when the model's weights are re-initialised explains the image, not the model.

Running a classifier on an image and scoring its map with these is the job of
:mod:`tumor_classifier.localisation_runs` (``score_image``, ``summarise``, ...).

Boxes are read with :func:`read_boxes` from a ``boxes.csv`` in the YOLO convention
(``file,x_center,y_center,width,height``, fractions of the image width and height).
Pixel boxes are ``(x0, y0, x1, y1)`` with ``x1`` and ``y1`` exclusive, the convention of
:func:`tumor_classifier.preprocessing.head_bounding_box`.

Only numpy and the project's exceptions are imported: nothing here runs a model.

Example:
    >>> boxes = read_boxes("../shared/data/tumour-boxes/boxes.csv")   # doctest: +SKIP
    >>> box = boxes["pituitary/1305.jpg"].to_pixels(512, 512)           # doctest: +SKIP
    >>> pointing_game(heatmap, box), mass_in_box(heatmap, box)         # doctest: +SKIP
    (True, 0.41)
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .exceptions import InvalidArgumentError, InvalidDatasetError, InvalidImageError

#: The pointing-game tolerance of Zhang et al. 2018, in pixels of the original image.
POINTING_TOLERANCE_PX = 15
#: Columns ``boxes.csv`` must have.
BOX_COLUMNS = ("file", "x_center", "y_center", "width", "height")

__all__ = [
    "BOX_COLUMNS",
    "POINTING_TOLERANCE_PX",
    "Box",
    "head_mask",
    "mass_in_box",
    "mass_in_mask",
    "pointing_game",
    "rank_correlation",
    "read_boxes",
]

PixelBox = tuple[int, int, int, int]


# --------------------------------------------------------------------------- boxes


@dataclass(frozen=True)
class Box:
    """One tumour box in the YOLO convention (fractions of the image size).

    Attributes:
        file: The image's path as written in ``boxes.csv``, relative to the CSV's folder
            (e.g. ``"glioma/1850.jpg"``).
        label: The tumour class: the first folder of ``file`` (``"glioma"``), or ``""``
            for a file at the top level.
        x_center, y_center: Centre of the box, fractions in [0, 1] of width and height.
        width, height: Size of the box, fractions in (0, 1] of width and height.

    Raises:
        InvalidDatasetError: A coordinate outside [0, 1], or a size not above 0.
    """

    file: str
    label: str
    x_center: float
    y_center: float
    width: float
    height: float

    def __post_init__(self) -> None:
        for name in ("x_center", "y_center", "width", "height"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and 0.0 <= value <= 1.0):
                raise InvalidDatasetError(
                    f"Box {self.file!r}: {name} must be a fraction in [0, 1] of the image size, got {value!r}."
                )
        if self.width <= 0 or self.height <= 0:
            raise InvalidDatasetError(
                f"Box {self.file!r}: width and height must be above 0, got {self.width} x {self.height}."
            )

    def to_pixels(self, width: int, height: int) -> PixelBox:
        """The box in pixels of a ``width`` x ``height`` image.

        Every pixel the box touches is included: the left/top edge is rounded down, the
        right/bottom edge up (after forgiving float error such as ``0.6 * 100 =
        60.00000000000001``), and the result is clipped to the image.

        Args:
            width: Image width in pixels (> 0).
            height: Image height in pixels (> 0).

        Returns:
            ``(x0, y0, x1, y1)`` in pixels, ``x1`` and ``y1`` exclusive, ``x1 > x0`` and
            ``y1 > y0``.

        Example:
            >>> Box("a.jpg", "", 0.5, 0.5, 0.2, 0.4).to_pixels(100, 50)
            (40, 15, 60, 35)
        """
        if width < 1 or height < 1:
            raise InvalidArgumentError(f"Image size must be positive, got {width} x {height}.")
        eps = 1e-9
        x0 = max(0, math.floor((self.x_center - self.width / 2) * width + eps))
        y0 = max(0, math.floor((self.y_center - self.height / 2) * height + eps))
        x1 = min(width, math.ceil((self.x_center + self.width / 2) * width - eps))
        y1 = min(height, math.ceil((self.y_center + self.height / 2) * height - eps))
        # A box thinner than a pixel still covers the pixel it lies in.
        return x0, y0, max(x1, min(x0 + 1, width)), max(y1, min(y0 + 1, height))

    def area(self) -> float:
        """The box's share of the image area, in (0, 1]."""
        return self.width * self.height


def read_boxes(csv_path: str | os.PathLike) -> dict[str, Box]:
    """Reads ``boxes.csv``: one box per image, in the YOLO convention.

    Args:
        csv_path: A CSV with the header ``file,x_center,y_center,width,height``; ``file``
            relative to the CSV's folder, its first folder the class
            (``pituitary/1305.jpg``).

    Returns:
        ``file -> Box``, ordered by ``file`` (sorted), so runs visit images in one order.

    Raises:
        InvalidDatasetError: The file is missing, a column is missing, a value is not a
            number or out of range, or a file appears twice (the message gives the row).
    """
    path = Path(csv_path)
    if not path.is_file():
        raise InvalidDatasetError(f"No box file at {path}; expected a CSV with columns {', '.join(BOX_COLUMNS)}.")
    boxes: dict[str, Box] = {}
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in BOX_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise InvalidDatasetError(
                f"{path} lacks the column(s) {', '.join(missing)}; found {reader.fieldnames}, "
                f"expected {', '.join(BOX_COLUMNS)}."
            )
        for row_number, row in enumerate(reader, start=2):  # row 1 is the header
            file = (row["file"] or "").strip().replace("\\", "/")
            if not file:
                raise InvalidDatasetError(f"{path}, row {row_number}: empty file name.")
            if file in boxes:
                raise InvalidDatasetError(f"{path}, row {row_number}: {file!r} has a second box; one box per image is expected.")
            try:
                values = [float(row[c]) for c in BOX_COLUMNS[1:]]
            except (TypeError, ValueError):
                raise InvalidDatasetError(
                    f"{path}, row {row_number}: box values must be numbers, got "
                    f"{[row[c] for c in BOX_COLUMNS[1:]]}."
                ) from None
            parts = file.split("/")
            try:
                boxes[file] = Box(file, parts[0] if len(parts) > 1 else "", *values)
            except InvalidDatasetError as error:
                raise InvalidDatasetError(f"{path}, row {row_number}: {error}") from None
    return dict(sorted(boxes.items()))


# --------------------------------------------------------------------------- scores


def _check_map(attribution: Any, name: str = "attribution") -> np.ndarray:
    array = np.asarray(attribution)
    if array.ndim != 2 or 0 in array.shape:
        raise InvalidImageError(f"The {name} map must be a 2-D array (H, W), got shape {array.shape}.")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
        raise InvalidImageError(f"The {name} map must hold numbers, got dtype {array.dtype}.")
    array = array.astype(np.float64, copy=False)
    if not np.isfinite(array).all():
        raise InvalidImageError(f"The {name} map holds NaN or infinite values.")
    return array


def _check_box(box_pixels: Sequence[int], shape: tuple[int, int]) -> PixelBox:
    if len(box_pixels) != 4:
        raise InvalidArgumentError(f"A pixel box is (x0, y0, x1, y1), got {box_pixels!r}.")
    x0, y0, x1, y1 = (int(v) for v in box_pixels)
    if x1 <= x0 or y1 <= y0:
        raise InvalidArgumentError(f"A pixel box needs x1 > x0 and y1 > y0 (exclusive ends), got {box_pixels!r}.")
    height, width = shape
    if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
        raise InvalidArgumentError(f"The box {box_pixels!r} lies outside the {width} x {height} map.")
    return max(0, x0), max(0, y0), min(width, x1), min(height, y1)


def pointing_game(attribution: np.ndarray, box_pixels: Sequence[int], tolerance_px: int = POINTING_TOLERANCE_PX) -> bool:
    """Whether the map's maximum lies on the box, give or take ``tolerance_px``.

    The maximum is ``np.argmax`` of the map as given (no smoothing); among equal maxima
    the first in row-major order counts. A hit is a maximum inside the box grown by
    ``tolerance_px`` on each side. A map with no positive value has no maximum worth
    the name and is a miss (our maps keep positive evidence only; a blank one points
    nowhere). Negative values are allowed and simply never win over a positive maximum.

    Args:
        attribution: Map (H, W), any real values, over the image's pixels.
        box_pixels: ``(x0, y0, x1, y1)`` in the map's pixels, ends exclusive (as
            :meth:`Box.to_pixels` returns).
        tolerance_px: Pixels of slack on each side (>= 0); 15 at the original
            resolution is the usual pointing-game tolerance.

    Returns:
        True for a hit.

    Raises:
        InvalidImageError: The map is not a finite 2-D array.
        TumorClassifierError: A bad box or a negative tolerance.

    Example:
        >>> heat = np.zeros((50, 100)); heat[20, 45] = 1.0
        >>> pointing_game(heat, (40, 15, 60, 35))
        True
    """
    array = _check_map(attribution)
    if isinstance(tolerance_px, bool) or not isinstance(tolerance_px, (int, np.integer)) or tolerance_px < 0:
        raise InvalidArgumentError(f"tolerance_px must be a non-negative integer, got {tolerance_px!r}.")
    x0, y0, x1, y1 = _check_box(box_pixels, array.shape)
    if array.max() <= 0:
        return False
    row, col = np.unravel_index(int(np.argmax(array)), array.shape)
    return bool(x0 - tolerance_px <= col < x1 + tolerance_px and y0 - tolerance_px <= row < y1 + tolerance_px)


def mass_in_mask(attribution: np.ndarray, mask: np.ndarray) -> float:
    """Share of the map's positive mass on the ``True`` pixels of ``mask``.

    Negative values are set to 0 first (positive evidence only, like the package's
    maps), so the result is a fraction of the positive mass.

    Args:
        attribution: Map (H, W), any real values.
        mask: bool array (H, W).

    Returns:
        float in [0, 1]; 0.0 for a map with no positive value.

    Raises:
        InvalidImageError: The map is not a finite 2-D array, or the mask's shape differs.
    """
    array = np.clip(_check_map(attribution), 0.0, None)
    mask = np.asarray(mask)
    if mask.shape != array.shape:
        raise InvalidImageError(f"The mask's shape {mask.shape} differs from the map's {array.shape}.")
    total = float(array.sum())
    if total <= 0:
        return 0.0
    return float(min(1.0, array[mask.astype(bool)].sum() / total))


def mass_in_box(attribution: np.ndarray, box_pixels: Sequence[int]) -> float:
    """Share of the map's positive mass inside the box (see :func:`mass_in_mask`).

    A uniform map scores the box's share of the image: that is the chance level.

    Args:
        attribution: Map (H, W), any real values (negative values count as 0).
        box_pixels: ``(x0, y0, x1, y1)``, ends exclusive, in the map's pixels.

    Returns:
        float in [0, 1]; 0.0 for a map with no positive value.

    Raises:
        InvalidImageError: The map is not a finite 2-D array.
        TumorClassifierError: A bad box.

    Example:
        >>> mass_in_box(np.ones((50, 100)), (40, 15, 60, 35))   # 20 x 20 of 100 x 50
        0.08
    """
    array = _check_map(attribution)
    x0, y0, x1, y1 = _check_box(box_pixels, array.shape)
    mask = np.zeros(array.shape, dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mass_in_mask(array, mask)


def head_mask(gray: np.ndarray, threshold: float = 0.1) -> np.ndarray:
    """The head as a filled silhouette: bright pixels, with the gaps between them filled.

    A pixel is bright above ``threshold`` times the 99.5th percentile (the rule of
    :func:`~tumor_classifier.preprocessing.head_bounding_box`). The silhouette is every
    pixel that lies between bright pixels both along its row and along its column, which
    fills dark ventricles and tumour cores inside a roughly convex head but leaves the
    background corners of the head's bounding box out. (The bounding box itself would be
    no test: the package's maps are zero outside the crop to that box by construction.)

    Args:
        gray: uint8 or float array (H, W), the grey scan.
        threshold: Fraction in (0, 1) of the bright level.

    Returns:
        bool array (H, W); all ``True`` for a black image (no head to find).
    """
    gray = _check_map(gray, "grey image")
    bright = float(np.percentile(gray, 99.5))
    if bright <= 0:
        return np.ones(gray.shape, dtype=bool)
    on = gray > threshold * bright

    def spans(mask: np.ndarray) -> np.ndarray:
        # Between the first and the last bright pixel of each row.
        any_on = mask.any(axis=1)
        first = np.where(any_on, mask.argmax(axis=1), mask.shape[1])
        last = np.where(any_on, mask.shape[1] - 1 - mask[:, ::-1].argmax(axis=1), -1)
        cols = np.arange(mask.shape[1])
        return (cols >= first[:, None]) & (cols <= last[:, None])

    return spans(on) & spans(on.T).T


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing their mean rank (as Spearman's rho with ties needs)."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return ((ends - (counts - 1) / 2.0))[inverse.ravel()]


def rank_correlation(first: np.ndarray, second: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Spearman rank correlation of two maps, over the pixels of ``mask``.

    Ties (the many exact zeros of positive-only maps) share their mean rank. Restrict
    to the head (:func:`head_mask`): both maps are zero outside the crop, and that
    shared background would otherwise make any two maps look alike.

    Args:
        first, second: Maps (H, W) of the same shape.
        mask: Optional bool (H, W); default every pixel.

    Returns:
        float in [-1, 1]; NaN if either map is constant over the mask (no ranking).

    Raises:
        InvalidImageError: Not finite 2-D maps of one shape, or a mask of another shape.
    """
    a, b = _check_map(first, "first"), _check_map(second, "second")
    if a.shape != b.shape:
        raise InvalidImageError(f"The maps differ in shape: {a.shape} and {b.shape}.")
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != a.shape:
            raise InvalidImageError(f"The mask's shape {mask.shape} differs from the maps' {a.shape}.")
        a, b = a[mask], b[mask]
    ra, rb = _average_ranks(a.ravel()), _average_ranks(b.ravel())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = math.sqrt(float(ra @ ra) * float(rb @ rb))
    return float(ra @ rb / denominator) if denominator > 0 else float("nan")
