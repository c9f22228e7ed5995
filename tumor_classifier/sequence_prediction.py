"""A volume verdict from the slice-sequence model, in the shape ``predict_volume`` gives.

``predict_volume(clf, source, sequence_model=model)`` (also ``clf.predict_volume(source,
sequence_model=model)``) runs the usual slice classification, the not-a-brain-MRI check
and the key slice's heatmap, then :func:`apply_sequence_model` lets the sequence model
decide tumour / no tumour:

* **Slices read.** The same slices the 2-D classifier classified (inside the head), in
  order, prepared by the backbone's preprocessor.
* **Cost.** Each slice is prepared once for both models when the backbone's preprocessor
  is the classifier's. When the classifier's network *is* the sequence model's backbone
  (same architecture and weights, plain torch passes; true of the shipped pair, see
  :func:`shares_backbone`) one backbone pass per slice serves both, and the sequence model
  adds only its LSTM. Any other pairing (another backbone or fine-tune, an ensemble,
  ONNX, mirror images) is legal and runs the backbone a second time: about as long again
  as the slice classification.
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
from .inference import model_passes
from .models import get_backbone
from .preprocessing import MRIPreprocessor
from .sequence_data import TUMOUR_LABEL, embed_pixels

#: Volume tumour probability at or above which the sequence model says "tumour".
THRESHOLD = 0.5
#: Config entries that say nothing of the backbone's forward pass (labels belong to the head).
_NOT_BACKBONE = ("_name_or_path", "id2label", "label2id", "transformers_version")


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
    model.eval()
    pixels = np.stack([preprocessor.prepare_array(s) for s in slices])
    return embedded_verdict(model, embed_pixels(model, preprocessor, pixels, batch_size=batch_size)[0])


def embedded_verdict(model, embeddings: np.ndarray) -> SequenceVerdict:
    """:func:`sequence_verdict` from the slices' embeddings: float32 (S, embedding_size), in order."""
    model.eval()
    with torch.inference_mode():
        output = model(slice_embeddings=torch.from_numpy(embeddings)[None].to(model.device))
    probability = float(torch.softmax(output.logits.float(), dim=-1)[0, TUMOUR_LABEL])
    per_slice = None if output.slice_logits is None else torch.softmax(output.slice_logits[0].float(), dim=-1)[:, TUMOUR_LABEL].cpu().numpy()
    return SequenceVerdict(probability, per_slice)


def shares_backbone(clf, model) -> bool:
    """Whether the classifier's network is the sequence model's backbone with a head on top.

    True when the classifier runs plain torch passes (no ONNX graph, no mirror images) in
    eval mode on the sequence model's device, and its network is the same registry
    backbone with the same architecture settings and equal weights, its head aside. The
    weights are compared on each call: 7-15 ms for the shipped backbone on one thread,
    against about a second for the backbone pass it saves on a BraTS volume.
    """
    if getattr(clf, "onnx_model_", None) is not None or clf.test_time_augmentation:
        return False
    network, backbone = clf.model_, model.backbone
    name = getattr(network.config, "backbone_name", None)
    if type(network) is not type(backbone) or network.training or network.device != model.device:
        return False
    settings = [{k: v for k, v in c.items() if k not in _NOT_BACKBONE} for c in (network.config.to_dict(), model.config.backbone_config)]
    if name != model.config.backbone_config.get("backbone_name") or settings[0] != settings[1]:
        return False
    head = get_backbone(name).head_layer
    theirs = {k: v for k, v in network.state_dict().items() if not k.startswith(f"{head}.")}
    ours = backbone.state_dict()
    return theirs.keys() == ours.keys() and all(theirs[k].dtype == v.dtype and torch.equal(theirs[k], v) for k, v in ours.items())


def classify_and_embed(clf, model, slices: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The classifier's probabilities of a volume's slices and the sequence model's embeddings of them.

    What it costs is in the module docstring: one preparation per slice when both models
    prepare alike, and one backbone pass when :func:`shares_backbone` holds (the
    embeddings, then the classifier's own head on them: its forward pass cut in two).

    Args:
        clf: A fitted :class:`~tumor_classifier.TumorClassifier`.
        model: The sequence model.
        slices: uint8 (H, W) images, the slices to classify, in order (at least one).

    Returns:
        ``(proba float32 (n, n_classes) in clf.classes_ order, embeddings float32 (n, embedding_size))``.
    """
    model.eval()
    prepared = clf._prepare(slices)
    preprocessor = backbone_preprocessor(model, clf.preprocessor_)
    if preprocessor != clf.preprocessor_:
        pixels = np.stack([preprocessor.prepare_array(s) for s in slices])
    else:
        pixels = np.stack([np.asarray(p.image) for p in prepared])
        if shares_backbone(clf, model):
            network = clf.model_
            head = network.get_submodule(get_backbone(network.config.backbone_name).head_layer)
            with model_passes(network):  # its head runs outside its forward, so hold its lock
                embeddings, proba = embed_pixels(model, preprocessor, pixels, head=head, batch_size=clf.batch_size)
            return proba, embeddings
    return clf._proba(prepared).astype(np.float32), embed_pixels(model, preprocessor, pixels, batch_size=clf.batch_size)[0]


def _tumour_type(prediction: Any, members: np.ndarray) -> tuple[str, dict[str, float]]:
    classes = list(prediction.probabilities)
    mean = np.nanmean(prediction.slice_probabilities[members], axis=0)
    tumour_columns = [i for i, c in enumerate(classes) if c != NO_TUMOR]
    return classes[tumour_columns[int(np.argmax(mean[tumour_columns]))]], {c: float(p) for c, p in zip(classes, mean)}


def apply_sequence_model(
    model, prediction: Any, preprocessor: MRIPreprocessor, *, threshold: float = THRESHOLD, embeddings: np.ndarray | None = None
) -> Any:
    """The slice-aggregation ``VolumePrediction`` with the sequence model's verdict (see the module docstring).

    Args:
        model: The sequence model.
        prediction: What :func:`~tumor_classifier.volume_prediction.predict_volume` gave.
        preprocessor: Used when the model's ``backbone_source`` has none (see :func:`backbone_preprocessor`).
        threshold: Volume tumour probability for "tumour", in (0, 1).
        embeddings: float32 (n, embedding_size): the backbone's embeddings of the
            classified slices in order, as :func:`classify_and_embed` gives them; ``None``
            embeds the slices here.

    Returns:
        A new ``VolumePrediction``: ``label``, ``model_label``, ``tumour``,
        ``tumour_probability`` and ``probabilities`` from the sequence model, a note added.
    """
    if not 0 < threshold < 1:
        raise InvalidArgumentError(f"threshold must lie in (0, 1); got {threshold}.")
    indices = np.flatnonzero(prediction.classified)
    if embeddings is None:
        verdict = sequence_verdict(model, [prediction.volume.slices[i] for i in indices], backbone_preprocessor(model, preprocessor))
    elif len(embeddings) != indices.size:
        raise InvalidArgumentError(f"embeddings must have one row per classified slice ({indices.size}); got {len(embeddings)}.")
    else:
        verdict = embedded_verdict(model, embeddings)
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
