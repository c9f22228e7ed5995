"""Post-processing of raw maps: the head mask, percentile clipping and blur, min-max normalisation.

Shared by every method, so a map means the same whatever produced it (see the package
docstring for the format).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from ..augmentation import head_mask


def _normalise(maps: torch.Tensor) -> np.ndarray:
    """Per-map min-max to ``[0, 1]``; a map with no spread (e.g. all zero) becomes all zero."""
    maps = torch.nan_to_num(maps.detach().float(), nan=0.0, posinf=0.0, neginf=0.0).cpu()
    flat = maps.reshape(maps.shape[0], -1)
    low = flat.min(dim=1, keepdim=True).values
    spread = flat.max(dim=1, keepdim=True).values - low
    # A constant map says nothing about *where* the evidence is; zero keeps the overlay
    # showing the plain scan instead of one flat colour.
    scaled = torch.where(spread > 0, (flat - low) / spread.clamp_min(1e-30), torch.zeros_like(flat))
    return scaled.clamp_(0.0, 1.0).reshape(maps.shape).numpy().astype(np.float32, copy=False)



def _peak_normalised(maps: torch.Tensor) -> torch.Tensor:
    """``(n, h, w)`` maps divided by their own maximum (an all-zero map stays zero)."""
    peaks = maps.flatten(1).amax(dim=1).clamp_min(1e-30)
    return maps / peaks[:, None, None]


def _head_masks(pixel_values: torch.Tensor) -> torch.Tensor:
    """Float masks ``(n, h, w)``: 1 on the head of each model input, 0 elsewhere.

    :func:`~tumor_classifier.augmentation.head_mask` compares pixels with levels taken
    from the image's own quantiles and maximum, so it gives the same mask for any
    increasing affine map of the intensities: the mean over channels of the normalised
    input (``(x - mean_c) / std_c`` of a grey scan repeated on the channels) is one, and
    this module need not know the normalisation. An image where no head is found (no
    contrast) gets an all-one mask: its map is left as it is rather than blanked.
    """
    grey = pixel_values.detach().float().mean(dim=1, keepdim=True)
    masks = head_mask(grey)[:, 0]
    found = masks.flatten(1).any(dim=1)
    return (masks | ~found[:, None, None]).float()



def _gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of finite ``(n, h, w)`` maps, ``sigma`` in pixels (0: unchanged), edges replicated.

    As two matrix products, ``rows @ map @ columns.T`` (:func:`_blur_matrix`): a
    convolution with one input channel and a kernel of ``6 sigma`` taps is slow on CPUs
    (1.7 ms for a 160 px map at sigma 15 on two threads, against 0.6 ms). A NaN or
    infinite pixel would spread over the whole map (0 x inf is NaN): :func:`_display`
    removes them first.
    """
    if sigma <= 0:
        return maps
    rows = _blur_matrix(maps.shape[-2], float(sigma)).to(device=maps.device, dtype=maps.dtype)
    columns = _blur_matrix(maps.shape[-1], float(sigma)).to(device=maps.device, dtype=maps.dtype)
    return rows @ maps @ columns.T


@functools.lru_cache(maxsize=16)
def _blur_matrix(size: int, sigma: float) -> torch.Tensor:
    """``(size, size)`` float64 CPU matrix of a 1-D Gaussian blur whose edge pixels repeat beyond the border.

    Made on the CPU (a sum in a fixed order, so a map is the same on every device) and
    kept: a display blurs each of up to five maps per image with the same two matrices.
    Callers must not change it.
    """
    radius = max(1, int(math.ceil(3 * sigma)))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-offsets.pow(2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    # Row i takes kernel[o] from pixel i + o, clamped to the image: what replicate padding reads.
    sources = (torch.arange(size)[:, None] + torch.arange(-radius, radius + 1)).clamp(0, size - 1)
    return torch.zeros((size, size), dtype=torch.float64).scatter_add_(1, sources, kernel.expand(size, -1).contiguous())


def _display(maps: torch.Tensor, heads: torch.Tensor | None, percentile: float, sigma: float) -> torch.Tensor:
    """Pixel-level maps made readable: clipped at their ``percentile`` (within the head), then blurred.

    Clipping first: the few largest gradients (often single pixels) would otherwise get
    the whole colour scale. Blurring after clipping turns the clipped plateau into a peak
    where the strongest pixels lie densest, so the maximum is not just the first pixel
    of a plateau.
    """
    # A NaN or infinite value (an overflowing gradient) is no evidence, as _normalise treats it;
    # left in, the blur would spread it over the whole map and the percentile would be NaN.
    maps = torch.nan_to_num(maps.float(), nan=0.0, posinf=0.0, neginf=0.0)
    if percentile < 100:
        clipped = []
        for index, single in enumerate(maps):
            ceiling = _head_quantile(single, heads, index, percentile)
            clipped.append(single if ceiling is None else torch.minimum(single, ceiling))
        maps = torch.stack(clipped)
    return _gaussian_blur(maps, sigma)


def _floored(maps: torch.Tensor, heads: torch.Tensor | None, percentile: float) -> torch.Tensor:
    """``(n, h, w)`` maps less their ``percentile`` (within the head), negatives to 0.

    Blurred gradient maps are nowhere zero: without a floor half the head of a typical
    slice sits above half the peak and the whole head is coloured. Subtracting the head's
    median (``percentile`` 50) shows only what stands out from the head's usual level; the
    order of the pixels above it, and so the maximum, is unchanged.
    """
    if percentile <= 0:
        return maps
    floored = []
    for index, single in enumerate(maps):
        level = _head_quantile(single, heads, index, percentile)
        floored.append(single if level is None else (single - level).clamp_min(0.0))
    return torch.stack(floored)


def _head_quantile(single: torch.Tensor, heads: torch.Tensor | None, index: int, percentile: float) -> torch.Tensor | None:
    """The ``percentile`` of map ``single`` inside head ``index`` (the whole map without heads); ``None`` for an empty head."""
    inside = single if heads is None else single[heads[index] > 0]
    return _quantile(inside.flatten().float(), percentile / 100.0) if inside.numel() else None


def _quantile(values: torch.Tensor, q: float) -> torch.Tensor:
    """``torch.quantile(values, q)`` (linear interpolation) of a 1-D tensor from two order
    statistics: ``kthvalue`` selects in linear time where ``quantile`` sorts (0.05 against
    1.3 ms for a 160 px map's head, and a map is shown after two to five of them)."""
    position = q * (values.numel() - 1)
    below = math.floor(position)
    low = torch.kthvalue(values, below + 1).values
    if position == below:
        return low
    high = torch.kthvalue(values, below + 2).values
    return torch.lerp(low, high, position - below)
