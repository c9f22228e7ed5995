"""Reading uploads: size and format limits, the one check every upload passes, Gradio's files.

:func:`receive_upload` is the intake every file upload passes, slice or volume (given,
found, not empty, within the byte limit); :func:`check_scan` turns an upload (path, bytes,
PIL image, array) into what the classifier reads, or raises
:class:`~tumor_classifier.InvalidImageError` with a message for people;
:func:`upload_source` takes the file behind a raw Gradio payload, refusing any path
outside Gradio's upload folder and :data:`EXAMPLES_DIR`.
"""

from __future__ import annotations

import base64
import contextlib
import os
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..decoding import ACCEPTED_FORMATS_TEXT, DECODED_FORMATS, MIN_IMAGE_SIDE, DecodedImage, decode, read_header
from ..exceptions import InvalidImageError, InvalidVolumeError, MissingDependencyError

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
#: One image per class, shipped in the package so `tumor-classifier serve` has them.
EXAMPLES_DIR = Path(__file__).parent.parent / "examples"


class UploadTooLargeError(InvalidImageError):
    """An upload above the byte limit (HTTP 413)."""


class UnsupportedImageTypeError(InvalidImageError):
    """A readable file that is not one of :data:`ACCEPTED_FORMATS` (HTTP 415)."""


def megabytes(n: int) -> str:
    """A byte count for messages: ``"20.0 MB"``."""
    return f"{n / 1024 / 1024:.1f} MB"


@dataclass(frozen=True)
class Upload:
    """A file upload past the intake (:func:`receive_upload`): found, not empty, within the byte limit.

    Attributes:
        path: The file Gradio received, read where it is; ``None`` for raw bytes.
        data: The raw bytes (the REST route, a pasted image); ``None`` for a file.
        name: How to call it in messages: the name given, else the file's name; ``None``
            for bytes given without a name.
    """

    path: Path | None
    data: bytes | None
    name: str | None

    @property
    def what(self) -> str:
        """The subject of a message: ``"The file 'scan.png'"``, or ``"The upload"`` without a name."""
        return f"The file {self.name!r}" if self.name else "The upload"

    def read_bytes(self) -> bytes:
        return self.data if self.data is not None else self.path.read_bytes()


def receive_upload(
    source: Any, *, name: str | None, max_bytes: int, noun: str, hint: str, error: type[InvalidImageError] | type[InvalidVolumeError]
) -> Upload:
    """The intake every file upload passes, a slice's or a volume's: the checks before its content is looked at.

    Args:
        source: A file path or raw bytes.
        name: How to call the file in messages (default: the path's file name).
        max_bytes: Largest accepted file size.
        noun: What the upload should be, for messages: ``"an image"``, ``"a volume"``.
        hint: The sentence that says what to upload, ending messages.
        error: The class raised for a missing, empty or unreadable upload.

    Returns:
        The :class:`Upload`; a file is not read here (a volume is read where it lies).

    Raises:
        error: No upload, a missing file, an empty one, or a ``source`` of another type.
        UploadTooLargeError: Above ``max_bytes`` (HTTP 413, whatever ``error`` is).
    """
    if source is None:
        raise error(f"No {noun.split()[-1]} was given. {hint}")
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        upload = Upload(path, None, name or path.name)
        if not path.is_file():
            raise error(f"{upload.what} was not found on the server. {hint}")
        size = path.stat().st_size
    elif isinstance(source, (bytes, bytearray, memoryview)):
        upload = Upload(None, bytes(source), name)
        size = len(upload.data)
    else:
        raise error(f"Cannot read a {type(source).__name__} as {noun}. {hint}")
    if size > max_bytes:
        raise UploadTooLargeError(f"{upload.what} is {megabytes(size)}; files up to {megabytes(max_bytes)} are accepted.")
    if size == 0:
        raise error(f"{upload.what} is empty (0 bytes). {hint}")
    return upload


#: Where a volume sent as a slice is pointed to, in the page (the REST route names its own route).
VOLUME_TAB_HINT = "Analyze volumes in the Volume tab."


def check_scan(source: Any, *, name: str | None = None, max_bytes: int = MAX_UPLOAD_BYTES, volume_hint: str = VOLUME_TAB_HINT) -> Any:
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
        volume_hint: The sentence that says where a volume (NIfTI, DICOM) goes, ending the
            message for one sent as a slice.

    Returns:
        The decoded :class:`~tumor_classifier.decoding.DecodedImage` for paths and bytes;
        ``source`` itself otherwise.

    Raises:
        InvalidImageError: With a message that says what is wrong and what to upload
            (:class:`UploadTooLargeError`, :class:`UnsupportedImageTypeError` for those two).
    """
    upload_hint = f"Upload a brain MRI slice as {ACCEPTED_TEXT}."
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
    upload = receive_upload(source, name=name, max_bytes=max_bytes, noun="an image", hint=upload_hint, error=InvalidImageError)
    data, what = upload.read_bytes(), upload.what
    try:
        # The header only, by the decoder's own reader: no pixel is decoded before the
        # size is checked, and nothing process-wide (PIL's bomb limit, warning filters)
        # is touched, so requests on several threads cannot disturb each other.
        image_format, (width, height) = read_header(data)
    except InvalidImageError:
        volume = _volume_kind(data)
        if volume is not None:
            raise UnsupportedImageTypeError(f"{what} is a volume ({volume}), not a 2-D slice image. {volume_hint}") from None
        raise UnsupportedImageTypeError(f"{what} is not an image this app can read. {upload_hint}") from None
    if image_format not in ACCEPTED_FORMATS:
        raise UnsupportedImageTypeError(f"{what} is a {image_format} image; this app accepts {ACCEPTED_TEXT}. {upload_hint}")
    if max(width, height) > MAX_SCAN_SIDE:
        raise InvalidImageError(f"{what} is {width}x{height} pixels; images up to {MAX_SCAN_SIDE} pixels a side are accepted.")
    if min(width, height) < MIN_IMAGE_SIDE:
        raise InvalidImageError(f"{what} is {width}x{height} pixels; at least {MIN_IMAGE_SIDE} pixels a side are needed.")
    # Large images decode a few at a time: each holds a full-resolution frame while it is
    # reduced, so the number in flight bounds the app's memory (slices of MRI size never wait).
    try:
        with _decode_slot(width, height):
            return decode(data)  # decode fully, once: truncated and corrupt files fail here, not in a batch
    except InvalidImageError:
        raise InvalidImageError(f"{what} looks like a {image_format} image but is corrupt or truncated, so it cannot be decoded. {upload_hint}") from None


def _decode_slot(width: int, height: int):
    """What a decode of ``width`` x ``height`` pixels holds while it runs: one of the
    :data:`LARGE_DECODES_AT_ONCE` slots for a large image, nothing for a slice of MRI size."""
    return _LARGE_DECODES if width * height > LARGE_SCAN_PIXELS else contextlib.nullcontext()


def _volume_kind(data: bytes) -> str | None:
    """``"NIfTI"``, ``"DICOM"`` ... when ``data`` is a volume file (by its first bytes), else ``None``."""
    from ..volume_formats import _KIND_WORDS, sniff

    try:
        kind = sniff(data)
    except MissingDependencyError:  # a DICOM without its preamble is told by pydicom (the [volumes] extra)
        return None
    return _KIND_WORDS[kind] if kind in ("nifti", "nifti-gz", "dicom") else None


#: Formats a browser shows in an ``<img>``; an upload in another accepted format (TIFF) is
#: shown as a PNG of its decoded slice (:func:`browser_preview`).
BROWSER_FORMATS = frozenset({"JPEG", "PNG", "BMP", "GIF", "WEBP"})


def browser_preview(path: Path, decoded: DecodedImage) -> Path | None:
    """A PNG of an uploaded slice that browsers cannot show (TIFF), else ``None``.

    The PNG holds the slice as decoded (``decoded.gray``; the colours for a colour file, at
    the size of ``decoded.gray``), so analysing it gives what analysing the upload gives. It
    is written in a folder of its own in Gradio's upload folder, which Gradio empties with
    its cache. A large colour file is decoded again in one of :func:`check_scan`'s slots.

    Args:
        path: The uploaded file, past :func:`check_scan` (a file :func:`upload_source` returned).
        decoded: What :func:`check_scan` decoded from it.
    """
    import tempfile

    from gradio.utils import get_upload_folder

    with Image.open(path) as original:  # reads the header only (check_scan read and checked the file)
        if original.format in BROWSER_FORMATS:
            return None
        preview = Path(tempfile.mkdtemp(dir=get_upload_folder())) / f"{path.stem}.png"
        with _decode_slot(*original.size):
            image = decoded.gray
            if decoded.rgb is not None:  # the colours, at the size the model saw
                image = original.convert("RGB").resize(decoded.gray.size, Image.Resampling.BOX)
            image.save(preview, format="PNG")
    return preview


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


def upload_source(payload: Any) -> Any:
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
