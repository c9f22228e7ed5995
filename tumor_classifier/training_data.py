"""The data a training run reads: the splits as prepared pixels, from the images or a pixel pack.

:func:`load_splits` carves train / validation from the data folder (with the label audit
and the sample limits applied) and adds the tumour-only images split by near-duplicate
group; :func:`load_pack` reads the same splits from a pixel pack instead.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from transformers import TrainingArguments

from .data import (
    ANY_TUMOR,
    NO_TUMOR,
    find_duplicates,
    find_split_dirs,
    fingerprint,
    group_split,
    hub_kaggle_folder,
    image_sources,
    load_mri_dataset,
    load_no_tumour_images,
    load_tumour_only_images,
    near_duplicate_groups,
)
from .exceptions import InvalidArgumentError, InvalidDatasetError, InvalidImageError
from .label_audit import apply_label_audit_to_dataset, read_label_audit
from .pixels import PixelDataset, PixelPack, prepare_pixels, read_pixel_pack
from .preprocessing import MRIPreprocessor
from .training_arguments import DataArguments

logger = logging.getLogger(__name__)


def load_splits(data_args: DataArguments, preprocessor: MRIPreprocessor, training_args: TrainingArguments | None = None):
    """The data set's splits (``datasets``) and their prepared pixels.

    A Hub data set in the Kaggle layout is read as its downloaded folder (see
    :func:`~tumor_classifier.data.hub_kaggle_folder`); ``data_args.data_dir`` is left as given.
    """
    first = training_args.main_process_first(desc="downloading the data") if training_args else contextlib.nullcontext()
    with first:
        kaggle_folder = hub_kaggle_folder(data_args.data_dir)
    if kaggle_folder is not None:
        logger.info("The Hub data set %s is in the Kaggle layout: its split folders are read from %s.", data_args.data_dir, kaggle_folder)
        data_args = replace(data_args, data_dir=str(kaggle_folder))
    data = load_mri_dataset(
        data_args.data_dir, binary=data_args.binary, validation_size=data_args.validation_size, seed=data_args.split_seed,
        validation_by=data_args.validation_by,
    )
    if data_args.label_audit:
        entries = read_label_audit(data_args.label_audit)
        unmatched = {entry.file for entry in entries}
        for name in ("train", "validation"):  # both carved from the training folder; never test
            data[name], summary = apply_label_audit_to_dataset(data[name], entries, data_args.data_dir, return_summary=True)
            unmatched &= set(summary["unmatched_files"])
        if unmatched:  # a typo would leave the image the reviewer meant to drop in training
            shown = sorted(unmatched)
            raise InvalidDatasetError(
                f"{len(shown)} of the {len(entries)} rows of the label audit {data_args.label_audit} name no "
                f"training image of {data_args.data_dir}: {', '.join(shown[:5])}"
                + (f" and {len(shown) - 5} more" if len(shown) > 5 else "")
                + "; a row's file is relative to the data folder (Training/<class>/<file>). Correct those rows, "
                "or remove them (or --label_audit) if the list was written for another copy of the data."
            )
    _check_every_class_is_trained(data, data_args)
    if data_args.max_train_samples:
        data["train"] = data["train"].shuffle(seed=data_args.split_seed).select(range(min(data_args.max_train_samples, len(data["train"]))))
    if data_args.max_eval_samples:
        for split in ("validation", "test"):
            count = min(data_args.max_eval_samples, len(data[split]))
            data[split] = data[split].shuffle(seed=data_args.split_seed).select(range(count))
    cache = data_args.pixel_cache_dir or None
    first = training_args.main_process_first(desc="preparing pixels") if training_args else contextlib.nullcontext()
    with first, _naming_unreadable_images(data_args.data_dir):
        arrays = {name: prepare_pixels(split, preprocessor, cache) for name, split in data.items()}
        if data_args.tumour_only_dirs:
            arrays.update(_tumour_only_arrays(data_args, preprocessor, cache))
        if data_args.no_tumour_dirs:
            arrays["train_no_tumour"] = _no_tumour_arrays(data_args, preprocessor, cache, data["train"].features["label"].names)
    return data, arrays


@contextlib.contextmanager
def _naming_unreadable_images(data_dir: str):
    """A file of the data that cannot be decoded stops the run with what to do about it."""
    try:
        yield
    except InvalidImageError as error:
        # The decoder's message ends with the inputs predict() accepts, which says nothing here.
        reason = str(error).split("; accepted:")[0]
        raise InvalidDatasetError(
            f"{reason}. It is one of the images this run reads; remove or replace it and run again "
            f"(`tumor-classifier data-report {data_dir}` lists every unreadable file of the folder at once)."
        ) from None


def _check_every_class_is_trained(data, data_args: DataArguments) -> None:
    """Refuses a class with no image in train and validation (an empty or missing class
    folder): the model would get an output that no image ever trained."""
    names = data["train"].features["label"].names
    counts = np.bincount(np.concatenate([data["train"]["label"], data["validation"]["label"]]).astype(int), minlength=len(names))
    missing = [name for name, count in zip(names, counts) if count == 0]
    if not missing:
        return
    root = Path(data_args.data_dir)
    where = find_split_dirs(root).get("train", root) if root.is_dir() else None
    folders = f" (the folder {' / '.join(str(where / name) for name in missing)} is empty or missing)" if where else ""
    raise InvalidDatasetError(
        f"{data_args.data_dir} has no training image of the class {', '.join(missing)}{folders}; the model "
        f"({', '.join(names)}) would have an output no image trained. Add its images"
        + (", or train tumour / no tumour with --binary" if not data_args.binary else "")
        + "; TumorClassifier.fit trains any set of class names."
    )


def _tumour_only_arrays(data_args: DataArguments, preprocessor: MRIPreprocessor, cache: str | None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The tumour-only images (label ANY_TUMOR), split train / validation by near-duplicate
    group: a slice re-saved at several sizes lies wholly on one side, so validation
    sensitivity is not inflated by copies of training images."""
    paths = load_tumour_only_images(data_args.tumour_only_dirs)
    groups = near_duplicate_groups([fingerprint(path).phash for path in paths])
    parts = group_split(groups, data_args.tumour_only_validation_size, data_args.split_seed)
    arrays = {}
    for name, indices in zip(("train_tumour_only", "validation_tumour_only"), parts):
        arrays[name] = _one_label_pixels([paths[i] for i in indices], ANY_TUMOR, preprocessor, cache)
    logger.info("tumour-only images: %d in %d near-duplicate groups; %d train, %d validation",
                len(paths), groups.max() + 1, len(parts[0]), len(parts[1]))
    return arrays


def _no_tumour_arrays(data_args: DataArguments, preprocessor: MRIPreprocessor, cache: str | None,
                      class_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The no-tumour images, all for training with the ``notumor`` label (every run's class
    names have it: folders and Hub labels are mapped to the package's names). None is held out:
    slices of one healthy volume are near copies of their neighbours, so a fair check of
    what they teach is another volume (the README's volume verdicts)."""
    paths = load_no_tumour_images(data_args.no_tumour_dirs)
    logger.info("no-tumour images: %d trained as %s", len(paths), NO_TUMOR)
    return _one_label_pixels(paths, list(class_names).index(NO_TUMOR), preprocessor, cache)


def _one_label_pixels(paths: list[str], label: int, preprocessor: MRIPreprocessor, cache: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Prepared pixels and labels of image files that all carry one label."""
    from datasets import Dataset
    from datasets import Image as ImageFeature

    split = Dataset.from_dict({"image": paths, "path": paths, "label": [label] * len(paths)})
    return prepare_pixels(split.cast_column("image", ImageFeature()), preprocessor, cache)


def joined_dataset(arrays: dict[str, tuple[np.ndarray, np.ndarray]], *names: str) -> "PixelDataset":
    """One data set of the named splits that exist (e.g. Kaggle train + tumour-only train)."""
    present = [arrays[name] for name in names if name in arrays]
    return PixelDataset(np.concatenate([p for p, _ in present]), np.concatenate([y for _, y in present]))


def load_pack(data_args: DataArguments, preprocessor: MRIPreprocessor, class_names: Sequence[str]) -> PixelPack:
    """A pixel pack, checked against this run's settings, cut to the sample limits."""
    pack = read_pixel_pack(data_args.pixel_pack)
    if asdict(pack.preprocessor) != asdict(preprocessor):
        raise InvalidArgumentError(
            f"The pixel pack {data_args.pixel_pack} was prepared with {asdict(pack.preprocessor)}, "
            f"but this run asks for {asdict(preprocessor)}; write a new pack with these settings."
        )
    if list(pack.class_names) != list(class_names):
        raise InvalidArgumentError(f"The pixel pack holds classes {pack.class_names}, this run trains {list(class_names)}.")
    rng = np.random.default_rng(data_args.split_seed)
    limits = {"train": data_args.max_train_samples, "validation": data_args.max_eval_samples, "test": data_args.max_eval_samples}
    for name, limit in limits.items():
        if limit and name in pack.arrays and limit < len(pack.arrays[name][1]):
            keep = np.sort(rng.permutation(len(pack.arrays[name][1]))[:limit])
            pack.arrays[name] = tuple(array[keep] for array in pack.arrays[name])
            if name == "test":
                pack.test_clean = None  # indices of the full split no longer apply
    return pack


def split_fingerprints(data) -> dict[str, list]:
    """Each split's image fingerprints, taken once for the duplicate checks below."""
    return {name: [fingerprint(source) for source in image_sources(split)] for name, split in data.items()}


def cross_class_duplicates(data, prints: dict[str, list] | None = None) -> list[dict[str, Any]]:
    """Near-duplicate groups of train and validation images filed under different classes,
    with a warning that names them: the same slice trained as two answers (or validated
    against another label) is a labelling error the test-versus-train check cannot see.

    ``prints``: :func:`split_fingerprints` of ``data``, if taken already.

    Returns:
        One ``{"paths": [...], "labels": [...]}`` per group, largest first.
    """
    from .label_audit import find_cross_class_duplicates

    names = data["train"].features["label"].names
    splits = [data["train"], data["validation"]]
    sources = [source for split in splits for source in image_sources(split)]
    labels = [names[label] for split in splits for label in split["label"]]
    plain = prints["train"] + prints["validation"] if prints else [fingerprint(source) for source in sources]
    groups = find_cross_class_duplicates(list(zip(sources, labels)), mirror=False, fingerprints=(plain, []))
    found = [{"paths": [_shown(sources[i]) for i in group.indices], "labels": list(group.labels)} for group in groups]
    if found:
        shown = "; ".join(
            " = ".join(f"{path} [{label}]" for path, label in zip(group["paths"], group["labels"])) for group in found[:3]
        )
        logger.warning(
            "%d group%s of near-duplicate training images carr%s different classes: %s%s. Keep one label per "
            "slice: list the wrong copies in a --label_audit CSV (exclude or relabel).",
            len(found), "" if len(found) == 1 else "s", "ies" if len(found) == 1 else "y", shown,
            f" and {len(found) - 3} more (metrics.json)" if len(found) > 3 else "",
        )
    return found


def _shown(source: Any) -> str:
    return str(source.get("path") or "<image bytes>") if isinstance(source, dict) else str(source)


def duplicate_check(data, prints: dict[str, list] | None = None) -> Any:
    """Test images against train and validation (``prints``: :func:`split_fingerprints` of ``data``)."""
    references = image_sources(data["train"]) + image_sources(data["validation"])
    fingerprints = (prints["train"] + prints["validation"], prints["test"]) if prints else None
    return find_duplicates(references, image_sources(data["test"]), fingerprints=fingerprints)


def validation_duplicate_check(data, prints: dict[str, list] | None = None) -> Any:
    """Validation images against train: the split is carved per file, so a slice saved twice
    can lie on both sides, and such images flatter the validation figures."""
    fingerprints = (prints["train"], prints["validation"]) if prints else None
    return find_duplicates(image_sources(data["train"]), image_sources(data["validation"]), fingerprints=fingerprints)
