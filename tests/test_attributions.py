"""Tests of tumor_classifier.attributions: exact toy maps, shapes, state hygiene, localisation.

Everything runs on tiny randomly initialised models (no download); the two localisation
tests train a model for 60 steps on a synthetic "bright square in noise" task, which
takes a couple of seconds on two CPU cores.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import efficientnet_with_trained_looking_norms
from transformers import (
    ConvNextConfig,
    ConvNextForImageClassification,
    ResNetConfig,
    ResNetForImageClassification,
    ViTConfig,
    ViTForImageClassification,
)

from tumor_classifier.attributions import (
    CAM_METHODS,
    METHODS,
    LogitsModel,
    attribution_layer,
    compute_attributions,
    default_method,
)
from tumor_classifier.attributions.cam import _layer_cam
from tumor_classifier.attributions.folding import gradient_network
from tumor_classifier.attributions.maps import _display, _gaussian_blur, _quantile
from tumor_classifier.attributions.noise import noisy_copies
from tumor_classifier.exceptions import InvalidImageError, TumorClassifierError
from tumor_classifier.models import create_model
from tumor_classifier.preprocessing import head_mask

SIZE = 32


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Runs this module on one intra-op thread, then restores the caller's setting.

    These models are far too small to gain from threads, and on a loaded 2-core machine
    (a training run beside the tests) torch's thread pool made the trained-model tests
    ~30x slower (113 s vs 3.3 s measured) instead of faster.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# --------------------------------------------------------------------------- toy model


class ToyNet(torch.nn.Module):
    """1x1 conv (weights +1 and -1) + ReLU, global average pool, a +-1 linear head.

    For a 1-channel 4x4 input ``x``: ``A0 = relu(x)``, ``A1 = relu(-x)``,
    ``logit_0 = mean(A0) - mean(A1) = mean(x)`` and ``logit_1 = -mean(x)``. Every method
    then has a closed form, and each one needs its "positive evidence only" step:

    * Grad-CAM of class 0: channel weights are the mean gradients, +1/16 for ``A0`` and
      -1/16 for ``A1``, so the map is ``relu(A0 / 16 - A1 / 16) = relu(x) / 16``
      (without the ReLU it would be ``x / 16``, negative where ``x`` is).
    * IG from a zero baseline: the logit is linear in ``x``, so IG is exact:
      ``x * d logit_0 / dx = x / 16``, positive part ``relu(x) / 16``.
    * Occlusion with a 1-pixel window and baseline 0: the logit drop is ``x_p / 16``,
      positive part ``relu(x_p) / 16``.

    After min-max normalisation all three give ``relu(x) / max(relu(x))`` for class 0
    and ``relu(-x) / max(relu(-x))`` for class 1.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, kernel_size=1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
        self.features = torch.nn.Sequential(self.conv, torch.nn.ReLU())
        self.head = torch.nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor([[1.0, -1.0], [-1.0, 1.0]]))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(pixel_values).mean(dim=(2, 3)))


TOY_INPUT = torch.tensor(
    [
        [0.0, 1.0, 0.0, -2.0],
        [0.0, 4.0, 2.0, 0.0],
        [-1.0, 0.0, 0.0, 0.0],
        [0.0, 0.0, -4.0, 0.0],
    ]
).view(1, 1, 4, 4)

TOY_OPTIONS = {
    **{method: {} for method in CAM_METHODS},
    "integrated_gradients": {"n_steps": 8},
    "occlusion": {"occlusion_window": 1, "occlusion_stride": 1},
    # No display post-processing: the raw SmoothGrad magnitude is what is hand-checked.
    "smoothgrad": {"n_samples": 4, "clip_percentile": 100.0, "floor_percentile": 0.0, "smoothing_sigma": 0.0},
    "smoothgrad_contrast": {"n_samples": 4, "clip_percentile": 100.0, "floor_percentile": 0.0, "smoothing_sigma": 0.0, "versus": 1},
    # Noise-free copies and no display: the positive CAM of ToyNet is relu(x) / 16, as Grad-CAM's.
    "smoothcam_contrast": {"n_samples": 2, "noise_level": 0.0, "clip_percentile": 100.0, "floor_percentile": 0.0, "smoothing_sigma": 0.0},
}
#: The Grad-CAM family members that explain the predicted class from their own forward pass.
OWN_PASS_METHODS = [method for method in CAM_METHODS if method != "smoothcam_contrast"]
#: ToyNet's gradient is the same everywhere, so its SmoothGrad maps are flat (all zero after
#: normalisation); SmoothGrad has its own hand-checked toys below.
TOY_METHODS = [method for method in METHODS if not method.startswith("smoothgrad")]


def _toy_attributions(model, x, target, method, **extra):
    # The toy inputs are not head scans: the head mask is tested on its own below.
    layer = model.features if method in CAM_METHODS else None
    options = {"head_only": False, **TOY_OPTIONS[method], **extra}
    return compute_attributions(model, x, target, method, layer=layer, **options)


def test_every_method_is_covered_by_the_toy_options():
    assert set(TOY_OPTIONS) == set(METHODS)
    assert set(CAM_METHODS) <= set(METHODS)
    assert METHODS[:3] == ("gradcam", "integrated_gradients", "occlusion")  # old names kept


@pytest.mark.parametrize("method", TOY_METHODS)
def test_toy_maps_equal_the_hand_computed_values(method):
    model = ToyNet()
    x = torch.cat([TOY_INPUT, TOY_INPUT])
    maps = _toy_attributions(model, x, [0, 1], method)
    positive = TOY_INPUT[0, 0].clamp(min=0).numpy()
    negative = (-TOY_INPUT[0, 0]).clamp(min=0).numpy()
    np.testing.assert_allclose(maps[0], positive / positive.max(), atol=1e-5)
    np.testing.assert_allclose(maps[1], negative / negative.max(), atol=1e-5)
    # Readable consequences of the closed form: peak at the brightest pixel, zero where
    # the input is zero.
    assert np.unravel_index(maps[0].argmax(), maps[0].shape) == (1, 1)
    assert np.all(maps[:, TOY_INPUT[0, 0].numpy() == 0] == 0)


def test_gradcam_of_the_predicted_class_comes_with_the_logits_of_the_same_pass():
    model = ToyNet()
    x = torch.cat([TOY_INPUT + 0.5, -TOY_INPUT - 0.5])  # logit_0 = mean(x): class 0 wins, then class 1
    maps, logits = _toy_attributions(model, x, None, "gradcam", return_logits=True)
    np.testing.assert_allclose(logits, model(x).detach().numpy(), atol=1e-6)
    assert logits.argmax(1).tolist() == [0, 1]
    np.testing.assert_allclose(maps, _toy_attributions(model, x, [0, 1], "gradcam"), atol=1e-6)
    for method in OWN_PASS_METHODS:  # the Grad-CAM family explains the predicted class
        maps, logits = _toy_attributions(model, x, None, method, return_logits=True)
        np.testing.assert_allclose(maps, _toy_attributions(model, x, [0, 1], method), atol=1e-6)
        assert logits.argmax(1).tolist() == [0, 1]
    # Noisy copies do not predict the image's class: these need the target.
    for method in ("occlusion", "integrated_gradients", "smoothgrad", "smoothcam_contrast"):
        with pytest.raises(TumorClassifierError, match="own forward pass only"):
            _toy_attributions(model, x, None, method)
    # Asked for, the logits are the image's (one more pass), not its noisy copies'.
    _, logits = _toy_attributions(model, x, [0, 1], "smoothcam_contrast", return_logits=True, noise_level=0.5)
    np.testing.assert_allclose(logits, model(x).detach().numpy(), atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_toy_without_positive_evidence_gives_an_all_zero_map(method):
    # All-zero input: no evidence anywhere, and normalisation must not invent any.
    maps = _toy_attributions(ToyNet(), torch.zeros(1, 1, 4, 4), [0], method)
    assert maps.dtype == np.float32
    assert np.all(maps == 0)


@pytest.mark.parametrize("method", METHODS)
def test_internal_batch_size_does_not_change_the_result(method):
    x = TOY_INPUT * torch.linspace(0.5, 2.0, 5).view(5, 1, 1, 1) + 0.1 * torch.randn(
        5, 1, 4, 4, generator=torch.Generator().manual_seed(0)
    )
    target = [0, 1, 0, 1, 0]
    one = _toy_attributions(ToyNet(), x, target, method, internal_batch_size=1)
    many = _toy_attributions(ToyNet(), x, target, method, internal_batch_size=3)
    np.testing.assert_allclose(one, many, atol=1e-5)


@pytest.mark.parametrize("method", ["integrated_gradients", "occlusion"])
def test_baseline_equal_to_the_input_leaves_nothing_to_attribute(method):
    # IG integrates from the baseline; occlusion replaces with it. Either way, a baseline
    # equal to the input must give no evidence - proof that `baseline` is used.
    x = TOY_INPUT.clone()
    maps = _toy_attributions(ToyNet(), x, [0], method, baseline=x)
    assert np.all(maps == 0)
    maps = _toy_attributions(ToyNet(), x, [0], method, baseline=torch.zeros(1, 1, 1, 1))
    assert maps.max() == 1.0


# ------------------------------------------------------- toys for the new methods


class SpatialToy(torch.nn.Module):
    """ToyNet's features with a head that weighs every cell: ``logit_0 = sum(W * (A0 - A1))``.

    Since ``A0 - A1 = x``, ``logit_0 = sum(W * x)`` and ``logit_1 = -logit_0``. The gradient
    of ``logit_0`` is ``W`` on ``A0`` and ``-W`` on ``A1``, different per cell, so HiResCAM
    (``relu(sum_c g_c * A_c) = relu(W * x)``) and Grad-CAM (``relu(mean(W) * x)``) differ.
    """

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.features = ToyNet().features
        self.register_buffer("weight", weight)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        activation = self.features(pixel_values)
        logit = ((activation[:, 0] - activation[:, 1]) * self.weight).sum(dim=(1, 2))
        return torch.stack([logit, -logit], dim=1)


#: One at every cell, except a small weight on the brightest pixel (4 -> 1) and a
#: negative one on the darkest (-4 -> +2): HiResCAM's maximum moves to (1, 2).
SPATIAL_WEIGHT = torch.ones(4, 4)
SPATIAL_WEIGHT[1, 1] = 0.25
SPATIAL_WEIGHT[3, 2] = -0.5


def test_hirescam_is_gradient_times_activation_summed_over_channels():
    model = SpatialToy(SPATIAL_WEIGHT)
    x = torch.cat([TOY_INPUT, TOY_INPUT])
    maps = compute_attributions(model, x, [0, 1], "hirescam", layer=model.features, head_only=False)
    weighted = (SPATIAL_WEIGHT * TOY_INPUT[0, 0]).numpy()
    # Class 0: relu(W * A0 - W * A1) = relu(W * x); class 1: relu(-W * x).
    np.testing.assert_allclose(maps[0], np.maximum(weighted, 0) / np.maximum(weighted, 0).max(), atol=1e-6)
    np.testing.assert_allclose(maps[1], np.maximum(-weighted, 0) / np.maximum(-weighted, 0).max(), atol=1e-6)
    assert np.unravel_index(maps[0].argmax(), (4, 4)) == (1, 2)
    # Grad-CAM averages the gradient over the cells first: relu(mean(W) * x) keeps the
    # input's own maximum at (1, 1).
    gradcam = compute_attributions(model, x[:1], [0], "gradcam", layer=model.features, head_only=False)
    positive = TOY_INPUT[0, 0].clamp(min=0).numpy()
    np.testing.assert_allclose(gradcam[0], positive / positive.max(), atol=1e-6)


def test_gradcam_plusplus_follows_its_closed_form():
    model = SpatialToy(SPATIAL_WEIGHT)
    maps = compute_attributions(model, TOY_INPUT, [0], "gradcam_plusplus", layer=model.features, head_only=False)
    x = TOY_INPUT[0, 0].double().numpy()
    w = SPATIAL_WEIGHT.double().numpy()
    activations = [np.maximum(x, 0), np.maximum(-x, 0)]  # A0, A1
    gradients = [w, -w]  # d logit_0 / d A0, d A1
    cam = np.zeros((4, 4))
    for a, g in zip(activations, gradients):
        alpha = g**2 / (2 * g**2 + a.sum() * g**3)  # no zero gradient in this toy
        cam += (alpha * np.maximum(g, 0)).sum() * a
    cam = np.maximum(cam, 0)
    np.testing.assert_allclose(maps[0], cam / cam.max(), atol=1e-6)
    # Unlike Grad-CAM, the negatively weighted cell (3, 2) gets positive evidence here.
    assert maps[0, 3, 2] > 0


class ToyStages(torch.nn.Module):
    """Two stages on an 8 x 8 one-channel input: ``fine = relu(x)`` (8 x 8), ``coarse`` = its
    4 x 4 average pool (2 x 2); ``logit_0 = mean(coarse) = mean(relu(x))``, ``logit_1 = -logit_0``.

    The gradient is ``1/64`` on every fine cell and ``1/4`` on every coarse cell, so Grad-CAM
    is ``relu(x) / 64`` on the fine stage and ``coarse / 4`` (upsampled) on the coarse one.
    """

    def __init__(self) -> None:
        super().__init__()
        self.fine = torch.nn.ReLU()
        self.coarse = torch.nn.AvgPool2d(4)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        logit = self.coarse(self.fine(pixel_values)).mean(dim=(1, 2, 3))
        return torch.stack([logit, -logit], dim=1)


def _dots(*cells):
    x = torch.zeros(len(cells), 1, 8, 8)
    for index, (row, col) in enumerate(cells):
        x[index, 0, row, col] = 1.0
    return x


def test_the_finer_stage_resolves_what_the_last_stage_cannot():
    model = ToyStages()
    x = _dots((1, 1), (2, 2))  # two different places in the same coarse cell
    coarse = compute_attributions(model, x, 0, "gradcam", layer=model.coarse, head_only=False)
    fine = compute_attributions(model, x, 0, "gradcam_fine", layer=model.fine, head_only=False)
    # The coarse stage sees one cell either way: both maps are the same blur.
    np.testing.assert_allclose(coarse[0], coarse[1], atol=1e-7)
    # The fine stage puts each map's maximum - and all of its mass - on its dot.
    np.testing.assert_allclose(fine, x[:, 0].numpy(), atol=1e-7)


def test_multiscale_multiplies_the_max_normalised_stage_maps():
    model = ToyStages()
    x = _dots((1, 1)) + 0.5 * _dots((6, 5))
    maps = compute_attributions(model, x, 0, "gradcam_multiscale", layer=[[model.fine], [model.coarse]],
                                head_only=False)
    fine = x[0, 0].clamp(min=0)
    coarse = F.interpolate(torch.nn.functional.avg_pool2d(fine[None, None], 4) / 4, size=(8, 8),
                           mode="bilinear", align_corners=False)[0, 0]
    expected = (fine / fine.max()) * (coarse / coarse.max())
    expected = (expected - expected.min()) / (expected.max() - expected.min())
    np.testing.assert_allclose(maps[0], expected.numpy(), atol=1e-6)


class LinearToy(torch.nn.Module):
    """``logit_0 = sum(W * x)`` on a one-channel input (optionally ``sum(W * x**2)``)."""

    def __init__(self, weight: torch.Tensor, square: bool = False) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.square = square

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = pixel_values[:, 0]
        logit = ((x * x if self.square else x) * self.weight).sum(dim=(1, 2))
        return torch.stack([logit, -logit], dim=1)


def test_smoothgrad_of_a_linear_model_is_the_absolute_weight():
    # The gradient is W for any noise, so SmoothGrad is |W| for both classes.
    weight = torch.tensor([[0.0, 1.0, -3.0, 0.5], [2.0, 0.0, 0.0, -1.0], [0.0, 0.0, 1.5, 0.0], [-0.5, 0.0, 0.0, 0.0]])
    model = LinearToy(weight)
    x = torch.cat([TOY_INPUT, TOY_INPUT])
    raw = dict(head_only=False, clip_percentile=100.0, floor_percentile=0.0, smoothing_sigma=0.0, n_samples=4)
    maps = compute_attributions(model, x, [0, 1], "smoothgrad", **raw)
    expected = weight.abs().numpy() / 3.0
    np.testing.assert_allclose(maps, np.stack([expected, expected]), atol=1e-6)
    # Percentile clipping: everything above the 75th percentile of |W| becomes the top.
    clipped = compute_attributions(model, x[:1], [0], "smoothgrad", **{**raw, "clip_percentile": 75.0})
    ceiling = float(torch.quantile(weight.abs().flatten(), 0.75))
    np.testing.assert_allclose(clipped[0], np.minimum(weight.abs().numpy(), ceiling) / ceiling, atol=1e-6)


def test_smoothgrad_display_floor_subtracts_the_percentile_and_keeps_the_maximum():
    # |W|, less its median (no head mask: the whole image is the head), clipped at zero,
    # then min-max scaled.
    weight = torch.tensor([[0.0, 1.0, 3.0, -9.0], [2.0, 0.5, 0.0, 1.0], [0.0, 4.0, 1.5, 0.25], [0.5, 0.0, 0.0, 2.5]])
    x = torch.zeros(1, 1, 4, 4)
    raw = dict(head_only=False, clip_percentile=100.0, smoothing_sigma=0.0, n_samples=2)
    maps = compute_attributions(LinearToy(weight), x, [0], "smoothgrad", floor_percentile=50.0, **raw)
    floor = float(torch.quantile(weight.abs().flatten(), 0.5))
    expected = (weight.abs() - floor).clamp_min(0.0)
    np.testing.assert_allclose(maps[0], (expected / expected.max()).numpy(), atol=1e-6)
    # Half the map shows no evidence, and the maximum is where it was without a floor.
    unfloored = compute_attributions(LinearToy(weight), x, [0], "smoothgrad", floor_percentile=0.0, **raw)
    assert (maps[0] == 0).mean() >= 0.5 and (unfloored[0] == 0).mean() < 0.5
    assert maps[0].argmax() == unfloored[0].argmax()


class LinearClasses(torch.nn.Module):
    """``logit_k = sum(W_k * x)`` on a one-channel input, one weight plane per class."""

    def __init__(self, weights: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("weights", weights)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return torch.einsum("nhw,khw->nk", pixel_values[:, 0], self.weights)


def test_smoothgrad_contrast_adds_the_map_of_the_class_against_versus():
    # Gradients are the weight planes for any noise: the class map is |W_0|, the contrast
    # map |W_0 - W_2|; each is scaled to peak 1, summed, then min-max normalised.
    weights = torch.tensor([
        [[4.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 0.0]],
        [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]],
        [[4.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0]],
    ])
    model, x = LinearClasses(weights), torch.zeros(2, 1, 3, 3)
    raw = dict(head_only=False, clip_percentile=100.0, floor_percentile=0.0, smoothing_sigma=0.0, n_samples=3)
    maps = compute_attributions(model, x, [0, 2], "smoothgrad_contrast", versus=2, **raw)
    plain, contrast = weights[0].abs() / 4.0, (weights[0] - weights[2]).abs() / 2.0
    combined = (plain + contrast).numpy()
    np.testing.assert_allclose(maps[0], combined / combined.max(), atol=1e-6)
    # Explaining the versus class itself: its own map, as plain SmoothGrad gives it.
    np.testing.assert_allclose(maps[1], compute_attributions(model, x[1:], [2], "smoothgrad", **raw)[0], atol=1e-6)
    # The shared evidence (the top-left pixel, in both classes) no longer dominates.
    assert maps[0, 1, 1] == pytest.approx(1.0) and maps[0, 0, 0] < 1.0
    # Without a class to contrast with it is plain SmoothGrad.
    np.testing.assert_allclose(compute_attributions(model, x, [0, 2], "smoothgrad_contrast", **raw),
                               compute_attributions(model, x, [0, 2], "smoothgrad", **raw), atol=1e-6)


def test_smoothgrad_display_blurs_with_a_gaussian_of_the_given_sigma():
    weight = torch.zeros(9, 9)
    weight[4, 4] = 1.0
    maps = compute_attributions(LinearToy(weight), torch.zeros(1, 1, 9, 9), [0], "smoothgrad",
                                head_only=False, clip_percentile=100.0, floor_percentile=0.0, smoothing_sigma=1.0, n_samples=2)
    # A single spike becomes the kernel: neighbours at distance 1 and sqrt(2) are
    # exp(-1/2) and exp(-1) of the centre, and the map is symmetric.
    assert np.unravel_index(maps[0].argmax(), (9, 9)) == (4, 4)
    peak = maps[0, 4, 4]
    np.testing.assert_allclose(maps[0, 4, 5] / peak, np.exp(-0.5), rtol=1e-5)
    np.testing.assert_allclose(maps[0, 5, 5] / peak, np.exp(-1.0), rtol=1e-5)
    np.testing.assert_allclose(maps[0], maps[0].T, atol=1e-7)


def test_the_display_quantile_is_torch_quantile_by_selection():
    assert float(_quantile(torch.tensor([3.0, 0.0, 2.0, 1.0]), 0.5)) == 1.5  # halfway between 1 and 2
    assert float(_quantile(torch.tensor([3.0, 0.0, 2.0, 1.0]), 1 / 3)) == pytest.approx(1.0)
    generator = torch.Generator().manual_seed(0)
    for size in (1, 2, 7, 1000):
        values = torch.randn(size, generator=generator)
        for q in (0.0, 0.01, 0.5, 0.99, 1.0):
            assert float(_quantile(values, q)) == pytest.approx(float(torch.quantile(values, q)), abs=1e-6)


def test_the_blur_repeats_the_edge_pixels():
    # A constant map stays constant (the border reads its own value, not zeros), and a
    # point far from the border spreads into the outer product of the 1-D Gaussian.
    np.testing.assert_allclose(_gaussian_blur(torch.full((2, 7, 9), 5.0), 3.0).numpy(), 5.0, atol=1e-5)
    point = torch.zeros(1, 21, 21)
    point[0, 10, 10] = 1.0
    gauss = torch.exp(-torch.arange(-3.0, 4.0).pow(2) / 2)
    gauss = gauss / gauss.sum()
    expected = torch.zeros(21, 21)
    expected[7:14, 7:14] = gauss[:, None] * gauss[None, :]
    np.testing.assert_allclose(_gaussian_blur(point, 1.0)[0].numpy(), expected.numpy(), atol=1e-7)
    # At the border: the first pixel of a row of one 1 and zeros takes the weights of every offset that clamps to it.
    edge = torch.zeros(1, 1, 9)
    edge[0, 0, 0] = 1.0
    assert float(_gaussian_blur(edge, 1.0)[0, 0, 0]) == pytest.approx(float(gauss[3:].sum()), abs=1e-6)


def test_the_display_takes_a_non_finite_value_for_no_evidence():
    # An overflowing gradient: the pixel counts as 0, and neither the blur nor the percentile
    # carries its NaN or infinity to the rest of the map.
    clean = torch.rand(1, 16, 16, generator=torch.Generator().manual_seed(0))
    for bad in (float("nan"), float("inf")):
        broken = clean.clone()
        broken[0, 3, 4] = bad
        expected = clean.clone()
        expected[0, 3, 4] = 0.0
        np.testing.assert_allclose(_display(broken, None, 99.0, 2.0).numpy(), _display(expected, None, 99.0, 2.0).numpy(), atol=1e-6)


def test_smoothgrad_noise_is_seeded_per_image():
    # With x**2 the gradient 2 W x depends on the noise, so the seed matters.
    generator = torch.Generator().manual_seed(3)
    model = LinearToy(torch.rand(8, 8, generator=generator) - 0.3, square=True)
    x = torch.rand(3, 1, 8, 8, generator=generator)
    options = dict(head_only=False, n_samples=6, smoothing_sigma=0.0, clip_percentile=100.0, floor_percentile=0.0)
    first = compute_attributions(model, x, 0, "smoothgrad", **options)
    np.testing.assert_array_equal(first, compute_attributions(model, x, 0, "smoothgrad", **options))
    # Neither the chunking nor an image's place in the batch changes its map.
    chunked = compute_attributions(model, x, 0, "smoothgrad", internal_batch_size=4, **options)
    np.testing.assert_allclose(first, chunked, atol=1e-6)
    np.testing.assert_allclose(first[2:], compute_attributions(model, x[2:], 0, "smoothgrad", **options), atol=1e-6)
    assert not np.allclose(first, compute_attributions(model, x, 0, "smoothgrad", seed=1, **options))


def test_smoothcam_weighs_positive_gradient_by_positive_activation():
    # Two channels on a 2x2 grid. Per cell: relu(g0) relu(a0) + relu(g1) relu(a1); a channel
    # with a negative gradient or activation adds nothing (HiResCAM would let it cancel).
    activation = torch.tensor([[[1.0, 2.0], [-1.0, 0.0]], [[3.0, 1.0], [2.0, -2.0]]])[None]
    gradient = torch.tensor([[[1.0, -1.0], [2.0, 1.0]], [[-1.0, 2.0], [1.0, 3.0]]])[None]
    positive = _layer_cam(torch.nn.Identity(), activation, gradient, "positive", 2, 2)
    np.testing.assert_allclose(positive[0].numpy(), [[1.0, 2.0], [2.0, 0.0]])
    hirescam = _layer_cam(torch.nn.Identity(), activation, gradient, "hirescam", 2, 2)
    np.testing.assert_allclose(hirescam[0].numpy(), [[0.0, 0.0], [0.0, 0.0]])  # 1 - 3, -2 + 2, -2 + 2, 0 - 6


class CellToy(torch.nn.Module):
    """``logit_k = sum(W_k * F)`` with ``F = features(x) = x``: the gradient on ``F`` is ``W_k``."""

    def __init__(self, weights: torch.Tensor) -> None:
        super().__init__()
        self.features = torch.nn.Identity()
        self.register_buffer("weights", weights)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return torch.einsum("nhw,khw->nk", self.features(pixel_values)[:, 0], self.weights)


def test_smoothcam_averages_the_positive_map_over_the_noisy_copies_against_versus():
    generator = torch.Generator().manual_seed(5)
    weights = torch.randn(3, 6, 6, generator=generator)
    x = torch.randn(2, 1, 6, 6, generator=generator)
    model = CellToy(weights)
    options = dict(head_only=False, layer=model.features, n_samples=3, noise_level=0.3, clip_percentile=100.0,
                    floor_percentile=0.0, smoothing_sigma=0.0, versus=2)
    maps = compute_attributions(model, x, [0, 1], "smoothcam_contrast", **options)
    for index, explained in enumerate([0, 1]):
        copies = noisy_copies(x[index:index + 1], 3, 0.3, 0)
        expected = (torch.relu(weights[explained] - weights[2]) * torch.relu(copies[:, 0]).mean(dim=0)).numpy()
        np.testing.assert_allclose(maps[index], (expected - expected.min()) / (expected.max() - expected.min()), atol=1e-5)
    # Neither the chunking of the copies nor an image's place in the batch changes its map.
    for batch_size in (1, 2):
        np.testing.assert_allclose(compute_attributions(model, x, [0, 1], "smoothcam_contrast", internal_batch_size=batch_size, **options),
                                   maps, atol=1e-6)
    np.testing.assert_allclose(compute_attributions(model, x[1:], [1], "smoothcam_contrast", **options)[0], maps[1], atol=1e-6)
    assert not np.allclose(maps, compute_attributions(model, x, [0, 1], "smoothcam_contrast", seed=1, **options))


@pytest.mark.parametrize(("name", "value"), [("n_samples", 0), ("noise_level", -0.1), ("clip_percentile", 101), ("floor_percentile", -1),
                                             ("smoothing_sigma", float("nan")), ("smoothing_sigma", 1e12), ("seed", 1.5)])
def test_bad_smoothgrad_options_are_refused(name, value):
    with pytest.raises(TumorClassifierError, match=name):
        compute_attributions(LinearToy(torch.ones(4, 4)), TOY_INPUT, [0], "smoothgrad", **{name: value})


# --------------------------------------------------------------------------- HF models


def _convnext(num_labels=4, **overrides):
    config = dict(num_channels=3, hidden_sizes=[8, 16, 16, 16], depths=[1, 1, 1, 1],
                  num_labels=num_labels, image_size=SIZE)
    config.update(overrides)
    return ConvNextForImageClassification(ConvNextConfig(**config))


def _vit(num_labels=4, **overrides):
    config = dict(image_size=SIZE, patch_size=8, hidden_size=32, num_hidden_layers=2,
                  num_attention_heads=2, intermediate_size=64, num_labels=num_labels)
    config.update(overrides)
    return ViTForImageClassification(ViTConfig(**config))


def _resnet():
    return ResNetForImageClassification(
        ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=4)
    )


BUILDERS = {"convnext": _convnext, "vit": _vit, "resnet": _resnet}


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {name: build() for name, build in BUILDERS.items()}


@pytest.fixture(scope="module")
def pixel_values():
    return torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", list(BUILDERS))
def test_hf_models_give_float32_maps_in_unit_range_of_the_input_size(models, pixel_values, name, method):
    # Noise is no head scan (the head mask has its own tests): maps of the whole input.
    maps = compute_attributions(models[name], pixel_values, torch.tensor([0, 1, 3]), method,
                                internal_batch_size=4, n_steps=4, n_samples=4, head_only=False)
    assert maps.shape == (3, SIZE, SIZE)
    assert maps.dtype == np.float32
    assert np.isfinite(maps).all() and maps.min() >= 0.0 and maps.max() <= 1.0
    flat = maps.reshape(3, -1)
    if name == "convnext" and method == "gradcam":
        # 4 stages downsample 32 px to a 1x1 map: a constant map, which carries no
        # location and is documented to come back all zero.
        assert np.all(maps == 0)
    else:
        # Min-max normalisation: each map spans [0, 1], unless the random model found
        # no positive evidence at all for a class, in which case the map is all zero.
        assert np.all(flat.min(axis=1) == 0.0)
        assert np.all((flat.max(axis=1) == 1.0) | np.all(flat == 0, axis=1))
        assert (flat.max(axis=1) == 1.0).sum() >= 2


def test_vit_gradcam_uses_tokens_that_reach_the_logits(models, pixel_values):
    vit = models["vit"]
    blocks = vit.vit.layers
    assert attribution_layer(vit) is blocks[-1].layernorm_before
    maps = compute_attributions(vit, pixel_values, [0, 1, 2], "gradcam")
    assert np.allclose(maps.reshape(3, -1).max(axis=1), 1.0)
    # Why not the last block's output: only its CLS token reaches the classifier, so the
    # gradient on every patch token is exactly zero and the map is blank.
    blank = compute_attributions(vit, pixel_values, [0, 1, 2], "gradcam", layer=blocks[-1])
    assert np.all(blank == 0)


def test_attribution_layer_per_backbone_and_unknown_models(models):
    assert attribution_layer(models["convnext"]) is models["convnext"].convnext.encoder.stages[-1]
    assert attribution_layer(models["resnet"]) is models["resnet"].resnet.encoder.stages[-1]
    assert attribution_layer(LogitsModel(models["resnet"])) is models["resnet"].resnet.encoder.stages[-1]
    with pytest.raises(TumorClassifierError) as error:
        attribution_layer(ToyNet())
    for supported in ("convnext", "resnet", "vit"):
        assert supported in str(error.value)
    with pytest.raises(TumorClassifierError, match="convnext"):
        compute_attributions(ToyNet(), TOY_INPUT, [0], "gradcam")


def test_attribution_layer_stages_count_from_the_end(models):
    convnext, resnet, vit = models["convnext"], models["resnet"], models["vit"]
    stages = convnext.convnext.encoder.stages
    assert attribution_layer(convnext, -2) is stages[-2]
    assert attribution_layer(convnext, stage=-3) is stages[-3]
    assert attribution_layer(convnext, -9) is stages[0]  # clipped to the first stage
    assert attribution_layer(resnet, -2) is resnet.resnet.encoder.stages[0]
    assert attribution_layer(vit, -2) is vit.vit.layers[-2].layernorm_before
    for stage in (0, 1, True, -1.0):
        with pytest.raises(TumorClassifierError, match="stage"):
            attribution_layer(convnext, stage)


def test_efficientnet_stages_are_the_last_blocks_of_each_resolution():
    from tumor_classifier.efficientnet import EfficientNetLiteConfig, EfficientNetLiteForImageClassification

    torch.manual_seed(0)
    model = EfficientNetLiteForImageClassification(EfficientNetLiteConfig(image_size=64, num_labels=4)).eval()
    blocks = model.efficientnet._blocks
    assert attribution_layer(model) is blocks[-1]
    shapes = {}
    handles = [attribution_layer(model, stage).register_forward_hook(
        lambda _m, _i, out, stage=stage: shapes.__setitem__(stage, tuple(out.shape[-2:]))) for stage in (-1, -2, -3)]
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    for handle in handles:
        handle.remove()
    assert shapes == {-1: (2, 2), -2: (4, 4), -3: (8, 8)}  # strides 32, 16, 8
    maps = compute_attributions(model, torch.randn(2, 3, 64, 64), [0, 1], "gradcam_multiscale")
    assert maps.shape == (2, 64, 64) and np.isfinite(maps).all()


def test_the_finer_stage_of_a_convnext_has_places_to_point_at(models, pixel_values):
    # At 32 px the last of 4 ConvNeXt stages is 1 x 1: Grad-CAM there has no location (a
    # constant map, all zero after normalisation). The stage before is 2 x 2.
    convnext = models["convnext"]
    coarse = compute_attributions(convnext, pixel_values, [0, 1, 3], "gradcam", head_only=False)
    assert np.all(coarse == 0)
    for method in ("gradcam_fine", "hirescam", "gradcam_plusplus", "gradcam_multiscale"):
        fine = compute_attributions(convnext, pixel_values, [0, 1, 3], method, head_only=False)
        assert (fine.reshape(3, -1).max(axis=1) == 1.0).sum() >= 2, method


def _head_scans(n=2, size=SIZE):
    """Textured discs (heads) on black, as [0, 1] grey (n, 1, s, s) and normalised RGB (mean = std = 0.5)."""
    generator = torch.Generator().manual_seed(5)
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    disc = ((rows - size * 0.45) ** 2 + (cols - size * 0.55) ** 2 <= (size * 0.3) ** 2).float()
    grey = disc * (0.4 + 0.6 * torch.rand(n, 1, size, size, generator=generator))
    return grey, (grey.expand(-1, 3, -1, -1) - 0.5) / 0.5


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", list(BUILDERS))
def test_maps_are_zero_outside_the_head(models, name, method):
    grey, pixel_values = _head_scans()
    head = head_mask(grey)[:, 0].numpy()
    assert head.any(axis=(1, 2)).all() and (~head).any(axis=(1, 2)).all()
    maps = compute_attributions(models[name], pixel_values, [0, 1], method, n_steps=4, n_samples=4)
    assert maps.shape == (2, SIZE, SIZE) and maps.min() >= 0 and maps.max() <= 1
    assert np.all(maps[~head] == 0)


def test_the_head_mask_follows_the_model_input_whatever_its_normalisation(models):
    grey, pixel_values = _head_scans()
    # The mask of the normalised input is the mask of the grey scan (levels are relative).
    from tumor_classifier.attributions.maps import _head_masks

    np.testing.assert_array_equal(_head_masks(pixel_values).numpy(), head_mask(grey)[:, 0].float().numpy())
    np.testing.assert_array_equal(_head_masks(pixel_values * 3.0 + 7.0).numpy(), _head_masks(pixel_values).numpy())
    # Without the mask the background gets evidence (the baseline 0 is grey, the
    # background black), so the mask is what removes it.
    head = head_mask(grey)[:, 0].numpy()
    free = compute_attributions(models["resnet"], pixel_values, [0, 1], "integrated_gradients", n_steps=4,
                                head_only=False)
    assert free[~head].sum() > 0
    # A black image has no head: its map is left alone rather than blanked by an empty mask.
    assert _head_masks(torch.zeros(1, 3, 8, 8)).min() == 1.0


def test_auto_method_per_backbone(models, pixel_values):
    assert default_method(models["convnext"]) == "gradcam"
    assert default_method(models["resnet"]) == "gradcam"
    assert default_method(models["vit"]) == "integrated_gradients"
    assert default_method(create_model("efficientnet_lite0", image_size=SIZE, from_scratch=True)) == "smoothcam_contrast"
    assert default_method(ToyNet()) == "integrated_gradients"
    # "auto" resolves through default_method, so it works on a model with no known layer.
    maps = compute_attributions(ToyNet(), TOY_INPUT, [0], "auto", n_steps=4)
    assert maps.shape == (1, 4, 4)


def test_unknown_method_names_the_accepted_ones(models, pixel_values):
    with pytest.raises(TumorClassifierError) as error:
        compute_attributions(models["vit"], pixel_values, [0, 0, 0], "saliency")
    assert "saliency" in str(error.value)
    for method in METHODS:
        assert method in str(error.value)


@pytest.mark.parametrize(
    ("target", "match"),
    [
        ([0, 1], r"shape \(3,\)"),
        ([0, 1, 4], "outside"),
        ([0, -1, 2], "outside"),
        ([0.0, 1.0, 2.0], "integer"),
    ],
)
def test_bad_targets_are_refused(models, pixel_values, target, match):
    with pytest.raises(TumorClassifierError, match=match):
        compute_attributions(models["convnext"], pixel_values, target)


def test_bad_inputs_are_refused(models, pixel_values):
    with pytest.raises(InvalidImageError, match=r"\(n, C, h, w\)"):
        compute_attributions(models["convnext"], pixel_values[0], [0])
    with pytest.raises(InvalidImageError, match="float"):
        compute_attributions(models["convnext"], pixel_values.to(torch.uint8), [0, 0, 0])
    with pytest.raises(TumorClassifierError, match="n_steps"):
        compute_attributions(models["convnext"], pixel_values, [0, 0, 0], "integrated_gradients", n_steps=0)
    with pytest.raises(TumorClassifierError, match="baseline"):
        compute_attributions(models["convnext"], pixel_values, [0, 0, 0], "occlusion",
                             baseline=torch.zeros(1, 2, 1, 1))


def _state(model):
    return (
        [(name, module.training) for name, module in model.named_modules()],
        [(name, param.requires_grad) for name, param in model.named_parameters()],
    )


def _hooks(model):
    return [
        name
        for name, module in model.named_modules()
        if module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
        or getattr(module, "_backward_pre_hooks", None)
    ]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", ["convnext", "vit"])
def test_model_state_is_restored_and_nothing_is_left_behind(name, method, pixel_values):
    torch.manual_seed(0)
    model = BUILDERS[name]()
    model.train()
    # A partly frozen model in train mode with one submodule in eval mode: every flag
    # must come back exactly as it was, not just "train()" on the top module.
    for param in model.base_model.embeddings.parameters():
        param.requires_grad_(False)
    model.classifier.eval()
    before = _state(model)
    compute_attributions(model, pixel_values, [0, 1, 2], method, internal_batch_size=8, n_steps=4)
    assert _state(model) == before
    assert _hooks(model) == []
    assert all(param.grad is None for param in model.parameters())


def test_state_is_restored_when_attribution_fails(models, pixel_values):
    model = _convnext()
    model.train()
    before = _state(model)
    unused = torch.nn.Conv2d(3, 3, 1)  # never called in forward: Grad-CAM must fail
    with pytest.raises(TumorClassifierError, match="did not produce"):
        compute_attributions(model, pixel_values, [0, 1, 2], "gradcam", layer=unused)
    assert _state(model) == before
    assert _hooks(model) == [] and not unused._forward_hooks


@pytest.mark.parametrize("method", ["integrated_gradients", "occlusion"])
def test_baseline_forms_are_equivalent(models, pixel_values, method):
    # The estimator passes the normalised black value, (0 - mean) / std, which may be a
    # float, a per-channel numpy array or a (1, C, 1, 1) tensor.
    options = dict(n_steps=4)
    as_tensor = compute_attributions(models["resnet"], pixel_values, [0, 1, 2], method,
                                     baseline=torch.full((1, 3, 1, 1), -2.0), **options)
    for baseline in (-2.0, np.array([-2.0, -2.0, -2.0]), torch.full((3, 3, SIZE, SIZE), -2.0)):
        np.testing.assert_allclose(
            compute_attributions(models["resnet"], pixel_values, [0, 1, 2], method,
                                 baseline=baseline, **options),
            as_tensor, atol=1e-5,
        )
    default = compute_attributions(models["resnet"], pixel_values, [0, 1, 2], method, **options)
    assert not np.allclose(default, as_tensor)


def test_works_under_the_callers_inference_mode(models):
    with torch.inference_mode():
        x = torch.randn(2, 3, SIZE, SIZE)
        baseline = torch.full((1, 3, 1, 1), -1.0)
        for method in METHODS:
            maps = compute_attributions(models["vit"], x, [1, 2], method, baseline=baseline, n_steps=4)
            assert maps.shape == (2, SIZE, SIZE)


def test_logits_model_unwraps_outputs(models, pixel_values):
    logits = LogitsModel(models["convnext"])(pixel_values)
    assert isinstance(logits, torch.Tensor) and logits.shape == (3, 4)

    class TupleNet(torch.nn.Module):
        def forward(self, pixel_values):
            return (pixel_values.mean(dim=(2, 3)), "extra")

    assert LogitsModel(TupleNet())(pixel_values).shape == (3, 3)
    assert LogitsModel(LogitsModel(TupleNet())).model.__class__ is TupleNet

    class NoLogits(torch.nn.Module):
        def forward(self, pixel_values):
            return {"scores": pixel_values}

    with pytest.raises(TumorClassifierError, match="logits"):
        LogitsModel(NoLogits())(pixel_values)


# --------------------------------------------------------------------- localisation


def _square_data(n, generator, side=8, size=SIZE):
    """Noise, plus a bright side x side square at a random place in the images of class 1."""
    x = torch.randn(n, 1, size, size, generator=generator) * 0.5
    y = torch.randint(0, 2, (n,), generator=generator)
    mask = torch.zeros(n, size, size)
    for i in range(n):
        row, col = torch.randint(0, size - side + 1, (2,), generator=generator).tolist()
        mask[i, row:row + side, col:col + side] = 1.0
        if y[i]:
            x[i, :, row:row + side, col:col + side] += 2.0
    return x.expand(-1, 3, -1, -1).contiguous(), y, mask


def _train_square_detector(model, seed, steps=60):
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        x, y, _ = _square_data(32, generator)
        loss = torch.nn.functional.cross_entropy(model(x).logits, y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    x, y, mask = _square_data(64, generator)
    with torch.no_grad():
        accuracy = (model(x).logits.argmax(dim=1) == y).float().mean().item()
    positive = y == 1
    return accuracy, x[positive][:16], mask[positive][:16]


def _mass_inside(maps, mask):
    """Share of each map's mass inside the square, divided by the square's share of the area."""
    maps = torch.from_numpy(maps)
    share = (maps * mask).sum(dim=(1, 2)) / maps.sum(dim=(1, 2)).clamp_min(1e-12)
    return share / mask[0].mean()


def test_gradcam_of_a_trained_convnext_points_at_the_square():
    torch.manual_seed(0)
    # Two stages: a 4x4 last feature map at 32 px, so Grad-CAM has places to point at.
    model = _convnext(num_labels=2, num_stages=2, hidden_sizes=[16, 32], depths=[1, 1])
    accuracy, x, mask = _train_square_detector(model, seed=0)
    assert accuracy >= 0.85, f"the toy model did not learn the task (accuracy {accuracy:.2f})"
    ratio = _mass_inside(compute_attributions(model, x, 1, "auto"), mask)
    # 1.0 = no better than spreading the mass uniformly; seeds 0-5 gave means of 3.0-5.1.
    assert ratio.mean() > 2.0, ratio
    assert (ratio > 1.0).float().mean() >= 0.75, ratio


def test_integrated_gradients_of_a_trained_vit_points_at_the_square():
    torch.manual_seed(0)
    model = _vit(num_labels=2, patch_size=4)
    accuracy, x, mask = _train_square_detector(model, seed=0)
    assert accuracy >= 0.85, f"the toy model did not learn the task (accuracy {accuracy:.2f})"
    ratio = _mass_inside(compute_attributions(model, x, 1, "auto", n_steps=16), mask)
    assert ratio.mean() > 2.0, ratio
    assert (ratio > 1.0).float().mean() >= 0.75, ratio


# --------------------------------------------------------------------------- versus


class SharedEvidenceToy(torch.nn.Module):
    """Three classes on a one-channel input: ``logit_k = sum(W_k * x)`` with
    ``W_0 = S + D`` and ``W_1 = S``: class 0 and class 1 share the evidence ``S``, and only
    ``D`` tells class 0 from class 1 (``W_2 = 0``)."""

    def __init__(self, shared: torch.Tensor, distinct: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", torch.stack([shared + distinct, shared, torch.zeros_like(shared)]))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return torch.einsum("nhw,khw->nk", pixel_values[:, 0], self.weight)


SHARED = torch.zeros(4, 4)
SHARED[:2, :2] = 3.0
DISTINCT = torch.zeros(4, 4)
DISTINCT[3, 3] = 1.0
DISTINCT[2, 3] = 0.5


@pytest.mark.parametrize("method", ["integrated_gradients", "occlusion", "smoothgrad"])
def test_versus_explains_what_tells_the_class_from_the_other(method):
    """The model is linear, so IG (zero baseline) and 1-pixel occlusion are exactly
    ``relu(x * W)`` and SmoothGrad is ``|W|``: plain maps of class 0 peak on the shared
    evidence S; against class 1 only D remains. Explaining class 1 against itself
    explains its own logit."""
    model = SharedEvidenceToy(SHARED, DISTINCT)
    x = torch.ones(1, 1, 4, 4)
    options = {"head_only": False, **TOY_OPTIONS[method]}
    plain = compute_attributions(model, x, [0], method, **options)[0]
    against = compute_attributions(model, x, [0], method, versus=1, **options)[0]
    assert np.unravel_index(plain.argmax(), plain.shape) in [(0, 0), (0, 1), (1, 0), (1, 1)]
    np.testing.assert_allclose(against, DISTINCT.numpy() / DISTINCT.max().item(), atol=1e-5)
    itself = compute_attributions(model, x, [1], method, versus=1, **options)[0]
    np.testing.assert_allclose(itself, SHARED.numpy() / SHARED.max().item(), atol=1e-5)


class SharedChannelsToy(torch.nn.Module):
    """A 1x1 conv copies the input to two identical channels; ``logit_0`` reads channel 0,
    ``logit_1`` channel 1, ``logit_2`` their mean: every class sees the same evidence."""

    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Conv2d(1, 2, kernel_size=1, bias=False)
        with torch.no_grad():
            self.features.weight.fill_(1.0)
        self.head = torch.nn.Linear(2, 3, bias=False)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(pixel_values).mean(dim=(2, 3)))


@pytest.mark.parametrize("method", ["gradcam", "hirescam"])
def test_versus_cancels_evidence_that_both_classes_share(method):
    """Grad-CAM of class 0 is relu(x) / 16; against class 1 (the same evidence) the
    channel weights are +1/16 and -1/16 on identical channels: nothing is left."""
    model = SharedChannelsToy()
    options = {"head_only": False, "layer": model.features}
    plain = compute_attributions(model, TOY_INPUT, [0], method, **options)[0]
    positive = TOY_INPUT[0, 0].clamp(min=0).numpy()
    np.testing.assert_allclose(plain, positive / positive.max(), atol=1e-5)
    against = compute_attributions(model, TOY_INPUT, [0], method, versus=1, **options)[0]
    np.testing.assert_array_equal(against, np.zeros_like(against))
    # target=None is still the predicted class of the plain logits, which come back unchanged.
    maps, logits = compute_attributions(model, TOY_INPUT, None, method, versus=1, return_logits=True, **options)
    with torch.no_grad():
        np.testing.assert_allclose(logits, model(TOY_INPUT).numpy(), atol=1e-6)


def test_a_bad_versus_is_refused(models, pixel_values):
    with pytest.raises(TumorClassifierError, match="outside"):
        compute_attributions(models["convnext"], pixel_values, [0, 1, 2], "gradcam", versus=9)
    with pytest.raises(TumorClassifierError, match="integer"):
        compute_attributions(models["convnext"], pixel_values, [0, 1, 2], "gradcam", versus=0.5)


# --------------------------------------------------------------------------- folded copies

def _efficientnet_with_trained_looking_norms(seed: int = 0):
    return efficientnet_with_trained_looking_norms(SIZE, seed)


class _NoFolding(torch.nn.Module):
    """The same network without ``folded_copy``: attributions differentiate it as it is."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).logits


def test_the_folded_copy_gives_the_models_logits_and_gradients_with_no_batch_norm():
    model = _efficientnet_with_trained_looking_norms()
    folded = model.folded_copy()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the original is untouched
    assert not folded.training and not any(p.requires_grad for p in folded.parameters())
    # Channels-last weights: the layout whose depthwise backward pass is fast on CPU.
    assert all(m.weight.is_contiguous(memory_format=torch.channels_last)
               for m in folded.modules() if isinstance(m, torch.nn.Conv2d))
    x = _head_scans(3)[1].requires_grad_(True)
    logits, folded_logits = model(pixel_values=x).logits, folded(pixel_values=x).logits
    np.testing.assert_allclose(folded_logits.detach(), logits.detach(), rtol=1e-4, atol=1e-5)
    (gradient,) = torch.autograd.grad(logits[:, 1].sum(), x)
    (folded_gradient,) = torch.autograd.grad(folded_logits[:, 1].sum(), x)
    np.testing.assert_allclose(folded_gradient, gradient, rtol=1e-3, atol=1e-6 * float(gradient.abs().max()))


def test_gradient_methods_differentiate_the_folded_copy_to_the_same_maps():
    model = _efficientnet_with_trained_looking_norms()
    x = _head_scans(2)[1]
    for method, options in (("smoothgrad", {"n_samples": 2}), ("integrated_gradients", {"n_steps": 4})):
        folded_maps = compute_attributions(model, x, [1, 2], method, **options)
        plain_maps = compute_attributions(_NoFolding(model), x, [1, 2], method, **options)
        np.testing.assert_allclose(folded_maps, plain_maps, atol=2e-3)
    # smoothcam_contrast hooks the copy's blocks; the model's own blocks give the same maps.
    stages = [[attribution_layer(model, stage)] for stage in (-4, -3, -2, -1)]
    folded_maps = compute_attributions(model, x, [1, 2], "smoothcam_contrast", versus=0)
    plain_maps = compute_attributions(_NoFolding(model), x, [1, 2], "smoothcam_contrast", versus=0, layer=stages)
    np.testing.assert_allclose(folded_maps, plain_maps, atol=2e-3)
    assert folded_maps.max() == 1.0


def test_the_folded_copy_is_kept_until_the_weights_change():
    model = _efficientnet_with_trained_looking_norms()
    first = gradient_network(model)
    assert gradient_network(model) is first
    with torch.no_grad():  # an in-place change, as an optimiser step makes it
        model.efficientnet._fc.weight.add_(0.5)
    second = gradient_network(model)
    assert second is not first
    x = _head_scans(1)[1]
    np.testing.assert_allclose(second(pixel_values=x).logits, model(pixel_values=x).logits.detach(), rtol=1e-4, atol=1e-5)
    plain = _NoFolding(model)
    assert gradient_network(plain) is plain  # a network without folded_copy is differentiated as it is
