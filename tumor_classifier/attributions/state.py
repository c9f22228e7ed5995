"""The model's state while it is attributed: one attribution at a time per model.

:func:`_attribution_state` puts the model in eval mode with frozen parameters and restores
each module's ``training`` flag and each parameter's ``requires_grad`` flag afterwards, all
under a per-model re-entrant lock (:func:`_model_locks`), so threads sharing a model queue
instead of saving each other's half-changed flags.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from ..locking import PerObjectLocks
from .logits import _members, _unwrap

#: One re-entrant lock per model (weak keys: it goes with the model).
_model_lock = PerObjectLocks()


@contextlib.contextmanager
def _model_locks(model: torch.nn.Module) -> Iterator[None]:
    """Holds the locks of the model and, for an ensemble, of each member.

    A member may be attributed on its own by another caller while the ensemble is; its
    flags are the same objects. Locks are taken in one global order (by ``id``), so two
    callers that share some modules cannot deadlock; they are re-entrant, so a nested
    call in the same thread goes through.
    """
    root = _unwrap(model)
    modules = {id(root): root}
    for member in _members(root) or []:
        modules.setdefault(id(member), member)
    with contextlib.ExitStack() as stack:
        for key in sorted(modules):
            stack.enter_context(_model_lock(modules[key]))
        yield


@contextlib.contextmanager
def _attribution_state(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode and frozen parameters while attributing; the caller's state afterwards.

    Eval mode because dropout would make maps random and batch norm in train mode would
    mix the images of a batch (and update running statistics). Parameters are frozen so
    that no parameter gradient is computed (cheaper) or accumulated into ``.grad``: all
    methods differentiate with respect to inputs / activations only. The flags are saved
    per module / parameter because a partly frozen model (fine-tuning a head) must come
    back exactly as it was.

    The whole block runs under the model's lock (see :func:`_model_locks`): without it,
    two threads save each other's half-changed flags (the second saves "eval, frozen"),
    the model stays frozen in eval mode for good, and a thread restoring train mode in
    the middle of another's backward pass changes that thread's maps.
    """
    with _model_locks(model):
        modes = [(module, module.training) for module in model.modules()]
        grads = [(param, param.requires_grad) for param in model.parameters()]
        try:
            model.eval()
            for param, _ in grads:
                param.requires_grad_(False)
            # inference_mode(False) too: a caller inside `torch.inference_mode()` would
            # otherwise get tensors that cannot be part of an autograd graph.
            with torch.inference_mode(False), torch.enable_grad():
                yield
        finally:
            for module, training in modes:
                module.training = training
            for param, requires_grad in grads:
                param.requires_grad_(requires_grad)



def _autograd_ready(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.clone() if tensor.is_inference() else tensor
