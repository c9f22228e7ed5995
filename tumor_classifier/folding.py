"""A cheaper network with a model's logits: its batch-norm-folded copy, kept per model.

A backbone may offer ``folded_copy()``: an inference-only network with the same logits
in eval mode and less work per pass (EfficientNet-Lite folds each batch norm into its
convolution and stores the copy channels-last, see
:meth:`~tumor_classifier.efficientnet.EfficientNetLiteForImageClassification.folded_copy`).
``predict`` runs its forward passes through that copy (:mod:`tumor_classifier.inference`)
and the gradient attributions differentiate it (:mod:`tumor_classifier.attributions`);
the Grad-CAM family hooks the model's own layers and does not use it. Imports nothing of
the package.
"""

from __future__ import annotations

import weakref
from itertools import chain

import torch

#: model -> (the state of its weights when folded, the folded copy); weak keys: it goes with the model.
_folded: "weakref.WeakKeyDictionary[torch.nn.Module, tuple[tuple, torch.nn.Module]]" = weakref.WeakKeyDictionary()


def _weights_state(model: torch.nn.Module) -> tuple:
    """Where each parameter and buffer lives and how often it was changed in place."""
    return tuple((t.device, t.data_ptr(), t._version) for t in chain(model.parameters(), model.buffers()))


def folded_network(model: torch.nn.Module) -> torch.nn.Module:
    """``model``'s ``folded_copy()`` when it offers one, else ``model`` itself.

    The copy is made on first use and made again whenever a parameter or buffer of
    ``model`` was replaced, moved or changed in place since (an optimiser step,
    ``load_state_dict``, ``.to()``, re-initialisation: each moves a tensor's storage or
    its version counter). A write through ``tensor.data`` moves neither and goes unseen.
    A model whose weights were made inside ``torch.inference_mode()`` (they track no
    version) is returned as it is.
    The copy is in eval mode: use it only where ``model`` would be in eval mode too.
    Call it under a lock that keeps other threads' passes through ``model`` out (the
    package's callers hold :data:`tumor_classifier.inference.model_passes`).
    """
    fold = getattr(model, "folded_copy", None)
    if not callable(fold) or any(t.is_inference() for t in chain(model.parameters(), model.buffers())):
        return model  # weights made under torch.inference_mode() keep no version: a change would go unseen
    state = _weights_state(model)
    cached = _folded.get(model)
    if cached is None or cached[0] != state:
        # Never inference tensors, even when predict (inside torch.inference_mode) makes
        # it first: the gradient attributions differentiate the same copy later.
        with torch.inference_mode(False):
            cached = (state, fold())
        _folded[model] = cached
    return cached[1]
