"""The one verdict policy: what a result is called, for the library, the CLI, REST and the app.

A result is judged from three things, in this order:

1. the learned brain-MRI check (:mod:`tumor_classifier.mri_check`): an input it flags is
   ``"not_brain_mri"``, whatever the model says, and gets **no tumor type**;
2. the uncertainty rule: a top probability below the classifier's
   ``uncertainty_threshold`` is ``"uncertain"`` and gets no tumor type either, except that
   a tumor class on top with the tumor classes together at or above the threshold is
   ``"tumor"`` without a type ("Tumor detected, type uncertain");
3. otherwise the most probable class: ``"no_tumor"`` for the no-tumor class, else
   ``"tumor"`` with its type (a binary model says "tumor" without a type).

:func:`decide_verdict` is the only place this is decided (:func:`judge_batch` runs the
check on a batch and calls it); ``TumorClassifier.predict`` /
``explain``, the ``tumor-classifier`` command, the REST route and the Gradio app all call
it, so one image gets the same verdict everywhere.

Example:
    >>> v = decide_verdict({"glioma": 0.9, "notumor": 0.1}, brain_mri=True, uncertainty_threshold=0.6)
    >>> v.kind, v.label, v.tumor_type
    ('tumor', 'glioma', 'glioma')
    >>> decide_verdict({"glioma": 0.9, "notumor": 0.1}, brain_mri=False, uncertainty_threshold=0.6).label
    'not_brain_mri'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Mapping, Sequence

import numpy as np

from .data import NO_TUMOR
from .decoding import DecodedImage
from .mri_check import MRICheck

#: What ``predict`` returns, and the verdict's kind, for an input that is not a brain MRI.
NOT_BRAIN_MRI = "not_brain_mri"
#: Every verdict kind.
VERDICTS = ("tumor", "no_tumor", "uncertain", NOT_BRAIN_MRI)
#: The class of a binary model's positive answer (it names no type).
_BINARY_TUMOR = "tumor"

VerdictKind = Literal["tumor", "no_tumor", "uncertain", "not_brain_mri"]


@dataclass(frozen=True)
class Verdict:
    """What one result is called.

    Attributes:
        kind: One of :data:`VERDICTS`.
        label: What ``predict`` gives: the most probable class, or :data:`NOT_BRAIN_MRI`
            (an uncertain result keeps its most probable class here; it is flagged by
            ``kind``).
        tumor_type: The tumor type stated to people, or ``None`` (no tumor, uncertain,
            not a brain MRI, or a binary model).
        headline: A few words for the top of a label: the class, ``"Uncertain"`` or
            ``"Not a brain MRI"``.
        title: The verdict in one line (``"Tumor detected: glioma"``).
        details: The sentences behind it (may hold a Markdown bullet list of reasons).
        reasons: Why the MRI check flagged the input (empty when it did not).
        probabilities: Class name -> probability the verdict was judged from.
        mri_score: The learned check's score in [0, 1], if it was given.
    """

    kind: VerdictKind
    label: str
    tumor_type: str | None
    headline: str
    title: str
    details: str
    reasons: tuple[str, ...] = ()
    probabilities: dict[str, float] = field(default_factory=dict)
    mri_score: float | None = None

    @property
    def brain_mri(self) -> bool:
        """Whether the input passed the brain-MRI check."""
        return self.kind != NOT_BRAIN_MRI

    @property
    def markdown(self) -> str:
        """The verdict as Markdown, as the app shows it: a heading and the details."""
        return f"### {self.title}\n{self.details}"

    @property
    def text(self) -> str:
        """The verdict in one line of plain text, as the CLI prints it."""
        if self.kind == NOT_BRAIN_MRI:
            return f"{self.title}: {'; '.join(self.reasons)}" if self.reasons else self.title
        return f"{self.title} ({self.details.replace('**', '')})"


def format_probability(p: float) -> str:
    """A probability for people: one decimal, never a rounded "100%" or "0%"."""
    if p > 0.999:
        return "> 99.9%"
    if p < 0.001:
        return "< 0.1%"
    return f"{p:.1%}"


def decide_verdict(
    probabilities: Mapping[str, float],
    *,
    brain_mri: bool,
    uncertainty_threshold: float,
    reasons: Sequence[str] = (),
    mri_score: float | None = None,
) -> Verdict:
    """The verdict of one result (see the module docstring for the policy).

    Args:
        probabilities: Class name -> probability for one input (the model's output).
        brain_mri: The learned check's answer for the input.
        uncertainty_threshold: Below this top probability the result is uncertain.
        reasons: Why the check flagged the input, for people (used when ``brain_mri``
            is False).
        mri_score: The check's score, kept in the verdict.

    Returns:
        The :class:`Verdict`.
    """
    probabilities = {str(c): float(p) for c, p in probabilities.items()}
    label = max(probabilities, key=probabilities.get)
    top = probabilities[label]
    evidence = {"probabilities": probabilities, "mri_score": mri_score}
    if not brain_mri:
        bullets = "\n".join(f"- {reason}" for reason in reasons or ["it does not pass the brain MRI check"])
        return Verdict(
            NOT_BRAIN_MRI,
            NOT_BRAIN_MRI,
            None,
            "Not a brain MRI",
            "This does not look like a brain MRI slice",
            f"The image check found that\n\n{bullets}\n\nThe model only knows brain MRI slices, "
            "so it gives no tumor type for this image.",
            tuple(reasons),
            **evidence,
        )
    tumour = 1.0 - probabilities[NO_TUMOR] if NO_TUMOR in probabilities else None
    if top < uncertainty_threshold and label != NO_TUMOR and tumour is not None and tumour >= uncertainty_threshold:
        # Sure of a tumour, not of its type: "uncertain" would hide the finding, a type would overclaim.
        return Verdict(
            "tumor",
            label,
            None,
            "Tumor, type uncertain",
            "Tumor detected, type uncertain",
            f"Probability of a tumor: {format_probability(tumour)}. Its type is not clear: the most likely, "
            f"**{label}**, has {format_probability(top)} (a type needs {uncertainty_threshold:.0%}).",
            **evidence,
        )
    if top < uncertainty_threshold:
        return Verdict(
            "uncertain",
            label,
            None,
            "Uncertain",
            "Uncertain: no verdict",
            f"The model's most likely class, **{label}**, has only {format_probability(top)} probability "
            f"(a verdict needs {uncertainty_threshold:.0%}). No tumor type is given for this scan.",
            **evidence,
        )
    if label == NO_TUMOR:
        return Verdict("no_tumor", label, None, label, "No tumor detected", f"Probability of no tumor: {format_probability(top)}.", **evidence)
    if label == _BINARY_TUMOR:
        return Verdict(
            "tumor", label, None, label, "Tumor detected",
            f"Probability of a tumor: {format_probability(top)}. This model does not tell the type.",
            **evidence,
        )
    return Verdict("tumor", label, label, label, f"Tumor detected: {label}", f"Probability of {label}: {format_probability(top)}.", **evidence)


def judge_batch(
    decoded: Sequence[DecodedImage], proba: np.ndarray, classes: Sequence[str], uncertainty_threshold: float, *, engine: str = "torch"
) -> list[Verdict]:
    """:func:`decide_verdict` for each decoded input and its probabilities; the MRI check runs once on the batch.

    ``engine`` is the backend the check's backbone runs on (``torch`` or ``onnx``: the
    classifier's own, so that one decision has one code path).
    """
    check = MRICheck.load()  # loaded once per process, shared by threads
    scores, reasons = check.assess(decoded, engine=engine)
    return [
        decide_verdict(
            dict(zip(classes, row)),
            brain_mri=bool(score >= check.threshold),
            uncertainty_threshold=uncertainty_threshold,
            reasons=why,
            mri_score=float(score),
        )
        for row, score, why in zip(proba, scores, reasons)
    ]
