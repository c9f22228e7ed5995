"""MRI image folders and Hub data sets as ``datasets.DatasetDict``; labels, splits, data reports.

The canonical labels are ``CLASS_NAMES`` (glioma, meningioma, notumor, pituitary), in that
order; :data:`BINARY_CLASS_NAMES` is the tumor / no-tumor view of the same data.
Folder names used by other releases of these data (``glioma_tumor``, ``no_tumor``,
``normal`` ...) are mapped onto them.

``datasets`` is imported inside the functions that need it, so code that only runs a
saved model (or trains from a prepared cache on a machine without ``datasets``) does
not pay for it. Fingerprints, duplicate reports and group splits are
:mod:`tumor_classifier.duplicates`'s; their names are importable from here too.
"""

from __future__ import annotations

import io
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from .duplicates import (  # noqa: F401 - the duplicate names are importable from here as before
    NEAR_DUPLICATE_DISTANCE,
    DuplicateReport,
    ImageFingerprint,
    find_duplicates,
    fingerprint,
    group_split,
    near_duplicate_groups,
    stratified_group_split,
)
from .decoding import as_image_list
from .exceptions import InvalidDatasetError, InvalidImageError

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict

CLASS_NAMES = ("glioma", "meningioma", "notumor", "pituitary")
BINARY_CLASS_NAMES = ("notumor", "tumor")
NO_TUMOR = "notumor"
#: Label of images known to show a tumour of unknown type (e.g. Br35H): the training loss
#: asks only that the tumour classes together be probable.
ANY_TUMOR = -1
#: The class name ``TumorClassifier.fit`` reads as :data:`ANY_TUMOR` ("a tumour, type unknown").
ANY_TUMOR_NAME = "tumor_type_unknown"
#: How :func:`load_mri_dataset` can carve a validation split: per image, or by near-duplicate group.
VALIDATION_BY = ("file", "group")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp")

_SPLIT_ALIASES = {
    "train": ("training", "train"),
    "validation": ("validation", "valid", "val"),
    "test": ("testing", "test"),
}
_CLASS_ALIASES = {
    "glioma": "glioma",
    "gliomatumor": "glioma",
    "meningioma": "meningioma",
    "meningiomatumor": "meningioma",
    "notumor": "notumor",
    "notumour": "notumor",
    "normal": "notumor",
    "healthy": "notumor",
    "no": "notumor",
    "pituitary": "pituitary",
    "pituitarytumor": "pituitary",
    "pituitarytumour": "pituitary",
}
#: Folder and label names of a tumour / no-tumour set that name no tumour type (Br35H: yes / no);
#: read only for the binary view, where they are "tumor".
_BINARY_TUMOR_ALIASES = ("tumor", "tumour", "yes")


def canonical_class_name(name: str) -> str:
    """Maps a folder or label name to one of :data:`CLASS_NAMES`.

    Raises:
        InvalidDatasetError: The name matches no known class.

    Example:
        >>> canonical_class_name("Glioma_Tumor")
        'glioma'
    """
    key = re.sub(r"[^a-z]", "", name.lower())
    if key not in _CLASS_ALIASES:
        binary_hint = (
            " For a tumour / no-tumour set (tumor, tumour or yes beside notumor, healthy or no), train the "
            "binary view (binary=True, train_hf.py --binary)."
        )
        raise InvalidDatasetError(
            f"Unknown class folder or label {name!r}; expected one of {', '.join(CLASS_NAMES)} "
            "(aliases such as glioma_tumor, no_tumor, normal are accepted)."
            + (binary_hint if key in _BINARY_TUMOR_ALIASES else "")
            + " TumorClassifier.fit takes any class names."
        )
    return _CLASS_ALIASES[key]


def to_binary_label(name: str) -> str:
    """``"notumor"`` (or an alias) stays, every tumor type becomes ``"tumor"``; so do
    ``tumor``, ``tumour`` and ``yes``, names of a set labelled only tumour / no tumour.

    Raises:
        InvalidDatasetError: The name matches no known class.
    """
    if re.sub(r"[^a-z]", "", name.lower()) in _BINARY_TUMOR_ALIASES:
        return "tumor"
    return NO_TUMOR if canonical_class_name(name) == NO_TUMOR else "tumor"


def find_split_dirs(root: Path) -> dict[str, Path]:
    """Split name (train, validation, test) -> its folder, for the split folders present."""
    found: dict[str, Path] = {}
    children = {child.name.lower(): child for child in root.iterdir() if child.is_dir()}
    for split, aliases in _SPLIT_ALIASES.items():
        for alias in aliases:
            if alias in children:
                found[split] = children[alias]
                break
    return found


def list_image_files(directory: str | os.PathLike, *, binary: bool = False) -> list[tuple[str, str]]:
    """Lists ``(path, class name)`` for every image in ``directory/<class>/``.

    Files are sorted, so the order (and every seeded split made from it) is stable.
    With ``binary`` the class names are :data:`BINARY_CLASS_NAMES` (see
    :func:`to_binary_label`), so folders such as ``tumour`` / ``healthy`` are read too.

    Raises:
        InvalidDatasetError: No class folder with images is found.
    """
    directory = Path(directory)
    items: list[tuple[str, str]] = []
    for class_dir in sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))):
        label = to_binary_label(class_dir.name) if binary else canonical_class_name(class_dir.name)
        for path in sorted(class_dir.rglob("*")):
            if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
                items.append((str(path), label))
    if not items:
        raise InvalidDatasetError(
            f"No images found in {directory}; expected class folders "
            f"({', '.join(CLASS_NAMES)}) holding {', '.join(IMAGE_SUFFIXES)} files."
        )
    return items


def _class_label(binary: bool):
    from datasets import ClassLabel

    return ClassLabel(names=list(BINARY_CLASS_NAMES if binary else CLASS_NAMES))


def _dataset_from_files(items: Sequence[tuple[str, str]], binary: bool) -> "Dataset":
    from datasets import Dataset, Features, Image, Value

    labels = _class_label(binary)
    names = [to_binary_label(label) if binary else label for _, label in items]
    features = Features({"image": Image(), "label": labels, "path": Value("string")})
    return Dataset.from_dict(
        {
            "image": [path for path, _ in items],
            "label": [labels.str2int(name) for name in names],
            "path": [path for path, _ in items],
        },
        features=features,
    )


def _from_local_folder(root: Path, binary: bool) -> dict[str, "Dataset"]:
    splits = find_split_dirs(root)
    if not splits:  # an imagefolder without split folders: everything is train
        splits = {"train": root}
    return {split: _dataset_from_files(list_image_files(path, binary=binary), binary) for split, path in splits.items()}


def _from_hub(repo_id: str, binary: bool, revision: str | None) -> dict[str, "Dataset"]:
    from datasets import ClassLabel
    from datasets import Image as ImageFeature
    from datasets import load_dataset

    try:
        loaded = load_dataset(repo_id, revision=revision)
    except Exception as error:  # datasets raises many types; the user needs one message
        raise InvalidDatasetError(
            f"Could not load {repo_id!r} as a local folder or a Hugging Face Hub data set: {error}"
        ) from error
    splits: dict[str, Dataset] = {}
    for split_name, split in loaded.items():
        image_column = next((k for k, f in split.features.items() if isinstance(f, ImageFeature)), None)
        label_column = next((k for k, f in split.features.items() if isinstance(f, ClassLabel)), None)
        if image_column is None or label_column is None:
            raise InvalidDatasetError(
                f"The data set {repo_id!r} needs an Image column and a ClassLabel column; "
                f"it has {dict(split.features)}."
            )
        source_names = split.features[label_column].names
        target = _class_label(binary)

        def relabel(batch, source_names=source_names, target=target):
            names = [source_names[i] for i in batch[label_column]]
            mapped = [to_binary_label(n) if binary else canonical_class_name(n) for n in names]
            return {"label": [target.str2int(n) for n in mapped]}

        split = split.map(relabel, batched=True, remove_columns=[label_column])
        split = split.cast_column("label", target)
        if image_column != "image":
            split = split.rename_column(image_column, "image")
        split = split.select_columns(["image", "label"])
        key = next((canon for canon, aliases in _SPLIT_ALIASES.items() if split_name.lower() in aliases), split_name)
        splits[key] = split
    return splits


def hub_kaggle_folder(source: str, *, revision: str | None = None) -> Path | None:
    """The downloaded folder of a Hub data set uploaded in the Kaggle layout (``Training/<class>/``,
    ``Testing/<class>/``), or ``None`` for any other source.

    ``datasets`` reads such a repository as one train split (it knows split folders in
    lowercase only): the Testing images would be trained on, and a test split carved from
    both. Read as a folder, as the same data on disk is, it keeps its splits. Only the
    images in ``<split>/<class>/`` are downloaded. ``None`` also when ``source`` is a local
    path, no repository id, or the Hub cannot be reached (``load_mri_dataset`` then says
    what is wrong), and when the images found lie in no split folder.
    """
    from huggingface_hub import snapshot_download

    if Path(source).exists():
        return None
    patterns = [f"*/*/*{suffix}" for suffix in IMAGE_SUFFIXES] + [f"*/*/*{suffix.upper()}" for suffix in IMAGE_SUFFIXES]
    try:
        folder = Path(snapshot_download(str(source), repo_type="dataset", revision=revision, allow_patterns=patterns))
    except (OSError, ValueError):  # unreachable, unknown, offline and not cached, not a repository id
        return None
    splits = find_split_dirs(folder)
    return folder if "train" in splits and len(splits) > 1 else None


def load_mri_dataset(
    source: str | os.PathLike,
    *,
    binary: bool = False,
    validation_size: float = 0.1,
    test_size: float = 0.15,
    seed: int = 42,
    drop_test_duplicates: bool = False,
    revision: str | None = None,
    validation_by: str = "file",
) -> "DatasetDict":
    """Loads brain MRI slices as a ``DatasetDict`` with train, validation and test splits.

    Args:
        source: A local folder in the Kaggle layout (``Training/<class>/``,
            ``Testing/<class>/``, or lowercase ``train``/``test``/``validation``), a plain
            image folder (``<class>/``; validation and test are then carved from it), or a
            Hugging Face Hub data set id: one uploaded in the Kaggle layout is read as its
            downloaded folder (see :func:`hub_kaggle_folder`), any other needs an image and
            a class-label column.
        binary: Label tumor / no tumor (:data:`BINARY_CLASS_NAMES`) instead of the four
            classes.
        validation_size: Fraction of train carved out, stratified and seeded, as
            validation when the source has no validation split.
        test_size: Fraction carved out of train as test when the source has no test split.
        seed: Seed of the carving.
        drop_test_duplicates: Drop test images that have a near duplicate (pHash distance
            at most :data:`NEAR_DUPLICATE_DISTANCE`) in train or validation.
        revision: Hub revision, for Hub data sets.
        validation_by: How a carved validation split is drawn: ``"file"`` (stratified per
            image, the default and what the shipped models were validated on) or
            ``"group"`` (whole groups of near duplicates, stratified by class, so that no
            copy of a validation image is trained; it hashes every training image).

    Returns:
        ``DatasetDict`` with ``train``, ``validation`` and ``test``; columns ``image``
        (``datasets.Image``), ``label`` (``ClassLabel``) and, for local folders, ``path``.

    Raises:
        InvalidDatasetError: The source is neither a readable folder nor a loadable data
            set, or holds no images.

    Example:
        >>> data = load_mri_dataset("../shared/data/brain-tumor-mri")  # doctest: +SKIP
        >>> data["train"].features["label"].names
        ['glioma', 'meningioma', 'notumor', 'pituitary']
    """
    from datasets import DatasetDict

    if validation_by not in VALIDATION_BY:
        raise InvalidDatasetError(f"validation_by must be one of {', '.join(VALIDATION_BY)}; got {validation_by!r}.")
    if not str(source).strip():  # Path("") is the working directory, which is not what was meant
        raise InvalidDatasetError("The data source is empty; pass a folder in the Kaggle layout, an image folder or a Hub data set id.")
    path = Path(source)
    if path.is_dir():
        splits = _from_local_folder(path, binary)
    elif path.exists() or not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", str(source)):
        raise InvalidDatasetError(
            f"{source!r} is not a folder; pass a folder in the Kaggle layout or a Hub data set id (org/name)."
        )
    else:
        folder = hub_kaggle_folder(str(source), revision=revision)
        splits = _from_local_folder(folder, binary) if folder is not None else _from_hub(str(source), binary, revision)
    if "train" not in splits:
        raise InvalidDatasetError(f"{source!r} has no train split; found {sorted(splits)}.")
    train = splits["train"]
    if "test" not in splits:
        train, splits["test"] = _carve(train, test_size, seed, "test")
    if "validation" not in splits:
        carve = _carve_groups if validation_by == "group" else _carve
        train, splits["validation"] = carve(train, validation_size, seed, "validation")
    splits["train"] = train
    data = DatasetDict({name: splits[name] for name in ("train", "validation", "test")})
    if drop_test_duplicates:
        report = find_duplicates(
            image_sources(data["train"]) + image_sources(data["validation"]), image_sources(data["test"])
        )
        keep = [i for i in range(len(data["test"])) if i not in set(report.near_duplicate_queries)]
        data["test"] = data["test"].select(keep)
    return data


def _carve(split: "Dataset", fraction: float, seed: int, name: str) -> tuple["Dataset", "Dataset"]:
    """Splits off a stratified, seeded part with at least one image of each class."""
    kept, carved = carve_indices(split["label"], fraction, seed, name)
    return split.select(kept), split.select(carved)


def _carve_groups(split: "Dataset", fraction: float, seed: int, name: str) -> tuple["Dataset", "Dataset"]:
    """Splits off a part made of whole near-duplicate groups, stratified by class."""
    groups = near_duplicate_groups([fingerprint(source).phash for source in image_sources(split)])
    kept, carved = stratified_group_split(split["label"], groups, fraction, seed)
    return split.select(kept), split.select(carved)


def carve_indices(labels: Sequence[int], fraction: float, seed: int, name: str = "validation") -> tuple[np.ndarray, np.ndarray]:
    """The one splitter of this package: positions kept and carved, stratified by label and seeded.

    At least one of each label is carved. ``load_mri_dataset`` carves its validation and
    test splits with it and ``TumorClassifier.fit`` its calibration images, so a seed
    picks the same images either way (it is ``datasets``' stratified split, on positions).

    Raises:
        InvalidDatasetError: Too few images to leave one of each label on both sides.
    """
    from datasets import ClassLabel, Dataset, Features, Value

    codes = np.unique(np.asarray(labels), return_inverse=True)[1]  # any labels (-1 too) -> 0..k-1, order kept
    n_classes = int(codes.max()) + 1 if codes.size else 0
    count = max(n_classes, int(np.ceil(fraction * len(codes))))
    if count >= len(codes) - n_classes + 1:
        raise InvalidDatasetError(
            f"Too few images ({len(codes)}) to carve a stratified {name} split out of train; "
            f"add images or provide a {name} folder."
        )
    features = Features({"label": ClassLabel(num_classes=n_classes), "position": Value("int64")})
    table = Dataset.from_dict({"label": codes.tolist(), "position": list(range(len(codes)))}, features=features)
    carved = table.train_test_split(test_size=count, stratify_by_column="label", seed=seed)
    return np.asarray(carved["train"]["position"], dtype=int), np.asarray(carved["test"]["position"], dtype=int)


def image_sources(split: "Dataset") -> list[Any]:
    """The undecoded images of a split: paths, or ``{"bytes", "path"}`` dicts."""
    from datasets import Image

    raw = split.cast_column("image", Image(decode=False))["image"]
    return [item["path"] if item.get("bytes") is None else item for item in raw]


def as_sources(X: Any) -> list[Any]:
    """One image or a sequence (list, array stack, ``datasets.Dataset``) -> list of images."""
    if hasattr(X, "column_names") and hasattr(X, "cast_column"):  # a datasets.Dataset
        if "image" not in X.column_names:
            raise InvalidImageError(
                f"The data set has no 'image' column (columns: {', '.join(X.column_names)}); "
                "pass a datasets.Dataset with an 'image' column, or the images themselves."
            )
        return image_sources(X)
    return as_image_list(X)


def load_image_folder(directory: str | os.PathLike, *, binary: bool = False) -> "Dataset":
    """One folder of ``<class>/`` subfolders as a single ``Dataset`` (no splitting)."""
    return _dataset_from_files(list_image_files(directory, binary=binary), binary)


def load_tumour_only_images(directories: Sequence[str | os.PathLike]) -> list[str]:
    """Image paths of folders whose images all show a tumour of unknown type (Br35H).

    Every image file below each folder counts (sorted, so splits repeat).

    Raises:
        InvalidDatasetError: A folder is missing or holds no image.
    """
    return images_below(directories, "tumour-only")


def load_no_tumour_images(directories: Sequence[str | os.PathLike]) -> list[str]:
    """Image paths of folders whose images all show no tumour (slices of healthy volumes,
    written by :func:`tumor_classifier.volume_export.export_slices`), sorted.

    Raises:
        InvalidDatasetError: A folder is missing or holds no image.
    """
    return images_below(directories, "no-tumour")


def images_below(directories: Sequence[str | os.PathLike], kind: str) -> list[str]:
    """Every image file below each folder, sorted per folder; ``kind`` names the folders in errors."""
    paths: list[str] = []
    for directory in directories:
        directory = Path(directory)
        if not directory.is_dir():
            raise InvalidDatasetError(f"The {kind} image folder {directory} does not exist or is not a folder.")
        found = sorted(str(p) for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise InvalidDatasetError(f"No images ({', '.join(IMAGE_SUFFIXES)}) found below the {kind} folder {directory}.")
        paths += found
    return paths


@dataclass
class DataReport:
    """What :func:`describe_folder` found in a folder of MRI slices."""

    class_counts: dict[str, dict[str, int]]
    modes: dict[str, dict[str, Counter]]
    sizes: dict[str, Counter]
    duplicates: DuplicateReport | None
    unreadable: list[str]

    def to_text(self) -> str:
        lines = []
        for split, counts in self.class_counts.items():
            total = sum(counts.values())
            lines.append(f"{split}: {total} images")
            for name, count in counts.items():
                modes = ", ".join(f"{mode} {n}" for mode, n in sorted(self.modes[split][name].items()))
                lines.append(f"  {name:<11} {count:>6}   storage modes: {modes}")
            sizes = ", ".join(f"{w}x{h} ({n})" for (w, h), n in self.sizes[split].most_common(5))
            lines.append(f"  sizes (most common): {sizes}")
        if self.duplicates is not None:
            s = self.duplicates.summary()
            lines.append(f"test images with a duplicate in train ({s['queries']} test images):")
            threshold = self.duplicates.threshold
            for label, count in (
                ("byte-identical:", s["byte_identical"]),
                ("same pHash:", s["same_phash"]),
                (f"pHash distance <= {threshold}:", s[f"phash_within_{threshold}"]),
                ("no near duplicate in train:", s["without_near_duplicate"]),
            ):
                lines.append(f"  {label:<28} {count}")
        if self.unreadable:
            lines.append(f"unreadable files ({len(self.unreadable)}): " + ", ".join(self.unreadable[:10]))
        return "\n".join(lines)


def describe_folder(directory: str | os.PathLike, *, check_duplicates: bool = True) -> DataReport:
    """Counts classes, storage modes and sizes per split, and test-vs-train duplicates.

    Args:
        directory: Folder in the Kaggle layout (or a plain class-folder image folder).
        check_duplicates: Also hash every image and compare test to train.

    Returns:
        The :class:`DataReport`; ``to_text()`` renders it.
    """
    from PIL import Image

    root = Path(directory)
    if not root.is_dir():
        raise InvalidDatasetError(f"{directory!r} is not a folder.")
    split_dirs = find_split_dirs(root) or {"train": root}
    class_counts: dict[str, dict[str, int]] = {}
    modes: dict[str, dict[str, Counter]] = {}
    sizes: dict[str, Counter] = {}
    prints: dict[str, list[ImageFingerprint]] = {}
    unreadable: list[str] = []
    for split, split_dir in split_dirs.items():
        items = list_image_files(split_dir)
        class_counts[split] = dict(Counter(label for _, label in items))
        modes[split] = {name: Counter() for name in class_counts[split]}
        sizes[split] = Counter()
        prints[split] = []
        for path, label in items:
            try:
                data = Path(path).read_bytes()
                with Image.open(io.BytesIO(data)) as image:
                    modes[split][label][image.mode] += 1
                    sizes[split][image.size] += 1
                if check_duplicates:
                    prints[split].append(fingerprint(data))
            except (OSError, InvalidImageError):
                unreadable.append(path)
    duplicates = None
    if check_duplicates and "train" in prints and "test" in prints:
        duplicates = find_duplicates(
            prints["train"], prints["test"], fingerprints=(prints["train"], prints["test"])
        )
    return DataReport(class_counts, modes, sizes, duplicates, unreadable)
