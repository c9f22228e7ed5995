"""PNG figures: training curves, confusion matrix, ROC / precision-recall, reliability.

Every function takes plain numbers and a path, draws on a standalone matplotlib
``Figure`` (no pyplot, so the caller's backend and open figures are untouched), writes
one PNG and returns its path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve


def _subplots(figsize: tuple[float, float]):
    figure = Figure(figsize=figsize)
    return figure, figure.add_subplot()


def _save(figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    title = figure.axes[0].get_title() if figure.axes else ""
    # The title also as the PNG's Title, for a viewer's window and for a check that reads the file.
    figure.savefig(path, dpi=110, metadata={"Title": title} if title else None)
    return path


def plot_training_curves(log_history: list[dict], directory: str | Path) -> list[Path]:
    """Writes ``loss_curve.png`` and ``accuracy_curve.png`` from a Trainer log history."""
    train = [(e["epoch"], e["loss"]) for e in log_history if "loss" in e and "epoch" in e]
    evals = [e for e in log_history if "eval_loss" in e and "epoch" in e]
    figure, axis = _subplots(figsize=(6, 4))
    if train:
        axis.plot(*zip(*train), label="train", marker=".")
    if evals:
        axis.plot([e["epoch"] for e in evals], [e["eval_loss"] for e in evals], label="validation", marker=".")
    axis.set(xlabel="epoch", ylabel="loss", title="Loss")
    _legend_or_note(axis, "no loss was logged")
    paths = [_save(figure, Path(directory) / "loss_curve.png")]
    figure, axis = _subplots(figsize=(6, 4))
    for key, label in (("eval_accuracy", "validation accuracy"), ("eval_f1_macro", "validation macro F1")):
        points = [(e["epoch"], e[key]) for e in evals if key in e]
        if points:
            axis.plot(*zip(*points), label=label, marker=".")
    axis.set(xlabel="epoch", ylabel="score", title="Validation accuracy", ylim=(0, 1.01))
    _legend_or_note(axis, "no validation scores were logged (eval_strategy 'no', or no validation set)")
    paths.append(_save(figure, Path(directory) / "accuracy_curve.png"))
    return paths


def _legend_or_note(axis, note: str) -> None:
    """The legend of what was drawn; on an empty plot, ``note`` in its middle instead (no legend warning)."""
    if axis.get_lines():
        axis.legend()
    else:
        axis.text(0.5, 0.5, note, transform=axis.transAxes, ha="center", va="center", wrap=True)


def plot_confusion_matrix(matrix: Sequence[Sequence[int]], class_names: Sequence[str], path: str | Path, title: str = "Confusion matrix") -> Path:
    """Confusion matrix with counts, rows true class, columns predicted class."""
    matrix = np.asarray(matrix)
    figure, axis = _subplots(figsize=(5, 4.5))
    axis.imshow(matrix, cmap="Blues")
    axis.set(
        xticks=range(len(class_names)),
        yticks=range(len(class_names)),
        xticklabels=class_names,
        yticklabels=class_names,
        xlabel="predicted",
        ylabel="true",
        title=title,
    )
    for label in axis.get_xticklabels():
        label.set_rotation(30)
        label.set_horizontalalignment("right")
    threshold = matrix.max() / 2 if matrix.size else 0
    for (row, col), value in np.ndenumerate(matrix):
        axis.text(col, row, str(value), ha="center", va="center", color="white" if value > threshold else "black")
    return _save(figure, path)


def roc_pr_figures(
    y_true: np.ndarray, proba: np.ndarray, class_names: Sequence[str], split: str | None = None
) -> tuple[Figure, Figure]:
    """One-vs-rest ROC and precision-recall figures, one curve per class.

    Args:
        y_true: int (n,) class indices into ``class_names``.
        proba: float (n, k) probabilities, columns following ``class_names``.
        class_names: The k class names.
        split: Named in the titles (e.g. ``"test_without_near_duplicates"``), so two
            reports' figures cannot be mistaken for each other.

    Returns:
        ``(roc, pr)``. Legends give each class's area (ROC AUC, average precision); a class
        with no image, or only images, of its own in ``y_true`` has no curve and says so.
    """
    figures = []
    for curve, area, area_name, axes_labels, title in (
        (roc_curve, roc_auc_score, "AUC", ("false positive rate", "true positive rate"), "ROC, one vs rest"),
        (precision_recall_curve, average_precision_score, "AP", ("recall", "precision"), "Precision-recall, one vs rest"),
    ):
        figure, axis = _subplots(figsize=(5, 4.5))
        for index, class_name in enumerate(class_names):
            positives = np.asarray(y_true) == index
            if positives.all() or not positives.any():
                why = "no image of this class" if not positives.any() else "only images of this class"
                axis.plot([], [], " ", label=f"{class_name}: {why}, no curve")  # a legend line, nothing drawn
                continue
            first, second, _ = curve(positives, proba[:, index])
            x, y = (first, second) if curve is roc_curve else (second, first)
            axis.plot(x, y, label=f"{class_name} ({area_name} {area(positives, proba[:, index]):.3f})")
        axis.set(xlabel=axes_labels[0], ylabel=axes_labels[1], xlim=(0, 1), ylim=(0, 1.02))
        axis.set_title(f"{title} ({split})" if split else title)
        axis.legend(loc="lower right" if curve is roc_curve else "lower left")
        figures.append(figure)
    return figures[0], figures[1]


def plot_roc_pr(
    y_true: np.ndarray, proba: np.ndarray, class_names: Sequence[str], directory: str | Path, suffix: str = "",
    split: str | None = None,
) -> list[Path]:
    """Writes :func:`roc_pr_figures` as ``roc{suffix}.png`` and ``pr{suffix}.png``; returns their paths."""
    roc, pr = roc_pr_figures(y_true, proba, class_names, split=split)
    return [_save(roc, Path(directory) / f"roc{suffix}.png"), _save(pr, Path(directory) / f"pr{suffix}.png")]


def plot_reliability(
    curves: dict[str, tuple[np.ndarray, np.ndarray]], path: str | Path, n_bins: int = 15
) -> Path:
    """Reliability diagram: accuracy against confidence per bin, one line per curve.

    Args:
        curves: Label -> ``(proba (n, k), y_true (n,))``, e.g. before and after
            temperature scaling.
    """
    figure, axis = _subplots(figsize=(5, 4.5))
    axis.plot([0, 1], [0, 1], linestyle="--", color="gray", label="perfect")
    edges = np.linspace(0, 1, n_bins + 1)
    for label, (proba, y_true) in curves.items():
        confidence = proba.max(axis=1)
        correct = proba.argmax(axis=1) == np.asarray(y_true)
        xs, ys = [], []
        for low, high in zip(edges[:-1], edges[1:]):
            in_bin = (confidence > low) & (confidence <= high)
            if in_bin.any():
                xs.append(confidence[in_bin].mean())
                ys.append(correct[in_bin].mean())
        axis.plot(xs, ys, marker="o", label=label)
    axis.set(xlabel="confidence", ylabel="accuracy", title="Reliability diagram", xlim=(0, 1), ylim=(0, 1.02))
    axis.legend(loc="upper left")
    return _save(figure, path)


def slice_probabilities_figure(
    tumour_probability: np.ndarray,
    *,
    threshold: float = 0.5,
    key_slice: int | None = None,
    runs: Sequence[tuple[int, int]] = (),
    shown_slice: int | None = None,
    title: str = "Tumor probability along the slices",
) -> Figure:
    """Tumor probability per slice (NaN = not classified), the threshold, runs and key slice.

    Args:
        tumour_probability: float (n,), one value per slice in order; NaN for slices
            that were not classified (a gap in the line).
        threshold: Tumor probability a slice needs to count towards a run.
        key_slice: Index of the key slice (a red line), or ``None``.
        runs: ``(first, last)`` slice indices (inclusive) of the qualifying runs (shaded).
        shown_slice: Index of the slice a viewer shows (a black dotted line), or ``None``.
        title: Figure title.

    Returns:
        A standalone matplotlib ``Figure`` (7 x 3.2 inches); the CLI writes it with
        :func:`plot_slice_probabilities`, the app shows it as it is.
    """
    values = np.asarray(tumour_probability, dtype=float)
    figure, axis = _subplots(figsize=(7, 3.2))
    axis.plot(np.arange(values.size), values, marker=".", markersize=3, linewidth=1, label="tumor probability")
    axis.axhline(threshold, color="grey", linestyle="--", linewidth=1, label=f"threshold {threshold:g}")
    for index, (first, last) in enumerate(runs):
        axis.axvspan(first - 0.5, last + 0.5, color="tab:red", alpha=0.15, label="tumor run" if index == 0 else None)
    if key_slice is not None:
        axis.axvline(key_slice, color="tab:red", linewidth=1, label=f"key slice {key_slice}")
    if shown_slice is not None:
        axis.axvline(shown_slice, color="black", linestyle=":", linewidth=1, label=f"shown slice {shown_slice}")
    axis.set(xlabel="slice", ylabel="P(tumor)", ylim=(-0.02, 1.02), xlim=(-0.5, max(values.size, 1) - 0.5), title=title)
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # slices are whole numbers
    axis.legend(fontsize=7, loc="upper right")
    figure.tight_layout()
    return figure


def plot_slice_probabilities(
    tumour_probability: np.ndarray,
    path: str | Path,
    *,
    threshold: float = 0.5,
    key_slice: int | None = None,
    runs: Sequence[tuple[int, int]] = (),
    title: str = "Tumor probability along the slices",
) -> Path:
    """Writes :func:`slice_probabilities_figure` as a PNG at ``path`` and returns the path."""
    figure = slice_probabilities_figure(tumour_probability, threshold=threshold, key_slice=key_slice, runs=runs, title=title)
    return _save(figure, path)
