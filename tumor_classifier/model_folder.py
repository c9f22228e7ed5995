"""Checks a model folder before anything in it is parsed by transformers or safetensors.

A model folder may come from anyone (a Hub repository, an e-mail attachment), so every
file is read here with limits first, and every problem becomes a
:class:`~tumor_classifier.exceptions.ModelLoadError` that names the file and what is
wrong with it:

* JSON files (``config.json``, ``preprocessor_config.json``, ``ensemble.json``) are read
  with a size and a nesting limit (:func:`read_json_limited`);
* ``model.safetensors`` has its header validated byte by byte (:func:`check_safetensors`):
  a corrupt, truncated or oversized file is refused before the loader maps it;
* pickle weights (``pytorch_model.bin``, ``*.pt``, ``*.ckpt`` ...) are refused and never
  opened: unpickling runs whatever code the file names;
* ``config.json`` must describe labels ``0..n-1`` matching the classification head.

:func:`load_image_classifier` is the one way this package turns a single-model folder
into a model: checks, then transformers (safetensors only, float32), then a check that
no loaded weight is NaN or infinite.

This module imports nothing of ours but the exceptions, so the preprocessing, the
ensemble and the estimator can all use it; torch and transformers only when a model is
loaded, so a folder check (:func:`check_writable_folder`) costs no torch import.

Example:
    >>> check_model_folder("runs/seed0")                          # doctest: +SKIP
    >>> model = load_image_classifier("runs/seed0")               # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from .exceptions import ModelLoadError

if TYPE_CHECKING:
    import torch

#: The file that makes a folder an ensemble (see :mod:`tumor_classifier.ensemble`).
ENSEMBLE_CONFIG_NAME = "ensemble.json"
#: Sub-folder of an ensemble folder holding one transformers folder per member.
MEMBERS_DIR = "members"


def is_ensemble_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder written by ``EnsembleForImageClassification.save_pretrained``.

    Here rather than in :mod:`tumor_classifier.ensemble`, so that a caller which only
    looks at a folder (the ONNX backend) does not import transformers.
    """
    return (Path(path) / ENSEMBLE_CONFIG_NAME).is_file()

__all__ = [
    "check_model_folder",
    "check_safetensors",
    "load_image_classifier",
    "read_json_limited",
    "resolve_inside",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
#: Largest JSON config we read; real ones are a few kilobytes.
MAX_JSON_BYTES = 1_000_000
#: Deepest JSON nesting we accept; real configs nest 3 levels.
MAX_JSON_DEPTH = 64
#: Largest safetensors header; a 3.4 M-parameter model has a 15 kB one.
MAX_SAFETENSORS_HEADER_BYTES = 100_000_000
#: Most classes a config may declare.
MAX_LABELS = 10_000
#: Weight files in Python's pickle format: loading one can run arbitrary code.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
#: Bytes per element of each safetensors dtype (sub-byte formats are not accepted).
SAFETENSORS_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
    "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
    "U32": 4, "I32": 4, "F32": 4,
    "U64": 8, "I64": 8, "F64": 8,
}  # fmt: skip
#: The classification head's bias in the backbones we ship (ConvNeXt, ViT, ResNet, EfficientNet).
_HEAD_BIAS = re.compile(r"(?:^|\.)(?:classifier|_fc)(?:\.\d+)?\.bias$")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _depth_exceeds(value: Any, limit: int) -> bool:
    """Whether ``value`` nests deeper than ``limit`` containers (iterative, no recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False


def _parse_json(data: bytes, source: Path | str, max_depth: int) -> Any:
    try:
        value = json.loads(data.decode("utf-8"))
    except RecursionError:
        raise ModelLoadError(
            f"{source} nests JSON more than {max_depth} levels deep; a model file never does. Replace the file."
        ) from None
    except ValueError as error:  # includes UnicodeDecodeError and JSONDecodeError
        raise ModelLoadError(f"{source} is not valid UTF-8 JSON ({error}); replace the file.") from None
    if _depth_exceeds(value, max_depth):
        raise ModelLoadError(
            f"{source} nests JSON more than {max_depth} levels deep; a model file never does. Replace the file."
        )
    return value


def read_json_limited(path: str | os.PathLike, *, max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Reads a JSON file of at most ``max_bytes`` nesting at most ``max_depth`` levels.

    Args:
        path: The file.
        max_bytes: Largest accepted file size.
        max_depth: Deepest accepted nesting of objects and arrays.

    Returns:
        The parsed value (any JSON type; the caller checks its shape).

    Raises:
        ModelLoadError: The file is missing, unreadable, too large, too deeply nested or
            not valid JSON; the message names it.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if path.is_file() and size <= max_bytes:
            with path.open("rb") as handle:
                data = handle.read(max_bytes + 1)  # the file may have grown since stat
            size = len(data)
    except OSError as error:
        raise ModelLoadError(f"Cannot read {path}: {error.strerror or error}.") from error
    if not path.is_file():
        raise ModelLoadError(f"{path} is not a regular file.")
    if size > max_bytes:
        raise ModelLoadError(f"{path} is {size} bytes; a JSON config is accepted up to {max_bytes} bytes.")
    return _parse_json(data, path, max_depth)


def check_safetensors(path: str | os.PathLike) -> dict[str, list[int]]:
    """Validates a safetensors file's header against the file, reading only the header.

    The format is an 8-byte little-endian header length N, N bytes of JSON
    ``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``,
    then the tensor data, offsets counted from its start.

    Args:
        path: The ``.safetensors`` file.

    Returns:
        Tensor name -> shape, as the header declares them.

    Raises:
        ModelLoadError: The file is too short, declares a header longer than the file or
            than 100 MB, has a header that is not a JSON object, or a tensor whose dtype is
            unknown, whose shape is not a list of sizes, or whose bytes lie outside the
            file, overlap another's or do not match dtype x shape. The message names the
            file and the tensor.
    """
    path = Path(path)
    refuse = "; the file is corrupt or not a safetensors file. Re-save the model with save_pretrained."
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            prefix = handle.read(8)
            length = int.from_bytes(prefix, "little") if len(prefix) == 8 else None
            header = handle.read(length) if length is not None and length <= min(size - 8, MAX_SAFETENSORS_HEADER_BYTES) else b""
    except OSError as error:
        raise ModelLoadError(f"Cannot read {path}: {error.strerror or error}.") from error
    if length is None:
        raise ModelLoadError(f"{path} is {size} bytes, shorter than the 8-byte header length{refuse}")
    if length > MAX_SAFETENSORS_HEADER_BYTES:
        raise ModelLoadError(
            f"{path} declares a {length}-byte header; at most {MAX_SAFETENSORS_HEADER_BYTES} bytes are accepted{refuse}"
        )
    if length == 0 or length > size - 8 or len(header) != length:
        raise ModelLoadError(f"{path} declares a {length}-byte header but holds {size} bytes in all{refuse}")
    entries = _parse_json(header, f"The header of {path}", MAX_JSON_DEPTH)
    if not isinstance(entries, dict):
        raise ModelLoadError(f"The header of {path} is a JSON {type(entries).__name__}, not an object{refuse}")
    data_size = size - 8 - length
    shapes: dict[str, list[int]] = {}
    spans: list[tuple[int, int, str]] = []
    for name, entry in entries.items():
        if name == "__metadata__":
            if entry is not None and not (isinstance(entry, dict) and all(isinstance(v, str) for v in entry.values())):
                raise ModelLoadError(f"The '__metadata__' of {path} is not a map of strings{refuse}")
            continue
        where = f"Tensor {name!r} in {path}"
        if not isinstance(entry, dict):
            raise ModelLoadError(f"{where} is described by a JSON {type(entry).__name__}, not an object{refuse}")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in SAFETENSORS_DTYPE_BYTES:
            raise ModelLoadError(f"{where} has dtype {dtype!r}; accepted: {', '.join(SAFETENSORS_DTYPE_BYTES)}{refuse}")
        if not isinstance(shape, list) or not all(_is_int(n) and n >= 0 for n in shape):
            raise ModelLoadError(f"{where} has shape {shape!r}, not a list of non-negative sizes{refuse}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(n) for n in offsets)):
            raise ModelLoadError(f"{where} has data_offsets {offsets!r}, not a [begin, end] pair of integers{refuse}")
        expected = math.prod(shape) * SAFETENSORS_DTYPE_BYTES[dtype]
        if expected > data_size:
            raise ModelLoadError(
                f"{where} declares {expected} bytes ({dtype} {shape}) but the file holds only {data_size} bytes "
                f"of tensor data{refuse}"
            )
        begin, end = offsets
        if not 0 <= begin <= end <= data_size:
            raise ModelLoadError(
                f"{where} has data_offsets [{begin}, {end}] outside the {data_size} bytes of tensor data "
                f"(truncated?){refuse}"
            )
        if end - begin != expected:
            raise ModelLoadError(
                f"{where} spans {end - begin} bytes but {dtype} {shape} needs {expected}{refuse}"
            )
        shapes[name] = shape
        spans.append((begin, end, name))
    if sum(end - begin for begin, end, _ in spans) > data_size:
        raise ModelLoadError(f"The tensors in {path} declare more bytes than the file holds{refuse}")
    spans.sort()
    for (_, previous_end, previous), (begin, _, name) in zip(spans, spans[1:]):
        if begin < previous_end:
            raise ModelLoadError(f"Tensors {previous!r} and {name!r} in {path} overlap{refuse}")
    return shapes


def _check_weights(folder: Path) -> dict[str, list[int]]:
    """Validates the safetensors weights of ``folder``; refuses pickle-only folders."""
    single, index = folder / WEIGHTS_NAME, folder / WEIGHTS_INDEX_NAME
    if single.is_file():
        return check_safetensors(single)
    if index.is_file():
        description = read_json_limited(index, max_bytes=20 * MAX_JSON_BYTES)  # one entry per tensor
        weight_map = description.get("weight_map") if isinstance(description, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise ModelLoadError(f"{index} has no 'weight_map' of tensor names to shard files.")
        shapes: dict[str, list[int]] = {}
        for shard in sorted(set(weight_map.values()), key=str):
            if not (isinstance(shard, str) and shard.endswith(".safetensors") and Path(shard).name == shard and shard != ".safetensors"):
                raise ModelLoadError(f"{index} names the shard {shard!r}; shards must be .safetensors files beside it.")
            if not (folder / shard).is_file():
                raise ModelLoadError(f"{index} names the shard {shard}, which is missing from {folder}.")
            shapes.update(check_safetensors(folder / shard))
        return shapes
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise ModelLoadError(
            f"{folder} holds its weights only as pickle ({', '.join(pickles)}), which is refused and never opened: "
            f"unpickling a file can run any code it names. Expected {WEIGHTS_NAME}; convert trusted weights with "
            "save_pretrained (transformers writes safetensors)."
        )
    raise ModelLoadError(f"{folder} has no {WEIGHTS_NAME}; expected a folder written by save_pretrained or train_hf.py.")


def _check_config(path: Path) -> int:
    """Validates ``config.json``; returns its number of labels."""
    config = read_json_limited(path)
    if not isinstance(config, dict):
        raise ModelLoadError(f"{path} is a JSON {type(config).__name__}; a model config is a JSON object.")
    if not isinstance(config.get("model_type"), str):
        raise ModelLoadError(f"{path} has no 'model_type' string; expected a config written by save_pretrained.")
    id2label = config.get("id2label")
    if id2label is None:
        count = config.get("num_labels", 2)
        if not _is_int(count) or not 1 <= count <= MAX_LABELS:
            raise ModelLoadError(f"{path} has num_labels {count!r}; expected an integer from 1 to {MAX_LABELS}.")
        return count
    if not isinstance(id2label, dict) or not 1 <= len(id2label) <= MAX_LABELS:
        raise ModelLoadError(f"{path} has an 'id2label' that is not a map of 1 to {MAX_LABELS} class ids to names.")
    expected = {str(i) for i in range(len(id2label))}
    if set(id2label) != expected:
        raise ModelLoadError(
            f"{path} has id2label keys {sorted(id2label, key=lambda k: (len(k), k))[:10]}; "
            f"they must be the class indices 0..{len(id2label) - 1}, each once."
        )
    if not all(isinstance(name, str) and name for name in id2label.values()):
        raise ModelLoadError(f"{path} has an id2label whose class names are not all non-empty strings.")
    return len(id2label)


def check_model_folder(path: str | os.PathLike) -> None:
    """Validates a single-model folder before transformers reads it.

    Checks ``config.json`` (size, nesting, a JSON object with ``model_type`` and labels
    ``0..n-1``), the safetensors weights (see :func:`check_safetensors`; pickle weights
    are refused unopened) and that the classification head has one output per label.
    ``preprocessor_config.json`` is validated by ``MRIPreprocessor.from_pretrained``.

    Raises:
        ModelLoadError: Something is missing or wrong; the message names the file.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise ModelLoadError(f"{folder} is not a folder; expected a model folder written by save_pretrained.")
    n_labels = _check_config(folder / CONFIG_NAME)
    shapes = _check_weights(folder)
    heads = {name: shape for name, shape in shapes.items() if _HEAD_BIAS.search(name) and len(shape) == 1}
    if len(heads) == 1:
        (head, shape), = heads.items()
        if shape[0] != n_labels:
            raise ModelLoadError(
                f"{folder / CONFIG_NAME} declares {n_labels} classes (id2label) but the classification head "
                f"{head!r} in {folder / WEIGHTS_NAME} has {shape[0]} outputs; the config does not belong to these weights."
            )


def check_writable_folder(path: str | os.PathLike, *, name: str, what: str) -> Path:
    """Refuses a folder to write into that cannot be one, before any work is done.

    Nothing is created: ``path``, or the nearest folder above it that exists, must be a
    writable folder.

    Args:
        path: The folder (it may not exist yet).
        name: How the message names it (``"--out"``, ``"The report folder"``).
        what: What goes there, for the message (``"the report"``).

    Returns:
        ``path`` as a ``Path``.

    Raises:
        InvalidArgumentError: ``path`` is a file, lies under a file, or cannot be written.
    """
    from .exceptions import InvalidArgumentError

    folder = Path(path)
    nearest = folder
    while not nearest.exists() and nearest.parent != nearest:
        nearest = nearest.parent
    if nearest == folder and not folder.is_dir():
        raise InvalidArgumentError(f"{name} {path} is a file, not a folder; give a folder for {what} (it is created if missing).")
    if not nearest.is_dir():
        raise InvalidArgumentError(f"{name} {path} cannot be created as a folder: {nearest} is a file. Give a folder for {what}.")
    if not os.access(nearest, os.W_OK | os.X_OK):
        raise InvalidArgumentError(f"{name} {path} cannot be written: {nearest} is not writable by this user. Give a writable folder for {what}.")
    return folder


def resolve_inside(folder: str | os.PathLike, relative: str | os.PathLike, *, what: str) -> Path:
    """``folder / relative`` with links resolved, refused unless it lies inside ``folder``.

    Args:
        folder: The folder everything must stay in.
        relative: A path read from a file in ``folder`` (e.g. an ensemble member).
        what: Names the file the path came from, for the message.

    Raises:
        ModelLoadError: ``relative`` is absolute, climbs out with ``..`` or through a
            link, or names the folder itself.
    """
    root = Path(os.path.realpath(folder))
    target = Path(os.path.realpath(root / relative))
    if Path(relative).is_absolute() or target == root or root not in target.parents:
        raise ModelLoadError(
            f"{what} names {os.fspath(relative)!r}, which resolves to {target}, outside {root}; "
            "a model folder may only refer to folders inside itself."
        )
    return target


@contextlib.contextmanager
def quiet_weights() -> Iterator[None]:
    """Without transformers' "Loading weights" / "Writing model shards" progress bars.

    Loading a model should be silent. The switch is process-wide in transformers, so it is
    turned back on afterwards only if it was on before.
    """
    from transformers.utils import logging as transformers_logging

    was_enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            transformers_logging.enable_progress_bar()


class _LoadReportFilter(logging.Filter):
    """Drops transformers' key-by-key load report of one folder (refused with our own message)."""

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.folder = str(folder)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("LOAD REPORT" in message and self.folder in message)


@contextlib.contextmanager
def _without_load_report(folder: Path) -> Iterator[None]:
    """Without transformers' load report for ``folder``: :func:`_check_loading` refuses what it
    would list, in one message. Only the report naming this folder is dropped, so a load in
    another thread keeps its own."""
    logger = logging.getLogger("transformers.modeling_utils")
    report_filter = _LoadReportFilter(folder)
    logger.addFilter(report_filter)
    try:
        yield
    finally:
        logger.removeFilter(report_filter)


def _check_loading(loading: dict[str, Any], folder: Path, model_type: str) -> None:
    """Refuses a model some of whose weights were not in the file: transformers would have
    filled them with random values, and the model would answer noise.

    Raises:
        ModelLoadError: Weights missing from ``model.safetensors`` or of another shape; the
            message counts them and names a few.
    """
    missing = sorted(loading.get("missing_keys") or ())
    mismatched = sorted(str(entry[0]) for entry in loading.get("mismatched_keys") or ())
    if not missing and not mismatched:
        return  # weights in the file that the model does not use are harmless
    unused = sorted(loading.get("unexpected_keys") or ())
    found = [
        f"{len(names)} {what} ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"
        for names, what in ((missing, "weights missing"), (mismatched, "of another shape"), (unused, "in the file but not in the model"))
        if names
    ]
    raise ModelLoadError(
        f"{folder / CONFIG_NAME} (model_type {model_type!r}) and {folder / WEIGHTS_NAME} do not match: "
        f"{'; '.join(found)}. The config does not belong to these weights (another architecture or size); "
        "put back the config.json saved with them, or save the model again with save_pretrained."
    )


def load_image_classifier(path: str | os.PathLike) -> torch.nn.Module:
    """Checks a single-model folder and loads it: safetensors only, float32, eval mode.

    Args:
        path: A folder written by ``save_pretrained`` / ``train_hf.py``.

    Returns:
        The transformers image-classification model, float32, in eval mode.

    Raises:
        ModelLoadError: The folder fails :func:`check_model_folder`, transformers cannot
            build the config or the model from it, the config describes weights the file
            does not hold (another architecture or size), or a weight is NaN or infinite.
    """
    import torch
    from transformers import AutoConfig, AutoModelForImageClassification

    from . import efficientnet  # noqa: F401 - registers EfficientNet-Lite with these Auto classes

    folder = Path(path)
    check_model_folder(folder)
    config_path = folder / CONFIG_NAME
    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
    except Exception as error:  # transformers raises many types for a bad config
        raise ModelLoadError(f"{config_path} is not a valid model config: {type(error).__name__}: {error}") from error
    try:
        # Sizes that differ are reported in the loading info (and refused below) rather than
        # raised by transformers with a pointer to its key-by-key report.
        with quiet_weights(), _without_load_report(folder):
            model, loading = AutoModelForImageClassification.from_pretrained(
                folder, config=config, dtype=torch.float32, use_safetensors=True, local_files_only=True,
                ignore_mismatched_sizes=True, output_loading_info=True,
            )
    except Exception as error:
        raise ModelLoadError(
            f"Could not load {folder / WEIGHTS_NAME} with {config_path}: {type(error).__name__}: {error}"
        ) from error
    _check_loading(loading, folder, config.model_type)
    broken = [
        name for name, tensor in model.state_dict().items() if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]
    if broken:
        raise ModelLoadError(
            f"{folder / WEIGHTS_NAME} holds NaN or infinite values in {len(broken)} tensor(s) "
            f"({', '.join(broken[:3])}); such a model cannot give probabilities. Retrain or re-export it."
        )
    return model.eval()
