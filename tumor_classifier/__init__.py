"""Brain-tumor MRI classification: glioma, meningioma, pituitary tumor, or no tumor.

Example:
    >>> from tumor_classifier import TumorClassifier
    >>> clf = TumorClassifier.from_pretrained()  # doctest: +SKIP
    >>> clf.predict("scan.jpg")                  # doctest: +SKIP
    array(['glioma'], dtype=object)

Not a medical device: a research tool that must not be used for diagnosis.
"""

from .classifier import Explanation, TumorClassifier
from .data import BINARY_CLASS_NAMES, CLASS_NAMES, describe_folder, find_duplicates, load_mri_dataset
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
from .decoding import load_image
from .preprocessing import MRIPreprocessor
from .quality import assess_image

__version__ = "0.1.0"

__all__ = [
    "BINARY_CLASS_NAMES",
    "CLASS_NAMES",
    "EnsembleForImageClassification",
    "Explanation",
    "HubUploadError",
    "InvalidArgumentError",
    "InvalidDatasetError",
    "InvalidImageError",
    "ModelLoadError",
    "NonFiniteOutputError",
    "MRIPreprocessor",
    "NotFittedError",
    "TumorClassifier",
    "TumorClassifierError",
    "UnknownBackboneError",
    "__version__",
    "assess_image",
    "build_ensemble",
    "create_model",
    "describe_folder",
    "find_duplicates",
    "list_backbones",
    "load_image",
    "load_mri_dataset",
]
