"""A volume verdict from the slice-sequence model, in the shape ``predict_volume`` gives.

``predict_volume(clf, source, sequence_model=model)`` (also ``clf.predict_volume(source,
sequence_model=model)``) runs the usual slice classification, the not-a-brain-MRI check
and the key slice's heatmap, then :func:`apply_sequence_model` lets the sequence model
decide tumour / no tumour:

* **Slices read.** The same slices the 2-D classifier classified (inside the head), in
  order, prepared by the backbone's preprocessor.
* **Tumour or not.** The sequence model's volume probability of ``tumor`` at least
  ``threshold`` (0.5).
* **Tumour type.** The sequence model knows only tumour / no tumour; the type is the most
  probable tumour class of the 2-D classifier's probabilities averaged over the slices the
  sequence model's per-slice head calls tumour (without such slices: the aggregation's
  runs, else the slice the classifier finds most suspicious).
* **Kept from the slice aggregation.** ``runs``, ``key_slice`` and its heatmap, the MRI
  check (a flagged volume still gets no label), the per-slice probabilities; a note
  records what the aggregation said.

What it has been validated on: volumes *built* from Kaggle slices (see
:mod:`tumor_classifier.sequence_data` and the README), not on any real tumour volume.

Example:
    >>> model = load_sequence_model("runs/sequence-model")                      # doctest: +SKIP
    >>> clf.predict_volume("scan.nii.gz", sequence_model=model).label          # doctest: +SKIP
    'notumor'
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np
import torch

from .data import NO_TUMOR
from .exceptions import InvalidArgumentError, InvalidVolumeError
from .preprocessing import MRIPreprocessor
from .sequence_data import TUMOUR_LABEL, embed_pixels

#: Volume tumour probability at or above which the sequence model says "tumour".
THRESHOLD = 0.5


@dataclass
class SequenceVerdict:
    """What the sequence model says of one volume's slices.

    Attributes:
        tumour_probability: Volume probability of ``tumor``, in [0, 1].
        slice_tumour_probability: float32 (S,) per-slice tumour probabilities from the
            per-slice head, or ``None`` without one.
    """

    tumour_probability: float
    slice_tumour_probability: np.ndarray | None


def backbone_preprocessor(model, fallback: MRIPreprocessor | None = None) -> MRIPreprocessor:
    """The preprocessor of the model's ``backbone_source`` folder, else ``fallback``.

    Raises:
        InvalidArgumentError: Neither exists.
    """
    from .sequence_model import resolve_backbone_source

    source = model.config.backbone_source
    folder = None if source is None else resolve_backbone_source(source)
    if folder is not None and (folder / "preprocessor_config.json").is_file():
        return MRIPreprocessor.from_pretrained(folder)
    if fallback is None:
        raise InvalidArgumentError(
            "This sequence model's backbone has no preprocessor_config.json to read (no backbone_source folder); "
            "pass the preprocessor its backbone was trained with."
        )
    return fallback


def sequence_verdict(model, slices: Sequence[np.ndarray], preprocessor: MRIPreprocessor, *, batch_size: int = 32) -> SequenceVerdict:
    """Runs the sequence model over one volume's slices, in order.

    Args:
        model: A :class:`~tumor_classifier.sequence_model.SliceSequenceForVolumeClassification`.
        slices: uint8 (H, W) images, the volume's slices in order (at least one).
        preprocessor: The backbone's preprocessor.
        batch_size: Slices per backbone pass.

    Raises:
        InvalidVolumeError: No slices.
    """
    if len(slices) == 0:
        raise InvalidVolumeError("The sequence model needs at least one slice; the volume has none inside the head.")
    pixels = np.stack([preprocessor.prepare_array(s) for s in slices])
    embeddings, _ = embed_pixels(model, preprocessor, pixels, batch_size=batch_size)
    model.eval()
    with torch.inference_mode():
        output = model(slice_embeddings=torch.from_numpy(embeddings)[None].to(model.device))
    probability = float(torch.softmax(output.logits.float(), dim=-1)[0, TUMOUR_LABEL])
    per_slice = None if output.slice_logits is None else torch.softmax(output.slice_logits[0].float(), dim=-1)[:, TUMOUR_LABEL].cpu().numpy()
    return SequenceVerdict(probability, per_slice)


def _tumour_type(prediction: Any, members: np.ndarray) -> tuple[str, dict[str, float]]:
    classes = list(prediction.probabilities)
    mean = np.nanmean(prediction.slice_probabilities[members], axis=0)
    tumour_columns = [i for i, c in enumerate(classes) if c != NO_TUMOR]
    return classes[tumour_columns[int(np.argmax(mean[tumour_columns]))]], {c: float(p) for c, p in zip(classes, mean)}


def apply_sequence_model(model, prediction: Any, preprocessor: MRIPreprocessor, *, threshold: float = THRESHOLD) -> Any:
    """The slice-aggregation ``VolumePrediction`` with the sequence model's verdict (see the module docstring).

    Args:
        model: The sequence model.
        prediction: What :func:`~tumor_classifier.volume_prediction.predict_volume` gave.
        preprocessor: Used when the model's ``backbone_source`` has none (see :func:`backbone_preprocessor`).
        threshold: Volume tumour probability for "tumour", in (0, 1).

    Returns:
        A new ``VolumePrediction``: ``label``, ``model_label``, ``tumour``,
        ``tumour_probability`` and ``probabilities`` from the sequence model, a note added.
    """
    if not 0 < threshold < 1:
        raise InvalidArgumentError(f"threshold must lie in (0, 1); got {threshold}.")
    indices = np.flatnonzero(prediction.classified)
    verdict = sequence_verdict(model, [prediction.volume.slices[i] for i in indices], backbone_preprocessor(model, preprocessor))
    tumour = verdict.tumour_probability >= threshold
    probabilities = prediction.probabilities
    label = NO_TUMOR
    if tumour:
        flagged = indices[verdict.slice_tumour_probability >= 0.5] if verdict.slice_tumour_probability is not None else indices[:0]
        if flagged.size == 0 and prediction.runs:
            flagged = np.concatenate([np.arange(a, b + 1) for a, b in prediction.runs])
        if flagged.size == 0:
            flagged = np.asarray([int(np.nanargmax(prediction.slice_tumour_probability))])
        label, probabilities = _tumour_type(prediction, flagged)
    note = (
        f"Verdict by the slice-sequence model: tumour probability {verdict.tumour_probability:.2f} "
        f"(threshold {threshold}); the slice aggregation said {prediction.model_label!r}."
    )
    return replace(
        prediction,
        label=label if prediction.looks_like_mri else None,
        model_label=label,
        tumour=bool(tumour),
        tumour_probability=verdict.tumour_probability,
        probabilities=probabilities,
        notes=[*prediction.notes, note],
    )
