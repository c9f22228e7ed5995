"""Classification metrics, tumor detection figures and calibration, from numpy arrays.

The figures are computed with scikit-learn, which works offline. ``evaluate``'s Hub
metrics ("accuracy", "precision", "recall", "f1", "confusion_matrix") are thin wrappers
that call exactly these scikit-learn functions, so the numbers are identical; they
cannot be loaded here because ``evaluate`` fetches its metric scripts from the Hub.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

from .data import NO_TUMOR


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of float (n, k) logits divided by ``temperature``."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def tumor_probability(proba: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
    """Probability of any tumor: one minus the no-tumor column, float (n,) in [0, 1]."""
    return 1.0 - proba[:, list(class_names).index(NO_TUMOR)]


def expected_calibration_error(proba: np.ndarray, y_true: np.ndarray, n_bins: int = 15) -> float:
    """Expected calibration error of the top-class confidence, equal-width bins."""
    confidence = proba.max(axis=1)
    correct = proba.argmax(axis=1) == y_true
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ece = 0.0
    for low, high in zip(edges[:-1], edges[1:]):
        in_bin = (confidence > low) & (confidence <= high)
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def calibration_summary(logits: np.ndarray, y_true: np.ndarray, temperature: float) -> dict[str, float]:
    """The temperature and the expected calibration error before and after it."""
    return {
        "temperature": float(temperature),
        "validation_ece_before": expected_calibration_error(softmax(logits), y_true),
        "validation_ece_after": expected_calibration_error(softmax(logits, temperature), y_true),
    }


def fit_temperature(logits: np.ndarray, y_true: np.ndarray, max_iter: int = 200) -> float:
    """Temperature that minimises the negative log-likelihood of ``logits`` (Guo et al. 2017).

    Args:
        logits: float (n, k) validation logits.
        y_true: int (n,) labels.

    Returns:
        The temperature T > 0; probabilities are ``softmax(logits / T)``.
    """
    logits_t = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    labels_t = torch.as_tensor(np.asarray(y_true), dtype=torch.long)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter)

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits_t / log_t.exp(), labels_t)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp().clamp(0.05, 20.0))


def classification_metrics(
    y_true: np.ndarray, proba: np.ndarray, class_names: Sequence[str]
) -> dict[str, object]:
    """Accuracy, macro and per-class precision / recall / F1, confusion matrix, detection.

    Args:
        y_true: int (n,) label indices into ``class_names``.
        proba: float (n, k) probabilities, columns following ``class_names``.
        class_names: Label names; must contain ``"notumor"`` for the detection figures.

    Returns:
        A JSON-serialisable dict. ``tumor_sensitivity`` is the share of tumor images
        called any tumor type, ``tumor_specificity`` the share of no-tumor images called
        no tumor (the four-class decision, collapsed).
    """
    y_true = np.asarray(y_true)
    y_pred = proba.argmax(axis=1)
    labels = list(range(len(class_names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    macro = precision_recall_fscore_support(y_true, y_pred, labels=labels, average="macro", zero_division=0)
    result: dict[str, object] = {
        "n": int(y_true.size),
        "accuracy": float(accuracy_score(y_true, y_pred)) if y_true.size else float("nan"),
        "precision_macro": float(macro[0]),
        "recall_macro": float(macro[1]),
        "f1_macro": float(macro[2]),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "ece": expected_calibration_error(proba, y_true) if y_true.size else float("nan"),
    }
    if NO_TUMOR in class_names and y_true.size:
        no_tumor = list(class_names).index(NO_TUMOR)
        is_tumor = y_true != no_tumor
        called_tumor = y_pred != no_tumor
        result["tumor_sensitivity"] = float(called_tumor[is_tumor].mean()) if is_tumor.any() else float("nan")
        result["tumor_specificity"] = (
            float((~called_tumor[~is_tumor]).mean()) if (~is_tumor).any() else float("nan")
        )
        if is_tumor.any() and (~is_tumor).any():
            result["tumor_auc"] = float(roc_auc_score(is_tumor, tumor_probability(proba, class_names)))
    return result
