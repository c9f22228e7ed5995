"""The REST API: ``POST /api/v1/predict`` (a slice), ``POST /api/v1/predict_volume``, JSON models, guard, ``/docs``.

:func:`add_rest_routes` puts the routes, their error answers and the upload guard on a
FastAPI app; the slice route runs :func:`~.analysis.analyze_scans` and the volume route
:func:`~.volume_analysis.analyze_volume`, as the UI does. A volume has its own route and
answer (per-slice probabilities, key slice, runs) rather than a second shape of the slice
answer: each route has one response model, and the same upload rules (multipart ``file``,
one per request, the byte limit, 400 / 413 / 415).
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
from .analysis import DEFAULT_OPACITY, ScanReport, analyze_scans, default_method
from .rest_docs import docs_html
from .uploads import ACCEPTED_TEXT, UnsupportedImageTypeError, UploadTooLargeError, check_scan, megabytes
from .volume_analysis import VolumeReport, analyze_volume
from .volume_uploads import ACCEPTED_VOLUME_TEXT

#: Path of the REST route for one slice.
PREDICT_PATH = "/api/v1/predict"
#: Path of the REST route for one volume.
PREDICT_VOLUME_PATH = "/api/v1/predict_volume"


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


class VolumePredictionResponse(BaseModel):
    """JSON answer of ``POST /api/v1/predict_volume``: the library's ``VolumePrediction``."""

    label: str | None = Field(description="'notumor' or the tumor type; null when the volume does not look like a brain MRI.")
    verdict: Literal["tumor", "no_tumor", "not_brain_mri"] = Field(description="What the UI says of the volume.")
    tumor: bool | None = Field(
        description="A run of `min_run` consecutive slices reached the threshold; null when the volume does not look like a brain MRI."
    )
    tumor_probability: float = Field(description="Mean tumor probability over the slices of the qualifying runs (else the highest mean over `min_run` consecutive slices).")
    probabilities: dict[str, float] = Field(description="Class -> mean probability over the slices the verdict rests on.")
    not_brain_mri: bool = Field(description="Most checked slices do not look like brain MRI; then no tumor type is given.")
    mri_reasons: list[str] = Field(description="Why the volume does not look like a brain MRI (empty if it does).")
    slices: int = Field(description="Slices in the volume, in the plane read (axial).")
    classified_slices: int = Field(description="Slices inside the head, the ones classified.")
    plane: str | None = Field(description="Plane of the slices; null when the file had no geometry.")
    key_slice: int = Field(description="Index of the key slice (highest tumor probability in the longest run, or the most suspicious slice).")
    runs: list[tuple[int, int]] = Field(description="(first, last) slice indices of the qualifying runs.")
    min_run: int = Field(description="Consecutive slices a run needs.")
    threshold: float = Field(description="Tumor probability a slice needs to count towards a run.")
    slice_tumor_probability: list[float | None] = Field(description="Tumor probability per slice; null for slices not classified (not at brain level).")
    notes: list[str] = Field(description="What was assumed or chosen while reading (for people).")
    message: str = Field(description="The verdict in words (Markdown).")
    method: str = Field(description="Heatmap method of the key slice.")
    key_slice_overlay_png_base64: str | None = Field(None, description="The key slice's heatmap as a base64 PNG, if `overlay=true` was asked.")


def volume_report_to_json(report: VolumeReport, *, include_overlay: bool = False) -> dict[str, Any]:
    """The REST answer for one :class:`~.volume_analysis.VolumeReport` (keys of :class:`VolumePredictionResponse`)."""
    p = report.prediction
    explanation = p.explanation
    return VolumePredictionResponse(
        label=p.label,
        verdict=report.verdict,
        tumor=p.tumour_answer,
        tumor_probability=p.tumour_probability,
        probabilities=p.probabilities,
        not_brain_mri=not p.looks_like_mri,
        mri_reasons=p.mri_reasons,
        slices=len(p.classified),
        classified_slices=int(p.classified.sum()),
        plane=p.volume.plane,
        key_slice=p.key_slice,
        runs=p.runs,
        min_run=p.min_run,
        threshold=p.threshold,
        slice_tumor_probability=[None if math.isnan(v) else float(v) for v in p.slice_tumour_probability],
        notes=p.notes,
        message=report.summary,
        method=explanation.method if explanation is not None else report.method,
        key_slice_overlay_png_base64=_png_base64(explanation.overlay) if include_overlay and explanation is not None else None,
    ).model_dump()


def _png_base64(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class ErrorResponse(BaseModel):
    """JSON body of a refused request."""

    detail: str = Field(description="What is wrong and what to send instead.")


def report_to_json(report: ScanReport, *, include_overlay: bool = False) -> dict[str, Any]:
    """The REST answer for one :class:`ScanReport` (keys of :class:`PredictionResponse`)."""
    e = report.explanation
    encoded = _png_base64(e.overlay) if include_overlay else None
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

    * ``/api/v1/predict`` and ``/api/v1/predict_volume``: a ``Content-Length`` above the
      limit is answered 413 before the body is read; a body without one is counted as it
      arrives and cut off.
    * Gradio's ``/gradio_api/file=<url>`` (and the older ``/gradio_api/file/<url>``, and
      ``/gradio_api/proxy=<url>``) make the server fetch that URL; the app serves its own
      files only, so such requests get 403.
    """

    def __init__(self, app, *, paths: tuple[str, ...], max_bytes: int):
        self.app = app
        self.paths = paths
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        if _names_a_url(path):
            return await JSONResponse({"detail": "This app serves only its own files."}, status_code=403)(scope, receive, send)
        if path.rstrip("/") not in self.paths:
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
        detail = f"The upload is larger than {megabytes(self.max_bytes)}; send a single MRI slice ({ACCEPTED_TEXT}) or volume."
        # The rest of the body is never read, so the connection cannot carry another
        # request: say so, or a keep-alive client sends its next request into a reset.
        await JSONResponse({"detail": detail}, status_code=413, headers={"Connection": "close"})(scope, receive, send)


class _BodyTooLarge(Exception):
    pass


#: What each query parameter of the two routes accepts, for the 400 answers.
_ACCEPTED_OPTIONS = {
    "method": ", ".join(("auto", *METHODS)),
    "opacity": "a number from 0 to 1",
    "overlay": "true or false",
}


def _validation_message(error: RequestValidationError, path: str = PREDICT_PATH) -> str:
    """FastAPI's validation errors as one sentence: which parameter, what it got, what is accepted.

    ``path`` is the route asked, so that a request without a file is told the formats of
    that route (a slice's or a volume's). Pydantic's own words ("Input should be less
    than or equal to 1", "Expected UploadFile, received: <class 'str'>") say neither what
    was sent nor, for the file, what to send.
    """
    volume = path.rstrip("/") == PREDICT_VOLUME_PATH
    what, accepted = ("volume", ACCEPTED_VOLUME_TEXT) if volume else ("image", ACCEPTED_TEXT)
    parts = []
    for item in error.errors():
        where = ".".join(str(part) for part in item.get("loc", ()) if part not in ("body", "query"))
        if where == "file":  # missing, or sent as a text field rather than a file
            message = f"no {what} file: send it as the multipart field `file`, with a file name ({accepted})"
        elif where in _ACCEPTED_OPTIONS:
            message = f"got {str(item.get('input'))!r}; accepted: {_ACCEPTED_OPTIONS[where]}"
        else:
            message = str(item.get("msg", "invalid"))
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

    auto_method = default_method(classifier)  # what method="auto" runs

    @api.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    def docs() -> HTMLResponse:
        return HTMLResponse(docs_html(api.openapi()))

    @api.post(
        PREDICT_PATH,
        response_model=PredictionResponse,
        responses={
            400: {"model": ErrorResponse, "description": "Empty, corrupt or oversized (pixels) image, more than one `file` field, or a bad option."},
            413: {"model": ErrorResponse, "description": f"Upload larger than {megabytes(max_upload_bytes)}."},
            415: {"model": ErrorResponse, "description": f"Not an image, or not {ACCEPTED_TEXT}; a volume (NIfTI, DICOM) goes to {PREDICT_VOLUME_PATH}."},
        },
        summary="Classify one brain MRI slice",
        tags=["prediction"],
        dependencies=[Depends(_one_file_per_request)],
    )
    def predict_endpoint(
        file: UploadFile = File(description=f"The slice, as {ACCEPTED_TEXT}, up to {megabytes(max_upload_bytes)}; one per request."),
        method: Literal[("auto", *METHODS)] = Query(  # type: ignore[valid-type]
            "auto", description=f"Heatmap method; auto picks the method chosen for the backbone of this model, `{auto_method}`."
        ),
        opacity: float = Query(DEFAULT_OPACITY, ge=0.0, le=1.0, description="Largest heatmap opacity on the scan."),
        overlay: bool = Query(False, description="Also return the heatmap on the scan as a base64 PNG."),
    ) -> dict[str, Any]:
        """Classifies the uploaded slice and says whether it looks like a brain MRI at all.

        Not for diagnosis.
        """
        data = file.file.read(max_upload_bytes + 1)
        try:
            source = check_scan(
                data, name=file.filename or None, max_bytes=max_upload_bytes,
                volume_hint=f"Send volumes to POST {PREDICT_VOLUME_PATH} (multipart field `file`).",
            )
            report = analyze_scans([source], [method], [opacity], classifier=classifier)[0]
        except TumorClassifierError as error:
            raise _http_error(error) from None
        return report_to_json(report, include_overlay=overlay)

    @api.exception_handler(RequestValidationError)
    async def bad_request(request: Request, error: RequestValidationError) -> JSONResponse:
        # FastAPI answers 422 with a pydantic list; the documented answer is 400 with a sentence.
        return JSONResponse({"detail": _validation_message(error, request.url.path)}, status_code=400)

    def wrong_method() -> JSONResponse:
        # Without this route the Gradio app mounted at "/" would answer 404.
        return JSONResponse({"detail": "Send the file with POST (multipart field `file`)."}, status_code=405, headers={"Allow": "POST"})

    for path in (PREDICT_PATH, PREDICT_VOLUME_PATH):
        api.add_api_route(path, wrong_method, methods=["GET", "PUT", "PATCH", "DELETE"], include_in_schema=False)

    add_volume_route(api, classifier, max_upload_bytes=max_upload_bytes)
    api.add_middleware(_Guard, paths=(PREDICT_PATH, PREDICT_VOLUME_PATH), max_bytes=max_upload_bytes)


def _http_error(error: TumorClassifierError) -> HTTPException:
    """413 for an upload above the limit, 415 for a file of another kind, else 400."""
    status = 413 if isinstance(error, UploadTooLargeError) else 415 if isinstance(error, UnsupportedImageTypeError) else 400
    return HTTPException(status, str(error))


def add_volume_route(api: FastAPI, classifier: TumorClassifier, *, max_upload_bytes: int) -> None:
    """Adds ``POST /api/v1/predict_volume``: one volume in (multipart ``file``), :class:`VolumePredictionResponse` out."""

    @api.post(
        PREDICT_VOLUME_PATH,
        response_model=VolumePredictionResponse,
        responses={
            400: {"model": ErrorResponse, "description": "Empty, damaged or unreadable volume, a zip of several series, a non-MR DICOM, or a bad option."},
            413: {"model": ErrorResponse, "description": f"Upload larger than {megabytes(max_upload_bytes)}."},
            415: {"model": ErrorResponse, "description": f"Not {ACCEPTED_VOLUME_TEXT}."},
        },
        summary="Classify one brain MRI volume",
        tags=["prediction"],
        dependencies=[Depends(_one_file_per_request)],
    )
    def predict_volume_endpoint(
        file: UploadFile = File(description=f"The volume, as {ACCEPTED_VOLUME_TEXT}, up to {megabytes(max_upload_bytes)}; one per request."),
        method: Literal[("auto", *METHODS)] = Query("auto", description="Heatmap method of the key slice."),  # type: ignore[valid-type]
        overlay: bool = Query(False, description="Also return the key slice's heatmap as a base64 PNG."),
    ) -> dict[str, Any]:
        """Classifies every slice of the volume inside the head and gives one verdict (see the library's predict_volume).

        Not for diagnosis.
        """
        data = file.file.read(max_upload_bytes + 1)
        try:
            report = analyze_volume(data, method, classifier=classifier, name=file.filename or None, max_bytes=max_upload_bytes)
        except TumorClassifierError as error:
            raise _http_error(error) from None
        return volume_report_to_json(report, include_overlay=overlay)
