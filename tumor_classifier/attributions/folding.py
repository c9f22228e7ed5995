"""The network the gradient methods differentiate: a model's batch-norm-folded copy.

SmoothGrad, Integrated Gradients and Occlusion differentiate or perturb
:func:`tumor_classifier.folding.folded_network` of the model (about a quarter less time
for a forward and backward pass on these CPUs, and stored channels-last about 40 % less
again); the Grad-CAM family hooks the model's own layers and does not use it, except
``smoothcam_contrast``, which hooks the copy's (the same activations) when the model folds
and the caller names no layer.
"""

from __future__ import annotations

import torch

from ..folding import folded_network
from .logits import _unwrap


def gradient_network(model: torch.nn.Module) -> torch.nn.Module:
    """The folded copy of ``model`` (unwrapped from a :class:`~.logits.LogitsModel`), else ``model`` itself.

    Called under the model's attribution lock (see :mod:`.state`); predict holds another
    lock (:data:`tumor_classifier.inference.model_passes`), so two threads may fold the
    same model at once: each gets a valid copy, one is kept.
    """
    network = _unwrap(model)
    folded = folded_network(network)
    return model if folded is network else folded
