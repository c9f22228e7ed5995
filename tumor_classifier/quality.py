"""Does an input look like a brain MRI slice? A transparent, rule-based check.

A classifier trained on MRI slices gives a confident-looking answer for any picture.
:func:`assess_image` flags inputs that do not look like an MRI slice, so the app and
the CLI can say so instead of showing a tumor type. It is a heuristic built on what
every slice of the training data shares, not a learned out-of-distribution detector:

* grayscale content (a colour photo has strongly different channels);
* contrast, and some dark background: slices show the head on black, so some pixels,
  or part of the image border, are near black (a slice cropped tight may have no black
  border, so both must be missing to flag);
* a head that fills a reasonable part of the frame, not the whole of it.

These rules were set by hand and pass some colour photos (scikit-learn's ``china.jpg``
scores just under the colour limit). :mod:`tumor_classifier.mri_check` holds the learned
check, measured on held-out brain MRI and non-MRI images; it reuses the measurements
below (:func:`colourfulness`, :func:`measure_gray`) as some of its features.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from .decoding import load_image
from .preprocessing import head_bounding_box

#: Thresholds, chosen to pass every slice of the shared training data with room to spare.
MAX_COLOURFULNESS = 0.15
MIN_DARK_FRACTION = 0.005
MIN_DARK_BORDER = 0.05
MIN_HEAD_FRACTION = 0.08
MIN_CONTRAST = 0.03


@dataclass
class ImageQuality:
    """Outcome of :func:`assess_image`.

    Attributes:
        looks_like_mri: True when every check passed.
        reasons: One sentence per failed check, for people.
        scores: The measured values behind the checks.
    """

    looks_like_mri: bool
    reasons: list[str] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)


def colourfulness(source: Any) -> float:
    """Mean channel spread on the [0, 1] scale (0 for gray content).

    Args:
        source: An input as :func:`~tumor_classifier.decoding.load_image` accepts, or
            an RGB(A) array (H, W, C), uint8 or float in [0, 1].

    Returns:
        ``3 * mean(|channel - mean of the channels|)``: 0 for gray pixels, about 0.5 for
        strongly coloured ones; 0 when the source cannot be read (the decoder reports that).
    """
    if isinstance(source, np.ndarray):
        array = source
    else:
        try:
            if isinstance(source, Image.Image):
                image = source
            elif isinstance(source, dict):
                return colourfulness(source.get("bytes") or source.get("path"))
            else:
                import io
                from pathlib import Path

                data = source if isinstance(source, (bytes, bytearray)) else Path(source).read_bytes()
                image = Image.open(io.BytesIO(data))
            if image.mode not in ("RGB", "RGBA", "P", "CMYK", "YCbCr"):
                return 0.0
            image = image.convert("RGB")
            image.thumbnail((128, 128))
            array = np.asarray(image)
        except (OSError, ValueError, TypeError):
            return 0.0
    if array.ndim != 3 or array.shape[-1] < 3:
        return 0.0
    rgb = array[..., :3].astype(np.float32)
    if rgb.max() > 1.0:
        rgb = rgb / (255.0 if array.dtype == np.uint8 else float(rgb.max()))
    return float(np.abs(rgb - rgb.mean(axis=-1, keepdims=True)).mean() * 3)


_colourfulness = colourfulness  # the name it had before it was public


def measure_gray(gray: Image.Image) -> dict[str, float]:
    """The gray-level measurements behind the rules (on a copy at most 256 px a side).

    Args:
        gray: "L" PIL image, as :func:`~tumor_classifier.decoding.load_image` returns.

    Returns:
        ``dark_fraction`` (share of pixels under 10% of the bright level, the 99.5th
        percentile), ``dark_border_fraction`` (the same share on the outermost rows and
        columns), ``head_fraction`` (area of :func:`head_bounding_box` over the image's)
        and ``contrast`` (standard deviation of the [0, 1] pixels); all in [0, 1].
    """
    gray = gray.copy()
    gray.thumbnail((256, 256))
    pixels = np.asarray(gray, dtype=np.float32) / 255.0
    bright = float(np.percentile(pixels, 99.5)) or 1.0
    dark = pixels < 0.1 * bright
    border = np.concatenate([dark[0], dark[-1], dark[:, 0], dark[:, -1]])
    left, top, right, bottom = head_bounding_box(np.asarray(gray))
    return {
        "dark_fraction": float(dark.mean()),
        "dark_border_fraction": float(border.mean()),
        "head_fraction": float((right - left) * (bottom - top) / pixels.size),
        "contrast": float(pixels.std()),
    }


def assess_image(source: Any, gray: Image.Image | None = None) -> ImageQuality:
    """Checks whether one input looks like a brain MRI slice.

    Args:
        source: Any input :func:`~tumor_classifier.decoding.load_image` accepts.
        gray: The input already decoded by ``load_image``, to skip decoding it again.

    Returns:
        The :class:`ImageQuality`.

    Raises:
        InvalidImageError: The input cannot be read as an image.
    """
    gray = gray if gray is not None else load_image(source)
    scores = {"colourfulness": colourfulness(source), **measure_gray(gray)}
    reasons = []
    if scores["colourfulness"] > MAX_COLOURFULNESS:
        reasons.append("it is a colour image; MRI slices are grayscale")
    if scores["contrast"] < MIN_CONTRAST:
        reasons.append("it is nearly uniform")
    elif scores["dark_fraction"] < MIN_DARK_FRACTION and scores["dark_border_fraction"] < MIN_DARK_BORDER:
        reasons.append("it has no dark background around the head")
    if scores["head_fraction"] < MIN_HEAD_FRACTION:
        reasons.append("no head-sized bright region was found")
    return ImageQuality(not reasons, reasons, scores)
