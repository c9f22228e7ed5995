"""Decode, grayscale, crop to the head, pad, resize, normalise; train-time augmentation.

One preprocessing serves training, evaluation and inference:

1. :func:`load_image` decodes any common input (path, bytes, PIL image, numpy array) into
   one 8-bit grayscale representation. The shared data set stores the same grayscale
   content as "L" or "RGB" JPEGs depending on the class, so a model must never see the
   storage mode.
2. :func:`prepare_image` crops to the head's bounding box, pads to a square and resizes;
   it remembers the geometry so an attribution map can be put back onto the input.
3. :class:`MRIPreprocessor` holds the settings, turns prepared images into the
   normalised ``pixel_values`` tensor a model takes, and saves itself as a standard
   ``ViTImageProcessor`` config so a saved model also loads with plain
   ``AutoImageProcessor`` (which then does the resize / rescale / normalise part only).
4. :class:`BatchAugmenter` applies the plan's augmentation (rotation, flip, zoom, shift,
   contrast / brightness, noise) to whole batches as tensors, so that on two CPU cores
   the input pipeline costs little next to the model.
"""

from __future__ import annotations

import io
import json
import errno
import functools
import math
import os
import stat
import struct
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
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
PROCESSOR_CONFIG_NAME = "preprocessor_config.json"
#: Bumped whenever decoding or preparation changes, so cached prepared pixels are rebuilt.
PREPROCESSING_VERSION = 1
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
            raise InvalidImageError(f"Cannot read an array of dtype {dtype} as an image; accepted: {ACCEPTED_INPUTS}.")
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
            f"Cannot read a numpy array of shape {array.shape} as an image; accepted: {ACCEPTED_INPUTS}."
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
    raise InvalidImageError(f"Cannot read an {what} as an image; accepted: {ACCEPTED_INPUTS}.")


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


def head_bounding_box(gray: np.ndarray, threshold: float = 0.1) -> tuple[int, int, int, int]:
    """Finds the head as the bounding box of pixels above a fraction of the bright level.

    The bright level is the 99.5th percentile rather than the maximum, so a few hot pixels
    or burnt-in text do not decide it. If the box covers almost nothing (an empty or
    nearly black image), the whole image is returned.

    Args:
        gray: uint8 array (H, W).
        threshold: Fraction in (0, 1) of the bright level a pixel must exceed.

    Returns:
        ``(left, top, right, bottom)`` in pixels, right and bottom exclusive.
    """
    height, width = gray.shape
    bright = float(np.percentile(gray, 99.5))
    if bright <= 0:
        return 0, 0, width, height
    mask = gray > threshold * bright
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0 or cols.size == 0:
        return 0, 0, width, height
    left, top, right, bottom = int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1
    if (right - left) * (bottom - top) < 0.02 * width * height:
        return 0, 0, width, height
    return left, top, right, bottom


def strip_skull(gray: np.ndarray, threshold: float = 0.1, erosion: float = 0.06) -> np.ndarray:
    """Heuristic skull stripping: keeps the largest bright component, eroded inwards.

    This is a morphological heuristic, not a validated brain-extraction tool (such as
    HD-BET or SynthStrip): it removes the scalp and much of the skull on axial slices
    with a dark background, and may cut into the cortex or leave bone elsewhere.

    Args:
        gray: uint8 array (H, W).
        threshold: Fraction of the bright level that counts as tissue.
        erosion: Erosion depth as a fraction of the head's shorter side.

    Returns:
        uint8 array (H, W): the input with pixels outside the estimated brain set to 0.
    """
    from scipy import ndimage

    bright = float(np.percentile(gray, 99.5))
    if bright <= 0:
        return gray.copy()
    mask = ndimage.binary_fill_holes(gray > threshold * bright)
    labels, count = ndimage.label(mask)
    if count == 0:
        return gray.copy()
    sizes = ndimage.sum(mask, labels, index=range(1, count + 1))
    head = labels == (int(np.argmax(sizes)) + 1)
    rows, cols = np.flatnonzero(head.any(axis=1)), np.flatnonzero(head.any(axis=0))
    depth = max(1, int(erosion * min(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1)))
    brain = ndimage.binary_erosion(head, iterations=depth)
    if brain.sum() < 0.05 * head.sum():  # eroded away: keep the head rather than nothing
        brain = head
    return np.where(brain, gray, 0).astype(np.uint8)


@dataclass(frozen=True)
class PreparedImage:
    """A grayscale image cropped to the head, padded square and resized.

    Attributes:
        image: "L" PIL image of ``size`` x ``size`` pixels.
        original_size: ``(width, height)`` of the decoded input.
        crop_box: ``(left, top, right, bottom)`` of the crop in input pixels.
        padded_side: Side of the square the crop was centred in, in input pixels.
    """

    image: Image.Image
    original_size: tuple[int, int]
    crop_box: tuple[int, int, int, int]
    padded_side: int

    def to_original(self, heatmap: np.ndarray) -> np.ndarray:
        """Puts a map over the prepared image back onto the input's pixel grid.

        Undoes resize, pad and crop: the map is resized to the padded square, the crop is
        cut out of it, and it is placed into a zero map of the input's size.

        Args:
            heatmap: float array (h, w), any size (it is resized), usually in [0, 1].

        Returns:
            float32 array (H, W) with the input's height and width; zero outside the crop.
        """
        left, top, right, bottom = self.crop_box
        side = self.padded_side
        square = _resize_float(heatmap.astype(np.float32), side, side)
        pad_x = (side - (right - left)) // 2
        pad_y = (side - (bottom - top)) // 2
        width, height = self.original_size
        out = np.zeros((height, width), dtype=np.float32)
        out[top:bottom, left:right] = square[pad_y : pad_y + bottom - top, pad_x : pad_x + right - left]
        return out


def _resize_float(array: np.ndarray, width: int, height: int) -> np.ndarray:
    tensor = torch.from_numpy(np.ascontiguousarray(array))[None, None]
    return F.interpolate(tensor, size=(height, width), mode="bilinear", align_corners=False)[0, 0].numpy()


def prepare_image(
    image: Image.Image,
    size: int,
    *,
    crop_to_head: bool = True,
    head_threshold: float = 0.1,
    skull_strip: bool = False,
) -> PreparedImage:
    """Crops a grayscale image to the head, pads it to a square and resizes it.

    Args:
        image: "L" PIL image, as :func:`load_image` returns.
        size: Side of the output square in pixels.
        crop_to_head: Crop to :func:`head_bounding_box` first.
        head_threshold: Threshold passed to :func:`head_bounding_box`.
        skull_strip: Apply the :func:`strip_skull` heuristic before cropping.

    Returns:
        The :class:`PreparedImage`, whose ``image`` is ``size`` x ``size`` "L".
    """
    gray = np.asarray(image if image.mode == "L" else image.convert("L"))
    if skull_strip:
        gray = strip_skull(gray, head_threshold)
    height, width = gray.shape
    box = head_bounding_box(gray, head_threshold) if crop_to_head else (0, 0, width, height)
    left, top, right, bottom = box
    crop = gray[top:bottom, left:right]
    side = max(crop.shape)
    square = np.zeros((side, side), dtype=np.uint8)
    pad_y, pad_x = (side - crop.shape[0]) // 2, (side - crop.shape[1]) // 2
    square[pad_y : pad_y + crop.shape[0], pad_x : pad_x + crop.shape[1]] = crop
    resized = Image.fromarray(square).resize((size, size), Image.Resampling.BILINEAR)
    return PreparedImage(resized, (width, height), box, side)


@dataclass
class MRIPreprocessor:
    """The preprocessing settings of a model, and the step from images to tensors.

    Attributes:
        size: Side of the square the model sees, in pixels.
        crop_to_head: Crop to the head's bounding box before padding and resizing.
        head_threshold: Fraction of the bright level that counts as head.
        skull_strip: Apply the skull-stripping heuristic (off by default).
        mean: Normalisation mean of the [0, 1] grayscale values.
        std: Normalisation standard deviation.
        num_channels: Channels the model takes; the gray channel is repeated, so a
            3-channel Hub checkpoint fine-tunes as is.

    Example:
        >>> pre = MRIPreprocessor(size=64)
        >>> pre([np.zeros((80, 60), dtype=np.uint8)]).shape
        torch.Size([1, 3, 64, 64])
    """

    size: int = 224
    crop_to_head: bool = True
    head_threshold: float = 0.1
    skull_strip: bool = False
    mean: float = 0.5
    std: float = 0.5
    num_channels: int = 3

    def prepare(self, source: Any) -> PreparedImage:
        """Decodes one input and prepares it (grayscale, crop, pad, resize)."""
        return prepare_image(
            load_image(source),
            self.size,
            crop_to_head=self.crop_to_head,
            head_threshold=self.head_threshold,
            skull_strip=self.skull_strip,
        )

    def prepare_array(self, source: Any) -> np.ndarray:
        """Prepares one input and returns it as a uint8 array (size, size)."""
        return np.asarray(self.prepare(source).image)

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        """Turns uint8 (n, size, size) or float [0, 1] (n, 1, size, size) into pixel_values.

        Returns:
            float32 tensor (n, num_channels, size, size), normalised.
        """
        if batch.dtype == torch.uint8:
            batch = batch.float().div_(255.0)
        if batch.ndim == 3:
            batch = batch.unsqueeze(1)
        batch = (batch - self.mean) / self.std
        return batch.expand(-1, self.num_channels, -1, -1).contiguous()

    def __call__(self, sources: Sequence[Any]) -> torch.Tensor:
        """Prepares and normalises a sequence of inputs.

        Returns:
            float32 tensor (n, num_channels, size, size).
        """
        arrays = np.stack([self.prepare_array(source) for source in sources])
        return self.normalize(torch.from_numpy(arrays))

    # -- persistence ---------------------------------------------------------------
    def to_hf_dict(self) -> dict[str, Any]:
        """A standard ``ViTImageProcessor`` config plus our own settings.

        Plain ``AutoImageProcessor`` reads the standard keys (resize to ``size``, rescale,
        normalise, RGB) and ignores the ``tumor_classifier`` block; this package reads
        both, so both paths give identical tensors on an already prepared image.
        """
        return {
            "image_processor_type": "ViTImageProcessor",
            "do_convert_rgb": True,
            "do_resize": True,
            "size": {"height": self.size, "width": self.size},
            "resample": int(Image.Resampling.BILINEAR),
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "image_mean": [self.mean] * 3,
            "image_std": [self.std] * 3,
            "tumor_classifier": {
                key: value for key, value in asdict(self).items() if key not in ("mean", "std", "size")
            },
        }

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Writes ``preprocessor_config.json`` into ``directory``; returns its path."""
        path = Path(directory) / PROCESSOR_CONFIG_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_hf_dict(), indent=2) + "\n")
        return path

    @classmethod
    def from_hf_dict(cls, config: dict[str, Any], *, source: str | os.PathLike = PROCESSOR_CONFIG_NAME) -> "MRIPreprocessor":
        """Reads a config written by :meth:`to_hf_dict`, or any ViT/ConvNeXt processor config.

        A config of another project (no ``tumor_classifier`` block) keeps its size and
        normalisation and gets this package's grayscale and head-crop defaults. Every
        value is validated here, so a bad config fails at load time, not at predict time
        (or silently, with NaN probabilities).

        Args:
            config: The parsed JSON.
            source: The file it came from, named in error messages.

        Raises:
            ModelLoadError: ``config`` is not an object, or ``size`` is not a side from
                8 to 2048 (an integer, or ``height`` equal to ``width``), ``image_mean``
                is not finite, ``image_std`` is not finite and positive, ``num_channels``
                is not 1 or 3, ``head_threshold`` is not in [0, 1), or ``crop_to_head`` /
                ``skull_strip`` are not booleans. The message names ``source``.
        """
        from .exceptions import ModelLoadError

        def bad(what: str, value: Any, accepted: str) -> ModelLoadError:
            return ModelLoadError(f"{source}: {what} is {value!r}; {accepted}. Fix or replace the file.")

        def is_number(value: Any) -> bool:  # finite and sane; no float() of a 400-digit integer
            return isinstance(value, (int, float)) and not isinstance(value, bool) and -1e6 < value < 1e6

        if not isinstance(config, dict):
            raise ModelLoadError(f"{source} holds a JSON {type(config).__name__}; expected an object of preprocessing settings.")
        size = config.get("size", 224)
        if isinstance(size, dict) and ("height" in size or "width" in size):
            side = size.get("height") if size.get("height") == size.get("width") else None
        else:
            side = size.get("shortest_edge") if isinstance(size, dict) else size
        if isinstance(side, bool) or not isinstance(side, int) or not 8 <= side <= 2048:
            raise bad("'size'", size, "expected a side from 8 to 2048 pixels, or {'height': n, 'width': n} with equal sides")
        values = {}
        for key, positive in (("image_mean", False), ("image_std", True)):
            value = config.get(key, [0.5])
            listed = value if isinstance(value, list) else [value]
            if not listed or not all(is_number(v) and (v > 0 or not positive) for v in listed):
                accepted = "a positive finite number" if positive else "a finite number"
                accepted += " (below 1e6 in size)"
                raise bad(f"'{key}'", value, f"expected {accepted} or a non-empty list of them")
            # grayscale: one value for all channels
            values[key] = float(listed[0]) if len(set(listed)) == 1 else float(np.mean(listed))
        ours = config.get("tumor_classifier", {})
        if not isinstance(ours, dict):
            raise bad("'tumor_classifier'", ours, "expected an object of this package's settings")
        for key in ("crop_to_head", "skull_strip"):
            if key in ours and not isinstance(ours[key], bool):
                raise bad(f"'tumor_classifier.{key}'", ours[key], "expected true or false")
        if "head_threshold" in ours and not (is_number(ours["head_threshold"]) and 0 <= ours["head_threshold"] < 1):
            raise bad("'tumor_classifier.head_threshold'", ours["head_threshold"], "expected a number in [0, 1)")
        if "num_channels" in ours and not (type(ours["num_channels"]) is int and ours["num_channels"] in (1, 3)):
            raise bad("'tumor_classifier.num_channels'", ours["num_channels"], "expected 1 or 3")
        known = {f for f in cls.__dataclass_fields__ if f not in ("mean", "std", "size")}
        return cls(
            size=side,
            mean=values["image_mean"],
            std=values["image_std"],
            **{key: value for key, value in ours.items() if key in known},
        )

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> "MRIPreprocessor":
        """Loads ``preprocessor_config.json`` from a local model folder.

        Raises:
            ModelLoadError: The file is missing, too large, not JSON, or holds invalid
                settings (see :meth:`from_hf_dict`); the message names it.
        """
        from .model_folder import read_json_limited

        path = Path(directory) / PROCESSOR_CONFIG_NAME
        return cls.from_hf_dict(read_json_limited(path), source=path)


@dataclass
class AugmentationConfig:
    """Train-time augmentation, applied to whole batches as tensors.

    ``invert``, ``bezier`` and ``gin`` are intensity domain randomisation: they remap
    tissue brightness (every class alike), so a model cannot tell classes apart by the
    MRI contrast (T1 / T2 / FLAIR) a class happens to be scanned with rather than by the
    pathology. They are off by default; suggested training values are ``invert=0.25``,
    ``bezier=0.5``, ``bezier_nonmonotone=0.3``, ``gin=0.3``, with a wider ``gamma`` (up
    to 1.5). Images that get any of them keep a black background (see :func:`head_mask`).

    Attributes:
        rotation: Largest rotation in degrees (uniform in +-rotation).
        zoom: Largest relative zoom in or out (scale uniform in 1 +- zoom).
        shift: Largest shift as a fraction of the side.
        hflip: Probability of a horizontal (left-right) flip; brains are near symmetric.
        vflip: Probability of a vertical flip; off by default, since scans are upright.
        contrast: Largest relative contrast stretch (factor uniform in 1 +- contrast).
        brightness: Largest brightness offset on the [0, 1] scale.
        gamma: Largest |log2 gamma| (uniform in +-gamma; covers other scanners' intensity
            curves). 0.3 is mild; up to 1.5 (gamma 0.35 to 2.8) randomises contrast.
        noise: Largest Gaussian noise standard deviation on the [0, 1] scale.
        blur: Probability of a light blur (covers softer scanners and resampling).
        invert: Probability of a contrast inversion inside the head (x -> 1 - x there,
            background kept black): dark-CSF (T1-like) slices turn bright-CSF (T2-like).
        bezier: Probability of a random cubic Bezier intensity curve (Models Genesis,
            Zhou et al. 2019); a monotone one runs from (0, 0) to (1, 1).
        bezier_nonmonotone: Share of those curves that are non-monotone (random end levels,
            control levels beyond [0, 1], stretched over [0, 1]), so dark can map to
            bright and back.
        gin: Probability of a random shallow convolution network blended into the image
            (GIN, Ouyang et al., IEEE TMI 2022): random local texture and contrast.
    """

    rotation: float = 15.0
    zoom: float = 0.15
    shift: float = 0.1
    hflip: float = 0.5
    vflip: float = 0.0
    contrast: float = 0.2
    brightness: float = 0.1
    gamma: float = 0.3
    noise: float = 0.03
    blur: float = 0.2
    invert: float = 0.0
    bezier: float = 0.0
    bezier_nonmonotone: float = 0.0
    gin: float = 0.0

    @classmethod
    def none(cls) -> "AugmentationConfig":
        """Every augmentation off: :class:`BatchAugmenter` is then the identity."""
        return cls(**{f.name: 0.0 for f in fields(cls)})


#: Head mask: a pixel is tissue above this fraction of the way from the background level
#: (the image's 5% quantile) to its peak, as in :func:`head_bounding_box`.
HEAD_MASK_THRESHOLD = 0.1
#: Head mask: side of the opening square (drops thin lines, text, speckle) and of the
#: closing square (bridges dark gaps), as fractions of the image side.
HEAD_MASK_OPENING = 1 / 64
HEAD_MASK_CLOSING = 1 / 16
#: Head mask: the morphology runs on a grid of about this many pixels a side.
HEAD_MASK_GRID = 64
#: Levels of the lookup table a Bezier intensity curve is resampled to.
_BEZIER_LEVELS = 256
#: Random GIN network: layers, hidden width range (inclusive), leaky ReLU slope. The
#: paper's default width is 2; 4 at most keeps it cheap on a CPU (every image pays for the
#: widest, and 8 channels cost about 2.5 times as much).
_GIN_LAYERS = 4
_GIN_WIDTH = (2, 4)
_GIN_SLOPE = 0.2


def _max_filter(mask: torch.Tensor, size: int, outside: float | None = None) -> torch.Tensor:
    """Max over a ``size`` x ``size`` square, as a row pass and a column pass.

    ``outside`` is the value beyond the image border; ``None`` lets the border never win.
    """
    pad = size // 2
    if outside is not None:
        mask = F.pad(mask, (pad, pad, pad, pad), value=outside)
        mask = F.max_pool2d(mask, (1, size), stride=1)
        return F.max_pool2d(mask, (size, 1), stride=1)
    mask = F.max_pool2d(mask, (1, size), stride=1, padding=(0, pad))
    return F.max_pool2d(mask, (size, 1), stride=1, padding=(pad, 0))


def head_mask(
    batch: torch.Tensor,
    threshold: float = HEAD_MASK_THRESHOLD,
    opening: float = HEAD_MASK_OPENING,
    closing: float = HEAD_MASK_CLOSING,
) -> torch.Tensor:
    """Marks the head in a batch of images with a dark background, on the batch's device.

    Cheap tensor steps, the same on a GPU as on a CPU (no connected components, no host
    round trip). Steps 1 to 4 run on a grid of about :data:`HEAD_MASK_GRID` pixels a side
    (area-averaged; the mask is a smooth blob, and morphology there costs a fraction):

    1. Seed: a pixel whose value and whose 3x3 mean both exceed the background level
       plus ``threshold`` of the way to the peak. The background level is the image's 5%
       quantile and the peak the largest mean, since several shipped slices have a grey
       or noisy background (10 to 40 of 255) that a fraction of the maximum alone would
       take for head. The mean drops speckle; the pixel itself keeps a thin bright line
       thin, so that the opening removes it.
    2. Opening with a square of ``opening`` times the side (the border counts as
       background), which drops thin frame lines, burnt-in text and noise speckle; then
       the seed pixels within the closing distance (below) of what is left come back, so
       a thin scalp beyond the dark skull stays while a frame or text further away does not.
    3. Closing (max-pool dilation, then erosion) with a square of ``closing`` times the
       side, which bridges dark gaps such as the skull between scalp and brain.
    4. Fill: a pixel is head if it lies both between the first and last mask pixel of
       its row and between those of its column. This keeps dark tissue enclosed by the
       head (CSF and ventricles on T1, a dark lesion core) in the mask; it also fills a
       concave notch of the outline, which is harmless for head slices.
    5. Back on the full grid, the head's interior (the grid mask eroded by one grid pixel)
       is head, and in the outer band only pixels above the level are, so the mask ends
       at the head's edge and the black ring around it stays out.

    Args:
        batch: float tensor (n, 1, H, W) in [0, 1].
        threshold: Fraction of the way from background level to peak that counts as tissue.
        opening: Opening square side as a fraction of the shorter image side.
        closing: Closing square side as a fraction of the shorter image side (both are
            made odd and at least 3 grid pixels).

    Returns:
        bool tensor (n, 1, H, W); all False for an image without contrast (e.g. black).
    """
    n, (height, width) = batch.shape[0], batch.shape[-2:]
    factor = max(1, min(height, width) // HEAD_MASK_GRID)
    small = F.avg_pool2d(batch, factor, ceil_mode=True) if factor > 1 else batch
    mean = F.avg_pool2d(F.pad(small, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    flat = mean.reshape(n, -1)
    low = flat.kthvalue(max(1, int(0.05 * flat.shape[1])), dim=1).values.view(n, 1, 1, 1)
    level = low + threshold * (flat.amax(dim=1).view(n, 1, 1, 1) - low)
    seed = ((mean > level) & (small > level)).to(batch.dtype)
    side = min(small.shape[-2:])
    size = max(3, int(side * opening) | 1)
    opened = _max_filter(1 - _max_filter(1 - seed, size, outside=1.0), size)
    size = max(3, int(side * closing) | 1)
    core = torch.maximum(opened, seed * _max_filter(opened, size))
    closed = 1 - _max_filter(1 - _max_filter(core, size), size)
    in_row = (closed.cumsum(-1) > 0) & (closed.flip(-1).cumsum(-1).flip(-1) > 0)
    in_column = (closed.cumsum(-2) > 0) & (closed.flip(-2).cumsum(-2).flip(-2) > 0)
    filled = (in_row & in_column).to(batch.dtype)
    interior = 1 - _max_filter(1 - filled, 3)

    def full(mask: torch.Tensor) -> torch.Tensor:
        return F.interpolate(mask, scale_factor=factor, mode="nearest")[..., :height, :width] > 0

    return full(filled) & ((batch > level) | full(interior))


@dataclass
class BatchAugmenter:
    """Random affine, flip and intensity changes on a batch of [0, 1] images.

    Works on float tensors (n, 1, H, W) in [0, 1] and returns the same shape and range,
    on the batch's own device (CPU or GPU), drawing from its own seeded generator there
    so runs repeat.

    Order: affine and flips; head mask (:func:`head_mask`, only if a domain randomisation
    is on); blur; inversion, Bezier curve, GIN; gamma, contrast / brightness, noise;
    background reset to 0 for the images that got an inversion, curve or GIN; clamp to
    [0, 1]. A domain randomisation with probability 0 draws no random numbers, so the
    other augmentations repeat exactly as without it.
    """

    config: AugmentationConfig = field(default_factory=AugmentationConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        self._generators: dict[torch.device, torch.Generator] = {}

    def _generator(self, device: torch.device) -> torch.Generator:
        # One seeded generator per device, so a batch is augmented where it lives (on a
        # GPU the random draws and the resampling never cross to the host).
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[device]

    def _rand(self, n: int, device: torch.device) -> torch.Tensor:
        return torch.rand(n, generator=self._generator(device), device=device)

    def _uniform(self, n: int, limit: float, device: torch.device) -> torch.Tensor:
        return (self._rand(n, device) * 2 - 1) * limit

    def _pick(self, n: int, probability: float, device: torch.device) -> torch.Tensor:
        """bool tensor (n, 1, 1, 1): which images get an augmentation of this probability."""
        return (self._rand(n, device) < probability).view(n, 1, 1, 1)

    @staticmethod
    def _on_picked(
        pick: torch.Tensor, batch: torch.Tensor, compute: Callable[..., torch.Tensor], *per_image: torch.Tensor
    ) -> torch.Tensor:
        """Replaces the picked images of ``batch`` by ``compute(batch, *per_image)``.

        ``per_image`` holds tensors with a leading batch dimension (random parameters,
        masks), drawn for every image so that the random stream does not depend on the
        pick. On a CPU only the picked images are computed; on an accelerator all are and
        ``torch.where`` keeps the picked ones, since reading which images were picked
        would make the host wait for the device.
        """
        if batch.device.type != "cpu":
            return torch.where(pick, compute(batch, *per_image), batch)
        index = pick.view(-1).nonzero().squeeze(1)
        out = batch.clone()
        if len(index):
            out[index] = compute(batch[index], *(tensor[index] for tensor in per_image))
        return out

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        n = batch.shape[0]
        device = batch.device
        angle = self._uniform(n, math.radians(cfg.rotation), device)
        scale = 1 + self._uniform(n, cfg.zoom, device)
        flip = torch.where(self._rand(n, device) < cfg.hflip, -1.0, 1.0)
        vflip = torch.where(self._rand(n, device) < cfg.vflip, -1.0, 1.0)
        shift_x, shift_y = self._uniform(n, 2 * cfg.shift, device), self._uniform(n, 2 * cfg.shift, device)
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack(
            [
                torch.stack([cos * flip, -sin * vflip, shift_x], dim=1),
                torch.stack([sin * flip, cos * vflip, shift_y], dim=1),
            ],
            dim=1,
        )
        if cfg.rotation or cfg.zoom or cfg.shift or cfg.hflip or cfg.vflip:
            grid = F.affine_grid(theta, list(batch.shape), align_corners=False)
            batch = F.grid_sample(batch, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        randomise = bool(cfg.invert or cfg.bezier or cfg.gin)
        if randomise:
            # From the geometry-final input and before any intensity change: once tissue is
            # inverted or remapped, brightness no longer tells head from background.
            head = head_mask(batch)
            touched = torch.zeros(n, 1, 1, 1, dtype=torch.bool, device=device)
        if cfg.blur:
            blurred = F.avg_pool2d(F.pad(batch, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
            pick = (self._rand(n, device) < cfg.blur).view(n, 1, 1, 1)
            batch = torch.where(pick, blurred, batch)
        if cfg.invert:
            pick = self._pick(n, cfg.invert, device)
            batch = torch.where(pick, torch.where(head, 1 - batch.clamp(0, 1), 0.0), batch)
            touched |= pick
        if cfg.bezier:
            pick = self._pick(n, cfg.bezier, device)
            batch = self._on_picked(pick, batch, _lookup, self._bezier_tables(n, cfg.bezier_nonmonotone, batch))
            touched |= pick
        if cfg.gin:
            pick = self._pick(n, cfg.gin, device)
            batch = self._on_picked(pick, batch, _gin, head, *self._gin_parameters(n, batch))
            touched |= pick
        if cfg.gamma:
            gamma = torch.exp2(self._uniform(n, cfg.gamma, device)).view(n, 1, 1, 1)
            batch = batch.clamp(0, 1).pow(gamma)
        if cfg.contrast or cfg.brightness:
            mean = batch.mean(dim=(1, 2, 3), keepdim=True)
            contrast = (1 + self._uniform(n, cfg.contrast, device)).view(n, 1, 1, 1)
            brightness = self._uniform(n, cfg.brightness, device).view(n, 1, 1, 1)
            batch = (batch - mean) * contrast + mean + brightness
        if cfg.noise:
            sigma = (self._rand(n, device) * cfg.noise).view(n, 1, 1, 1)
            batch = batch + sigma * torch.randn(batch.shape, generator=self._generator(device), device=device)
        if randomise:
            # Only where a domain randomisation ran: the other images keep their old look.
            batch = torch.where(touched & ~head, 0.0, batch)
        return batch.clamp_(0, 1)

    def _bezier_tables(self, n: int, nonmonotone: float, like: torch.Tensor) -> torch.Tensor:
        """Random cubic Bezier intensity curves, one per image, as lookup tables.

        The curve runs from (0, y0) over (x1, y1) and (x2, y2) to (1, y3). With x1, x2 in
        [0, 1] its x(t) never decreases, so it is a function of the intensity; it is
        evaluated at :data:`_BEZIER_LEVELS` values of t and resampled (``searchsorted``
        and linear interpolation, on those few points only) at as many evenly spaced
        intensities, so that mapping the pixels takes no search. A monotone curve has
        y0 = 0, y3 = 1 and y1, y2 in [0, 1] (then y(t) never decreases either); a
        non-monotone one (share ``nonmonotone``) has y0, y3 in [0, 1] and y1, y2 in
        [-0.5, 1.5], and its levels are min-max scaled to [0, 1].

        Args:
            n: Number of curves.
            nonmonotone: Share of the curves that are non-monotone.
            like: Tensor whose device and dtype the tables take.

        Returns:
            float tensor (n, levels) in [0, 1]: entry i is the output for intensity
            i / (levels - 1).
        """
        device, levels = like.device, _BEZIER_LEVELS
        x1, x2, y1, y2, y0, y3, wild = self._rand(7 * n, device).to(like.dtype).view(7, n, 1).unbind(0)
        wild = wild < nonmonotone
        y0 = torch.where(wild, y0, 0.0)
        y3 = torch.where(wild, y3, 1.0)
        y1 = torch.where(wild, y1 * 2 - 0.5, y1)
        y2 = torch.where(wild, y2 * 2 - 0.5, y2)
        t = torch.linspace(0, 1, levels, device=device, dtype=like.dtype)
        basis = ((1 - t) ** 3, 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t**2, t**3)

        def curve(p0, p1, p2, p3) -> torch.Tensor:  # (n, 1) each -> (n, levels)
            return basis[0] * p0 + basis[1] * p1 + basis[2] * p2 + basis[3] * p3

        # cummax: rounding may dip a monotone curve by an ulp, and searchsorted needs sorted x.
        xs = curve(0.0, x1, x2, 1.0).cummax(dim=1).values.contiguous()
        ys = curve(y0, y1, y2, y3)
        # A non-monotone curve is stretched over [0, 1]: a random one is often nearly flat,
        # which would wash the image out rather than reorder its tissues.
        low, high = ys.amin(dim=1, keepdim=True), ys.amax(dim=1, keepdim=True)
        stretched = (ys - low) / (high - low).clamp_min(1e-3)
        ys = torch.where(wild, stretched, ys.cummax(dim=1).values).clamp(0, 1)
        even = t.expand(n, levels).contiguous()
        upper = torch.searchsorted(xs, even).clamp_(1, levels - 1)
        x_lo, x_hi = xs.gather(1, upper - 1), xs.gather(1, upper)
        y_lo, y_hi = ys.gather(1, upper - 1), ys.gather(1, upper)
        weight = ((even - x_lo) / (x_hi - x_lo).clamp_min(1e-12)).clamp_(0, 1)
        return y_lo + weight * (y_hi - y_lo)

    def _gin_parameters(self, n: int, like: torch.Tensor) -> list[torch.Tensor]:
        """Weights and biases of a random GIN network per image, then the blend weights.

        :data:`_GIN_LAYERS` 3x3 convolutions with N(0, 1) weights and biases, one output
        channel at the end. Each image draws its own kernel size per layer (a 1x1 kernel
        is a 3x3 one with a zero ring) and hidden width in :data:`_GIN_WIDTH` (the unused
        channels' weights and biases are zero), so one grouped convolution per layer
        serves the batch without a host round trip.

        Returns:
            ``[weight_0, bias_0, ..., weight_last, bias_last, alpha]``: weights (n, out,
            in, 3, 3), biases (n, out), alpha (n, 1, 1, 1) in [0, 1).
        """
        device, dtype = like.device, like.dtype
        generator = self._generator(device)
        hidden = _GIN_WIDTH[1]
        widths = torch.randint(_GIN_WIDTH[0], hidden + 1, (n, 1), generator=generator, device=device)
        active = (torch.arange(hidden, device=device) < widths).to(dtype)  # (n, hidden)
        ring = torch.ones(3, 3, device=device, dtype=dtype)
        ring[1, 1] = 0
        parameters, channels_in = [], 1
        for layer in range(_GIN_LAYERS):
            last = layer == _GIN_LAYERS - 1
            channels_out = 1 if last else hidden
            weight = torch.randn((n, channels_out, channels_in, 3, 3), generator=generator, device=device, dtype=dtype)
            bias = torch.randn((n, channels_out), generator=generator, device=device, dtype=dtype)
            one_by_one = (self._rand(n, device) < 0.5).view(n, 1, 1, 1, 1)
            weight = torch.where(one_by_one, weight * (1 - ring), weight)
            if not last:
                weight = weight * active.view(n, hidden, 1, 1, 1)
                bias = bias * active
            parameters += [weight, bias]
            channels_in = channels_out
        return parameters + [self._rand(n, device).to(dtype).view(n, 1, 1, 1)]


def _lookup(batch: torch.Tensor, tables: torch.Tensor) -> torch.Tensor:
    """Maps each image through its lookup table, interpolating linearly between levels.

    Args:
        batch: float tensor (n, 1, H, W), clamped to [0, 1] first.
        tables: float tensor (n, levels), as :meth:`BatchAugmenter._bezier_tables` returns.

    Returns:
        float tensor (n, 1, H, W).
    """
    n, levels = tables.shape
    position = batch.reshape(n, -1).clamp(0, 1) * (levels - 1)
    below = position.floor().clamp_(max=levels - 2)
    weight = position - below
    below = below.long()
    low, high = tables.gather(1, below), tables.gather(1, below + 1)
    return (low + weight * (high - low)).view_as(batch)


def _gin(batch: torch.Tensor, head: torch.Tensor, *parameters: torch.Tensor) -> torch.Tensor:
    """Blends every image with the output of its own random shallow network (GIN).

    The network (parameters from :meth:`BatchAugmenter._gin_parameters`) has leaky ReLU
    between layers and none after the last; the batch runs through it as one grouped
    convolution per layer (images as groups). Its output is min-max scaled to [0, 1]
    inside the head and blended in as ``alpha * gin(x) + (1 - alpha) * x``.

    Args:
        batch: float tensor (n, 1, H, W) in [0, 1].
        head: bool tensor (n, 1, H, W) from :func:`head_mask`.
        parameters: ``weight_0, bias_0, ..., alpha``.

    Returns:
        float tensor (n, 1, H, W) in [0, 1].
    """
    n, _, height, width = batch.shape
    *layers, alpha = parameters
    x = batch.reshape(1, n, height, width)
    for index in range(0, len(layers), 2):
        weight, bias = layers[index], layers[index + 1]
        x = F.conv2d(x, weight.flatten(0, 1), bias.flatten(), padding=1, groups=n)
        if index + 2 < len(layers):
            x = F.leaky_relu(x, _GIN_SLOPE)
    out = x.view(n, 1, height, width)
    low = torch.where(head, out, math.inf).amin(dim=(1, 2, 3), keepdim=True)
    high = torch.where(head, out, -math.inf).amax(dim=(1, 2, 3), keepdim=True)
    # An image with an empty mask (black) is scaled over all of it instead.
    empty = ~head.flatten(1).any(dim=1).view(n, 1, 1, 1)
    low = torch.where(empty, out.amin(dim=(1, 2, 3), keepdim=True), low)
    high = torch.where(empty, out.amax(dim=(1, 2, 3), keepdim=True), high)
    out = ((out - low) / (high - low).clamp_min(1e-6)).clamp_(0, 1)
    return alpha * out + (1 - alpha) * batch
