"""The Grad-CAM family: Grad-CAM, its fine and multi-scale variants, HiResCAM, Grad-CAM++,
and a smoothed CAM of positive evidence over four stages.

A method here is a :class:`_CamSpec` (how activations are weighed, which stages are read,
how stages combine); :func:`_cam` hooks the layers (:func:`_cam_groups`, by default from
:mod:`.layers`), runs one forward pass per chunk of images (of an image's noisy copies for
a ``smooth`` spec) and returns raw, not yet normalised maps together with the logits of
the same passes.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F

from ..exceptions import InvalidArgumentError
from .layers import attribution_layer
from .logits import LogitsModel, _contrast
from .maps import _display
from .noise import noisy_copies


@dataclass(frozen=True)
class _CamSpec:
    """One member of the Grad-CAM family.

    Attributes:
        weighting: ``"gradcam"`` (channel weights = spatial mean of the gradient),
            ``"hirescam"`` (element-wise gradient x activation), ``"gradcam++"``, or
            ``"positive"`` (element-wise positive gradient x positive activation).
        stages: Stages to hook, counted from the end (``-1`` the last, stride 32; ``-2``
            stride 16; ``-3`` stride 8); see :func:`attribution_layer`.
        combine: How the maps of several stages are combined after each is masked to
            the head and divided by its maximum: ``"mean"``, ``"product"``, or
            ``"geometric"`` (the product's ``1 / len(stages)`` power).
        smooth: SmoothGrad-style: each stage's map is the mean over ``n_samples`` noisy
            copies of the image (:func:`~.noise.noisy_copies`), and is shown as SmoothGrad's
            is (clipped at a percentile inside the head, blurred) before it is scaled and
            combined. Needs a target class (the noisy copies' own predictions are not
            the image's).
    """

    weighting: str
    stages: tuple[int, ...]
    combine: str = "mean"
    smooth: bool = False


#: The Grad-CAM family: method name -> how it weighs activations and which stages it reads.
#: Chosen on the tumour-box benchmark (see :func:`default_method`).
_CAM_SPECS: dict[str, _CamSpec] = {
    "gradcam": _CamSpec("gradcam", (-1,)),
    "gradcam_fine": _CamSpec("gradcam", (-2,)),
    "gradcam_multiscale": _CamSpec("gradcam", (-3, -2, -1), "product"),
    "hirescam": _CamSpec("hirescam", (-2,)),
    "gradcam_plusplus": _CamSpec("gradcam++", (-2,)),
    "smoothcam_contrast": _CamSpec("positive", (-4, -3, -2, -1), smooth=True),
}
#: Methods of the Grad-CAM family (need a layer; all but the ``smooth`` ones, ``smoothcam_contrast``,
#: accept ``target=None``).
CAM_METHODS = tuple(_CAM_SPECS)


def _token_grid(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(n, T, D) tokens -> (n, D, gh, gw) patch grid, dropping a leading CLS token if present."""
    count = tokens.shape[1]
    for prefix in (1, 0):  # ViT: CLS + patches; other token models: patches only
        patches = count - prefix
        if patches < 1:
            continue
        grid_h = max(1, round(math.sqrt(patches * height / width)))
        if patches % grid_h:
            continue
        grid_w = patches // grid_h
        # The grid must have about the input's aspect ratio (patches are near square).
        ratio = (grid_h / grid_w) / (height / width)
        if 2 / 3 <= ratio <= 3 / 2:
            grid = tokens[:, prefix:, :].reshape(tokens.shape[0], grid_h, grid_w, tokens.shape[2])
            return grid.permute(0, 3, 1, 2)
    raise InvalidArgumentError(
        f"Cannot lay {count} tokens out on a patch grid for a {height}x{width} input "
        "(expected CLS + patches or patches only)."
    )



def _layer_cam(
    layer: torch.nn.Module,
    activation: torch.Tensor,
    gradient: torch.Tensor | None,
    weighting: str,
    height: int,
    width: int,
) -> torch.Tensor:
    """One layer's raw map ``(n, height, width)`` (ReLU'd, upsampled bilinearly, not normalised)."""
    if gradient is None:
        gradient = torch.zeros_like(activation)
    activation, gradient = activation.detach().float(), gradient.float()
    if activation.ndim == 3:  # transformer tokens (n, T, D)
        activation = _token_grid(activation, height, width)
        gradient = _token_grid(gradient, height, width)
    if activation.ndim != 4:
        raise InvalidArgumentError(
            f"Grad-CAM needs a (n, C, h, w) feature map or (n, T, D) tokens; layer "
            f"{type(layer).__name__} gave shape {tuple(activation.shape)}."
        )
    if weighting == "positive":
        # Where a channel is active and more of it would raise the score: positive
        # gradient times positive activation, summed over channels, so a channel that
        # speaks against the class elsewhere cannot cancel it here.
        cam = (torch.relu(gradient) * torch.relu(activation)).sum(dim=1, keepdim=True)
    elif weighting == "hirescam":
        # Draelos & Carin 2020: the element-wise product, so each cell keeps its own
        # gradient; summing it over cells and channels gives back the first-order
        # (gradient x activation) contribution of the layer to the logit.
        cam = (gradient * activation).sum(dim=1, keepdim=True)
    else:
        if weighting == "gradcam++":
            # Chattopadhay et al. 2018, eq. 19 with an exponential of the score:
            # alpha = g^2 / (2 g^2 + sum_ab A_ab g^3), weight = sum_ij alpha relu(g).
            squared = gradient.pow(2)
            denominator = 2 * squared + activation.sum(dim=(2, 3), keepdim=True) * squared * gradient
            alpha = torch.where(
                (gradient != 0) & (denominator != 0),
                squared / torch.where(denominator != 0, denominator, torch.ones_like(denominator)),
                torch.zeros_like(gradient),
            )
            weights = (alpha * torch.relu(gradient)).sum(dim=(2, 3), keepdim=True)
        else:
            # Selvaraju et al. 2017: channel weights = spatially averaged gradient.
            weights = gradient.mean(dim=(2, 3), keepdim=True)
        cam = (weights * activation).sum(dim=1, keepdim=True)
    # ReLU keeps the regions that speak *for* the target class.
    cam = torch.relu(cam)
    return F.interpolate(cam, size=(height, width), mode="bilinear", align_corners=False)[:, 0]


@dataclass(frozen=True)
class _Smoothing:
    """How a ``smooth`` spec's maps are made and shown (the SmoothGrad options of
    :func:`~tumor_classifier.attributions.compute_attributions`)."""

    n_samples: int
    noise_level: float
    seed: int
    clip_percentile: float
    sigma: float


def _passes(
    pixel_values: torch.Tensor, target: torch.Tensor | None, batch_size: int, smoothing: _Smoothing | None
) -> Iterator[tuple[int, int, torch.Tensor, torch.Tensor | None, bool]]:
    """``(first image, end image, model input, its targets, whether the images are done)`` of each forward pass.

    Without ``smoothing`` a pass is a chunk of ``batch_size`` images; with it, up to
    ``batch_size`` noisy copies of one image (its passes follow each other, the last one
    says it is done).
    """
    n = pixel_values.shape[0]
    if smoothing is None:
        for start in range(0, n, batch_size):
            chunk_target = None if target is None else target[start:start + batch_size]
            yield start, min(start + batch_size, n), pixel_values[start:start + batch_size], chunk_target, True
        return
    for index in range(n):
        copies = noisy_copies(pixel_values[index:index + 1], smoothing.n_samples, smoothing.noise_level, smoothing.seed)
        for first in range(0, smoothing.n_samples, batch_size):
            part = copies[first:first + batch_size]
            done = first + batch_size >= smoothing.n_samples
            yield index, index + 1, part, target[index:index + 1].expand(part.shape[0]), done


def _combined(
    stage_maps: Sequence[torch.Tensor], heads: torch.Tensor | None, spec: _CamSpec, smoothing: _Smoothing | None
) -> torch.Tensor:
    """One map per image from the stages' maps: see :func:`_cam`."""
    if len(stage_maps) == 1 and smoothing is None:
        return stage_maps[0]
    scaled = []
    for stage_map in stage_maps:
        if heads is not None:
            # Mask before scaling: a stage's peak on the background must not set its scale.
            stage_map = stage_map * heads
        if smoothing is not None:
            stage_map = _display(stage_map, heads, smoothing.clip_percentile, smoothing.sigma)
        peak = stage_map.flatten(1).amax(dim=1).clamp_min(1e-30)
        scaled.append(stage_map / peak[:, None, None])
    stacked = torch.stack(scaled)
    if spec.combine == "mean":
        return stacked.mean(dim=0)
    product = stacked.prod(dim=0)
    return product.pow(1.0 / len(scaled)) if spec.combine == "geometric" else product


def _cam(
    logits_model: LogitsModel,
    pixel_values: torch.Tensor,
    target: torch.Tensor | None,
    groups: Sequence[Sequence[torch.nn.Module]],
    batch_size: int,
    spec: _CamSpec,
    heads: torch.Tensor | None,
    versus: int | None = None,
    smoothing: _Smoothing | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM-family maps ``(n, h, w)`` (not normalised) and the logits of the same passes.

    ``groups`` holds one list of layers per stage; a list holds one layer per ensemble
    member. Every layer is hooked during the same forward pass and each gives its own
    raw map from the gradient of the one target logit. The maps of a group are averaged
    (members); with several groups each group's mean is masked to the head (``heads``,
    float ``(n, h, w)``, or None), divided by its maximum, and the groups are combined
    as ``spec.combine`` says.

    A ``smooth`` spec needs ``smoothing`` and ``target``: each stage's map of an image is
    the mean over its noisy copies, shown with :func:`~.maps._display` before it is
    scaled (also for a single stage), and the logits returned are the copies' (``(n *
    n_samples, k)``), not the image's.
    """
    height, width = pixel_values.shape[-2:]
    layers = [layer for group in groups for layer in group]
    captured: dict[int, torch.Tensor] = {}
    owner = threading.get_ident()

    def keep_output(index: int):
        def hook(_module: torch.nn.Module, _inputs: Any, output: Any) -> None:
            # Another thread's forward pass of this module (e.g. a predict that holds
            # only the passes lock, not this one's) is none of this call's business.
            if threading.get_ident() != owner:
                return
            # Blocks of some models return tuples (hidden_states, attentions, ...).
            captured[index] = output[0] if isinstance(output, (tuple, list)) else output

        return hook

    maps, all_logits = [], []
    sums: list[torch.Tensor] = []  # a smooth spec: the stage maps of one image, summed over its copies
    handles = []
    try:
        for index, layer in enumerate(layers):
            handles.append(layer.register_forward_hook(keep_output(index)))
        for start, stop, inputs, chunk_target, done in _passes(pixel_values, target, batch_size, smoothing):
            # The input requires grad so that the activation is in the autograd graph even
            # though the parameters are frozen (see _attribution_state).
            chunk = inputs.detach().clone().requires_grad_(True)
            captured.clear()
            logits = logits_model(chunk)
            activations = [captured.get(index) for index in range(len(layers))]
            for layer, activation in zip(layers, activations):
                if not isinstance(activation, torch.Tensor) or not activation.requires_grad:
                    raise InvalidArgumentError(
                        f"The Grad-CAM layer {type(layer).__name__} did not produce a tensor "
                        "that depends on the input during the forward pass."
                    )
            # Images are independent in eval mode, so one backward of the summed target
            # logits gives every image its own gradient.
            if chunk_target is None:
                chunk_target = logits.argmax(dim=1)
            all_logits.append(logits.detach())
            score = _contrast(logits, versus).gather(1, chunk_target[:, None]).sum()
            gradients = torch.autograd.grad(score, activations, allow_unused=True)
            cams = [
                _layer_cam(layer, activation, gradient, spec.weighting, height, width)
                for layer, activation, gradient in zip(layers, activations, gradients)
            ]
            stage_maps, offset = [], 0
            for group in groups:
                stage_maps.append(torch.stack(cams[offset:offset + len(group)]).mean(dim=0))
                offset += len(group)
            image_heads = None if heads is None else heads[start:stop]
            if smoothing is None:
                maps.append(_combined(stage_maps, image_heads, spec, None))
                continue
            copies = [stage_map.sum(dim=0, keepdim=True) for stage_map in stage_maps]
            sums = copies if not sums else [total + more for total, more in zip(sums, copies)]
            if done:
                maps.append(_combined([total / smoothing.n_samples for total in sums], image_heads, spec, smoothing))
                sums = []
    finally:
        for handle in handles:
            handle.remove()
    return torch.cat(maps), torch.cat(all_logits)



def _cam_groups(
    model: torch.nn.Module, spec: _CamSpec, layer: torch.nn.Module | Sequence[Any] | None
) -> list[list[torch.nn.Module]]:
    """The layers a Grad-CAM-family method hooks: one list per stage, one layer per member."""

    def flat(item: Any) -> list[torch.nn.Module]:
        return list(item) if isinstance(item, (torch.nn.ModuleList, list, tuple)) else [item]

    if layer is None:
        groups, seen = [], set()
        for stage in spec.stages:
            group = flat(attribution_layer(model, stage))  # raises for unknown models before any work
            key = tuple(id(item) for item in group)
            if key not in seen:  # a model with fewer stages clips several to the same one
                seen.add(key)
                groups.append(group)
    elif isinstance(layer, (list, tuple)) and layer and all(
        isinstance(item, (list, tuple, torch.nn.ModuleList)) for item in layer
    ):
        groups = [flat(item) for item in layer]  # one inner list per stage
    else:
        groups = [flat(layer)]
    if not groups or not all(group and all(isinstance(item, torch.nn.Module) for item in group) for group in groups):
        raise InvalidArgumentError(
            f"layer must be a torch.nn.Module, a non-empty list of them (ensemble members), or a "
            f"list of such lists (stages); got {type(layer).__name__}."
        )
    return groups
