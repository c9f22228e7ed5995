"""Occlusion (Captum): the drop of the target logit when a square of the input is replaced."""

from __future__ import annotations

import torch

from .logits import LogitsModel


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
