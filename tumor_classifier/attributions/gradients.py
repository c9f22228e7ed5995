"""Input-gradient methods: SmoothGrad and Integrated Gradients (Captum).

Both are pixel-level and model-agnostic; each returns raw maps (SmoothGrad ``(k, n, h, w)``,
Integrated Gradients ``(n, h, w)``), positive or absolute evidence with channels summed,
not yet masked or normalised.
"""

from __future__ import annotations

import torch

from .logits import LogitsModel
from .noise import noisy_copies

#: The SmoothGrad methods: ``smoothgrad`` maps the target logit's gradient;
#: ``smoothgrad_contrast`` adds the map of the target-versus-``versus`` logit difference
#: (see :func:`~tumor_classifier.attributions.compute_attributions`).
SMOOTHGRAD_METHODS = ("smoothgrad", "smoothgrad_contrast")


def _smoothgrad(
    logits_model: LogitsModel,
    pixel_values: torch.Tensor,
    target: torch.Tensor,
    batch_size: int,
    n_samples: int,
    noise_level: float,
    seed: int,
    versus: int | None = None,
) -> torch.Tensor:
    """SmoothGrad sensitivity ``(k, n, h, w)``: |mean over noisy copies of the channel-summed gradient|.

    ``k`` is 1 without ``versus``: the map of the target logit. With ``versus`` it is 2,
    the second map being that of ``logit_target - logit_versus``, from the same noisy
    copies and forward passes (one more backward pass each); for an image whose target
    *is* ``versus`` the second map is the first.

    The noise is :func:`~.noise.noisy_copies`' (seeded per image: a call is repeatable).
    """
    n, _, height, width = pixel_values.shape
    maps = []
    for index in range(n):
        image = pixel_values[index:index + 1]
        copies = noisy_copies(image, n_samples, noise_level, seed)
        explained = int(target[index])
        classes = [explained] if versus is None or versus == explained else [explained, versus]
        totals = torch.zeros((len(classes), height, width), dtype=torch.float32, device=image.device)
        for start in range(0, n_samples, batch_size):
            noisy = copies[start:start + batch_size].clone().requires_grad_(True)
            logits = logits_model(noisy)
            for row, label in enumerate(classes):
                (gradient,) = torch.autograd.grad(logits[:, label].sum(), noisy, retain_graph=row + 1 < len(classes))
                # Channels summed: the derivative with respect to the grey value.
                totals[row] += gradient.float().sum(dim=1).sum(dim=0)
        means = totals / n_samples
        single = [means[0].abs()]
        if versus is not None:  # the gradient is linear: the difference's mean is the means' difference
            single.append((means[0] - means[1]).abs() if len(classes) == 2 else single[0])
        maps.append(torch.stack(single))
    return torch.stack(maps, dim=1)


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
