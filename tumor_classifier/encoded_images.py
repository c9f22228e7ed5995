"""What the package accepts as an encoded image, and reading it safely up to its header.

The accepted inputs and formats (:data:`ACCEPTED_INPUTS`, :data:`DECODED_FORMATS`,
:data:`ACCEPTED_FORMATS_TEXT`) and the limits that bound the work on hostile input
(:data:`MAX_IMAGE_SIDE`, :data:`MIN_IMAGE_SIDE`, :data:`MAX_DECODED_SIDE`,
:data:`MAX_FILE_BYTES`); reading a file in bounded chunks (``stat`` first, so no FIFO or
device is opened); identifying the format and size from the header with PIL's
registered openers and nothing process-wide (:func:`read_header`, ``_open_header``).
No pixel is decoded here: that is :mod:`tumor_classifier.decoding`'s, which re-exports
the public names. It imports nothing of the package but the exceptions.
"""

from __future__ import annotations

import errno
import functools
import io
import os
import stat
import struct
from typing import Any, Callable

import numpy as np
from PIL import Image

from .exceptions import InvalidImageError

ACCEPTED_INPUTS = (
    "a file path (JPEG, PNG incl. 16-bit, TIFF, BMP, GIF, WebP), raw image bytes, "
    "a PIL image, or a numpy array of shape (H, W) or (H, W, C) with C in 1, 3, 4"
)
#: Largest image side accepted; it is checked from the header (files, bytes) or the shape
#: (arrays, PIL images) before anything is decoded or converted, and bigger inputs are
#: refused rather than exhausting memory.
MAX_IMAGE_SIDE = 8192
MIN_IMAGE_SIDE = 8
#: Decoded images are box-reduced by an integer factor to at most this many pixels on the
#: long side (JPEGs already while decoding, the rest one strip of rows at a time): the
#: model sees 128-224 pixels and an overlay needs no more. Smaller images keep their size.
MAX_DECODED_SIDE = 2048
#: Largest file or byte string read: a bigger file is refused from its size, before a
#: byte is read, and a file is read in chunks up to this limit, never whole.
MAX_FILE_BYTES = 64 * 1024 * 1024
#: The formats files and bytes are opened as (PIL's plugin ids; "JPEG" includes MPO).
#: Any other format is refused without being parsed: each parser is attack surface.
DECODED_FORMATS = ("JPEG", "PNG", "TIFF", "BMP", "GIF", "WEBP")
#: The same list for people: the library, the CLI, REST and the app all accept exactly
#: these (of an animated GIF or WebP, the first frame).
ACCEPTED_FORMATS_TEXT = "JPEG, PNG, TIFF, BMP, GIF or WebP"
_READ_CHUNK = 1 << 20


def _kind(source: Any) -> str:
    """An object that is no image, for messages: ``"a numpy float64 scalar (0.5)"``."""
    if isinstance(source, np.generic):
        return f"a numpy {source.dtype} scalar ({str(source)[:40]})"
    if source is None:
        return "None"
    return f"an object of type {type(source).__name__}"


def _describe(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        try:
            name = os.fspath(source)
        except (TypeError, ValueError):
            return f"object of type {type(source).__name__}"
        if len(name) > 160:  # a message stays readable whatever the path
            return f"file {name[:100]!r}...{name[-40:]!r} ({len(name)} characters)"
        return f"file {name!r}"
    if isinstance(source, (bytes, bytearray)):
        return f"image data ({len(source)} bytes)"
    if isinstance(source, np.ndarray):
        return f"numpy array of shape {source.shape} and dtype {source.dtype}"
    return f"object of type {type(source).__name__}"


def _check_size(size: tuple[int, int], what: str) -> None:
    width, height = size
    if max(width, height) > MAX_IMAGE_SIDE:
        raise InvalidImageError(
            f"The {what} is {width}x{height} pixels; images up to {MAX_IMAGE_SIDE} pixels a side are accepted."
        )
    if min(width, height) < MIN_IMAGE_SIDE:
        raise InvalidImageError(
            f"The {what} is {width}x{height} pixels; at least {MIN_IMAGE_SIDE} pixels a side are needed."
        )


def _byte_count(count: int) -> str:
    return f"{count / 2**20:.1f} MiB" if count >= 2**20 else f"{count} bytes"


def _too_large(what: str, size: int, *, at_least: bool = False) -> InvalidImageError:
    return InvalidImageError(
        f"The {what} is {'more than ' if at_least else ''}{_byte_count(size)}; files up to "
        f"{_byte_count(MAX_FILE_BYTES)} are accepted. Save the image smaller (a brain MRI slice is "
        "well under 10 MiB)."
    )


def _unreadable(error: BaseException, what: str) -> InvalidImageError:
    """The project's error for an OSError (or a path the OS cannot take) on a file."""
    if isinstance(error, FileNotFoundError):
        return InvalidImageError(f"No image at {what}: the file does not exist. Check the path.")
    reasons = {
        errno.ENAMETOOLONG: "name too long: longer than the operating system allows",
        errno.EACCES: "permission denied",
        errno.EPERM: "operation not permitted",
        errno.ENOTDIR: "a part of the path is not a directory",
        errno.ELOOP: "too many levels of symbolic links",
        errno.EISDIR: "it is a directory",
    }
    if isinstance(error, OSError):
        reason = reasons.get(error.errno) or error.strerror or type(error).__name__
    else:  # a NUL character, text the OS cannot encode, or a PathLike that gives no path
        reason = f"not a valid path: {error}"
    return InvalidImageError(
        f"The {what} cannot be read ({reason}); give the path of a readable image file "
        f"(JPEG, PNG, TIFF, BMP, GIF, WebP)."
    )


def _file_kind(mode: int) -> str:
    for test, kind in (
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return kind
    return "a special file"


def _read_file(source: str | os.PathLike, what: str) -> bytes:
    """Reads a regular file of at most ``MAX_FILE_BYTES``, in chunks.

    ``stat`` comes first, so a directory, FIFO or device is refused without being opened
    (opening a FIFO blocks; reading ``/dev/zero`` never ends); the file is then opened
    non-blocking and checked again, in case it was replaced in between. Every OSError
    becomes an :class:`InvalidImageError` naming the reason.
    """
    try:
        path = os.fspath(source)
        info = os.stat(path)
    except (OSError, ValueError, TypeError) as error:  # TypeError: a PathLike giving no str
        raise _unreadable(error, what) from None
    if stat.S_ISDIR(info.st_mode):
        raise InvalidImageError(f"The {what} is a directory, not an image file; give the path of one image file.")
    if not stat.S_ISREG(info.st_mode):
        raise InvalidImageError(
            f"The {what} is not a regular file (it is {_file_kind(info.st_mode)}), so it is not read; "
            "give the path of an image file."
        )
    if info.st_size > MAX_FILE_BYTES:
        raise _too_large(what, info.st_size)
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
        with open(descriptor, "rb", buffering=0) as file:
            mode = os.fstat(descriptor).st_mode
            if not stat.S_ISREG(mode):
                raise InvalidImageError(
                    f"The {what} is not a regular file (it is {_file_kind(mode)}), so it is not read; "
                    "give the path of an image file."
                )
            chunks, total = [], 0
            size = min(info.st_size, MAX_FILE_BYTES) + 1  # normally the whole file in one read
            while chunk := file.read(min(size, MAX_FILE_BYTES + 1 - total)):
                chunks.append(chunk)
                total += len(chunk)
                if total > MAX_FILE_BYTES:  # it grew, or stat did not know its size (/proc)
                    raise _too_large(what, MAX_FILE_BYTES, at_least=True)
                size = _READ_CHUNK
    except OSError as error:
        raise _unreadable(error, what) from None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _read_bytes(source: str | os.PathLike | bytes | bytearray, what: str) -> bytes:
    """The encoded image of a path (read as :func:`_read_file` does) or of bytes, not empty
    and at most ``MAX_FILE_BYTES`` long."""
    if isinstance(source, (str, os.PathLike)):
        data = _read_file(source, what)
    elif len(source) > MAX_FILE_BYTES:
        raise _too_large(what, len(source))
    else:
        data = bytes(source)
    if not data:
        raise InvalidImageError(f"The {what} is empty; expected {ACCEPTED_INPUTS}.")
    return data


@functools.cache
def _openers() -> tuple[tuple[str, Callable[..., Any], Callable[[bytes], Any] | None], ...]:
    """PIL's registered ``(format, factory, accept)`` for ``DECODED_FORMATS``, in that order."""
    from PIL import BmpImagePlugin, GifImagePlugin, JpegImagePlugin, PngImagePlugin, TiffImagePlugin  # noqa: F401

    try:
        from PIL import WebPImagePlugin  # noqa: F401
    except ImportError:  # Pillow built without WebP
        pass
    return tuple((name, *Image.OPEN[name]) for name in DECODED_FORMATS if name in Image.OPEN)


def _gif_size(data: bytes) -> tuple[int, int] | None:
    """The size PIL gives a GIF: the screen, grown to the first frame's extent.

    PIL grows the size while opening and then runs its process-wide decompression-bomb
    check, which warns; so the size is computed here first, mirroring PIL's parser, and
    checked against ``MAX_IMAGE_SIDE`` before PIL sees the file. None if there is no
    frame header (PIL then refuses the file itself).
    """
    fp = io.BytesIO(data)
    screen = fp.read(13)
    if len(screen) < 13:
        return None
    width, height = struct.unpack_from("<HH", screen, 6)
    if screen[10] & 128:
        fp.read(3 << ((screen[10] & 7) + 1))  # global palette

    def block() -> bytes | None:
        length = fp.read(1)
        return fp.read(length[0]) if length and length[0] else None

    s = b""
    while True:
        if not s:
            s = fp.read(1)
        if not s or s == b";":
            return None
        if s == b"!":
            label = fp.read(1)
            first = block()
            if label == b"\xfe":  # comment: PIL reads its blocks up to the first empty one
                while first:
                    first = block()
                s = b""
                continue
            if label == b"\xff" and first is not None and first.startswith(b"NETSCAPE2.0"):
                block()
            while block():
                pass
        elif s == b",":
            extent = fp.read(9)
            if len(extent) < 8:
                return None
            x0, y0, frame_width, frame_height = struct.unpack_from("<HHHH", extent)
            return max(width, x0 + frame_width), max(height, y0 + frame_height)
        s = b""


def read_header(data: bytes, what: str = "image") -> tuple[str, tuple[int, int]]:
    """The format and the size of an encoded image, from its header; no pixel is decoded.

    For callers with their own limits (the web app takes smaller images than the
    package): nothing process-wide of PIL is read, changed or warned about, so it is safe
    on many threads at once; the caller checks the size, then decodes with
    :func:`load_image`.

    Args:
        data: The file's bytes.
        what: How to name the input in messages.

    Returns:
        ``(format, (width, height))``: a name from :data:`DECODED_FORMATS` (PIL's "MPO"
        camera JPEGs as "JPEG") and the size the header declares, unchecked.

    Raises:
        InvalidImageError: Not an image in one of :data:`DECODED_FORMATS`, or a corrupt header.
    """
    if data[:6] in (b"GIF87a", b"GIF89a"):
        size = _gif_size(data)
        if size is not None and max(size) > MAX_IMAGE_SIDE:
            return "GIF", size  # PIL would run its process-wide check while opening it
    with _open_header(data, what, check_size=False) as image:
        return ("JPEG" if image.format == "MPO" else image.format), image.size


def _open_header(data: bytes, what: str, *, check_size: bool = True) -> Image.Image:
    """Identifies the format and reads the header only (no pixel data); checks the size.

    ``Image.open(..., formats=DECODED_FORMATS)`` would limit the formats too, but it runs
    PIL's process-wide ``MAX_IMAGE_PIXELS`` check, which warns (DecompressionBombWarning)
    from 89 megapixels on. So each format's registered opener is called directly, as
    ``Image.open`` does, and the size is checked here against our own limits: no global
    is changed and no warning filtered.
    """
    if check_size and data[:6] in (b"GIF87a", b"GIF89a"):
        size = _gif_size(data)
        if size is not None:
            _check_size(size, what)
    prefix = data[:16]
    for _name, factory, accept in _openers():
        result = accept(prefix) if accept else True
        if not result or isinstance(result, str):
            continue
        try:
            image = factory(io.BytesIO(data), "")
        except (SyntaxError, IndexError, TypeError, struct.error):
            continue  # not this format after all (Image.open tries the next one too)
        except Exception as error:  # noqa: BLE001 - PIL's parsers raise anything on hostile bytes
            raise InvalidImageError(
                f"The {what} is corrupt or truncated ({type(error).__name__}: {error}); accepted: {ACCEPTED_INPUTS}."
            ) from None
        try:
            if check_size:
                _check_size(image.size, what)
        except InvalidImageError:
            image.close()
            raise
        return image
    raise InvalidImageError(
        f"The {what} is not an image in a format this package reads (it starts with {data[:8]!r}); "
        f"accepted: {ACCEPTED_INPUTS}."
    )
