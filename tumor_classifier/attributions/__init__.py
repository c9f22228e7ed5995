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
    ``smoothing_sigma`` pixels (default 1/16 of the side), because a raw gradient map is
    speckle. Pixel-level and model-agnostic, any backbone; ``n_samples`` (4)
    forward/backward passes of the whole network (3.9x ``predict`` on 2 threads; both
    faster since the folded copy of :mod:`.folding` is stored channels-last and predict
    runs it too). On the shipped model it points at the tumour box more often than any
    CAM (``benchmarks/localisation.py --methods smoothgrad gradcam --threads 1``: 68.5 %
    of 600 slices against Grad-CAM's 45.0 %; 2 copies 64.0 %). Partly image-driven: on
    the ConvNeXt before, its maps correlated 0.3 with those of a randomly initialised
    model (Integrated Gradients: 0.1).
``smoothgrad_contrast``
    SmoothGrad of the target logit plus SmoothGrad of ``logit_target - logit_versus``
    (``versus``: the class to contrast with; :meth:`TumorClassifier.explain` passes no
    tumour), each shown as ``smoothgrad`` shows it, scaled to peak 1, and summed: the
    pixels that raise the class *and* tell it from no tumour. One forward and two
    backward passes per batch of noisy copies (4.8-5.0x ``predict`` on 2 threads since the
    display's percentiles and blur got cheaper on 2026-12-01, 5.4x before; 1.5x
    ``smoothgrad``). Without ``versus`` (or for an image whose target is ``versus``) it
    is ``smoothgrad``. On the shipped model it points at the box in 71.7 % of the 600
    tumour-box slices (the default for EfficientNet-Lite until 2026-12-01; see
    :func:`default_method`).
``smoothcam_contrast``
    A smoothed CAM of the class against ``versus`` (:meth:`TumorClassifier.explain`
    passes no tumour) on four stages (strides 4, 8, 16 and 32): at each stage, per cell,
    the sum over channels of positive gradient x positive activation (where a channel is
    active and more of it would raise ``logit_target - logit_versus``; unlike LayerCAM's
    ReLU after the sum, a channel that speaks against the class cannot cancel one that
    speaks for it), averaged over ``n_samples`` noisy copies (2, SmoothGrad's noise),
    shown as ``smoothgrad`` shows its map (clipped at ``clip_percentile``, blurred by
    3/32 of the side), scaled to peak 1; the stages are averaged and the head's median
    subtracted. One forward and one backward pass of two copies (2.8-2.9x ``predict`` on 2
    threads). Needs the target (the copies' predictions are not the image's). The
    default for EfficientNet-Lite: 72.3 % of the 600 tumour-box slices (see
    :func:`default_method`, which also says what the model-randomisation check found).
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
``gradcam_plusplus``, ``smoothcam_contrast``) is :data:`CAM_METHODS`; these need a layer
(known for :data:`SUPPORTED_MODEL_TYPES`, or passed as ``layer=``) and, except
``smoothcam_contrast``, can explain the predicted class from their own forward pass
(``target=None``).

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

The package, in import order (each module imports only those above it, plus
:mod:`tumor_classifier.exceptions`, :mod:`tumor_classifier.locking` and
:func:`tumor_classifier.augmentation.head_mask`, which import nothing of the package), so it
can be used (and tested) on any model; ensembles are recognised by their ``members``:

* :mod:`.logits` - :class:`LogitsModel`, the contrast against a class, ensemble members;
* :mod:`.state` - the per-model lock and the train/eval and ``requires_grad`` state;
* :mod:`.maps` - head masks, percentile clipping and blur, min-max normalisation;
* :mod:`.noise` - the noisy copies of an image that SmoothGrad-style methods average over;
* :mod:`.layers` - the Grad-CAM layer of each backbone (:func:`attribution_layer`);
* :mod:`.cam` - the Grad-CAM family (:data:`CAM_METHODS`);
* :mod:`.folding` - the batch-norm-folded copy that the gradient methods differentiate;
* :mod:`.gradients` - SmoothGrad and Integrated Gradients; :mod:`.occlusion` - Occlusion;
* :mod:`.compute` - :func:`compute_attributions`, :func:`default_method`, :data:`METHODS`.

The overlay of a map on its scan, and its legend, live in :mod:`tumor_classifier.visualization`
(``overlay`` stays importable from here, its home until 2026-11-30).
"""

from __future__ import annotations

from ..visualization import overlay
from .cam import CAM_METHODS
from .compute import CONTRAST_METHODS, METHODS, compute_attributions, default_method
from .layers import SUPPORTED_MODEL_TYPES, attribution_layer
from .logits import LogitsModel

__all__ = [
    "CAM_METHODS",
    "CONTRAST_METHODS",
    "METHODS",
    "SUPPORTED_MODEL_TYPES",
    "LogitsModel",
    "attribution_layer",
    "compute_attributions",
    "default_method",
    "overlay",
]
