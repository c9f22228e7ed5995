"""Volumes in the app: a checked upload in, the library's volume verdict out, and a slice viewer.

* :func:`analyze_volume` reads an upload once (:func:`~.volume_uploads.check_volume`) and
  runs :meth:`TumorClassifier.predict_volume` on the :class:`~tumor_classifier.volumes.Volume`;
  the verdict, the per-slice probabilities and the key slice's heatmap are the library's
  (:mod:`tumor_classifier.volume_prediction`); nothing here decides a verdict;
* :func:`predict_volume_upload` is the UI function Gradio serves (``/predict_volume``):
  the outputs of the page and the :class:`VolumeReport` kept as the session's state;
* :func:`show_slice` draws the heatmap of one slice of that state (the slice slider), from
  the slices read once: the file is not opened again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from ..classifier import TumorClassifier
from ..exceptions import InvalidArgumentError, TumorClassifierError
from ..reports import DISCLAIMER
from ..verdict import format_probability
from ..volume_prediction import VolumePrediction
from .analysis import DEFAULT_OPACITY, method_name, normalize_method, ui_error
from .uploads import MAX_UPLOAD_BYTES, upload_source
from .volume_uploads import check_volume

#: Label headline of a volume flagged as not a brain MRI.
NOT_MRI_HEADLINE = "Not a brain MRI"


@dataclass
class VolumeReport:
    """One analysed volume, in the words the UI uses; also the page's state for the slice viewer.

    Attributes:
        prediction: The library's :class:`~tumor_classifier.volume_prediction.VolumePrediction`
            (it holds the slices read once, ``prediction.volume.slices``).
        method: The heatmap method asked for (``auto`` or a method name).
    """

    prediction: VolumePrediction
    method: str = "auto"

    @property
    def verdict(self) -> str:
        """``"tumor"``, ``"no_tumor"`` or ``"not_brain_mri"``: the prediction's own."""
        return self.prediction.verdict

    @property
    def headline(self) -> str:
        """Top of the label: the tumour type, ``notumor``, or ``"Not a brain MRI"``."""
        return NOT_MRI_HEADLINE if self.prediction.label is None else self.prediction.label

    @property
    def summary(self) -> str:
        """The verdict in words (Markdown), with what it rests on and the caution."""
        p, volume = self.prediction, self.prediction.volume
        slices = f"{len(p.classified)} {volume.plane or 'given'} slices of {volume.source}, {int(p.classified.sum())} at brain level classified."
        rule = f"runs of at least {p.min_run} consecutive slices at a tumor probability of {p.threshold:.0%} or more"
        if not p.looks_like_mri:
            reasons = "\n".join(f"- {reason}" for reason in p.mri_reasons)
            title = "This does not look like a brain MRI volume"
            details = f"{reasons}\n\nThe model only knows brain MRI slices, so it gives no tumor type for this volume."
        elif p.tumour:
            spans = ", ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in p.runs)
            title = f"Tumor detected: {p.label}"
            details = (
                f"Mean tumor probability {format_probability(p.tumour_probability)} over the {rule} (slices {spans}); "
                f"probability of {p.label} among them {format_probability(p.probabilities[p.label])}. Key slice: {p.key_slice}."
            )
        else:
            title = "No tumor detected"
            details = (
                f"No {rule.replace('runs', 'run', 1)}; the highest mean over {p.min_run} consecutive slices is "
                f"{format_probability(p.tumour_probability)}. Most suspicious slice: {p.key_slice}."
            )
        notes = "".join(f"\n- {note}" for note in p.notes)
        return f"### {title}\n{details}\n\n{slices}{notes}\n\n*{DISCLAIMER}*"

    @property
    def tumor_probability_text(self) -> str:
        """The volume's tumour probability for people, or why there is none."""
        if not self.prediction.looks_like_mri:
            return "n/a: the volume does not look like a brain MRI"
        return format_probability(self.prediction.tumour_probability)

    @property
    def label_value(self) -> dict[str, Any]:
        """Value for ``gr.Label``: the headline and the mean class probabilities, most probable first.

        A volume flagged as not a brain MRI shows no class probabilities: they would read
        as a tumour type.
        """
        if not self.prediction.looks_like_mri:
            return {"label": self.headline, "confidences": []}
        ranked = sorted(self.prediction.probabilities.items(), key=lambda item: -item[1])
        return {"label": self.headline, "confidences": [{"label": c, "confidence": float(p)} for c, p in ranked]}


def analyze_volume(
    source: Any, method: str = "auto", *, classifier: TumorClassifier, name: str | None = None, max_bytes: int = MAX_UPLOAD_BYTES
) -> VolumeReport:
    """Reads one volume upload and gives the library's verdict on it.

    Args:
        source: A NIfTI, DICOM or zip path, or its bytes (see :func:`~.volume_uploads.check_volume`).
        method: Heatmap method of the key slice (see :func:`~.analysis.normalize_method`).
        classifier: A fitted :class:`TumorClassifier` with a ``notumor`` class.
        name: How to call the file in messages.
        max_bytes: Largest accepted upload.

    Returns:
        The :class:`VolumeReport`.

    Raises:
        InvalidVolumeError: The upload cannot be used (the message names the problem).
        TumorClassifierError: An unknown method, or a model without a ``notumor`` class.
    """
    method = normalize_method(method)
    volume = check_volume(source, name=name, max_bytes=max_bytes)
    return VolumeReport(classifier.predict_volume(volume, explain=True, method=method), method)


def slice_overlay(report: VolumeReport, index: int, method: str | None = None, *, classifier: TumorClassifier) -> tuple[Image.Image, str]:
    """The heatmap of one slice of an analysed volume, and a caption for it.

    The key slice's heatmap (computed with the verdict) is reused for its method; another
    classified slice is explained by ``classifier.explain`` on the slice as read; a
    slice not at brain level was not classified, so it is shown without a heatmap.

    Args:
        report: What :func:`analyze_volume` gave.
        index: Slice index, 0-based.
        method: Heatmap method (default: the report's).
        classifier: The classifier that made the report.

    Returns:
        ``(image, caption)``: RGB PIL image of the slice's size; the caption (Markdown).

    Raises:
        InvalidArgumentError: ``index`` is not a slice of the volume.
    """
    p = report.prediction
    slices = p.volume.slices
    if not 0 <= index < len(slices):
        raise InvalidArgumentError(f"Slice {index} does not exist; the volume has slices 0 to {len(slices) - 1}.")
    method = report.method if method is None else normalize_method(method)
    where = f"Slice {index} of 0-{len(slices) - 1}"
    if not p.classified[index]:
        return Image.fromarray(slices[index]).convert("RGB"), f"{where}: not at brain level, not classified (no heatmap)."
    if index == p.key_slice and method == report.method and p.explanation is not None:
        explanation = p.explanation
    else:
        explanation = classifier.explain([slices[index]], method=method, alpha=DEFAULT_OPACITY)[0]
    key = " (key slice)" if index == p.key_slice else ""
    # A volume flagged as not a brain MRI has no tumour probability (see tumor_probability_text), nor do its slices.
    tumour = format_probability(float(p.slice_tumour_probability[index])) if p.looks_like_mri else "n/a (the volume does not look like a brain MRI)"
    caption = f"{where}{key}: tumor probability {tumour}; heatmap: {method_name(explanation.method)}."
    return explanation.overlay, caption


def probability_plot(report: VolumeReport, shown_slice: int | None = None):
    """The library's plot of tumour probability along the slices, marking the slice on show.

    For a volume flagged as not a brain MRI the title says so and no tumour run is shaded:
    the verdict gives no tumour answer for it.
    """
    from ..plots import slice_probabilities_figure

    p = report.prediction
    return slice_probabilities_figure(
        p.slice_tumour_probability, threshold=p.threshold, key_slice=p.key_slice, runs=p.shown_runs,
        shown_slice=shown_slice, title=p.plot_title(),
    )


# -- the UI functions --------------------------------------------------------------------
def predict_volume_upload(volume: Any, method: str = "auto", *, classifier: TumorClassifier, uploads_only: bool = False) -> tuple:
    """The volume UI function (Gradio's ``/predict_volume``): one upload in, the page's outputs and state out.

    Args:
        volume: A NIfTI (.nii, .nii.gz), DICOM (.dcm) or zipped DICOM series path, its
            bytes, or a Gradio file payload.
        method: Heatmap method (value, UI name or ``auto``).
        classifier: A fitted :class:`TumorClassifier` with a ``notumor`` class.
        uploads_only: Read files only from Gradio's upload folder (what the app binds: a
            client writes the path of a payload itself); see :func:`~.uploads.upload_source`.

    Returns:
        ``(verdict, label, tumor_probability, slider, heatmap, caption, plot, state)``:
        the verdict as Markdown; the ``gr.Label`` value; the tumour probability as text; a
        ``gr.Slider`` over the slices, set on the key slice; the key slice's heatmap (RGB PIL)
        and its caption; the probability-along-slices figure (matplotlib); the
        :class:`VolumeReport` for :func:`show_slice`.

    Raises:
        gr.Error: The upload cannot be used; the message says why and what to upload.

    Example:
        >>> verdict, label, *_ = predict_volume_upload("scan.nii.gz", classifier=clf)   # doctest: +SKIP
        >>> label["label"]                                                             # doctest: +SKIP
        'notumor'
    """
    try:
        source = upload_source(volume) if uploads_only else volume
        report = analyze_volume(source, method, classifier=classifier)
        key = report.prediction.key_slice
        heatmap, caption = slice_overlay(report, key, classifier=classifier)
    except TumorClassifierError as error:
        raise ui_error(error) from None
    n = len(report.prediction.classified)
    slider = gr.Slider(minimum=0, maximum=max(n - 1, 1), value=key, step=1, interactive=n > 1, label=f"Slice (0-{n - 1}; key slice {key})")
    return report.summary, report.label_value, report.tumor_probability_text, slider, heatmap, caption, probability_plot(report, key), report


def empty_slider() -> gr.Slider:
    """The slice slider before a volume is analysed: off, over nothing."""
    return gr.Slider(minimum=0, maximum=1, value=0, step=1, interactive=False, label="Slice")


def predict_volume_for_page(volume: Any, method: str = "auto", *, classifier: TumorClassifier, uploads_only: bool = False) -> tuple:
    """The volume tab's Analyze: :func:`predict_volume_upload`, with a bad upload said in the verdict panel.

    The ``gr.Error`` the API endpoint raises would show in the page as a toast that goes
    after 10 s and leaves an "Error" badge on every output, with nothing saying why; the
    page shows the message where the verdict goes instead, as the slice tab does, and
    clears the other outputs.

    Returns:
        The outputs of :func:`predict_volume_upload`; for a bad upload ``("### Cannot analyze
        this volume\n<message>", None, "", empty slider, None, "", None, None)``.
    """
    try:
        return predict_volume_upload(volume, method, classifier=classifier, uploads_only=uploads_only)
    except gr.Error as error:
        return f"### Cannot analyze this volume\n{error.message}", None, "", empty_slider(), None, "", None, None


def shown_slice(report: VolumeReport | None, index: Any) -> int | None:
    """The slice :func:`show_slice` shows for the slider's ``index``: rounded and clipped to the
    volume (a number typed in the slider's box may lie beyond it); ``None`` before any volume
    is analysed or for no number."""
    if report is None or isinstance(index, bool) or not isinstance(index, (int, float)) or math.isnan(index):
        return None
    return int(np.clip(round(float(index)), 0, len(report.prediction.classified) - 1))


def show_slice(report: VolumeReport | None, index: float | None, method: str | None, *, classifier: TumorClassifier):
    """The slice slider's function: the heatmap, caption and plot of slice ``index`` of the state.

    Returns ``gr.skip()`` for each output before any volume is analysed.

    Raises:
        gr.Error: An unknown method or a slice outside the volume.
    """
    index = shown_slice(report, index)
    if index is None:
        return gr.skip(), gr.skip(), gr.skip()
    try:
        heatmap, caption = slice_overlay(report, index, method, classifier=classifier)
    except TumorClassifierError as error:
        raise ui_error(error) from None
    return heatmap, caption, probability_plot(report, index)
