"""Running the classifier for the app: checked uploads in, :class:`ScanReport` out.

* :func:`analyze_scans` checks, classifies and explains scans and returns
  :class:`ScanReport`; the classifier runs its model passes one at a time (attribution
  hooks), while decoding, checks and overlays of concurrent requests run beside them;
* :func:`predict_scan` / :func:`predict_scans` are the pure UI functions (one image /
  a Gradio batch) and turn project errors into ``gr.Error``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Sequence

import gradio as gr
from PIL import Image

from ..attributions import METHODS
from ..classifier import Explanation, TumorClassifier
from ..data import NO_TUMOR
from ..decoding import DecodedImage, decode
from ..exceptions import InvalidArgumentError, TumorClassifierError
from ..verdict import NOT_BRAIN_MRI, format_probability
from .uploads import check_scan, upload_source

#: Heatmap methods as the UI names them.
METHOD_CHOICES = (
    ("Smooth CAM, tumor vs. no tumor", "smoothcam_contrast"),
    ("SmoothGrad, tumor vs. no tumor", "smoothgrad_contrast"),
    ("SmoothGrad", "smoothgrad"),
    ("Grad-CAM", "gradcam"),
    ("HiResCAM", "hirescam"),
    ("Integrated Gradients", "integrated_gradients"),
    ("Occlusion", "occlusion"),
)
DEFAULT_OPACITY = 0.45
#: Label headline of a request that could not be analysed (see :func:`predict_scans`).
INVALID_HEADLINE = "Invalid image"


def normalize_method(method: str | None) -> str:
    """Maps a method given by value (``gradcam``), by UI name (``Grad-CAM``) or ``auto``.

    Raises:
        TumorClassifierError: An unknown method.
    """
    if method is None or method == "auto":
        return "auto"
    names = {label.lower(): value for label, value in METHOD_CHOICES}
    key = str(method).strip().lower()
    key = names.get(key, key).replace("-", "_").replace(" ", "_")
    if key not in METHODS:
        raise InvalidArgumentError(f"Unknown heatmap method {method!r}; choose one of {', '.join(METHODS)}.")
    return key


def default_method(classifier: TumorClassifier) -> str:
    """What ``method="auto"`` runs for ``classifier`` (the page's preselected method): its
    ``attribution_method_``, or Grad-CAM for a model that names none we know."""
    method = getattr(classifier, "attribution_method_", "gradcam")
    return method if method in METHODS else "gradcam"


def method_name(method: str) -> str:
    """A method as the UI names it (``"Grad-CAM"`` for ``gradcam``); a method without a UI name as it is."""
    return {value: label for label, value in METHOD_CHOICES}.get(method, method)


# -- running the classifier ------------------------------------------------------------
@dataclass
class ScanReport:
    """One analysed scan, in the words the UI and the REST route use.

    The words come from the explanation's :class:`~tumor_classifier.verdict.Verdict`
    (:func:`~tumor_classifier.verdict.decide_verdict`, the policy the library and the
    CLI use too); nothing here decides a verdict.

    Attributes:
        explanation: The classifier's :class:`~tumor_classifier.Explanation`.
    """

    explanation: Explanation

    @property
    def verdict(self) -> str:
        """``"tumor"``, ``"no_tumor"``, ``"uncertain"`` or ``"not_brain_mri"``."""
        return self.explanation.verdict.kind

    @property
    def headline(self) -> str:
        """Top of the label: the class, or ``"Uncertain"`` / ``"Not a brain MRI"``."""
        return self.explanation.verdict.headline

    @property
    def summary(self) -> str:
        """The verdict in words (Markdown)."""
        return self.explanation.verdict.markdown

    @property
    def tumor_probability_text(self) -> str:
        """The tumor probability for people, with the caveat that applies."""
        p = self.explanation.tumor_probability
        if math.isnan(p):
            return f"n/a: this model has no '{NO_TUMOR}' class"
        if self.verdict == NOT_BRAIN_MRI:
            return "n/a: the image does not look like a brain MRI slice"
        if self.verdict == "uncertain":
            return f"{format_probability(p)} (uncertain prediction)"
        return format_probability(p)

    @property
    def label_value(self) -> dict[str, Any]:
        """Value for :class:`gr.Label`: ``{"label": headline, "confidences": [...]}``, most probable first.

        An input that is not a brain MRI shows no class probabilities: they would read as a
        tumor type.
        """
        if self.verdict == NOT_BRAIN_MRI:
            return {"label": self.headline, "confidences": []}
        ranked = sorted(self.explanation.probabilities.items(), key=lambda item: -item[1])
        return {"label": self.headline, "confidences": [{"label": c, "confidence": float(p)} for c, p in ranked]}


def analyze_scans(
    sources: Sequence[Any],
    methods: Sequence[str],
    opacities: Sequence[float],
    *,
    classifier: TumorClassifier,
) -> list[ScanReport]:
    """Checks, classifies and explains scans; requests that share a method run as one batch.

    Args:
        sources: Uploads (paths, bytes, PIL images, numpy arrays), see :func:`check_scan`.
        methods: One heatmap method per scan (see :func:`normalize_method`).
        opacities: One heatmap opacity in [0, 1] per scan.
        classifier: A fitted :class:`TumorClassifier`.

    Returns:
        One :class:`ScanReport` per scan, in order.

    Raises:
        InvalidImageError: A scan cannot be used (the message names the problem).
        TumorClassifierError: An unknown method or an opacity outside [0, 1].
    """
    if not (len(sources) == len(methods) == len(opacities)):
        raise InvalidArgumentError(f"Got {len(sources)} scans, {len(methods)} methods and {len(opacities)} opacities.")
    inputs = [check_scan(source) for source in sources]
    options = [_check_options(method, opacity) for method, opacity in zip(methods, opacities)]
    return _explain_checked(inputs, options, classifier)


def _check_options(method: str | None, opacity: float | None) -> tuple[str, float]:
    alpha = DEFAULT_OPACITY if opacity is None else float(opacity)
    if not 0.0 <= alpha <= 1.0:
        raise InvalidArgumentError(f"The heatmap opacity must be in [0, 1]; got {opacity}.")
    return normalize_method(method), alpha


def _explain_checked(inputs: Sequence[Any], options: Sequence[tuple[str, float]], classifier: TumorClassifier) -> list[ScanReport]:
    """Explains inputs that passed :func:`check_scan`; one classifier call per (method, opacity)."""
    groups: dict[tuple[str, float], list[int]] = {}
    for index, option in enumerate(options):
        groups.setdefault(option, []).append(index)
    explanations: list[Explanation | None] = [None] * len(inputs)
    for (method, alpha), indices in groups.items():
        # No lock here: the classifier runs its model passes one at a time itself (see
        # classifier._model_passes); the decoded upload, the MRI check and the overlay
        # are not held behind other requests' passes.
        explained = classifier.explain([inputs[i] for i in indices], method=method, alpha=alpha)
        for index, explanation in zip(indices, explained):
            explanations[index] = explanation
    return [ScanReport(e) for e in explanations]


def load_classifier(model: TumorClassifier | str | os.PathLike | None = None, *, backend: str = "torch") -> TumorClassifier:
    """The classifier to serve: an instance as is, ``None`` for the shipped model, else a folder or Hub id.

    ``backend`` is passed to :meth:`TumorClassifier.from_pretrained` (``"onnx"``: the
    probabilities and the MRI check in onnxruntime; heatmaps stay in torch); an instance
    keeps its own.
    """
    if isinstance(model, TumorClassifier):
        return model
    return TumorClassifier.from_pretrained(model, backend=backend)


# -- the pure UI functions ---------------------------------------------------------------
def ui_error(error: Exception) -> gr.Error:
    return gr.Error(str(error), print_exception=False)


def analyze_each(images, methods, opacities, classifier) -> tuple[list[ScanReport | TumorClassifierError], list[Any]]:
    """Like :func:`analyze_scans`, but a bad request yields its error instead of failing the others.

    Returns:
        One report or error per request, and the checked inputs (``None`` where bad).
    """
    results: list[ScanReport | TumorClassifierError | None] = [None] * len(images)
    inputs: list[Any] = [None] * len(images)
    options = {}
    for index, (image, method, opacity) in enumerate(zip(images, methods, opacities, strict=True)):
        try:
            inputs[index] = check_scan(image)
            options[index] = _check_options(method, opacity)
        except TumorClassifierError as error:
            results[index], inputs[index] = error, None
    if options:
        reports = _explain_checked([inputs[i] for i in options], list(options.values()), classifier)
        for index, report in zip(options, reports):
            results[index] = report
    return results, inputs  # type: ignore[return-value]


def ui_outputs(result: ScanReport | TumorClassifierError, checked: Any) -> tuple[str, dict[str, Any], Image.Image | None, str, dict[str, Any] | None]:
    """The outputs of one request, and its state: the grey scan and its map, for re-drawing at another opacity."""
    if isinstance(result, ScanReport):
        # The decoded upload itself (check_scan's DecodedImage) when there is one: never decoded again.
        gray = checked.gray if isinstance(checked, DecodedImage) else decode(checked).gray
        state = {"scan": gray, "attribution": result.explanation.attribution}
        return result.summary, result.label_value, result.explanation.overlay, result.tumor_probability_text, state
    return f"### Cannot analyze this image\n{result}", {"label": INVALID_HEADLINE, "confidences": []}, None, "n/a", None


def predict_scans(
    scan: Sequence[Any],
    method: Sequence[str],
    opacity: Sequence[float],
    *,
    classifier: TumorClassifier,
    uploads_only: bool = False,
) -> tuple[list[str], list[dict[str, Any]], list[Image.Image | None], list[str], list[dict[str, Any] | None]]:
    """The batched UI function, the one Gradio serves (``/predict``, ``batch=True``): lists in, one list per output.

    Each argument is a list with one entry per request (named for one call, as the API
    page and ``gradio_client`` show them). A batch holds the requests of several users. A
    bad upload alone in its batch (the usual case) raises ``gr.Error``; in a batch with
    others it does not fail them: its outputs say ``"Cannot analyze this image"`` with the
    reason, its label headline is ``"Invalid image"`` and its overlay ``None``. (Gradio
    6.31's per-request ``validator`` does not work for batched events with several inputs.)

    Args:
        scan: Uploads: file paths, bytes, PIL images, numpy arrays, or Gradio file payloads.
        method: Heatmap methods (see :func:`normalize_method`).
        opacity: Heatmap opacities in [0, 1].
        classifier: A fitted :class:`TumorClassifier`.
        uploads_only: Read files only from Gradio's upload folder and the examples (what
            the app binds: a client writes the path of a payload itself, see
            :func:`~.uploads.upload_source`); off for callers naming their own files.

    Returns:
        ``(verdicts, labels, overlays, tumor_probabilities, states)``, each a list with one
        entry per image: the first four as :func:`predict_scan` returns them; a state is
        ``{"scan": grey PIL image, "attribution": float32 (H, W) in [0, 1]}`` (``None`` for
        a bad upload), what the opacity slider re-draws from.

    Raises:
        gr.Error: The only request of the batch is bad; the message says why.
    """
    try:
        images = [upload_source(payload) for payload in scan] if uploads_only else list(scan)
    except TumorClassifierError as error:
        raise ui_error(error) from None
    results, inputs = analyze_each(images, method, opacity, classifier)
    if len(results) == 1 and not isinstance(results[0], ScanReport):
        raise ui_error(results[0])
    return tuple(list(column) for column in zip(*map(ui_outputs, results, inputs)))  # type: ignore[return-value]


def predict_scan(
    image: Any,
    method: str = "gradcam",
    opacity: float = DEFAULT_OPACITY,
    *,
    classifier: TumorClassifier | None = None,
) -> tuple[str, dict[str, Any], Image.Image, str]:
    """Analyses one uploaded slice for the UI.

    Args:
        image: A file path (JPEG, PNG, TIFF, BMP, GIF, WebP), raw bytes, a PIL image or a numpy
            array (H, W) / (H, W, C).
        method: ``gradcam``, ``integrated_gradients``, ``occlusion`` (or their UI names,
            or ``auto``).
        opacity: Largest opacity of the heatmap on the scan, in [0, 1].
        classifier: The fitted classifier; ``None`` loads the shipped default.

    Returns:
        ``(verdict, label, overlay, tumor_probability)``: the verdict as Markdown; the
        ``gr.Label`` value ``{"label": headline, "confidences": [{"label": class,
        "confidence": p}, ...]}`` (headline: the class, or ``"Uncertain"`` / ``"Not a
        brain MRI"``); the heatmap blended on the scan (RGB, the input's size); the tumor
        probability as text.

    Raises:
        gr.Error: The image cannot be used; the message says why and what to upload.

    Example:
        >>> verdict, label, heatmap, tumor = predict_scan("scan.png", "occlusion", 0.6, classifier=clf)  # doctest: +SKIP
        >>> label["label"]                                                                           # doctest: +SKIP
        'glioma'
    """
    classifier = load_classifier(None) if classifier is None else classifier
    outputs = predict_scans([image], [method], [opacity], classifier=classifier)
    return tuple(output[0] for output in outputs[:4])  # type: ignore[return-value]
