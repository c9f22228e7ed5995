"""Training volumes for the slice-sequence model, built from real 2-D slices.

No labelled volume set exists here, so volumes are assembled from real slices whose
embeddings were computed once with the frozen backbone (:class:`SliceBank`):

* a **no-tumour volume** is ``n`` distinct ``notumor`` slices in random order;
* a **tumour volume** is the same with a run of ``r`` consecutive tumour slices, all of one
  tumour class, at a random place; those slices are labelled tumour, the others not.

``n`` and ``r`` are drawn from :class:`VolumeRecipe`'s ranges; the run is at least
``min_run`` long because a lesion spans several slices (and because the slice-aggregation
rule it is compared with needs a run of three). What this does *not* give: neighbouring
slices of one head. The slices of a built volume come from different patients, planes and
sequences, so the LSTM cannot learn anatomical continuity from them, only "a run of
tumour-looking slices among others". And in the Kaggle data the classes differ in
sequence and plane (``notumor`` mostly axial T2 / FLAIR, the tumour classes mostly T1
coronal / sagittal), so a run of tumour slices is also a run of different-looking slices.

:func:`kaggle_slice_banks` splits the Kaggle slices as the shipped backbone's training did
(``load_mri_dataset``, seed 42: ``Training`` less a 10% validation split, which the
backbone was fine-tuned on, and held out: that validation split and ``Testing``). It keeps
the held-out slices whose near-duplicate group (pHash, joined transitively) holds no
fine-tuning slice, and splits them by group (:func:`~tumor_classifier.duplicates.group_split`)
into a ``held_out_train`` and a ``validation`` bank: no near-duplicate group is on both
sides, and the backbone never took a gradient from either. The ``fine_tuning`` bank (the
slices the backbone learned) trains the shipped LSTM: it has 1432 ``notumor`` slices
against 35 in ``held_out_train``, and the classifier is right on 99.1% of them against
94.3% / 90.9% of the held-out ``notumor`` slices, close enough that the LSTM meets
realistic slices. (A first version of this bank had wrong probabilities on the held-out
slices, 51% and 67% ``notumor`` right, which made the fine-tuning slices look
memorised; recomputed, an LSTM trained on ``held_out_train`` gets specificity 0.23 on
the validation volumes and one trained on ``fine_tuning`` 0.965.) ``notumor`` is the scarce class (Kaggle's ``notumor`` slices are heavily
duplicated: 68 held-out ones remain), so volumes reuse those slices across volumes,
never within one.

Example:
    >>> bank = SliceBank(np.eye(4, dtype=np.float32), np.array([0, 0, 1, 1]), ["notumor", "glioma"])
    >>> [v.label for v in build_volumes(bank, 4, seed=0, recipe=VolumeRecipe(2, 2, 1, 2))]
    [1, 0, 1, 0]
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .data import BINARY_CLASS_NAMES, NO_TUMOR
from .exceptions import InvalidArgumentError, InvalidDatasetError
from .inference import finite, model_passes

#: Index of "tumour" in all the sequence model learns and answers: built volumes label a
#: tumour volume and a tumour slice 1 (``BuiltVolume``), so the tumour column is 1 in the
#: volume logits (labels in ``BINARY_CLASS_NAMES`` order) and in the per-slice logits.
TUMOUR_LABEL = BINARY_CLASS_NAMES.index("tumor")


@dataclass
class SliceBank:
    """Slices ready to be assembled into volumes.

    Attributes:
        embeddings: float32 (n, D): each slice's embedding by the frozen backbone.
        classes: int (n,): index into ``class_names`` of each slice's class.
        class_names: The slice classes; one is ``notumor``.
        slice_proba: float32 (n, k) or None: the 2-D classifier's probabilities of each
            slice (columns ``proba_classes``), for the slice-aggregation comparison.
        proba_classes: Column names of ``slice_proba``.
        paths: The slice image files, where known (for checks through the full volume path).
    """

    embeddings: np.ndarray
    classes: np.ndarray
    class_names: list[str]
    slice_proba: np.ndarray | None = None
    proba_classes: list[str] | None = None
    paths: list[str] | None = None

    @property
    def tumour(self) -> np.ndarray:
        """bool (n,): the slice shows a tumour (its class is not ``notumor``)."""
        if NO_TUMOR not in self.class_names:
            raise InvalidDatasetError(f"A slice bank needs a '{NO_TUMOR}' class; it has {self.class_names}.")
        return self.classes != self.class_names.index(NO_TUMOR)


@dataclass(frozen=True)
class VolumeRecipe:
    """How volumes are assembled: slice counts, tumour run lengths, share of tumour volumes.

    Attributes:
        min_slices, max_slices: Slices per volume (inclusive range).
        min_run, max_run: Consecutive tumour slices in a tumour volume (inclusive range).
        tumour_fraction: Share of tumour volumes (they alternate, so it is exact for 0.5).
    """

    min_slices: int = 12
    max_slices: int = 32
    min_run: int = 3
    max_run: int = 10
    tumour_fraction: float = 0.5

    def check(self) -> None:
        """Raises :class:`InvalidArgumentError` for ranges that cannot be drawn."""
        if not 1 <= self.min_slices <= self.max_slices or not 1 <= self.min_run <= self.max_run or self.max_run > self.min_slices:
            raise InvalidArgumentError(
                f"A volume recipe needs 1 <= min_slices <= max_slices and 1 <= min_run <= max_run <= min_slices; got {self}."
            )
        if not 0.0 <= self.tumour_fraction <= 1.0:
            raise InvalidArgumentError(f"tumour_fraction must lie in [0, 1]; got {self.tumour_fraction}.")


@dataclass
class BuiltVolume:
    """One assembled volume: ``indices`` (S,) into its bank, ``slice_labels`` (S,) 0/1, ``label`` 0/1."""

    indices: np.ndarray
    slice_labels: np.ndarray
    label: int


def build_volumes(bank: SliceBank, count: int, *, seed: int, recipe: VolumeRecipe = VolumeRecipe()) -> list[BuiltVolume]:
    """Assembles ``count`` volumes from a bank's slices (see the module docstring).

    Tumour and no-tumour volumes alternate (tumour first) at ``tumour_fraction`` 0.5; otherwise
    each volume is a tumour volume with that probability. Seeded: equal arguments give
    equal volumes.

    Raises:
        InvalidArgumentError: A bad recipe or count.
        InvalidDatasetError: Too few ``notumor`` slices for the longest volume, or no
            tumour slices when tumour volumes are asked for.
    """
    recipe.check()
    if count < 1:
        raise InvalidArgumentError(f"count must be a positive number of volumes; got {count}.")
    rng = np.random.default_rng(seed)
    tumour = bank.tumour
    healthy = np.flatnonzero(~tumour)
    if healthy.size < recipe.max_slices:
        raise InvalidDatasetError(f"A volume of {recipe.max_slices} slices needs as many notumor slices; the bank has {healthy.size}.")
    by_class = {c: np.flatnonzero(bank.classes == c) for c in np.unique(bank.classes[tumour])}
    by_class = {c: members for c, members in by_class.items() if members.size >= recipe.min_run}
    if not by_class and recipe.tumour_fraction > 0:
        raise InvalidDatasetError(f"Tumour volumes need a tumour class with at least {recipe.min_run} slices; the bank has none.")
    volumes = []
    for number in range(count):
        is_tumour = number % 2 == 0 if recipe.tumour_fraction == 0.5 else bool(rng.random() < recipe.tumour_fraction)
        length = int(rng.integers(recipe.min_slices, recipe.max_slices + 1))
        indices = rng.choice(healthy, size=length, replace=False)
        labels = np.zeros(length, dtype=np.int64)
        if is_tumour:
            kind = list(by_class)[int(rng.integers(len(by_class)))]
            run = int(rng.integers(recipe.min_run, min(recipe.max_run, by_class[kind].size) + 1))
            start = int(rng.integers(0, length - run + 1))
            indices[start : start + run] = rng.choice(by_class[kind], size=run, replace=False)
            labels[start : start + run] = 1
        volumes.append(BuiltVolume(indices, labels, int(is_tumour)))
    return volumes


class VolumeDataset(torch.utils.data.Dataset):
    """Built volumes as ``slice_embeddings`` (S, D), ``labels`` and ``slice_labels`` (S,) items."""

    def __init__(self, bank: SliceBank, volumes: Sequence[BuiltVolume]):
        self.embeddings = torch.from_numpy(np.ascontiguousarray(bank.embeddings, dtype=np.float32))
        self.volumes = list(volumes)

    def __len__(self) -> int:
        return len(self.volumes)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        volume = self.volumes[index]
        return {
            "slice_embeddings": self.embeddings[torch.from_numpy(volume.indices)],
            "labels": torch.tensor(volume.label),
            "slice_labels": torch.from_numpy(volume.slice_labels),
        }


def collate_volumes(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Pads volumes of different lengths at the end; ``attention_mask`` (B, S) marks the real slices."""
    longest = max(item["slice_embeddings"].shape[0] for item in items)
    width = items[0]["slice_embeddings"].shape[1]
    embeddings = torch.zeros(len(items), longest, width)
    mask = torch.zeros(len(items), longest, dtype=torch.bool)
    slice_labels = torch.full((len(items), longest), -100, dtype=torch.long)
    for row, item in enumerate(items):
        length = item["slice_embeddings"].shape[0]
        embeddings[row, :length] = item["slice_embeddings"]
        mask[row, :length] = True
        slice_labels[row, :length] = item["slice_labels"]
    return {
        "slice_embeddings": embeddings,
        "attention_mask": mask,
        "labels": torch.stack([item["labels"] for item in items]),
        "slice_labels": slice_labels,
    }


# -- banks of real slices ----------------------------------------------------------------
def embed_pixels(model, preprocessor, pixels: np.ndarray, *, head: torch.nn.Module | None = None, batch_size: int = 64):
    """Embeddings of prepared slices, and optionally the 2-D classifier's probabilities.

    Args:
        model: A :class:`~tumor_classifier.sequence_model.SliceSequenceForVolumeClassification`.
        preprocessor: The :class:`~tumor_classifier.preprocessing.MRIPreprocessor` of its backbone.
        pixels: uint8 (n, size, size), prepared by that preprocessor.
        head: The 2-D classifier's head layer; with it the probabilities come from the
            same forward pass (the backbone is that classifier's, head removed).
        batch_size: Slices per forward pass.

    Returns:
        ``(embeddings float32 (n, D), proba float32 (n, k) or None)``.

    Raises:
        NonFiniteOutputError: The backbone or the head answered NaN or infinity for a
            slice (as every other pass of the package does, through ``inference.finite``).
    """
    embeddings, proba = [], []
    # The model's lock, as for the classifier's passes; a head belonging to another model
    # is that model's caller's to lock.
    with model_passes(model), torch.inference_mode():
        for start in range(0, len(pixels), batch_size):
            values = preprocessor.normalize(torch.from_numpy(np.ascontiguousarray(pixels[start : start + batch_size])))
            chunk = finite(model.embed(values.to(model.device)), start, "embeddings")
            embeddings.append(chunk.cpu().numpy())
            if head is not None:
                proba.append(torch.softmax(finite(head(chunk).float(), start), dim=-1).cpu().numpy())
    return np.concatenate(embeddings).astype(np.float32), (np.concatenate(proba).astype(np.float32) if head is not None else None)


def _bank_key(root: Path, model, preprocessor) -> str:
    digest = hashlib.sha256(json.dumps(asdict(preprocessor), sort_keys=True).encode())
    digest.update(json.dumps(model.config.backbone_config, sort_keys=True, default=str).encode())
    digest.update(str(model.config.backbone_source).encode())
    for path in sorted(root.rglob("*.jpg")):
        digest.update(f"{path.relative_to(root)}:{path.stat().st_size}".encode())
    return digest.hexdigest()[:20]


def kaggle_slice_banks(
    root: str | os.PathLike, model, preprocessor, *, head: torch.nn.Module | None = None, proba_classes: Sequence[str] | None = None,
    cache_dir: str | os.PathLike | None = None, validation_fraction: float = 0.5, seed: int = 0,
) -> tuple[dict[str, SliceBank], dict[str, Any]]:
    """The training and validation banks from a Kaggle-layout folder (see the module docstring).

    The split must be the one the backbone was fine-tuned with (``load_mri_dataset``'s
    defaults, seed 42, as the shipped model's ``train_config.json`` records).

    Args:
        root: Folder with ``Training/<class>/`` and ``Testing/<class>/``.
        model: The sequence model whose (frozen) backbone embeds the slices.
        preprocessor: Its backbone's preprocessor.
        head, proba_classes: The 2-D classifier's head and class names, to store its
            slice probabilities for the comparison.
        cache_dir: Where the banks are cached (keyed by files, backbone and
            preprocessing); ``None`` disables the cache.
        validation_fraction, seed: Of the group split of the held-out slices.

    Returns:
        ``(banks, info)``: banks ``fine_tuning``, ``held_out_train`` and ``validation``;
        ``info`` counts the slices of each by class.
    """
    from .data import image_sources, load_mri_dataset
    from .duplicates import fingerprint, group_split, near_duplicate_groups
    from .pixels import prepare_pixels

    root = Path(root)
    data = load_mri_dataset(root, validation_size=0.1, test_size=0.15)  # Training -> train + validation, Testing -> test
    splits = {"training": [data["train"], data["validation"]], "testing": [data["test"]]}
    cache = Path(cache_dir) / f"sequence-bank-{_bank_key(root, model, preprocessor)}.npz" if cache_dir else None
    if cache is not None and cache.exists():
        with np.load(cache, allow_pickle=False) as saved:
            arrays = {k: saved[k] for k in saved.files}
    else:
        arrays = {"class_names": np.asarray(data["train"].features["label"].names)}
        for name, split in splits.items():
            pixels = np.concatenate([prepare_pixels(s, preprocessor, cache_dir)[0] for s in split])
            arrays[f"{name}_classes"] = np.concatenate([np.asarray(s["label"]) for s in split])
            arrays[f"{name}_embeddings"], proba = embed_pixels(model, preprocessor, pixels, head=head)
            if proba is not None:
                arrays[f"{name}_proba"] = proba
            arrays[f"{name}_phash"] = np.asarray([fingerprint(x).phash for s in split for x in image_sources(s)], dtype=np.uint64)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            temporary = cache.with_suffix(f".{os.getpid()}.tmp.npz")
            np.savez(temporary, **arrays)
            os.replace(temporary, cache)
    paths = {name: [p for s in split for p in s["path"]] for name, split in splits.items()}
    # "training" holds train then validation: the backbone was fine-tuned on the first part only.
    fine_tuned = len(data["train"])
    every = {key: np.concatenate([arrays[f"training_{key}"], arrays[f"testing_{key}"]]) for key in ("embeddings", "classes", "phash")}
    proba = np.concatenate([arrays["training_proba"], arrays["testing_proba"]]) if "training_proba" in arrays else None
    all_paths = paths["training"] + paths["testing"]
    groups = near_duplicate_groups(every["phash"])
    held_out = np.arange(fine_tuned, len(all_paths))
    clean = held_out[~np.isin(groups[held_out], groups[:fine_tuned])]
    train_part, validation_part = group_split(groups[clean], validation_fraction, seed)
    names = [str(c) for c in arrays["class_names"]]

    def bank(keep: np.ndarray) -> SliceBank:
        return SliceBank(
            every["embeddings"][keep], every["classes"][keep], names,
            None if proba is None else proba[keep], None if proba is None else list(proba_classes or names),
            [all_paths[i] for i in keep],
        )

    parts = {"fine_tuning": np.arange(fine_tuned), "held_out_train": clean[train_part], "validation": clean[validation_part]}
    info = {
        "held_out_slices": int(held_out.size), "held_out_without_near_duplicates": int(clean.size),
        **{f"{name}_slices": dict(zip(names, np.bincount(every["classes"][keep], minlength=len(names)).tolist())) for name, keep in parts.items()},
    }
    return {name: bank(keep) for name, keep in parts.items()}, info
