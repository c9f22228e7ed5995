"""Which layer the Grad-CAM family hooks, per backbone (ConvNeXt, ResNet, EfficientNet-Lite, ViT).

The only module of the package that knows the inside of each backbone: :func:`_model_type`
recognises the family from ``config.model_type`` (or the backbone attribute of its
``*ForImageClassification`` class), :func:`attribution_layer` picks the module of a stage.
Callers that know their model pass ``layer=`` to
:func:`~tumor_classifier.attributions.compute_attributions` instead.
"""

from __future__ import annotations

import numpy as np
import torch

from ..exceptions import InvalidArgumentError
from .logits import _members, _unwrap

#: Backbones :func:`attribution_layer` knows (Hugging Face ``config.model_type``).
SUPPORTED_MODEL_TYPES = ("convnext", "resnet", "vit", "efficientnet_lite")


def _model_type(model: torch.nn.Module) -> str | None:
    """The backbone family of a Hugging Face model, or None for anything else.

    An ensemble has its members' family when they all share one, else None.
    """
    members = _members(model)
    if members is not None:
        types = {_model_type(member) for member in members}
        return types.pop() if len(types) == 1 else None
    model = _unwrap(model)
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if isinstance(model_type, str) and model_type.lower() in SUPPORTED_MODEL_TYPES:
        return model_type.lower()
    # A model built from a renamed config (or a subclass) still carries the backbone under
    # the standard attribute name of its *ForImageClassification class.
    for name in SUPPORTED_MODEL_TYPES:
        if isinstance(getattr(model, name, None), torch.nn.Module):
            return name
    return None



def _vit_blocks(vit: torch.nn.Module) -> torch.nn.ModuleList:
    # transformers 5 keeps the blocks in `vit.layers`; 4.x had `vit.encoder.layer`.
    for holder, name in ((vit, "layers"), (getattr(vit, "encoder", None), "layer"),
                         (getattr(vit, "encoder", None), "layers")):
        blocks = getattr(holder, name, None) if holder is not None else None
        if isinstance(blocks, torch.nn.ModuleList) and len(blocks):
            return blocks
    raise InvalidArgumentError(f"Cannot find the encoder blocks of {type(vit).__name__}.")


def _efficientnet_stage_ends(blocks: torch.nn.ModuleList) -> list[torch.nn.Module]:
    """The last MBConv block of each resolution (the block before each stride-2 block, and the last)."""

    def strided(block: torch.nn.Module) -> bool:
        stride = getattr(getattr(block, "_depthwise_conv", None), "stride", 1)
        return max(stride) > 1 if isinstance(stride, (tuple, list)) else stride > 1

    ends = [blocks[i - 1] for i in range(1, len(blocks)) if strided(blocks[i])]
    return ends + [blocks[-1]]


def attribution_layer(model: torch.nn.Module, stage: int = -1) -> torch.nn.Module:
    """The module whose output the Grad-CAM family weighs with its gradient.

    ``stage`` counts the backbone's resolutions from the end: ``-1`` is the last spatial
    feature map (stride 32), ``-2`` the one before it (stride 16), ``-3`` stride 8. A
    stage before the first is clipped to the first.

    * ConvNeXt: ``model.convnext.encoder.stages[stage]``, output ``(n, C, h/32, w/32)``
      for ``-1``, ``(n, C, h/16, w/16)`` for ``-2``.
    * ResNet: ``model.resnet.encoder.stages[stage]``, the same strides.
    * EfficientNet-Lite: the last MBConv block of a resolution; for ``-1`` the last block
      ``model.efficientnet._blocks[-1]``, output ``(n, 320, h/32, w/32)``; for ``-2`` the
      block before the last stride-2 block (stride 16).
    * ViT: ``layernorm_before`` of the ``stage``-th encoder block from the end (every
      block has the same patch grid; ``-1`` is the last), output tokens ``(n, 1 + P, D)``;
      the CLS token is dropped and the ``P`` patch tokens are laid back on their
      ``(h / patch, w / patch)`` grid. Why not the block's *output*: after the last block
      only the CLS token reaches the classifier (final LayerNorm is per token), so the
      gradient of the logits with respect to every patch token of the last block's output
      is exactly zero and Grad-CAM there is blank. The tokens the last block reads (its
      first LayerNorm's output) still reach the logits through the block's attention to
      CLS, and they are the same tokens up to a per-token normalisation.

    * Ensemble: an ``nn.ModuleList`` of each member's layer above, in member order.
      :func:`compute_attributions` hooks every layer in such a list; hooking the list
      itself would capture nothing, because a ModuleList is never called.

    Args:
        model: A ``ConvNextForImageClassification``, ``ResNetForImageClassification``,
            ``ViTForImageClassification`` or EfficientNet-Lite (optionally wrapped in
            :class:`LogitsModel`), or an ensemble of them.
        stage: Negative index of the stage (resolution) from the end; default the last.

    Returns:
        A submodule of ``model``; for an ensemble a new ``nn.ModuleList`` of submodules.

    Raises:
        InvalidArgumentError: (a ``ValueError``) Unknown model type (the message names the supported ones),
            or ``stage`` not a negative integer.
    """
    if isinstance(stage, bool) or not isinstance(stage, (int, np.integer)) or stage >= 0:
        raise InvalidArgumentError(f"stage must be a negative integer (-1 the last stage), got {stage!r}.")
    stage = int(stage)
    members = _members(model)
    if members is not None:
        return torch.nn.ModuleList(attribution_layer(member, stage) for member in members)
    inner = _unwrap(model)
    model_type = _model_type(inner)
    if model_type in ("convnext", "resnet"):
        stages = getattr(inner, model_type).encoder.stages
        return stages[max(stage, -len(stages))]
    if model_type == "vit":
        blocks = _vit_blocks(inner.vit)
        return blocks[max(stage, -len(blocks))].layernorm_before
    if model_type == "efficientnet_lite":
        ends = _efficientnet_stage_ends(inner.efficientnet._blocks)
        return ends[max(stage, -len(ends))]
    found = getattr(getattr(inner, "config", None), "model_type", None) or type(inner).__name__
    raise InvalidArgumentError(
        f"No Grad-CAM layer known for model type {found!r}; supported model types are "
        f"{', '.join(SUPPORTED_MODEL_TYPES)}. Pass `layer=` to compute_attributions, or "
        "use method='integrated_gradients', 'smoothgrad' or 'occlusion', which work on any model."
    )
