"""Intensity domain randomisation in BatchAugmenter: head mask, inversion, Bezier curves, GIN.

The synthetic heads are mid-grey discs on black with a dark inner blob (CSF-like, below the
head-mask threshold, so only the mask's fill keeps it) and a bright one. ``_OldAugmenter``
is a frozen copy of ``BatchAugmenter.__call__`` from before the domain randomisation, so
the default configuration is checked to repeat it bit for bit.
"""

import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tumor_classifier.preprocessing import AugmentationConfig, BatchAugmenter, MRIPreprocessor, head_mask

torch.set_num_threads(1)

TRAINING = Path(__file__).parent / "data" / "brain-tumor-mri" / "Training"
#: Shipped slices whose background is grey or noisy (10 to 40 of 255) or carries a frame
#: line and text: a fraction of the maximum alone takes their whole image for head.
HARD_BACKGROUNDS = (
    "notumor/Tr-no_0121.jpg",
    "notumor/Tr-no_0492.jpg",
    "notumor/Tr-no_1132.jpg",
    "pituitary/Tr-pi_1193.jpg",
)
NEW_OPS = {
    "invert": {"invert": 1.0},
    "bezier_monotone": {"bezier": 1.0},
    "bezier_nonmonotone": {"bezier": 1.0, "bezier_nonmonotone": 1.0},
    "gin": {"gin": 1.0},
}


def _config(**values) -> AugmentationConfig:
    """Everything off except ``values``."""
    config = AugmentationConfig.none()
    for key, value in values.items():
        setattr(config, key, value)
    return config


def _heads(n: int = 8, size: int = 64, seed: int = 0):
    """Synthetic heads and their regions.

    Returns:
        ``(batch, head, dark, bright)``: float32 (n, 1, size, size) in [0, 1] and three
        bool masks of the same shape (disc, dark blob at 0.03, bright blob at 0.9).
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float64)
    images, heads, darks, brights = [], [], [], []
    for _ in range(n):
        cy, cx = size / 2 + rng.uniform(-2, 2, 2)
        radius = size * rng.uniform(0.36, 0.42)
        head = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
        dark = (yy - cy) ** 2 + (xx - cx + radius / 2.5) ** 2 <= (radius / 5) ** 2
        bright = (yy - cy) ** 2 + (xx - cx - radius / 2.5) ** 2 <= (radius / 5) ** 2
        image = np.where(head, rng.uniform(0.4, 0.6), 0.0)
        image[dark], image[bright] = 0.03, 0.9
        images.append(image), heads.append(head), darks.append(dark), brights.append(bright)

    def stack(arrays, dtype):
        return torch.from_numpy(np.stack(arrays)[:, None].astype(dtype))

    return stack(images, np.float32), stack(heads, bool), stack(darks, bool), stack(brights, bool)


def _region_mean(batch: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """(n,) mean of each image over its region."""
    return (batch * region).sum(dim=(1, 2, 3)) / region.sum(dim=(1, 2, 3))


def _slices(names, size: int = 96) -> torch.Tensor:
    pre = MRIPreprocessor(size=size)
    arrays = np.stack([pre.prepare_array(TRAINING / name) for name in names])
    return torch.from_numpy(arrays).float().div(255).unsqueeze(1)


class _OldAugmenter(BatchAugmenter):
    """``BatchAugmenter.__call__`` as it was before the domain randomisation (frozen copy)."""

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
        if cfg.blur:
            blurred = F.avg_pool2d(F.pad(batch, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
            pick = (self._rand(n, device) < cfg.blur).view(n, 1, 1, 1)
            batch = torch.where(pick, blurred, batch)
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
        return batch.clamp_(0, 1)


# -- head mask ---------------------------------------------------------------------
@pytest.mark.parametrize("size", [64, 160])  # 160: the morphology runs on a coarser grid
def test_head_mask_keeps_dark_tissue_inside_the_head_and_no_background(size):
    batch, head, dark, _ = _heads(size=size)
    mask = head_mask(batch)
    assert mask.shape == batch.shape and mask.dtype == torch.bool
    assert mask[dark].all()  # 0.03 is below the threshold: only the fill keeps it
    assert mask[head].all()
    assert not mask[batch == 0].any()
    assert not head_mask(torch.zeros(2, 1, 32, 32)).any()


def test_head_mask_ignores_grey_noisy_background_and_a_frame_line():
    batch, head, dark, _ = _heads(seed=1)
    rng = torch.Generator().manual_seed(0)
    background = 0.06 + 0.1 * torch.rand(batch.shape, generator=rng)  # grey, noisy: 15 to 41 of 255
    noisy = torch.where(head, batch, background)
    noisy[..., 1, :], noisy[..., :, -2] = 0.8, 0.8  # a thin frame line near two edges
    mask = head_mask(noisy)
    assert mask[head].float().mean() > 0.99 and mask[dark].all()
    outside = ~F.max_pool2d(head.float(), 5, stride=1, padding=2).bool()  # 2 px away from the head
    assert mask[outside].float().mean() < 0.01


def test_head_mask_on_shipped_slices_with_grey_background_or_frame():
    batch = _slices(HARD_BACKGROUNDS)
    mask = head_mask(batch)
    coverage = mask.float().mean(dim=(1, 2, 3))
    assert (coverage > 0.4).all() and (coverage < 0.95).all(), coverage
    corners = torch.stack([mask[..., :6, :6], mask[..., :6, -6:], mask[..., -6:, :6], mask[..., -6:, -6:]], dim=1)
    outside_corners = (~corners.flatten(2).any(dim=2)).sum(dim=1)
    assert (outside_corners >= 2).all(), outside_corners
    tissue = batch > 0.3
    assert (mask & tissue).sum() / tissue.sum() > 0.97


# -- each new operation ------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(NEW_OPS))
def test_each_new_op_alone_keeps_shape_range_and_black_background(name):
    batch, *_ = _heads()
    out = BatchAugmenter(_config(**NEW_OPS[name]), seed=0)(batch.clone())
    assert out.shape == batch.shape and out.dtype == batch.dtype
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    assert torch.equal(out[batch == 0], torch.zeros_like(out[batch == 0]))
    assert not torch.equal(out, batch)


def test_inversion_reverses_the_brightness_order_inside_the_head():
    batch, head, dark, bright = _heads()
    out = BatchAugmenter(_config(invert=1.0), seed=0)(batch.clone())
    assert (_region_mean(batch, bright) > _region_mean(batch, dark) + 0.5).all()
    assert (_region_mean(out, bright) < _region_mean(out, dark) - 0.5).all()
    torch.testing.assert_close(out[head], 1 - batch[head])


def test_nonmonotone_bezier_can_reorder_intensities_but_monotone_never_does():
    batch, head, dark, bright = _heads(n=32)
    grey = head & ~dark & ~bright
    levels = lambda out: torch.stack([_region_mean(out, r) for r in (dark, grey, bright)], dim=1)  # noqa: E731
    monotone = BatchAugmenter(_config(bezier=1.0), seed=0)
    for _ in range(3):
        out = levels(monotone(batch.clone()))
        assert (out.diff(dim=1) >= -1e-6).all()
    assert not torch.allclose(out, levels(batch), atol=0.02)  # the curves do change intensities
    wild = levels(BatchAugmenter(_config(bezier=1.0, bezier_nonmonotone=1.0), seed=0)(batch.clone()))
    reordered = (wild.diff(dim=1) < -0.1).any(dim=1)
    assert reordered.sum() >= 3, wild


def test_nonmonotone_bezier_keeps_the_full_contrast():
    # A radial ramp: every intensity from 0 (a core enclosed by the head) to 1 (the rim).
    size, radius = 64, 26
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    distance = ((yy - 31.5) ** 2 + (xx - 31.5) ** 2).sqrt()
    level = ((distance - 3) / (radius - 4)).clamp(0, 1)
    ramp = torch.where(distance <= radius, level, 0.0).float().expand(16, 1, size, size).clone()
    disc = (distance <= radius).expand_as(ramp)
    out = BatchAugmenter(_config(bezier=1.0, bezier_nonmonotone=1.0), seed=0)(ramp.clone())
    spread = torch.stack([o[d].max() - o[d].min() for o, d in zip(out, disc)])
    assert (spread > 0.95).all(), spread


def test_gin_changes_every_image_and_stays_finite():
    batch, head, *_ = _heads()
    out = BatchAugmenter(_config(gin=1.0), seed=0)(batch.clone())
    assert torch.isfinite(out).all()
    change = (out - batch).abs().amax(dim=(1, 2, 3))
    assert (change > 1e-3).all(), change
    assert change.max() > 0.2
    # The network's output is rescaled to [0, 1] before blending, so it is not clipped flat.
    saturated = ((out == 0) | (out == 1))[head].float().mean()
    assert saturated < 0.01, saturated


def test_wide_gamma_keeps_the_range_and_uses_it():
    batch, head, dark, bright = _heads(n=32)
    grey = head & ~dark & ~bright
    out = BatchAugmenter(_config(gamma=1.5), seed=0)(batch.clone())
    assert out.min() >= 0 and out.max() <= 1 and torch.isfinite(out).all()
    effective = torch.log(_region_mean(out, grey)) / torch.log(_region_mean(batch, grey))
    assert effective.max() > 2 and effective.min() < 0.5, effective


# -- randomness, defaults, identity --------------------------------------------------
def test_new_ops_are_seeded():
    batch, *_ = _heads()
    config = AugmentationConfig(invert=0.5, bezier=0.5, bezier_nonmonotone=0.5, gin=0.5)
    first = BatchAugmenter(config, seed=5)
    again = BatchAugmenter(config, seed=5)
    a, b = first(batch.clone()), again(batch.clone())
    assert torch.equal(a, b)
    assert torch.equal(first(batch.clone()), again(batch.clone()))  # the streams stay in step
    assert not torch.allclose(a, BatchAugmenter(config, seed=6)(batch.clone()))


@pytest.mark.parametrize(
    "config",
    [AugmentationConfig(), AugmentationConfig(gamma=1.5, blur=1.0, vflip=0.5), _config(noise=0.05, gamma=0.3)],
    ids=["defaults", "wide-gamma-blur-vflip", "noise-gamma-only"],
)
def test_with_the_new_ops_off_the_old_augmentation_repeats_exactly(config):
    batch, *_ = _heads()
    new, old = BatchAugmenter(config, seed=7), _OldAugmenter(config, seed=7)
    for _ in range(2):  # and the generator is left in the same state
        assert torch.equal(new(batch.clone()), old(batch.clone()))


def test_background_is_reset_only_for_images_that_got_a_new_op():
    batch, head, *_ = _heads(n=32)
    outside = ~head
    old_ops = {"noise": 0.05}  # (a brightness offset could clamp a background to 0)
    before = BatchAugmenter(_config(**old_ops), seed=0)(batch.clone())
    assert ((before * outside).amax(dim=(1, 2, 3)) > 0).all()  # noise lights every background
    out = BatchAugmenter(_config(invert=0.5, **old_ops), seed=0)(batch.clone())
    black = (out * outside).amax(dim=(1, 2, 3)) == 0
    assert 0 < black.sum() < len(black)


@pytest.mark.parametrize("name", ["invert", "bezier", "gin"])
def test_an_op_at_half_probability_leaves_the_other_images_untouched(name):
    batch, *_ = _heads(n=16)
    out = BatchAugmenter(_config(**{name: 0.5, "bezier_nonmonotone": 0.5}), seed=0)(batch.clone())
    untouched = torch.tensor([torch.equal(o, b) for o, b in zip(out, batch)])
    assert 0 < untouched.sum() < len(untouched), untouched


def test_cpu_subset_path_matches_the_accelerator_path(monkeypatch):
    # On a CPU only the picked images are computed; an accelerator computes all and keeps
    # the picked ones. Both must give the same images from the same random stream.
    batch, *_ = _heads(n=16)
    config = AugmentationConfig(invert=0.5, bezier=0.5, bezier_nonmonotone=0.5, gin=0.5)
    subset = BatchAugmenter(config, seed=2)(batch.clone())

    def everywhere(pick, batch, compute, *per_image):
        return torch.where(pick, compute(batch, *per_image), batch)

    monkeypatch.setattr(BatchAugmenter, "_on_picked", staticmethod(everywhere))
    full = BatchAugmenter(config, seed=2)(batch.clone())
    torch.testing.assert_close(subset, full, atol=1e-5, rtol=0)


def test_none_config_is_the_identity():
    config = AugmentationConfig.none()
    assert all(value == 0 for value in asdict(config).values())
    assert set(asdict(config)) >= {"invert", "bezier", "bezier_nonmonotone", "gin"}
    batch, *_ = _heads()
    assert torch.equal(BatchAugmenter(config, seed=0)(batch.clone()), batch)


def test_new_ops_default_to_off():
    config = AugmentationConfig()
    assert config.invert == config.bezier == config.bezier_nonmonotone == config.gin == 0.0
    assert config.gamma == 0.3


def test_training_sized_batch_goes_through_every_op():
    batch, *_ = _heads(n=64, size=128, seed=3)
    config = AugmentationConfig(gamma=1.5, invert=1.0, bezier=1.0, bezier_nonmonotone=0.5, gin=1.0)
    out = BatchAugmenter(config, seed=0)(batch)
    assert out.shape == batch.shape and torch.isfinite(out).all()
    assert out.min() >= 0 and out.max() <= 1


def test_real_slices_keep_black_corners_under_every_new_op():
    batch = _slices(HARD_BACKGROUNDS + ("glioma/Tr-gl_0098.jpg", "meningioma/Tr-me_0076.jpg"))
    mask = head_mask(batch)
    for name, values in NEW_OPS.items():
        out = BatchAugmenter(_config(**values), seed=1)(batch.clone())
        assert torch.equal(out[~mask], torch.zeros_like(out[~mask])), name
        assert (out[mask] != batch[mask]).float().mean() > 0.5, name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_runs_on_cuda_without_host_round_trips():
    batch, *_ = _heads(n=16, size=96)
    config = AugmentationConfig(gamma=1.5, invert=0.5, bezier=0.5, bezier_nonmonotone=0.5, gin=0.5)
    device = torch.device("cuda")
    gpu = batch.to(device)
    BatchAugmenter(config, seed=0)(gpu.clone())  # warm up (first calls may allocate)
    torch.cuda.set_sync_debug_mode("error")
    try:
        first = BatchAugmenter(config, seed=0)(gpu.clone())
        again = BatchAugmenter(config, seed=0)(gpu.clone())
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert first.device.type == "cuda" and torch.equal(first, again)
    assert first.min() >= 0 and first.max() <= 1
    cpu_mask, gpu_mask = head_mask(batch), head_mask(gpu).cpu()
    assert (cpu_mask != gpu_mask).float().mean() < 0.001
