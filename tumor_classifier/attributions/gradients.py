"""Input-gradient methods: SmoothGrad and Integrated Gradients (Captum).

Both are pixel-level and model-agnostic; each returns raw maps ``(n, h, w)``, positive or
absolute evidence with channels summed, not yet masked or normalised.
"""

from __future__ import annotations

from typing import Any

import torch

from .logits import LogitsModel

#: SmoothGrad variants: ``abs_first`` averages |gradient| (magnitude) instead of
#: taking |mean gradient| (noise with alternating signs cancels in the mean).
_SMOOTHGRAD_SPECS: dict[str, dict[str, Any]] = {"smoothgrad": {"abs_first": False}}


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
