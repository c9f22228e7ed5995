"""Prepared pixels: the on-disk cache, the pixel pack, the data set and its collate function.

Every image is decoded, turned grayscale, cropped, padded and resized once
(:func:`prepare_pixels`, cached on disk as uint8); batches travel as uint8 and become
normalised (and, in training, augmented) ``pixel_values`` on the model's device
(:func:`pixels_to_values`). A pixel pack (:func:`write_pixel_pack`) holds the prepared
splits in one compressed file, so a machine without the images or ``datasets`` (a lent
GPU) trains the same model from it. Nothing here imports ``transformers``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from .augmentation import BatchAugmenter
from .data import image_sources
from .exceptions import InvalidArgumentError, TumorClassifierError
from .preprocessing import PREPROCESSING_VERSION, MRIPreprocessor

if TYPE_CHECKING:
    from datasets import Dataset

DEFAULT_CACHE = Path(os.environ.get("TUMOR_CLASSIFIER_CACHE", Path.home() / ".cache" / "tumor_classifier"))


def _split_key(split: "Dataset", preprocessor: MRIPreprocessor) -> str:
    # The code version is part of the key: a change to the preprocessing must not reuse
    # pixels prepared by the old code.
    digest = hashlib.sha256(f"{PREPROCESSING_VERSION}:{json.dumps(asdict(preprocessor), sort_keys=True)}".encode())
    if "path" in split.column_names:
        for path in split["path"]:
            stat = os.stat(path)
            digest.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    else:
        digest.update(split._fingerprint.encode())
    digest.update(str(len(split)).encode())
    return digest.hexdigest()[:20]


def prepare_pixels(
    split: "Dataset", preprocessor: MRIPreprocessor, cache_dir: str | Path | None = DEFAULT_CACHE
) -> tuple[np.ndarray, np.ndarray]:
    """Decodes and prepares every image of a split once, caching the result.

    Args:
        split: A split of :func:`load_mri_dataset` (``image`` and ``label`` columns).
        preprocessor: The settings (size, crop, skull stripping) to prepare with.
        cache_dir: Folder for ``.npz`` caches keyed by the files and settings; ``None``
            disables caching.

    Returns:
        ``(pixels, labels)``: uint8 (n, size, size) and int64 (n,).
    """
    labels = np.asarray(split["label"], dtype=np.int64)
    path = Path(cache_dir) / f"pixels-{_split_key(split, preprocessor)}.npz" if cache_dir else None
    if path is not None and path.exists():
        with np.load(path) as cached:
            return cached["pixels"], labels
    sources = image_sources(split)
    pixels = np.empty((len(sources), preprocessor.size, preprocessor.size), dtype=np.uint8)
    for index, source in enumerate(sources):
        pixels[index] = preprocessor.prepare_array(source)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(temporary, pixels=pixels)
        os.replace(temporary, path)  # atomic, so concurrent processes never read half a file
    return pixels, labels


PIXEL_PACK_FORMAT = "tumor-classifier-pixel-pack/1"


@dataclass
class PixelPack:
    """Prepared splits in one file: what a machine needs to train without the images.

    Attributes:
        arrays: Split name -> ``(pixels, labels)``, uint8 (n, size, size) and int64 (n,).
        preprocessor: The settings the pixels were prepared with.
        class_names: Label index -> class name.
        test_clean: Indices of test images with no near duplicate in train/validation
            (the duplicate check needs the original files, so it runs where they are).
        duplicates: The duplicate check's summary.
        source: The data folder the pack was made from.
        jpeg_quality: ``None`` for lossless PNG images, else the JPEG quality.
    """

    arrays: dict[str, tuple[np.ndarray, np.ndarray]]
    preprocessor: MRIPreprocessor
    class_names: list[str]
    test_clean: np.ndarray | None = None
    duplicates: dict[str, int] | None = None
    source: str = ""
    jpeg_quality: int | None = None


def write_pixel_pack(path: str | Path, pack: PixelPack, jpeg_quality: int | None = None) -> Path:
    """Writes a pack as one ``.npz``, each image as PNG (lossless) or, with
    ``jpeg_quality``, as JPEG: 128 px head crops take about 9 KB as PNG and 6.7 KB as
    JPEG at quality 95 (mean error under one grey level), which is what lets the whole
    data set travel to a lent GPU machine beside the code (64 MiB there)."""
    if jpeg_quality is not None and not 1 <= jpeg_quality <= 100:
        raise InvalidArgumentError(f"jpeg_quality must be between 1 and 100, got {jpeg_quality}.")
    fields: dict[str, np.ndarray] = {
        "format": np.array(PIXEL_PACK_FORMAT),
        "preprocessor": np.array(json.dumps(asdict(pack.preprocessor))),
        "class_names": np.array(list(pack.class_names)),
        "meta": np.array(json.dumps({"duplicates": pack.duplicates, "source": pack.source, "jpeg_quality": jpeg_quality})),
    }
    for name, (pixels, labels) in pack.arrays.items():
        encoded = []
        for image in pixels:
            buffer = io.BytesIO()
            if jpeg_quality is None:
                Image.fromarray(image).save(buffer, format="PNG", optimize=True)
            else:
                Image.fromarray(image).save(buffer, format="JPEG", quality=jpeg_quality, subsampling=0)
            encoded.append(buffer.getvalue())
        fields[f"{name}_images"] = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        fields[f"{name}_offsets"] = np.cumsum([0] + [len(data) for data in encoded]).astype(np.int64)
        fields[f"{name}_labels"] = np.asarray(labels, dtype=np.int64)
    if pack.test_clean is not None:
        fields["test_clean"] = np.asarray(pack.test_clean, dtype=np.int64)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:  # a file object: np.savez would append ".npz" to a str path
        np.savez(handle, **fields)
    return path


def read_pixel_pack(path: str | Path) -> PixelPack:
    """Reads a pack written by :func:`write_pixel_pack`.

    Raises:
        TumorClassifierError: The file is missing or not a pixel pack.
    """
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise TumorClassifierError(f"Cannot read the pixel pack {path}: {error}") from error
    with data:
        if "format" not in data.files or str(data["format"]) != PIXEL_PACK_FORMAT:
            raise TumorClassifierError(f"{path} is not a pixel pack written by --write_pixel_pack ({PIXEL_PACK_FORMAT}).")
        arrays = {}
        for name in (key[: -len("_labels")] for key in data.files if key.endswith("_labels")):
            blob, offsets = data[f"{name}_images"].tobytes(), data[f"{name}_offsets"]
            pixels = [np.asarray(Image.open(io.BytesIO(blob[a:b]))) for a, b in zip(offsets[:-1], offsets[1:])]
            arrays[name] = (np.stack(pixels) if pixels else np.empty((0, 0, 0), np.uint8), data[f"{name}_labels"])
        meta = json.loads(str(data["meta"]))
        return PixelPack(
            arrays=arrays,
            preprocessor=MRIPreprocessor(**json.loads(str(data["preprocessor"]))),
            class_names=[str(name) for name in data["class_names"]],
            test_clean=data["test_clean"] if "test_clean" in data.files else None,
            duplicates=meta.get("duplicates"),
            source=meta.get("source", ""),
            jpeg_quality=meta.get("jpeg_quality"),
        )


class PixelDataset(torch.utils.data.Dataset):
    """Prepared uint8 images and their labels, as the Trainer's data set."""

    def __init__(self, pixels: np.ndarray, labels: np.ndarray | None = None):
        self.pixels = torch.from_numpy(np.ascontiguousarray(pixels))
        self.labels = None if labels is None else torch.as_tensor(labels, dtype=torch.long)

    def __len__(self) -> int:
        return self.pixels.shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = {"pixels": self.pixels[index]}
        if self.labels is not None:
            item["labels"] = self.labels[index]
        return item


def collate_pixels(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stacks prepared uint8 images (and labels); :class:`MRITrainer` turns them into
    ``pixel_values`` on the model's device."""
    out = {"pixels": torch.stack([item["pixels"] for item in items])}
    if "labels" in items[0]:
        out["labels"] = torch.stack([item["labels"] for item in items])
    return out


def pixels_to_values(pixels: torch.Tensor, preprocessor: MRIPreprocessor, augmenter: BatchAugmenter | None = None) -> torch.Tensor:
    """uint8 (n, size, size) -> (augmented) normalised ``pixel_values``, on the pixels' device."""
    batch = pixels.float().div_(255.0).unsqueeze(1)
    if augmenter is not None:
        batch = augmenter(batch)
    return preprocessor.normalize(batch)
