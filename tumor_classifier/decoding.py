"""The package's one decoder: any common input to one 8-bit grayscale image.

:func:`load_image` turns a path, raw bytes, a PIL image, a numpy array or a ``datasets``
image dict into an "L" PIL image. The shared data set stores the same grayscale content
as "L" or "RGB" JPEGs depending on the class, so a model must never see the storage
mode. This module owns what the package accepts (:data:`ACCEPTED_INPUTS`,
:data:`DECODED_FORMATS`, :data:`ACCEPTED_FORMATS_TEXT`), the limits that bound the work
on hostile input (:data:`MAX_IMAGE_SIDE`, :data:`MIN_IMAGE_SIDE`,
:data:`MAX_DECODED_SIDE`, :data:`MAX_FILE_BYTES`), the header reader
:func:`read_header` for callers with their own limits, and the conversions of every PIL
mode and numpy dtype to grey levels. :func:`decode` reads an input once into a
:class:`DecodedImage`, the grey image plus a small copy of its colours, which the learned
brain-MRI check needs and the grey image hides.

It imports nothing of the package but :mod:`tumor_classifier.exceptions`; cropping,
resizing and normalising are :mod:`tumor_classifier.preprocessing`'s.
"""

from __future__ import annotations

import errno
import functools
import io
import math
import os
import stat
import struct
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

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
#: At most this many full-resolution pixels are converted at once when reducing.
_STRIP_PIXELS = 1 << 20
_READ_CHUNK = 1 << 20
#: Formats whose EXIF orientation is applied (PNG carries it in an eXIf chunk).
_EXIF_FORMATS = ("JPEG", "MPO", "PNG", "TIFF", "WEBP")
#: EXIF orientation -> the transposition that undoes it, as in ``ImageOps.exif_transpose``.
_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
#: PIL modes that hold intensities (16-bit, 32-bit, float) rather than 8-bit colours.
_INTENSITY_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


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


def _row_step(array: np.ndarray) -> int:
    """Rows per block, so that a block of the array holds about ``_STRIP_PIXELS`` values."""
    return max(1, _STRIP_PIXELS // max(1, array[:1].size))


def _row_blocks(array: np.ndarray) -> Iterator[np.ndarray]:
    """The array in blocks of :func:`_row_step` rows (axis 0)."""
    step = _row_step(array)
    return (array[top : top + step] for top in range(0, array.shape[0], step))


def _intensity_window(blocks: Iterable[np.ndarray], what: str) -> tuple[float, float]:
    """The grey-level window of an image of intensities: its minimum and maximum.

    NaN and infinite values are refused: no window maps them to a grey level that means
    anything, and replacing them silently once turned whole images black. Huge finite
    ranges (up to +-1.8e308) are fine, see :func:`_window`.

    Args:
        blocks: The image's values, in blocks of rows (the array itself is one block).
        what: The input, as named in messages.

    Returns:
        ``(low, high)`` as Python floats (float64).

    Raises:
        InvalidImageError: A non-numeric dtype, NaN or infinite values, or values beyond
            the float64 range.
    """
    low, high = math.inf, -math.inf
    for block in blocks:
        dtype = block.dtype
        if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
            raise InvalidImageError(
                f"Cannot read the {what} as an image: dtype {dtype} holds no intensities; accepted: numeric "
                f"(integer, float or bool) arrays, or {ACCEPTED_INPUTS}."
            )
        if block.size == 0:
            continue
        if np.issubdtype(dtype, np.floating) and not np.isfinite(block).all():
            raise InvalidImageError(
                f"The {what} holds NaN or infinite values; only finite values can be mapped to "
                "grey levels. Replace them first (for example with numpy.nan_to_num)."
            )
        low, high = min(low, float(block.min())), max(high, float(block.max()))
    if not (math.isfinite(low) and math.isfinite(high)):  # e.g. long double beyond float64
        raise InvalidImageError(f"The {what} holds values beyond the float64 range (about +-1.8e308) or none at all.")
    return low, high


def _window(block: np.ndarray, low: float, high: float) -> np.ndarray:
    """Maps values linearly from [low, high] to uint8 [0, 255] (min-max windowing).

    Computed in float64. When ``high - low`` overflows (values near +-1.8e308) both ends
    are halved first; halving is exact, so the grey levels are the same as in exact
    arithmetic, and nothing overflows to inf or NaN.
    """
    if high <= low:
        return np.zeros(block.shape, dtype=np.uint8)
    values = block.astype(np.float64)
    span = high - low
    if math.isfinite(span):
        scaled = (values - low) / span
    else:
        scaled = (values * 0.5 - low * 0.5) / (high * 0.5 - low * 0.5)
    return np.round(scaled * 255.0).astype(np.uint8)


def _array_to_uint8(array: np.ndarray, what: str = "numpy array") -> np.ndarray:
    """Maps an array of any numeric dtype to uint8; 16-bit, 32-bit and float are min-max scaled.

    Medical images use the dtype's range loosely (12-bit data in uint16, floats in
    arbitrary units), so the window is the image's own range, not the dtype's; it is the
    full minimum-to-maximum range (not percentiles), so every image that decoded before
    decodes to the same grey levels. NaN and infinite values are refused.
    """
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    low, high = _intensity_window(_row_blocks(array), what)
    out = np.empty(array.shape, dtype=np.uint8)
    step = _row_step(array)  # in blocks: the float64 copy stays small
    for top in range(0, array.shape[0], step):
        out[top : top + step] = _window(array[top : top + step], low, high)
    return out


def _pil_to_gray(image: Image.Image, what: str = "image") -> Image.Image:
    """Converts any PIL mode to 8-bit "L"; alpha is composited on black (MRI background)."""
    mode = image.mode
    if mode == "L":
        return image
    if mode in _INTENSITY_MODES:
        return Image.fromarray(_array_to_uint8(np.asarray(image), what))
    if mode == "1":
        return image.convert("L")
    if mode == "P":
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("L")
    # RGB, CMYK, YCbCr, LAB, HSV: through RGB to ITU-R 601 luma.
    return image.convert("RGB").convert("L")


def _reduction(width: int, height: int) -> int:
    """The integer box-reduction factor that brings the long side to ``MAX_DECODED_SIDE``.

    Capped so that the short side stays at least ``MIN_IMAGE_SIDE`` (a 8192 x 8 strip is
    kept as it is: it is small anyway).
    """
    factor = -(-max(width, height) // MAX_DECODED_SIDE)
    return max(1, min(factor, min(width, height) // MIN_IMAGE_SIDE))


def _in_strips(width: int, height: int, factor: int, rows_to_gray: Callable[[int, int], Image.Image]) -> Image.Image:
    """Builds the grey image reduced by ``factor``, one strip of rows at a time.

    Args:
        width, height: Full-resolution size.
        factor: Integer box-reduction factor; 1 converts the whole image in one go.
        rows_to_gray: ``(top, bottom) -> "L" image`` of those full-resolution rows.

    Returns:
        "L" image of ``ceil(width / factor)`` x ``ceil(height / factor)`` pixels, equal to
        ``rows_to_gray(0, height).reduce(factor)`` (strips are whole multiples of
        ``factor`` rows) with only one full-resolution strip in memory at a time.
    """
    if factor == 1:
        return rows_to_gray(0, height)
    rows = max(1, _STRIP_PIXELS // (width * factor)) * factor
    out = Image.new("L", (-(-width // factor), -(-height // factor)))
    for top in range(0, height, rows):
        out.paste(rows_to_gray(top, min(height, top + rows)).reduce(factor), (0, top // factor))
    return out


def _image_to_gray(image: Image.Image, factor: int, what: str) -> Image.Image:
    """Converts a PIL image to "L", box-reduced by ``factor`` (see :func:`_in_strips`)."""
    if factor == 1:
        return _pil_to_gray(image, what)
    width, height = image.size

    def crop(top: int, bottom: int) -> Image.Image:
        return image.crop((0, top, width, bottom))

    if image.mode not in _INTENSITY_MODES:
        return _in_strips(width, height, factor, lambda top, bottom: _pil_to_gray(crop(top, bottom), what))
    # 16-bit / float: one window for the whole image, from the full-resolution values.
    step = max(1, _STRIP_PIXELS // width)
    blocks = (np.asarray(crop(top, min(height, top + step))) for top in range(0, height, step))
    low, high = _intensity_window(blocks, what)
    return _in_strips(
        width, height, factor, lambda top, bottom: Image.fromarray(_window(np.asarray(crop(top, bottom)), low, high))
    )


def _orientation(image: Image.Image) -> Image.Transpose | None:
    """The transposition that undoes the image's EXIF orientation, if it has one."""
    if image.format not in _EXIF_FORMATS:
        return None
    orientation = image.getexif().get(0x0112, 1)  # also reads XMP, as exif_transpose does
    return _ORIENTATION.get(orientation) if isinstance(orientation, int) else None


def _array_to_gray(array: np.ndarray, what: str = "numpy array") -> Image.Image:
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (3, 4))):
        raise InvalidImageError(
            f"Cannot read a {array.ndim}-D numpy array of shape {array.shape} as an image; "
            f"accepted: {ACCEPTED_INPUTS}."
        )
    height, width = array.shape[:2]
    _check_size((width, height), what)  # before any conversion allocates memory
    if array.dtype in (np.uint8, bool):
        low = high = 0.0  # not windowed
    else:
        low, high = _intensity_window(_row_blocks(array), what)

    def rows_to_gray(top: int, bottom: int) -> Image.Image:
        rows = array[top:bottom]
        if rows.dtype != np.uint8:
            rows = rows.astype(np.uint8) * 255 if rows.dtype == bool else _window(rows, low, high)
        if rows.ndim == 2:
            return Image.fromarray(rows)
        mode = "RGB" if rows.shape[-1] == 3 else "RGBA"
        return _pil_to_gray(Image.fromarray(np.ascontiguousarray(rows), mode=mode))

    return _in_strips(width, height, _reduction(width, height), rows_to_gray)


def load_image(source: Any) -> Image.Image:
    """Decodes one input into the package's single grayscale representation.

    Hostile inputs are refused with :class:`~tumor_classifier.InvalidImageError` and
    bounded work: a path is checked with ``stat`` first (directories, FIFOs and devices
    are never opened) and read in chunks up to ``MAX_FILE_BYTES``; the size is checked
    from the header before decoding; images larger than ``MAX_DECODED_SIDE`` are
    reduced while decoding or one strip at a time, so the peak memory is about one
    full-resolution frame of a non-JPEG (at most 8192 x 8192 x 4 bytes) plus the file.

    Args:
        source: A path, raw bytes, a PIL image, a numpy array (H, W) or (H, W, C), or a
            ``datasets`` image dict (``{"bytes": ..., "path": ...}``). Of an animated
            GIF or WebP, the first frame is read.

    Returns:
        An 8-bit grayscale ("L") PIL image with the input's height and width, after its
        EXIF orientation (JPEG, PNG, TIFF, WebP) is applied; an image larger than
        ``MAX_DECODED_SIDE`` pixels on its long side is box-reduced by the smallest
        integer factor that brings it to at most that. 16-bit, 32-bit and float inputs
        are min-max windowed to 0-255.

    Raises:
        InvalidImageError: The input is empty, corrupt, not an image, of an unsupported
            kind or format, not a readable regular file, larger than ``MAX_FILE_BYTES``
            or than ``MAX_IMAGE_SIDE`` on a side, or holds NaN / infinite values. The
            message names the input, what is wrong and what is accepted.

    Example:
        >>> load_image(np.zeros((32, 32), dtype=np.uint16)).mode
        'L'
    """
    what = _describe(source)
    if isinstance(source, dict) and ("bytes" in source or "path" in source):
        source = source.get("bytes") or source.get("path")
        what = _describe(source)
    if isinstance(source, np.ndarray):
        return _array_to_gray(source, what)
    if isinstance(source, Image.Image):
        _check_size(source.size, what)
        try:
            source.load()  # a lazily opened file decodes here (and PIL's TIFF loader orients it)
            orientation = _orientation(source)
            gray = _image_to_gray(source, _reduction(*source.size), what)
        except InvalidImageError:
            raise
        except Exception as error:  # noqa: BLE001 - a lazily opened image decodes here; PIL raises anything
            raise InvalidImageError(
                f"Cannot convert the PIL image ({source.mode}): {type(error).__name__}: {error}."
            ) from None
        return gray.transpose(orientation) if orientation is not None else gray
    if isinstance(source, (str, os.PathLike, bytes, bytearray)):
        return _decode(source, what)
    raise InvalidImageError(f"Cannot read {_kind(source)} as an image; accepted: {ACCEPTED_INPUTS}.")


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


def _decode(source: str | os.PathLike | bytes | bytearray, what: str) -> Image.Image:
    if isinstance(source, (str, os.PathLike)):
        data = _read_file(source, what)
    elif len(source) > MAX_FILE_BYTES:
        raise _too_large(what, len(source))
    else:
        data = bytes(source)
    if not data:
        raise InvalidImageError(f"The {what} is empty; expected {ACCEPTED_INPUTS}.")
    opened = _open_header(data, what)
    with opened:
        width, height = opened.size
        factor, scale = _reduction(width, height), 1
        try:
            if factor > 1 and opened.format in ("JPEG", "MPO"):
                # Decode at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling): a power of two
                # up to the factor. Asking for size // scale makes draft() pick that scale.
                scale = min(8, 1 << (factor.bit_length() - 1))
                opened.draft("L", (max(1, width // scale), max(1, height // scale)))
            opened.load()
            orientation = _orientation(opened)  # after load(): PIL's TIFF loader applies its own
            decoded_width, decoded_height = opened.size
            if scale == 1 or (decoded_width, decoded_height) == (width, height):  # not drafted
                _check_size(opened.size, what)  # a loader may change the size (TIFF orientation)
                gray = _image_to_gray(opened, _reduction(decoded_width, decoded_height), what)
            else:  # drafted: decoded at 1/scale, so "scale" divides what is left, or nearly
                target, remaining = (-(-width // factor), -(-height // factor)), factor // scale
                if factor % scale == 0 and (-(-decoded_width // remaining), -(-decoded_height // remaining)) == target:
                    gray = _image_to_gray(opened, remaining, what)
                else:  # e.g. factor 3, decoded at 1/2: resample the small image to the target
                    gray = _pil_to_gray(opened, what).resize(target, Image.Resampling.BOX)
        except InvalidImageError:
            raise
        except MemoryError:
            raise InvalidImageError(f"The {what} is too large to decode in the memory available.") from None
        except Exception as error:  # noqa: BLE001 - PIL's decoders raise anything on hostile bytes
            raise InvalidImageError(
                f"The {what} is corrupt or truncated ({type(error).__name__}: {error}); accepted: {ACCEPTED_INPUTS}."
            ) from None
    return gray.transpose(orientation) if orientation is not None else gray


# ------------------------------------------------ one decode: grey image and colours

#: Side of the colour thumbnail :func:`decode` keeps beside the grey image.
_RGB_THUMBNAIL = 128
_GRAY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")


@dataclass(frozen=True)
class DecodedImage:
    """One input, decoded once: what the classifier sees and what the colour features need.

    Attributes:
        gray: "L" PIL image from :func:`~tumor_classifier.decoding.load_image`.
        rgb: uint8 array (h, w, 3), the original colours at most 128 px a side; ``None``
            for inputs stored as gray (their colourfulness is 0).
    """

    gray: Image.Image
    rgb: np.ndarray | None


def _rgb_thumbnail(image: Image.Image) -> np.ndarray | None:
    if image.mode in _GRAY_MODES:
        return None
    if image.mode in ("RGBA", "P", "PA", "RGBa"):
        # As load_image does: transparency is composited on black.
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    small = image.convert("RGB")
    small.thumbnail((_RGB_THUMBNAIL, _RGB_THUMBNAIL))
    return np.asarray(small)


def _array_rgb(array: np.ndarray) -> np.ndarray | None:
    if array.ndim != 3 or array.shape[-1] not in (3, 4):
        return None
    rgb = array[..., :3]
    if rgb.dtype != np.uint8:
        values = np.nan_to_num(rgb.astype(np.float64))
        low, high = float(values.min()), float(values.max())
        rgb = np.zeros(values.shape, np.uint8) if high <= low else np.round((values - low) / (high - low) * 255).astype(np.uint8)
    return _rgb_thumbnail(Image.fromarray(np.ascontiguousarray(rgb), mode="RGB"))


def decode(source: Any, gray: Image.Image | None = None) -> DecodedImage:
    """Decodes one input once into its grayscale image and a small copy of its colours.

    Files and bytes are read and opened by the decoder's own pieces (``stat`` first, bounded
    reads, its formats and size limits from the header); an image up to
    ``MAX_DECODED_SIDE`` is decoded once and handed, opened, to
    :func:`~tumor_classifier.decoding.load_image` (its grayscale conversion and EXIF
    orientation), its colours kept beside. A larger one is decoded reduced by
    ``load_image`` and its colours read from a small draft. Whatever cannot be read gets
    ``load_image``'s error, so messages read as everywhere else.

    Args:
        source: What ``load_image`` accepts: a path, bytes, a PIL image, a numpy array
            (H, W) or (H, W, C), or a ``datasets`` image dict; a :class:`DecodedImage`
            is returned as it is.
        gray: The input already decoded by ``load_image``, if the caller has it; then
            only the colours are read (from a file, at reduced JPEG resolution).

    Returns:
        The :class:`DecodedImage`.

    Raises:
        InvalidImageError: The input cannot be read as an image (see ``load_image``).
    """
    if isinstance(source, DecodedImage):
        return source
    if isinstance(source, dict) and ("bytes" in source or "path" in source):
        source = source.get("bytes") or source.get("path")
    if isinstance(source, np.ndarray):
        return DecodedImage(gray if gray is not None else load_image(source), _array_rgb(source))
    if isinstance(source, Image.Image):
        return DecodedImage(gray if gray is not None else load_image(source), _rgb_thumbnail(source))
    if not isinstance(source, (str, os.PathLike, bytes, bytearray)):
        return DecodedImage(gray if gray is not None else load_image(source), None)
    what = _describe(source)
    if isinstance(source, (str, os.PathLike)):
        data = _read_file(source, what)  # stat first, bounded chunks: the decoder's own reader
    elif 0 < len(source) <= MAX_FILE_BYTES:
        data = bytes(source)
    else:
        return DecodedImage(load_image(source), None)  # empty or too large: load_image says so
    if not data:
        return DecodedImage(load_image(data), None)
    # The decoder's header check: its formats only, sizes checked before decoding, no
    # process-wide PIL limit involved.
    opened = _open_header(data, what)
    with opened:
        try:
            if gray is None and max(opened.size) <= MAX_DECODED_SIDE:
                # Decoded once: load_image on the opened image does what it does on the
                # bytes when no reduction is needed, and the colours come from the same pixels.
                opened.load()
                gray = load_image(opened)
            else:
                gray = gray if gray is not None else load_image(data)  # reduced while decoding
                opened.draft("RGB", (_RGB_THUMBNAIL * 2, _RGB_THUMBNAIL * 2))  # JPEG: decode small
                opened.load()
            rgb = _rgb_thumbnail(opened)
        except Exception:  # noqa: BLE001 - PIL raises anything on hostile bytes; load_image names it
            if gray is not None:
                return DecodedImage(gray, None)
            load_image(data if isinstance(source, (bytes, bytearray)) else source)
            raise  # load_image accepted what PIL could not decode: should not happen
    return DecodedImage(gray, rgb)


#: What a sequence of images may be, for messages.
ACCEPTED_SEQUENCES = (
    "one image (a path, bytes, a PIL image, or a numpy array (H, W) or (H, W, C) with C in 1, 3, 4), "
    "a list of them, or a numpy stack (n, H, W) or (n, H, W, C)"
)


def is_single_image(source: Any) -> bool:
    """Whether ``source`` is one image rather than a sequence of them."""
    if isinstance(source, (str, os.PathLike, bytes, bytearray, Image.Image, dict, DecodedImage)):
        return True
    if isinstance(source, np.ndarray):
        return source.ndim == 2 or (source.ndim == 3 and source.shape[-1] in (1, 3, 4))
    return False


def as_image_list(images: Any) -> list[Any]:
    """One image or a sequence of images -> a non-empty list of images.

    Raises:
        InvalidImageError: Neither one image nor a sequence of them (a number, a 1-D or
            5-D numeric array ...), or an empty sequence; the message says what was given.
    """
    if is_single_image(images):
        return [images]
    if isinstance(images, np.ndarray) and images.dtype != object and images.ndim not in (3, 4):
        raise InvalidImageError(
            f"Cannot read a {images.ndim}-D numpy array of shape {images.shape} as images; accepted: {ACCEPTED_SEQUENCES}."
        )
    if isinstance(images, (np.generic, int, float, complex)) or images is None:
        raise InvalidImageError(f"Cannot read {_kind(images)} as images; accepted: {ACCEPTED_SEQUENCES}.")
    try:
        sources = list(images)
    except TypeError:
        raise InvalidImageError(f"Cannot read {_kind(images)} as images; accepted: {ACCEPTED_SEQUENCES}.") from None
    if not sources:
        raise InvalidImageError(f"No images given: the sequence is empty; accepted: {ACCEPTED_SEQUENCES}.")
    return sources
