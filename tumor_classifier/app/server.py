"""Serving: the app in one process (``build_app``), uvicorn in the foreground or on a thread.

Layout of the served app (:func:`build_app`)::

    /                   the Gradio UI: a slice tab (verdict, probabilities, heatmap) and a
                        volume tab (NIfTI / DICOM / zipped series: verdict, slice slider,
                        the slice's heatmap, probability along the slices)
    /gradio_api/...     Gradio's own routes; the named endpoint ``/predict`` is batched,
                        ``/predict_volume`` is not (a volume's slices are batched inside)
    /api/v1/predict     plain REST: one slice in the multipart field ``file``, JSON out
    /api/v1/predict_volume  plain REST: one volume in the multipart field ``file``, JSON out
    /openapi.json       the REST schema
    /docs               the REST schema as a self-contained page (:mod:`.rest_docs`;
                        FastAPI's Swagger UI would load its scripts from a CDN)
"""

from __future__ import annotations

import os
import threading
import time

import gradio as gr
from fastapi import FastAPI

from ..classifier import TumorClassifier
from ..exceptions import TumorClassifierError
from ..reports import DISCLAIMER
from .analysis import load_classifier
from .rest import add_rest_routes
from .ui import MAX_BATCH_SIZE, build_demo, theme
from .uploads import EXAMPLES_DIR, MAX_UPLOAD_BYTES


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
    from .. import __version__

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

    add_rest_routes(api, classifier, max_upload_bytes=max_upload_bytes)
    demo = build_demo(classifier, batch=batch, max_batch_size=max_batch_size)
    app = gr.mount_gradio_app(
        api,
        demo,
        path="/",
        theme=theme(),
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
