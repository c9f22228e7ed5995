"""Batched forward passes of a classifier's model: probabilities from torch or ONNX.

Every pass runs through :func:`finite`, so a broken model raises instead of answering
NaN probabilities. :data:`model_passes` is the lock the passes (and the attribution
methods' hooked passes) hold.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .exceptions import NonFiniteOutputError
from .folding import folded_network
from .locking import PerObjectLocks
from .preprocessing import MRIPreprocessor, PreparedImage

#: One re-entrant lock per torch model (weak keys: it goes with the model), held for the
#: model's forward and backward passes only. Attribution methods hook the model's layers
#: for the length of their passes, so a forward pass of another thread meanwhile would run
#: through those hooks. Decoding, the MRI check and overlays stay outside, so a large
#: upload never holds up other callers' passes (the web app relies on this).
model_passes = PerObjectLocks()


def pixel_values(preprocessor: MRIPreprocessor, chunk: Sequence[PreparedImage], device: torch.device) -> torch.Tensor:
    """Normalised model input (n, C, size, size) on ``device``."""
    batch = torch.from_numpy(np.stack([np.asarray(p.image) for p in chunk]))
    return preprocessor.normalize(batch).to(device)


def torch_proba(model, preprocessor: MRIPreprocessor, prepared: Sequence[PreparedImage], batch_size: int, mirror: bool) -> np.ndarray:
    """Probabilities (n, k) in batches; with ``mirror`` averaged with those of the mirror images.

    A model in eval mode runs through its folded copy (:func:`~tumor_classifier.folding.folded_network`,
    which also says when a model runs itself): the same logits, cheaper (EfficientNet-Lite0
    at 160 px on 2 threads: a batch of 32 in about half the time).
    """
    outputs = []
    with model_passes(model), torch.inference_mode():
        network = folded_network(model)
        for start in range(0, len(prepared), batch_size):
            values = pixel_values(preprocessor, prepared[start : start + batch_size], model.device)
            proba = torch.softmax(finite(network(pixel_values=values).logits.float(), start), dim=-1)
            if mirror:
                mirrored = finite(network(pixel_values=values.flip(-1)).logits.float(), start)
                proba = (proba + torch.softmax(mirrored, dim=-1)) / 2
            outputs.append(proba.cpu().numpy())
    return np.concatenate(outputs)


def onnx_proba(graph, preprocessor: MRIPreprocessor, prepared: Sequence[PreparedImage], batch_size: int, mirror: bool) -> np.ndarray:
    """:func:`torch_proba` through an ONNX graph: numpy in and out, no torch operation."""
    outputs = []
    pixels = np.stack([np.asarray(p.image) for p in prepared])
    for start in range(0, len(pixels), batch_size):
        values = graph.normalize(pixels[start : start + batch_size], preprocessor.mean, preprocessor.std)
        proba = softmax(finite(graph.logits(values), start))
        if mirror:
            mirrored = finite(graph.logits(np.ascontiguousarray(values[..., ::-1])), start)
            proba = (proba + softmax(mirrored)) / 2
        outputs.append(proba)
    return np.concatenate(outputs)


def finite(logits, first: int, what: str = "logits"):
    """``logits`` (n, k), a tensor or a numpy array, unchanged; a NaN or infinity would turn into NaN probabilities.

    ``first`` is the index of row 0 among all the images (for the message), ``what`` names
    the rows there (``"embeddings"`` for a backbone's output).
    """
    bad = np.flatnonzero(~np.isfinite(logits.detach().cpu().numpy() if torch.is_tensor(logits) else logits).all(axis=-1))
    if bad.size:
        raise NonFiniteOutputError(
            f"The model answered NaN or infinite {what} for image {first + int(bad[0])} "
            f"({bad.size} image(s) in this batch), so it has no probabilities to give. Its weights are "
            "broken or overflow on this input; retrain or re-export the model."
        )
    return logits


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float32."""
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return (shifted / shifted.sum(axis=-1, keepdims=True)).astype(np.float32)
