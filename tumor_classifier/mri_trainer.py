"""The ``Trainer`` subclass that turns uint8 batches into augmented model input, and the time-limit callback.

:func:`tumor_classifier.training.build_trainer` builds the one :class:`MRITrainer` that
``train_hf.py`` and ``TumorClassifier.fit`` train with.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
from transformers import Trainer, TrainerCallback

from .augmentation import BatchAugmenter
from .exceptions import InvalidArgumentError
from .losses import consistency_loss
from .pixels import pixels_to_values
from .preprocessing import MRIPreprocessor

logger = logging.getLogger(__name__)


class MRITrainer(Trainer):
    """A ``Trainer`` whose batches arrive as uint8 pixels and become ``pixel_values``
    on the model's device: augmented while the model trains, plain in evaluation and
    prediction. On a GPU the augmentation then costs the host nothing.

    With ``consistency_weight > 0`` each training image is augmented twice, both views
    go through the model in one batch with the image's label, and the loss adds
    ``consistency_weight`` times :func:`~tumor_classifier.losses.consistency_loss`
    between the two views' predictions (twice the compute per step)."""

    def __init__(
        self, *args: Any, preprocessor: MRIPreprocessor, augmenter: BatchAugmenter | None = None,
        consistency_weight: float = 0.0, **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.preprocessor = preprocessor
        self.augmenter = augmenter
        self.consistency_weight = consistency_weight

    def train(self, *args: Any, **kwargs: Any):
        """``Trainer.train`` with the model's weights stored channels-last (see :func:`_channels_last`),
        handed back in the default layout: saved, reloaded and exported, it gives the same bits."""
        if self.model is not None:
            _channels_last(self.model)
        try:
            return super().train(*args, **kwargs)
        finally:
            if self.model is not None:
                self.model.to(memory_format=torch.contiguous_format)

    def call_model_init(self, trial=None):
        return _channels_last(super().call_model_init(trial))

    def _two_views(self) -> bool:
        return self.consistency_weight > 0 and self.model.training and self.augmenter is not None

    def _prepare_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        inputs = super()._prepare_inputs(inputs)
        if "pixels" in inputs:
            inputs = dict(inputs)
            pixels = inputs.pop("pixels")
            if self._two_views():  # rows i and n + i: two independent augmentations of image i
                pixels = torch.cat([pixels, pixels])
                inputs["labels"] = torch.cat([inputs["labels"], inputs["labels"]])
            augmenter = self.augmenter if self.model.training else None
            inputs["pixel_values"] = pixels_to_values(pixels, self.preprocessor, augmenter)
        return inputs

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not self._two_views():
            return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        first, second = outputs.logits.chunk(2)
        loss = loss + self.consistency_weight * consistency_loss(first, second)
        return (loss, outputs) if return_outputs else loss


def _channels_last(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with its 4-D weights stored channels-last, in place.

    Convolutions then keep that layout through the network, and on CPU oneDNN runs the
    backward pass of depthwise convolutions, which the default layout does slowly
    (``train_hf.py``, EfficientNet-Lite0 at 160 px, batch 64, 2 threads: a training step
    7.2 s -> 4.6 s, medians of 8). Each weight's gradient comes back in its weight's layout, as
    DistributedDataParallel's buckets expect; saved weights load in any layout.
    """
    return model.to(memory_format=torch.channels_last)


class TimeLimitCallback(TrainerCallback):
    """Ends training once ``minutes`` of wall clock have passed since it began; the run
    then calibrates, evaluates and saves as after its last epoch."""

    def __init__(self, minutes: float):
        if not minutes > 0:
            raise InvalidArgumentError(f"max_train_minutes must be positive; got {minutes!r}.")
        self.seconds = 60.0 * minutes
        self.started: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        if self.started is not None and time.monotonic() - self.started > self.seconds:
            logger.warning("max_train_minutes reached after %d steps (epoch %.2f): training stops here.", state.global_step, state.epoch or 0)
            control.should_training_stop = True
        return control
