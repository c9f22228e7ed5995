"""Ensembles of image-classification models that behave like one model.

An ensemble is several members trained the same way (same backbone, preprocessing and
classes; different seeds). Its logits are the mean of the members' logits divided by
one ensemble temperature, so everything that takes a single model - the estimator,
Captum through :class:`~tumor_classifier.attributions.LogitsModel`, the CLI and the app -
takes an ensemble unchanged.

Calibration lives in two places, on purpose:

* each member keeps the temperature ``train_hf.py`` folded into its head (its
  ``config.calibration_temperature`` records it), so a member folder is a calibrated
  model on its own;
* the ensemble's ``temperature`` (in ``ensemble.json``) rescales the *mean* of those
  logits at forward time. Averaging calibrated members tends to give under-confident
  probabilities, so this is the one number to fit on validation after building the
  ensemble; 1.0 leaves the mean as it is.

Folder layout written by :meth:`EnsembleForImageClassification.save_pretrained`::

    ensemble.json              {"format": "tumor-classifier-ensemble", "members": [...],
                                "temperature": T, "combine": "mean_logits"}
    members/member-0/          a standard transformers folder: config.json, model.safetensors
    members/member-1/ ...

There is no top-level ``config.json``: plain transformers cannot load an ensemble, and a
missing file says so more clearly than a config whose weights are elsewhere. Each member
folder loads with ``AutoModelForImageClassification`` on its own.

Example:
    >>> ensemble = build_ensemble(["runs/seed0", "runs/seed1", "runs/seed2"],
    ...                           output_dir="runs/ensemble")      # doctest: +SKIP
    >>> TumorClassifier.from_pretrained("runs/ensemble").predict("scan.jpg")  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

import torch
from transformers import PreTrainedModel
from transformers.modeling_outputs import ImageClassifierOutput

from .exceptions import InvalidArgumentError, ModelLoadError, TumorClassifierError
from .model_folder import (  # noqa: F401 - the folder names: importable from here as before
    ENSEMBLE_CONFIG_NAME,
    MEMBERS_DIR,
    is_ensemble_folder,
    load_image_classifier,
    quiet_weights,
    read_json_limited,
    resolve_inside,
)
from .preprocessing import PROCESSOR_CONFIG_NAME, MRIPreprocessor

#: The "format" an ensemble.json states (the file's name: model_folder.ENSEMBLE_CONFIG_NAME).
ENSEMBLE_FORMAT = "tumor-classifier-ensemble"
#: Most members an ``ensemble.json`` may list (the shipped model has 4).
MAX_MEMBERS = 64

__all__ = [
    "ENSEMBLE_CONFIG_NAME",
    "EnsembleForImageClassification",
    "build_ensemble",
    "is_ensemble_folder",
]


def _check_temperature(temperature: Any) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (
        math.isfinite(temperature) and temperature > 0
    ):
        raise InvalidArgumentError(f"The ensemble temperature must be a positive finite number, got {temperature!r}.")
    return float(temperature)


def _labels(model: torch.nn.Module) -> dict[int, str]:
    return {int(i): str(name) for i, name in model.config.id2label.items()}


class EnsembleForImageClassification(torch.nn.Module):
    """Several image-classification models answering as one.

    ``forward`` returns ``ImageClassifierOutput(logits=mean(member logits) / temperature)``,
    so the ensemble drops in wherever a transformers image classifier is used for inference.

    Args:
        members: transformers image-classification models with the same ``id2label``
            (typically the same backbone trained with different seeds).
        temperature: Divides the mean of the members' logits (see the module docstring
            for where calibration lives); positive.

    Attributes:
        members: ``nn.ModuleList`` of the member models.
        temperature: The ensemble temperature.
        config: A copy of the first member's config, so ``id2label``, ``model_type``,
            ``image_size`` and ``backbone_name`` read as for a single model.

    Raises:
        TumorClassifierError: No members, members with different classes, or a
            temperature that is not a positive number.
    """

    def __init__(self, members: Sequence[torch.nn.Module], temperature: float = 1.0) -> None:
        super().__init__()
        members = list(members)
        if not members:
            raise InvalidArgumentError("An ensemble needs at least one member model; got none.")
        first = _labels(members[0])
        for index, member in enumerate(members[1:], start=1):
            if _labels(member) != first:
                raise InvalidArgumentError(
                    f"Ensemble member {index} has classes {_labels(member)} but member 0 has {first}; "
                    "all members must be trained on the same classes in the same order."
                )
        self.members = torch.nn.ModuleList(members)
        self.temperature = _check_temperature(temperature)
        self.config = copy.deepcopy(members[0].config)

    @property
    def device(self) -> torch.device:
        """Device of the (first member's) parameters."""
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """Floating-point dtype of the parameters."""
        return next(self.parameters()).dtype

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, **kwargs: Any) -> ImageClassifierOutput:
        """Mean of the members' logits, divided by the temperature.

        Args:
            pixel_values: float (n, C, H, W), normalised as every member expects.
            labels: Optional class indices (n,); then ``loss`` is their cross-entropy.
            **kwargs: Passed to each member (e.g. ``interpolate_pos_encoding``).

        Returns:
            ``ImageClassifierOutput`` with ``logits`` float (n, num_labels) and ``loss``.
        """
        kwargs.pop("return_dict", None)  # members always answer with a ModelOutput here
        logits = torch.stack([member(pixel_values=pixel_values, **kwargs).logits for member in self.members])
        logits = logits.mean(dim=0) / self.temperature
        loss = None if labels is None else torch.nn.functional.cross_entropy(logits, labels)
        return ImageClassifierOutput(loss=loss, logits=logits)

    # -- persistence -------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike, *, dtype: torch.dtype = torch.float16) -> Path:
        """Writes ``ensemble.json`` and ``members/member-i/`` (one transformers folder each).

        Args:
            directory: Target folder (created if missing). Member folders already there
                are replaced, so a smaller ensemble leaves no stale member behind, and a
                single model's config.json and weights there are removed.
            dtype: Storage dtype of the weights. Half precision by default: it halves the
                size of a shipped model, and for the shipped 3.4 M ConvNeXt it moves no
                probability of the test slices by more than 5e-4. Loading always
                computes in float32. ``torch.float32`` stores the weights as they are.

        Returns:
            ``directory`` as a ``Path``.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        members_dir = directory / MEMBERS_DIR
        if members_dir.exists():
            shutil.rmtree(members_dir)
        # A single model saved here before would sit beside ensemble.json: one folder, one model.
        for stale in ("config.json", "model.safetensors", "model.safetensors.index.json"):
            (directory / stale).unlink(missing_ok=True)
        names = [f"member-{index}" for index in range(len(self.members))]
        for name, member in zip(names, self.members):
            # A copy, so the caller's model keeps computing in its own dtype.
            stored = copy.deepcopy(member).to(dtype=dtype)
            with quiet_weights():
                stored.save_pretrained(members_dir / name)
        manifest = {"format": ENSEMBLE_FORMAT, "members": names, "temperature": self.temperature, "combine": "mean_logits"}
        (directory / ENSEMBLE_CONFIG_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> "EnsembleForImageClassification":
        """Loads a folder written by :meth:`save_pretrained`, in float32 and eval mode.

        Raises:
            ModelLoadError: ``ensemble.json`` is missing, malformed or of another format,
                or a member folder cannot be loaded.
        """
        directory = Path(directory)
        path = directory / ENSEMBLE_CONFIG_NAME
        manifest = read_json_limited(path)
        if not isinstance(manifest, dict) or manifest.get("format") != ENSEMBLE_FORMAT:
            raise ModelLoadError(f"{path} is not a {ENSEMBLE_FORMAT!r} description (its 'format' is missing or different).")
        combine = manifest.get("combine", "mean_logits")
        if combine != "mean_logits":
            raise ModelLoadError(f"{path} combines members by {combine!r}; this version supports 'mean_logits' only.")
        names = manifest.get("members")
        if not isinstance(names, list) or not names or not all(isinstance(name, str) and name for name in names):
            raise ModelLoadError(f"{path} must list its member folders under 'members' (a non-empty list of names).")
        if len(names) > MAX_MEMBERS:
            raise ModelLoadError(f"{path} lists {len(names)} members; at most {MAX_MEMBERS} are accepted.")
        temperature = manifest.get("temperature", 1.0)
        try:
            temperature = _check_temperature(temperature)
        except (TumorClassifierError, OverflowError) as error:  # OverflowError: a 400-digit integer
            raise ModelLoadError(f"{path}: {error}") from error
        # Every member must lie inside the ensemble folder: "../x", "/x" or a link out are refused.
        folders = [resolve_inside(directory, Path(MEMBERS_DIR, name), what=str(path)) for name in names]
        members = [_load_member(folder) for folder in folders]
        try:
            return cls(members, temperature=temperature).eval()
        except TumorClassifierError as error:
            raise ModelLoadError(f"The ensemble in {directory} is inconsistent: {error}") from error


def _load_member(folder: Path) -> PreTrainedModel:
    """One member folder -> a float32 model in eval mode.

    transformers 5 keeps the stored dtype by default; the ensemble stores half precision,
    so float32 is asked for explicitly (CPU kernels are slow or missing in float16).
    The folder is checked first (see :func:`~tumor_classifier.model_folder.load_image_classifier`).
    """
    try:
        model = load_image_classifier(folder)
    except ModelLoadError as error:
        raise ModelLoadError(f"Could not load the ensemble member {folder}: {error}") from error
    wrong = sorted({str(p.dtype) for p in model.parameters() if p.dtype != torch.float32})
    if wrong:
        raise ModelLoadError(f"The ensemble member in {folder} loaded with {', '.join(wrong)} weights instead of float32.")
    return model.eval()


def build_ensemble(
    member_dirs: Sequence[str | os.PathLike],
    temperature: float = 1.0,
    *,
    output_dir: str | os.PathLike | None = None,
    dtype: torch.dtype = torch.float16,
) -> EnsembleForImageClassification:
    """Builds an ensemble from model folders written by ``train_hf.py`` / ``save_pretrained``.

    Args:
        member_dirs: Folders with ``config.json``, ``model.safetensors`` and
            ``preprocessor_config.json``; all with the same classes and preprocessing.
        temperature: Ensemble temperature (see the module docstring).
        output_dir: If given, also writes the ensemble there with the members' shared
            ``preprocessor_config.json``, a folder ``TumorClassifier.from_pretrained`` loads.
        dtype: Storage dtype when writing ``output_dir``.

    Returns:
        The ensemble, float32, in eval mode.

    Raises:
        TumorClassifierError: No folders, a folder without ``preprocessor_config.json``,
            members whose preprocessing or classes differ (the message names them), or an
            ``output_dir`` that is (inside) a member's folder.
        ModelLoadError: A member folder cannot be loaded.

    Example:
        >>> build_ensemble(["runs/s0", "runs/s1"], output_dir="runs/ensemble")  # doctest: +SKIP
    """
    folders = [Path(folder) for folder in member_dirs]
    if not folders:
        raise InvalidArgumentError("build_ensemble needs at least one member folder; got none.")
    if output_dir is not None:
        target = Path(os.path.realpath(output_dir))
        for folder in folders:
            member = Path(os.path.realpath(folder))
            if target == member or member in target.parents:
                raise InvalidArgumentError(
                    f"output_dir {output_dir} is {'' if target == member else 'inside '}the folder of the member {folder}: "
                    "the ensemble would be written into a member's model folder. Give a folder of its own."
                )
    preprocessors = []
    for folder in folders:
        if not folder.is_dir():
            raise InvalidArgumentError(
                f"{folder} {'is a file' if folder.exists() else 'does not exist'}; ensemble members are model folders "
                "written by train_hf.py or TumorClassifier.save_pretrained."
            )
        if is_ensemble_folder(folder):
            raise InvalidArgumentError(
                f"{folder} is an ensemble itself, and an ensemble cannot be a member: build the new ensemble from "
                "the model folders its members came from (train_hf.py or save_pretrained outputs)."
            )
        if not (folder / PROCESSOR_CONFIG_NAME).is_file():
            raise TumorClassifierError(
                f"{folder} has no {PROCESSOR_CONFIG_NAME}; ensemble members must be folders written by "
                "train_hf.py or TumorClassifier.save_pretrained, which record their preprocessing."
            )
        preprocessors.append(MRIPreprocessor.from_pretrained(folder))
    for folder, preprocessor in zip(folders[1:], preprocessors[1:]):
        if preprocessor != preprocessors[0]:
            raise InvalidArgumentError(
                f"Ensemble members must share their preprocessing: {folders[0]} has {preprocessors[0]} but "
                f"{folder} has {preprocessor}. Train every member with the same image size and preprocessing."
            )
    members = [_load_member(folder) for folder in folders]
    for folder, member in zip(folders[1:], members[1:]):
        if _labels(member) != _labels(members[0]):
            raise InvalidArgumentError(
                f"Ensemble members must share their classes: {folders[0]} has {_labels(members[0])} but "
                f"{folder} has {_labels(member)}."
            )
    ensemble = EnsembleForImageClassification(members, temperature=temperature).eval()
    if output_dir is not None:
        ensemble.save_pretrained(output_dir, dtype=dtype)
        preprocessors[0].save_pretrained(output_dir)
    return ensemble
