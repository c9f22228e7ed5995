"""The package's one decoder: any common input to one 8-bit grayscale image.

:func:`load_image` turns a path, raw bytes, a PIL image, a numpy array or a ``datasets``
image dict into an "L" PIL image. The shared data set stores the same grayscale content
as "L" or "RGB" JPEGs depending on the class, so a model must never see the storage
mode. What the package accepts (:data:`ACCEPTED_INPUTS`, :data:`DECODED_FORMATS`,
:data:`ACCEPTED_FORMATS_TEXT`), the limits that bound the work on hostile input
(:data:`MAX_IMAGE_SIDE`, :data:`MIN_IMAGE_SIDE`, :data:`MAX_DECODED_SIDE`,
:data:`MAX_FILE_BYTES`) and the header reader :func:`read_header` for callers with their
own limits are importable from here. :func:`decode` reads an input once into a
:class:`DecodedImage`, the grey image plus a small copy of its colours, which the learned
brain-MRI check needs and the grey image hides.

Its parts: :mod:`tumor_classifier.encoded_images` (the limits, reading files, the
header) and :mod:`tumor_classifier.grey_levels` (the mode and dtype conversions); their
public names are importable from here. The three import nothing else of the package but
:mod:`tumor_classifier.exceptions`; cropping, resizing and normalising are
:mod:`tumor_classifier.preprocessing`'s.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from PIL import Image

from .encoded_images import (  # noqa: F401 - the public names are importable from here as before
    ACCEPTED_FORMATS_TEXT,
    ACCEPTED_INPUTS,
    DECODED_FORMATS,
    MAX_DECODED_SIDE,
    MAX_FILE_BYTES,
    MAX_IMAGE_SIDE,
    MIN_IMAGE_SIDE,
    _check_size,
    _describe,
    _kind,
    _open_header,
    _read_bytes,
    _read_file,
    read_header,
)
from .exceptions import InvalidImageError
from .grey_levels import _array_to_gray, _image_to_gray, _orientation, _pil_to_gray, _reduction


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


def _decode(source: str | os.PathLike | bytes | bytearray, what: str) -> Image.Image:
    opened = _open_header(_read_bytes(source, what), what)
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
        if not data:  # load_image refuses it, naming the file (the bytes would be "image data")
            return DecodedImage(load_image(source), None)
    else:
        data = _read_bytes(source, what)  # empty or too large: refused as load_image refuses them
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


def decode_each(sources: Sequence[Any]) -> list[DecodedImage]:
    """:func:`decode` of each input, once; an error names the input's position."""
    images = []
    for index, source in enumerate(sources):
        try:
            images.append(decode(source))
        except InvalidImageError as error:
            raise InvalidImageError(f"Image {index}: {error}") from None
    return images


def is_single_image(source: Any) -> bool:
    """Whether ``source`` is one image rather than a sequence of them."""
    if isinstance(source, (str, os.PathLike, bytes, bytearray, Image.Image, dict, DecodedImage)):
        return True
    if isinstance(source, np.ndarray):
        # A last axis too short to be a width is channels: one (H, W, C) image, whose count
        # load_image refuses if it is not 1, 3 or 4 (as a stack its images would be refused anyway).
        return source.ndim == 2 or (source.ndim == 3 and (source.shape[-1] in (1, 3, 4) or source.shape[-1] < MIN_IMAGE_SIDE))
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
    # Iterable, but not a sequence of images: a file gives its lines, a memoryview its bytes as ints.
    if isinstance(images, io.IOBase):
        raise InvalidImageError(
            f"Cannot read an open file ({type(images).__name__}) as images: pass its path, or its bytes "
            f"(file.read()); accepted: {ACCEPTED_SEQUENCES}."
        )
    if isinstance(images, memoryview):
        raise InvalidImageError(f"Cannot read a memoryview as images: pass bytes(view); accepted: {ACCEPTED_SEQUENCES}.")
    try:
        sources = list(images)
    except TypeError:
        raise InvalidImageError(f"Cannot read {_kind(images)} as images; accepted: {ACCEPTED_SEQUENCES}.") from None
    if not sources:
        raise InvalidImageError(f"No images given: the sequence is empty; accepted: {ACCEPTED_SEQUENCES}.")
    return sources
