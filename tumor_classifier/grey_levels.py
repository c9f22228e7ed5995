"""Grey levels of any PIL mode or numpy dtype, reduced strip by strip.

The conversions behind :func:`tumor_classifier.decoding.load_image`: 8-bit colours to
"L", 16-bit / 32-bit / float intensities min-max windowed to 0-255 (NaN and infinite
values refused), images larger than ``MAX_DECODED_SIDE`` box-reduced one strip of rows at
a time so a huge frame is never converted whole, and the EXIF orientation to undo. It
works on images already opened; reading files and headers is
:mod:`tumor_classifier.encoded_images`'s.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Iterator

import numpy as np
from PIL import Image

from .encoded_images import ACCEPTED_INPUTS, MAX_DECODED_SIDE, MIN_IMAGE_SIDE, _check_size
from .exceptions import InvalidImageError

#: At most this many full-resolution pixels are converted at once when reducing.
_STRIP_PIXELS = 1 << 20
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
