"""Compare candidate models on validation data only: the figures that choose what ships.

Never Testing. For each model folder (or ``default`` for the shipped model):

* Kaggle validation: the 10% of Training that ``train_hf.py`` carves out (stratified,
  seed 42; the shipped ensemble's members and the fine-tuned models hold out the same
  images): accuracy, tumour sensitivity, notumor specificity; again on the part with no
  near duplicate among the training split's images (the carving is per file, and about
  four in ten validation images have a near copy in training, which flatters them);
* br35h-tumor validation groups: the near-duplicate groups ``train_hf.py`` holds out
  (``group_split(groups, 0.2, seed=42)``): share not called notumor;
* stress on the Kaggle validation tumours (``tumor_classifier.stress``): share called
  notumor after each stress (inversion inside the head, gamma 0.4 / 2.5, noise, blur).

A model name ending in ``+mirror`` (``default+mirror``) is the same model with
``test_time_augmentation`` (each image averaged with its mirror image).

Usage:
    python benchmarks/validation_choice.py default default+mirror runs/robust-convnext [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from tumor_classifier import TumorClassifier
from tumor_classifier.data import (
    NO_TUMOR,
    fingerprint,
    group_split,
    load_mri_dataset,
    load_tumour_only_images,
    near_duplicate_groups,
)
from tumor_classifier.duplicates import find_duplicates
from tumor_classifier.preprocessing import load_image
from tumor_classifier.stress import STRESSES


def _predict(clf: TumorClassifier, images: list, batch: int = 64) -> np.ndarray:
    return np.concatenate([clf.predict(images[i : i + batch]) for i in range(0, len(images), batch)])


def evaluate(clf: TumorClassifier, kaggle: tuple[list[str], list[str]], clean: list[int], br35h: list[str]) -> dict[str, float]:
    paths, labels = kaggle
    labels = np.asarray(labels)
    predicted = _predict(clf, paths)
    tumour = labels != NO_TUMOR
    new = np.zeros(len(labels), dtype=bool)
    new[clean] = True
    figures = {
        "val accuracy": float(np.mean(predicted == labels)),
        "val tumour sensitivity": float(np.mean(predicted[tumour] != NO_TUMOR)),
        "val notumor specificity": float(np.mean(predicted[~tumour] == NO_TUMOR)),
        f"val accuracy, no near duplicate in train ({new.sum()})": float(np.mean(predicted[new] == labels[new])),
        f"val notumor specificity, no near duplicate in train ({(new & ~tumour).sum()})": float(np.mean(predicted[new & ~tumour] == NO_TUMOR)),
        "br35h val-group sensitivity": float(np.mean(_predict(clf, br35h) != NO_TUMOR)),
    }
    grays = [np.asarray(load_image(p)) for p, t in zip(paths, tumour) if t]
    for name, stress in STRESSES.items():
        figures[f"stress {name}: tumours called notumor"] = float(np.mean(_predict(clf, [stress(g) for g in grays]) == NO_TUMOR))
    return figures


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="model folders, or 'default' for the shipped model; '+mirror' appended: with mirror test-time augmentation")
    parser.add_argument("--data", default="../shared/data", help="folder holding brain-tumor-mri and br35h-tumor")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = Path(args.data)
    splits = load_mri_dataset(data / "brain-tumor-mri", validation_size=0.1, seed=42)
    validation = splits["validation"]
    names = validation.features["label"].names
    kaggle = (list(validation["path"]), [names[i] for i in validation["label"]])
    clean = list(find_duplicates(list(splits["train"]["path"]), kaggle[0]).clean_queries)
    tumour_only = load_tumour_only_images([data / "br35h-tumor"])
    groups = near_duplicate_groups([fingerprint(p).phash for p in tumour_only])
    br35h = [tumour_only[i] for i in group_split(groups, 0.2, seed=42)[1]]
    print(f"Kaggle validation: {len(kaggle[0])} images, {len(clean)} with no near duplicate in train; br35h-tumor validation groups: {len(br35h)} images "
          f"in {len(set(groups[group_split(groups, 0.2, seed=42)[1]]))} groups", flush=True)
    results = {}
    for model in args.models:
        started = time.perf_counter()
        folder, mirror = (model[: -len("+mirror")], True) if model.endswith("+mirror") else (model, False)
        clf = TumorClassifier.from_pretrained(None if folder == "default" else folder)
        clf.test_time_augmentation = mirror
        results[model] = evaluate(clf, kaggle, clean, br35h)
        print(f"{model}: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    rows = list(next(iter(results.values())))
    print("| figure | " + " | ".join(results) + " |\n|---|" + "---|" * len(results))
    for row in rows:
        print(f"| {row} | " + " | ".join(f"{100 * results[m][row]:.2f}%" for m in results) + " |")
    return results


if __name__ == "__main__":
    main()
