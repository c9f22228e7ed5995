"""Model cards and Markdown summaries, with the plots they show.

Everything here writes files into a model or report folder from numbers computed
elsewhere (:mod:`tumor_classifier.metrics`); nothing is measured here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .plots import plot_confusion_matrix, plot_reliability, plot_training_curves

DISCLAIMER = (
    "This model is a research tool. It is not a medical device and must not be used to "
    "diagnose, treat or rule out disease."
)


def _pct(value: Any) -> str:
    return "n/a" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{100 * value:.2f}%"


def _number(value: Any) -> str:
    """A count or a fractional epoch as people write it: 3, 0.67, 43.8."""
    return f"{round(float(value), 2):g}"


def _count(value: Any, noun: str, plural: str | None = None) -> str:
    """``value`` and the noun in the number that agrees with it: 1 epoch, 2 epochs, 0.5 epochs."""
    return f"{_number(value)} {noun if float(value) == 1 else plural or noun + 's'}"


def metrics_table(sections: dict[str, dict[str, Any]]) -> str:
    """A Markdown table with one row per evaluated split."""
    rows = [
        "| split | images | accuracy | macro F1 | tumor sensitivity | tumor specificity | ECE |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m in sections.items():
        rows.append(
            f"| {name} | {m['n']} | {_pct(m['accuracy'])} | {m['f1_macro']:.4f} | "
            f"{_pct(m.get('tumor_sensitivity'))} | {_pct(m.get('tumor_specificity'))} | {m['ece']:.4f} |"
        )
    return "\n".join(rows)


def per_class_table(metrics: dict[str, Any]) -> str:
    """Per-class precision, recall, F1 and support as a Markdown table."""
    rows = ["| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for name, m in metrics["per_class"].items():
        rows.append(f"| {name} | {m['precision']:.4f} | {m['recall']:.4f} | {m['f1']:.4f} | {m['support']} |")
    return "\n".join(rows)


def data_text(metrics: dict[str, Any]) -> str:
    """Where the training images came from and how many each split had, as the run recorded it."""
    training = metrics.get("training", {})
    data, pack_source, given = training.get("data"), training.get("pixel_pack_source"), training.get("images_given")
    where = (
        f"the images of `{pack_source}`, prepared as the pixel pack `{data}`" if data and pack_source
        else f"`{data}`" if data
        else f"the {_count(given, 'image')} given to `{training.get('trained_with')}`" if given is not None
        else "not recorded"
    )  # fmt: skip
    counts = [_count(training["train_images"], "training image")] if training.get("train_images") is not None else []
    counts += [_count(metrics[split]["n"], f"{split} image") for split in ("validation", "test") if split in metrics]
    return f"Data: {where}" + (f" ({', '.join(counts)})." if counts else ".")


def _data_sources(metrics: dict[str, Any]) -> str:
    training = metrics.get("training", {})
    sources = [training.get("pixel_pack_source") or training.get("data")]
    sources += (metrics.get("validation_tumour_only") or {}).get("sources", [])
    named = [f"`{source}`" for source in sources if source]
    if named:
        return " and ".join(named)
    return f"the images given to `{training['trained_with']}`" if training.get("trained_with") else "its training data"


def duplicates_text(metrics: dict[str, Any]) -> str:
    """What the check of test images against the training and validation images found, in
    the counts it measured; nothing where there is no test split."""
    if "test" not in metrics:
        return "There is no test split: the figures above are validation figures only."
    duplicates = metrics.get("duplicates")
    if not duplicates:
        return "The test split was not checked for near duplicates of training images."
    # The summary names its threshold: phash_within_<distance>.
    within = next((key for key in duplicates if key.startswith("phash_within_")), "phash_within_?")
    rule = f"pHash Hamming distance <= {within.rsplit('_', 1)[-1]}"
    queries, clean, exact = duplicates["queries"], duplicates["without_near_duplicate"], duplicates["byte_identical"]
    near = queries - clean
    if near == 0:
        return (
            f"No test image has a near duplicate ({rule}) among the training and validation images, so\n"
            "`test_without_near_duplicates` is the full test split."
        )
    return (
        f"{near} of the {_count(queries, 'test image')} {'has' if near == 1 else 'have'} a near duplicate ({rule}) among the\n"
        f"training and validation images ({exact} of them byte-identical), so the full test split's accuracy\n"
        f"may be inflated; `test_without_near_duplicates` keeps only the {_count(clean, 'test image')} without one."
    )


def _tumour_only_text(metrics: dict[str, Any]) -> str:
    tumour_only = metrics.get("validation_tumour_only")
    if not tumour_only:
        return ""
    sources = ", ".join(map(str, tumour_only.get("sources", []))) or "images labelled only 'tumour'"
    trained = tumour_only.get("train_images", 0)
    return (
        f"\nTumour-only validation ({sources}; type unknown, held out by near-duplicate group): "
        f"{_count(tumour_only['images'], 'image')}, tumour sensitivity {_pct(tumour_only['sensitivity'])} "
        f"(share not called notumor). {_count(trained, 'more such image')} {'was' if trained == 1 else 'were'} "
        "trained on with the partial-label loss.\n"
    )


def _calibration_text(metrics: dict[str, Any]) -> str:
    calibration = metrics.get("calibration")
    if not calibration:
        return "The probabilities are not calibrated: no images were held out to fit a temperature."
    if calibration.get("skipped"):
        return (
            f"The probabilities are not calibrated (`{calibration['skipped']}`); validation ECE "
            f"{calibration['validation_ece_before']:.4f}."
        )
    applied = calibration.get("applied", "by folding it into the head")
    return (
        f"Calibration: temperature {calibration['temperature']:.3f} fitted on validation and applied\n"
        f"{applied}; validation ECE {calibration['validation_ece_before']:.4f} before, "
        f"{calibration['validation_ece_after']:.4f} after."
    )


def evaluation_text(metrics: dict[str, Any], shown: str | None) -> str:
    """The card's evaluation: the measured splits, or why there are none."""
    if shown is None:
        return (
            "There are no figures: no images were held out from training (validation_size=0, or too few\n"
            "images of a class to hold one out), so the model was neither evaluated nor calibrated."
        )
    splits = ("validation", "validation_without_near_duplicates", "test", "test_without_near_duplicates")
    sections = {k: metrics[k] for k in splits if k in metrics}
    fresh = (
        "\n`validation_without_near_duplicates`: the validation images with no near duplicate among the training\n"
        "images (the split is carved per file, so copies of one slice can lie on both sides).\n"
        if "validation_without_near_duplicates" in sections else ""
    )
    return (
        f"{metrics_table(sections)}\n{fresh}{_tumour_only_text(metrics)}\n{duplicates_text(metrics)}\n\n"
        f"Per class on the {shown} split:\n\n{per_class_table(metrics[shown])}\n\n{_calibration_text(metrics)}"
    )


def _library(ensemble: bool) -> str:
    # The Hub turns library_name into a "use with transformers" snippet; an ensemble folder
    # has no config.json for it, so it names this package instead.
    return "tumor-classifier" if ensemble else "transformers"


def write_plain_model_card(directory: str | Path, class_names: Sequence[str], *, ensemble: bool = False) -> Path:
    """A model card that claims nothing but the classes, for a model whose training this
    package did not record (a folder from elsewhere, saved again without its card)."""
    path = Path(directory) / "README.md"
    path.write_text(
        f"---\nlibrary_name: {_library(ensemble)}\npipeline_tag: image-classification\ntags:\n- tumor-classifier\n---\n\n"
        f"# Brain tumor MRI classifier\n\nClasses: {', '.join(class_names)}.\n\n> {DISCLAIMER}\n"
    )
    return path


def write_model_card(
    directory: str | Path,
    metrics: dict[str, Any],
    log_history: list[dict],
    class_names: Sequence[str],
    *,
    reliability: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> Path:
    """Writes the plots and ``README.md`` (a Hub model card) into a model folder."""
    directory = Path(directory)
    plots = []  # (alt text, file name) of what was drawn: the card shows nothing else
    if log_history:
        plot_training_curves(log_history, directory)
        plots += [("loss", "loss_curve.png"), ("accuracy", "accuracy_curve.png")]
    # A pack without its test split trains too, and fit may hold out nothing.
    shown = "test" if "test" in metrics else "validation" if "validation" in metrics else None
    if shown:
        plot_confusion_matrix(metrics[shown]["confusion_matrix"], class_names, directory / "confusion_matrix.png", f"{shown.capitalize()} confusion matrix")
        plots.append(("confusion", "confusion_matrix.png"))
    if reliability:
        plot_reliability(reliability, directory / "reliability.png")
        plots.append(("reliability", "reliability.png"))
    training = metrics.get("training", {})
    members = metrics.get("members")
    title = f"ensemble of {_count(len(members), str(training.get('backbone', 'model')) + ' model')}" if members else training.get("backbone", "model")
    # EfficientNet-Lite is this package's architecture, not transformers': the Auto classes
    # know it once tumor_classifier.efficientnet is imported (`import tumor_classifier`
    # alone imports no torch, so it does not register it).
    registration = (
        " once `import tumor_classifier.efficientnet` has registered EfficientNet-Lite with its Auto classes"
        if str(training.get("backbone", "")).startswith("efficientnet")
        else ""
    )
    loading = (
        "An ensemble folder (`ensemble.json`, `members/member-*/`) loads with this package; each\n"
        f"member folder on its own also loads with plain `transformers`{registration}. The ensemble's logits are\n"
        "the mean of the members' logits divided by the ensemble temperature.\n\n"
        + "| member | seed | epochs | validation accuracy |\n|---|---|---|---|\n"
        + "\n".join(f"| {i} | {m.get('seed')} | {_number(m.get('epochs_run') or 0)} | {_pct(m.get('validation_accuracy'))} |" for i, m in enumerate(members))
        if members
        else "The folder also loads with plain `transformers` (`AutoModelForImageClassification`,\n"
        f"`AutoImageProcessor`, `pipeline(\"image-classification\")`){registration}; plain transformers only\n"
        "resizes and normalises, while this package first converts to grayscale and crops to\n"
        "the head, as in training."
    )
    run = ["from scratch" if training.get("from_scratch") else "fine-tuned", f"{training.get('image_size')} px"]
    run += [_count(training["epochs_run"], "epoch")] if training.get("epochs_run") is not None else []
    run += [_count(training["train_images"], "training image")] if training.get("train_images") is not None else []
    run_text = ", ".join(run)
    figures = " ".join(f"![{alt}]({name})" for alt, name in plots)
    card = f"""---
library_name: {_library(bool(members))}
pipeline_tag: image-classification
license: apache-2.0
tags:
- medical-imaging
- brain-mri
- tumor-classification
- tumor-classifier
---

# Brain tumor MRI classifier ({title})

Classifies one brain MRI slice as {', '.join(class_names)}.
Trained with `{training.get('trained_with', 'train_hf.py')}` of the `tumor-classifier` package
({run_text}).

{data_text(metrics)}

> {DISCLAIMER}

## Use

```python
from tumor_classifier import TumorClassifier
clf = TumorClassifier.from_pretrained("path/or/hub-id")
clf.predict(["scan.jpg"]), clf.predict_proba(["scan.jpg"])
```

{loading}

## Evaluation

{evaluation_text(metrics, shown)}

{figures}

## Limitations

Trained only on the 2-D slices of {_data_sources(metrics)}; scans from other scanners, sequences,
orientations or sources may be classified worse than these figures say.
"""
    path = directory / "README.md"
    path.write_text(card)
    return path
