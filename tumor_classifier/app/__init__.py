"""The web app: a Gradio UI and a REST endpoint around :class:`TumorClassifier`, one process.

One module per concern; imports flow one way (``uploads`` -> ``analysis`` -> ``ui``,
``rest`` -> ``server``), and this package re-exports their public names::

    uploads          receive_upload (every file upload's intake), check_scan, upload limits, Gradio's files
    volume_uploads   check_volume: NIfTI, DICOM, a zip of one series, read within limits
    analysis         ScanReport, analyze_scans, predict_scan(s), normalize_method, load_classifier
    volume_analysis  VolumeReport, analyze_volume, predict_volume_upload (the API), predict_volume_for_page, show_slice
    ui               build_demo: the Gradio page (a slice tab, a volume tab), legend, theme, examples
    rest             POST /api/v1/predict: its JSON models, messages, upload guard (rest_docs: /docs)
    server           build_app, serve, start_in_background

The routes of the served app (``build_app``) are listed in :mod:`.server`.

Layers, so tests and the REST route use the same code as the UI:

* :func:`check_scan` turns an upload into bytes the classifier can read, or raises
  :class:`~tumor_classifier.InvalidImageError` with a message for people;
* :func:`analyze_scans` runs the classifier and returns :class:`ScanReport`; the
  classifier runs its model passes one at a time (attribution hooks), while decoding,
  checks and overlays of concurrent requests run beside them;
* :func:`predict_scan` / :func:`predict_scans` are the pure UI functions (one image /
  a Gradio batch) and turn project errors into ``gr.Error``; the page serves
  :func:`predict_scans` itself, bound to the classifier;
* :func:`check_volume` reads a volume upload once, within limits;
  :func:`predict_volume_upload` (the volume tab's function, served as it is) runs
  ``TumorClassifier.predict_volume`` on it, and :func:`show_slice` draws a slice's heatmap
  from the slices read then;
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

from .analysis import (
    DEFAULT_OPACITY,
    INVALID_HEADLINE,
    METHOD_CHOICES,
    ScanReport,
    analyze_scans,
    load_classifier,
    normalize_method,
    predict_scan,
    predict_scans,
)
from .volume_analysis import VolumeReport, analyze_volume, predict_volume_for_page, predict_volume_upload, show_slice, slice_overlay
from .volume_uploads import (
    ACCEPTED_VOLUME_TEXT,
    MAX_VOLUME_VOXELS,
    MAX_ZIP_BYTES,
    MAX_ZIP_MEMBERS,
    VOLUME_SUFFIXES,
    UnsupportedVolumeTypeError,
    check_volume,
)
from .rest import ErrorResponse, PredictionResponse, report_to_json
from .server import BackgroundServer, build_app, serve, start_in_background
from .ui import MAX_BATCH_SIZE, NOTICE, build_demo, example_paths
from .uploads import (
    ACCEPTED_FORMATS,
    ACCEPTED_TEXT,
    EXAMPLES_DIR,
    LARGE_DECODES_AT_ONCE,
    LARGE_SCAN_PIXELS,
    MAX_SCAN_SIDE,
    MAX_UPLOAD_BYTES,
    UPLOAD_NOT_FOUND,
    UnsupportedImageTypeError,
    UploadTooLargeError,
    check_scan,
)

__all__ = [
    "ACCEPTED_FORMATS",
    "ACCEPTED_TEXT",
    "ACCEPTED_VOLUME_TEXT",
    "MAX_VOLUME_VOXELS",
    "MAX_ZIP_BYTES",
    "MAX_ZIP_MEMBERS",
    "UnsupportedVolumeTypeError",
    "VOLUME_SUFFIXES",
    "VolumeReport",
    "analyze_volume",
    "check_volume",
    "predict_volume_for_page",
    "predict_volume_upload",
    "show_slice",
    "slice_overlay",
    "BackgroundServer",
    "DEFAULT_OPACITY",
    "EXAMPLES_DIR",
    "ErrorResponse",
    "INVALID_HEADLINE",
    "LARGE_DECODES_AT_ONCE",
    "LARGE_SCAN_PIXELS",
    "MAX_BATCH_SIZE",
    "MAX_SCAN_SIDE",
    "MAX_UPLOAD_BYTES",
    "METHOD_CHOICES",
    "NOTICE",
    "PredictionResponse",
    "ScanReport",
    "UPLOAD_NOT_FOUND",
    "UnsupportedImageTypeError",
    "UploadTooLargeError",
    "analyze_scans",
    "build_app",
    "build_demo",
    "check_scan",
    "example_paths",
    "load_classifier",
    "normalize_method",
    "predict_scan",
    "predict_scans",
    "report_to_json",
    "serve",
    "start_in_background",
]
