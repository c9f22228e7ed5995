"""The web app: a Gradio UI and a REST endpoint around :class:`TumorClassifier`, one process.

Layout of the served app (``build_app``)::

    /                   the Gradio UI (upload a slice, verdict, probabilities, heatmap)
    /gradio_api/...     Gradio's own routes; the named endpoint ``/predict`` is batched
    /api/v1/predict     plain REST: multipart field ``file`` in, JSON out
    /openapi.json       the REST schema
    /docs               the REST schema as a self-contained page (:mod:`.rest_docs`;
                        FastAPI's Swagger UI would load its scripts from a CDN)

Layers, so tests and the REST route use the same code as the UI:

* :func:`check_scan` turns an upload into bytes the classifier can read, or raises
  :class:`~tumor_classifier.InvalidImageError` with a message for people;
* :func:`analyze_scans` runs the classifier and returns :class:`ScanReport`; the
  classifier runs its model passes one at a time (attribution hooks), while decoding,
  checks and overlays of concurrent requests run beside them;
* :func:`predict_scan` / :func:`predict_scans` are the pure UI functions (one image /
  a Gradio batch) and turn project errors into ``gr.Error``;
* :func:`build_demo`, :func:`build_app`, :func:`serve` wire them to Gradio, FastAPI and
  uvicorn.

Nothing here reaches the network: the Blocks have analytics off, the entry points
(``tumor-classifier serve``, ``space/app.py``) also switch off Gradio analytics and
Hugging Face telemetry before Gradio is imported, the default theme serves its fonts from the app, the
``file=<url>`` proxy route of Gradio is refused, and the page loads nothing from
elsewhere (the browser test fails on any request that is not to 127.0.0.1).

Example:
    >>> from tumor_classifier import TumorClassifier
    >>> from tumor_classifier.app import predict_scan, serve
    >>> clf = TumorClassifier.from_pretrained("runs/default_model")      # doctest: +SKIP
    >>> verdict, label, overlay, tumor = predict_scan("scan.jpg", classifier=clf)  # doctest: +SKIP
    >>> serve(model="runs/default_model", port=7860)                     # doctest: +SKIP
"""

from __future__ import annotations

import os

# No environment switches here: the entry points (`tumor-classifier serve`, space/app.py)
# set GRADIO_ANALYTICS_ENABLED and HF_HUB_DISABLE_TELEMETRY before they import this, and
# the Blocks below are built with analytics_enabled=False whoever imports it.
import base64  # noqa: E402
import contextlib  # noqa: E402
import io  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import stat  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Literal, Sequence  # noqa: E402

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
from fastapi import Depends, FastAPI, File, HTTPException, Query, Request, UploadFile  # noqa: E402
from fastapi.exceptions import RequestValidationError  # noqa: E402
from fastapi.responses import HTMLResponse, JSONResponse  # noqa: E402
from gradio.components.label import LabelData  # noqa: E402
from PIL import Image  # noqa: E402
from pydantic import BaseModel, ConfigDict, Field  # noqa: E402

from .attributions import METHODS  # noqa: E402
from .classifier import Explanation, TumorClassifier  # noqa: E402
from .data import NO_TUMOR  # noqa: E402
from .decoding import ACCEPTED_FORMATS_TEXT, DECODED_FORMATS, MIN_IMAGE_SIDE, DecodedImage, decode, read_header  # noqa: E402
from .exceptions import InvalidArgumentError, InvalidImageError, TumorClassifierError  # noqa: E402
from .verdict import NOT_BRAIN_MRI  # noqa: E402
from .visualization import DEFAULT_COLORMAP, overlay  # noqa: E402
from .reports import DISCLAIMER  # noqa: E402
from .rest_docs import docs_html  # noqa: E402

#: Image formats the app accepts (PIL format names), and how the UI names them: the
#: package's one list (:data:`~tumor_classifier.decoding.DECODED_FORMATS`), the same
#: as the library's and the CLI's.
ACCEPTED_FORMATS = DECODED_FORMATS
ACCEPTED_TEXT = ACCEPTED_FORMATS_TEXT
#: Largest upload, in bytes (Gradio's upload route and the REST route).
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
#: Largest image side the app decodes. MRI slices are at most about 1024 px; the
#: package's own limit (8192) is for files, the app keeps memory per request bounded.
MAX_SCAN_SIDE = 4096
#: Images above this many pixels (larger than any MRI slice, about 1448 x 1448) are
#: decoded at most :data:`LARGE_DECODES_AT_ONCE` at a time, outside the model's lock.
LARGE_SCAN_PIXELS = 2 * 1024 * 1024
LARGE_DECODES_AT_ONCE = 2
_LARGE_DECODES = threading.BoundedSemaphore(LARGE_DECODES_AT_ONCE)
#: Heatmap methods as the UI names them.
METHOD_CHOICES = (
    ("Grad-CAM", "gradcam"),
    ("SmoothGrad (slower, finer)", "smoothgrad"),
    ("HiResCAM", "hirescam"),
    ("Integrated Gradients", "integrated_gradients"),
    ("Occlusion", "occlusion"),
)
DEFAULT_OPACITY = 0.45
#: Largest Gradio batch; concurrent requests beyond it wait for the next batch.
MAX_BATCH_SIZE = 8
#: One image per class, shipped in the package so `tumor-classifier serve` has them.
EXAMPLES_DIR = Path(__file__).parent / "examples"
#: Label headline of a request that could not be analysed (see :func:`predict_scans`).
INVALID_HEADLINE = "Invalid image"
NOTICE = (
    "**Research demo, not for diagnosis.** " + DISCLAIMER + " A heatmap shows what the model "
    "looked at, not where a tumor is."
)


class UploadTooLargeError(InvalidImageError):
    """An upload above the byte limit (HTTP 413)."""


class UnsupportedImageTypeError(InvalidImageError):
    """A readable file that is not one of :data:`ACCEPTED_FORMATS` (HTTP 415)."""


# -- reading uploads -------------------------------------------------------------------
def _megabytes(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MB"


def check_scan(source: Any, *, name: str | None = None, max_bytes: int = MAX_UPLOAD_BYTES) -> Any:
    """Checks one upload and returns what to hand to the classifier.

    Paths and bytes are read and checked here, so that every bad upload gets one clear
    message: missing, empty, too large (bytes or pixels), not an image, not one of
    :data:`ACCEPTED_FORMATS`, or corrupt. A file is decoded here, once: the classifier
    and the MRI check take the decoded image as it is. Decoded inputs (PIL images, numpy
    arrays) are returned as they are; the classifier checks them.

    Args:
        source: A file path, raw bytes, a PIL image or a numpy array (H, W) / (H, W, C).
        name: How to call the file in messages (default: the path's file name).
        max_bytes: Largest accepted file size.

    Returns:
        The decoded :class:`~tumor_classifier.decoding.DecodedImage` for paths and bytes;
        ``source`` itself otherwise.

    Raises:
        InvalidImageError: With a message that says what is wrong and what to upload
            (:class:`UploadTooLargeError`, :class:`UnsupportedImageTypeError` for those two).
    """
    upload_hint = f"Upload a brain MRI slice as {ACCEPTED_TEXT}."
    if source is None:
        raise InvalidImageError(f"No image was given. {upload_hint}")
    if isinstance(source, DecodedImage):  # checked and decoded already (the REST route)
        return source
    if isinstance(source, (Image.Image, np.ndarray)):
        if isinstance(source, Image.Image):
            width, height = source.size
        else:
            height, width = (tuple(source.shape[:2]) + (0, 0))[:2]
        if max(width, height) > MAX_SCAN_SIDE:
            raise InvalidImageError(f"The image is {width}x{height} pixels; images up to {MAX_SCAN_SIDE} pixels a side are accepted.")
        return source
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        what = f"The file {name or path.name!r}"
        if not path.is_file():
            raise InvalidImageError(f"{what} was not found on the server. {upload_hint}")
        size = path.stat().st_size
        if size > max_bytes:
            raise UploadTooLargeError(f"{what} is {_megabytes(size)}; files up to {_megabytes(max_bytes)} are accepted.")
        data = path.read_bytes()
    elif isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        what = f"The file {name!r}" if name else "The upload"
        if len(data) > max_bytes:
            raise UploadTooLargeError(f"{what} is {_megabytes(len(data))}; files up to {_megabytes(max_bytes)} are accepted.")
    else:
        raise InvalidImageError(f"Cannot read a {type(source).__name__} as an image. {upload_hint}")
    if not data:
        raise InvalidImageError(f"{what} is empty (0 bytes). {upload_hint}")
    try:
        # The header only, by the decoder's own reader: no pixel is decoded before the
        # size is checked, and nothing process-wide (PIL's bomb limit, warning filters)
        # is touched, so requests on several threads cannot disturb each other.
        image_format, (width, height) = read_header(data)
    except InvalidImageError:
        raise UnsupportedImageTypeError(f"{what} is not an image this app can read. {upload_hint}") from None
    if image_format not in ACCEPTED_FORMATS:
        raise UnsupportedImageTypeError(f"{what} is a {image_format} image; this app accepts {ACCEPTED_TEXT}. {upload_hint}")
    if max(width, height) > MAX_SCAN_SIDE:
        raise InvalidImageError(f"{what} is {width}x{height} pixels; images up to {MAX_SCAN_SIDE} pixels a side are accepted.")
    if min(width, height) < MIN_IMAGE_SIDE:
        raise InvalidImageError(f"{what} is {width}x{height} pixels; at least {MIN_IMAGE_SIDE} pixels a side are needed.")
    # Large images decode a few at a time: each holds a full-resolution frame while it is
    # reduced, so the number in flight bounds the app's memory (slices of MRI size never wait).
    slot = _LARGE_DECODES if width * height > LARGE_SCAN_PIXELS else contextlib.nullcontext()
    try:
        with slot:
            return decode(data)  # decode fully, once: truncated and corrupt files fail here, not in a batch
    except InvalidImageError:
        raise InvalidImageError(f"{what} looks like a {image_format} image but is corrupt or truncated, so it cannot be decoded. {upload_hint}") from None


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
            return f"{p:.1%} (uncertain prediction)"
        return f"{p:.1%}"

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
def _ui_error(error: Exception) -> gr.Error:
    return gr.Error(str(error), print_exception=False)


def _analyze_each(images, methods, opacities, classifier) -> tuple[list[ScanReport | TumorClassifierError], list[Any]]:
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


def _ui_outputs(result: ScanReport | TumorClassifierError) -> tuple[str, dict[str, Any], Image.Image | None, str]:
    if isinstance(result, ScanReport):
        return result.summary, result.label_value, result.explanation.overlay, result.tumor_probability_text
    return f"### Cannot analyze this image\n{result}", {"label": INVALID_HEADLINE, "confidences": []}, None, "n/a"


def predict_scans(
    images: Sequence[Any],
    methods: Sequence[str],
    opacities: Sequence[float],
    *,
    classifier: TumorClassifier,
) -> tuple[list[str], list[dict[str, Any]], list[Image.Image | None], list[str]]:
    """The batched UI function (Gradio ``batch=True``): lists in, one list per output.

    A batch holds the requests of several users. A bad upload alone in its batch (the
    usual case) raises ``gr.Error``; in a batch with others it does not fail them: its
    outputs say ``"Cannot analyze this image"`` with the reason, its label headline is
    ``"Invalid image"`` and its overlay ``None``. (Gradio 6.31's per-request
    ``validator`` does not work for batched events with several inputs.)

    Returns:
        ``(verdicts, labels, overlays, tumor_probabilities)``, each a list with one entry
        per image, as :func:`predict_scan` returns them.

    Raises:
        gr.Error: The only request of the batch is bad; the message says why.
    """
    results, _ = _analyze_each(images, methods, opacities, classifier)
    if len(results) == 1 and not isinstance(results[0], ScanReport):
        raise _ui_error(results[0])
    return tuple(list(column) for column in zip(*map(_ui_outputs, results)))  # type: ignore[return-value]


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
    return tuple(output[0] for output in outputs)  # type: ignore[return-value]


# -- Gradio ----------------------------------------------------------------------------
#: Said for every file path the app will not read: missing, outside Gradio's upload
#: folder, a link, a directory, a device. One message, so an answer never tells which
#: files exist on the server.
UPLOAD_NOT_FOUND = "The uploaded file could not be found on the server; upload the image again."


def _uploaded_file(path: Any) -> Path:
    """``path`` if it is a regular file that Gradio received, inside its upload folder.

    A client writes the ``path`` of a ``FileData`` payload itself, so it is checked here
    and not trusted: resolved (``..``, links) and required to lie in Gradio's upload
    folder or :data:`EXAMPLES_DIR`, and to be a regular file, checked without opening it
    (a FIFO or a device would block or never end).

    Raises:
        InvalidImageError: :data:`UPLOAD_NOT_FOUND`, whatever the reason.
    """
    from gradio.utils import get_upload_folder

    try:
        resolved = Path(os.path.realpath(os.fspath(path)))
        roots = [Path(os.path.realpath(get_upload_folder())), Path(os.path.realpath(EXAMPLES_DIR))]
        inside = any(resolved != root and resolved.is_relative_to(root) for root in roots)
        regular = inside and stat.S_ISREG(os.stat(resolved).st_mode)
    except (OSError, TypeError, ValueError):
        regular = False
    if not regular:
        raise InvalidImageError(UPLOAD_NOT_FOUND)
    return resolved


def _upload_source(payload: Any) -> Any:
    """The file behind a raw ``gr.Image`` payload (the event runs with ``preprocess=False``).

    ``gr.Image`` would open every upload with PIL before the event runs, so a corrupt or
    huge file would fail there with a generic error; the app takes the uploaded file's
    path, checked by :func:`_uploaded_file`, and lets :func:`check_scan` say what is
    wrong with its content. A pasted image may arrive as a data URL.
    """
    if isinstance(payload, (str, os.PathLike)):
        return _uploaded_file(payload)
    if isinstance(payload, dict):
        if payload.get("path"):
            return _uploaded_file(payload["path"])
        url = payload.get("url") or ""
        if url.startswith("data:") and "," in url:
            try:
                return base64.b64decode(url.split(",", 1)[1], validate=False)
            except ValueError:
                raise InvalidImageError("The pasted image could not be decoded.") from None
        return None
    return payload


def _verdict_label(**kwargs: Any) -> gr.Label:
    """A ``gr.Label`` that shows the headline it is given (``"Uncertain"`` ...).

    A plain ``gr.Label`` always heads with the most probable class, which would show an
    uncertain prediction as a confident tumor type. Values in Gradio's own label format,
    ``{"label": ..., "confidences": [...]}``, are taken as they are; anything else is
    handled as usual. (Wrapped on the instance rather than subclassed: Gradio writes a
    ``.pyi`` file next to the module of every component subclass.)
    """
    label = gr.Label(**kwargs)
    standard = label.postprocess

    def postprocess(value):
        if isinstance(value, dict) and isinstance(value.get("confidences"), list):
            return LabelData(**value)
        return standard(value)

    label.postprocess = postprocess
    return label


def _on_new_scan(payload: Any):
    """Clears the previous results when a file arrives, and says at once if it cannot be used.

    A bad file is said once, in the verdict panel (no toast, which Analyze would repeat);
    the upload box is emptied (its preview would be a broken image) and Analyze is off
    until a usable scan arrives.

    Returns:
        ``(verdict, label, heatmap, tumor probability, state, scan, Analyze button)``.
    """
    message, usable, scan = "", payload is not None, gr.skip()
    if usable:
        try:
            check_scan(_upload_source(payload))
        except TumorClassifierError as error:
            message, usable, scan = f"### Cannot analyze this image\n{error}", False, None
    return message, None, None, "", None, scan, gr.Button(interactive=usable)


def _reblend(state: dict[str, Any] | None, opacity: float):
    """Re-draws the heatmap at a new opacity without running the model again."""
    if not state:
        return gr.skip()
    return overlay(state["scan"], state["attribution"], alpha=float(opacity))


def build_demo(classifier: TumorClassifier, *, batch: bool = True, max_batch_size: int = MAX_BATCH_SIZE) -> gr.Blocks:
    """The Gradio UI around ``classifier``.

    The named endpoint ``predict`` (``gradio_client``: ``client.predict(handle_file(path),
    "gradcam", 0.45, api_name="/predict")``) returns ``(verdict Markdown, label dict,
    overlay image path, tumor probability text)``. Concurrent requests are batched
    (``batch=True``, at most ``max_batch_size``); a bad upload fails alone (see
    :func:`predict_scans`). In the page, an upload is checked as soon as it arrives: a bad
    file is reported once, in the verdict panel, and Analyze stays off until a usable scan
    is uploaded (:func:`_on_new_scan`).

    Args:
        classifier: A fitted :class:`TumorClassifier`.
        batch: Batch concurrent requests (off only to measure what batching brings).
        max_batch_size: Largest batch.

    Returns:
        The ``gr.Blocks``; serve it with :func:`build_app` (or ``demo.launch()``).
    """
    if max_batch_size < 1:
        raise InvalidArgumentError(f"max_batch_size must be at least 1; got {max_batch_size}.")

    def run(scan, method, opacity):
        """Classifies one brain MRI slice and draws a heatmap of what the model looked at; not for diagnosis."""
        # Batched: each argument is a list, one entry per request. The parameters are named
        # for one call, as the API page and gradio_client show them (docstring: its text).
        scans, methods, opacities = scan, method, opacity
        try:
            images = [_upload_source(payload) for payload in scans]
        except TumorClassifierError as error:
            raise _ui_error(error) from None
        results, inputs = _analyze_each(images, methods, opacities, classifier)
        if len(results) == 1 and not isinstance(results[0], ScanReport):
            raise _ui_error(results[0])
        # The scan and its map stay with the session, so the opacity slider re-draws
        # the heatmap without running the model.
        states = [
            {"scan": checked.gray if isinstance(checked, DecodedImage) else decode(checked).gray, "attribution": r.explanation.attribution}
            if isinstance(r, ScanReport)
            else None
            for checked, r in zip(inputs, results)
        ]
        columns = [list(column) for column in zip(*map(_ui_outputs, results))]
        return (*columns, states)

    def run_one(scan, method, opacity):
        """Classifies one brain MRI slice and draws a heatmap of what the model looked at; not for diagnosis."""
        return tuple(output[0] for output in run([scan], [method], [opacity]))

    def rerun_with_method(image, method, opacity, state):
        # A new method re-draws the heatmap of the scan on show; before any result
        # (nothing analysed yet, or a new upload) there is nothing to re-draw.
        if not state or image is None:
            return tuple(gr.skip() for _ in range(5))
        return run_one(image, method, opacity)

    fn = run if batch else run_one

    # preprocess=False: the upload reaches `run` undecoded (see _upload_source).
    event_options = dict(fn=fn, batch=batch, max_batch_size=max_batch_size, concurrency_id="model", preprocess=False)

    with gr.Blocks(title="Brain tumor MRI classifier", analytics_enabled=False, delete_cache=(1800, 3600)) as demo:
        gr.Markdown("# Brain tumor MRI classifier\nGlioma, meningioma, pituitary tumor or no tumor, from one MRI slice, with a heatmap of what the model looked at.")
        gr.Markdown(NOTICE, elem_id="notice")
        with gr.Row():
            with gr.Column():
                image = gr.Image(
                    label=f"MRI slice ({ACCEPTED_TEXT})",
                    type="filepath",
                    sources=["upload", "clipboard"],
                    elem_id="scan",
                    height=320,
                )
                method = gr.Radio(list(METHOD_CHOICES), value=_default_method(classifier), label="Heatmap method", elem_id="method")
                opacity = gr.Slider(0.0, 1.0, value=DEFAULT_OPACITY, step=0.05, label="Heatmap opacity", elem_id="opacity")
                # Off until a usable scan is uploaded (see _on_new_scan); an example turns it on.
                button = gr.Button("Analyze", variant="primary", elem_id="analyze", interactive=False)
                examples = gr.Examples(
                    [[str(path)] for path in example_paths()],
                    inputs=[image],
                    label="Examples, one per class",
                    example_labels=[path.stem for path in example_paths()],
                    cache_examples=False,
                    elem_id="examples",
                )
            with gr.Column():
                verdict = gr.Markdown(label="Verdict", elem_id="verdict")
                label = _verdict_label(label="Class probabilities", elem_id="probabilities")
                tumor = gr.Textbox(label="Tumor probability (any type)", interactive=False, elem_id="tumor-probability")
                heatmap = gr.Image(label="Heatmap on the scan", type="pil", format="png", interactive=False, elem_id="heatmap")
                gr.HTML(_legend_html(), elem_id="heatmap-legend")
        state = gr.State()
        outputs = [verdict, label, heatmap, tumor, state]
        button.click(inputs=[image, method, opacity], outputs=outputs, api_name="predict", **event_options)
        examples.load_input_event.then(lambda: gr.Button(interactive=True), outputs=button, api_visibility="private", show_progress="hidden")
        examples.load_input_event.then(inputs=[image, method, opacity], outputs=outputs, api_visibility="private", **event_options)
        checked = dict(outputs=[*outputs, image, button], api_visibility="private", show_progress="hidden")
        image.upload(_on_new_scan, inputs=image, preprocess=False, **checked)
        image.clear(lambda: _on_new_scan(None), **checked)
        opacity.change(_reblend, inputs=[state, opacity], outputs=heatmap, api_visibility="private", show_progress="hidden", trigger_mode="always_last")
        method.change(
            rerun_with_method,
            inputs=[image, method, opacity, state],
            outputs=outputs,
            api_visibility="private",
            concurrency_id="model",
            preprocess=False,
            trigger_mode="always_last",
        )
        gr.Markdown(f"Model: `{getattr(classifier, 'source_', 'in memory')}`; classes: {', '.join(map(str, classifier.classes_))}.")
    demo.queue(max_size=256)
    return demo


def _legend_html() -> str:
    """The heatmap's colour bar, drawn as :func:`overlay` draws evidence on a mid-grey scan."""
    import matplotlib

    cmap = matplotlib.colormaps[DEFAULT_COLORMAP]
    stops = []
    for value in (0.0, 0.25, 0.5, 0.75, 1.0):
        opacity = DEFAULT_OPACITY * value
        rgb = [round(255 * ((1 - opacity) * 0.5 + opacity * c)) for c in cmap(value)[:3]]
        stops.append(f"rgb({rgb[0]},{rgb[1]},{rgb[2]}) {value:.0%}")
    bar = f"background: linear-gradient(to right, {', '.join(stops)}); height: 14px; flex: 1; border: 1px solid #444;"
    return (
        '<div style="display: flex; align-items: center; gap: 8px; font-size: 0.9em;">'
        f'<span>no evidence</span><div role="img" aria-label="colour bar" style="{bar}"></div><span>strongest</span></div>'
        '<div style="font-size: 0.9em;">Where the model found evidence for the class it names; '
        "the scan shows through where it found none. Not a map of the tumour's extent.</div>"
    )


def _theme() -> gr.themes.Base:
    """Gradio's default theme, with bold text drawn from complete font files.

    Gradio 6.31 ships ``SourceSansPro-SemiBold.woff2`` (and IBM Plex Mono's) as a subset
    of a few dozen glyphs: of the Latin letters, only "A" and "B". Text at weight 600 (the
    title, buttons) drew those two from it and every other letter from a fallback font, so
    "Brain" and "Analyze" began with a lighter letter. Declaring weights 400 and 700 (full
    files, shipped too) makes the browser draw weight 600 from the 700 face.
    """
    return gr.themes.Default(
        font=[gr.themes.LocalFont("Source Sans Pro", weights=(400, 700)), "ui-sans-serif", "system-ui", "sans-serif"],
        font_mono=[gr.themes.LocalFont("IBM Plex Mono", weights=(400, 700)), "ui-monospace", "Consolas", "monospace"],
    )


def _default_method(classifier: TumorClassifier) -> str:
    method = getattr(classifier, "attribution_method_", "gradcam")
    return method if method in METHODS else "gradcam"


def example_paths() -> list[Path]:
    """The example slices shipped with the package, one per class, sorted by class."""
    return sorted(EXAMPLES_DIR.glob("*.jpg"))


# -- REST --------------------------------------------------------------------------------
class PredictionResponse(BaseModel):
    """JSON answer of ``POST /api/v1/predict``."""

    model_config = ConfigDict(populate_by_name=True)

    class_: str = Field(
        alias="class",
        description="What the library's predict gives: the most probable class, or 'not_brain_mri' when the image check flags the input.",
    )
    verdict: Literal["tumor", "no_tumor", "uncertain", "not_brain_mri"] = Field(
        description="What the UI says: a tumor (type in `class`), no tumor, uncertain (no type given), or not a brain MRI."
    )
    probabilities: dict[str, float] = Field(description="Class -> probability; sums to 1.")
    tumor_probability: float | None = Field(description="Probability of any tumor; null if the model has no 'notumor' class.")
    uncertain: bool = Field(description="The top probability is below the model's uncertainty threshold.")
    not_brain_mri: bool = Field(description="The learned image check says the input is not a brain MRI slice; then no tumor type is given.")
    mri_score: float | None = Field(None, description="The image check's score in [0, 1]; below its threshold the input is not a brain MRI.")
    quality_reasons: list[str] = Field(description="Why the input does not look like a brain MRI slice (empty if it does).")
    message: str = Field(description="The verdict in words (Markdown).")
    method: str = Field(description="Heatmap method used.")
    overlay_png_base64: str | None = Field(None, description="The heatmap on the scan as a base64 PNG, if `overlay=true` was asked.")


class ErrorResponse(BaseModel):
    """JSON body of a refused request."""

    detail: str = Field(description="What is wrong and what to send instead.")


def report_to_json(report: ScanReport, *, include_overlay: bool = False) -> dict[str, Any]:
    """The REST answer for one :class:`ScanReport` (keys of :class:`PredictionResponse`)."""
    e = report.explanation
    encoded = None
    if include_overlay:
        buffer = io.BytesIO()
        e.overlay.save(buffer, format="PNG")
        encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return PredictionResponse(
        class_=e.label,
        verdict=report.verdict,
        probabilities=e.probabilities,
        tumor_probability=None if math.isnan(e.tumor_probability) else e.tumor_probability,
        uncertain=e.uncertain,
        not_brain_mri=not e.verdict.brain_mri,
        mri_score=e.verdict.mri_score,
        quality_reasons=list(e.verdict.reasons),
        message=report.summary,
        method=e.method,
        overlay_png_base64=encoded,
    ).model_dump(by_alias=True)


#: Gradio routes whose rest of the path may be a URL the server would fetch.
_FETCHING_ROUTE = re.compile(r"/gradio_api/(?:file=|file/|proxy=)(?P<target>.*)$", re.IGNORECASE | re.DOTALL)


def _names_a_url(path: str) -> bool:
    """Whether a request path asks one of Gradio's file routes for an outside URL."""
    match = _FETCHING_ROUTE.search(path)
    if match is None:
        return False
    target = match["target"].strip().lower()
    return "://" in target or target.startswith(("http:", "https:", "//", "\\\\"))


class _Guard:
    """ASGI middleware: upload size limit for the REST route, no outside fetches.

    * ``/api/v1/predict``: a ``Content-Length`` above the limit is answered 413 before
      the body is read; a body without one is counted as it arrives and cut off.
    * Gradio's ``/gradio_api/file=<url>`` (and the older ``/gradio_api/file/<url>``, and
      ``/gradio_api/proxy=<url>``) make the server fetch that URL; the app serves its own
      files only, so such requests get 403.
    """

    def __init__(self, app, *, path: str, max_bytes: int):
        self.app = app
        self.path = path
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        if _names_a_url(path):
            return await JSONResponse({"detail": "This app serves only its own files."}, status_code=403)(scope, receive, send)
        if path.rstrip("/") != self.path:
            return await self.app(scope, receive, send)
        # Multipart framing adds a few hundred bytes around the file.
        limit = self.max_bytes + 64 * 1024
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            return await self._too_large(scope, receive, send)
        received = 0
        started = exceeded = False

        async def counted_receive():
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    raise _BodyTooLarge
            return message

        async def tracked_send(message):
            nonlocal started
            if exceeded:  # the form parser turned the cut-off into its own 400: say 413
                if message["type"] == "http.response.start" and not started:
                    started = True
                    await self._too_large(scope, receive, send)
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except _BodyTooLarge:
            if not started:
                await self._too_large(scope, receive, send)

    async def _too_large(self, scope, receive, send):
        detail = f"The upload is larger than {_megabytes(self.max_bytes)}; send a single MRI slice ({ACCEPTED_TEXT})."
        # The rest of the body is never read, so the connection cannot carry another
        # request: say so, or a keep-alive client sends its next request into a reset.
        await JSONResponse({"detail": detail}, status_code=413, headers={"Connection": "close"})(scope, receive, send)


class _BodyTooLarge(Exception):
    pass


def _validation_message(error: RequestValidationError) -> str:
    """FastAPI's validation errors as one sentence: which parameter, what was wrong, what is accepted."""
    parts = []
    for item in error.errors():
        where = ".".join(str(part) for part in item.get("loc", ()) if part not in ("body", "query"))
        message = str(item.get("msg", "invalid"))
        if item.get("type") == "missing" and where == "file":
            message = f"no image: send it as the multipart field `file` ({ACCEPTED_TEXT})"
        elif item.get("type") == "literal_error":
            message = f"got {item.get('input')!r}; accepted: {', '.join(('auto', *METHODS))}"
        parts.append(f"{where or 'request'}: {message}")
    return "Bad request: " + "; ".join(parts) + "."


async def _one_file_per_request(request: Request) -> None:
    """Refuses a request with several ``file`` fields (FastAPI would silently keep one).

    One slice per request keeps one answer per request; a client sends several slices
    as several requests (they are batched on the server all the same).
    """
    files = (await request.form()).getlist("file")  # the form FastAPI parsed already (cached)
    if len(files) > 1:
        raise HTTPException(400, f"Got {len(files)} `file` fields; send one slice per request ({ACCEPTED_TEXT}), and one request per slice.")


def build_app(
    classifier: TumorClassifier,
    *,
    batch: bool = True,
    max_batch_size: int = MAX_BATCH_SIZE,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
) -> FastAPI:
    """The served app: the REST route and the Gradio UI mounted at ``/``, one process.

    Gradio may serve only its own upload and cache folders and :data:`EXAMPLES_DIR`;
    uploads are limited to ``max_upload_bytes``.

    Args:
        classifier: A fitted :class:`TumorClassifier`.
        batch: Batch concurrent Gradio requests (see :func:`build_demo`).
        max_batch_size: Largest Gradio batch.
        max_upload_bytes: Largest upload, for Gradio and for the REST route.

    Returns:
        A FastAPI app; run it with uvicorn (:func:`serve`, :func:`start_in_background`).

    Example:
        >>> import uvicorn
        >>> uvicorn.run(build_app(clf), host="127.0.0.1", port=7860)  # doctest: +SKIP
    """
    from . import __version__

    api = FastAPI(
        title="tumor-classifier",
        version=__version__,
        description=(
            "Brain-tumor MRI slice classifier (glioma, meningioma, pituitary tumor, no tumor) "
            "with attribution heatmaps. The web UI is at `/`. " + DISCLAIMER
        ),
        docs_url=None,  # Swagger UI and ReDoc load their scripts from a CDN: /docs is rest_docs' page
        redoc_url=None,
    )

    @api.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    def docs() -> HTMLResponse:
        return HTMLResponse(docs_html(api.openapi()))

    @api.post(
        "/api/v1/predict",
        response_model=PredictionResponse,
        responses={
            400: {"model": ErrorResponse, "description": "Empty, corrupt or oversized (pixels) image, more than one `file` field, or a bad option."},
            413: {"model": ErrorResponse, "description": f"Upload larger than {_megabytes(max_upload_bytes)}."},
            415: {"model": ErrorResponse, "description": f"Not an image, or not {ACCEPTED_TEXT}."},
        },
        summary="Classify one brain MRI slice",
        tags=["prediction"],
        dependencies=[Depends(_one_file_per_request)],
    )
    def predict_endpoint(
        file: UploadFile = File(description=f"The slice, as {ACCEPTED_TEXT}, up to {_megabytes(max_upload_bytes)}; one per request."),
        method: Literal[("auto", *METHODS)] = Query(  # type: ignore[valid-type]
            "auto", description="Heatmap method; auto picks the one chosen for the model's backbone (Grad-CAM for the shipped EfficientNet-Lite)."
        ),
        opacity: float = Query(DEFAULT_OPACITY, ge=0.0, le=1.0, description="Largest heatmap opacity on the scan."),
        overlay: bool = Query(False, description="Also return the heatmap on the scan as a base64 PNG."),
    ) -> dict[str, Any]:
        """Classifies the uploaded slice and says whether it looks like a brain MRI at all.

        Not for diagnosis.
        """
        data = file.file.read(max_upload_bytes + 1)
        try:
            source = check_scan(data, name=file.filename or None, max_bytes=max_upload_bytes)
            report = analyze_scans([source], [method], [opacity], classifier=classifier)[0]
        except UploadTooLargeError as error:
            raise HTTPException(413, str(error)) from None
        except UnsupportedImageTypeError as error:
            raise HTTPException(415, str(error)) from None
        except TumorClassifierError as error:
            raise HTTPException(400, str(error)) from None
        return report_to_json(report, include_overlay=overlay)

    @api.exception_handler(RequestValidationError)
    async def bad_request(_request: Any, error: RequestValidationError) -> JSONResponse:
        # FastAPI answers 422 with a pydantic list; the documented answer is 400 with a sentence.
        return JSONResponse({"detail": _validation_message(error)}, status_code=400)

    @api.api_route("/api/v1/predict", methods=["GET", "PUT", "PATCH", "DELETE"], include_in_schema=False)
    def wrong_method() -> JSONResponse:
        # Without this route the Gradio app mounted at "/" would answer 404.
        return JSONResponse({"detail": "Send the slice with POST (multipart field `file`)."}, status_code=405, headers={"Allow": "POST"})

    api.add_middleware(_Guard, path="/api/v1/predict", max_bytes=max_upload_bytes)
    demo = build_demo(classifier, batch=batch, max_batch_size=max_batch_size)
    app = gr.mount_gradio_app(
        api,
        demo,
        path="/",
        theme=_theme(),
        allowed_paths=[str(EXAMPLES_DIR)],
        max_file_size=max_upload_bytes,
        footer_links=["api", "settings"],
        run_history=False,
        ssr_mode=False,
        mcp_server=False,
        show_error=True,
    )
    # Gradio checks that a request's files lie in its upload folder only once the Blocks
    # "has launched", which mount_gradio_app never marks (launch() does): without this,
    # a request naming any server path has that file copied into Gradio's cache before
    # the event runs. _uploaded_file checks again inside the event.
    demo.has_launched = True
    return app


# -- serving -----------------------------------------------------------------------------
def serve(
    model: TumorClassifier | str | os.PathLike | None = None,
    host: str = "127.0.0.1",
    port: int = 7860,
    *,
    batch: bool = True,
    max_batch_size: int = MAX_BATCH_SIZE,
    backend: str = "torch",
) -> None:
    """Serves the UI and the REST route until interrupted (``tumor-classifier serve``).

    Args:
        model: A fitted classifier, a model folder or Hub id; ``None`` for the shipped model.
        host: Interface to listen on; the default keeps the app on this machine.
        port: TCP port.
        batch: Batch concurrent Gradio requests.
        max_batch_size: Largest Gradio batch.
        backend: ``"torch"`` or ``"onnx"`` for a model loaded here (see :func:`load_classifier`).

    Raises:
        ModelLoadError: The model cannot be loaded.
        MissingDependencyError: ``backend="onnx"`` without onnxruntime.
    """
    import uvicorn

    classifier = load_classifier(model, backend=backend)
    app = build_app(classifier, batch=batch, max_batch_size=max_batch_size)
    print(f"tumor-classifier app on http://{host}:{port}/  (REST: POST /api/v1/predict, docs: /docs; "
          f"{getattr(classifier, 'backend_', 'torch')} backend, heatmaps in torch)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")


class BackgroundServer:
    """A uvicorn server on a thread, for tests, benchmarks and notebooks.

    Attributes:
        url: ``http://host:port/`` of the running app.
    """

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, *, timeout: float = 60.0):
        import uvicorn

        # Gradio's event streams stay open while a client lives; do not wait long for them.
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on", timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="tumor-classifier-app", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise TumorClassifierError(f"The app did not start on {host}:{port} within {timeout:.0f} s.")
            time.sleep(0.05)
        bound = self._server.servers[0].sockets[0].getsockname()
        self.url = f"http://{host}:{bound[1]}/"

    def stop(self, timeout: float = 10.0) -> None:
        """Asks the server to exit and waits for its thread."""
        self._server.should_exit = True
        self._thread.join(timeout)

    def __enter__(self) -> "BackgroundServer":
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def start_in_background(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> BackgroundServer:
    """Starts ``app`` on a thread (``port=0``: a free port) and returns once it answers.

    Example:
        >>> with start_in_background(build_app(clf)) as server:   # doctest: +SKIP
        ...     print(server.url)
    """
    return BackgroundServer(app, host, port)
