"""The Gradio UI: the page, its events, the heatmap legend, the theme and the examples.

The events call the functions of :mod:`.analysis`; uploads reach them undecoded and are
checked by :mod:`.uploads`.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import gradio as gr
from gradio.components.label import LabelData

from ..classifier import TumorClassifier
from ..decoding import DecodedImage
from ..exceptions import InvalidArgumentError, TumorClassifierError
from ..reports import DISCLAIMER
from ..visualization import DEFAULT_COLORMAP, overlay
from .analysis import DEFAULT_OPACITY, METHOD_CHOICES, default_method, predict_scans
from .uploads import ACCEPTED_TEXT, EXAMPLES_DIR, browser_preview, check_scan, upload_source
from .volume_analysis import empty_slider, predict_volume_for_page, predict_volume_upload, show_slice, shown_slice
from .volume_uploads import ACCEPTED_VOLUME_TEXT, is_volume_name

#: Largest Gradio batch; concurrent requests beyond it wait for the next batch.
MAX_BATCH_SIZE = 8
NOTICE = (
    "**Research demo, not for diagnosis.** " + DISCLAIMER + " A heatmap shows what the model "
    "looked at, not where a tumor is."
)
#: What the API page says of the two named endpoints.
SCAN_API_DESCRIPTION = "Classifies one brain MRI slice and draws a heatmap of what the model looked at; not for diagnosis."
VOLUME_API_DESCRIPTION = (
    "Classifies every slice of a brain MRI volume (NIfTI, one DICOM file or a zip of one DICOM series) and gives "
    "one verdict, the key slice's heatmap and the tumor probability along the slices; not for diagnosis."
)


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
    until a usable scan arrives. A usable file browsers cannot show (TIFF) is replaced in
    the box by a PNG of the decoded slice (:func:`~.uploads.browser_preview`), which
    Analyze then reads.

    Returns:
        ``(verdict, label, heatmap, tumor probability, state, scan, Analyze button)``.
    """
    message, usable, scan = "", payload is not None, gr.skip()
    if usable:
        try:
            source = upload_source(payload)
            decoded = check_scan(source)
        except TumorClassifierError as error:
            message, usable, scan = f"### Cannot analyze this image\n{error}", False, None
        else:
            preview = browser_preview(source, decoded) if isinstance(source, Path) and isinstance(decoded, DecodedImage) else None
            scan = gr.skip() if preview is None else str(preview)
    return message, None, None, "", None, scan, gr.Button(interactive=usable)


def _on_new_volume(payload: Any):
    """Clears the previous volume's results when a file arrives; Analyze is on for a file named like a volume.

    The volume itself is read by Analyze (once); a file of another kind is said at once.

    Returns:
        ``(verdict, label, tumor probability, slider, heatmap, caption, plot, state, Analyze button)``.
    """
    message, usable = "", payload is not None
    name = (payload.get("orig_name") or payload.get("path")) if isinstance(payload, dict) else payload
    if usable and not is_volume_name(name):
        message, usable = f"### Cannot analyze this file\nThis tab reads volumes: {ACCEPTED_VOLUME_TEXT}.", False
    return message, None, "", empty_slider(), None, "", None, None, gr.Button(interactive=usable)


def _show_slice_and_say_it(report: Any, index: Any, method: Any, *, classifier: TumorClassifier):
    """:func:`~.volume_analysis.show_slice`, and the slice it shows for the slider (a plain number:
    a component update would rebuild the session's slider from its constructor, range 0-1)."""
    heatmap, caption, plot = show_slice(report, index, method, classifier=classifier)
    shown = shown_slice(report, index)
    return heatmap, caption, plot, 0 if shown is None else shown


def build_volume_tab(classifier: TumorClassifier, default_method: str) -> None:
    """The volume tab: upload, method, verdict, slice slider, the slice's heatmap and the probability plot.

    Its events serve :func:`~.volume_analysis.predict_volume_for_page` (Analyze: a bad
    upload is said in the verdict panel), :func:`~.volume_analysis.predict_volume_upload`
    (the named endpoint ``predict_volume``, on a hidden button: API clients get ``gr.Error``)
    and :func:`~.volume_analysis.show_slice` themselves, bound to the classifier (and to
    Gradio's upload folder).
    """
    with gr.Row():
        with gr.Column():
            # No file_types: Gradio's own check of them answered a file of another kind with a
            # toast and an "Error" badge stuck in the box; _on_new_volume says it instead.
            upload = gr.File(label=f"MRI volume: {ACCEPTED_VOLUME_TEXT}", elem_id="volume")
            method = gr.Radio(list(METHOD_CHOICES), value=default_method, label="Heatmap method", elem_id="volume-method")
            button = gr.Button("Analyze volume", variant="primary", elem_id="analyze-volume", interactive=False)
        with gr.Column():
            verdict = gr.Markdown(label="Verdict", elem_id="volume-verdict")
            label = _verdict_label(label="Class probabilities (mean over the slices the verdict rests on)", elem_id="volume-probabilities")
            tumor = gr.Textbox(label="Tumor probability of the volume", interactive=False, elem_id="volume-tumor-probability")
    slider = gr.Slider(minimum=0, maximum=1, value=0, step=1, interactive=False, label="Slice", elem_id="slice")
    with gr.Row():
        with gr.Column():
            heatmap = gr.Image(label="Heatmap on the slice", type="pil", format="png", interactive=False, height=360, elem_id="slice-heatmap")
            caption = gr.Markdown(elem_id="slice-caption")
            gr.HTML(_legend_html(), elem_id="slice-heatmap-legend")  # the slice tab's colour bar: the same overlay
        # No label: the figure has its title, which a label badge would cover.
        plot = gr.Plot(label="Tumor probability along the slices", show_label=False, format="png", elem_id="slice-plot")
    state = gr.State()
    outputs = [verdict, label, tumor, slider, heatmap, caption, plot, state]
    # preprocess=False: the upload reaches the functions as Gradio's payload (see upload_source).
    analysis = dict(inputs=[upload, method], outputs=outputs, concurrency_id="model", preprocess=False)
    button.click(functools.partial(predict_volume_for_page, classifier=classifier, uploads_only=True), api_visibility="private", **analysis)
    # The API's endpoint: the same function, raising gr.Error for a bad upload. Its button is
    # never shown, so a click in the page runs the analysis once.
    gr.Button(visible=False).click(
        functools.partial(predict_volume_upload, classifier=classifier, uploads_only=True),
        api_name="predict_volume",
        api_description=VOLUME_API_DESCRIPTION,
        **analysis,
    )
    viewer = functools.partial(_show_slice_and_say_it, classifier=classifier)
    # preprocess=False: a number typed beyond the slider's range reaches show_slice, which
    # clips it, and the slider is given the slice shown; Gradio's own range check would
    # answer with a toast and "Error" badges on the heatmap and the plot.
    shown = dict(
        outputs=[heatmap, caption, plot, slider], api_visibility="private", concurrency_id="model", trigger_mode="always_last", preprocess=False
    )
    slider.input(viewer, inputs=[state, slider, method], show_progress="minimal", **shown)
    method.change(viewer, inputs=[state, slider, method], **shown)
    reset = dict(outputs=[*outputs, button], api_visibility="private", show_progress="hidden")
    upload.upload(_on_new_volume, inputs=upload, preprocess=False, **reset)
    upload.clear(lambda: _on_new_volume(None), **reset)


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
    is uploaded (:func:`_on_new_scan`). The volume tab's named endpoint ``predict_volume``
    (``client.predict(handle_file("scan.nii.gz"), "gradcam", api_name="/predict_volume")``)
    is :func:`~.volume_analysis.predict_volume_upload` (see :func:`build_volume_tab`).

    Args:
        classifier: A fitted :class:`TumorClassifier`.
        batch: Batch concurrent requests (off only to measure what batching brings).
        max_batch_size: Largest batch.

    Returns:
        The ``gr.Blocks``; serve it with :func:`build_app` (or ``demo.launch()``).
    """
    if max_batch_size < 1:
        raise InvalidArgumentError(f"max_batch_size must be at least 1; got {max_batch_size}.")

    # The function Gradio serves is predict_scans itself, bound to the classifier and to
    # Gradio's upload folder: what the tests call is what the page runs.
    served = functools.partial(predict_scans, classifier=classifier, uploads_only=True)

    def run_one(scan, method, opacity):
        # Unbatched (batch=False): one request, the same function.
        return tuple(column[0] for column in served([scan], [method], [opacity]))

    def rerun_with_method(image, method, opacity, state):
        # A new method re-draws the heatmap of the scan on show; before any result
        # (nothing analysed yet, or a new upload) there is nothing to re-draw. Only the
        # heatmap and its state change (the verdict does not depend on the method), and
        # the label is never an output here: a skip sent to it makes Gradio rebuild the
        # label from its constructor for the session, without _verdict_label's wrapper,
        # and every later result of the page then fails to show.
        if not state or image is None:
            return gr.skip(), gr.skip()
        _, _, heatmap, _, new_state = run_one(image, method, opacity)
        return heatmap, new_state

    fn = served if batch else run_one

    # preprocess=False: the upload reaches predict_scans undecoded (see upload_source).
    event_options = dict(fn=fn, batch=batch, max_batch_size=max_batch_size, concurrency_id="model", preprocess=False)

    with gr.Blocks(title="Brain tumor MRI classifier", analytics_enabled=False, delete_cache=(1800, 3600)) as demo:
        gr.Markdown(
            "# Brain tumor MRI classifier\nGlioma, meningioma, pituitary tumor or no tumor, from one MRI slice or a whole "
            "volume (NIfTI or DICOM), with a heatmap of what the model looked at."
        )
        gr.Markdown(NOTICE, elem_id="notice")
        with gr.Tab("One slice", elem_id="slice-tab"):
            with gr.Row():
                with gr.Column():
                    image = gr.Image(
                        label=f"MRI slice ({ACCEPTED_TEXT}); volumes (NIfTI, DICOM) go in the Volume tab",
                        type="filepath",
                        sources=["upload", "clipboard"],
                        elem_id="scan",
                        height=320,
                    )
                    method = gr.Radio(list(METHOD_CHOICES), value=default_method(classifier), label="Heatmap method", elem_id="method")
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
                    legend = gr.HTML(_legend_html(), elem_id="heatmap-legend")
        with gr.Tab("Volume (NIfTI, DICOM)", elem_id="volume-tab"):
            build_volume_tab(classifier, default_method(classifier))
        state = gr.State()
        outputs = [verdict, label, heatmap, tumor, state]
        button.click(inputs=[image, method, opacity], outputs=outputs, api_name="predict", api_description=SCAN_API_DESCRIPTION, **event_options)
        examples.load_input_event.then(lambda: gr.Button(interactive=True), outputs=button, api_visibility="private", show_progress="hidden")
        examples.load_input_event.then(inputs=[image, method, opacity], outputs=outputs, api_visibility="private", **event_options)
        checked = dict(outputs=[*outputs, image, button], api_visibility="private", show_progress="hidden")
        image.upload(_on_new_scan, inputs=image, preprocess=False, **checked)
        image.clear(lambda: _on_new_scan(None), **checked)
        opacity.change(_reblend, inputs=[state, opacity], outputs=heatmap, api_visibility="private", show_progress="hidden", trigger_mode="always_last")
        opacity.change(_legend_html, inputs=opacity, outputs=legend, api_visibility="private", show_progress="hidden", trigger_mode="always_last")
        method.change(
            rerun_with_method,
            inputs=[image, method, opacity, state],
            outputs=[heatmap, state],
            api_visibility="private",
            concurrency_id="model",
            preprocess=False,
            trigger_mode="always_last",
        )
        gr.Markdown(f"Model: `{getattr(classifier, 'source_', 'in memory')}`; classes: {', '.join(map(str, classifier.classes_))}.")
    demo.queue(max_size=256)
    return demo


def _legend_html(opacity: float = DEFAULT_OPACITY) -> str:
    """The heatmap's colour bar, drawn as :func:`overlay` draws evidence on a mid-grey scan at
    ``opacity`` (the slice tab re-draws it when its opacity slider moves)."""
    import matplotlib

    cmap = matplotlib.colormaps[DEFAULT_COLORMAP]
    stops = []
    for value in (0.0, 0.25, 0.5, 0.75, 1.0):
        opacity_here = float(opacity) * value
        rgb = [round(255 * ((1 - opacity_here) * 0.5 + opacity_here * c)) for c in cmap(value)[:3]]
        stops.append(f"rgb({rgb[0]},{rgb[1]},{rgb[2]}) {value:.0%}")
    bar = f"background: linear-gradient(to right, {', '.join(stops)}); height: 14px; flex: 1; border: 1px solid #444;"
    return (
        '<div style="display: flex; align-items: center; gap: 8px; font-size: 0.9em;">'
        f'<span>no evidence</span><div role="img" aria-label="colour bar" style="{bar}"></div><span>strongest</span></div>'
        '<div style="font-size: 0.9em;">Where the model found evidence for the class it names (for an input '
        "that does not look like a brain MRI, for its top class); the scan shows through where it found none, or "
        "(for the two smoothed maps, Smooth CAM and SmoothGrad) no more than its usual level in this head. "
        "Not a map of the tumor's extent.</div>"
    )


def theme() -> gr.themes.Base:
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


def example_paths() -> list[Path]:
    """The example slices shipped with the package, one per class, sorted by class."""
    return sorted(EXAMPLES_DIR.glob("*.jpg"))
