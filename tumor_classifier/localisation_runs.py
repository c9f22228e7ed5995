"""Localisation runs: one image through a classifier, its map scored on the tumour box.

:func:`score_image` explains an image with a classifier, times ``explain`` against
``predict``, and scores the map with the numpy scores of
:mod:`tumor_classifier.localisation` (pointing game, mass in box and head, rank
correlation). It is the per-image step of ``benchmarks/localisation.py``;
:func:`summarise` turns its :class:`ImageScore` results into per-class and mean figures.
:func:`class_attribution` gives the map of any class (the box's, not only the predicted
one) and :func:`randomised_copy` the re-initialised model of the model-randomisation check
of Adebayo et al. 2018.

Only numpy is imported at module level; the functions that run a model import torch
when called.

Example:
    >>> from tumor_classifier.localisation import read_boxes
    >>> boxes = read_boxes("../shared/data/tumour-boxes/boxes.csv")   # doctest: +SKIP
    >>> scores = [score_image(classifier, folder / box.file, box) for box in boxes.values()]  # doctest: +SKIP
    >>> summarise(scores)["mean"]["pointing_game"]                    # doctest: +SKIP
    0.8
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np

from .exceptions import InvalidArgumentError, TumorClassifierError
from .localisation import POINTING_TOLERANCE_PX, Box, head_mask, mass_in_box, mass_in_mask, pointing_game, rank_correlation

if TYPE_CHECKING:  # imported for annotations only: they pull in torch
    from .classifier import TumorClassifier

__all__ = [
    "ImageScore",
    "as_records",
    "class_attribution",
    "randomised_copy",
    "score_image",
    "summarise",
]


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

    from .attributions import compute_attributions
    from .decoding import load_image
    from .explanations import method_options, resolve_method

    classifier._check_fitted()
    classes = [str(c) for c in classifier.classes_]
    if target not in classes:
        raise InvalidArgumentError(f"Unknown class {target!r}; the classifier's classes are {', '.join(classes)}.")
    method = resolve_method(classifier, method)
    preprocessor = classifier.preprocessor_
    prepared = preprocessor.prepare(load_image(image))
    pixels = torch.from_numpy(np.asarray(prepared.image)[None].copy())
    pixel_values = preprocessor.normalize(pixels).to(classifier.model_.device)
    options = method_options(classifier, method, options)  # as explain: a black baseline, versus no tumour
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
