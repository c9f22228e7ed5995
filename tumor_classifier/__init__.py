"""Brain-tumor MRI classification: glioma, meningioma, pituitary tumor, or no tumor.

Example:
    >>> from tumor_classifier import TumorClassifier
    >>> clf = TumorClassifier.from_pretrained()  # doctest: +SKIP
    >>> clf.predict("scan.jpg")                  # doctest: +SKIP
    array(['glioma'], dtype=object)

Not a medical device: a research tool that must not be used for diagnosis.

The public names are imported on first use (PEP 562 ``__getattr__``): ``import
tumor_classifier`` and the ``tumor-classifier`` command's ``--help`` load no torch,
transformers or scikit-learn; ``from tumor_classifier import TumorClassifier`` loads
what the classifier needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Public name -> the module (relative to this package) that defines it.
_EXPORTS = {
    "Explanation": "classifier",
    "TumorClassifier": "classifier",
    "BINARY_CLASS_NAMES": "data",
    "CLASS_NAMES": "data",
    "describe_folder": "data",
    "find_duplicates": "data",
    "load_mri_dataset": "data",
    "EnsembleForImageClassification": "ensemble",
    "build_ensemble": "ensemble",
    "HubUploadError": "exceptions",
    "InvalidArgumentError": "exceptions",
    "InvalidDatasetError": "exceptions",
    "InvalidImageError": "exceptions",
    "InvalidVolumeError": "exceptions",
    "ModelLoadError": "exceptions",
    "NonFiniteOutputError": "exceptions",
    "NotFittedError": "exceptions",
    "TimePointRequiredError": "exceptions",
    "TumorClassifierError": "exceptions",
    "UnknownBackboneError": "exceptions",
    "create_model": "models",
    "list_backbones": "models",
    "load_image": "decoding",
    "MRIPreprocessor": "preprocessing",
    "SliceSequenceConfig": "sequence_model",
    "SliceSequenceForVolumeClassification": "sequence_model",
    "load_sequence_model": "sequence_model",
    "assess_image": "quality",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


if TYPE_CHECKING:  # what static tools and IDEs see
    from .classifier import Explanation, TumorClassifier
    from .data import BINARY_CLASS_NAMES, CLASS_NAMES, describe_folder, find_duplicates, load_mri_dataset
    from .decoding import load_image
    from .ensemble import EnsembleForImageClassification, build_ensemble
    from .exceptions import (
        HubUploadError,
        InvalidArgumentError,
        InvalidDatasetError,
        InvalidImageError,
        ModelLoadError,
        NonFiniteOutputError,
        NotFittedError,
        TumorClassifierError,
        UnknownBackboneError,
    )
    from .models import create_model, list_backbones
    from .preprocessing import MRIPreprocessor
    from .quality import assess_image
    from .sequence_model import SliceSequenceConfig, SliceSequenceForVolumeClassification, load_sequence_model
