"""Does a heatmap point at the tumour? Scores of attribution maps against tumour boxes.

The scores take plain numpy arrays, so they judge any map (ours, a peer's, a baseline):

* :func:`pointing_game` - is the map's maximum on the tumour (Zhang et al. 2018,
  "Top-down neural attention by excitation backprop": a hit if the maximum lies within
  15 px of the object at the original resolution);
* :func:`mass_in_box` - the share of the map's (positive) mass inside the tumour box;
  chance is the box's share of the image (or of the head, see :attr:`ImageScore.head_chance`);
* :func:`mass_in_mask` - the same for any mask, e.g. :func:`head_mask` as a sanity check
  (a map on the background is looking at the wrong thing whatever the box says);
* :func:`rank_correlation` - Spearman correlation of two maps, for the model-randomisation
  check of Adebayo et al. 2018 ("Sanity checks for saliency maps"): a map that barely
  changes when the model's weights are re-initialised explains the image, not the model.

:func:`score_image` runs one image through a classifier and all of the above; it is the
per-image step of ``benchmarks/localisation.py``, and :func:`summarise` turns its results
into per-class and mean figures.

Boxes are read with :func:`read_boxes` from a ``boxes.csv`` in the YOLO convention
(``file,x_center,y_center,width,height``, fractions of the image width and height).
Pixel boxes are ``(x0, y0, x1, y1)`` with ``x1`` and ``y1`` exclusive, the convention of
:func:`tumor_classifier.preprocessing.head_bounding_box`.

Only numpy is imported at module level; the functions that run a model import torch
when called.

Example:
    >>> boxes = read_boxes("../shared/data/tumour-boxes/boxes.csv")   # doctest: +SKIP
    >>> box = boxes["pituitary/1305.jpg"].to_pixels(512, 512)           # doctest: +SKIP
    >>> pointing_game(heatmap, box), mass_in_box(heatmap, box)         # doctest: +SKIP
    (True, 0.41)
"""

from __future__ import annotations

import copy
import csv
import math
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np

from .exceptions import InvalidArgumentError, InvalidDatasetError, InvalidImageError, TumorClassifierError

if TYPE_CHECKING:  # imported for annotations only: they pull in torch
    from .classifier import TumorClassifier

#: The pointing-game tolerance of Zhang et al. 2018, in pixels of the original image.
POINTING_TOLERANCE_PX = 15
#: Columns ``boxes.csv`` must have.
BOX_COLUMNS = ("file", "x_center", "y_center", "width", "height")

__all__ = [
    "BOX_COLUMNS",
    "POINTING_TOLERANCE_PX",
    "Box",
    "ImageScore",
    "as_records",
    "class_attribution",
    "head_mask",
    "mass_in_box",
    "mass_in_mask",
    "pointing_game",
    "randomised_copy",
    "rank_correlation",
    "read_boxes",
    "score_image",
    "summarise",
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


# --------------------------------------------------------------------------- one image through a model


def class_attribution(classifier: "TumorClassifier", image: Any, target: str, method: str = "auto", **options: Any) -> np.ndarray:
    """The attribution map of class ``target`` (not necessarily the predicted one).

    The same steps as :meth:`TumorClassifier.explain` - the classifier's preprocessing,
    :func:`~tumor_classifier.attributions.compute_attributions` with the black image as
    baseline, the map put back onto the input's pixels - with the class chosen by the
    caller. For the predicted class it equals ``explain(image, method)[0].attribution``.

    Args:
        classifier: A fitted or loaded :class:`TumorClassifier`.
        image: One image, as :meth:`TumorClassifier.predict` takes it.
        target: A class name of ``classifier.classes_``.
        method: ``auto`` or one of :data:`~tumor_classifier.attributions.METHODS`.
        **options: Passed to ``compute_attributions`` (``n_steps``, ...).

    Returns:
        float32 (H, W) in [0, 1], the input image's height and width.

    Raises:
        NotFittedError: The classifier is not fitted.
        TumorClassifierError: ``target`` is not one of the classifier's classes, or an
            unknown method.
    """
    import torch

    from .attributions import METHODS, compute_attributions
    from .decoding import load_image

    classifier._check_fitted()
    classes = [str(c) for c in classifier.classes_]
    if target not in classes:
        raise InvalidArgumentError(f"Unknown class {target!r}; the classifier's classes are {', '.join(classes)}.")
    method = classifier.attribution_method_ if method == "auto" else method
    if method not in METHODS:
        raise InvalidArgumentError(f"Unknown attribution method {method!r}; choose auto or one of {', '.join(METHODS)}.")
    preprocessor = classifier.preprocessor_
    prepared = preprocessor.prepare(load_image(image))
    pixels = torch.from_numpy(np.asarray(prepared.image)[None].copy())
    pixel_values = preprocessor.normalize(pixels).to(classifier.model_.device)
    if method in ("integrated_gradients", "occlusion"):
        options.setdefault("baseline", (0.0 - preprocessor.mean) / preprocessor.std)  # as explain: black
    small = compute_attributions(classifier.model_, pixel_values, [classes.index(target)], method, **options)
    return np.clip(prepared.to_original(small[0]), 0.0, 1.0).astype(np.float32)


def randomised_copy(classifier: "TumorClassifier", seed: int = 0) -> "TumorClassifier":
    """A copy of the classifier whose model weights are re-initialised (Adebayo et al. 2018).

    Every outermost Hugging Face model inside ``classifier.model_`` (the model itself, or
    each member of an ensemble) gets the weights of a fresh ``type(model)(config)``, i.e.
    the architecture's own initialisation, drawn after ``torch.manual_seed(seed)``.
    Other modules with ``reset_parameters`` (plain torch layers) are reset too. The
    preprocessing and classes are kept, so the copy explains the same inputs.
    (Re-running ``_init_weights`` on a loaded transformers 5 model is a no-op: loaded
    parameters are flagged as initialised.)

    Args:
        classifier: A fitted or loaded :class:`TumorClassifier`; it is not changed.
        seed: Seed of the new weights.

    Returns:
        A new :class:`TumorClassifier` in eval mode.

    Raises:
        NotFittedError: The classifier is not fitted.
        TumorClassifierError: Nothing in the model could be re-initialised.
    """
    import torch
    from transformers import PreTrainedModel

    classifier._check_fitted()
    clone = copy.deepcopy(classifier)
    model = clone.model_
    torch.manual_seed(seed)
    done: set[int] = set()
    for module in model.modules():
        if id(module) in done:
            continue
        if isinstance(module, PreTrainedModel):
            fresh = type(module)(module.config)
            module.load_state_dict(fresh.state_dict())
            done.update(id(m) for m in module.modules())
        elif hasattr(module, "reset_parameters") and callable(module.reset_parameters):
            module.reset_parameters()
            done.add(id(module))
    if not done:
        raise TumorClassifierError(f"Found nothing to re-initialise in {type(model).__name__}.")
    model.eval()
    return clone


@dataclass(frozen=True)
class ImageScore:
    """The localisation scores of one image for one method.

    Maps are scored for the tumour's class (``label``), which is what the box marks; for
    a correctly classified image that is the map :meth:`TumorClassifier.explain` shows.

    Attributes:
        file: The image's name in ``boxes.csv``.
        label: The true class (the box's).
        method: Attribution method.
        predicted: The class ``explain`` predicted.
        hit: :func:`pointing_game` of the map.
        mass_in_box: :func:`mass_in_box` of the map, in [0, 1].
        mass_in_head: :func:`mass_in_mask` of the map on :func:`head_mask`, in [0, 1].
        box_area: The box's share of the image, in (0, 1]: ``mass_in_box``'s chance level
            over the whole image.
        head_chance: The box's share of the head mask: the chance level of a map spread
            evenly over the head.
        centre_hit: Pointing game of the head's centre (centroid of the head mask), a
            baseline that needs no model.
        explain_ms: Wall time of ``explain`` on this image, milliseconds.
        predict_ms: Wall time of ``predict`` on this image, milliseconds.
        random_hit: Pointing game of the randomised model's map (None without one).
        random_mass_in_box: Its mass in the box (NaN without one).
        random_rank_correlation: :func:`rank_correlation` over the head between the map
            and the randomised model's map (NaN without one); low means the map depends
            on what the model learned.
    """

    file: str
    label: str
    method: str
    predicted: str
    hit: bool
    mass_in_box: float
    mass_in_head: float
    box_area: float
    head_chance: float
    centre_hit: bool
    explain_ms: float
    predict_ms: float
    random_hit: bool | None = None
    random_mass_in_box: float = float("nan")
    random_rank_correlation: float = float("nan")


def score_image(
    classifier: "TumorClassifier",
    image: Any,
    box: Box,
    method: str = "auto",
    *,
    randomised: "TumorClassifier | None" = None,
    tolerance_px: int = POINTING_TOLERANCE_PX,
    **options: Any,
) -> ImageScore:
    """Explains one image, times it against ``predict``, and scores the map on the box.

    The image is decoded once. ``explain`` (timed) gives the prediction and the map a
    user sees; when the prediction is not the box's class, the map of the box's class
    is computed with :func:`class_attribution` (not timed). ``predict`` is timed on
    the same decoded image right after, so both times share the machine's state.

    Args:
        classifier: A fitted or loaded :class:`TumorClassifier` whose classes include
            ``box.label``.
        image: The image (path, bytes, PIL image, array), as ``predict`` takes it.
        box: Its tumour box; ``box.label`` is the class to explain.
        method: ``auto`` or one of :data:`~tumor_classifier.attributions.METHODS`.
        randomised: Optional :func:`randomised_copy` of the classifier for the
            model-randomisation check (same method, same class).
        tolerance_px: Pointing-game tolerance in pixels of the image.
        **options: Passed to ``compute_attributions`` (``n_steps``, ...).

    Returns:
        The :class:`ImageScore`.

    Raises:
        NotFittedError: The classifier is not fitted.
        TumorClassifierError: ``box.label`` is not a class of the classifier.
        InvalidImageError: The image cannot be read.
    """
    from .decoding import load_image

    classifier._check_fitted()
    gray = load_image(image)
    method = classifier.attribution_method_ if method == "auto" else method
    if box.label not in [str(c) for c in classifier.classes_]:
        raise InvalidArgumentError(
            f"{box.file}: class {box.label!r} is not one of the classifier's classes {list(classifier.classes_)}."
        )
    start = time.perf_counter()
    explanation = classifier.explain(gray, method, **options)[0]
    explain_ms = (time.perf_counter() - start) * 1000.0
    start = time.perf_counter()
    classifier.predict(gray)
    predict_ms = (time.perf_counter() - start) * 1000.0

    attribution = explanation.attribution
    if explanation.label != box.label:
        attribution = class_attribution(classifier, gray, box.label, method, **options)
    width, height = gray.size
    pixels = box.to_pixels(width, height)
    head = head_mask(np.asarray(gray), classifier.preprocessor_.head_threshold)
    rows, cols = np.nonzero(head)
    centre = np.zeros(head.shape)
    centre[int(round(rows.mean())), int(round(cols.mean()))] = 1.0
    x0, y0, x1, y1 = pixels
    scores: dict[str, Any] = {}
    if randomised is not None:
        random_map = class_attribution(randomised, gray, box.label, method, **options)
        scores = {
            "random_hit": pointing_game(random_map, pixels, tolerance_px),
            "random_mass_in_box": mass_in_box(random_map, pixels),
            "random_rank_correlation": rank_correlation(attribution, random_map, head),
        }
    return ImageScore(
        file=box.file,
        label=box.label,
        method=method,
        predicted=explanation.label,
        hit=pointing_game(attribution, pixels, tolerance_px),
        mass_in_box=mass_in_box(attribution, pixels),
        mass_in_head=mass_in_mask(attribution, head),
        box_area=(x1 - x0) * (y1 - y0) / float(width * height),
        head_chance=float(head[y0:y1, x0:x1].sum()) / max(1.0, float(head.sum())),
        centre_hit=pointing_game(centre, pixels, tolerance_px),
        explain_ms=explain_ms,
        predict_ms=predict_ms,
        **scores,
    )


# --------------------------------------------------------------------------- aggregate

#: Fields :func:`summarise` averages (rates and shares), and those it takes the median of.
_MEAN_FIELDS = {
    "accuracy": lambda s: float(s.predicted == s.label),
    "pointing_game": lambda s: float(s.hit),
    "mass_in_box": lambda s: s.mass_in_box,
    "mass_in_head": lambda s: s.mass_in_head,
    "box_area": lambda s: s.box_area,
    "head_chance": lambda s: s.head_chance,
    "centre_pointing_game": lambda s: float(s.centre_hit),
    "random_pointing_game": lambda s: float("nan") if s.random_hit is None else float(s.random_hit),
    "random_mass_in_box": lambda s: s.random_mass_in_box,
    "random_rank_correlation": lambda s: s.random_rank_correlation,
}


def _nanmean(values: Iterable[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return float(sum(kept) / len(kept)) if kept else float("nan")


def _figures(scores: Sequence[ImageScore]) -> dict[str, float]:
    figures: dict[str, float] = {"n": float(len(scores))}
    for name, get in _MEAN_FIELDS.items():
        figures[name] = _nanmean(get(s) for s in scores)
    figures["explain_ms"] = statistics.median(s.explain_ms for s in scores)
    figures["predict_ms"] = statistics.median(s.predict_ms for s in scores)
    figures["explain_over_predict"] = figures["explain_ms"] / figures["predict_ms"] if figures["predict_ms"] > 0 else float("nan")
    return figures


def summarise(scores: Iterable[ImageScore]) -> dict[str, dict[str, float]]:
    """Per-class and mean figures of one method's :class:`ImageScore` list.

    Rates and shares are means over the images (``accuracy`` is how often ``explain``
    predicted the box's class; the ``random_*`` means skip images without a randomised
    map); times are medians (``explain_over_predict`` is the ratio of the medians).

    Args:
        scores: Scores of one method (mixing methods would mix their figures).

    Returns:
        ``{class: figures, ..., "mean": figures}`` with classes sorted. In ``"mean"``,
        rates and shares are the mean of the class means (each class weighs the same,
        whatever its count), ``n`` is the total and times are medians over all images.
        Figures: ``n``, the keys of ``_MEAN_FIELDS``, ``explain_ms``, ``predict_ms``,
        ``explain_over_predict``.

    Raises:
        TumorClassifierError: No scores, or scores of more than one method.
    """
    scores = list(scores)
    if not scores:
        raise InvalidArgumentError("summarise needs at least one ImageScore.")
    methods = sorted({s.method for s in scores})
    if len(methods) > 1:
        raise InvalidArgumentError(f"summarise takes the scores of one method; got {', '.join(methods)}.")
    by_class: dict[str, list[ImageScore]] = {}
    for score in scores:
        by_class.setdefault(score.label, []).append(score)
    result = {label: _figures(group) for label, group in sorted(by_class.items())}
    overall = _figures(scores)
    for name in _MEAN_FIELDS:
        overall[name] = _nanmean(result[label][name] for label in by_class)
    result["mean"] = overall
    return result


def as_records(summary: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float | None]]:
    """The summary with NaN as None, ready for ``json.dump`` (strict JSON has no NaN)."""
    return {key: {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in figures.items()} for key, figures in summary.items()}
