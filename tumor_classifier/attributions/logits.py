"""The model as the attribution methods see it: a function from pixels to a logits tensor.

:class:`LogitsModel` turns any classifier output (a tensor, a ``ModelOutput``, a tuple)
into the logits tensor Captum indexes; :class:`_ContrastModel` explains one class against
another; :func:`_members` recognises an ensemble by its ``members`` ModuleList, so
nothing here needs to import :mod:`tumor_classifier.ensemble`.
"""

from __future__ import annotations

import torch

from ..exceptions import InvalidArgumentError


class LogitsModel(torch.nn.Module):
    """Wraps a classification model so that ``forward(pixel_values)`` returns the logits tensor.

    Captum's attribution classes index the forward output with ``target`` and therefore need
    a plain tensor, while Hugging Face models return a ``ModelOutput``. The wrapped model is
    a registered submodule, so ``.eval()`` / ``.train()`` / ``.to()`` reach it.

    Args:
        model: A Hugging Face image-classification model, or any ``nn.Module`` whose
            ``forward(pixel_values)`` returns a logits tensor ``(n, num_classes)``, a
            ``ModelOutput`` / dict with ``logits``, or a tuple whose first item is the logits.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        # Wrapping a wrapper would only add a level of indirection to every lookup.
        self.model = model.model if isinstance(model, LogitsModel) else model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Runs the model.

        Args:
            pixel_values: Float tensor ``(n, C, h, w)``, normalised as the model expects.

        Returns:
            Logits tensor ``(n, num_classes)``.

        Raises:
            InvalidArgumentError: (a ``ValueError``) The model output holds no logits tensor.
        """
        output = self.model(pixel_values)
        if isinstance(output, torch.Tensor):
            return output
        logits = getattr(output, "logits", None)
        if logits is None and isinstance(output, dict):
            logits = output.get("logits")
        if logits is None and isinstance(output, (tuple, list)) and output:
            logits = output[0]
        if not isinstance(logits, torch.Tensor):
            raise InvalidArgumentError(
                f"Cannot find logits in the output of {type(self.model).__name__} "
                f"(got {type(output).__name__}); expected a tensor, a ModelOutput with "
                "`.logits`, or a tuple whose first item is the logits."
            )
        return logits


def _contrast(logits: torch.Tensor, versus: int | None) -> torch.Tensor:
    """Logits with ``logits[:, versus]`` subtracted from every other class's.

    Explaining class ``c`` then explains ``logit_c - logit_versus``: what makes the image
    ``c`` *rather than* ``versus`` (e.g. a tumour class rather than no tumour), not what
    every class shares (that it is a brain). The ``versus`` column is kept as it is, so
    explaining ``versus`` itself still explains its own logit.
    """
    if versus is None:
        return logits
    reference = logits[:, versus : versus + 1]
    contrasted = logits - reference
    return torch.cat([contrasted[:, :versus], reference, contrasted[:, versus + 1 :]], dim=1)


class _ContrastModel(torch.nn.Module):
    """A :class:`LogitsModel` whose logits go through :func:`_contrast`."""

    def __init__(self, logits_model: torch.nn.Module, versus: int) -> None:
        super().__init__()
        self.logits_model = logits_model
        self.versus = versus

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return _contrast(self.logits_model(pixel_values), self.versus)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.model if isinstance(model, LogitsModel) else model


def _members(model: torch.nn.Module) -> list[torch.nn.Module] | None:
    """The member models of an ensemble (a non-empty ``members`` ModuleList), else None."""
    members = getattr(_unwrap(model), "members", None)
    if isinstance(members, torch.nn.ModuleList) and len(members):
        return list(members)
    return None
