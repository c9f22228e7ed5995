"""Training through the Hugging Face ``Trainer``: caches, batches, losses, the run itself.

``train_hf.py`` and :meth:`TumorClassifier.fit` both go through :func:`build_trainer`,
so there is one training loop. The input pipeline is built for two CPU cores and carries to a GPU: every
image is decoded, turned grayscale, cropped, padded and resized once
(:func:`prepare_pixels`, cached on disk as uint8), batches travel as uint8, and
augmentation and normalisation run on whole batches as tensors on the model's device
(:class:`MRITrainer`). A pixel pack (:func:`write_pixel_pack`) holds the prepared
splits in one compressed file, so a machine without the images or ``datasets`` (a
lent GPU) trains the same model from it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import EarlyStoppingCallback, PreTrainedModel, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import EvalPrediction

from .augmentation import AugmentationConfig, BatchAugmenter
from .data import (
    ANY_TUMOR,
    BINARY_CLASS_NAMES,
    CLASS_NAMES,
    NO_TUMOR,
    find_duplicates,
    fingerprint,
    group_split,
    image_sources,
    load_mri_dataset,
    load_tumour_only_images,
    near_duplicate_groups,
)
from .label_audit import apply_label_audit_to_dataset, read_label_audit
from .exceptions import InvalidArgumentError, TumorClassifierError
from .metrics import calibration_summary, classification_metrics, fit_temperature, softmax
from .models import create_model
from .preprocessing import PREPROCESSING_VERSION, MRIPreprocessor

if TYPE_CHECKING:
    from datasets import Dataset

logger = logging.getLogger(__name__)
LOSSES = ("cross_entropy", "weighted_cross_entropy", "focal")
DEFAULT_CACHE = Path(os.environ.get("TUMOR_CLASSIFIER_CACHE", Path.home() / ".cache" / "tumor_classifier"))


# -- pixels ------------------------------------------------------------------------
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


# -- losses and metrics ------------------------------------------------------------
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


class MRITrainer(Trainer):
    """A ``Trainer`` whose batches arrive as uint8 pixels and become ``pixel_values``
    on the model's device: augmented while the model trains, plain in evaluation and
    prediction. On a GPU the augmentation then costs the host nothing."""

    def __init__(self, *args: Any, preprocessor: MRIPreprocessor, augmenter: BatchAugmenter | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.preprocessor = preprocessor
        self.augmenter = augmenter

    def _prepare_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        inputs = super()._prepare_inputs(inputs)
        if "pixels" in inputs:
            inputs = dict(inputs)
            augmenter = self.augmenter if self.model.training else None
            inputs["pixel_values"] = pixels_to_values(inputs.pop("pixels"), self.preprocessor, augmenter)
        return inputs


# -- arguments ---------------------------------------------------------------------
@dataclass
class DataArguments:
    """Where the images come from and how they are prepared and augmented."""

    data_dir: str = field(
        default="../shared/data/brain-tumor-mri",
        metadata={"help": "Folder in the Kaggle layout (Training/<class>/, Testing/<class>/), an image folder, or a Hub data set id."},
    )
    binary: bool = field(default=False, metadata={"help": "Train tumor / no tumor instead of the four classes."})
    validation_size: float = field(default=0.1, metadata={"help": "Fraction of train carved out (stratified) as validation."})
    split_seed: int = field(default=42, metadata={"help": "Seed of the train / validation carving."})
    crop_to_head: bool = field(default=True, metadata={"help": "Crop each image to the head's bounding box."})
    skull_strip: bool = field(default=False, metadata={"help": "Apply the skull-stripping heuristic (see preprocessing.strip_skull)."})
    pixel_cache_dir: str | None = field(default=str(DEFAULT_CACHE), metadata={"help": "Cache of prepared images; empty to disable."})
    pixel_pack: str | None = field(
        default=None,
        metadata={"help": "Train from a pack written by --write_pixel_pack instead of data_dir (no images or `datasets` needed, e.g. on a lent GPU)."},
    )
    write_pixel_pack: str | None = field(
        default=None,
        metadata={"help": "Prepare train / validation / test and the duplicate check, write them to this .npz pack, and stop."},
    )
    pixel_pack_jpeg_quality: int | None = field(
        default=None, metadata={"help": "Store the pack's images as JPEG of this quality (smaller) instead of lossless PNG."}
    )
    label_audit: str | None = field(
        default=None,
        metadata={"help": "CSV of training files to exclude or relabel (configs/label_audit.csv; see tumor_classifier.label_audit)."},
    )
    tumour_only_dirs: list[str] = field(
        default_factory=list,
        metadata={"help": "Folders of images that all show a tumour of unknown type (e.g. br35h-tumor); trained with the partial-label loss."},
    )
    tumour_only_validation_size: float = field(
        default=0.2, metadata={"help": "Share of the tumour-only images held out for validation, split by near-duplicate group."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only this many training images (for quick runs)."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only this many validation and test images."})
    rotation: float = field(default=15.0, metadata={"help": "Augmentation: largest rotation in degrees."})
    zoom: float = field(default=0.15, metadata={"help": "Augmentation: largest relative zoom."})
    shift: float = field(default=0.1, metadata={"help": "Augmentation: largest shift, fraction of the side."})
    hflip: float = field(default=0.5, metadata={"help": "Augmentation: probability of a left-right flip."})
    vflip: float = field(default=0.0, metadata={"help": "Augmentation: probability of an up-down flip."})
    contrast: float = field(default=0.2, metadata={"help": "Augmentation: largest relative contrast change."})
    brightness: float = field(default=0.1, metadata={"help": "Augmentation: largest brightness offset (0-1 scale)."})
    gamma: float = field(default=0.3, metadata={"help": "Augmentation: largest log2 gamma change."})
    noise: float = field(default=0.03, metadata={"help": "Augmentation: largest Gaussian noise sigma (0-1 scale)."})
    blur: float = field(default=0.2, metadata={"help": "Augmentation: probability of a light blur."})
    invert: float = field(default=0.0, metadata={"help": "Augmentation: probability of a contrast inversion inside the head."})
    bezier: float = field(default=0.0, metadata={"help": "Augmentation: probability of a random Bezier intensity curve."})
    bezier_nonmonotone: float = field(default=0.0, metadata={"help": "Augmentation: share of the Bezier curves that are non-monotone."})
    gin: float = field(default=0.0, metadata={"help": "Augmentation: probability of a random shallow conv net (GIN) blended in."})

    def augmentation(self) -> AugmentationConfig:
        return AugmentationConfig(**{k: getattr(self, k) for k in AugmentationConfig.__dataclass_fields__})


@dataclass
class ModelArguments:
    """Which network, how big, and how it learns."""

    backbone: str = field(default="convnext", metadata={"help": "Backbone from the registry: convnext, vit, resnet."})
    from_scratch: bool = field(default=False, metadata={"help": "Random init of the CPU-sized preset instead of the Hub checkpoint."})
    checkpoint: str | None = field(default=None, metadata={"help": "Hub id or folder to fine-tune instead of the registry default."})
    image_size: int = field(default=224, metadata={"help": "Input side in pixels."})
    dropout: float = field(default=0.1, metadata={"help": "Drop path (ConvNeXt) or hidden dropout (ViT)."})
    loss: str = field(default="cross_entropy", metadata={"help": f"One of {', '.join(LOSSES)}."})
    focal_gamma: float = field(default=2.0, metadata={"help": "Focal loss gamma."})
    label_smoothing: float = field(default=0.1, metadata={"help": "Label smoothing."})
    calibrate: bool = field(default=True, metadata={"help": "Fit a temperature on validation and fold it into the head."})
    early_stopping_patience: int | None = field(default=None, metadata={"help": "Stop after this many evaluations without improvement."})
    hp_search_trials: int = field(default=0, metadata={"help": "Run an Optuna search of this many trials first (learning rate, batch size, dropout, weight decay)."})
    config_overrides: str | None = field(default=None, metadata={"help": "JSON of extra config attributes for a from-scratch model."})


@dataclass
class MRITrainingArguments(TrainingArguments):
    """``TrainingArguments`` with defaults that suit MRI training on CPUs."""

    output_dir: str = field(default="runs/model", metadata={"help": "Model folder (checkpoints go below it)."})
    learning_rate: float = field(default=2e-3, metadata={"help": "Peak AdamW learning rate."})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay."})
    num_train_epochs: float = field(default=30.0, metadata={"help": "Epochs."})
    per_device_train_batch_size: int = field(default=64, metadata={"help": "Training batch size per process."})
    per_device_eval_batch_size: int = field(default=128, metadata={"help": "Evaluation batch size per process."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Learning-rate schedule."})
    warmup_steps: float = field(default=0.05, metadata={"help": "Warm-up steps, or a fraction of all steps."})
    eval_strategy: str = field(default="epoch", metadata={"help": "When to evaluate on validation."})
    save_strategy: str = field(default="epoch", metadata={"help": "When to checkpoint."})
    logging_strategy: str = field(default="epoch", metadata={"help": "When to log the training loss."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Checkpoints kept."})
    load_best_model_at_end: bool = field(default=True, metadata={"help": "Keep the best validation checkpoint."})
    metric_for_best_model: str | None = field(default="accuracy", metadata={"help": "Validation metric that picks the best model."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Must stay False: batches carry prepared pixels."})
    dataloader_pin_memory: bool = field(default=False, metadata={"help": "Pin memory (useless on CPU)."})
    max_train_minutes: float | None = field(
        default=None,
        metadata={"help": "Stop training after this many minutes (wall clock) and finish the run as usual: "
                  "calibrate, evaluate, save. For a lent machine with a fixed budget."},
    )


class TimeLimitCallback(TrainerCallback):
    """Ends training once ``minutes`` of wall clock have passed since it began; the run
    then calibrates, evaluates and saves as after its last epoch."""

    def __init__(self, minutes: float):
        if not minutes > 0:
            raise InvalidArgumentError(f"max_train_minutes must be positive; got {minutes!r}.")
        self.seconds = 60.0 * minutes
        self.started: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        if self.started is not None and time.monotonic() - self.started > self.seconds:
            logger.warning("max_train_minutes reached after %d steps (epoch %.2f): training stops here.", state.global_step, state.epoch or 0)
            control.should_training_stop = True
        return control


# -- the run -----------------------------------------------------------------------
def build_trainer(
    model: PreTrainedModel | None,
    preprocessor: MRIPreprocessor,
    train_set: PixelDataset,
    eval_set: PixelDataset | None,
    args: TrainingArguments,
    *,
    augmentation: AugmentationConfig | None = None,
    loss_function: Callable | None = None,
    early_stopping_patience: int | None = None,
    model_init: Callable | None = None,
    class_names: Sequence[str] | None = None,
) -> MRITrainer:
    """The one Trainer used by ``train_hf.py`` and ``TumorClassifier.fit``."""
    callbacks = []
    if early_stopping_patience and eval_set is not None:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=early_stopping_patience))
    if getattr(args, "max_train_minutes", None):
        callbacks.append(TimeLimitCallback(args.max_train_minutes))
    augmenter = BatchAugmenter(augmentation or AugmentationConfig(), seed=args.seed + args.process_index)
    id2label = getattr(getattr(model, "config", None), "id2label", None)
    names = list(class_names or (id2label.values() if id2label else CLASS_NAMES))
    return MRITrainer(
        model=model,
        model_init=model_init,
        args=args,
        train_dataset=train_set,
        eval_dataset=eval_set,
        data_collator=collate_pixels,
        preprocessor=preprocessor,
        augmenter=augmenter,
        compute_loss_func=loss_function,
        compute_metrics=lambda prediction: compute_eval_metrics(prediction, names),
        callbacks=callbacks,
    )


def fold_temperature(model: PreTrainedModel, temperature: float) -> None:
    """Divides the last linear layer of the head by ``temperature``, in place.

    Calibrated probabilities then come out of the plain model, so ``transformers``'
    pipeline gives the same calibrated numbers as this package.
    """
    # The Hugging Face heads are ``model.classifier``; EfficientNet-Lite keeps its head inside
    # the wrapped network (``_fc``), the last linear layer of the model.
    head = getattr(model, "classifier", model)
    linear = head if isinstance(head, torch.nn.Linear) else [m for m in head.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        linear.weight.div_(temperature)
        if linear.bias is not None:
            linear.bias.div_(temperature)
    model.config.calibration_temperature = float(temperature) * float(getattr(model.config, "calibration_temperature", 1.0))


def predict_logits(trainer: Trainer, dataset: PixelDataset) -> np.ndarray:
    """Logits (n, k) of a data set, batched and gathered across processes."""
    return np.asarray(trainer.predict(dataset).predictions, dtype=np.float32)


def _hp_space(trial) -> dict[str, Any]:
    return {
        "learning_rate": trial.suggest_float("learning_rate", 3e-4, 5e-3, log=True),
        "per_device_train_batch_size": trial.suggest_categorical("per_device_train_batch_size", [32, 64, 128]),
        "weight_decay": trial.suggest_float("weight_decay", 0.0, 0.1),
        "dropout": trial.suggest_float("dropout", 0.0, 0.3),
    }


@dataclass
class TrainingResult:
    """What :func:`run_training` produced."""

    output_dir: Path
    metrics: dict[str, Any]
    best_hyperparameters: dict[str, Any] | None = None


def _load_splits(data_args: DataArguments, preprocessor: MRIPreprocessor, training_args: TrainingArguments | None = None):
    """The data set's splits (``datasets``) and their prepared pixels."""
    data = load_mri_dataset(
        data_args.data_dir, binary=data_args.binary, validation_size=data_args.validation_size, seed=data_args.split_seed
    )
    if data_args.label_audit:
        entries = read_label_audit(data_args.label_audit)
        for name in ("train", "validation"):  # both carved from the training folder; never test
            data[name] = apply_label_audit_to_dataset(data[name], entries, data_args.data_dir)
    if data_args.max_train_samples:
        data["train"] = data["train"].shuffle(seed=data_args.split_seed).select(range(min(data_args.max_train_samples, len(data["train"]))))
    if data_args.max_eval_samples:
        for split in ("validation", "test"):
            count = min(data_args.max_eval_samples, len(data[split]))
            data[split] = data[split].shuffle(seed=data_args.split_seed).select(range(count))
    cache = data_args.pixel_cache_dir or None
    first = training_args.main_process_first(desc="preparing pixels") if training_args else contextlib.nullcontext()
    with first:
        arrays = {name: prepare_pixels(split, preprocessor, cache) for name, split in data.items()}
        if data_args.tumour_only_dirs:
            arrays.update(_tumour_only_arrays(data_args, preprocessor, cache))
    return data, arrays


def _tumour_only_arrays(data_args: DataArguments, preprocessor: MRIPreprocessor, cache: str | None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The tumour-only images (label ANY_TUMOR), split train / validation by near-duplicate
    group: a slice re-saved at several sizes lies wholly on one side, so validation
    sensitivity is not inflated by copies of training images."""
    from datasets import Dataset
    from datasets import Image as ImageFeature

    paths = load_tumour_only_images(data_args.tumour_only_dirs)
    groups = near_duplicate_groups([fingerprint(path).phash for path in paths])
    parts = group_split(groups, data_args.tumour_only_validation_size, data_args.split_seed)
    arrays = {}
    for name, indices in zip(("train_tumour_only", "validation_tumour_only"), parts):
        chosen = [paths[i] for i in indices]
        split = Dataset.from_dict({"image": chosen, "path": chosen, "label": [ANY_TUMOR] * len(chosen)})
        arrays[name] = prepare_pixels(split.cast_column("image", ImageFeature()), preprocessor, cache)
    logger.info("tumour-only images: %d in %d near-duplicate groups; %d train, %d validation",
                len(paths), groups.max() + 1, len(parts[0]), len(parts[1]))
    return arrays


def _joined(arrays: dict[str, tuple[np.ndarray, np.ndarray]], *names: str) -> "PixelDataset":
    """One data set of the named splits that exist (e.g. Kaggle train + tumour-only train)."""
    present = [arrays[name] for name in names if name in arrays]
    return PixelDataset(np.concatenate([p for p, _ in present]), np.concatenate([y for _, y in present]))


def _load_pack(data_args: DataArguments, preprocessor: MRIPreprocessor, class_names: Sequence[str]) -> PixelPack:
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


def _reliability(val_logits: np.ndarray, val_labels: np.ndarray, temperature: float) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Validation probabilities before and after calibration, for the reliability diagram."""
    return {"before": (softmax(val_logits), val_labels), "after": (softmax(val_logits, temperature), val_labels)}


def _duplicate_check(data) -> Any:
    references = image_sources(data["train"]) + image_sources(data["validation"])
    return find_duplicates(references, image_sources(data["test"]))


def run_training(data_args: DataArguments, model_args: ModelArguments, training_args: TrainingArguments) -> TrainingResult:
    """Loads the data, trains, calibrates, evaluates and writes the model folder.

    The folder gets ``model.safetensors``, ``config.json`` (with ``id2label``),
    ``preprocessor_config.json``, ``metrics.json``, the plots and a model card
    ``README.md``; checkpoints go to ``checkpoint-*`` below it.
    """
    from .reports import write_model_card

    class_names = BINARY_CLASS_NAMES if data_args.binary else CLASS_NAMES
    # The finished folder is uploaded once at the end; the Trainer would otherwise push
    # every checkpoint and replace our model card with its own.
    push_to_hub, training_args.push_to_hub = training_args.push_to_hub, False
    if push_to_hub and training_args.process_index == 0:
        from .hub import check_hub_reachable

        check_hub_reachable()  # before hours of training, not after
    preprocessor = MRIPreprocessor(
        size=model_args.image_size, crop_to_head=data_args.crop_to_head, skull_strip=data_args.skull_strip
    )
    if data_args.pixel_pack and data_args.write_pixel_pack:
        raise InvalidArgumentError("--write_pixel_pack makes a pack from data_dir; it cannot be combined with --pixel_pack.")
    if data_args.pixel_pack:
        data, pack = None, _load_pack(data_args, preprocessor, class_names)
        arrays = pack.arrays
    else:
        data, arrays = _load_splits(data_args, preprocessor, training_args)
    if data_args.write_pixel_pack:
        path = Path(data_args.write_pixel_pack)
        if training_args.process_index == 0:
            duplicates = _duplicate_check(data)
            pack = PixelPack(arrays, preprocessor, list(class_names), duplicates.clean_queries, duplicates.summary(), str(data_args.data_dir))
            write_pixel_pack(path, pack, jpeg_quality=data_args.pixel_pack_jpeg_quality)
        return TrainingResult(path, {"pixel_pack": {name: len(labels) for name, (_, labels) in arrays.items()}})
    sets = {name: PixelDataset(*arrays[name]) for name in arrays}

    overrides = json.loads(model_args.config_overrides) if model_args.config_overrides else None

    def make_model(trial=None):
        dropout = trial.params["dropout"] if trial is not None and "dropout" in trial.params else model_args.dropout
        return create_model(
            model_args.backbone,
            class_names=class_names,
            from_scratch=model_args.from_scratch,
            checkpoint=model_args.checkpoint,
            image_size=model_args.image_size,
            dropout=dropout,
            config_overrides=overrides,
        )

    weights = class_weights(arrays["train"][1], len(class_names))
    loss = make_loss_function(model_args.loss, weights=weights, label_smoothing=model_args.label_smoothing,
                              focal_gamma=model_args.focal_gamma, tumor_columns=tumor_columns_of(class_names))
    common = dict(
        augmentation=data_args.augmentation(),
        loss_function=loss,
        early_stopping_patience=model_args.early_stopping_patience,
        class_names=class_names,
    )
    # The Trainer trains on Kaggle train plus the tumour-only train images, and evaluates
    # on both validation parts (accuracy on the first, sensitivity on the second).
    train_set = _joined(arrays, "train", "train_tumour_only")
    eval_set = _joined(arrays, "validation", "validation_tumour_only")
    best = None
    if model_args.hp_search_trials > 0:
        searcher = build_trainer(None, preprocessor, train_set, eval_set, training_args, model_init=make_model, **common)
        run = searcher.hyperparameter_search(
            hp_space=_hp_space,
            backend="optuna",
            n_trials=model_args.hp_search_trials,
            direction="maximize",
            compute_objective=lambda metrics: metrics["eval_accuracy"],
        )
        best = dict(run.hyperparameters)
        logger.info("best hyperparameters: %s (validation accuracy %.4f)", best, run.objective)
        for key, value in best.items():
            target = model_args if key == "dropout" else training_args
            setattr(target, key, value)

    trainer = build_trainer(make_model(), preprocessor, train_set, eval_set, training_args, **common)
    train_output = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    model = trainer.model

    val_logits = predict_logits(trainer, sets["validation"])
    val_labels = arrays["validation"][1]
    temperature = fit_temperature(val_logits, val_labels) if model_args.calibrate else 1.0
    calibration = calibration_summary(val_logits, val_labels, temperature)
    if model_args.calibrate:
        fold_temperature(model, temperature)
    metrics: dict[str, Any] = {
        "validation": classification_metrics(val_labels, softmax(val_logits, temperature), class_names),
        "calibration": calibration,
    }
    if "validation_tumour_only" in sets:
        predicted = predict_logits(trainer, sets["validation_tumour_only"]).argmax(axis=1)
        metrics["validation_tumour_only"] = {
            "images": int(len(predicted)),
            "sensitivity": float(np.mean(predicted != list(class_names).index(NO_TUMOR))),
            "train_images": int(len(sets["train_tumour_only"])) if "train_tumour_only" in sets else 0,
            "sources": list(data_args.tumour_only_dirs),
        }
    if "test" in sets:
        test_proba = softmax(predict_logits(trainer, sets["test"]))
        metrics["test"] = classification_metrics(arrays["test"][1], test_proba, class_names)
    output_dir = Path(training_args.output_dir)
    if trainer.is_world_process_zero():
        trainer.save_model(str(output_dir))  # first, so nothing below can lose the model
        preprocessor.save_pretrained(output_dir)
        if "test" in arrays:
            if data is None:
                clean, summary = pack.test_clean, pack.duplicates
            else:
                duplicates = _duplicate_check(data)
                clean, summary = duplicates.clean_queries, duplicates.summary()
            if clean is not None:
                metrics["test_without_near_duplicates"] = classification_metrics(arrays["test"][1][clean], test_proba[clean], class_names)
                metrics["duplicates"] = summary
        metrics["training"] = {
            "backbone": model_args.backbone,
            "from_scratch": model_args.from_scratch,
            "image_size": model_args.image_size,
            "epochs_run": float(trainer.state.epoch or 0),
            "global_steps": int(trainer.state.global_step),
            "train_runtime_s": float(train_output.metrics.get("train_runtime", float("nan"))),
            "device": str(training_args.device),
            "best_checkpoint": trainer.state.best_model_checkpoint,
            "train_images": len(train_set),
            "world_size": int(training_args.world_size),
            "hyperparameter_search": best,
            "data": str(data_args.pixel_pack or data_args.data_dir),
        }
        (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        (output_dir / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=1) + "\n")
        (output_dir / "train_config.json").write_text(
            json.dumps({"data": asdict(data_args), "model": asdict(model_args), "training": training_args.to_dict()}, indent=2, default=str) + "\n"
        )
        write_model_card(output_dir, metrics, trainer.state.log_history, class_names,
                         reliability=_reliability(val_logits, val_labels, temperature))
        for leftover in ("training_args.bin",):
            (output_dir / leftover).unlink(missing_ok=True)
    if push_to_hub and trainer.is_world_process_zero():
        from .hub import push_folder_to_hub

        push_folder_to_hub(output_dir, training_args.hub_model_id or output_dir.name, token=training_args.hub_token,
                           private=training_args.hub_private_repo, commit_message="Train with train_hf.py")
    return TrainingResult(output_dir, metrics, best)


# -- ensembles ---------------------------------------------------------------------
def _batched_logits(model: torch.nn.Module, pixels: np.ndarray, preprocessor: MRIPreprocessor, batch_size: int = 128) -> np.ndarray:
    with torch.inference_mode():
        chunks = [
            model(pixel_values=pixels_to_values(torch.from_numpy(pixels[start : start + batch_size]), preprocessor)).logits.float()
            for start in range(0, len(pixels), batch_size)
        ]
    return torch.cat(chunks).numpy()


def make_ensemble(
    member_dirs: Sequence[str | Path],
    output_dir: str | Path,
    *,
    data_dir: str | None = None,
    pixel_cache_dir: str | None = str(DEFAULT_CACHE),
) -> TrainingResult:
    """Combines trained model folders into one calibrated ensemble folder with its report.

    The members' validation split is carved again from ``data_dir`` exactly as their
    training carved it (``train_config.json``), so the ensemble temperature is fitted on
    images none of them trained on, from the original files (not a lossy pixel pack).
    Everything is measured on the ensemble as written, half-precision weights included.

    Args:
        member_dirs: Folders written by ``train_hf.py`` (with ``train_config.json``).
        output_dir: The ensemble folder (``ensemble.json``, ``members/``,
            ``preprocessor_config.json``, ``metrics.json``, plots, ``README.md``).
        data_dir: The data the members trained on; default: what their config names.
        pixel_cache_dir: Cache of prepared images; ``None`` disables it.

    Raises:
        TumorClassifierError: A member has no ``train_config.json``, or the members
            were validated on different splits.
    """
    from .ensemble import EnsembleForImageClassification, build_ensemble
    from .reports import write_model_card

    folders = [Path(folder) for folder in member_dirs]
    configs = []
    for folder in folders:
        path = folder / "train_config.json"
        if not path.is_file():
            raise TumorClassifierError(f"{folder} has no train_config.json; ensemble members must be train_hf.py output folders.")
        configs.append(json.loads(path.read_text()))
    carvings = {(c["data"]["validation_size"], c["data"]["split_seed"], c["data"]["binary"]) for c in configs}
    if len(carvings) != 1:
        raise TumorClassifierError(f"The members were validated on different splits (validation_size, split_seed, binary): {sorted(carvings)}.")
    validation_size, split_seed, binary = carvings.pop()
    output_dir = Path(output_dir)
    build_ensemble(folders, output_dir=output_dir)
    ensemble = EnsembleForImageClassification.from_pretrained(output_dir)  # what ships: half-precision weights
    preprocessor = MRIPreprocessor.from_pretrained(output_dir)
    data_args = DataArguments(
        data_dir=data_dir or configs[0]["data"]["data_dir"], binary=binary, validation_size=validation_size,
        split_seed=split_seed, pixel_cache_dir=pixel_cache_dir,
    )  # fmt: skip
    data, arrays = _load_splits(data_args, preprocessor)
    class_names = list(ensemble.config.id2label[i] for i in range(len(ensemble.config.id2label)))
    (val_pixels, val_labels), (test_pixels, test_labels) = arrays["validation"], arrays["test"]

    val_logits = _batched_logits(ensemble, val_pixels, preprocessor)
    temperature = fit_temperature(val_logits, val_labels)
    ensemble.temperature = temperature * ensemble.temperature
    test_proba = softmax(_batched_logits(ensemble, test_pixels, preprocessor))
    duplicates = _duplicate_check(data)
    clean = duplicates.clean_queries
    trained = [  # what train_hf.py recorded of each member's run
        json.loads((folder / "metrics.json").read_text()).get("training", {}) if (folder / "metrics.json").is_file() else {}
        for folder in folders
    ]
    members = []
    for folder, config, run, member in zip(folders, configs, trained, ensemble.members):
        predicted = _batched_logits(member, val_pixels, preprocessor).argmax(axis=1)
        members.append({
            "source": str(folder),
            "seed": config["training"].get("seed"),
            "epochs_run": run.get("epochs_run"),
            "validation_accuracy": float(np.mean(predicted == val_labels)),
        })  # fmt: skip
    metrics: dict[str, Any] = {
        "validation": classification_metrics(val_labels, softmax(val_logits, temperature), class_names),
        "test": classification_metrics(test_labels, test_proba, class_names),
        "test_without_near_duplicates": classification_metrics(test_labels[clean], test_proba[clean], class_names),
        "calibration": {
            **calibration_summary(val_logits, val_labels, temperature),
            "applied": "to the mean of the members' logits, at forward time (ensemble.json)",
        },
        "duplicates": duplicates.summary(),
        "members": members,
        "training": {
            "backbone": configs[0]["model"]["backbone"],
            "from_scratch": configs[0]["model"]["from_scratch"],
            "image_size": preprocessor.size,
            "epochs_run": trained[0].get("epochs_run", 0),
            "train_images": trained[0].get("train_images"),
            "ensemble_members": len(folders),
            "data": str(data_args.data_dir),
        },
    }
    ensemble.save_pretrained(output_dir)  # again, now with the fitted temperature in ensemble.json
    names = json.loads((output_dir / "ensemble.json").read_text())["members"]
    for folder, name in zip(folders, names):  # each member keeps its exact recipe
        shutil.copy(folder / "train_config.json", output_dir / "members" / name / "train_config.json")
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    write_model_card(output_dir, metrics, [], class_names, reliability=_reliability(val_logits, val_labels, temperature))
    return TrainingResult(output_dir, metrics)
