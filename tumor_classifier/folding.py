"""A cheaper network with a model's logits: its batch-norm-folded copy, kept per model.

A backbone may offer ``folded_copy()``: an inference-only network with the same logits
in eval mode and less work per pass (EfficientNet-Lite folds each batch norm into its
convolution and stores the copy channels-last, see
:meth:`~tumor_classifier.efficientnet.EfficientNetLiteForImageClassification.folded_copy`).
``predict`` runs its forward passes through that copy (:mod:`tumor_classifier.inference`)
and the gradient attributions differentiate it (:mod:`tumor_classifier.attributions`);
the Grad-CAM family hooks the model's own layers (``smoothcam_contrast`` the copy's, when no
layer is named). An ensemble has no ``folded_copy`` and runs as it is. Imports nothing of
the package.
"""

from __future__ import annotations

import weakref
from itertools import chain

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

#: model -> (the state of its weights when folded, the folded copy); weak keys: it goes with the model.
_folded: "weakref.WeakKeyDictionary[torch.nn.Module, tuple[tuple, torch.nn.Module]]" = weakref.WeakKeyDictionary()
#: Counts optimiser steps, of any optimiser in the process: a fused step (the Trainer's
#: default ``adamw_torch_fused``) writes the weights without moving their version counters.
_optimiser_steps = [0]


#: The hooks a module keeps: ``folded_copy`` clears each kind in its copy, and any of them
#: on the model makes it run itself.
HOOK_KINDS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def _count_step(*_: object) -> None:
    _optimiser_steps[0] += 1


register_optimizer_step_post_hook(_count_step)


def _state(model: torch.nn.Module) -> tuple | None:
    """The weights' state (optimiser steps so far; where each parameter and buffer lives and
    how often it was changed in place), or ``None`` when ``model`` must run itself.

    It must when a copy would not do what running it does: a module in training mode
    (dropout on for Monte Carlo sampling, batch norm using the batch), a hook on a module
    (the caller's hooks would not fire in a copy), or weights made inside
    ``torch.inference_mode()`` (they keep no version counter, so a change would go unseen).
    One pass over the modules: it runs on every predict call (0.4 ms for EfficientNet-Lite0).
    """
    state: list = [_optimiser_steps[0]]
    for module in model.modules():
        if module.training or any(getattr(module, kind) for kind in HOOK_KINDS):
            return None
        for tensor in chain(module._parameters.values(), module._buffers.values()):
            if tensor is None:
                continue
            if tensor.is_inference():
                return None
            state.append((tensor.device, tensor.data_ptr(), tensor._version))
    return tuple(state)


def folded_network(model: torch.nn.Module) -> torch.nn.Module:
    """``model``'s ``folded_copy()`` when it offers one and it can stand in, else ``model`` itself.

    The copy stands in for a model in eval mode with no hooks (see :func:`_state`).
    It is made on first use and made again whenever a parameter or buffer of ``model`` was
    replaced, moved or changed in place since (an optimiser step, ``load_state_dict``,
    ``.to()``, re-initialisation: each moves a tensor's storage or its version counter,
    and any optimiser step in the process counts). A write through ``tensor.data``
    moves neither and goes unseen, as does a swapped submodule without parameters.
    Callers hold a lock of the model's: predict its passes lock
    (:data:`tumor_classifier.inference.model_passes`), the gradient attributions their
    attribution lock; two threads that fold at once each get a valid copy, one is kept.
    """
    fold = getattr(model, "folded_copy", None)
    state = _state(model) if callable(fold) else None
    if state is None:
        return model
    cached = _folded.get(model)
    if cached is None or cached[0] != state:
        # Never inference tensors, even when predict (inside torch.inference_mode) makes
        # it first: the gradient attributions differentiate the same copy later.
        with torch.inference_mode(False):
            cached = (state, fold())
        _folded[model] = cached
    return cached[1]
