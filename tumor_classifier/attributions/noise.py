"""The noisy copies that SmoothGrad-style methods average over.

One Gaussian noise plane per copy, shared by the channels (a grey scan repeated on three
channels stays grey, as the model saw it in training), drawn from a CPU generator seeded
for every image: a map depends on the image only (not on its place in the batch, nor on
the batch size, nor on the device) and a call is repeatable.
"""

from __future__ import annotations

import torch


def noisy_copies(image: torch.Tensor, n_samples: int, noise_level: float, seed: int) -> torch.Tensor:
    """``n_samples`` copies ``(n_samples, C, h, w)`` of one image ``(1, C, h, w)`` with noise added.

    The noise's standard deviation is ``noise_level`` times the image's value range
    (max - min); the result is detached (the caller asks for gradients).
    """
    image = image.detach()
    spread = float(image.amax() - image.amin())
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn((n_samples, 1, *image.shape[-2:]), generator=generator, dtype=torch.float32)
    return image + (noise * noise_level * spread).to(device=image.device, dtype=image.dtype)
