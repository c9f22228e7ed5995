"""One error hierarchy for the package. Imports nothing of ours."""

from sklearn.exceptions import NotFittedError as _SklearnNotFittedError


class TumorClassifierError(Exception):
    """Base class of every error this package raises on purpose."""


class InvalidArgumentError(TumorClassifierError, ValueError):
    """An argument outside what a function accepts (an unknown method, a negative size ...).

    Also a ``ValueError``, so ``except ValueError`` catches it as it would a builtin's.
    """


class InvalidImageError(TumorClassifierError, ValueError):
    """An input could not be read as an image (corrupt, empty, unsupported, too large)."""


class InvalidDatasetError(TumorClassifierError, ValueError):
    """A data source is missing, empty or not in a layout we can read."""


class InvalidVolumeError(InvalidImageError):
    """A volume (NIfTI, DICOM, array) could not be read: dimensions, values, series, modality."""


class UnknownBackboneError(TumorClassifierError, KeyError):
    """A backbone name that is not in the registry."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it readable
        return str(self.args[0]) if self.args else ""


class NotFittedError(TumorClassifierError, _SklearnNotFittedError):
    """An inference method was called before `fit` or `from_pretrained`."""


class ModelLoadError(TumorClassifierError, OSError):
    """A model folder or Hub repository could not be loaded."""


class NonFiniteOutputError(TumorClassifierError, FloatingPointError):
    """A model answered NaN or infinite logits, so it has no probabilities to give."""


class MissingDependencyError(TumorClassifierError, ImportError):
    """An optional dependency (an extra such as ``[onnx]``) is not installed; the message says which."""


class ExportError(TumorClassifierError, RuntimeError):
    """An export (e.g. to ONNX) failed or its result did not match the source model."""


class HubUploadError(TumorClassifierError, ConnectionError):
    """An upload to the Hugging Face Hub failed: the endpoint is unreachable, offline mode is on,
    or the Hub refused the request; the message names the endpoint and what failed."""
