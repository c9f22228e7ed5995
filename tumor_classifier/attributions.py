"""Attribution heatmaps: the Grad-CAM family, SmoothGrad, Integrated Gradients, Occlusion.

Every method answers the same question - *which pixels of this input speak for class
``target``?* - and returns maps in one format, so the estimator, the CLI and the Space can
switch methods freely:

* ``(n, h, w)`` float32 in ``[0, 1]``, ``h, w`` equal to the input's;
* positive evidence only (what raises the target logit), channels summed;
* zero outside the head (``head_only=True``, the default): the head mask of the model
  input (:func:`tumor_classifier.augmentation.head_mask`) is applied before
  normalisation, so a map never points at the background;
* each map min-max normalised on its own, so maps are comparable in *shape* but not in
  absolute strength across images; an all-zero (or constant) map stays all zero.

Methods (costs as ``TumorClassifier.explain`` time over ``predict`` time for the shipped
ConvNeXt at 128 px on one CPU thread, medians of ``benchmarks/localisation.py``; the
estimator gets ``gradcam``'s prediction from the same pass, and runs ``predict`` first for
every other method; localisation figures in :func:`default_method`):

``gradcam``
    Gradient-weighted class activation map (Selvaraju et al. 2017) on the last spatial
    feature map (:func:`attribution_layer`, stride 32: 4 x 4 at 128 px, 7 x 7 at 224 px
    for ConvNeXt / ResNet; 14 x 14 tokens for a ViT-B/16). One forward and one backward
    pass (3x ``predict``); coarse. Suits ConvNeXt, ResNet and EfficientNet-Lite at 224 px
    and up; at 128 px their 4 x 4 grid can only say which quarter of the head.
``gradcam_fine``
    Grad-CAM on the stage before the last (stride 16: 8 x 8 at 128 px). One forward and a
    slightly deeper backward pass (4x ``predict``). Suits ConvNeXt, ResNet and
    EfficientNet-Lite at small inputs (and their ensembles).
``gradcam_multiscale``
    The head-masked, max-normalised Grad-CAM maps of the last three stages (stride 8, 16,
    32), upsampled to the input and multiplied: a region must be evidence at every scale.
    On the previous shipped ensemble the product of three stages beat their mean and
    geometric mean and two-stage variants (pointing game 20 % vs 17 %, 20 %, 7 %; mass in
    box 9.4 % vs 6.1 %, 6.9 %, 5.7-5.9 %); on the fine-tuned ConvNeXt all were at noise
    level. One forward and a backward pass to stride 8 (4x ``predict``). ConvNeXt,
    ResNet, EfficientNet-Lite and their ensembles.
``hirescam``
    HiResCAM (Draelos & Carin 2020): ``relu(sum_c dY/dA_c * A_c)``, the element-wise
    gradient x activation summed over channels, without Grad-CAM's spatial averaging of
    the gradient, on the stage before the last. On a last stage that feeds the head
    through global average pooling the gradient is constant over space and HiResCAM equals
    Grad-CAM; one stage earlier it is not. Cost as ``gradcam_fine`` (4x ``predict``).
    ConvNeXt, ResNet, EfficientNet-Lite and their ensembles.
``gradcam_plusplus``
    Grad-CAM++ (Chattopadhay et al. 2018; the closed form with ``exp`` of the score that
    pytorch-grad-cam uses) on the stage before the last. Cost as ``gradcam_fine`` (4x
    ``predict``). ConvNeXt, ResNet, EfficientNet-Lite and their ensembles. Unlike the
    other methods its map depends on the scale of the logit (its weights are a non-linear
    function of the gradient), so a temperature, or an ensemble's mean over members,
    changes it slightly.
``smoothgrad``
    SmoothGrad (Smilkov et al. 2017) of the input gradient: the gradient of the target
    logit, averaged over ``n_samples`` copies of the input with Gaussian noise (standard
    deviation ``noise_level`` x the image's value range, the same noise on every channel
    so a grey scan stays grey), channels summed, absolute value; shown clipped at its
    ``clip_percentile`` (inside the head) and blurred with a Gaussian of
    ``smoothing_sigma`` pixels, because a raw gradient map is speckle. Pixel-level and
    model-agnostic, any backbone; ``n_samples`` (16) forward/backward passes of the whole
    network (25x ``predict``). Partly image-driven: its maps correlate 0.3 with those of
    a randomly initialised model (Integrated Gradients: 0.1).
``integrated_gradients``
    Captum's Integrated Gradients from ``baseline`` to the input, ``n_steps`` Gauss-Legendre
    steps. Pixel-level and model-agnostic, ``n_steps`` forward/backward passes (40x
    ``predict`` with 32 steps, 8x with 4, which localised as well on the shipped model).
    Suits ViT (see :func:`default_method`) and any model.
``occlusion``
    Captum's Occlusion: the drop of the target logit when a ``occlusion_window`` square
    (all channels) is replaced by ``baseline``. Model-agnostic and easy to explain to a
    clinician, but it needs ``((h - window) / stride + 1) ** 2`` forward passes per image
    (729 for 224 px with the defaults; about 140 times ``predict`` at 128 px).

The Grad-CAM family (``gradcam``, ``gradcam_fine``, ``gradcam_multiscale``, ``hirescam``,
``gradcam_plusplus``) is :data:`CAM_METHODS`; these need a layer (known for
:data:`SUPPORTED_MODEL_TYPES`, or passed as ``layer=``) and can explain the predicted
class from their own forward pass (``target=None``).

Ensembles (:class:`tumor_classifier.ensemble.EnsembleForImageClassification`, or any
module with a non-empty ``members`` ``nn.ModuleList`` whose forward combines them) are
explained as one model: SmoothGrad, Integrated Gradients and Occlusion attribute the
ensemble's logits directly; the Grad-CAM family hooks every member's layer(s) in one
forward pass of the ensemble and averages the members' raw maps per stage (see
:func:`compute_attributions`).

Thread safety: one attribution at a time per model. The model's train/eval flags and
``requires_grad`` flags are changed and restored under a per-model re-entrant lock held
for the whole attribution (state change, hooks, backward passes, restore), so threads
sharing a model (a web server's workers) queue instead of corrupting each other's maps
and the model's state. Hooks ignore forward passes of other threads (e.g. a concurrent
``predict``).

This module imports nothing of the package except :mod:`tumor_classifier.exceptions` and
:func:`tumor_classifier.augmentation.head_mask` (that module imports nothing of the package), so
it can be used (and tested) on any model; ensembles are recognised by their ``members``.
The overlay of a map on its scan, and its legend, live in :mod:`tumor_classifier.visualization`.
"""

from __future__ import annotations

import contextlib
import math
import threading
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .exceptions import InvalidArgumentError, InvalidImageError
from .locking import PerObjectLocks
from .augmentation import head_mask
from .visualization import overlay  # its home until 2026-11-30; kept importable from here


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
#: SmoothGrad variants: ``abs_first`` averages |gradient| (magnitude) instead of
#: taking |mean gradient| (noise with alternating signs cancels in the mean).
_SMOOTHGRAD_SPECS: dict[str, dict[str, Any]] = {"smoothgrad": {"abs_first": False}}

#: Methods of the Grad-CAM family (need a layer; accept ``target=None``).
CAM_METHODS = tuple(_CAM_SPECS)
#: Every method :func:`compute_attributions` accepts (besides ``"auto"``).
METHODS = ("gradcam", "integrated_gradients", "occlusion", *CAM_METHODS[1:], *_SMOOTHGRAD_SPECS)
#: Backbones :func:`attribution_layer` knows (Hugging Face ``config.model_type``).
SUPPORTED_MODEL_TYPES = ("convnext", "resnet", "vit", "efficientnet_lite")

__all__ = [
    "CAM_METHODS",
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
            InvalidArgumentError: (a ``ValueError``) The model output holds no logits tensor.
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
            raise InvalidArgumentError(
                f"Cannot find logits in the output of {type(self.model).__name__} "
                f"(got {type(output).__name__}); expected a tensor, a ModelOutput with "
                "`.logits`, or a tuple whose first item is the logits."
            )
        return logits


def _contrast(logits: torch.Tensor, versus: int | None) -> torch.Tensor:
    """Logits with ``logits[:, versus]`` subtracted from every other class's.

    Explaining class ``c`` then explains ``logit_c - logit_versus``: what makes the image
    ``c`` *rather than* ``versus`` (e.g. a tumour class rather than no tumour), not what
    every class shares (that it is a brain). The ``versus`` column is kept as it is, so
    explaining ``versus`` itself still explains its own logit.
    """
    if versus is None:
        return logits
    reference = logits[:, versus : versus + 1]
    contrasted = logits - reference
    return torch.cat([contrasted[:, :versus], reference, contrasted[:, versus + 1 :]], dim=1)


class _ContrastModel(torch.nn.Module):
    """A :class:`LogitsModel` whose logits go through :func:`_contrast`."""

    def __init__(self, logits_model: torch.nn.Module, versus: int) -> None:
        super().__init__()
        self.logits_model = logits_model
        self.versus = versus

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return _contrast(self.logits_model(pixel_values), self.versus)


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

    * EfficientNet-Lite -> ``"hirescam"`` (on the stride-16 stage). Rule: the best
      pointing game (then mass in box) among the methods that cost at most about 3x
      ``predict``. Evidence: 60 tumour slices with boxes (the first 20 per class of
      ``../shared/data/tumour-boxes``; head-masked maps; one CPU thread) on the shipped
      EfficientNet-Lite0 (ImageNet-pretrained, fine-tuned at 128 px; commit of
      2026-11-30). Pointing game (all / glioma / meningioma / pituitary), mass in box,
      and explain time with predict at 22-100 ms on a loaded machine:

      ==========================  =====  =====  =====  =====  ======  =========
      hirescam                    51.7   40     80     35     15.9 %  ~1x
      hirescam ``versus=notumor`` 46.7   45     80     15     14.4 %  ~1x
      gradcam                     35.0   50     55      0      8.0 %  ~3x
      gradcam ``versus=notumor``  38.3   55     60      0      8.3 %  ~1x
      gradcam_fine                28.3    5     35     45      8.5 %  ~2.5x
      gradcam_plusplus            23.3   10     40     20      8.5 %  ~1x
      integrated_gradients, 4     48.3   30     95     20     13.1 %  ~23x
      ==========================  =====  =====  =====  =====  ======  =========

      The head's centre points at the tumour in 40 % of these slices: HiResCAM beats
      that model-free baseline, Grad-CAM does not. On all 600 slices
      (``benchmarks/localisation.py --threads 1``): hirescam 46.5 % (41.0 / 70.5 /
      28.0), mass in box 13.3 %, 3.8x ``predict`` with the overlay; gradcam 29.3 %
      (2.8x); gradcam_fine 24.5 %; gradcam_plusplus 14.5 %; the head's centre 31.2 %.
      Pituitary boxes are small and every method misses most of them.
    * ConvNeXt (one model or an ensemble), ResNet -> ``"gradcam"``. On the fine-tuned
      ConvNeXt shipped before (40-80-160-320, 128 px; commit 277909b), 60 slices: every
      method within the budget peaked on the scalp and skull (gradcam 5.0 %,
      gradcam_fine 6.7 %, gradcam_multiscale 5.0 %, hirescam 3.3 %, gradcam_plusplus
      8.3 % pointing game); only Integrated Gradients beat the head's centre (46.7 %
      with 32 steps, 51.7 % with 4, at 39x and 8x ``predict``). Their pointing games do
      not differ beyond chance, so the cheapest is kept (the only one computed in the
      prediction's own pass). On the ensemble of four such ConvNeXt before it: gradcam
      5.0 %, gradcam_fine 13.3 %, gradcam_multiscale 20.0 %.
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
      needs ~700 passes at 224 px, too slow for a default.
    * Anything else -> ``"integrated_gradients"``, which needs no knowledge of the
      architecture (the Grad-CAM family needs a layer, see :func:`attribution_layer`).
    * An ensemble -> the choice for its members' backbone (Integrated Gradients if the
      members mix backbones).

    Args:
        model: The classification model (optionally wrapped in :class:`LogitsModel`).

    Returns:
        One of :data:`METHODS`.
    """
    model_type = _model_type(model)
    if model_type == "efficientnet_lite":
        return "hirescam"
    if model_type in ("convnext", "resnet"):
        return "gradcam"
    return "integrated_gradients"  # ViT (evidence above) and any other model


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


#: One re-entrant lock per model (weak keys: it goes with the model).
_model_lock = PerObjectLocks()


@contextlib.contextmanager
def _model_locks(model: torch.nn.Module) -> Iterator[None]:
    """Holds the locks of the model and, for an ensemble, of each member.

    A member may be attributed on its own by another caller while the ensemble is; its
    flags are the same objects. Locks are taken in one global order (by ``id``), so two
    callers that share some modules cannot deadlock; they are re-entrant, so a nested
    call in the same thread goes through.
    """
    root = _unwrap(model)
    modules = {id(root): root}
    for member in _members(root) or []:
        modules.setdefault(id(member), member)
    with contextlib.ExitStack() as stack:
        for key in sorted(modules):
            stack.enter_context(_model_lock(modules[key]))
        yield


@contextlib.contextmanager
def _attribution_state(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode and frozen parameters while attributing; the caller's state afterwards.

    Eval mode because dropout would make maps random and batch norm in train mode would
    mix the images of a batch (and update running statistics). Parameters are frozen so
    that no parameter gradient is computed (cheaper) or accumulated into ``.grad``: all
    methods differentiate with respect to inputs / activations only. The flags are saved
    per module / parameter because a partly frozen model (fine-tuning a head) must come
    back exactly as it was.

    The whole block runs under the model's lock (see :func:`_model_locks`): without it,
    two threads save each other's half-changed flags (the second saves "eval, frozen"),
    the model stays frozen in eval mode for good, and a thread restoring train mode in
    the middle of another's backward pass changes that thread's maps.
    """
    with _model_locks(model):
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
        raise InvalidArgumentError(f"`{name}` must be a positive integer, got {value!r}.")
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
        raise InvalidArgumentError(f"target must be class indices, got {target!r}.") from error
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise InvalidArgumentError(f"target must hold integer class indices, got {tensor.dtype}.")
    if tensor.ndim == 0:  # one class for every image is a convenient shorthand
        tensor = tensor.expand(n)
    if tensor.shape != (n,):
        raise InvalidArgumentError(
            f"target must have shape ({n},) to match pixel_values, got {tuple(tensor.shape)}."
        )
    num_labels = getattr(getattr(_unwrap(model), "config", None), "num_labels", None)
    upper = num_labels if isinstance(num_labels, int) and num_labels > 0 else None
    if (tensor < 0).any() or (upper is not None and (tensor >= upper).any()):
        raise InvalidArgumentError(
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
        raise InvalidArgumentError(
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
    raise InvalidArgumentError(
        f"Cannot lay {count} tokens out on a patch grid for a {height}x{width} input "
        "(expected CLS + patches or patches only)."
    )


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
            # Another thread's forward pass of this module (e.g. a concurrent predict,
            # which takes no lock) is none of this call's business.
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


def _smoothgrad(
    logits_model: LogitsModel,
    pixel_values: torch.Tensor,
    target: torch.Tensor,
    batch_size: int,
    n_samples: int,
    noise_level: float,
    seed: int,
    abs_first: bool,
) -> torch.Tensor:
    """SmoothGrad sensitivity ``(n, h, w)``: |mean over noisy copies of the channel-summed gradient|.

    The noise of image ``i`` is drawn from a CPU generator seeded with ``seed`` for every
    image, so a map depends on the image only (not on its place in the batch, nor on
    ``batch_size``, nor on the device) and a call is repeatable.
    """
    n, _, height, width = pixel_values.shape
    maps = []
    for index in range(n):
        image = pixel_values[index:index + 1].detach()
        spread = float(image.amax() - image.amin())
        generator = torch.Generator().manual_seed(seed)
        # One noise plane for all channels: a grey scan repeated on three channels stays
        # grey, as the model saw it in training.
        noise = torch.randn((n_samples, 1, height, width), generator=generator, dtype=torch.float32)
        noise = (noise * noise_level * spread).to(device=image.device, dtype=image.dtype)
        total = torch.zeros((height, width), dtype=torch.float32, device=image.device)
        for start in range(0, n_samples, batch_size):
            noisy = (image + noise[start:start + batch_size]).requires_grad_(True)
            logits = logits_model(noisy)
            (gradient,) = torch.autograd.grad(logits[:, int(target[index])].sum(), noisy)
            # Channels summed: the derivative with respect to the grey value.
            gradient = gradient.float().sum(dim=1)
            total += (gradient.abs() if abs_first else gradient).sum(dim=0)
        maps.append((total / n_samples).abs())
    return torch.stack(maps)


def _gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(n, h, w)`` maps, ``sigma`` in pixels (0: unchanged)."""
    if sigma <= 0:
        return maps
    radius = max(1, int(math.ceil(3 * sigma)))
    offsets = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    kernel = torch.exp(-offsets.pow(2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    images = maps[:, None]
    images = F.conv2d(F.pad(images, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    images = F.conv2d(F.pad(images, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1))
    return images[:, 0]


def _display(maps: torch.Tensor, heads: torch.Tensor | None, percentile: float, sigma: float) -> torch.Tensor:
    """Pixel-level maps made readable: clipped at their ``percentile`` (within the head), then blurred.

    Clipping first: the few largest gradients (often single pixels) would otherwise get
    the whole colour scale. Blurring after clipping turns the clipped plateau into a peak
    where the strongest pixels lie densest, so the maximum is not just the first pixel
    of a plateau.
    """
    maps = maps.float()
    if percentile < 100:
        clipped = []
        for index, single in enumerate(maps):
            inside = single if heads is None else single[heads[index] > 0]
            if inside.numel():
                ceiling = torch.quantile(inside.flatten(), percentile / 100.0)
                single = torch.minimum(single, ceiling)
            clipped.append(single)
        maps = torch.stack(clipped)
    return _gaussian_blur(maps, sigma)


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


def _non_negative_number(name: str, value: Any, upper: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not (
        math.isfinite(value) and value >= 0 and (upper is None or value <= upper)
    ):
        bound = f" and at most {upper}" if upper is not None else ""
        raise InvalidArgumentError(f"`{name}` must be a finite number >= 0{bound}, got {value!r}.")
    return float(value)


def compute_attributions(
    model: torch.nn.Module,
    pixel_values: torch.Tensor,
    target: torch.Tensor | Sequence[int] | int | None,
    method: str = "gradcam",
    *,
    internal_batch_size: int = 16,
    n_steps: int = 32,
    baseline: torch.Tensor | float | None = None,
    occlusion_window: int = 16,
    occlusion_stride: int = 8,
    layer: torch.nn.Module | Sequence[Any] | None = None,
    head_only: bool = True,
    n_samples: int = 16,
    noise_level: float = 0.15,
    clip_percentile: float = 99.0,
    smoothing_sigma: float = 2.0,
    seed: int = 0,
    versus: int | None = None,
    return_logits: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Attribution maps of ``target`` for each image, one ``[0, 1]`` map per image.

    The model comes back in the train/eval mode and with the ``requires_grad`` flags it
    had, no hook stays attached, and no parameter ``.grad`` is touched. Calls on one
    model from several threads run one after another (a per-model lock), so each gets
    the maps a single-threaded call would.

    Ensembles (a module with a ``members`` ModuleList, e.g.
    :class:`~tumor_classifier.ensemble.EnsembleForImageClassification`): SmoothGrad,
    Integrated Gradients and Occlusion attribute the ensemble's logits. The Grad-CAM
    family runs one forward pass of the ensemble (so ``target=None`` is the *ensemble's*
    predicted class and ``return_logits`` gives the ensemble's logits), computes each
    member's raw map (ReLU of the gradient-weighted activations of its layer, before any
    normalisation) from the gradient of the ensemble's target logit, and averages these
    raw maps per stage. The ensemble's logit is the mean of the members' logits over a
    positive temperature, so each member's raw map is its own map times the same positive
    constant: a member whose logit reacts more strongly to its features weighs more, as
    it does in the ensemble's decision. ``gradcam_multiscale`` then masks, scales and
    combines the stages' member-averaged maps.

    Args:
        model: A Hugging Face ``ConvNextForImageClassification``,
            ``ViTForImageClassification``, ``ResNetForImageClassification`` or
            EfficientNet-Lite, an ensemble of them, or any ``nn.Module`` whose
            ``forward(pixel_values)`` returns logits or an output with ``.logits`` (the
            Grad-CAM family on such a model needs ``layer``).
        pixel_values: Float tensor ``(n, C, h, w)`` exactly as the model takes it (already
            normalised), on the model's device.
        target: Class index to explain per image: int tensor / sequence ``(n,)``, or one
            int for all images. ``None`` (Grad-CAM family only, :data:`CAM_METHODS`): the
            predicted class, taken from the same forward pass, so explaining a prediction
            costs one forward and one backward pass in all.
        method: One of :data:`METHODS`, or ``"auto"`` for :func:`default_method`.
        internal_batch_size: Most model inputs per forward pass (images for the Grad-CAM
            family, interpolation steps x images for IG, noisy copies for SmoothGrad,
            occluded copies x images for Occlusion); bounds memory.
        n_steps: Integrated Gradients interpolation steps (Gauss-Legendre).
        baseline: The "absence of signal" input for IG and Occlusion, in the model's
            *normalised* space: a scalar, a ``(C,)`` / ``(1, C, 1, 1)`` tensor, or anything
            broadcastable to ``pixel_values``. Default 0, which is the dataset *mean* after
            mean/std normalisation, not black. This module does not know the normalisation,
            so the caller should pass the normalised black value,
            ``(0 - mean) / std`` per channel, as a ``(1, C, 1, 1)`` tensor.
        occlusion_window: Side in pixels of the occluding square (clipped to the image).
        occlusion_stride: Step in pixels between occluding squares (clipped to the window).
        layer: Module(s) the Grad-CAM family hooks; default :func:`attribution_layer` of
            each stage the method reads. A module, or a list / tuple / ``nn.ModuleList`` of
            modules whose raw maps are averaged (what an ensemble's layer is); for several
            stages, a list of such lists, one per stage. Outputs must be
            ``(n, C, h', w')`` or tokens ``(n, T, D)``.
        head_only: Zero every map outside the head mask of its input (see the module
            docstring), before normalisation. An input where no head is found keeps its map.
        n_samples: SmoothGrad: noisy copies per image.
        noise_level: SmoothGrad: noise standard deviation as a fraction of the image's
            value range (max - min); Smilkov et al. recommend 0.1 to 0.2.
        clip_percentile: SmoothGrad display: values above this percentile (over the head,
            in ``[0, 100]``; 100 keeps all) are clipped to it.
        smoothing_sigma: SmoothGrad display: Gaussian blur in pixels of the input (0: none).
        seed: SmoothGrad: seed of the noise (maps are repeatable).
        versus: A class index to explain against (every method): the map of class ``c``
            then shows the evidence for ``logit_c - logit_versus``, what makes the image
            ``c`` rather than ``versus``, instead of everything that raises ``logit_c``
            (including what all classes share). Images whose target *is* ``versus`` get
            the map of their own logit. ``None``: plain logits.
        return_logits: Also return the logits ``(n, k)`` of the unperturbed images (from
            the Grad-CAM family's own forward pass, or one extra pass for the other methods).

    Returns:
        Float32 array ``(n, h, w)`` in ``[0, 1]``, each map min-max normalised on its own;
        positive evidence only (ReLU of the CAM maps, positive part of the channel-summed
        IG / Occlusion attribution, the SmoothGrad magnitude); a map without positive
        evidence is all zero. With ``return_logits`` a tuple ``(maps, logits)``.

    Raises:
        InvalidArgumentError: (a ``ValueError``) Unknown method, unknown model type for the Grad-CAM family, a
            bad ``target``, ``baseline``, ``layer`` or size argument.
        InvalidImageError: ``pixel_values`` is not a finite float ``(n, C, h, w)`` tensor.

    Example:
        >>> maps = compute_attributions(model, pixel_values, None, "gradcam_fine")  # doctest: +SKIP
        >>> maps.shape, float(maps.max())                                          # doctest: +SKIP
        ((1, 128, 128), 1.0)
    """
    if method == "auto":
        method = default_method(model)
    if method not in METHODS:
        raise InvalidArgumentError(
            f"Unknown attribution method {method!r}; accepted methods are "
            f"{', '.join(METHODS)} (or 'auto')."
        )
    pixel_values = _check_pixel_values(pixel_values)
    batch_size = _positive_int("internal_batch_size", internal_batch_size)
    n_steps = _positive_int("n_steps", n_steps)
    window = _positive_int("occlusion_window", occlusion_window)
    stride = _positive_int("occlusion_stride", occlusion_stride)
    n_samples = _positive_int("n_samples", n_samples)
    noise_level = _non_negative_number("noise_level", noise_level)
    clip_percentile = _non_negative_number("clip_percentile", clip_percentile, upper=100.0)
    smoothing_sigma = _non_negative_number("smoothing_sigma", smoothing_sigma)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise InvalidArgumentError(f"`seed` must be an integer, got {seed!r}.")
    spec = _CAM_SPECS.get(method)
    if target is None and spec is None:
        raise InvalidArgumentError(
            f"target=None (the predicted class) is supported for the CAM methods only "
            f"({', '.join(_CAM_SPECS)}), not {method!r}."
        )
    if target is not None:
        target = _check_target(target, pixel_values.shape[0], model, pixel_values.device)
    if versus is not None:
        versus = int(_check_target(versus, 1, model, pixel_values.device)[0])
    groups = _cam_groups(model, spec, layer) if spec is not None else []
    logits_model = LogitsModel(model)

    with _attribution_state(model):
        # Tensors made under the caller's `torch.inference_mode()` cannot enter autograd;
        # a copy made here (outside inference mode) can.
        pixel_values = _autograd_ready(pixel_values)
        target = None if target is None else _autograd_ready(target)
        heads = _head_masks(pixel_values) if head_only else None
        logits = None
        if spec is not None:
            maps, logits = _cam(logits_model, pixel_values, target, groups, batch_size, spec, heads, versus)
        else:
            explained = logits_model if versus is None else _ContrastModel(logits_model, versus)
            if method in _SMOOTHGRAD_SPECS:
                maps = _smoothgrad(explained, pixel_values, target, batch_size, n_samples, noise_level, int(seed),
                                   **_SMOOTHGRAD_SPECS[method])
                if heads is not None:
                    maps = maps * heads  # before clipping: the percentile is the head's
                maps = _display(maps, heads, clip_percentile, smoothing_sigma)
            else:
                base = _autograd_ready(_check_baseline(baseline, pixel_values))
                if method == "integrated_gradients":
                    maps = _integrated_gradients(explained, pixel_values, target, base, batch_size, n_steps)
                else:
                    maps = _occlusion(explained, pixel_values, target, base, batch_size, window, stride)
            if return_logits:
                with torch.no_grad():
                    logits = torch.cat([logits_model(pixel_values[i : i + batch_size]) for i in range(0, pixel_values.shape[0], batch_size)])
        if heads is not None:
            maps = maps * heads.to(maps.device)
    if return_logits:
        return _normalise(maps), logits.detach().float().cpu().numpy()
    return _normalise(maps)
