"""What training optimises and watches: class weights, the loss functions, validation metrics.

The partial-label loss lets images labelled :data:`~tumor_classifier.data.ANY_TUMOR`
("a tumour, type unknown") train the model without a type.
"""

from __future__ import annotations

import math

from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from transformers.trainer_utils import EvalPrediction

from .data import ANY_TUMOR, CLASS_NAMES, NO_TUMOR
from .exceptions import InvalidArgumentError

LOSSES = ("cross_entropy", "weighted_cross_entropy", "focal")


def class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights, normalised to mean 1."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    weights = counts.sum() / np.maximum(counts, 1) / num_classes
    return torch.tensor(weights / weights.mean(), dtype=torch.float32)


def make_loss_function(
    kind: str = "cross_entropy",
    *,
    weights: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
    focal_gamma: float = 2.0,
    tumor_columns: Sequence[int] | None = None,
) -> Callable:
    """A ``compute_loss_func`` for the Trainer.

    Images labelled :data:`~tumor_classifier.data.ANY_TUMOR` (-1: "a tumour, type
    unknown", e.g. Br35H) get the partial-label loss ``-log(sum of the tumour classes'
    probabilities)``: the model is told "not notumor" and nothing about the type. The
    batch loss is the mean over all images of their own terms.

    Args:
        kind: ``"cross_entropy"``, ``"weighted_cross_entropy"`` (needs ``weights``) or
            ``"focal"`` (Lin et al. 2017; ``weights`` act as its alpha if given), for the
            images with a class label.
        weights: float (k,) class weights.
        label_smoothing: Label smoothing of the cross-entropy terms.
        focal_gamma: Focusing parameter of the focal loss.
        tumor_columns: Logit columns of the tumour classes; needed when a batch holds
            ANY_TUMOR labels.

    Raises:
        TumorClassifierError: Unknown kind, or weighted loss without weights.
    """
    if kind not in LOSSES:
        raise InvalidArgumentError(f"Unknown loss {kind!r}; choose one of {', '.join(LOSSES)}.")
    if kind == "weighted_cross_entropy" and weights is None:
        raise InvalidArgumentError("weighted_cross_entropy needs class weights.")
    use_weights = weights if kind != "cross_entropy" else None
    tumor_index = None if tumor_columns is None else torch.as_tensor(list(tumor_columns), dtype=torch.long)

    def labelled_terms(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per-image loss of images with a class label, shape (m,)."""
        w = None if use_weights is None else use_weights.to(logits.device)
        ce = F.cross_entropy(logits, labels, reduction="none", label_smoothing=label_smoothing)
        if kind == "focal":
            p_true = F.log_softmax(logits, dim=-1).gather(1, labels[:, None]).squeeze(1).exp()
            ce = (1 - p_true) ** focal_gamma * ce
        return ce if w is None else ce * w[labels]

    def loss_function(outputs, labels, num_items_in_batch=None):
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs.logits
        logits = logits.float()
        unknown = labels == ANY_TUMOR
        if not bool(unknown.any()):
            if kind == "cross_entropy" or (kind == "weighted_cross_entropy" and use_weights is None):
                return F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
            if kind == "weighted_cross_entropy":
                return F.cross_entropy(logits, labels, weight=use_weights.to(logits.device), label_smoothing=label_smoothing)
            return labelled_terms(logits, labels).mean()
        if tumor_index is None:
            raise InvalidArgumentError("Images labelled 'tumour, type unknown' need the loss's tumor_columns.")
        log_p = F.log_softmax(logits, dim=-1)
        partial = -torch.logsumexp(log_p[unknown][:, tumor_index.to(logits.device)], dim=-1)
        known = labelled_terms(logits[~unknown], labels[~unknown]) if bool((~unknown).any()) else logits.new_zeros(0)
        return (known.sum() + partial.sum()) / labels.shape[0]

    return loss_function


def consistency_loss(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence (nats) between the predictions of two views, averaged over images.

    ``first`` and ``second`` are logits (n, k) of the same n images, each augmented
    independently. Symmetric and bounded by ln 2: identical predictions give 0, two
    certain and different ones ln 2. Training with it (``--consistency_weight``) asks
    the model for the same answer whatever the intensity randomisation did to an image.
    """
    log_p, log_q = F.log_softmax(first.float(), dim=-1), F.log_softmax(second.float(), dim=-1)
    log_m = torch.logsumexp(torch.stack([log_p, log_q]), dim=0) - math.log(2.0)
    kl_pm = (log_p.exp() * (log_p - log_m)).sum(dim=-1)
    kl_qm = (log_q.exp() * (log_q - log_m)).sum(dim=-1)
    return (0.5 * (kl_pm + kl_qm)).mean()


def tumor_columns_of(class_names: Sequence[str]) -> list[int]:
    """Indices of the tumour classes (every class but notumor)."""
    return [i for i, name in enumerate(class_names) if name != NO_TUMOR]


def compute_eval_metrics(prediction: EvalPrediction, class_names: Sequence[str] = CLASS_NAMES) -> dict[str, float]:
    """Trainer metrics on validation: accuracy and macro F1 (scikit-learn) of the images
    with a class label and, when the validation set holds ANY_TUMOR images, their
    sensitivity (``tumour_only_sensitivity``: share not called notumor)."""
    from sklearn.metrics import accuracy_score, f1_score

    logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
    predicted = np.asarray(logits).argmax(axis=-1)
    labels = np.asarray(prediction.label_ids)
    known = labels >= 0
    metrics = {}
    if known.any():
        metrics["accuracy"] = float(accuracy_score(labels[known], predicted[known]))
        metrics["f1_macro"] = float(f1_score(labels[known], predicted[known], average="macro"))
    unknown = labels == ANY_TUMOR
    if unknown.any():
        metrics["tumour_only_sensitivity"] = float(np.mean(predicted[unknown] != list(class_names).index(NO_TUMOR)))
    return metrics
