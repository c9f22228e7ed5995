"""The one training recipe: the model and the loss of a run, from its ``ModelArguments``.

:func:`tumor_classifier.training.run_training` (``train_hf.py``) and
:meth:`tumor_classifier.TumorClassifier.fit` both build their model and loss here, so a
default changed here changes both.
"""

from __future__ import annotations

import json
from typing import Callable, Sequence

import numpy as np
import torch
from transformers import PreTrainedModel

from .exceptions import InvalidArgumentError
from .losses import class_weights, make_loss_function, tumor_columns_of
from .models import create_model
from .training_arguments import ModelArguments


def create_run_model(
    model_args: ModelArguments, class_names: Sequence[str], *, dropout: float | None = None, seed: int | None = None
) -> PreTrainedModel:
    """The model a run trains: ``model_args``' backbone, start (from scratch or a checkpoint), size and dropout.

    Args:
        model_args: The model arguments; ``config_overrides`` a JSON string (the command
            line) or a dict (:meth:`TumorClassifier.fit`).
        class_names: Label index -> class name (the head's size and ``id2label``).
        dropout: Replaces ``model_args.dropout`` (a hyperparameter search's trial).
        seed: Seeds the random weights (a from-scratch model, a new head), so that a run's
            ``--seed`` or fit's ``random_state`` decides them; the process's random state is
            left as it was. ``None``: whatever the process's state gives.

    Returns:
        A new ``transformers`` model from :func:`~tumor_classifier.models.create_model`.

    Raises:
        InvalidArgumentError: ``config_overrides`` is not a JSON object, or
            :func:`~tumor_classifier.models.create_model` refuses it (a value of a type its
            config attribute does not take, values the model cannot be built from).
    """
    overrides = model_args.config_overrides
    if isinstance(overrides, str):
        try:
            overrides = json.loads(overrides) if overrides.strip() else None
        except json.JSONDecodeError as error:
            raise InvalidArgumentError(
                f"config_overrides {overrides!r} is not valid JSON ({error}); give a JSON object of config "
                'attributes, e.g. \'{"hidden_sizes": [16, 32, 48, 64], "depths": [1, 1, 1, 1]}\'.'
            ) from None
    if overrides is not None and not isinstance(overrides, dict):
        raise InvalidArgumentError(
            f"config_overrides must be a JSON object (a dict) of config attributes; got {overrides!r}."
        )
    with torch.random.fork_rng(devices=[]):  # the weights are made on the CPU
        if seed is not None:
            torch.manual_seed(seed)
        return create_model(
            model_args.backbone,
            class_names=class_names,
            from_scratch=model_args.from_scratch,
            checkpoint=model_args.checkpoint,
            image_size=model_args.image_size,
            dropout=model_args.dropout if dropout is None else dropout,
            config_overrides=overrides,
        )


def make_run_loss(model_args: ModelArguments, class_names: Sequence[str], train_labels: np.ndarray) -> Callable:
    """The loss a run trains with: ``model_args.loss``, its label smoothing and focal gamma.

    Inverse-frequency class weights come from the training images with a class label (the
    weighted and focal losses use them); images labelled
    :data:`~tumor_classifier.data.ANY_TUMOR` get the partial-label loss over the tumour
    classes (see :func:`~tumor_classifier.losses.make_loss_function`).

    Args:
        model_args: The model arguments.
        class_names: Label index -> class name.
        train_labels: int (n,) labels of the training images (ANY_TUMOR allowed).
    """
    labels = np.asarray(train_labels)
    weights = class_weights(labels[labels >= 0], len(class_names))
    return make_loss_function(model_args.loss, weights=weights, label_smoothing=model_args.label_smoothing,
                              focal_gamma=model_args.focal_gamma, tumor_columns=tumor_columns_of(class_names))
