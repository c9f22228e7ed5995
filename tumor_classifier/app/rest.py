"""The REST API: ``POST /api/v1/predict``, its JSON models, its messages, its guard, ``/docs``.

:func:`add_rest_routes` puts the route, its error answers and the upload guard on a
FastAPI app; the route runs :func:`~.analysis.analyze_scans`, as the UI does.
"""

from __future__ import annotations

import base64
import io
import math
import re
from typing import Any, Literal

from fastapi import Depends, FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from ..attributions import METHODS
from ..classifier import TumorClassifier
from ..exceptions import TumorClassifierError
from .analysis import DEFAULT_OPACITY, ScanReport, analyze_scans
from .rest_docs import docs_html
from .uploads import ACCEPTED_TEXT, UnsupportedImageTypeError, UploadTooLargeError, check_scan, megabytes

#: Path of the REST route.
PREDICT_PATH = "/api/v1/predict"


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
        detail = f"The upload is larger than {megabytes(self.max_bytes)}; send a single MRI slice ({ACCEPTED_TEXT})."
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


def add_rest_routes(api: FastAPI, classifier: TumorClassifier, *, max_upload_bytes: int) -> None:
    """Adds ``POST /api/v1/predict``, its error answers, the upload guard and ``/docs`` to ``api``.

    Args:
        api: The FastAPI app (:func:`~.server.build_app` makes it).
        classifier: A fitted :class:`TumorClassifier`.
        max_upload_bytes: Largest upload; larger ones are answered 413.
    """

    @api.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    def docs() -> HTMLResponse:
        return HTMLResponse(docs_html(api.openapi()))

    @api.post(
        PREDICT_PATH,
        response_model=PredictionResponse,
        responses={
            400: {"model": ErrorResponse, "description": "Empty, corrupt or oversized (pixels) image, more than one `file` field, or a bad option."},
            413: {"model": ErrorResponse, "description": f"Upload larger than {megabytes(max_upload_bytes)}."},
            415: {"model": ErrorResponse, "description": f"Not an image, or not {ACCEPTED_TEXT}."},
        },
        summary="Classify one brain MRI slice",
        tags=["prediction"],
        dependencies=[Depends(_one_file_per_request)],
    )
    def predict_endpoint(
        file: UploadFile = File(description=f"The slice, as {ACCEPTED_TEXT}, up to {megabytes(max_upload_bytes)}; one per request."),
        method: Literal[("auto", *METHODS)] = Query(  # type: ignore[valid-type]
            "auto", description="Heatmap method; auto picks the one chosen for the model's backbone (SmoothGrad for the shipped EfficientNet-Lite)."
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

    @api.api_route(PREDICT_PATH, methods=["GET", "PUT", "PATCH", "DELETE"], include_in_schema=False)
    def wrong_method() -> JSONResponse:
        # Without this route the Gradio app mounted at "/" would answer 404.
        return JSONResponse({"detail": "Send the slice with POST (multipart field `file`)."}, status_code=405, headers={"Allow": "POST"})

    api.add_middleware(_Guard, path=PREDICT_PATH, max_bytes=max_upload_bytes)
