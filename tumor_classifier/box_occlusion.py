"""Does the model use the tumour? Its evidence with the tumour box hidden.

A heatmap can only point at the tumour if the model's decision depends on the tumour.
This check needs no heatmap: each tumour-box slice goes through the classifier as it is,
with its tumour box filled with the head's median grey, and with squares of the box's
size filled the same way elsewhere in the head (the controls: a flat grey patch is
itself unusual, and hiding healthy tissue measures what that alone does). It is the
deletion test of Petsiuk et al. 2018 ("RISE") with one region, the tumour.

``fill="mirror"`` fills a region with the same rows of the other side of the head instead
(mirrored across the vertical line halfway between the head's left and right edges):
tissue rather than a flat patch, for a tumour away from the midline. For one on the
midline (most pituitary tumours) the mirrored copy is the tumour itself and says nothing.

Two log-odds of the box's class ``c`` are followed (natural log, from
``predict_proba``):

* tumour evidence, ``log p(c) - log p(notumor)``: "this tumour rather than no tumour";
* type evidence, ``log p(c) - log (sum of p over the other tumour classes)``.

A model that looks at the tumour loses much more evidence when the box is hidden than
when a control square is; a model that decides by the slice's source, contrast or plane
loses about as little either way, and no attribution method can then show the tumour.

:func:`occlusion_score` takes any ``predict_proba`` (numpy in, numpy out), so the scoring
is checked on hand-made functions; :func:`classifier_occlusion_score` runs it with a
:class:`~tumor_classifier.classifier.TumorClassifier`; :func:`summarise_occlusion` gives
per-class figures. ``benchmarks/localisation.py`` prints them beside the heatmap scores.

Only numpy and the project's own modules are imported here (the classifier only for
annotations).

Example:
    >>> score = classifier_occlusion_score(clf, "glioma/1850.jpg", box)   # doctest: +SKIP
    >>> score.tumour_drop_box, score.tumour_drop_control                  # doctest: +SKIP
    (2.31, 0.12)
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import numpy as np

from .data import NO_TUMOR
from .exceptions import InvalidArgumentError
from .localisation import Box, PixelBox, head_mask

if TYPE_CHECKING:  # for annotations only: it pulls in torch
    from .classifier import TumorClassifier

__all__ = [
    "CONTROL_SQUARES",
    "FILLS",
    "OcclusionScore",
    "classifier_occlusion_score",
    "control_boxes",
    "hide",
    "mirrored",
    "occlusion_score",
    "summarise_occlusion",
]

#: Control squares per image when not told otherwise.
CONTROL_SQUARES = 3
#: How a hidden region is filled: the head's median grey, or the mirrored other side.
FILLS = ("median", "mirror")
#: A control square must lie at least this much inside the head mask.
_CONTROL_HEAD_SHARE = 0.9
#: Probabilities are clipped here before the log, so a 0 gives a large finite number.
_EPS = 1e-9


def hide(gray: np.ndarray, box: PixelBox, fill: float | np.ndarray) -> np.ndarray:
    """A copy of ``gray`` with the pixel box ``(x0, y0, x1, y1)`` (exclusive ends) set to
    ``fill``: one grey, or an array of the box's shape (e.g. :func:`mirrored`)."""
    x0, y0, x1, y1 = box
    hidden = np.array(gray, copy=True)
    hidden[y0:y1, x0:x1] = fill
    return hidden


def mirrored(gray: np.ndarray, box: PixelBox, centre: float) -> np.ndarray:
    """The pixels of ``box``'s rows at the columns mirrored across column ``centre``
    (column ``x`` takes column ``round(2 * centre - x)``, clipped to the image), in the
    box's shape: what lies on the other side of the head."""
    x0, y0, x1, y1 = box
    columns = np.clip(np.round(2.0 * centre - np.arange(x0, x1)).astype(np.intp), 0, gray.shape[1] - 1)
    return np.asarray(gray)[y0:y1][:, columns]


def control_boxes(head: np.ndarray, box: PixelBox, count: int = CONTROL_SQUARES, seed: int = 0) -> list[PixelBox]:
    """Up to ``count`` boxes of ``box``'s size inside the head that do not touch ``box``.

    Candidate places are on a grid (step: a quarter of the box's smaller side, at least
    1 px); a place qualifies when at least 90 % of its pixels are in ``head`` and it does
    not overlap ``box``. ``count`` of them are drawn without replacement with
    ``numpy.random.default_rng(seed)``, so the same image gets the same controls.

    Args:
        head: Boolean (H, W) head mask.
        box: The tumour's pixel box.
        count: How many controls (>= 0).
        seed: Seed of the draw.

    Returns:
        The control boxes; fewer than ``count`` (even none) when the head has no room.
    """
    if count < 0:
        raise InvalidArgumentError(f"count must be 0 or more, got {count}.")
    head = np.asarray(head, dtype=bool)
    height, width = head.shape
    x0, y0, x1, y1 = box
    box_w, box_h = x1 - x0, y1 - y0
    if count == 0 or box_w > width or box_h > height:
        return []
    # Summed-area table: the head pixels of any rectangle in four lookups.
    table = np.zeros((height + 1, width + 1), dtype=np.int64)
    table[1:, 1:] = head.cumsum(0).cumsum(1)
    step = max(1, min(box_w, box_h) // 4)
    tops = np.arange(0, height - box_h + 1, step)
    lefts = np.arange(0, width - box_w + 1, step)
    top, left = np.meshgrid(tops, lefts, indexing="ij")
    inside = table[top + box_h, left + box_w] - table[top, left + box_w] - table[top + box_h, left] + table[top, left]
    apart = (left + box_w <= x0) | (left >= x1) | (top + box_h <= y0) | (top >= y1)
    keep = (inside >= _CONTROL_HEAD_SHARE * box_w * box_h) & apart
    places = np.stack([left[keep], top[keep]], axis=1)
    if len(places) == 0:
        return []
    chosen = np.random.default_rng(seed).choice(len(places), size=min(count, len(places)), replace=False)
    return [(int(l), int(t), int(l) + box_w, int(t) + box_h) for l, t in places[np.sort(chosen)]]


def _log_odds(probabilities: np.ndarray, classes: Sequence[str], target: str) -> tuple[np.ndarray, np.ndarray]:
    """Tumour and type log-odds of ``target`` for each row of ``probabilities``."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), _EPS, 1.0)
    c = classes.index(target)
    others = [i for i, name in enumerate(classes) if name not in (target, NO_TUMOR)]
    tumour = np.log(p[:, c]) - np.log(p[:, classes.index(NO_TUMOR)]) if NO_TUMOR in classes else np.full(len(p), np.nan)
    kind = np.log(p[:, c]) - np.log(p[:, others].sum(1)) if others else np.full(len(p), np.nan)
    return tumour, kind


@dataclass(frozen=True)
class OcclusionScore:
    """What hiding the tumour box does to one slice's evidence for its class.

    Drops are "as it is" minus "hidden" (positive: the evidence fell); control drops are
    the mean over the control squares (NaN when the head had no room for one).

    Attributes:
        file: The image's name in ``boxes.csv``.
        label: The box's class.
        predicted: The class predicted on the slice as it is.
        predicted_box_hidden: The class predicted with the box hidden.
        tumour_evidence: ``log p(label) - log p(notumor)`` as it is (NaN without a
            ``notumor`` class).
        tumour_drop_box, tumour_drop_control: Its fall with the box / a control hidden.
        type_evidence: ``log p(label) - log`` (sum over the other tumour classes).
        type_drop_box, type_drop_control: Its fall with the box / a control hidden.
        controls: How many control squares were used.
    """

    file: str
    label: str
    predicted: str
    predicted_box_hidden: str
    tumour_evidence: float
    tumour_drop_box: float
    tumour_drop_control: float
    type_evidence: float
    type_drop_box: float
    type_drop_control: float
    controls: int


def occlusion_score(
    predict_proba: Callable[[list[np.ndarray]], np.ndarray],
    classes: Sequence[str],
    gray: np.ndarray,
    box: Box,
    *,
    controls: int = CONTROL_SQUARES,
    seed: int = 0,
    head_threshold: float = 0.1,
    fill: str = "median",
) -> OcclusionScore:
    """Scores one slice: its evidence as it is, with the box hidden, with controls hidden.

    Args:
        predict_proba: Takes a list of (H, W) uint8 arrays, returns (n, len(classes))
            probabilities (:meth:`TumorClassifier.predict_proba` does).
        classes: Class names, the columns of ``predict_proba``; must include
            ``box.label``.
        gray: The slice, (H, W) uint8.
        box: Its tumour box (fractions, converted to pixels of ``gray``).
        controls: Control squares to hide, one at a time.
        seed: Seed of the control places (:func:`control_boxes`).
        head_threshold: :func:`~tumor_classifier.localisation.head_mask`'s threshold, a
            fraction of the bright level.
        fill: ``"median"``: hidden regions take the median grey of that head;
            ``"mirror"``: the other side of the head (:func:`mirrored`, across the
            middle of the head's column span).

    Returns:
        The :class:`OcclusionScore`.

    Raises:
        InvalidArgumentError: ``box.label`` is not in ``classes``, ``gray`` is not a
            2-D array, ``fill`` is not one of :data:`FILLS`, or ``predict_proba`` does
            not give one row per image and one column per class.
    """
    if fill not in FILLS:
        raise InvalidArgumentError(f"fill must be one of {', '.join(FILLS)}; got {fill!r}.")
    classes = [str(c) for c in classes]
    if box.label not in classes:
        raise InvalidArgumentError(f"{box.file}: class {box.label!r} is not one of the classes {classes}.")
    gray = np.asarray(gray)
    if gray.ndim != 2:
        raise InvalidArgumentError(f"{box.file}: expected one grey (H, W) slice, got shape {gray.shape}.")
    height, width = gray.shape
    pixels = box.to_pixels(width, height)
    head = head_mask(gray, head_threshold)
    places = control_boxes(head, pixels, controls, seed)
    if fill == "median":
        grey = float(np.median(gray[head]))  # head_mask is never empty (all True for a black slice)
        variants = [gray] + [hide(gray, place, grey) for place in (pixels, *places)]
    else:
        columns = np.flatnonzero(head.any(axis=0))
        centre = (columns[0] + columns[-1]) / 2.0
        variants = [gray] + [hide(gray, place, mirrored(gray, place, centre)) for place in (pixels, *places)]
    probabilities = np.asarray(predict_proba(variants), dtype=np.float64)
    if probabilities.shape != (len(variants), len(classes)):
        raise InvalidArgumentError(
            f"predict_proba gave shape {probabilities.shape} for {len(variants)} images and {len(classes)} classes; "
            f"expected ({len(variants)}, {len(classes)})."
        )
    tumour, kind = _log_odds(probabilities, classes, box.label)
    predicted = probabilities.argmax(1)
    nan = float("nan")
    return OcclusionScore(
        file=box.file,
        label=box.label,
        predicted=classes[int(predicted[0])],
        predicted_box_hidden=classes[int(predicted[1])],
        tumour_evidence=float(tumour[0]),
        tumour_drop_box=float(tumour[0] - tumour[1]),
        tumour_drop_control=float(tumour[0] - tumour[2:].mean()) if places else nan,
        type_evidence=float(kind[0]),
        type_drop_box=float(kind[0] - kind[1]),
        type_drop_control=float(kind[0] - kind[2:].mean()) if places else nan,
        controls=len(places),
    )


def classifier_occlusion_score(
    classifier: "TumorClassifier",
    image: Any,
    box: Box,
    *,
    controls: int = CONTROL_SQUARES,
    seed: int = 0,
    fill: str = "median",
) -> OcclusionScore:
    """:func:`occlusion_score` with a fitted or loaded classifier's ``predict_proba``.

    The image is decoded once (the project's grey representation); the classifier's own
    head threshold finds the head; ``controls``, ``seed`` and ``fill`` as there.

    Raises:
        NotFittedError: The classifier is not fitted.
        InvalidImageError: The image cannot be read.
        InvalidArgumentError: ``box.label`` is not one of the classifier's classes.
    """
    from .decoding import load_image

    classifier._check_fitted()
    gray = np.asarray(load_image(image))
    return occlusion_score(
        classifier.predict_proba,
        [str(c) for c in classifier.classes_],
        gray,
        box,
        controls=controls,
        seed=seed,
        head_threshold=classifier.preprocessor_.head_threshold,
        fill=fill,
    )


def _median(values: Iterable[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return float(statistics.median(kept)) if kept else float("nan")


def _share(flags: Iterable[bool | None]) -> float:
    kept = [bool(f) for f in flags if f is not None]
    return float(sum(kept) / len(kept)) if kept else float("nan")


def _figures(scores: Sequence[OcclusionScore]) -> dict[str, float]:
    def beats(drop_box: float, drop_control: float) -> bool | None:
        return None if math.isnan(drop_box) or math.isnan(drop_control) else drop_box > drop_control

    return {
        "n": float(len(scores)),
        "tumour_evidence": _median(s.tumour_evidence for s in scores),
        "tumour_drop_box": _median(s.tumour_drop_box for s in scores),
        "tumour_drop_control": _median(s.tumour_drop_control for s in scores),
        "tumour_box_beats_control": _share(beats(s.tumour_drop_box, s.tumour_drop_control) for s in scores),
        "type_evidence": _median(s.type_evidence for s in scores),
        "type_drop_box": _median(s.type_drop_box for s in scores),
        "type_drop_control": _median(s.type_drop_control for s in scores),
        "type_box_beats_control": _share(beats(s.type_drop_box, s.type_drop_control) for s in scores),
        "label_changed_box_hidden": _share(s.predicted_box_hidden != s.predicted for s in scores),
    }


def summarise_occlusion(scores: Iterable[OcclusionScore]) -> dict[str, dict[str, float]]:
    """Per-class and overall figures: medians of evidence and drops, shares of images.

    ``*_box_beats_control`` is the share of images whose evidence fell more with the box
    hidden than with the controls (images without controls left out); about 0.5 means
    the tumour matters no more than any other place in the head.
    ``label_changed_box_hidden`` is the share whose predicted class changed.

    Returns:
        ``{class: figures, ..., "all": figures}``, classes sorted; ``"all"`` pools the
        images.

    Raises:
        InvalidArgumentError: No scores.
    """
    scores = list(scores)
    if not scores:
        raise InvalidArgumentError("summarise_occlusion needs at least one OcclusionScore.")
    by_class: dict[str, list[OcclusionScore]] = {}
    for score in scores:
        by_class.setdefault(score.label, []).append(score)
    result = {label: _figures(group) for label, group in sorted(by_class.items())}
    result["all"] = _figures(scores)
    return result
