"""One error hierarchy for the package. Imports nothing of ours.

:class:`NotFittedError` also subclasses scikit-learn's, whose import costs about two
seconds (scikit-learn imports SciPy and pandas): the class is built on first access
(PEP 562 ``__getattr__``), so the command line and ``import tumor_classifier`` do
without it.
"""

from typing import Any


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


class TimePointRequiredError(InvalidVolumeError):
    """A 4-D volume (time points or channels) read without choosing a time point.

    ``time_points`` is how many it holds. The message names the library's ``time_point=``
    and the command line's ``--time-point``; a front end without those options (the app)
    recognises this class and says what it accepts instead.
    """

    def __init__(self, message: str, time_points: int) -> None:
        super().__init__(message, time_points)  # both in args: the error pickles and copies whole
        self.time_points = time_points

    def __str__(self) -> str:
        return str(self.args[0])


class UnknownBackboneError(TumorClassifierError, KeyError):
    """A backbone name that is not in the registry."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it readable
        return str(self.args[0]) if self.args else ""


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


def _not_fitted_error() -> type:
    from sklearn.exceptions import NotFittedError as SklearnNotFittedError

    class NotFittedError(TumorClassifierError, SklearnNotFittedError):
        """An inference method was called before `fit` or `from_pretrained`."""

    NotFittedError.__module__, NotFittedError.__qualname__ = __name__, "NotFittedError"  # pickles by name
    return NotFittedError


def __getattr__(name: str) -> Any:
    if name == "NotFittedError":
        globals()[name] = value = _not_fitted_error()  # built once: one class for every caller
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
