"""Heatmaps a person can read: the map blended on the scan, and a legend that says what hot means.

* :func:`overlay` blends a ``[0, 1]`` attribution map onto the scan in grey (pixels without
  evidence stay exactly the scan);
* :func:`annotate` frames such an overlay for export: the verdict and the method written
  above it, and a colour bar below it that says what the colours mean.

The maps come from :mod:`tumor_classifier.attributions` (any ``(H, W)`` array in
``[0, 1]`` does); this module knows nothing of models.

Example:
    >>> explanation = clf.explain("scan.jpg")[0]                      # doctest: +SKIP
    >>> figure = annotate(explanation.overlay, title="glioma 93%",    # doctest: +SKIP
    ...                   target="glioma", method="gradcam")
    >>> figure.save("scan_heatmap.png")                               # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .exceptions import InvalidArgumentError, InvalidImageError

#: Default colormap of the overlays (0: blue, 1: dark red).
DEFAULT_COLORMAP = "jet"
#: Exported figures narrower than this are enlarged (nearest neighbour) so the text fits.
MIN_FIGURE_WIDTH = 420

__all__ = ["DEFAULT_COLORMAP", "annotate", "overlay"]


def _gray01(image: Any) -> np.ndarray:
    """Any supported image -> float64 (H, W) grey in [0, 1].

    Same conventions as the package's preprocessing: uint8 is taken as is, 16-bit, integer
    and float data are min-max scaled over the image, alpha is composited on black (the
    MRI background).
    """
    if isinstance(image, Image.Image):
        if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
            array = np.asarray(image)
        else:
            rgba = image.convert("RGBA")
            gray = np.asarray(rgba.convert("L"), dtype=np.float64)
            alpha = np.asarray(rgba.getchannel("A"), dtype=np.float64) / 255.0
            return gray / 255.0 * alpha
    elif isinstance(image, np.ndarray):
        array = image
    else:
        raise InvalidImageError(
            f"overlay needs a PIL image or a numpy array (H, W) / (H, W, C), got "
            f"{type(image).__name__}."
        )
    if array.ndim == 3 and array.shape[2] in (1, 3, 4):
        channels = array.shape[2]
        alpha = None
        if channels == 4:
            alpha = _scale01(array[..., 3])
        if channels == 1:
            array = array[..., 0]
        else:
            # ITU-R 601 luma, the weights PIL's convert("L") uses.
            array = array[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
            if image.dtype == np.uint8:
                array = np.round(array).astype(np.uint8)
        gray = _scale01(array)
        return gray if alpha is None else gray * alpha
    if array.ndim != 2:
        raise InvalidImageError(
            f"overlay needs an image of shape (H, W) or (H, W, C) with C in 1, 3, 4; got "
            f"{array.shape}."
        )
    return _scale01(array)


def _scale01(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array.astype(np.float64) / 255.0
    if array.dtype == bool:
        return array.astype(np.float64)
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise InvalidImageError(f"Cannot read an array of dtype {array.dtype} as an image; accepted: numeric (integer, float or bool) arrays.")
    values = np.nan_to_num(array.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape)
    return (values - low) / (high - low)


def _colormap(name: str):
    import matplotlib  # deferred: only the overlays need it, and it is slow to import

    try:
        return matplotlib.colormaps[name]
    except (KeyError, ValueError, TypeError) as error:
        raise InvalidArgumentError(
            f"Unknown matplotlib colormap {name!r} (e.g. 'jet', 'inferno', 'viridis')."
        ) from error


def _check_alpha(alpha: Any) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise InvalidArgumentError(f"alpha must be a number in [0, 1], got {alpha!r}.")
    return float(alpha)


#: Below this share of pixels above 0, :func:`overlay` blends only those pixels.
_SPARSE_SHARE = 0.4


def overlay(
    image: Image.Image | np.ndarray,
    attribution: np.ndarray,
    *,
    alpha: float = 0.45,
    colormap: str = DEFAULT_COLORMAP,
) -> Image.Image:
    """Blends an attribution map onto the scan shown in grey.

    Each pixel is ``(1 - a) * grey + a * colormap(attribution)`` with
    ``a = alpha * attribution``: where the map is 0 the output is exactly the grey scan,
    and the colour grows with the evidence, so the anatomy stays readable under the map.

    Args:
        image: The scan the map belongs to: a PIL image of any mode, or a numpy array
            ``(H, W)`` / ``(H, W, C)`` with ``C`` in 1, 3, 4 (uint8 as is; other dtypes
            min-max scaled; alpha composited on black).
        attribution: Float array ``(H, W)`` in ``[0, 1]`` (values outside are clipped), the
            same ``H, W`` as ``image`` - e.g. one map of
            :func:`~tumor_classifier.attributions.compute_attributions` put back onto the
            input geometry.
        alpha: Opacity of the colour where the attribution is 1, in ``[0, 1]``.
        colormap: Name of a matplotlib colormap (``"jet"``, ``"inferno"``, ...).

    Returns:
        RGB PIL image of size ``(W, H)``.

    Raises:
        InvalidImageError: (a ``ValueError``) the image cannot be read, the attribution is
            not a finite 2-D array, or the shapes differ.
        InvalidArgumentError: (a ``ValueError``) ``alpha`` outside ``[0, 1]`` or an unknown colormap.
    """
    gray = _gray01(image)
    attribution = np.asarray(attribution)
    if attribution.ndim != 2 or attribution.shape != gray.shape:
        raise InvalidImageError(
            f"The attribution map has shape {attribution.shape} but the image is "
            f"{gray.shape} (H, W); resize the map to the image first."
        )
    if not (np.issubdtype(attribution.dtype, np.floating) or np.issubdtype(attribution.dtype, np.integer)):
        raise InvalidImageError(f"The attribution map must be numeric, got {attribution.dtype}.")
    if not np.isfinite(attribution).all():
        raise InvalidImageError("The attribution map contains NaN or infinite values.")
    alpha = _check_alpha(alpha)
    cmap = _colormap(colormap)

    # float32 and the colormap's own lookup table (a matplotlib colormap is N colours; a
    # value v takes colour min(int(v * N), N - 1), as cmap(v) does). Where the map is 0 the
    # result is the scan, so a sparse map (a floored one: 0 on the background and much of
    # the head) is blended only where it is above 0, in about half the time (512 px with a
    # tenth of it above 0: 6 ms against 17 for blending every pixel); a dense one, whose
    # selection would cost more than it saves, everywhere. The same bytes either way.
    weight = np.clip(attribution.astype(np.float32), 0.0, 1.0).ravel()
    gray = gray.astype(np.float32).ravel()
    result = np.repeat(_to_uint8(gray)[:, None], 3, axis=1)
    hot = weight > 0
    where = np.flatnonzero(hot) if hot.mean() < _SPARSE_SHARE else slice(None)
    weight, scan = weight[where], gray[where][:, None]
    table = cmap(np.arange(cmap.N))[:, :3].astype(np.float32)
    heat = table[np.minimum((weight * cmap.N).astype(np.intp), cmap.N - 1)]
    opacity = (np.float32(alpha) * weight)[:, None]
    result[where] = _to_uint8((1.0 - opacity) * scan + opacity * heat)
    return Image.fromarray(result.reshape(*attribution.shape, 3))


def _to_uint8(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] as 0-255 (rounded)."""
    return np.round(values * np.float32(255.0)).clip(0, 255).astype(np.uint8)


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVu Sans from matplotlib's data (always installed with it), else PIL's own."""
    try:
        import matplotlib

        return ImageFont.truetype(f"{matplotlib.get_data_path()}/fonts/ttf/DejaVuSans.ttf", size)
    except (ImportError, OSError):
        return ImageFont.load_default(size)


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """``text``, shortened with an ellipsis until it fits ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text.rstrip() + "..."


def annotate(
    overlay_image: Image.Image,
    *,
    title: str,
    target: str,
    method: str,
    alpha: float = 0.45,
    colormap: str = DEFAULT_COLORMAP,
) -> Image.Image:
    """An overlay framed for export: the verdict above it, a colour bar below it.

    The bar is drawn the way :func:`overlay` draws evidence (the colour at opacity
    ``alpha * value`` on mid grey), from "none" (the scan shows through) to "strongest",
    and says which class and method the map belongs to. Overlays narrower than
    :data:`MIN_FIGURE_WIDTH` are enlarged (nearest neighbour) so the text stays legible.

    Args:
        overlay_image: The heatmap on the scan, as :func:`overlay` returns it.
        title: The verdict, e.g. ``"glioma 93% (not a diagnostic device)"``.
        target: The class whose evidence the map shows.
        method: The attribution method, e.g. ``"gradcam"``.
        alpha: The opacity the overlay was drawn with.
        colormap: The colormap the overlay was drawn with.

    Returns:
        RGB PIL image: the overlay with a band of text above and the colour bar below.

    Raises:
        InvalidArgumentError: (a ``ValueError``) ``overlay_image`` is not a PIL image, ``alpha`` outside
            ``[0, 1]`` or an unknown colormap.
    """
    if not isinstance(overlay_image, Image.Image):
        raise InvalidArgumentError(f"annotate needs the overlay as a PIL image, got {type(overlay_image).__name__}.")
    alpha = _check_alpha(alpha)
    cmap = _colormap(colormap)
    picture = overlay_image.convert("RGB")
    if picture.width < MIN_FIGURE_WIDTH:
        scale = MIN_FIGURE_WIDTH / picture.width
        picture = picture.resize((MIN_FIGURE_WIDTH, max(1, round(picture.height * scale))), Image.Resampling.NEAREST)
    width = picture.width
    size = max(12, width // 36)
    font = _font(size)
    pad = size // 2
    top = size + 2 * pad
    bar_height = size
    bottom = 2 * size + bar_height + 4 * pad
    figure = Image.new("RGB", (width, top + picture.height + bottom), "white")
    figure.paste(picture, (0, top))
    draw = ImageDraw.Draw(figure)
    draw.text((pad, pad), _fit(draw, title, font, width - 2 * pad), fill="black", font=font)

    y = top + picture.height + pad
    draw.text((pad, y), _fit(draw, f"Heatmap ({method}): evidence for {target}", font, width - 2 * pad), fill="black", font=font)
    y += size + pad
    label_none, label_high = "none", "strongest"
    left = pad + int(draw.textlength(label_none, font=font)) + pad
    right = width - pad - int(draw.textlength(label_high, font=font)) - pad
    values = np.linspace(0.0, 1.0, max(2, right - left))
    opacity = alpha * values[:, None]
    colours = (1.0 - opacity) * 0.5 + opacity * cmap(values)[:, :3]  # drawn as on a mid-grey scan
    strip = np.round(np.repeat(colours[None], bar_height, axis=0) * 255).astype(np.uint8)
    figure.paste(Image.fromarray(strip), (left, y))
    draw.rectangle((left - 1, y - 1, left + strip.shape[1], y + bar_height), outline="black")
    draw.text((pad, y), label_none, fill="black", font=font)
    draw.text((right + pad, y), label_high, fill="black", font=font)
    return figure
