"""The CNN + LSTM slice-sequence model: a 2-D backbone per slice, a bidirectional LSTM over the slices.

:class:`SliceSequenceForVolumeClassification` encodes each slice of a volume with a 2-D
image model from the registry (:mod:`tumor_classifier.models`) whose classification head
is replaced by the identity, so the head's input, the image embedding, is what the LSTM
reads. A bidirectional LSTM runs over the embeddings of a volume's slices in order; the
volume label (``notumor`` / ``tumor``) comes from the mean and the maximum of its outputs
over the slices, and an optional per-slice head gives each slice a tumour logit.

Volumes of different lengths go in one batch padded, with ``attention_mask`` (B, S) saying
which slices are real; the LSTM reads them packed, so padding never changes a volume's
output.

The backbone is frozen by default (``freeze_backbone``): it stays in eval mode and takes no
gradient, so slice embeddings can be computed once and the LSTM trained on them alone
(``slice_embeddings=`` instead of ``pixel_values=``), seconds to minutes on two cores.

Saving: with ``backbone_source`` set (a model folder, or ``"default"`` for the package's
shipped model) the backbone's weights are read from there on load and *not* written by
``save_pretrained``, so a saved sequence model is its LSTM head (about 1 MB) plus
``config.json``. Without it the folder holds every weight. Either way the folder loads with
``AutoModel.from_pretrained`` after ``import tumor_classifier.sequence_model`` (importing
:mod:`tumor_classifier` and asking for :func:`load_sequence_model` does it).

Example:
    >>> backbone = create_model("resnet", class_names=["notumor", "tumor"], image_size=32,
    ...                         config_overrides={"hidden_sizes": [8, 8, 8, 8], "depths": [1, 1, 1, 1], "embedding_size": 8})
    >>> model = SliceSequenceForVolumeClassification.from_backbone(backbone, lstm_hidden_size=8).eval()
    >>> model(pixel_values=torch.rand(2, 5, 3, 32, 32)).logits.shape
    torch.Size([2, 2])
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForImageClassification, PretrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput

from .data import BINARY_CLASS_NAMES
from .exceptions import InvalidArgumentError, ModelLoadError
from .model_folder import quiet_weights
from .models import get_backbone, label_maps

#: ``backbone_source`` naming the model shipped in the package.
DEFAULT_SOURCE = "default"
#: What the LSTM can read of each slice (``SliceSequenceConfig.slice_features``).
SLICE_FEATURES = ("embedding", "logits")
#: Log-probabilities are clamped here: a memorised training slice's -40 and a -14 mean the same.
LOG_FLOOR = -14.0
#: The sequence model shipped in the package: its LSTM head on the shipped backbone.
DEFAULT_SEQUENCE_MODEL_DIR = Path(__file__).parent / "default_sequence_model"


class SliceSequenceConfig(PretrainedConfig):
    """Configuration of :class:`SliceSequenceForVolumeClassification`.

    Args:
        backbone_config: The 2-D image model's config as a dict (``config.to_dict()``,
            with its ``model_type`` and ``backbone_name``).
        backbone_source: Where the backbone's weights are read on load and not written on
            save: a model folder, or ``"default"`` (the shipped model); ``None`` keeps them
            in this model's own folder.
        freeze_backbone: Keep the backbone (and its image head) in eval mode without gradients.
        slice_features: What the LSTM reads of each slice: ``"embedding"`` (the image
            embedding) or ``"logits"`` (the 2-D classifier's log-probabilities, from its own
            head kept beside the backbone, clamped at -14).
        embedding_size: Width of the backbone's image embedding (set by ``from_backbone``).
        projection_size: The embedding is projected to this width before the LSTM.
        lstm_hidden_size: Hidden width of each LSTM direction.
        lstm_layers: Stacked LSTM layers.
        dropout: Dropout on the projection and before the heads.
        slice_head: Also give per-slice tumour logits (``slice_logits``).
        slice_loss_weight: Weight of the per-slice loss beside the volume loss.
    """

    model_type = "slice_sequence_lstm"

    def __init__(
        self,
        backbone_config: dict[str, Any] | None = None,
        backbone_source: str | None = None,
        freeze_backbone: bool = True,
        slice_features: str = "embedding",
        embedding_size: int = 0,
        projection_size: int = 128,
        lstm_hidden_size: int = 64,
        lstm_layers: int = 1,
        dropout: float = 0.2,
        slice_head: bool = True,
        slice_loss_weight: float = 0.5,
        **kwargs: Any,
    ):
        self.backbone_config = backbone_config
        self.backbone_source = backbone_source
        self.freeze_backbone = freeze_backbone
        self.slice_features = slice_features
        self.embedding_size = embedding_size
        self.projection_size = projection_size
        self.lstm_hidden_size = lstm_hidden_size
        self.lstm_layers = lstm_layers
        self.dropout = dropout
        self.slice_head = slice_head
        self.slice_loss_weight = slice_loss_weight
        if "id2label" not in kwargs and "num_labels" not in kwargs:
            kwargs["id2label"], kwargs["label2id"] = label_maps(BINARY_CLASS_NAMES)
        super().__init__(**kwargs)


@dataclass
class SliceSequenceOutput(ModelOutput):
    """``loss`` (scalar, with labels), ``logits`` (B, num_labels), ``slice_logits`` (B, S, 2) or None."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    slice_logits: torch.Tensor | None = None


def _backbone_config(config: SliceSequenceConfig) -> PretrainedConfig:
    if not isinstance(config.backbone_config, dict) or "model_type" not in config.backbone_config:
        raise ModelLoadError(
            f"SliceSequenceConfig.backbone_config must be a 2-D model's config as a dict with its model_type; "
            f"got {type(config.backbone_config).__name__}. Build the model with SliceSequenceForVolumeClassification.from_backbone."
        )
    settings = dict(config.backbone_config)
    return AutoConfig.for_model(settings.pop("model_type"), **settings)


def resolve_backbone_source(source: str | os.PathLike) -> Path:
    """The model folder ``backbone_source`` names (``"default"``: the shipped model)."""
    if str(source) == DEFAULT_SOURCE:
        from .classifier_storage import DEFAULT_MODEL_DIR

        return DEFAULT_MODEL_DIR
    return Path(source)


def _require_model_type(folder: Path, expected: str, what: str) -> None:
    """Checks the ``model_type`` of ``folder/config.json`` before any weight is read.

    Raises:
        ModelLoadError: The file is not a JSON object, or names another model type
            (the message reads "<folder> holds a 'x' model, not a '<expected>' <what>.").
    """
    config_file = folder / "config.json"
    try:
        settings = json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelLoadError(f"{config_file} is not valid JSON ({error}); save the model again with save_pretrained.") from None
    kind = settings.get("model_type") if isinstance(settings, dict) else None
    if kind != expected:
        raise ModelLoadError(f"{folder} holds a {kind!r} model, not a {expected!r} {what}.")


class SliceSequenceForVolumeClassification(PreTrainedModel):
    """A 2-D backbone per slice and a bidirectional LSTM over the slices; see the module docstring."""

    config_class = SliceSequenceConfig
    base_model_prefix = "sequence"
    main_input_name = "slice_embeddings"

    def __init__(self, config: SliceSequenceConfig):
        super().__init__(config)
        backbone_config = _backbone_config(config)
        head_layer = get_backbone(getattr(backbone_config, "backbone_name", "") or "").head_layer
        self.backbone = AutoModelForImageClassification.from_config(backbone_config)
        head = self.backbone.get_submodule(head_layer)
        if config.embedding_size and head.in_features != config.embedding_size:
            raise ModelLoadError(f"The backbone's embedding is {head.in_features} wide, the config says {config.embedding_size}.")
        config.embedding_size = head.in_features
        self.backbone.set_submodule(head_layer, nn.Identity())  # the backbone now answers embeddings
        if config.slice_features not in SLICE_FEATURES:
            raise ModelLoadError(f"slice_features must be one of {', '.join(SLICE_FEATURES)}; got {config.slice_features!r}.")
        # With "logits" the 2-D classifier's head turns each embedding into its class log-probabilities.
        self.image_head = head if config.slice_features == "logits" else None
        width = head.out_features if config.slice_features == "logits" else config.embedding_size
        self.projection = nn.Linear(width, config.projection_size)
        self.lstm = nn.LSTM(
            config.projection_size, config.lstm_hidden_size, num_layers=config.lstm_layers, batch_first=True, bidirectional=True,
            dropout=config.dropout if config.lstm_layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(4 * config.lstm_hidden_size, config.num_labels)  # mean and max over slices
        self.slice_classifier = nn.Linear(2 * config.lstm_hidden_size, 2) if config.slice_head else None
        if config.backbone_source is not None:
            self._keys_to_ignore_on_load_missing = {r"^backbone\.", r"^image_head\."}  # read from the source after loading
        self.post_init()
        self._freeze()

    def _freeze(self) -> None:
        for part in (self.backbone, self.image_head):
            if part is not None:
                part.requires_grad_(not self.config.freeze_backbone)

    def _init_weights(self, module: nn.Module) -> None:
        # The backbone keeps its own initialisation (or its loaded weights); only the new
        # heads are drawn small, so a fresh model starts near uniform probabilities.
        if module is getattr(self, "classifier", None) or module is getattr(self, "slice_classifier", None):
            nn.init.normal_(module.weight, std=0.01)
            nn.init.zeros_(module.bias)

    def train(self, mode: bool = True) -> "SliceSequenceForVolumeClassification":
        super().train(mode)
        if self.config.freeze_backbone:  # a frozen backbone keeps its batch-norm statistics
            self.backbone.eval()
            if self.image_head is not None:
                self.image_head.eval()
        return self

    # -- construction and storage ---------------------------------------------------
    @classmethod
    def from_backbone(
        cls, backbone: PreTrainedModel, *, backbone_source: str | os.PathLike | None = None, **config_kwargs: Any
    ) -> "SliceSequenceForVolumeClassification":
        """A new sequence model around a 2-D image model from the registry (its weights copied).

        Args:
            backbone: A model :func:`~tumor_classifier.models.create_model` built or a
                fine-tuned folder loaded; its config needs ``backbone_name``.
            backbone_source: Record where the backbone's weights live (a folder or
                ``"default"``) so that ``save_pretrained`` leaves them out.
            **config_kwargs: Other :class:`SliceSequenceConfig` settings.

        Raises:
            InvalidArgumentError: The backbone is not a registered image model.
        """
        name = getattr(backbone.config, "backbone_name", None)
        if not name:
            raise InvalidArgumentError(
                f"The backbone's config ({type(backbone.config).__name__}) has no backbone_name, so its head layer is unknown; "
                "build it with tumor_classifier.models.create_model or load a folder this package wrote."
            )
        get_backbone(name)
        source = None if backbone_source is None else str(backbone_source)
        settings = {k: v for k, v in backbone.config.to_dict().items() if k != "_name_or_path"}  # no local path in a shared config
        model = cls(SliceSequenceConfig(backbone_config=settings, backbone_source=source, **config_kwargs))
        model._load_backbone_state(backbone.state_dict(), repr(type(backbone).__name__))
        return model

    def _load_backbone_state(self, state: dict[str, torch.Tensor], where: str) -> None:
        head = get_backbone(self.config.backbone_config["backbone_name"]).head_layer
        if self.image_head is not None:
            head_state = {k[len(head) + 1 :]: v for k, v in state.items() if k.startswith(f"{head}.")}
            try:
                self.image_head.load_state_dict(head_state)
            except RuntimeError as error:
                raise ModelLoadError(f"The image head weights of {where} do not fit: {error}") from None
        state = {k: v for k, v in state.items() if not k.startswith(f"{head}.")}
        try:
            missing, unexpected = self.backbone.load_state_dict(state, strict=False)
        except RuntimeError as error:  # shapes differ
            raise ModelLoadError(f"The backbone weights of {where} do not fit this model's backbone: {error}") from None
        if missing or unexpected:
            raise ModelLoadError(f"The backbone weights of {where} do not match: missing {missing[:5]}, unexpected {unexpected[:5]}.")

    def load_backbone_weights(self, source: str | os.PathLike) -> None:
        """Reads the backbone's weights from a model folder (``model.safetensors``).

        Raises:
            ModelLoadError: The folder has no weights, another architecture, or weights
                that do not fit.
        """
        from safetensors.torch import load_file

        folder = resolve_backbone_source(source)
        weights, config_file = folder / "model.safetensors", folder / "config.json"
        if not weights.is_file() or not config_file.is_file():
            raise ModelLoadError(f"backbone_source {str(source)!r} ({folder}) has no config.json and model.safetensors to read the backbone from.")
        _require_model_type(folder, self.config.backbone_config["model_type"], "model like this sequence model's backbone")
        self._load_backbone_state(load_file(str(weights)), str(folder))

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> "SliceSequenceForVolumeClassification":
        model = super().from_pretrained(*args, **kwargs)
        if model.config.backbone_source is not None:
            model.load_backbone_weights(model.config.backbone_source)
        model._freeze()  # loading materialises new parameters, which take gradients again
        return model

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """``PreTrainedModel.save_pretrained``, without the backbone when ``backbone_source`` holds it."""
        if self.config.backbone_source is not None and "state_dict" not in kwargs:
            kwargs["state_dict"] = {k: v for k, v in self.state_dict().items() if not k.startswith(("backbone.", "image_head."))}
        super().save_pretrained(save_directory, **kwargs)

    # -- forward ----------------------------------------------------------------------
    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Slice embeddings: float (n, C, H, W) normalised pixels -> float32 (n, embedding_size)."""
        if pixel_values.ndim != 4:
            raise InvalidArgumentError(f"embed takes slices (n, C, H, W); got shape {tuple(pixel_values.shape)}.")
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_backbone):
            return self.backbone(pixel_values=pixel_values).logits.float()

    def _check_inputs(self, pixel_values, slice_embeddings, attention_mask) -> tuple[torch.Tensor, torch.Tensor]:
        if (pixel_values is None) == (slice_embeddings is None):
            raise InvalidArgumentError("Pass either pixel_values (B, S, C, H, W) or slice_embeddings (B, S, D), not both or neither.")
        if pixel_values is not None:
            if pixel_values.ndim != 5:
                raise InvalidArgumentError(
                    f"pixel_values must be volumes (B, S, C, H, W); got shape {tuple(pixel_values.shape)}. "
                    "For one volume add the batch axis: pixel_values[None]."
                )
            batch, length = pixel_values.shape[:2]
            slice_embeddings = self.embed(pixel_values.flatten(0, 1)).view(batch, length, -1)
        if slice_embeddings.ndim != 3 or slice_embeddings.shape[-1] != self.config.embedding_size:
            raise InvalidArgumentError(
                f"slice_embeddings must be (B, S, {self.config.embedding_size}); got shape {tuple(slice_embeddings.shape)}."
            )
        batch, length = slice_embeddings.shape[:2]
        if attention_mask is None:
            attention_mask = torch.ones(batch, length, dtype=torch.bool, device=slice_embeddings.device)
        if tuple(attention_mask.shape) != (batch, length):
            raise InvalidArgumentError(f"attention_mask must be (B, S) = {(batch, length)}; got {tuple(attention_mask.shape)}.")
        attention_mask = attention_mask.bool()
        if length == 0 or not bool(attention_mask.any(dim=1).all()):
            raise InvalidArgumentError("Every volume needs at least one slice (a row of attention_mask is all zeros, or S is 0).")
        return slice_embeddings.float(), attention_mask

    def forward(
        self,
        slice_embeddings: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        slice_labels: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> SliceSequenceOutput:
        """Volume (and per-slice) logits.

        Args:
            slice_embeddings: float (B, S, embedding_size), precomputed with :meth:`embed`.
            attention_mask: bool or 0/1 (B, S): real slices (True) and padding; all real if None.
            labels: int (B,) volume labels, for the loss.
            slice_labels: int (B, S) per-slice tumour labels (0/1, -100 to ignore), for
                the per-slice loss.
            pixel_values: float (B, S, C, H, W) instead of ``slice_embeddings``.

        Returns:
            :class:`SliceSequenceOutput`: ``logits`` (B, num_labels) and ``slice_logits``
            (B, S, 2) (padding rows hold zeros).

        Raises:
            InvalidArgumentError: Missing, doubled or misshapen inputs, or a volume without slices.
        """
        embeddings, mask = self._check_inputs(pixel_values, slice_embeddings, attention_mask)
        lengths = mask.sum(dim=1)
        if not bool((mask == (torch.arange(mask.shape[1], device=mask.device) < lengths[:, None])).all()):
            raise InvalidArgumentError("attention_mask must mark each volume's slices first and its padding after them (right padding).")
        if self.image_head is not None:
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_backbone):
                embeddings = torch.log_softmax(self.image_head(embeddings).float(), dim=-1).clamp(min=LOG_FLOOR)
        hidden = self.dropout(F.gelu(self.projection(embeddings)))
        packed = nn.utils.rnn.pack_padded_sequence(hidden, lengths.cpu(), batch_first=True, enforce_sorted=False)
        output, _ = self.lstm(packed)
        output, _ = nn.utils.rnn.pad_packed_sequence(output, batch_first=True, total_length=mask.shape[1])
        weights = mask.unsqueeze(-1).to(output.dtype)
        mean = (output * weights).sum(dim=1) / lengths[:, None].to(output.dtype)
        peak = output.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(dim=1)
        logits = self.classifier(self.dropout(torch.cat([mean, peak], dim=-1)))
        slice_logits = None
        if self.slice_classifier is not None:
            slice_logits = self.slice_classifier(self.dropout(output)) * weights
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits, labels.long())
            if slice_logits is not None and slice_labels is not None and self.config.slice_loss_weight > 0:
                targets = slice_labels.long().masked_fill(~mask, -100)
                if bool((targets != -100).any()):
                    loss = loss + self.config.slice_loss_weight * F.cross_entropy(slice_logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
        return SliceSequenceOutput(loss=loss, logits=logits, slice_logits=slice_logits)


def load_sequence_model(source: str | os.PathLike | None = None, **kwargs: Any) -> SliceSequenceForVolumeClassification:
    """Loads a saved sequence model in eval mode (``from_pretrained`` keywords pass through).

    Args:
        source: A folder ``save_pretrained`` wrote; ``None`` for the one shipped in the
            package (see its ``README.md`` for what it was trained and checked on).

    Raises:
        ModelLoadError: The folder is missing, not a sequence model, or its backbone source fails.
    """
    folder = DEFAULT_SEQUENCE_MODEL_DIR if source is None else Path(source)
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"{str(source)!r} is not a saved sequence model folder (no config.json); save one with save_pretrained.")
    _require_model_type(folder, SliceSequenceConfig.model_type, "sequence model")
    with quiet_weights():
        return SliceSequenceForVolumeClassification.from_pretrained(folder, **kwargs).eval()


AutoConfig.register(SliceSequenceConfig.model_type, SliceSequenceConfig)
AutoModel.register(SliceSequenceConfig, SliceSequenceForVolumeClassification)
