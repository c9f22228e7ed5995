"""Attribution heatmaps (Grad-CAM, Integrated Gradients, Occlusion) and their overlay on a scan.

Every method answers the same question - *which pixels of this input speak for class
``target``?* - and returns maps in one format, so the estimator, the CLI and the Space can
switch methods freely:

* ``(n, h, w)`` float32 in ``[0, 1]``, ``h, w`` equal to the input's;
* positive evidence only (what raises the target logit), channels summed;
* each map min-max normalised on its own, so maps are comparable in *shape* but not in
  absolute strength across images; an all-zero (or constant) map stays all zero.

Methods:

``gradcam``
    Gradient-weighted class activation map on the last spatial feature map (see
    :func:`attribution_layer`). One forward and one backward pass per image; coarse (one
    value per feature-map cell, 7 x 7 for a 224 px ConvNeXt / ResNet, 14 x 14 for a
    ViT-B/16), upsampled bilinearly to the input.
``integrated_gradients``
    Captum's Integrated Gradients from ``baseline`` to the input, ``n_steps`` Gauss-Legendre
    steps. Pixel-level and model-agnostic, ``n_steps`` times the cost of Grad-CAM.
``occlusion``
    Captum's Occlusion: the drop of the target logit when a ``occlusion_window`` square
    (all channels) is replaced by ``baseline``. Model-agnostic and easy to explain to a
    clinician, but it needs ``((h - window) / stride + 1) ** 2`` forward passes per image
    (729 for 224 px with the defaults).

Ensembles (:class:`tumor_classifier.ensemble.EnsembleForImageClassification`, or any
module with a non-empty ``members`` ``nn.ModuleList`` whose forward combines them) are
explained as one model: Integrated Gradients and Occlusion attribute the ensemble's
logits directly; Grad-CAM hooks every member's layer in one forward pass of the ensemble
and averages the members' maps (see :func:`compute_attributions`).

This module imports nothing of the package except :mod:`tumor_classifier.exceptions`, so
it can be used (and tested) on any model; ensembles are recognised by their ``members``.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .exceptions import InvalidImageError, TumorClassifierError

METHODS = ("gradcam", "integrated_gradients", "occlusion")
#: Backbones :func:`attribution_layer` knows (Hugging Face ``config.model_type``).
SUPPORTED_MODEL_TYPES = ("convnext", "resnet", "vit")

__all__ = [
    "METHODS",
    "SUPPORTED_MODEL_TYPES",
    "LogitsModel",
    "attribution_layer",
    "compute_attributions",
    "default_method",
    "overlay",
]


class LogitsModel(torch.nn.Module):
    """Wraps a classification model so that ``forward(pixel_values)`` returns the logits tensor.

    Captum's attribution classes index the forward output with ``target`` and therefore need
    a plain tensor, while Hugging Face models return a ``ModelOutput``. The wrapped model is
    a registered submodule, so ``.eval()`` / ``.train()`` / ``.to()`` reach it.

    Args:
        model: A Hugging Face image-classification model, or any ``nn.Module`` whose
            ``forward(pixel_values)`` returns a logits tensor ``(n, num_classes)``, a
            ``ModelOutput`` / dict with ``logits``, or a tuple whose first item is the logits.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        # Wrapping a wrapper would only add a level of indirection to every lookup.
        self.model = model.model if isinstance(model, LogitsModel) else model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Runs the model.

        Args:
            pixel_values: Float tensor ``(n, C, h, w)``, normalised as the model expects.

        Returns:
            Logits tensor ``(n, num_classes)``.

        Raises:
            TumorClassifierError: The model output holds no logits tensor.
        """
        output = self.model(pixel_values)
        if isinstance(output, torch.Tensor):
            return output
        logits = getattr(output, "logits", None)
        if logits is None and isinstance(output, dict):
            logits = output.get("logits")
        if logits is None and isinstance(output, (tuple, list)) and output:
            logits = output[0]
        if not isinstance(logits, torch.Tensor):
            raise TumorClassifierError(
                f"Cannot find logits in the output of {type(self.model).__name__} "
                f"(got {type(output).__name__}); expected a tensor, a ModelOutput with "
                "`.logits`, or a tuple whose first item is the logits."
            )
        return logits


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.model if isinstance(model, LogitsModel) else model


def _members(model: torch.nn.Module) -> list[torch.nn.Module] | None:
    """The member models of an ensemble (a non-empty ``members`` ModuleList), else None."""
    members = getattr(_unwrap(model), "members", None)
    if isinstance(members, torch.nn.ModuleList) and len(members):
        return list(members)
    return None


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


def default_method(model: torch.nn.Module) -> str:
    """The method ``"auto"`` resolves to for ``model``.

    * ConvNeXt, ResNet -> ``"gradcam"``: the last stage is a spatial feature map (stride
      32) that feeds the head through global average pooling, exactly the setting Grad-CAM
      was designed for; it is class-discriminative, smooth, and costs one backward pass.
    * ViT -> ``"integrated_gradients"``. Evidence: 18 tiny ViTs (32 px, patch 4, 2
      blocks, seeds 0-9 / 0-7) trained for 60 steps to tell noise with a bright 8 px
      square from noise without (half of them with a bright bar in *every* image as a
      skull-like distractor), scored by the share of map mass inside the square divided
      by the square's area share (1.0 = chance, 16 = perfect). Grad-CAM (on the tokens the
      last block reads, see :func:`attribution_layer`) was below chance for 2 of 18
      models (0.07x, 0.6x) and near zero (< 0.5x) on its worst image for 4 of 18: the
      sign of a patch token's weight x activation is unstable in a ViT, and the ReLU then
      keeps the wrong tokens. Integrated Gradients was below chance only for the one
      model that had not learned the task (accuracy 0.89, Grad-CAM failed there too),
      with mean 6-13x elsewhere, and had the higher mean on 11 of 18. Hooking the
      block's input before its LayerNorm instead was worse still. Both methods passed the
      model-randomisation check (map correlation with an untrained model's <= 0.25).
      IG costs ``n_steps`` (32) forward/backward passes against Grad-CAM's one, which is
      acceptable for single-image explanations. Occlusion localised best on ViTs but
      needs ~700 passes at 224 px, too slow for a default. The same procedure on tiny
      ConvNeXts gave Grad-CAM 3.0-5.1x vs IG 1.9-4.8x, supporting the choice above.
    * Anything else -> ``"integrated_gradients"``, which needs no knowledge of the
      architecture (Grad-CAM needs a layer, see :func:`attribution_layer`).
    * An ensemble -> the choice for its members' backbone (Integrated Gradients if the
      members mix backbones).

    Args:
        model: The classification model (optionally wrapped in :class:`LogitsModel`).

    Returns:
        One of :data:`METHODS`.
    """
    if _model_type(model) in ("convnext", "resnet"):
        return "gradcam"
    return "integrated_gradients"  # ViT (evidence above) and any other model


def _vit_blocks(vit: torch.nn.Module) -> torch.nn.ModuleList:
    # transformers 5 keeps the blocks in `vit.layers`; 4.x had `vit.encoder.layer`.
    for holder, name in ((vit, "layers"), (getattr(vit, "encoder", None), "layer"),
                         (getattr(vit, "encoder", None), "layers")):
        blocks = getattr(holder, name, None) if holder is not None else None
        if isinstance(blocks, torch.nn.ModuleList) and len(blocks):
            return blocks
    raise TumorClassifierError(f"Cannot find the encoder blocks of {type(vit).__name__}.")


def attribution_layer(model: torch.nn.Module) -> torch.nn.Module:
    """The module whose output Grad-CAM weighs with its gradient.

    * ConvNeXt: ``model.convnext.encoder.stages[-1]``, output ``(n, C, h/32, w/32)``.
    * ResNet: ``model.resnet.encoder.stages[-1]``, output ``(n, C, h/32, w/32)``.
    * ViT: ``layernorm_before`` of the last encoder block, output tokens ``(n, 1 + P, D)``;
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
        model: A ``ConvNextForImageClassification``, ``ResNetForImageClassification`` or
            ``ViTForImageClassification`` (optionally wrapped in :class:`LogitsModel`), or
            an ensemble of them.

    Returns:
        A submodule of ``model``; for an ensemble a new ``nn.ModuleList`` of submodules.

    Raises:
        TumorClassifierError: Unknown model type; the message names the supported ones.
    """
    members = _members(model)
    if members is not None:
        return torch.nn.ModuleList(attribution_layer(member) for member in members)
    inner = _unwrap(model)
    model_type = _model_type(inner)
    if model_type in ("convnext", "resnet"):
        backbone = getattr(inner, model_type)
        return backbone.encoder.stages[-1]
    if model_type == "vit":
        return _vit_blocks(inner.vit)[-1].layernorm_before
    found = getattr(getattr(inner, "config", None), "model_type", None) or type(inner).__name__
    raise TumorClassifierError(
        f"No Grad-CAM layer known for model type {found!r}; supported model types are "
        f"{', '.join(SUPPORTED_MODEL_TYPES)}. Pass `layer=` to compute_attributions, or "
        "use method='integrated_gradients' or 'occlusion', which work on any model."
    )


@contextlib.contextmanager
def _attribution_state(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode and frozen parameters while attributing; the caller's state afterwards.

    Eval mode because dropout would make maps random and batch norm in train mode would
    mix the images of a batch (and update running statistics). Parameters are frozen so
    that no parameter gradient is computed (cheaper) or accumulated into ``.grad``: all
    methods differentiate with respect to inputs / activations only. The flags are saved
    per module / parameter because a partly frozen model (fine-tuning a head) must come
    back exactly as it was.
    """
    modes = [(module, module.training) for module in model.modules()]
    grads = [(param, param.requires_grad) for param in model.parameters()]
    try:
        model.eval()
        for param, _ in grads:
            param.requires_grad_(False)
        # inference_mode(False) too: a caller inside `torch.inference_mode()` would
        # otherwise get tensors that cannot be part of an autograd graph.
        with torch.inference_mode(False), torch.enable_grad():
            yield
    finally:
        for module, training in modes:
            module.training = training
        for param, requires_grad in grads:
            param.requires_grad_(requires_grad)


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise TumorClassifierError(f"`{name}` must be a positive integer, got {value!r}.")
    return int(value)


def _check_pixel_values(pixel_values: Any) -> torch.Tensor:
    if not isinstance(pixel_values, torch.Tensor):
        raise InvalidImageError(
            f"pixel_values must be a torch.Tensor (n, C, h, w), got {type(pixel_values).__name__}."
        )
    if pixel_values.ndim != 4 or 0 in pixel_values.shape:
        raise InvalidImageError(
            f"pixel_values must have shape (n, C, h, w) with no empty dimension, got "
            f"{tuple(pixel_values.shape)}."
        )
    if not pixel_values.is_floating_point():
        raise InvalidImageError(
            f"pixel_values must be a float tensor (normalised as the model takes it), got "
            f"{pixel_values.dtype}."
        )
    if not torch.isfinite(pixel_values).all():
        raise InvalidImageError("pixel_values contains NaN or infinite values.")
    return pixel_values


def _check_target(target: Any, n: int, model: torch.nn.Module, device: torch.device) -> torch.Tensor:
    try:
        tensor = torch.as_tensor(target)
    except (TypeError, ValueError, RuntimeError) as error:
        raise TumorClassifierError(f"target must be class indices, got {target!r}.") from error
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise TumorClassifierError(f"target must hold integer class indices, got {tensor.dtype}.")
    if tensor.ndim == 0:  # one class for every image is a convenient shorthand
        tensor = tensor.expand(n)
    if tensor.shape != (n,):
        raise TumorClassifierError(
            f"target must have shape ({n},) to match pixel_values, got {tuple(tensor.shape)}."
        )
    num_labels = getattr(getattr(_unwrap(model), "config", None), "num_labels", None)
    upper = num_labels if isinstance(num_labels, int) and num_labels > 0 else None
    if (tensor < 0).any() or (upper is not None and (tensor >= upper).any()):
        raise TumorClassifierError(
            f"target holds class indices {tensor.tolist()} outside [0, {upper or 'num_classes'})."
        )
    return tensor.to(device=device, dtype=torch.long)


def _check_baseline(baseline: Any, pixel_values: torch.Tensor) -> torch.Tensor:
    """Expands ``baseline`` (None, scalar, (C,), (1, C, 1, 1), ... ) to ``pixel_values``' shape."""
    if baseline is None:
        baseline = 0.0
    try:
        tensor = torch.as_tensor(baseline, dtype=pixel_values.dtype, device=pixel_values.device)
        if tensor.ndim == 1 and tensor.numel() == pixel_values.shape[1] != 1:
            tensor = tensor.view(1, -1, 1, 1)  # one value per channel, e.g. normalised black
        return tensor.expand_as(pixel_values)
    except (TypeError, ValueError, RuntimeError) as error:
        got = tuple(getattr(baseline, "shape", ())) or type(baseline).__name__
        raise TumorClassifierError(
            f"baseline must be a scalar or a tensor broadcastable to pixel_values "
            f"{tuple(pixel_values.shape)} (typically (1, C, 1, 1)), got {got}."
        ) from error


def _autograd_ready(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.clone() if tensor.is_inference() else tensor


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
    raise TumorClassifierError(
        f"Cannot lay {count} tokens out on a patch grid for a {height}x{width} input "
        "(expected CLS + patches or patches only)."
    )


def _gradcam(
    logits_model: LogitsModel,
    pixel_values: torch.Tensor,
    target: torch.Tensor,
    layers: Sequence[torch.nn.Module],
    batch_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM maps ``(n, h, w)`` and the logits ``(n, k)`` of the same forward passes.

    With several ``layers`` (an ensemble: one per member) every layer is hooked during
    the same forward pass, each gives its own (un-normalised) map from the gradient of
    the one target logit, and the maps are averaged.
    """
    height, width = pixel_values.shape[-2:]
    captured: dict[int, torch.Tensor] = {}

    def keep_output(index: int):
        def hook(_module: torch.nn.Module, _inputs: Any, output: Any) -> None:
            # Blocks of some models return tuples (hidden_states, attentions, ...).
            captured[index] = output[0] if isinstance(output, (tuple, list)) else output

        return hook

    maps, all_logits = [], []
    handles = []
    try:
        for index, layer in enumerate(layers):
            handles.append(layer.register_forward_hook(keep_output(index)))
        for start in range(0, pixel_values.shape[0], batch_size):
            # The input requires grad so that the activation is in the autograd graph even
            # though the parameters are frozen (see _attribution_state).
            chunk = pixel_values[start:start + batch_size].detach().clone().requires_grad_(True)
            captured.clear()
            logits = logits_model(chunk)
            activations = [captured.get(index) for index in range(len(layers))]
            for layer, activation in zip(layers, activations):
                if not isinstance(activation, torch.Tensor) or not activation.requires_grad:
                    raise TumorClassifierError(
                        f"The Grad-CAM layer {type(layer).__name__} did not produce a tensor "
                        "that depends on the input during the forward pass."
                    )
            # Images are independent in eval mode, so one backward of the summed target
            # logits gives every image its own gradient.
            chunk_target = logits.argmax(dim=1) if target is None else target[start:start + batch_size]
            all_logits.append(logits.detach())
            score = logits.gather(1, chunk_target[:, None]).sum()
            gradients = torch.autograd.grad(score, activations, allow_unused=True)
            cams = []
            for layer, activation, gradient in zip(layers, activations, gradients):
                if gradient is None:
                    gradient = torch.zeros_like(activation)
                activation = activation.detach()
                if activation.ndim == 3:  # transformer tokens (n, T, D)
                    activation = _token_grid(activation, height, width)
                    gradient = _token_grid(gradient, height, width)
                if activation.ndim != 4:
                    raise TumorClassifierError(
                        f"Grad-CAM needs a (n, C, h, w) feature map or (n, T, D) tokens; layer "
                        f"{type(layer).__name__} gave shape {tuple(activation.shape)}."
                    )
                # Channel weights = spatially averaged gradient (Selvaraju et al. 2017); ReLU
                # keeps the regions that speak *for* the target class.
                weights = gradient.float().mean(dim=(2, 3), keepdim=True)
                cam = torch.relu((weights * activation.float()).sum(dim=1, keepdim=True))
                cams.append(F.interpolate(cam, size=(height, width), mode="bilinear", align_corners=False)[:, 0])
            maps.append(torch.stack(cams).mean(dim=0))
    finally:
        for handle in handles:
            handle.remove()
    return torch.cat(maps), torch.cat(all_logits)


def _integrated_gradients(
    logits_model: LogitsModel,
    pixel_values: torch.Tensor,
    target: torch.Tensor,
    baseline: torch.Tensor,
    batch_size: int,
    n_steps: int,
) -> torch.Tensor:
    from captum.attr import IntegratedGradients  # heavy import, needed only here

    explainer = IntegratedGradients(logits_model)
    maps = []
    # Captum runs n_steps x (images in the call) forward passes in slices of
    # internal_batch_size, but never fewer images than the call holds; chunking the
    # images by the same size bounds memory to ~batch_size model inputs at a time.
    for start in range(0, pixel_values.shape[0], batch_size):
        stop = start + batch_size
        attribution = explainer.attribute(
            pixel_values[start:stop].detach(),
            baselines=baseline[start:stop],
            target=target[start:stop],
            n_steps=n_steps,
            method="gausslegendre",
            internal_batch_size=batch_size,
        )
        # Sum channels first (a pixel's contribution is the sum over its channels, and
        # a grey scan replicated to RGB should not be split three ways), then keep the
        # positive part: pixels whose move away from the baseline raised the target logit.
        maps.append(torch.relu(attribution.detach().sum(dim=1)))
    return torch.cat(maps)


def _occlusion(
    logits_model: LogitsModel,
    pixel_values: torch.Tensor,
    target: torch.Tensor,
    baseline: torch.Tensor,
    batch_size: int,
    window: int,
    stride: int,
) -> torch.Tensor:
    from captum.attr import Occlusion  # heavy import, needed only here

    channels, height, width = pixel_values.shape[1:]
    window_h, window_w = min(window, height), min(window, width)
    stride_h, stride_w = min(stride, window_h), min(stride, window_w)
    explainer = Occlusion(logits_model)
    maps = []
    for start in range(0, pixel_values.shape[0], batch_size):
        stop = start + batch_size
        chunk = pixel_values[start:stop].detach()
        attribution = explainer.attribute(
            chunk,
            # The window spans all channels: occluding one colour channel of a grey scan
            # would show the model an image it never saw in training.
            sliding_window_shapes=(channels, window_h, window_w),
            strides=(channels, stride_h, stride_w),
            baselines=baseline[start:stop],
            target=target[start:stop],
            # perturbations x images per forward pass stays at about batch_size.
            perturbations_per_eval=max(1, batch_size // chunk.shape[0]),
        )
        # Positive part: windows whose occlusion *lowered* the target logit.
        maps.append(torch.relu(attribution.detach().sum(dim=1)))
    return torch.cat(maps)


def compute_attributions(
    model: torch.nn.Module,
    pixel_values: torch.Tensor,
    target: torch.Tensor | Sequence[int] | int,
    method: str = "gradcam",
    *,
    internal_batch_size: int = 16,
    n_steps: int = 32,
    baseline: torch.Tensor | float | None = None,
    occlusion_window: int = 16,
    occlusion_stride: int = 8,
    layer: torch.nn.Module | Sequence[torch.nn.Module] | None = None,
    return_logits: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Attribution maps of ``target`` for each image, one ``[0, 1]`` map per image.

    The model comes back in the train/eval mode and with the ``requires_grad`` flags it
    had, no hook stays attached, and no parameter ``.grad`` is touched.

    Ensembles (a module with a ``members`` ModuleList, e.g.
    :class:`~tumor_classifier.ensemble.EnsembleForImageClassification`): Integrated
    Gradients and Occlusion attribute the ensemble's logits. Grad-CAM runs one forward
    pass of the ensemble (so ``target=None`` is the *ensemble's* predicted class and
    ``return_logits`` gives the ensemble's logits), computes each member's raw Grad-CAM
    map (ReLU of the gradient-weighted activations of its layer, before any
    normalisation) from the gradient of the ensemble's target logit, averages these raw
    maps and min-max normalises the mean once. The ensemble's logit is the mean of the
    members' logits over a positive temperature, so each member's raw map is its own
    Grad-CAM map times the same positive constant: the result is the normalised mean of
    the members' raw Grad-CAM maps for that target. A member whose logit reacts more
    strongly to its features weighs more, as it does in the ensemble's decision.

    Args:
        model: A Hugging Face ``ConvNextForImageClassification``,
            ``ViTForImageClassification`` or ``ResNetForImageClassification``, an ensemble
            of them, or any ``nn.Module`` whose ``forward(pixel_values)`` returns logits or
            an output with ``.logits`` (Grad-CAM on such a model needs ``layer``).
        pixel_values: Float tensor ``(n, C, h, w)`` exactly as the model takes it (already
            normalised), on the model's device.
        target: Class index to explain per image: int tensor / sequence ``(n,)``, or one
            int for all images. ``None`` (Grad-CAM only): the predicted class, taken from
            the same forward pass, so explaining a prediction costs one forward and one
            backward pass in all.
        method: One of :data:`METHODS`, or ``"auto"`` for :func:`default_method`.
        internal_batch_size: Most model inputs per forward pass (images for Grad-CAM,
            interpolation steps x images for IG, occluded copies x images for Occlusion);
            bounds memory.
        n_steps: Integrated Gradients interpolation steps (Gauss-Legendre).
        baseline: The "absence of signal" input for IG and Occlusion, in the model's
            *normalised* space: a scalar, a ``(C,)`` / ``(1, C, 1, 1)`` tensor, or anything
            broadcastable to ``pixel_values``. Default 0, which is the dataset *mean* after
            mean/std normalisation, not black. This module does not know the normalisation,
            so the caller should pass the normalised black value,
            ``(0 - mean) / std`` per channel, as a ``(1, C, 1, 1)`` tensor.
        occlusion_window: Side in pixels of the occluding square (clipped to the image).
        occlusion_stride: Step in pixels between occluding squares (clipped to the window).
        layer: Module Grad-CAM hooks; default :func:`attribution_layer` ``(model)``. Its
            output must be ``(n, C, h', w')`` or tokens ``(n, T, D)``. A list, tuple or
            ``nn.ModuleList`` of modules hooks each of them and averages their raw maps
            (what an ensemble's default layer is).
        return_logits: Also return the logits ``(n, k)`` of the unperturbed images (from
            Grad-CAM's own forward pass, or one extra pass for the other methods).

    Returns:
        Float32 array ``(n, h, w)`` in ``[0, 1]``, each map min-max normalised on its own;
        positive evidence only (ReLU of Grad-CAM, positive part of the channel-summed
        IG / Occlusion attribution); a map without positive evidence is all zero.

    Raises:
        TumorClassifierError: Unknown method, unknown model type for Grad-CAM, a bad
            ``target``, ``baseline`` or size argument.
        InvalidImageError: ``pixel_values`` is not a finite float ``(n, C, h, w)`` tensor.
    """
    if method == "auto":
        method = default_method(model)
    if method not in METHODS:
        raise TumorClassifierError(
            f"Unknown attribution method {method!r}; accepted methods are "
            f"{', '.join(METHODS)} (or 'auto')."
        )
    pixel_values = _check_pixel_values(pixel_values)
    batch_size = _positive_int("internal_batch_size", internal_batch_size)
    n_steps = _positive_int("n_steps", n_steps)
    window = _positive_int("occlusion_window", occlusion_window)
    stride = _positive_int("occlusion_stride", occlusion_stride)
    if target is None and method != "gradcam":
        raise TumorClassifierError(f"target=None (the predicted class) is supported for gradcam only, not {method!r}.")
    if target is not None:
        target = _check_target(target, pixel_values.shape[0], model, pixel_values.device)
    layers: list[torch.nn.Module] = []
    if method == "gradcam":
        if layer is None:
            layer = attribution_layer(model)  # raises for unknown models before any work
        layers = list(layer) if isinstance(layer, (torch.nn.ModuleList, list, tuple)) else [layer]
        if not layers or not all(isinstance(item, torch.nn.Module) for item in layers):
            raise TumorClassifierError(
                f"layer must be a torch.nn.Module or a non-empty list of them, got {type(layer).__name__}."
            )
    logits_model = LogitsModel(model)

    with _attribution_state(model):
        # Tensors made under the caller's `torch.inference_mode()` cannot enter autograd;
        # a copy made here (outside inference mode) can.
        pixel_values = _autograd_ready(pixel_values)
        target = None if target is None else _autograd_ready(target)
        logits = None
        if method == "gradcam":
            maps, logits = _gradcam(logits_model, pixel_values, target, layers, batch_size)
        else:
            base = _autograd_ready(_check_baseline(baseline, pixel_values))
            if method == "integrated_gradients":
                maps = _integrated_gradients(logits_model, pixel_values, target, base, batch_size, n_steps)
            else:
                maps = _occlusion(logits_model, pixel_values, target, base, batch_size, window, stride)
            if return_logits:
                with torch.no_grad():
                    logits = torch.cat([logits_model(pixel_values[i : i + batch_size]) for i in range(0, pixel_values.shape[0], batch_size)])
    if return_logits:
        return _normalise(maps), logits.detach().float().cpu().numpy()
    return _normalise(maps)


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
        raise InvalidImageError(f"Cannot read an array of dtype {array.dtype} as an image.")
    values = np.nan_to_num(array.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape)
    return (values - low) / (high - low)


def overlay(
    image: Image.Image | np.ndarray,
    attribution: np.ndarray,
    *,
    alpha: float = 0.45,
    colormap: str = "jet",
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
            same ``H, W`` as ``image`` - e.g. one map of :func:`compute_attributions` put
            back onto the input geometry.
        alpha: Opacity of the colour where the attribution is 1, in ``[0, 1]``.
        colormap: Name of a matplotlib colormap (``"jet"``, ``"inferno"``, ...).

    Returns:
        RGB PIL image of size ``(W, H)``.

    Raises:
        InvalidImageError: (a ``ValueError``) the image cannot be read, the attribution is
            not a finite 2-D array, or the shapes differ.
        TumorClassifierError: ``alpha`` outside ``[0, 1]`` or an unknown colormap.
    """
    import matplotlib  # deferred: only the overlay needs it, and it is slow to import

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
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise TumorClassifierError(f"alpha must be a number in [0, 1], got {alpha!r}.")
    try:
        cmap = matplotlib.colormaps[colormap]
    except (KeyError, ValueError, TypeError) as error:
        raise TumorClassifierError(
            f"Unknown matplotlib colormap {colormap!r} (e.g. 'jet', 'inferno', 'viridis')."
        ) from error

    weight = np.clip(attribution.astype(np.float64), 0.0, 1.0)
    heat = cmap(weight)[..., :3]
    opacity = (alpha * weight)[..., None]
    blended = (1.0 - opacity) * gray[..., None] + opacity * heat
    return Image.fromarray(np.round(blended * 255.0).clip(0, 255).astype(np.uint8))
