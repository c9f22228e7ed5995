"""The training behind :meth:`TumorClassifier.fit`: ``train_hf.py``'s recipe on images in memory.

:func:`fit_model` checks the labels, preprocesses the images once, splits off the
calibration images, builds the model, loss and Trainer exactly as a ``train_hf.py`` run
does, trains, and folds the fitted temperature into the model.

The recipe is ``train_hf.py``'s (:func:`~tumor_classifier.training.run_training`):
the same Trainer (:func:`~tumor_classifier.training.build_trainer`), the model from
:func:`~tumor_classifier.recipe.create_run_model` and the loss from
:func:`~tumor_classifier.recipe.make_run_loss`, given a
:class:`~tumor_classifier.training_arguments.ModelArguments` built from the
estimator's parameters; what fit has no parameter for takes ``ModelArguments``'
defaults (``loss="cross_entropy"``, ``focal_gamma=2.0``; class weights are computed
as in a run and used only by the weighted and focal losses). ``augment=True`` uses
:class:`~tumor_classifier.augmentation.AugmentationConfig`'s defaults, the ones
``train_hf.py``'s ``DataArguments`` also take. The model defaults are the same
(EfficientNet-Lite0 fine-tuned from the ImageNet weights installed with the package,
224 px), and so is the splitter: the calibration images are carved from ``X`` by
:func:`~tumor_classifier.data.carve_indices`, as ``train_hf.py``'s validation is
carved from the training folder. fit's own defaults differ only where an estimator on
a list of images needs it: ``epochs=10``, ``batch_size=32``, no checkpoints or early
stopping.
"""

from __future__ import annotations

import tempfile
from typing import Any, Sequence

import numpy as np

from .augmentation import AugmentationConfig
from .data import ANY_TUMOR, ANY_TUMOR_NAME, NO_TUMOR, as_sources, carve_indices
from .exceptions import InvalidArgumentError, InvalidDatasetError
from .metrics import calibration_summary, classification_metrics, fit_temperature, softmax
from .preprocessing import MRIPreprocessor

#: ``metrics["training"]["trained_with"]`` of a model trained by :meth:`TumorClassifier.fit`.
FIT = "TumorClassifier.fit"


def fit_model(estimator, X: Any, y: Sequence[str] | None) -> tuple[Any, MRIPreprocessor, dict[str, Any]]:
    """The trained, calibrated model, its preprocessing and what fit measured, for
    :meth:`TumorClassifier.fit` (documented there).

    ``estimator`` supplies the parameters only; the caller sets the fitted state.
    What fit measured is shaped as a ``train_hf.py`` run's ``metrics.json``, for the
    model card: ``training`` always, and ``validation`` and ``calibration`` on the
    held-out calibration images when there are any.
    """
    from .progress import show_progress
    from .losses import tumor_columns_of
    from .pixels import PixelDataset
    from .recipe import create_run_model, make_run_loss
    from .training import build_trainer, fold_temperature, predict_logits
    from .training_arguments import ModelArguments, MRITrainingArguments

    sources = as_sources(X)
    if y is None:
        if not (hasattr(X, "features") and "label" in X.features):
            raise InvalidArgumentError("fit needs y (class names), or a datasets.Dataset with a 'label' column.")
        names = X.features["label"].names
        y = [names[i] for i in X["label"]]
    y = np.asarray([str(label) for label in y], dtype=object)
    if len(y) != len(sources):
        raise InvalidArgumentError(f"fit got {len(sources)} images but {len(y)} labels.")
    tumour_only = y == ANY_TUMOR_NAME
    classes = np.unique(y[~tumour_only])
    if classes.size < 2:
        raise InvalidArgumentError(f"fit needs at least two classes; got {list(classes)}.")
    if tumour_only.any():
        if NO_TUMOR not in classes or not tumor_columns_of(list(classes)):
            raise InvalidArgumentError(
                f"Images labelled {ANY_TUMOR_NAME!r} need a '{NO_TUMOR}' class and at least one tumour "
                f"class among the other labels; got {list(classes)}."
            )
    preprocessor = MRIPreprocessor(size=estimator.image_size, crop_to_head=estimator.crop_to_head, skull_strip=estimator.skull_strip)
    pixels = np.stack([preprocessor.prepare_array(source) for source in sources])
    labels = np.where(tumour_only, ANY_TUMOR, np.searchsorted(classes, np.where(tumour_only, classes[0], y)))
    train_idx, val_idx = np.arange(len(labels)), np.array([], dtype=int)
    if estimator.validation_size > 0:
        try:  # the data loader's splitter: a seed carves the same images as in train_hf.py
            train_idx, val_idx = carve_indices(labels, estimator.validation_size, estimator.random_state)
        except InvalidDatasetError:
            pass  # too few images of some class to hold any out: no calibration, as documented
    # run_training's recipe (model, loss); ModelArguments' defaults fill what fit has no parameter for.
    recipe = ModelArguments(
        backbone=estimator.backbone,
        from_scratch=estimator.from_scratch,
        checkpoint=estimator.checkpoint,
        image_size=estimator.image_size,
        dropout=estimator.dropout,
        label_smoothing=estimator.label_smoothing,
        config_overrides=estimator.config_overrides,
    )
    model = create_run_model(recipe, list(classes), seed=estimator.random_state)
    with tempfile.TemporaryDirectory(prefix="tumor-classifier-fit-") as workdir:
        args = MRITrainingArguments(
            output_dir=workdir,
            num_train_epochs=estimator.epochs,
            per_device_train_batch_size=estimator.batch_size,
            per_device_eval_batch_size=estimator.batch_size,
            learning_rate=estimator.learning_rate,
            weight_decay=estimator.weight_decay,
            eval_strategy="no",
            save_strategy="no",
            load_best_model_at_end=False,
            seed=estimator.random_state,
            disable_tqdm=True,
            # Logged losses feed the progress bar only (see progress.show_progress).
            logging_strategy="steps" if estimator.verbose else "no",
            logging_steps=1,
        )
        trainer = build_trainer(
            model,
            preprocessor,
            PixelDataset(pixels[train_idx], labels[train_idx]),
            None,
            args,
            augmentation=AugmentationConfig() if estimator.augment else AugmentationConfig.none(),
            loss_function=make_run_loss(recipe, list(classes), labels[train_idx]),
        )
        show_progress(trainer, estimator.verbose)
        trainer.train()
        measured: dict[str, Any] = {"training": {
            "trained_with": FIT,
            "backbone": estimator.backbone,
            "from_scratch": estimator.from_scratch,
            "image_size": estimator.image_size,
            "epochs_run": float(trainer.state.epoch or 0),
            "train_images": int(train_idx.size),
            "images_given": int(len(labels)),
        }}  # fmt: skip
        val_idx = val_idx[labels[val_idx] != ANY_TUMOR]  # the temperature needs a class per image
        if val_idx.size:
            logits = predict_logits(trainer, PixelDataset(pixels[val_idx], labels[val_idx]))
            temperature = fit_temperature(logits, labels[val_idx])
            fold_temperature(model, temperature)
            measured["validation"] = classification_metrics(labels[val_idx], softmax(logits, temperature), list(classes))
            measured["calibration"] = calibration_summary(logits, labels[val_idx], temperature)
    return model, preprocessor, measured
