"""The Grad-CAM family: Grad-CAM, its fine and multi-scale variants, HiResCAM, Grad-CAM++.

A method here is a :class:`_CamSpec` (how activations are weighed, which stages are read,
how stages combine); :func:`_cam` hooks the layers (:func:`_cam_groups`, by default from
:mod:`.layers`), runs one forward pass per chunk and returns raw, not yet normalised maps
together with the logits of the same pass.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from ..exceptions import InvalidArgumentError
from .layers import attribution_layer
from .logits import LogitsModel, _contrast


@dataclass(frozen=True)
class _CamSpec:
    """One member of the Grad-CAM family.

    Attributes:
        weighting: ``"gradcam"`` (channel weights = spatial mean of the gradient),
            ``"hirescam"`` (element-wise gradient x activation) or ``"gradcam++"``.
        stages: Stages to hook, counted from the end (``-1`` the last, stride 32; ``-2``
            stride 16; ``-3`` stride 8); see :func:`attribution_layer`.
        combine: How the maps of several stages are combined after each is masked to
            the head and divided by its maximum: ``"mean"``, ``"product"``, or
            ``"geometric"`` (the product's ``1 / len(stages)`` power).
    """

    weighting: str
    stages: tuple[int, ...]
    combine: str = "mean"


#: The Grad-CAM family: method name -> how it weighs activations and which stages it reads.
#: Chosen on the tumour-box benchmark (see :func:`default_method`).
_CAM_SPECS: dict[str, _CamSpec] = {
    "gradcam": _CamSpec("gradcam", (-1,)),
    "gradcam_fine": _CamSpec("gradcam", (-2,)),
    "gradcam_multiscale": _CamSpec("gradcam", (-3, -2, -1), "product"),
    "hirescam": _CamSpec("hirescam", (-2,)),
    "gradcam_plusplus": _CamSpec("gradcam++", (-2,)),
}
#: Methods of the Grad-CAM family (need a layer; accept ``target=None``).
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
    if weighting == "hirescam":
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


def _cam(
    logits_model: LogitsModel,
    pixel_values: torch.Tensor,
    target: torch.Tensor | None,
    groups: Sequence[Sequence[torch.nn.Module]],
    batch_size: int,
    spec: _CamSpec,
    heads: torch.Tensor | None,
    versus: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM-family maps ``(n, h, w)`` (not normalised) and the logits ``(n, k)`` of the same passes.

    ``groups`` holds one list of layers per stage; a list holds one layer per ensemble
    member. Every layer is hooked during the same forward pass and each gives its own
    raw map from the gradient of the one target logit. The maps of a group are averaged
    (members); with several groups each group's mean is masked to the head (``heads``,
    float ``(n, h, w)``, or None), divided by its maximum, and the groups are combined
    as ``spec.combine`` says.
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
    handles = []
    try:
        for index, layer in enumerate(layers):
            handles.append(layer.register_forward_hook(keep_output(index)))
        for start in range(0, pixel_values.shape[0], batch_size):
            stop = start + batch_size
            # The input requires grad so that the activation is in the autograd graph even
            # though the parameters are frozen (see _attribution_state).
            chunk = pixel_values[start:stop].detach().clone().requires_grad_(True)
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
            chunk_target = logits.argmax(dim=1) if target is None else target[start:stop]
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
            if len(stage_maps) == 1:
                maps.append(stage_maps[0])
                continue
            scaled = []
            for stage_map in stage_maps:
                if heads is not None:
                    # Mask before scaling: a stage's peak on the background must not set its scale.
                    stage_map = stage_map * heads[start:stop]
                peak = stage_map.flatten(1).amax(dim=1).clamp_min(1e-30)
                scaled.append(stage_map / peak[:, None, None])
            stacked = torch.stack(scaled)
            if spec.combine == "mean":
                maps.append(stacked.mean(dim=0))
            else:
                product = stacked.prod(dim=0)
                maps.append(product.pow(1.0 / len(scaled)) if spec.combine == "geometric" else product)
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
