"""What :meth:`TumorClassifier.explain` gives: attribution maps, overlays and verdicts.

The functions take a fitted classifier and use its model, preprocessing and verdicts;
``TumorClassifier.explain`` and ``predict(return_attributions=True)`` delegate here.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from .attributions import CONTRAST_METHODS, METHODS, compute_attributions
from .data import NO_TUMOR, as_sources
from .decoding import decode_each
from .exceptions import InvalidArgumentError
from .inference import finite, model_passes, pixel_values
from .metrics import tumor_probability
from .preprocessing import PreparedImage
from .quality import ImageQuality
from .verdict import Verdict
from .visualization import overlay


@dataclass
class Explanation:
    """One image's prediction with its attribution and its verdict.

    Attributes:
        label: What :meth:`TumorClassifier.predict` gives: the most probable class, or
            ``"not_brain_mri"`` when the learned check flags the input.
        probabilities: Class name -> probability, following ``classes_``.
        tumor_probability: Probability of any tumor (``nan`` without a no-tumor class).
        attribution: float32 (H, W) in [0, 1] over the input image's pixels.
        overlay: RGB PIL image: the heatmap blended on the scan.
        method: Attribution method used.
        uncertain: The top probability is below the classifier's ``uncertainty_threshold``.
        quality: The learned brain-MRI check (:mod:`tumor_classifier.mri_check`):
            ``looks_like_mri``, the ``reasons`` it was flagged for, and its score
            (``scores["mri_score"]`` in [0, 1]).
        verdict: The :class:`~tumor_classifier.verdict.Verdict` (the one verdict policy:
            not a brain MRI / uncertain / no tumor / tumor and its type).
        explained: The class whose evidence the map shows: the most probable one, or the
            ``target`` that ``explain`` was given.
    """

    label: str
    probabilities: dict[str, float]
    tumor_probability: float
    attribution: np.ndarray
    overlay: Image.Image
    method: str
    uncertain: bool
    quality: ImageQuality
    verdict: Verdict
    explained: str = ""


def resolve_method(estimator, method: str) -> str:
    """``method``, with ``auto`` the classifier's default; an unknown name raises."""
    method = estimator.attribution_method_ if method == "auto" else method
    if method not in METHODS:
        raise InvalidArgumentError(f"Unknown attribution method {method!r}; choose auto or one of {', '.join(METHODS)}.")
    return method


#: The options ``explain`` passes on: ``compute_attributions``' keywords, less those it sets itself.
_OPTION_NAMES = frozenset(inspect.signature(compute_attributions).parameters) - {
    "model", "pixel_values", "target", "method", "return_logits",
}


def method_options(estimator, method: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` for ``compute_attributions`` with what the classifier knows filled in.

    Integrated Gradients and Occlusion take a black image as "absent" (their baseline);
    the :data:`~tumor_classifier.attributions.CONTRAST_METHODS` contrast the class with no
    tumour (``versus``), when the classifier has that class. A value the caller gave is kept.

    Raises:
        InvalidArgumentError: An option ``compute_attributions`` does not take (options of
            other methods are accepted and unused, so one set serves every method).
    """
    unknown = sorted(set(options) - _OPTION_NAMES)
    if unknown:
        raise InvalidArgumentError(
            f"Unknown explain option {unknown[0]!r}; accepted: {', '.join(sorted(_OPTION_NAMES))} (see compute_attributions)."
        )
    options = dict(options)
    preprocessor = estimator.preprocessor_
    if method in ("integrated_gradients", "occlusion"):
        options.setdefault("baseline", (0.0 - preprocessor.mean) / preprocessor.std)
    classes = [str(c) for c in estimator.classes_]
    if method in CONTRAST_METHODS and NO_TUMOR in classes:
        options.setdefault("versus", classes.index(NO_TUMOR))
    return options


def attributions(
    estimator, prepared: Sequence[PreparedImage], targets: np.ndarray | None, method: str, **options: Any
) -> tuple[list[np.ndarray], np.ndarray | None]:
    """Maps in each input's coordinates, and the logits (n, k) of the same passes.

    ``targets=None`` explains the predicted class, found in Grad-CAM's own forward
    pass, so predict-and-explain costs one forward and one backward pass; the logits
    are returned then only (with ``targets`` given, ``None``: no extra forward pass
    for logits nobody reads).
    """
    method = resolve_method(estimator, method)
    model, preprocessor = estimator.model_, estimator.preprocessor_
    small_maps: list[np.ndarray] = []
    logits: list[np.ndarray] = []
    options = method_options(estimator, method, options)
    with model_passes(model):
        for start in range(0, len(prepared), estimator.batch_size):
            chunk = prepared[start : start + estimator.batch_size]
            values = pixel_values(preprocessor, chunk, model.device)
            target = None if targets is None else torch.as_tensor(targets[start : start + len(chunk)], device=model.device)
            result = compute_attributions(model, values, target, method, return_logits=targets is None, **options)
            if targets is None:
                result, chunk_logits = result
                logits.append(chunk_logits)
            small_maps.extend(result)
    # Back to each input's size outside the lock: its cost grows with the upload.
    maps = [p.to_original(m) for p, m in zip(prepared, small_maps)]
    return [np.clip(m, 0.0, 1.0).astype(np.float32) for m in maps], (np.concatenate(logits) if logits else None)


def explain(
    estimator, X: Any, method: str = "auto", *, alpha: float = 0.45, target: str | None = None, **options: Any
) -> list[Explanation]:
    """:meth:`TumorClassifier.explain` of a fitted ``estimator`` (documented there)."""
    classes = [str(c) for c in estimator.classes_]
    if target is not None and str(target) not in classes:
        raise InvalidArgumentError(f"target {target!r} is not a class of this model; its classes: {', '.join(classes)}.")
    decoded = decode_each(as_sources(X))
    grays = [d.gray for d in decoded]
    prepared = [estimator.preprocessor_.prepare(gray) for gray in grays]
    method = resolve_method(estimator, method)
    if method == "gradcam" and not estimator.test_time_augmentation and target is None:
        # One forward + backward pass gives both the prediction and its Grad-CAM map.
        maps, logits = attributions(estimator, prepared, None, method, **options)
        proba = torch.softmax(finite(torch.from_numpy(logits).float(), 0), dim=-1).numpy()
    else:
        proba = estimator._proba(prepared)
        targets = proba.argmax(axis=1) if target is None else np.full(len(prepared), classes.index(str(target)))
        maps, _ = attributions(estimator, prepared, targets, method, **options)
    tumor = tumor_probability(proba, estimator.classes_) if NO_TUMOR in estimator.classes_ else np.full(len(proba), np.nan)
    explanations = []
    for index, (gray, verdict) in enumerate(zip(grays, estimator._verdicts(decoded, proba))):
        explanations.append(
            Explanation(
                label=verdict.label,
                probabilities=verdict.probabilities,
                tumor_probability=float(tumor[index]),
                attribution=maps[index],
                overlay=overlay(gray, maps[index], alpha=alpha),
                method=method,
                uncertain=bool(proba[index].max() < estimator.uncertainty_threshold),
                quality=ImageQuality(verdict.brain_mri, list(verdict.reasons), {"mri_score": verdict.mri_score}),
                verdict=verdict,
                explained=classes[int(proba[index].argmax())] if target is None else str(target),
            )
        )
    return explanations
