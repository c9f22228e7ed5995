"""Training the slice-sequence model through the Hugging Face ``Trainer``, and scoring it on built volumes.

The backbone is frozen and the slice embeddings precomputed (:mod:`tumor_classifier.sequence_data`),
so the ``Trainer`` moves only the projection, the LSTM and the heads: a few minutes on two
cores for thousands of volumes. :func:`compare_on_volumes` puts the sequence model's volume
verdicts beside the slice-aggregation rule of :func:`~tumor_classifier.volume_prediction.aggregate`
applied to the 2-D classifier's probabilities of the same slices: the comparison issue 13 asks for.

Example:
    >>> trainer = train_sequence_model(model, train_set, eval_set, "runs/sequence", epochs=8)  # doctest: +SKIP
    >>> trainer.evaluate()["eval_accuracy"]                                                 # doctest: +SKIP
    0.97
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
import torch
from transformers import EvalPrediction, Trainer, TrainingArguments

from .exceptions import InvalidArgumentError
from .sequence_data import TUMOUR_LABEL, BuiltVolume, SliceBank, VolumeDataset, collate_volumes


def volume_metrics(prediction: EvalPrediction) -> dict[str, float]:
    """Accuracy, sensitivity and specificity of the volume labels (``TUMOUR_LABEL`` is ``tumor``)."""
    logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
    labels = prediction.label_ids[0] if isinstance(prediction.label_ids, tuple) else prediction.label_ids
    return binary_metrics(np.asarray(logits).argmax(axis=-1) == TUMOUR_LABEL, np.asarray(labels) == TUMOUR_LABEL)


def binary_metrics(predicted: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """``accuracy``, ``sensitivity`` (tumour volumes called tumour), ``specificity``; NaN where a class is absent."""
    predicted, truth = np.asarray(predicted).astype(bool), np.asarray(truth).astype(bool)
    rate = lambda hits, total: float(hits / total) if total else float("nan")  # noqa: E731
    return {
        "accuracy": rate((predicted == truth).sum(), truth.size),
        "sensitivity": rate((predicted & truth).sum(), truth.sum()),
        "specificity": rate((~predicted & ~truth).sum(), (~truth).sum()),
    }


def train_sequence_model(
    model,
    train_set: VolumeDataset,
    eval_set: VolumeDataset | None,
    output_dir: str | os.PathLike,
    *,
    epochs: float = 8,
    learning_rate: float = 2e-3,
    batch_size: int = 32,
    weight_decay: float = 0.01,
    seed: int = 0,
    **training_kwargs: Any,
) -> Trainer:
    """Trains the sequence model's LSTM and heads with the ``Trainer``; returns it after training.

    The model computes its own loss (volume cross-entropy plus ``slice_loss_weight`` times
    the per-slice one); evaluation reports :func:`volume_metrics` each epoch.

    Args:
        model: A :class:`~tumor_classifier.sequence_model.SliceSequenceForVolumeClassification`.
        train_set, eval_set: :class:`~tumor_classifier.sequence_data.VolumeDataset` of built volumes.
        output_dir: The ``Trainer``'s folder (checkpoints are not kept).
        epochs, learning_rate, batch_size, weight_decay, seed: The usual meaning.
        **training_kwargs: Other ``TrainingArguments``.

    Raises:
        InvalidArgumentError: An empty training set.
    """
    if len(train_set) == 0:
        raise InvalidArgumentError("The training set holds no volumes; build some with sequence_data.build_volumes.")
    args = TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=epochs,
        learning_rate=learning_rate,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=128,
        weight_decay=weight_decay,
        warmup_steps=0.05,
        lr_scheduler_type="cosine",
        eval_strategy="epoch" if eval_set is not None else "no",
        logging_strategy="epoch",
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        seed=seed,
        use_cpu=not torch.cuda.is_available(),
        remove_unused_columns=False,  # the model reads slice_embeddings, not input_ids
        label_names=["labels", "slice_labels"],
        dataloader_num_workers=0,
        **training_kwargs,
    )
    # Not training.build_trainer: it builds the image MRITrainer, whose batches are uint8
    # pixels made into augmented pixel_values by a preprocessor (collate_pixels, per-class
    # image metrics). These batches are precomputed slice embeddings (collate_volumes),
    # scored per volume; using it would mean a dummy preprocessor and augmenter and
    # replacing its collator and metrics afterwards.
    trainer = Trainer(
        model=model, args=args, train_dataset=train_set, eval_dataset=eval_set,
        data_collator=collate_volumes, compute_metrics=volume_metrics,
    )
    trainer.train()
    model.eval()
    return trainer


def sequence_probabilities(model, bank: SliceBank, volumes: Sequence[BuiltVolume], batch_size: int = 128) -> np.ndarray:
    """The sequence model's tumour probability of each built volume: float32 (n,)."""
    dataset = VolumeDataset(bank, volumes)
    out = []
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(dataset), batch_size):
            batch = collate_volumes([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
            logits = model(slice_embeddings=batch["slice_embeddings"].to(model.device), attention_mask=batch["attention_mask"].to(model.device)).logits
            out.append(torch.softmax(logits.float(), dim=-1)[:, TUMOUR_LABEL].cpu().numpy())
    return np.concatenate(out).astype(np.float32)


def aggregation_verdicts(bank: SliceBank, volumes: Sequence[BuiltVolume], **rule: Any) -> np.ndarray:
    """``predict_volume``'s slice-aggregation verdict (tumour: True) of each built volume.

    Applies :func:`~tumor_classifier.volume_prediction.aggregate` (``min_run`` /
    ``threshold`` keywords pass through) to the 2-D classifier's probabilities of the
    volume's slices, stored in the bank; every slice of a built volume is a head slice.

    Raises:
        InvalidArgumentError: The bank holds no classifier probabilities.
    """
    from .data import NO_TUMOR
    from .volume_prediction import aggregate

    if bank.slice_proba is None or bank.proba_classes is None:
        raise InvalidArgumentError("The bank holds no 2-D classifier probabilities; build it with the classifier's head.")
    return np.asarray([aggregate(bank.slice_proba[v.indices], list(bank.proba_classes), **rule)[0] != NO_TUMOR for v in volumes])


def compare_on_volumes(model, bank: SliceBank, volumes: Sequence[BuiltVolume], **rule: Any) -> dict[str, dict[str, float]]:
    """Accuracy, sensitivity and specificity of both verdicts on the same built volumes.

    Returns:
        ``{"sequence_model": {...}, "slice_aggregation": {...}, "volumes": {...}}``; the
        last counts the volumes and their tumour share.
    """
    truth = np.asarray([v.label for v in volumes])
    sequence = sequence_probabilities(model, bank, volumes) >= 0.5
    return {
        "sequence_model": binary_metrics(sequence, truth),
        "slice_aggregation": binary_metrics(aggregation_verdicts(bank, volumes, **rule), truth),
        "volumes": {"count": float(truth.size), "tumour_share": float(truth.mean())},
    }
