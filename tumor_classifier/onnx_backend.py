"""Runs an exported classifier graph with onnxruntime: prepared pixels in, logits out.

The graph is the one :func:`tumor_classifier.onnx_export.export_onnx` writes
(``model.onnx``), described by the ``onnx_config.json`` beside it (labels, input size,
opset, where it came from and how well it matched the torch model). This module only
*runs* graphs; it needs ``onnxruntime`` and numpy, not the exporter's ``onnx`` /
``onnxscript``, and it never touches torch.

Normalisation happens here in numpy, not in torch: a torch operation right before
``session.run`` keeps torch's OpenMP threads spinning next to onnxruntime's and costs
several milliseconds an image on two cores.

Example:
    >>> graph = OnnxClassifier.load("exported/")                     # doctest: +SKIP
    >>> graph.logits(graph.normalize(uint8_images)).shape             # doctest: +SKIP
    (4, 4)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .exceptions import MissingDependencyError, ModelLoadError
from .model_folder import read_json_limited

__all__ = [
    "ONNX_CONFIG_NAME",
    "ONNX_FORMAT",
    "ONNX_MODEL_NAME",
    "OnnxClassifier",
    "import_onnxruntime",
    "open_session",
]

ONNX_MODEL_NAME = "model.onnx"
ONNX_CONFIG_NAME = "onnx_config.json"
ONNX_FORMAT = "tumor-classifier-onnx"
INPUT_NAME = "pixel_values"
OUTPUT_NAME = "logits"
#: Largest graph read (protobuf's own limit is 2 GB; the shipped ConvNeXt is 14 MB).
MAX_GRAPH_BYTES = 2**31 - 1
INSTALL_HINT = 'pip install "tumor-classifier[onnx]"'


def import_onnxruntime() -> Any:
    """Imports and returns ``onnxruntime``.

    Raises:
        MissingDependencyError: onnxruntime is not installed; the message says how to
            install it and that ``backend="torch"`` needs nothing more.
    """
    try:
        import onnxruntime
    except ImportError as error:
        raise MissingDependencyError(
            f"The ONNX backend needs onnxruntime, which is not installed ({error}). Install it with "
            f'{INSTALL_HINT}, or use backend="torch" (the default), which needs nothing more.'
        ) from error
    return onnxruntime


def normalize(batch: np.ndarray, mean: float, std: float, num_channels: int) -> np.ndarray:
    """uint8 (n, S, S) prepared images -> float32 (n, num_channels, S, S) pixel values.

    The same arithmetic as :meth:`MRIPreprocessor.normalize` (float32 throughout), so
    both backends see the same input to within one rounding step.
    """
    pixels = (batch.astype(np.float32) / np.float32(255.0) - np.float32(mean)) / np.float32(std)
    return np.ascontiguousarray(np.broadcast_to(pixels[:, None], (len(batch), num_channels, *batch.shape[1:])))


def _check_config(config: Any, path: Path) -> dict[str, Any]:
    if not isinstance(config, dict) or config.get("format") != ONNX_FORMAT:
        raise ModelLoadError(f"{path} is not a {ONNX_FORMAT!r} description (its 'format' is missing or different).")
    id2label = config.get("id2label")
    if not isinstance(id2label, dict) or set(id2label) != {str(i) for i in range(len(id2label))} or not id2label:
        raise ModelLoadError(f"{path} has no 'id2label' map of the class indices 0..n-1 to names.")
    if not all(isinstance(name, str) and name for name in id2label.values()):
        raise ModelLoadError(f"{path} has an id2label whose class names are not all non-empty strings.")
    for key in ("image_size", "num_channels"):
        value = config.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ModelLoadError(f"{path} has {key} {value!r}; expected a positive integer.")
    return config


def open_session(graph_path: Path, *, threads: int | None = None) -> Any:
    """An onnxruntime CPU session of one graph file, read from bytes.

    Reading bytes means the graph cannot refer to external data files (the exporter
    writes none; a graph that does fails here instead of reading files elsewhere).

    Args:
        graph_path: The ``.onnx`` file.
        threads: onnxruntime intra-op threads; ``None`` for its default (one per physical core).

    Raises:
        MissingDependencyError: onnxruntime is not installed.
        ModelLoadError: The file is unreadable, too large or not a graph onnxruntime runs.
    """
    ort = import_onnxruntime()
    try:
        size = graph_path.stat().st_size
        if size > MAX_GRAPH_BYTES:
            raise ModelLoadError(f"{graph_path} is {size} bytes; a graph is accepted up to {MAX_GRAPH_BYTES} bytes.")
        data = graph_path.read_bytes()
    except OSError as error:
        raise ModelLoadError(f"Cannot read {graph_path}: {error.strerror or error}.") from error
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    # No spin-waiting after a run: with backend="onnx" two sessions (the classifier's and
    # the MRI check's) alternate on every image, and one's spinning threads held the cores
    # the other needed. Measured, single-image predict of the shipped model, 2 threads on
    # a shared 2-core machine: 51 ms spinning, 18 ms without.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own Fail / InvalidGraph types
        raise ModelLoadError(f"onnxruntime cannot load {graph_path}: {type(error).__name__}: {error}") from error


class OnnxClassifier:
    """An exported classifier graph in an onnxruntime session.

    Use :meth:`load`. Calls to :meth:`logits` may come from several threads at once
    (onnxruntime's ``run`` is thread-safe).

    Attributes:
        path: The ``model.onnx`` file.
        config: The parsed ``onnx_config.json``.
        class_names: Class names in output order (from ``id2label``).
        session: The ``onnxruntime.InferenceSession``.
    """

    def __init__(self, path: Path, config: dict[str, Any], session: Any) -> None:
        self.path = path
        self.config = config
        self.session = session
        self.class_names = [config["id2label"][str(i)] for i in range(len(config["id2label"]))]

    @classmethod
    def load(cls, directory: str | os.PathLike, *, threads: int | None = None, graph_name: str = ONNX_MODEL_NAME) -> "OnnxClassifier":
        """Opens ``model.onnx`` and ``onnx_config.json`` from ``directory``.

        The graph is read from bytes, so it cannot refer to external data files (the
        exporter writes none; a graph that does fails here instead of reading files
        outside the folder).

        Args:
            directory: A folder written by :func:`~tumor_classifier.onnx_export.export_onnx`.
            threads: onnxruntime intra-op threads; ``None`` for its default (one per
                physical core).
            graph_name: The graph file in ``directory`` (``model.int8.onnx`` for the
                quantised one).

        Raises:
            MissingDependencyError: onnxruntime is not installed.
            ModelLoadError: A file is missing or malformed, or the graph's input and output
                do not match its description.
        """
        import_onnxruntime()
        directory = Path(directory)
        config_path, graph_path = directory / ONNX_CONFIG_NAME, directory / graph_name
        config = _check_config(read_json_limited(config_path), config_path)
        session = open_session(graph_path, threads=threads)
        inputs, outputs = session.get_inputs(), session.get_outputs()
        expected_in = [config["num_channels"], config["image_size"], config["image_size"]]
        if len(inputs) != 1 or inputs[0].name != INPUT_NAME or list(inputs[0].shape[1:]) != expected_in:
            found = [(i.name, i.shape) for i in inputs]
            raise ModelLoadError(
                f"{graph_path} takes {found}; {config_path} describes one input {INPUT_NAME!r} of shape "
                f"[batch, {', '.join(map(str, expected_in))}]. Re-export the model."
            )
        if not outputs or outputs[0].name != OUTPUT_NAME or list(outputs[0].shape[1:]) != [len(config["id2label"])]:
            found = [(o.name, o.shape) for o in outputs]
            raise ModelLoadError(
                f"{graph_path} answers {found}; expected {OUTPUT_NAME!r} of shape [batch, {len(config['id2label'])}] "
                f"(the classes in {config_path}). Re-export the model."
            )
        return cls(graph_path, config, session)

    def normalize(self, batch: np.ndarray, mean: float, std: float) -> np.ndarray:
        """uint8 (n, S, S) prepared images -> float32 pixel values for :meth:`logits`."""
        return normalize(batch, mean, std, self.config["num_channels"])

    def logits(self, pixel_values: np.ndarray) -> np.ndarray:
        """Runs the graph.

        Args:
            pixel_values: float32 (n, C, S, S), normalised as the model expects.

        Returns:
            float32 (n, n_classes) logits (ensemble mean and temperature already applied).
        """
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(pixel_values, dtype=np.float32)})[0]
