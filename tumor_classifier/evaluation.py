"""Evaluate a classifier on a folder or Hub data set and write a full report.

The report folder gets ``metrics.json``, ``per_class.md``, ``summary.md``, confusion
matrices, ROC and precision-recall curves and a reliability diagram, for the full test
split and for its part with no near duplicate in the training split. Given a reviewed
list of suspect test labels, the metrics and tables also cover both without those images
(the full split's figures are never replaced).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .data import find_duplicates, find_split_dirs, hub_kaggle_folder, image_sources, load_image_folder, load_mri_dataset
from .exceptions import InvalidArgumentError, InvalidDatasetError
from .label_audit import read_label_audit
from .metrics import classification_metrics
from .model_folder import check_writable_folder
from .plots import plot_confusion_matrix, plot_reliability, plot_roc_pr
from .reports import DISCLAIMER, metrics_table, per_class_table


@dataclass
class EvaluationResult:
    """Metrics per evaluated subset and the files written."""

    metrics: dict[str, Any]
    files: list[Path]
    #: The evaluated subsets (keys of ``metrics``), in report order: ``test`` first.
    subsets: list[str]


#: The subsets that get plots, and their file name suffixes (the others get metrics and table rows).
_PLOT_SUFFIXES = {"test": "", "test_without_near_duplicates": "_dedup"}


def _suspect_indices(suspects: str | os.PathLike, sources: list[Any], root: Path, source: Any) -> dict[str, int]:
    """Listed file -> its index among ``sources`` (image files under ``root``), in list order.

    Raises:
        InvalidDatasetError: The list cannot be read, the test images are not files under a
            folder, or a listed file is not one of them.
    """
    entries = read_label_audit(suspects)
    if not root.is_dir() or not all(isinstance(item, str) for item in sources):
        raise InvalidDatasetError(
            f"--suspects names files relative to a data folder, but {source} is not a folder of image files; "
            "evaluate the downloaded folder instead."
        )
    base = Path(os.path.realpath(root))
    index = {}
    for position, item in enumerate(sources):
        try:
            index[Path(os.path.realpath(item)).relative_to(base).as_posix()] = position
        except ValueError:
            continue
    missing = [entry.file for entry in entries if entry.file not in index]
    if missing:
        raise InvalidDatasetError(
            f"{suspects} lists {len(missing)} file(s) that are not images of the evaluated test split of {source}, "
            f"e.g. {', '.join(missing[:3])}; a suspects list names test images relative to the data folder "
            "(such as Testing/notumor/Te-no_0287.jpg)."
        )
    return {entry.file: index[entry.file] for entry in entries}


def _predict_in_batches(classifier, sources: list[Any], batch_size: int) -> np.ndarray:
    parts = []
    with tqdm(total=len(sources), desc="evaluating", unit="img") as progress:
        for start in range(0, len(sources), batch_size):
            parts.append(classifier.predict_proba(sources[start : start + batch_size]))
            progress.update(len(parts[-1]))
    return np.concatenate(parts)


def _hub_split_names(source: str | Path) -> list[str] | None:
    """The split names ``datasets`` gives a Hub data set, or None when it cannot tell
    (then :func:`~tumor_classifier.data.load_mri_dataset` reports what is wrong)."""
    try:
        from datasets import load_dataset_builder

        builder = load_dataset_builder(str(source))
    except Exception:  # noqa: BLE001 - datasets raises many types; load_mri_dataset says what failed
        return None
    # A fresh builder knows its data files per split; one read back from the cache, its splits.
    names = [str(name) for name in (builder.info.splits or builder.config.data_files or ())]
    return names or None


def check_report_folder(out_dir: str | Path, *, name: str = "The report folder") -> Path:
    """Refuses a report folder that cannot hold the report, before anything is predicted.

    See :func:`~tumor_classifier.model_folder.check_writable_folder` (nothing is created).

    Raises:
        InvalidArgumentError: ``out_dir`` is a file, lies under a file, or cannot be written.
    """
    return check_writable_folder(out_dir, name=name, what="the report")


def evaluate_dataset(
    classifier,
    source: str | Path,
    out_dir: str | Path,
    *,
    dedup: bool | None = None,
    batch_size: int = 64,
    suspects: str | os.PathLike | None = None,
) -> EvaluationResult:
    """Evaluates ``classifier`` on the test split of ``source`` and writes the report.

    Args:
        classifier: A fitted :class:`~tumor_classifier.TumorClassifier`.
        source: Folder in the Kaggle layout (its ``Testing`` split is evaluated), a plain
            image folder (``<class>/``, evaluated whole), or a Hub data set id (one in the
            Kaggle layout is read as its downloaded folder).
        out_dir: Report folder (created).
        dedup: Also evaluate the test images with no near duplicate in the training
            split. ``None``: when the source has a training split. ``True`` without a
            training split is an error.
        batch_size: Images per forward pass.
        suspects: A reviewed list of suspect test labels (the audit CSV of
            :mod:`~tumor_classifier.label_audit`, e.g. ``configs/label_audit_testing.csv``;
            every entry names a file of the test split, relative to ``source``). The
            report then adds ``test_without_suspects`` (and, with ``dedup``,
            ``test_without_near_duplicates_or_suspects``): every listed image left out,
            whatever its action. A folder source only.

    Returns:
        The :class:`EvaluationResult`.

    Raises:
        InvalidDatasetError: The source cannot be read, has a training split but no test
            split (a folder or a Hub data set), or ``dedup`` has no training split; the
            suspects list cannot be read, names a file that is not in the test split, or
            the source is not a folder.
        InvalidArgumentError: ``out_dir`` cannot hold the report (see :func:`check_report_folder`),
            or ``batch_size`` is not a positive integer.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidArgumentError(f"batch_size must be a positive number of images per forward pass, got {batch_size!r}.")
    out_dir = check_report_folder(out_dir)
    root = Path(source)
    if not root.exists():  # a Hub data set in the Kaggle layout is read as its downloaded folder
        root = hub_kaggle_folder(str(source)) or root
    splits = find_split_dirs(root) if root.is_dir() else {}
    if "train" in splits and "test" not in splits:
        # load_mri_dataset would carve a "test" split out of the training images: the very
        # images a model was trained on, reported as held out.
        raise InvalidDatasetError(
            f"{source} has a training split ({splits['train'].name}) but no test split (Testing or test); evaluate "
            "scores held-out images, and a part carved from the training images is not held out. Pass the folder "
            f"that holds Testing/, or {splits['train']} itself to evaluate all of its images as a plain image folder."
        )
    if root.is_dir() and "train" not in splits:
        # Only a test folder, or a plain image folder: evaluate all of it; nothing to compare with.
        data, has_train = None, False
        test = load_image_folder(splits.get("test", root))
    else:
        names = _hub_split_names(source) if not root.exists() else None
        if names is not None and not any(name.lower() in ("test", "testing") for name in names):
            # As for a folder: load_mri_dataset would carve the "test" split out of the training images.
            raise InvalidDatasetError(
                f"The Hub data set {str(source)!r} has no test split (its splits: {', '.join(names)}); evaluate scores "
                "held-out images, and a part carved from the training images is not held out. Upload its test images "
                "as a split of their own (a test split, or the Kaggle layout's Training/ and Testing/ folders)."
            )
        data, has_train = load_mri_dataset(root if root.is_dir() else source), True
        test = data["test"]
    class_names = test.features["label"].names
    model_classes = list(classifier.classes_)
    if sorted(class_names) != sorted(model_classes):
        raise InvalidDatasetError(f"The data's classes {class_names} differ from the model's {model_classes}.")
    if dedup and not has_train:
        raise InvalidDatasetError(f"--dedup needs a training split in {source} to compare the test images with.")
    dedup = has_train if dedup is None else dedup
    sources = image_sources(test)
    left_out = _suspect_indices(suspects, sources, root, source) if suspects is not None else None
    y_true = np.asarray([model_classes.index(class_names[i]) for i in test["label"]])
    started = time.perf_counter()
    proba = _predict_in_batches(classifier, sources, batch_size)
    seconds = time.perf_counter() - started
    subsets = {"test": np.arange(len(sources))}
    summary_extra: dict[str, Any] = {}
    if dedup:
        references = image_sources(data["train"]) + image_sources(data["validation"])
        report = find_duplicates(references, sources)
        subsets["test_without_near_duplicates"] = np.asarray(report.clean_queries, dtype=int)
        summary_extra["duplicates"] = report.summary()
    if left_out is not None:
        keep = {name: np.setdiff1d(idx, list(left_out.values())) for name, idx in subsets.items()}
        subsets["test_without_suspects"] = keep["test"]
        if dedup:
            subsets["test_without_near_duplicates_or_suspects"] = keep["test_without_near_duplicates"]
        summary_extra["suspects"] = {"file": str(suspects), "left_out": list(left_out)}
    metrics: dict[str, Any] = {
        name: classification_metrics(y_true[idx], proba[idx], model_classes) for name, idx in subsets.items()
    }
    metrics.update(summary_extra)
    metrics["timing"] = {"images": len(sources), "seconds": seconds, "images_per_second": len(sources) / max(seconds, 1e-9)}
    metrics["model"] = getattr(classifier, "source_", "fitted in memory")
    out_dir.mkdir(parents=True, exist_ok=True)
    files = [out_dir / "metrics.json"]
    files[0].write_text(json.dumps(metrics, indent=2) + "\n")
    plotted = {name: idx for name, idx in subsets.items() if name in _PLOT_SUFFIXES}
    for name, idx in plotted.items():
        suffix = _PLOT_SUFFIXES[name]
        files.append(plot_confusion_matrix(metrics[name]["confusion_matrix"], model_classes, out_dir / f"confusion_matrix{suffix}.png", f"Confusion matrix ({name})"))
        files += plot_roc_pr(y_true[idx], proba[idx], model_classes, out_dir, suffix, split=name)
    files.append(plot_reliability({name: (proba[idx], y_true[idx]) for name, idx in plotted.items()}, out_dir / "reliability.png"))
    per_class = "\n\n".join(f"### {name}\n\n{per_class_table(metrics[name])}" for name in subsets)
    files.append(out_dir / "per_class.md")
    files[-1].write_text(per_class + "\n")
    duplicates = summary_extra.get("duplicates")
    note = (
        f"\nThe near-duplicate-free part keeps {duplicates['without_near_duplicate']} of {duplicates['queries']} test images: "
        f"the others have a training image within pHash distance 4 ({duplicates['byte_identical']} byte-identical), "
        "so accuracy on the full split is inflated.\n"
        if duplicates
        else ""
    )
    if left_out is not None:
        note += (
            f"\nThe rows without suspects leave out the {len(left_out)} test images a reviewer found suspect "
            f"({suspects}, which gives the reason for each); the full split's rows keep them.\n"
        )
    summary = (
        f"# Evaluation of {metrics['model']} on {source}\n\n{metrics_table({n: metrics[n] for n in subsets})}\n{note}\n"
        f"{len(sources)} images in {seconds:.1f} s ({metrics['timing']['images_per_second']:.1f} images/s).\n\n"
        f"{per_class}\n\n> {DISCLAIMER}\n"
    )
    files.append(out_dir / "summary.md")
    files[-1].write_text(summary)
    return EvaluationResult(metrics, files, list(subsets))

