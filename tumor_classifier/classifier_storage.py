"""Where a :class:`~tumor_classifier.classifier.TumorClassifier`'s model lives: load, save, push, export.

The model folder is resolved here (the shipped default, a local folder or a Hub id),
its torch model or ONNX graph loaded, and a fitted classifier written back as a folder,
uploaded to the Hub or exported to ONNX. ``TumorClassifier``'s methods of the same names
delegate to these functions. transformers, onnxruntime and huggingface_hub are imported
inside the functions that need them, so the ONNX backend predicts without transformers.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data import as_sources
from .exceptions import InvalidArgumentError, ModelLoadError
from .hub import is_model_folder
from .model_folder import ENSEMBLE_CONFIG_NAME, MEMBERS_DIR, is_ensemble_folder, load_image_classifier, quiet_weights
from .mri_check import MRICheck
from .preprocessing import MRIPreprocessor

logger = logging.getLogger(__name__)

#: Inference backends of :meth:`TumorClassifier.from_pretrained`.
BACKENDS = ("torch", "onnx")
#: What ``from_pretrained(..., backend="onnx")`` also downloads: a graph exported from the weights.
ONNX_FILES = ("model.onnx", "onnx_config.json")
#: Folder of the model that ships inside the package.
DEFAULT_MODEL_DIR = Path(__file__).parent / "default_model"
#: What a model card shows beside the weights: pushed with the card it came with.
CARD_FILES = ("metrics.json", "*.png")
#: Files this package writes beside a model's weights that describe or stand in for that one
#: model: train_hf.py's record (train_config.json, log_history.json, metrics.json) and its
#: card's plots, and a graph exported into the folder (see ``onnx_export``'s int8 graph too).
#: Saving another model into the folder removes them (:func:`save_pretrained`); no other file.
MODEL_COMPANIONS = (
    "metrics.json",
    "train_config.json",
    "log_history.json",
    "loss_curve.png",
    "accuracy_curve.png",
    "confusion_matrix.png",
    "reliability.png",
    *ONNX_FILES,
)
#: What ``from_pretrained`` downloads from a Hub repository: a single model, or an ensemble
#: (``ensemble.json`` and one transformers folder per member under ``members/``).
MODEL_FILES = [
    "config.json",
    "model.safetensors",
    "preprocessor_config.json",
    "README.md",
    "metrics.json",
    "*.png",
    ENSEMBLE_CONFIG_NAME,
    "members/*/*",
]


def load_pretrained(
    cls, source, *, revision=None, cache_dir=None, local_files_only=False, token=None, backend="torch", **params: Any
):
    """:meth:`TumorClassifier.from_pretrained` (documented there): a fitted ``cls`` instance."""
    fixed = sorted(set(params) & {"image_size", "crop_to_head", "skull_strip", "backbone"})
    if fixed:
        raise InvalidArgumentError(
            f"{', '.join(fixed)} of a trained model come from its saved preprocessing and cannot be changed "
            "at load time; retrain with fit() or train_hf.py to change them."
        )
    if backend not in BACKENDS:
        raise InvalidArgumentError(f"Unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}.")
    if backend == "onnx":
        from .onnx_backend import import_onnxruntime

        import_onnxruntime()  # the install hint before minutes of download or export
    folder = resolve_model_folder(
        source, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only, token=token,
        extra_patterns=ONNX_FILES if backend == "onnx" else (),
    )
    # A Hub snapshot lives in the Hub cache: messages name the repository, never ask to write there.
    hub_id = str(source) if folder != DEFAULT_MODEL_DIR and not Path(str(source)).expanduser().is_dir() else None
    graph_dir = None
    try:
        # Every file is checked before transformers reads it (see model_folder): the
        # preprocessing first, then the config and safetensors weights; never pickles.
        has_preprocessing = (Path(folder) / "preprocessor_config.json").is_file()
        preprocessor = MRIPreprocessor.from_pretrained(folder) if has_preprocessing else None
        if backend == "onnx" and preprocessor is not None:
            from .onnx_export import fresh_graph_dir

            try:
                graph_dir, _ = fresh_graph_dir(folder, preprocessor, hub_id=hub_id)
            except ModelLoadError as error:  # an onnx_config.json that cannot be read
                raise ModelLoadError(f"{error} {_mend_graph(Path(folder), Path(folder), hub_id)}") from error
        # With a fresh graph the torch model waits until explain() needs it.
        model = load_torch_model(Path(folder)) if graph_dir is None else None
        if preprocessor is None:
            preprocessor = MRIPreprocessor.from_hf_dict(
                {"size": getattr(model.config, "image_size", 224)},
                source=f"{Path(folder) / 'config.json'} (image_size; there is no preprocessor_config.json)",
            )
    except ModelLoadError:
        raise  # already says which file or member failed
    except (OSError, ValueError) as error:  # includes malformed JSON
        raise ModelLoadError(f"Could not load the model in {folder}: {error}") from error
    graph = None
    if backend == "onnx":
        from .onnx_backend import OnnxClassifier
        from .onnx_export import cached_graph_dir, export_onnx, model_fingerprint

        if graph_dir is None:
            fingerprint = model_fingerprint(folder, preprocessor)
            graph_dir = export_onnx(model, preprocessor, cached_graph_dir(fingerprint), fingerprint=fingerprint).directory
        try:
            graph = OnnxClassifier.load(graph_dir, threads=torch.get_num_threads())
        except ModelLoadError as error:
            raise ModelLoadError(f"{error} {_mend_graph(Path(graph_dir), Path(folder), hub_id)}") from error
        MRICheck.load().prepare_engine("onnx")  # its graph too, exported once into the same cache
    backbone = getattr(model.config, "backbone_name", model.config.model_type) if model is not None else graph.config["backbone"]
    estimator = cls(backbone=backbone, image_size=preprocessor.size, crop_to_head=preprocessor.crop_to_head, skull_strip=preprocessor.skull_strip)
    estimator.set_params(**params)
    if model is not None:
        estimator._set_fitted(model, preprocessor, Path(folder))
    else:
        estimator.model_folder_, estimator.preprocessor_ = Path(folder), preprocessor
        estimator.classes_ = np.asarray(graph.class_names, dtype=object)
        estimator._load_torch_model = functools.partial(load_torch_model, Path(folder))
    estimator.backend_, estimator.onnx_model_ = backend, graph
    estimator.classes_ = canonical_classes(estimator.classes_)
    estimator.source_ = str(source) if source is not None else "default"
    return estimator


def canonical_classes(classes: Any) -> np.ndarray:
    """A loaded model's class names read through the package's aliases.

    A model saved elsewhere may spell the classes ``no_tumor``, ``glioma_tumor`` or
    ``normal`` (as the SARTAJ data does); the verdict, ``tumor_probability`` and
    ``evaluate`` know ``notumor``, ``glioma`` ... (:func:`~tumor_classifier.data.canonical_class_name`).
    A name with no alias stays as it is, and nothing is renamed when two names would
    become one. The model's own ``config.json`` is not changed.

    Returns:
        object array of the names, in the model's output order.
    """
    from .data import canonical_class_name
    from .exceptions import InvalidDatasetError

    names = []
    for name in classes:
        try:
            names.append(canonical_class_name(str(name)))
        except InvalidDatasetError:  # a class this package has no alias for (e.g. a binary "tumor")
            names.append(str(name))
    return np.asarray(names if len(set(names)) == len(names) else list(classes), dtype=object)


def _mend_graph(graph_dir: Path, folder: Path, hub_id: str | None = None) -> str:
    """What to do about a graph that would not load: in the model folder, or in the cache."""
    if graph_dir == folder and hub_id:
        return (
            f"It came with the Hub repository {hub_id}: its owner can re-export it (`tumor-classifier export --format "
            "onnx MODEL_DIR MODEL_DIR`) and push it again; until then load it with backend='torch'."
        )
    if graph_dir == folder:
        return (
            f"Re-export it with `tumor-classifier export --format onnx {folder} {folder}`, or delete it and its "
            f"{ONNX_FILES[1]} to have a graph exported into the cache."
        )
    return f"It is a cached export of the model in {folder}: delete it (or the folder {graph_dir}) to have it exported again."


def export_onnx(estimator, directory: str | os.PathLike, *, images: Any = None, tolerance: float | None = None, quantize: bool = False):
    """:meth:`TumorClassifier.export_onnx` of a fitted ``estimator`` (documented there)."""
    from .onnx_export import DEFAULT_TOLERANCE, export_onnx as export, model_fingerprint

    folder = estimator.model_folder_
    fingerprint = model_fingerprint(folder, estimator.preprocessor_) if folder is not None else None
    return export(
        estimator.model_, estimator.preprocessor_, directory, images=None if images is None else as_sources(images),
        tolerance=DEFAULT_TOLERANCE if tolerance is None else tolerance, quantize=quantize, fingerprint=fingerprint,
    )


def save_pretrained(estimator, directory: str | os.PathLike) -> Path:
    """:meth:`TumorClassifier.save_pretrained` of a fitted ``estimator`` (documented there).

    A folder holds one model. Saved over another model, the files this package wrote for
    that one (:data:`MODEL_COMPANIONS`: train_hf.py's train_config.json and log history,
    the card's metrics and plots, an exported ONNX graph) are removed with it, and a warning
    names those the new model does not replace: left behind, they would describe or stand in
    for a model that is gone (``make_ensemble`` reads train_config.json). Files the package
    did not write stay. Saved back into its own folder, a model keeps them all.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    from .ensemble import EnsembleForImageClassification

    own_folder = _is_own_folder(estimator, directory)
    ensemble = isinstance(estimator.model_, EnsembleForImageClassification)
    removed = [] if own_folder else _remove_companions(directory)

    if ensemble:
        stale = [directory / "config.json", directory / "model.safetensors"]
    else:
        stale = [directory / ENSEMBLE_CONFIG_NAME]
        shutil.rmtree(directory / MEMBERS_DIR, ignore_errors=True)
    for path in stale:
        path.unlink(missing_ok=True)
    with quiet_weights():
        estimator.model_.save_pretrained(directory)
    estimator.preprocessor_.save_pretrained(directory)
    _write_card(estimator, directory, own_folder=own_folder, ensemble=ensemble)
    gone = [name for name in removed if not (directory / name).exists()]
    if gone:
        logger.warning(
            "%s held another model's %s; removed, as they described that model. Save into a new or empty "
            "folder to keep a trained folder whole.", directory, ", ".join(gone),
        )
    return directory


def _is_own_folder(estimator, directory: Path) -> bool:
    """Whether ``directory`` is the folder the estimator's model was loaded from."""
    source = estimator.model_folder_
    return source is not None and Path(source).resolve() == directory.resolve()


def _remove_companions(directory: Path) -> list[str]:
    """Removes the :data:`MODEL_COMPANIONS` (and an int8 graph) in ``directory``; returns their names."""
    from .onnx_export import INT8_MODEL_NAME

    found = [name for name in (*MODEL_COMPANIONS, INT8_MODEL_NAME) if (directory / name).is_file()]
    for name in found:
        (directory / name).unlink()
    return found


def _write_card(estimator, directory: Path, *, own_folder: bool, ensemble: bool) -> None:
    """The model card of a saved folder: a loaded model keeps its folder's card and what the
    card shows; a model fitted here gets one from what fit measured (and its metrics.json);
    any other a card that claims nothing but the classes. ``own_folder``: ``directory`` is
    the folder the model was loaded from; ``ensemble``: the model is an ensemble."""
    import json

    from .reports import write_model_card, write_plain_model_card

    source = estimator.model_folder_
    if source is not None and (source / "README.md").is_file():
        if own_folder:
            return  # saved back into its own folder: the card is already there
        # The card shows the folder's plots and figures: they travel with it.
        for companion in sorted({path for pattern in ("README.md", *CARD_FILES) for path in source.glob(pattern) if path.is_file()}):
            shutil.copyfile(companion, directory / companion.name)
        return
    measured = estimator.__dict__.get("fit_metrics_") if source is None else None
    if measured is None:
        write_plain_model_card(directory, list(estimator.classes_), ensemble=ensemble)
        return
    (directory / "metrics.json").write_text(json.dumps(measured, indent=2) + "\n")
    write_model_card(directory, measured, [], list(estimator.classes_))


def push_to_hub(estimator, repo_id: str, *, token: str | None = None, private: bool | None = None, commit_message: str) -> str:
    """:meth:`TumorClassifier.push_to_hub` of a fitted ``estimator`` (documented there)."""
    from .hub import check_hub_reachable, push_folder_to_hub

    check_hub_reachable()
    with tempfile.TemporaryDirectory(prefix="tumor-classifier-push-") as folder:
        save_pretrained(estimator, folder)  # with its model card and what the card shows
        return push_folder_to_hub(folder, repo_id, token=token, private=private, commit_message=commit_message)


#: Serialises the first load of a deferred torch model (``backend="onnx"``).
_DEFERRED_LOAD_LOCK = threading.Lock()


def load_deferred_model(estimator) -> None:
    """Loads the torch model an ONNX-backed ``estimator`` deferred, once, on first use (explain, save)."""
    from .attributions import default_method

    with _DEFERRED_LOAD_LOCK:
        loader = estimator.__dict__.pop("_load_torch_model", None)
        if loader is not None:
            model = loader().eval()
            estimator.attribution_method_ = default_method(model)
            estimator.model_ = model


def load_torch_model(folder: Path) -> torch.nn.Module:
    """The checked float32 model of a single-model or ensemble folder."""
    from . import models  # noqa: F401 - registers this package's backbones with transformers' Auto classes
    from .ensemble import EnsembleForImageClassification

    if is_ensemble_folder(folder):
        return EnsembleForImageClassification.from_pretrained(folder)
    return load_image_classifier(folder)  # float32, whatever the stored dtype


def resolve_model_folder(source, *, revision=None, cache_dir=None, local_files_only=False, token=None, extra_patterns=()) -> Path:
    """The folder of ``source``: the shipped default (``None``), a local folder, or a Hub snapshot."""
    if source is None:
        if not is_model_folder(DEFAULT_MODEL_DIR):
            raise ModelLoadError(
                f"No default model is shipped in {DEFAULT_MODEL_DIR}; pass a model folder or Hub id."
            )
        return DEFAULT_MODEL_DIR
    path = Path(source).expanduser()
    if path.is_dir():
        if not is_model_folder(path):
            raise ModelLoadError(_not_a_model_folder(path))
        return path
    if path.exists():
        raise ModelLoadError(f"{path} is a file; expected a model folder written by save_pretrained, train_hf.py or build_ensemble, or a Hub model id (org/name).")
    text = str(source)
    if text.startswith(("/", ".", "~", "\\")) or text.count("/") > 1 or "\\" in text:
        # A Hub id is "name" or "org/name": this was meant as a folder.
        raise ModelLoadError(f"{text} does not exist; expected a model folder written by save_pretrained, train_hf.py or build_ensemble, or a Hub model id (org/name).")
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    endpoint = constants.ENDPOINT
    try:
        return Path(
            snapshot_download(
                text,
                revision=revision,
                cache_dir=cache_dir,
                local_files_only=local_files_only,
                token=token,
                allow_patterns=MODEL_FILES + list(extra_patterns),
            )
        )
    except RevisionNotFoundError as error:
        raise ModelLoadError(
            f"The Hub model {text!r} at {endpoint} has no revision {revision!r}; give a branch, tag or commit id it has "
            "(or no revision, for main)."
        ) from error
    except RepositoryNotFoundError as error:
        raise ModelLoadError(
            f"{text!r} is not a local folder, and the Hub at {endpoint} has no model repository {text!r} "
            "(or it is private: log in with `hf auth login` or pass token=)."
        ) from error
    except LocalEntryNotFoundError as error:
        why = (
            "local_files_only=True" if local_files_only
            else "offline mode is on (HF_HUB_OFFLINE)" if constants.is_offline_mode()
            else f"the Hub at {endpoint} cannot be reached"
        )
        raise ModelLoadError(
            f"{text!r} is not a local folder, and it is not in the Hub cache{'' if revision is None else f' at revision {revision!r}'} "
            f"while {why}; download it once online, or give a model folder."
        ) from error
    except HFValidationError as error:
        raise ModelLoadError(
            f"{text!r} is neither a local folder nor a valid Hub model id (org/name: letters, digits, '-', '_' and '.')."
        ) from error
    except (HfHubHTTPError, OSError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ModelLoadError(
            f"Could not download the Hub model {text!r} from {endpoint} ({type(error).__name__}: {first_line})."
        ) from error


def _not_a_model_folder(path: Path) -> str:
    graph = [name for name in ONNX_FILES if (path / name).is_file()]
    if graph:  # what `export --format onnx MODEL OUT` writes into another folder
        return (
            f"{path} holds an exported ONNX graph ({', '.join(graph)}) but no model (config.json and model.safetensors). "
            "from_pretrained and --model take the model folder it was exported from; with backend 'onnx' a graph "
            "exported into that folder (`tumor-classifier export --format onnx MODEL_DIR MODEL_DIR`) is used as it is. "
            "A graph-only folder is for onnxruntime itself."
        )
    return (
        f"{path} has no config.json (nor {ENSEMBLE_CONFIG_NAME}); expected a folder written by "
        "save_pretrained, train_hf.py or build_ensemble."
    )
