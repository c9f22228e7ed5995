"""Train-time augmentation of whole batches as tensors, and the head mask it needs.

:class:`BatchAugmenter` applies an :class:`AugmentationConfig` (rotation, flip, zoom,
shift, blur, contrast / brightness, gamma, noise, and the intensity domain
randomisations inversion, Bezier curve and GIN) to float batches (n, 1, H, W) in
[0, 1] on their own device, so that on two CPU cores the input pipeline costs little
next to the model. :class:`AugmentationConfig` is the only copy of the augmentation
defaults.

:func:`head_mask` marks the head in such a batch; the domain randomisations keep the
background black with it, and :mod:`tumor_classifier.attributions` zeroes maps outside
it. It lives here rather than in :mod:`tumor_classifier.preprocessing` so that this
module imports nothing of the package (only torch): attributions can use the mask, and
preprocessing can re-export these names for older imports, without an import cycle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Callable

import torch
import torch.nn.functional as F


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
#: (the image's 5% quantile) to its peak, as in
#: :func:`~tumor_classifier.preprocessing.head_bounding_box`.
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
