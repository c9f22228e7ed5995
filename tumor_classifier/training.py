"""Training through the Hugging Face ``Trainer``: the trainer, the run, ensembles of runs.

``train_hf.py`` and :meth:`TumorClassifier.fit` both go through :func:`build_trainer`,
so there is one training loop, and build their model and loss with :mod:`tumor_classifier.recipe`. The input pipeline is built for two CPU cores and carries to a GPU:
images are prepared once as uint8 (:mod:`tumor_classifier.pixels`; the run's splits come from
:mod:`tumor_classifier.training_data`), and augmentation and
normalisation run on whole batches as tensors on the model's device
(:class:`~tumor_classifier.mri_trainer.MRITrainer`).
Losses and validation metrics live in :mod:`tumor_classifier.losses`, the run's argument
dataclasses in :mod:`tumor_classifier.training_arguments`; their names stay importable
from here.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from transformers import EarlyStoppingCallback, PreTrainedModel, Trainer, TrainingArguments

from .augmentation import AugmentationConfig, BatchAugmenter
from .data import BINARY_CLASS_NAMES, CLASS_NAMES, NO_TUMOR, load_no_tumour_images, load_tumour_only_images
from .exceptions import InvalidArgumentError, InvalidDatasetError, TumorClassifierError
from .losses import LOSSES, class_weights, compute_eval_metrics, make_loss_function, tumor_columns_of
from .mri_trainer import MRITrainer, TimeLimitCallback
from .metrics import calibration_summary, classification_metrics, fit_temperature, softmax
from .model_folder import quiet_weights
from .pixels import (
    DEFAULT_CACHE,
    PIXEL_PACK_FORMAT,
    PixelDataset,
    PixelPack,
    collate_pixels,
    pixels_to_values,
    prepare_pixels,
    read_pixel_pack,
    write_pixel_pack,
)
from .preprocessing import MRIPreprocessor
from .recipe import create_run_model, make_run_loss
from .training_arguments import DataArguments, ModelArguments, MRITrainingArguments
from .training_data import (
    cross_class_duplicates,
    duplicate_check,
    joined_dataset,
    load_pack,
    load_splits,
    split_fingerprints,
    validation_duplicate_check,
)

#: Names that lived here before the split and stay importable from here.
__all__ = [
    "DEFAULT_CACHE", "LOSSES", "PIXEL_PACK_FORMAT", "DataArguments", "ModelArguments", "MRITrainingArguments",
    "MRITrainer", "PixelDataset", "PixelPack", "TimeLimitCallback", "TrainingResult", "build_trainer",
    "class_weights", "collate_pixels", "compute_eval_metrics", "fold_temperature", "make_ensemble",
    "make_loss_function", "pixels_to_values", "predict_logits", "prepare_pixels", "read_pixel_pack",
    "run_training", "tumor_columns_of", "write_pixel_pack",
]

logger = logging.getLogger(__name__)


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
    consistency_weight: float = 0.0,
    early_stopping_patience: int | None = None,
    model_init: Callable | None = None,
    class_names: Sequence[str] | None = None,
) -> MRITrainer:
    """The one Trainer used by ``train_hf.py`` and ``TumorClassifier.fit``."""
    if not consistency_weight >= 0:
        raise InvalidArgumentError(f"consistency_weight must be 0 (off) or positive; got {consistency_weight!r}.")
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
        consistency_weight=consistency_weight,
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



def _reliability(val_logits: np.ndarray, val_labels: np.ndarray, temperature: float) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Validation probabilities before and after calibration, for the reliability diagram."""
    return {"before": (softmax(val_logits), val_labels), "after": (softmax(val_logits, temperature), val_labels)}



def _checkpoint_to_resume(training_args: TrainingArguments) -> str | None:
    """The checkpoint folder ``--resume_from_checkpoint`` names: a ``checkpoint-N`` folder, or
    ``true`` / ``last`` for the newest one in ``output_dir``; ``None`` when not resuming.

    Raises:
        InvalidArgumentError: The folder is not a checkpoint, or ``output_dir`` has none.
    """
    from transformers.trainer_utils import get_last_checkpoint

    value = training_args.resume_from_checkpoint
    if value is None or str(value).strip().lower() in ("", "false", "none"):
        return None
    if isinstance(value, bool) or str(value).strip().lower() in ("true", "last"):
        output_dir = Path(training_args.output_dir)
        newest = get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None
        if newest is None:
            raise InvalidArgumentError(
                f"--resume_from_checkpoint {value} resumes the newest checkpoint-N folder in --output_dir "
                f"{output_dir}, but it has none; name a checkpoint folder of an earlier run instead."
            )
        return newest
    if not (Path(value) / "trainer_state.json").is_file():
        raise InvalidArgumentError(
            f"--resume_from_checkpoint {value} is not a checkpoint folder (no trainer_state.json in it); give a "
            "checkpoint-N folder of an earlier run (such as runs/model/checkpoint-500), or true for the newest "
            "one in --output_dir."
        )
    return str(value)


def _no_tumour_record(arrays: dict[str, Any], data_args: DataArguments) -> dict[str, Any]:
    """How many no-tumour images trained, and from which folders (a pixel pack carries the
    images but not where they came from)."""
    if "train_no_tumour" not in arrays:
        return {}
    record: dict[str, Any] = {"no_tumour_images": int(len(arrays["train_no_tumour"][1]))}
    if data_args.no_tumour_dirs:
        record["no_tumour_sources"] = list(data_args.no_tumour_dirs)
    return record


def run_training(data_args: DataArguments, model_args: ModelArguments, training_args: TrainingArguments) -> TrainingResult:
    """Loads the data, trains, calibrates, evaluates and writes the model folder.

    The folder gets ``model.safetensors``, ``config.json`` (with ``id2label``),
    ``preprocessor_config.json``, ``metrics.json``, the plots and a model card
    ``README.md``; checkpoints go to ``checkpoint-*`` below it.
    """
    from .reports import write_model_card

    class_names = BINARY_CLASS_NAMES if data_args.binary else CLASS_NAMES
    resume_from = _checkpoint_to_resume(training_args)  # before hours of data preparation, not after
    # The finished folder is uploaded once at the end; the Trainer would otherwise push
    # every checkpoint and replace our model card with its own.
    push_to_hub, training_args.push_to_hub = training_args.push_to_hub, False
    if push_to_hub and training_args.process_index == 0:
        from .hub import check_hub_reachable

        check_hub_reachable()  # before hours of training, not after
    preprocessor = MRIPreprocessor(
        size=model_args.image_size, crop_to_head=data_args.crop_to_head, skull_strip=data_args.skull_strip
    )
    def make_model(trial=None):
        dropout = trial.params["dropout"] if trial is not None and "dropout" in trial.params else None
        return create_run_model(model_args, class_names, dropout=dropout, seed=training_args.seed)

    # Options that cannot work fail now, not after minutes of preparing the images.
    model = None if data_args.write_pixel_pack else make_model()
    if data_args.tumour_only_dirs:
        load_tumour_only_images(data_args.tumour_only_dirs)
    if data_args.no_tumour_dirs:
        load_no_tumour_images(data_args.no_tumour_dirs)
    if data_args.pixel_pack and data_args.write_pixel_pack:
        raise InvalidArgumentError("--write_pixel_pack makes a pack from data_dir; it cannot be combined with --pixel_pack.")
    if data_args.pixel_pack:
        data, pack = None, load_pack(data_args, preprocessor, class_names)
        arrays = pack.arrays
    else:
        data, arrays = load_splits(data_args, preprocessor, training_args)
    # Said before training, by one process: a slice filed under two classes is a labelling error.
    # Fingerprints once, by the process that runs the duplicate checks (before and after training).
    prints = split_fingerprints(data) if data is not None and training_args.process_index == 0 else None
    cross_class = cross_class_duplicates(data, prints) if prints is not None else None
    if data_args.write_pixel_pack:
        path = Path(data_args.write_pixel_pack)
        if training_args.process_index == 0:
            duplicates = duplicate_check(data, prints)
            pack = PixelPack(arrays, preprocessor, list(class_names), duplicates.clean_queries, duplicates.summary(), str(data_args.data_dir))
            write_pixel_pack(path, pack, jpeg_quality=data_args.pixel_pack_jpeg_quality)
        return TrainingResult(path, {"pixel_pack": {name: len(labels) for name, (_, labels) in arrays.items()}})
    sets = {name: PixelDataset(*arrays[name]) for name in arrays}

    common = dict(
        augmentation=data_args.augmentation(),
        loss_function=make_run_loss(model_args, class_names, arrays["train"][1]),
        consistency_weight=model_args.consistency_weight,
        early_stopping_patience=model_args.early_stopping_patience,
        class_names=class_names,
    )
    # The Trainer trains on Kaggle train plus the tumour-only and no-tumour train images, and
    # evaluates on both validation parts (accuracy on the first, sensitivity on the second).
    train_set = joined_dataset(arrays, "train", "train_tumour_only", "train_no_tumour")
    eval_set = joined_dataset(arrays, "validation", "validation_tumour_only")
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

    if best is not None:  # the search's best dropout
        model = make_model()
    trainer = build_trainer(model, preprocessor, train_set, eval_set, training_args, **common)
    train_output = trainer.train(resume_from_checkpoint=resume_from)
    model = trainer.model

    val_logits = predict_logits(trainer, sets["validation"])
    val_labels = arrays["validation"][1]
    temperature = fit_temperature(val_logits, val_labels) if model_args.calibrate else 1.0
    calibration = calibration_summary(val_logits, val_labels, temperature)
    if model_args.calibrate:
        fold_temperature(model, temperature)
    else:  # the card must not say a temperature was fitted
        calibration["skipped"] = "--no_calibrate"
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
        with quiet_weights():  # no "Writing model shards" bar: --disable_tqdm true means no bars
            trainer.save_model(str(output_dir))  # first, so nothing below can lose the model
        preprocessor.save_pretrained(output_dir)
        if "test" in arrays:
            if data is None:
                clean, summary = pack.test_clean, pack.duplicates
            else:
                duplicates = duplicate_check(data, prints)
                clean, summary = duplicates.clean_queries, duplicates.summary()
            if clean is not None:
                metrics["test_without_near_duplicates"] = classification_metrics(arrays["test"][1][clean], test_proba[clean], class_names)
                metrics["duplicates"] = summary
        if prints is not None:  # from the images (a pixel pack has no fingerprints)
            fresh = validation_duplicate_check(data, prints).clean_queries
            if fresh:
                metrics["validation_without_near_duplicates"] = classification_metrics(
                    val_labels[fresh], softmax(val_logits, temperature)[fresh], class_names
                )
        if cross_class is not None:
            metrics["training_duplicates_across_classes"] = cross_class
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
            **_no_tumour_record(arrays, data_args),
            "world_size": int(training_args.world_size),
            "hyperparameter_search": best,
            "data": str(data_args.pixel_pack or data_args.data_dir),
            **({"pixel_pack_source": pack.source} if data is None and pack.source else {}),  # for the card
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
    data_args = DataArguments(
        data_dir=data_dir or configs[0]["data"]["data_dir"], binary=binary, validation_size=validation_size,
        split_seed=split_seed, pixel_cache_dir=pixel_cache_dir,
    )  # fmt: skip
    # The data is read before anything is written: a folder left behind by a failed read
    # (members, temperature 1, no metrics) would load as an uncalibrated ensemble.
    # build_ensemble refuses members whose preprocessing differs from the first one's.
    preprocessor = MRIPreprocessor.from_pretrained(folders[0])
    try:
        data, arrays = load_splits(data_args, preprocessor)
    except InvalidDatasetError as error:
        if data_dir:
            raise
        raise InvalidDatasetError(
            f"{error} It is the data folder {folders[0] / 'train_config.json'} records, as train_hf.py was given it "
            "(a relative folder is relative to where train_hf.py ran): say where the data is with --data "
            "(make_ensemble's data_dir=)."
        ) from None
    output_dir = Path(output_dir)
    build_ensemble(folders, output_dir=output_dir)
    ensemble = EnsembleForImageClassification.from_pretrained(output_dir)  # what ships: half-precision weights
    class_names = list(ensemble.config.id2label[i] for i in range(len(ensemble.config.id2label)))
    (val_pixels, val_labels), (test_pixels, test_labels) = arrays["validation"], arrays["test"]

    val_logits = _batched_logits(ensemble, val_pixels, preprocessor)
    temperature = fit_temperature(val_logits, val_labels)
    ensemble.temperature = temperature * ensemble.temperature
    test_proba = softmax(_batched_logits(ensemble, test_pixels, preprocessor))
    duplicates = duplicate_check(data)
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
