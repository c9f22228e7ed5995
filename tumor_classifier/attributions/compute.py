"""The dispatcher: :func:`compute_attributions` checks its arguments, picks the method
(``"auto"``: :func:`default_method`), runs it under the model's attribution state and
returns masked, normalised maps.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch

from ..exceptions import InvalidArgumentError, InvalidImageError
from .cam import _CAM_SPECS, CAM_METHODS, _cam, _cam_groups, _Smoothing
from .folding import gradient_network
from .gradients import SMOOTHGRAD_METHODS, _integrated_gradients, _smoothgrad
from .layers import _model_type
from .logits import LogitsModel, _ContrastModel, _unwrap
from .maps import _display, _floored, _head_masks, _normalise, _peak_normalised
from .occlusion import _occlusion
from .state import _attribution_state, _autograd_ready

#: Every method :func:`compute_attributions` accepts (besides ``"auto"``).
#: SmoothGrad's display blur as a fraction of the input side (``smoothing_sigma=None``).
SMOOTHING_FRACTION = 1 / 16
#: ``smoothcam_contrast``'s display blur (each stage's map) as a fraction of the input side.
SMOOTHCAM_SMOOTHING_FRACTION = 3 / 32
#: Noisy copies per image when ``n_samples=None``: SmoothGrad's, and ``smoothcam_contrast``'s.
SMOOTHGRAD_SAMPLES, SMOOTHCAM_SAMPLES = 4, 2

METHODS = ("gradcam", "integrated_gradients", "occlusion", *CAM_METHODS[1:], *SMOOTHGRAD_METHODS)
#: The methods made to explain a class *against* another (``versus``): callers that know the
#: no-tumour class pass it (:meth:`TumorClassifier.explain` does); without it each is its plain self.
CONTRAST_METHODS = ("smoothgrad_contrast", "smoothcam_contrast")


def default_method(model: torch.nn.Module) -> str:
    """The method ``"auto"`` resolves to for ``model``.

    * EfficientNet-Lite -> ``"smoothcam_contrast"`` (2 noisy copies, four stages, display
      blur 3/32 of the side, no tumour as the contrast class), since 2026-12-01: the
      best pointing game within 3x ``predict``. All 600 tumour-box slices, two threads,
      two runs (``--methods smoothcam_contrast smoothgrad_contrast gradcam --threads 2
      --skip-randomisation``): pointing game (all / glioma / meningioma / pituitary),
      mass in box, explain / predict:

      ==========================  =====  =====  =====  =====  ======  ========
      smoothcam_contrast          72.3   54.0   87.0   76.0   16.0 %  2.8-2.9x
      smoothgrad_contrast         71.7   54.5   89.5   71.0   17.0 %  4.8-5.0x
      gradcam                     45.0   35.0   70.0   30.0   10.6 %  1.7-1.8x
      ==========================  =====  =====  =====  =====  ======  ========

      It was chosen on the first 100 slices per class (71.0 % against
      ``smoothgrad_contrast``'s 66.3 %), among variants scored there: one stage (stride
      4 / 8 / 16: 55-61 %), stages at stride 4-32 without noise (65-66 %), blur 10 / 15 /
      20 px (68.7 / 71.0 / 69.0 % with 2 copies), 3 or 4 copies (73.3 / 71.0 %, at 70 and
      78 ms against 55), noise 0.1 / 0.25 (69.0 / 55.3 %), the class's own logit instead
      of the contrast (54-58 % on one stage against 58-61 %), and LayerCAM's ReLU after the
      channel sum (Jiang et al. 2021; 54.0 %: negative contributions cancel the positive
      ones). On the other 100 per class it scores 73.7 % against ``smoothgrad_contrast``'s
      77.1 %: on all 600 the two do not differ beyond chance (with noise seeds 1 and 2
      instead of the default 0, ``smoothcam_contrast`` scores 70.8 and 71.3 % of the 600),
      and ``smoothcam_contrast`` costs about 60 % of the time. Model randomisation (first 30 per class, ``--methods
      smoothcam_contrast --limit 30``): a re-initialised model's maps point at the box in
      37.8 % of slices against 62.2 % (glioma 6.7 / 33.3, meningioma 36.7 / 83.3,
      pituitary 70.0 / 70.0), correlation 0.73 inside the head: the activations carry
      the image's structure even in a random network, and on pituitary slices (small
      boxes near the head's centre) the pointing is no evidence of what the model
      learned; ``smoothgrad_contrast`` passes that check more clearly (16.7 % against
      56.7 %).

      Before, ``"smoothgrad_contrast"`` (4 noisy copies, display blur 1/16 of the side,
      no tumour as the contrast class). Evidence: the tumour-box benchmark
      (``benchmarks/localisation.py``, head-masked maps) on the shipped EfficientNet-Lite0
      (160 px; commit 2ad00e3). Pointing game (all / glioma / meningioma / pituitary),
      mass in box, explain / predict (one thread, before the folded copy); all 600
      slices (``--methods smoothgrad smoothgrad_contrast gradcam --threads 1 --skip-randomisation``):

      ==========================  =====  =====  =====  =====  ======  ======
      smoothgrad_contrast         71.7   54.5   89.5   71.0    8.5 %  9.3x
      smoothgrad, 4 copies        68.5   53.5   87.0   65.0    8.5 %  6.6x
      gradcam                     45.0   35.0   70.0   30.0   10.6 %  1.5x
      ==========================  =====  =====  =====  =====  ======  ======

      (Mass in box before the display floor; ``floor_percentile=50``, added on 2026-12-01,
      subtracts the head's median from the SmoothGrad map: on the first 100 slices per
      class the pointing game is unchanged, 66.3 %, and the mass in the box rises from
      8.6 % to 17.0 % (box area 2.3 %): without it more than half the head of a glioma or
      pituitary slice sat above half the peak and the whole head was coloured.
      ``--methods smoothgrad_contrast --limit 100 --threads 1 --skip-randomisation
      --floor-percentile 0`` / ``50``. On all 600: pointing 71.7 % unchanged, mass in
      the box 8.5 % -> 17.0 %.)

      On two threads (the app's setting; ``--threads 2``, all 600, same pointing games)
      ``smoothgrad_contrast`` costs 5.4x ``predict``, ``smoothgrad`` 3.9x and ``gradcam``
      1.6x (2026-12-01: 192 / 126 / 54 ms against 33-35 ms; that day both ``explain`` and
      ``predict`` got about a quarter faster through the folded, channels-last copy of
      :mod:`.folding`, so the ratios hardly moved: 5.6x and 4.2x before).
      ``smoothgrad_contrast`` was chosen on the first 100 slices per class (66.3 %
      against ``smoothgrad``'s 60.7 %; with 3 copies 65.7 %) and checked on the other
      100 per class (77.1 % against 76.3 %); from maps computed once on all 600,
      its gain is not that of more samples (8 copies of ``smoothgrad``: 69.0 %), and it
      wins 33 slices and loses 11 against ``smoothgrad`` (sign test p = 0.001). Other
      displays tried on the same first 100 per class: the contrast map alone 66.0 % (other
      100: 74.3 %), SmoothGrad times the square root of Grad-CAM 66.3 %, times the blurred
      scan 67.7 % (not taken: it favours bright pixels, which is the enhancing tumour on
      contrast T1 only); noise 0.1 or 0.25 of the range, or clipping at the 95th
      percentile, did not help. SmoothGrad's display blur was chosen on the first 100
      slices per class (pointing 54.7 % at 2 px, 60.3 % at 8, 60.7 % at 10, 61.3 % at 12,
      61.7 % at 16, 60.3 % at 20: 10 px is the smallest within a point of the best) and
      confirmed on the other 100 per class (68.3 % at 2 px, 76.3 % at 10). All 600, one
      thread: hirescam 41.5 % (2.2x). First 60 per class at 2 px: gradcam_multiscale
      26.7 %, gradcam_fine 14.4 %, gradcam_plusplus 11.1 %. The head's centre points at
      the box in 31.2 % of the 600. Model randomisation (first 30 per class, ``--methods
      smoothgrad --limit 30``): a re-initialised model's SmoothGrad maps point at the box
      in 14.4 % of slices against 56.7 % for the trained model's; inside the head they
      correlate 0.67 with the trained model's (Spearman; 0.39 at the 2 px blur: blurring
      both maps makes them share the head's shape): the pointing comes from what the
      model learned; so for ``smoothgrad_contrast`` (``--methods smoothgrad_contrast
      --limit 30``): 16.7 % against 56.7 %, correlation 0.69. The rule used to be "the
      best pointing game within about 3x ``predict``", which picks Grad-CAM; it was set
      aside for this model on purpose: a heatmap that misses the tumour defeats its
      purpose, and about 0.2 s on two threads is still quick. On the 128 px model shipped
      before, HiResCAM was best (46.5 % of the 600, gradcam 29.3 %): the choice belongs
      to the trained weights, so measure it again for a new model.
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
        return "smoothcam_contrast"
    if model_type in ("convnext", "resnet"):
        return "gradcam"
    return "integrated_gradients"  # ViT (evidence above) and any other model



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
    n_samples: int | None = None,
    noise_level: float = 0.15,
    clip_percentile: float = 99.0,
    floor_percentile: float = 50.0,
    smoothing_sigma: float | None = None,
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
    combines the stages' member-averaged maps. ``smoothcam_contrast`` does the same per
    batch of noisy copies (one forward pass of the ensemble each), with the target given.

    Args:
        model: A Hugging Face ``ConvNextForImageClassification``,
            ``ViTForImageClassification``, ``ResNetForImageClassification`` or
            EfficientNet-Lite, an ensemble of them, or any ``nn.Module`` whose
            ``forward(pixel_values)`` returns logits or an output with ``.logits`` (the
            Grad-CAM family on such a model needs ``layer``).
        pixel_values: Float tensor ``(n, C, h, w)`` exactly as the model takes it (already
            normalised), on the model's device.
        target: Class index to explain per image: int tensor / sequence ``(n,)``, or one
            int for all images. ``None`` (the Grad-CAM family, :data:`CAM_METHODS`, except
            ``smoothcam_contrast``): the predicted class, taken from the same forward pass,
            so explaining a prediction costs one forward and one backward pass in all.
        method: One of :data:`METHODS`, or ``"auto"`` for :func:`default_method`.
        internal_batch_size: Most model inputs per forward pass (images for the Grad-CAM
            family, interpolation steps x images for IG, noisy copies of one image for
            SmoothGrad and ``smoothcam_contrast``, occluded copies x images for
            Occlusion); bounds memory.
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
        n_samples: SmoothGrad and ``smoothcam_contrast``: noisy copies per image; ``None``
            (the default) takes :data:`SMOOTHGRAD_SAMPLES` (4: on the shipped model 4 copies
            point at the tumour box nearly as often as 16, at a quarter of the cost) or
            :data:`SMOOTHCAM_SAMPLES` (2; see :func:`default_method`).
        noise_level: SmoothGrad and ``smoothcam_contrast``: noise standard deviation as a fraction of the image's
            value range (max - min); Smilkov et al. recommend 0.1 to 0.2.
        clip_percentile: SmoothGrad and ``smoothcam_contrast`` display: values above this percentile (over the head,
            in ``[0, 100]``; 100 keeps all) are clipped to it.
        floor_percentile: SmoothGrad and ``smoothcam_contrast`` display: the final map's value at this percentile
            (over the head, in ``[0, 100]``; 0 keeps all) is subtracted and what falls
            below is no evidence: 50, the head's median, shows what stands out from the
            head's usual level (the maximum does not move; see :func:`default_method`).
        smoothing_sigma: SmoothGrad display: Gaussian blur in pixels of the input (0: none;
            at most the input's side; ``None``: :data:`SMOOTHING_FRACTION` of the input's
            side, 10 px at the shipped model's 160; for ``smoothcam_contrast``, whose
            stages are each shown so, :data:`SMOOTHCAM_SMOOTHING_FRACTION`, 15 px). Chosen
            on the tumour boxes: see :func:`default_method`.
        seed: SmoothGrad and ``smoothcam_contrast``: seed of the noise (maps are repeatable).
        versus: A class index to explain against (every method): the map of class ``c``
            then shows the evidence for ``logit_c - logit_versus``, what makes the image
            ``c`` rather than ``versus``, instead of everything that raises ``logit_c``
            (including what all classes share). Images whose target *is* ``versus`` get
            the map of their own logit. ``None``: plain logits. For
            ``smoothgrad_contrast`` it is the class the second map contrasts with (the
            first stays the plain logit's); without it that method is plain SmoothGrad,
            and ``smoothcam_contrast`` the smoothed positive CAM of the class's own logit
            (:meth:`TumorClassifier.explain` passes no tumour to both).
        return_logits: Also return the logits ``(n, k)`` of the unperturbed images (from
            the Grad-CAM family's own forward pass, or one extra pass for the other methods
            and ``smoothcam_contrast``, whose passes see noisy copies).

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
    spec = _CAM_SPECS.get(method)
    smooth = spec is not None and spec.smooth
    if n_samples is None:
        n_samples = SMOOTHCAM_SAMPLES if smooth else SMOOTHGRAD_SAMPLES
    n_samples = _positive_int("n_samples", n_samples)
    noise_level = _non_negative_number("noise_level", noise_level)
    clip_percentile = _non_negative_number("clip_percentile", clip_percentile, upper=100.0)
    floor_percentile = _non_negative_number("floor_percentile", floor_percentile, upper=100.0)
    if smoothing_sigma is None:
        smoothing_sigma = (SMOOTHCAM_SMOOTHING_FRACTION if smooth else SMOOTHING_FRACTION) * pixel_values.shape[-1]
    # At most the input's side: a wider blur shows nothing, and its kernel (6 sigma wide)
    # would take memory without bound.
    smoothing_sigma = _non_negative_number("smoothing_sigma", smoothing_sigma, upper=float(pixel_values.shape[-1]))
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise InvalidArgumentError(f"`seed` must be an integer, got {seed!r}.")
    if target is None and (spec is None or smooth):
        own_pass = [name for name, each in _CAM_SPECS.items() if not each.smooth]
        raise InvalidArgumentError(
            f"target=None (the predicted class) is supported for the CAM methods that explain "
            f"the image's own forward pass only ({', '.join(own_pass)}), not {method!r}."
        )
    if target is not None:
        target = _check_target(target, pixel_values.shape[0], model, pixel_values.device)
    if versus is not None:
        versus = int(_check_target(versus, 1, model, pixel_values.device)[0])
    groups = _cam_groups(model, spec, layer) if spec is not None else []

    with _attribution_state(model):
        # Tensors made under the caller's `torch.inference_mode()` cannot enter autograd;
        # a copy made here (outside inference mode) can.
        pixel_values = _autograd_ready(pixel_values)
        target = None if target is None else _autograd_ready(target)
        heads = _head_masks(pixel_values) if head_only else None
        logits = None
        # The folded copy: the same logits, cheaper passes (the Grad-CAM family hooks the model's own
        # layers, but for smoothcam_contrast without a caller's layer: the copy's, the same activations).
        logits_model = LogitsModel(gradient_network(model)) if spec is None or (smooth and layer is None) else None
        if smooth:
            network = LogitsModel(model) if logits_model is None else logits_model
            if layer is None:
                groups = _cam_groups(network, spec, None)
            smoothing = _Smoothing(n_samples, noise_level, int(seed), clip_percentile, smoothing_sigma)
            maps, _ = _cam(network, pixel_values, target, groups, batch_size, spec, heads, versus, smoothing)
            maps = _floored(maps, heads, floor_percentile)
        elif spec is not None:  # hooks on the model's own layers
            maps, logits = _cam(LogitsModel(model), pixel_values, target, groups, batch_size, spec, heads, versus)
        else:
            contrast = method == "smoothgrad_contrast"  # both maps from the plain logits, the contrast second
            explained = logits_model if versus is None or contrast else _ContrastModel(logits_model, versus)
            if method in SMOOTHGRAD_METHODS:
                maps = _smoothgrad(explained, pixel_values, target, batch_size, n_samples, noise_level, int(seed),
                                   versus if contrast else None)
                if heads is not None:
                    maps = maps * heads  # before clipping: the percentile is the head's
                # Each map shown as its own display, peak 1; two maps (the contrast) are summed.
                maps = sum(_peak_normalised(_display(single, heads, clip_percentile, smoothing_sigma)) for single in maps)
                maps = _floored(maps, heads, floor_percentile)
            else:
                base = _autograd_ready(_check_baseline(baseline, pixel_values))
                if method == "integrated_gradients":
                    maps = _integrated_gradients(explained, pixel_values, target, base, batch_size, n_steps)
                else:
                    maps = _occlusion(explained, pixel_values, target, base, batch_size, window, stride)
        if return_logits and logits is None:
            logits_model = LogitsModel(gradient_network(model)) if logits_model is None else logits_model
            with torch.no_grad():
                logits = torch.cat([logits_model(pixel_values[i : i + batch_size]) for i in range(0, pixel_values.shape[0], batch_size)])
        if heads is not None:
            maps = maps * heads.to(maps.device)
    if return_logits:
        return _normalise(maps), logits.detach().float().cpu().numpy()
    return _normalise(maps)
