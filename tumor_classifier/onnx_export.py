"""Export a classifier (one model or a whole ensemble) to one ONNX graph, verified.

What :func:`export_onnx` writes into a folder::

    model.onnx                 pixel_values float32 (batch, C, S, S) -> logits (batch, k);
                               an ensemble's mean of member logits and its temperature
                               are inside the graph; batch is a dynamic axis
    onnx_config.json           labels (id2label), input size, opset, exporter versions,
                               the source model's fingerprint, the verification figures
    preprocessor_config.json   the preprocessing (the standard ViTImageProcessor keys plus
                               this package's crop-to-head settings)

How: ``torch.onnx.export(..., dynamo=True)`` (the ``torch.export``-based exporter,
default since torch 2.9; opset :data:`OPSET`). Not ``optimum``: its exporters moved to
``optimum-onnx``, whose only release (0.1.0) requires ``transformers<4.58`` and
``optimum~=2.1`` while this package needs transformers 5; and it knows transformers'
stock architectures only, not :class:`~tumor_classifier.ensemble.EnsembleForImageClassification`
or the EfficientNet-Lite wrapper. The legacy TorchScript exporter (``dynamo=False``)
exports in a second instead of about ten, but torch marks it deprecated and to be removed.

After export the graph is run with onnxruntime on real MRI slices (the package's
examples unless ``images`` are given), one at a time and as one batch, against the torch
model; the largest probability difference is returned, logged, stored in
``onnx_config.json`` and printed by ``tumor-classifier export``, and the export fails
with :class:`~tumor_classifier.exceptions.ExportError` above ``tolerance`` (nothing is
left in the folder then). ``quantize=True`` also writes ``model.int8.onnx``: onnxruntime's
dynamic int8 quantisation of the MatMul / Gemm weights only (per channel), with its
agreement with torch on the same images stored beside. Quantising the convolutions too
made ConvNeXt slower than eager torch on these CPUs.

Needs the ``[onnx]`` extra (onnx, onnxscript, onnxruntime).

Example:
    >>> clf = TumorClassifier.from_pretrained()                     # doctest: +SKIP
    >>> result = clf.export_onnx("exported/")                       # doctest: +SKIP
    >>> print(result.summary())                                     # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import math
import os
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .exceptions import ExportError, InvalidArgumentError, MissingDependencyError
from .onnx_backend import (
    INPUT_NAME,
    INSTALL_HINT,
    ONNX_CONFIG_NAME,
    ONNX_FORMAT,
    ONNX_MODEL_NAME,
    OUTPUT_NAME,
    OnnxClassifier,
    import_onnxruntime,
)
from .model_folder import check_writable_folder, read_json_limited
from .preprocessing import PROCESSOR_CONFIG_NAME, MRIPreprocessor

__all__ = [
    "OPSET",
    "OnnxExport",
    "cached_graph_dir",
    "export_onnx",
    "fresh_graph_dir",
    "model_fingerprint",
    "require_exporter",
    "run_exporter",
]

_LOGGER = logging.getLogger(__name__)
#: ONNX opset of the exported graphs (torch 2.13's exporter default; onnxruntime >= 1.17 runs it).
OPSET = 20
#: Largest accepted difference of any class probability, ONNX against torch, in float32.
DEFAULT_TOLERANCE = 1e-4
#: The int8 graph written beside the float one with ``quantize=True``.
INT8_MODEL_NAME = "model.int8.onnx"
#: Real slices shipped with the package, used to verify an export when no images are given.
EXAMPLES_DIR = Path(__file__).parent / "examples"
#: The files of a model folder whose bytes decide its graph (a single model or an ensemble).
_FINGERPRINT_PATTERNS = ("config.json", "model.safetensors", "ensemble.json", "members/*/config.json", "members/*/model.safetensors")


@dataclass(frozen=True)
class OnnxExport:
    """What :func:`export_onnx` wrote and how well it matched torch.

    Attributes:
        directory: The folder holding ``model.onnx``, ``onnx_config.json`` and
            ``preprocessor_config.json``.
        n_images: Real images the graph was verified on.
        max_probability_difference: Largest |ONNX - torch| of any class probability.
        tolerance: The limit it had to stay under.
        int8_path: ``model.int8.onnx`` when quantised, else ``None``.
        int8_identical_labels: Images whose int8 label equals torch's (``None`` unless quantised).
        int8_max_probability_difference: Largest |int8 - torch| probability difference.
    """

    directory: Path
    n_images: int
    max_probability_difference: float
    tolerance: float
    int8_path: Path | None = None
    int8_identical_labels: int | None = None
    int8_max_probability_difference: float | None = None

    def summary(self) -> str:
        """One or two lines for a log or a terminal."""
        text = (
            f"ONNX graph (opset {OPSET}) written to {self.directory / ONNX_MODEL_NAME}; on {self.n_images} real "
            f"images its probabilities differ from torch's by at most {self.max_probability_difference:.1e} "
            f"(tolerance {self.tolerance:.0e})"
        )
        if self.int8_path is not None:
            text += (
                f"\nint8 graph written to {self.int8_path}: {self.int8_identical_labels}/{self.n_images} labels as "
                f"torch's, probabilities within {self.int8_max_probability_difference:.3f}"
            )
        return text


class _LogitsGraph(torch.nn.Module):
    """``forward(pixel_values) -> logits``: what the graph computes, for any of our models."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).logits


def require_exporter() -> None:
    missing = [name for name in ("onnx", "onnxscript") if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingDependencyError(
            f"Exporting to ONNX needs {' and '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not "
            f"installed. Install them with {INSTALL_HINT}."
        )
    import_onnxruntime()


#: Loggers of the exporter and the quantizer whose warnings a user cannot act on: torch's
#: op registry ("torchvision is not installed. Skipping torchvision::nms") and
#: onnxruntime's quantizer, which warns on the root logger ("consider pre-processing").
_NOISY_LOGGERS = ("torch.onnx._internal.exporter._registration", "")


@contextmanager
def _without_exporter_noise():
    """Silences the exporter's and quantizer's own warnings (their FutureWarnings and
    warning-level log lines) while they run; errors still come through."""
    loggers = [logging.getLogger(name) if name else logging.getLogger() for name in _NOISY_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def run_exporter(
    module: torch.nn.Module, input_shape: tuple[int, ...], path: Path, *, output_name: str, what: str
) -> None:
    """``torch.onnx.export`` of ``module(pixel_values)`` with a dynamic batch axis, opset :data:`OPSET`.

    Args:
        module: A module in eval mode taking one float32 tensor (batch, *input_shape).
        input_shape: The input's shape without the batch axis.
        path: The ``.onnx`` file to write (no external data files).
        output_name: The graph output's name.
        what: What is exported, for the error message.

    Raises:
        ExportError: The exporter failed.
    """
    device = next(module.parameters()).device
    # Batch 2 in the example: with 1 the exporter may specialise the batch axis.
    example = torch.zeros(2, *input_shape, device=device)
    try:
        with _without_exporter_noise():
            torch.onnx.export(
                module,
                (example,),
                path,
                input_names=[INPUT_NAME],
                output_names=[output_name],
                opset_version=OPSET,
                dynamo=True,
                external_data=False,
                dynamic_shapes={INPUT_NAME: {0: torch.export.Dim("batch", min=1, max=4096)}},
                verbose=False,
            )
    except Exception as error:  # the exporter raises many types
        raise ExportError(f"torch.onnx.export failed for {what}: {type(error).__name__}: {error}") from error


def check_agreement(difference: float, tolerance: float, *, compared: str, n_images: int, directory: Path, advice: str) -> None:
    """Refuses an exported graph whose outputs differ from torch's by more than ``tolerance``.

    Args:
        difference: The largest absolute difference measured (NaN is refused too).
        tolerance: The largest accepted.
        compared: What was compared, as the subject of the message ("The exported graph's probabilities").
        n_images: How many real images were compared.
        directory: Where nothing was written.
        advice: The sentence that says what to do.

    Raises:
        ExportError: Above the tolerance.
    """
    if not difference <= tolerance:  # also catches NaN
        raise ExportError(
            f"{compared} differ from torch's by {difference:.3g} on {n_images} real images, above the tolerance "
            f"{tolerance:g}; nothing was written to {directory}. {advice}"
        )


def check_tolerance(tolerance: Any, *, name: str = "tolerance") -> float:
    """The largest accepted probability difference, refused unless a finite number >= 0.

    A negative or NaN tolerance fails every graph (and the failure would blame the
    exporter); an infinite one accepts any. Probabilities lie in [0, 1].

    Raises:
        InvalidArgumentError: ``tolerance`` is not a finite number >= 0.
    """
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not (math.isfinite(tolerance) and tolerance >= 0):
        shown = f"{tolerance:g}" if isinstance(tolerance, float) else repr(tolerance)
        raise InvalidArgumentError(
            f"{name} {shown}: give the largest accepted probability difference against torch, "
            f"a finite number >= 0 (default {DEFAULT_TOLERANCE:g})."
        )
    return float(tolerance)


def model_fingerprint(folder: str | os.PathLike, preprocessor: MRIPreprocessor) -> str:
    """SHA-256 over what decides a model folder's graph: its configs, weights and preprocessing.

    Args:
        folder: A single-model or ensemble folder.
        preprocessor: The preprocessing the model is used with (its settings are hashed,
            not the file, so writing the same settings again changes nothing).

    Returns:
        A hex digest; it changes whenever a config, a weight file or the preprocessing changes.
    """
    folder = Path(folder)
    digest = hashlib.sha256(ONNX_FORMAT.encode())
    digest.update(json.dumps(preprocessor.to_hf_dict(), sort_keys=True).encode() + b"\0")
    files = sorted({path for pattern in _FINGERPRINT_PATTERNS for path in folder.glob(pattern) if path.is_file()})
    for path in files:
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def cached_graph_dir(fingerprint: str) -> Path:
    """Where the graph of a model with this fingerprint is cached.

    Under ``$TUMOR_CLASSIFIER_CACHE/onnx`` (default ``~/.cache/tumor_classifier/onnx``),
    the cache the package's prepared pixels use.
    """
    root = Path(os.environ.get("TUMOR_CLASSIFIER_CACHE", Path.home() / ".cache" / "tumor_classifier"))
    return root / "onnx" / fingerprint[:32]


def fresh_graph_dir(folder: str | os.PathLike, preprocessor: MRIPreprocessor, *, hub_id: str | None = None) -> tuple[Path | None, str]:
    """Where a graph of the model in ``folder`` is, if one was exported from exactly it.

    Looks in the folder itself (a model folder may carry ``model.onnx``), then in the
    cache (:func:`cached_graph_dir`). A graph whose ``onnx_config.json`` names another
    fingerprint was exported from other weights or preprocessing and is passed over,
    with a warning when it sits in the model folder.

    Args:
        folder: The model folder.
        preprocessor: Its preprocessing.
        hub_id: The Hub repository ``folder`` is a downloaded snapshot of: the warning
            then names the repository, never the snapshot (the Hub cache is not for writing).

    Returns:
        ``(directory or None, fingerprint)``.
    """
    fingerprint = model_fingerprint(folder, preprocessor)
    for candidate in (Path(folder), cached_graph_dir(fingerprint)):
        config_path = candidate / ONNX_CONFIG_NAME
        if not (candidate / ONNX_MODEL_NAME).is_file() or not config_path.is_file():
            continue
        config = read_json_limited(config_path)
        if isinstance(config, dict) and config.get("source_fingerprint") == fingerprint:
            return candidate, fingerprint
        if candidate == Path(folder):
            mend = (
                "Its owner can re-export it (`tumor-classifier export --format onnx MODEL_DIR MODEL_DIR`) and push it again."
                if hub_id else f"Re-export it with `tumor-classifier export --format onnx {folder} {folder}`."
            )
            warnings.warn(
                f"{f'The model.onnx of the Hub repository {hub_id}' if hub_id else candidate / ONNX_MODEL_NAME} was exported "
                f"from other weights or preprocessing than the model {'beside it' if hub_id else f'in {folder}'}, so it is "
                f"not used; a fresh graph is exported to the cache. {mend}",
                stacklevel=3,
            )
    return None, fingerprint


def _verification_pixels(preprocessor: MRIPreprocessor, images: Sequence[Any] | None) -> np.ndarray:
    sources = list(images) if images is not None else sorted(EXAMPLES_DIR.glob("*.jpg"))
    if not sources:
        raise ExportError(f"No images to verify the export on (none given, and none in {EXAMPLES_DIR}).")
    return np.stack([preprocessor.prepare_array(source) for source in sources])


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def _onnx_proba(graph: OnnxClassifier, pixels: np.ndarray, preprocessor: MRIPreprocessor) -> np.ndarray:
    """Probabilities of the uint8 images one at a time and as one batch: (2, n, k)."""
    values = graph.normalize(pixels, preprocessor.mean, preprocessor.std)
    single = np.concatenate([graph.logits(values[i : i + 1]) for i in range(len(values))])
    return np.stack([_softmax(single), _softmax(graph.logits(values))])


def _quantize(fp32_path: Path, int8_path: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _without_exporter_noise():
        quantize_dynamic(
            fp32_path, int8_path, op_types_to_quantize=["MatMul", "Gemm"], per_channel=True, weight_type=QuantType.QInt8
        )


def _check_preprocessing(directory: Path, preprocessor: MRIPreprocessor) -> None:
    existing = directory / PROCESSOR_CONFIG_NAME
    if existing.is_file() and MRIPreprocessor.from_pretrained(directory) != preprocessor:
        raise ExportError(
            f"{existing} describes other preprocessing ({MRIPreprocessor.from_pretrained(directory)}) than the "
            f"model being exported ({preprocessor}); export into the model's own folder or an empty one."
        )


def export_onnx(
    model: torch.nn.Module,
    preprocessor: MRIPreprocessor,
    directory: str | os.PathLike,
    *,
    images: Sequence[Any] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    quantize: bool = False,
    fingerprint: str | None = None,
) -> OnnxExport:
    """Exports ``model`` to ``directory/model.onnx`` and verifies it against torch.

    Args:
        model: A transformers image classifier or an ensemble, as ``TumorClassifier.model_``.
        preprocessor: Its preprocessing, written beside the graph.
        directory: Target folder (created if missing); may be the model's own folder,
            which then carries the graph for ``from_pretrained(..., backend="onnx")``.
        images: Real images to verify on (anything :func:`load_image` reads); default
            the four slices shipped in ``tumor_classifier/examples``.
        tolerance: Largest accepted probability difference, ONNX against torch.
        quantize: Also write ``model.int8.onnx`` (dynamic int8 MatMul / Gemm) and its
            agreement with torch on the same images.
        fingerprint: :func:`model_fingerprint` of the folder the model came from, stored
            so a loader can tell a stale graph; ``None`` for a model with no folder.

    Returns:
        An :class:`OnnxExport` with the verification figures.

    Raises:
        MissingDependencyError: onnx, onnxscript or onnxruntime is not installed.
        ExportError: The exporter failed, or the graph's probabilities differ from the
            torch model's by more than ``tolerance`` (no file is left behind then), or
            ``directory`` already holds a different preprocessing.
        InvalidArgumentError: ``directory`` is a file, lies under one, or is not writable, or
            ``tolerance`` is not a finite number >= 0.
        InvalidImageError: A verification image cannot be read.

    Example:
        >>> export_onnx(clf.model_, clf.preprocessor_, "exported/")      # doctest: +SKIP
    """
    check_tolerance(tolerance)
    require_exporter()
    directory = check_writable_folder(directory, name="The export folder", what="the graph")
    _check_preprocessing(directory, preprocessor)
    pixels = _verification_pixels(preprocessor, images)
    graph_module = _LogitsGraph(model).eval()
    device = next(model.parameters()).device
    with torch.inference_mode():
        reference = torch.softmax(graph_module(preprocessor.normalize(torch.from_numpy(pixels)).to(device)).float(), -1)
    reference = reference.cpu().numpy()
    config = {
        "format": ONNX_FORMAT,
        "opset": OPSET,
        "input": INPUT_NAME,
        "output": OUTPUT_NAME,
        "image_size": preprocessor.size,
        "num_channels": preprocessor.num_channels,
        "id2label": {str(i): str(name) for i, name in sorted(model.config.id2label.items(), key=lambda kv: int(kv[0]))},
        "backbone": getattr(model.config, "backbone_name", model.config.model_type),
        "model_type": model.config.model_type,
        "ensemble_members": len(getattr(model, "members", ())) or None,
        "ensemble_temperature": getattr(model, "temperature", None) if hasattr(model, "members") else None,
        "source_fingerprint": fingerprint,
        "exporter": f"torch.onnx.export(dynamo=True), torch {torch.__version__}, "
        f"onnxscript {importlib.metadata.version('onnxscript')}",
    }
    created = [folder for folder in (directory, *directory.parents) if not folder.exists()]  # deepest first
    directory.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(prefix=".onnx-export-", dir=directory) as staging:
            staging = Path(staging)
            run_exporter(graph_module, (preprocessor.num_channels, preprocessor.size, preprocessor.size), staging / ONNX_MODEL_NAME,
                         output_name=OUTPUT_NAME, what=type(model).__name__)
            (staging / ONNX_CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
            graph = OnnxClassifier.load(staging, threads=torch.get_num_threads())
            difference = float(np.abs(_onnx_proba(graph, pixels, preprocessor) - reference[None]).max())
            _LOGGER.info("ONNX export check: max |probability difference| against torch %.2e on %d real images", difference, len(pixels))
            check_agreement(difference, tolerance, compared="The exported graph's probabilities", n_images=len(pixels),
                            directory=directory, advice="The exporter mistranslated an operation; report it with the model's config.")
            config["verification"] = {"images": len(pixels), "max_probability_difference": difference, "tolerance": tolerance}
            int8 = {}
            if quantize:
                _quantize(staging / ONNX_MODEL_NAME, staging / INT8_MODEL_NAME)
                proba8 = _int8_proba(staging, pixels, preprocessor)
                int8 = {
                    "int8_identical_labels": int((proba8.argmax(1) == reference.argmax(1)).sum()),
                    "int8_max_probability_difference": float(np.abs(proba8 - reference).max()),
                }
                config["int8"] = {"file": INT8_MODEL_NAME, "quantization": "dynamic int8, MatMul/Gemm weights, per channel",
                                  "images": len(pixels), **int8}
            (staging / ONNX_CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
            for name in (ONNX_MODEL_NAME, ONNX_CONFIG_NAME, INT8_MODEL_NAME):
                if (staging / name).is_file():
                    os.replace(staging / name, directory / name)
            if not quantize:
                (directory / INT8_MODEL_NAME).unlink(missing_ok=True)  # would describe other weights
    except BaseException:
        # "Nothing was written": not even the folders made for the graph.
        for folder in created:
            try:
                folder.rmdir()
            except OSError:
                break
        raise
    if not (directory / PROCESSOR_CONFIG_NAME).is_file():
        preprocessor.save_pretrained(directory)
    return OnnxExport(
        directory=directory,
        n_images=len(pixels),
        max_probability_difference=difference,
        tolerance=tolerance,
        int8_path=directory / INT8_MODEL_NAME if quantize else None,
        **int8,
    )


def _int8_proba(staging: Path, pixels: np.ndarray, preprocessor: MRIPreprocessor) -> np.ndarray:
    """Probabilities of the int8 graph on ``pixels``, as one batch."""
    graph = OnnxClassifier.load(staging, threads=torch.get_num_threads(), graph_name=INT8_MODEL_NAME)
    return _softmax(graph.logits(graph.normalize(pixels, preprocessor.mean, preprocessor.std)))
