"""Crop to the head, pad, resize, normalise: from a decoded image to a model's input.

One preprocessing serves training, evaluation and inference:

1. :func:`~tumor_classifier.decoding.load_image` (in :mod:`tumor_classifier.decoding`,
   the package's one decoder) turns any common input into one 8-bit grayscale image.
2. :func:`prepare_image` crops to the head's bounding box (:func:`head_bounding_box`,
   optionally after the :func:`strip_skull` heuristic), pads to a square and resizes;
   the :class:`PreparedImage` remembers the geometry so an attribution map can be put
   back onto the input.
3. :class:`MRIPreprocessor` holds the settings, turns prepared images into the
   normalised ``pixel_values`` tensor a model takes, and saves itself as a standard
   ``ViTImageProcessor`` config so a saved model also loads with plain
   ``AutoImageProcessor`` (which then does the resize / rescale / normalise part only).

Train-time augmentation (:class:`~tumor_classifier.augmentation.BatchAugmenter`) and the
head mask live in :mod:`tumor_classifier.augmentation`. The names that moved to
:mod:`tumor_classifier.decoding` and :mod:`tumor_classifier.augmentation` are
re-exported here, so ``from tumor_classifier.preprocessing import load_image`` and the
like keep working; code in the package imports them from their new homes.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

# Re-exported for older imports (the names lived here until the split of 2026-11-30).
from .augmentation import (  # noqa: F401
    HEAD_MASK_CLOSING,
    HEAD_MASK_GRID,
    HEAD_MASK_OPENING,
    HEAD_MASK_THRESHOLD,
    AugmentationConfig,
    BatchAugmenter,
    head_mask,
)
from .decoding import (  # noqa: F401
    ACCEPTED_FORMATS_TEXT,
    ACCEPTED_INPUTS,
    DECODED_FORMATS,
    MAX_DECODED_SIDE,
    MAX_FILE_BYTES,
    MAX_IMAGE_SIDE,
    MIN_IMAGE_SIDE,
    load_image,
    read_header,
)

PROCESSOR_CONFIG_NAME = "preprocessor_config.json"
#: Bumped whenever decoding or preparation changes, so cached prepared pixels are rebuilt.
PREPROCESSING_VERSION = 1


def head_bounding_box(gray: np.ndarray, threshold: float = 0.1) -> tuple[int, int, int, int]:
    """Finds the head as the bounding box of pixels above a fraction of the bright level.

    The bright level is the 99.5th percentile rather than the maximum, so a few hot pixels
    or burnt-in text do not decide it. If the box covers almost nothing (an empty or
    nearly black image), the whole image is returned.

    Args:
        gray: uint8 array (H, W).
        threshold: Fraction in (0, 1) of the bright level a pixel must exceed.

    Returns:
        ``(left, top, right, bottom)`` in pixels, right and bottom exclusive.
    """
    height, width = gray.shape
    bright = float(np.percentile(gray, 99.5))
    if bright <= 0:
        return 0, 0, width, height
    mask = gray > threshold * bright
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0 or cols.size == 0:
        return 0, 0, width, height
    left, top, right, bottom = int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1
    if (right - left) * (bottom - top) < 0.02 * width * height:
        return 0, 0, width, height
    return left, top, right, bottom


def strip_skull(gray: np.ndarray, threshold: float = 0.1, erosion: float = 0.06) -> np.ndarray:
    """Heuristic skull stripping: keeps the largest bright component, eroded inwards.

    This is a morphological heuristic, not a validated brain-extraction tool (such as
    HD-BET or SynthStrip): it removes the scalp and much of the skull on axial slices
    with a dark background, and may cut into the cortex or leave bone elsewhere.

    Args:
        gray: uint8 array (H, W).
        threshold: Fraction of the bright level that counts as tissue.
        erosion: Erosion depth as a fraction of the head's shorter side.

    Returns:
        uint8 array (H, W): the input with pixels outside the estimated brain set to 0.
    """
    from scipy import ndimage

    bright = float(np.percentile(gray, 99.5))
    if bright <= 0:
        return gray.copy()
    mask = ndimage.binary_fill_holes(gray > threshold * bright)
    labels, count = ndimage.label(mask)
    if count == 0:
        return gray.copy()
    sizes = ndimage.sum(mask, labels, index=range(1, count + 1))
    head = labels == (int(np.argmax(sizes)) + 1)
    rows, cols = np.flatnonzero(head.any(axis=1)), np.flatnonzero(head.any(axis=0))
    depth = max(1, int(erosion * min(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1)))
    brain = ndimage.binary_erosion(head, iterations=depth)
    if brain.sum() < 0.05 * head.sum():  # eroded away: keep the head rather than nothing
        brain = head
    return np.where(brain, gray, 0).astype(np.uint8)


@dataclass(frozen=True)
class PreparedImage:
    """A grayscale image cropped to the head, padded square and resized.

    Attributes:
        image: "L" PIL image of ``size`` x ``size`` pixels.
        original_size: ``(width, height)`` of the decoded input.
        crop_box: ``(left, top, right, bottom)`` of the crop in input pixels.
        padded_side: Side of the square the crop was centred in, in input pixels.
    """

    image: Image.Image
    original_size: tuple[int, int]
    crop_box: tuple[int, int, int, int]
    padded_side: int

    def to_original(self, heatmap: np.ndarray) -> np.ndarray:
        """Puts a map over the prepared image back onto the input's pixel grid.

        Undoes resize, pad and crop: the map is resized to the padded square, the crop is
        cut out of it, and it is placed into a zero map of the input's size.

        Args:
            heatmap: float array (h, w), any size (it is resized), usually in [0, 1].

        Returns:
            float32 array (H, W) with the input's height and width; zero outside the crop.
        """
        left, top, right, bottom = self.crop_box
        side = self.padded_side
        square = _resize_float(heatmap.astype(np.float32), side, side)
        pad_x = (side - (right - left)) // 2
        pad_y = (side - (bottom - top)) // 2
        width, height = self.original_size
        out = np.zeros((height, width), dtype=np.float32)
        out[top:bottom, left:right] = square[pad_y : pad_y + bottom - top, pad_x : pad_x + right - left]
        return out


def _resize_float(array: np.ndarray, width: int, height: int) -> np.ndarray:
    tensor = torch.from_numpy(np.ascontiguousarray(array))[None, None]
    return F.interpolate(tensor, size=(height, width), mode="bilinear", align_corners=False)[0, 0].numpy()


def prepare_image(
    image: Image.Image,
    size: int,
    *,
    crop_to_head: bool = True,
    head_threshold: float = 0.1,
    skull_strip: bool = False,
) -> PreparedImage:
    """Crops a grayscale image to the head, pads it to a square and resizes it.

    Args:
        image: "L" PIL image, as :func:`load_image` returns.
        size: Side of the output square in pixels.
        crop_to_head: Crop to :func:`head_bounding_box` first.
        head_threshold: Threshold passed to :func:`head_bounding_box`.
        skull_strip: Apply the :func:`strip_skull` heuristic before cropping.

    Returns:
        The :class:`PreparedImage`, whose ``image`` is ``size`` x ``size`` "L".
    """
    gray = np.asarray(image if image.mode == "L" else image.convert("L"))
    if skull_strip:
        gray = strip_skull(gray, head_threshold)
    height, width = gray.shape
    box = head_bounding_box(gray, head_threshold) if crop_to_head else (0, 0, width, height)
    left, top, right, bottom = box
    crop = gray[top:bottom, left:right]
    side = max(crop.shape)
    square = np.zeros((side, side), dtype=np.uint8)
    pad_y, pad_x = (side - crop.shape[0]) // 2, (side - crop.shape[1]) // 2
    square[pad_y : pad_y + crop.shape[0], pad_x : pad_x + crop.shape[1]] = crop
    resized = Image.fromarray(square).resize((size, size), Image.Resampling.BILINEAR)
    return PreparedImage(resized, (width, height), box, side)


@dataclass
class MRIPreprocessor:
    """The preprocessing settings of a model, and the step from images to tensors.

    Attributes:
        size: Side of the square the model sees, in pixels.
        crop_to_head: Crop to the head's bounding box before padding and resizing.
        head_threshold: Fraction of the bright level that counts as head.
        skull_strip: Apply the skull-stripping heuristic (off by default).
        mean: Normalisation mean of the [0, 1] grayscale values.
        std: Normalisation standard deviation.
        num_channels: Channels the model takes; the gray channel is repeated, so a
            3-channel Hub checkpoint fine-tunes as is.

    Example:
        >>> pre = MRIPreprocessor(size=64)
        >>> pre([np.zeros((80, 60), dtype=np.uint8)]).shape
        torch.Size([1, 3, 64, 64])
    """

    size: int = 224
    crop_to_head: bool = True
    head_threshold: float = 0.1
    skull_strip: bool = False
    mean: float = 0.5
    std: float = 0.5
    num_channels: int = 3

    def prepare(self, source: Any) -> PreparedImage:
        """Decodes one input and prepares it (grayscale, crop, pad, resize)."""
        return prepare_image(
            load_image(source),
            self.size,
            crop_to_head=self.crop_to_head,
            head_threshold=self.head_threshold,
            skull_strip=self.skull_strip,
        )

    def prepare_array(self, source: Any) -> np.ndarray:
        """Prepares one input and returns it as a uint8 array (size, size)."""
        return np.asarray(self.prepare(source).image)

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        """Turns uint8 (n, size, size) or float [0, 1] (n, 1, size, size) into pixel_values.

        Returns:
            float32 tensor (n, num_channels, size, size), normalised.
        """
        if batch.dtype == torch.uint8:
            batch = batch.float().div_(255.0)
        if batch.ndim == 3:
            batch = batch.unsqueeze(1)
        batch = (batch - self.mean) / self.std
        return batch.expand(-1, self.num_channels, -1, -1).contiguous()

    def __call__(self, sources: Sequence[Any]) -> torch.Tensor:
        """Prepares and normalises a sequence of inputs.

        Returns:
            float32 tensor (n, num_channels, size, size).
        """
        arrays = np.stack([self.prepare_array(source) for source in sources])
        return self.normalize(torch.from_numpy(arrays))

    # -- persistence ---------------------------------------------------------------
    def to_hf_dict(self) -> dict[str, Any]:
        """A standard ``ViTImageProcessor`` config plus our own settings.

        Plain ``AutoImageProcessor`` reads the standard keys (resize to ``size``, rescale,
        normalise, RGB) and ignores the ``tumor_classifier`` block; this package reads
        both, so both paths give identical tensors on an already prepared image.
        """
        return {
            "image_processor_type": "ViTImageProcessor",
            "do_convert_rgb": True,
            "do_resize": True,
            "size": {"height": self.size, "width": self.size},
            "resample": int(Image.Resampling.BILINEAR),
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "image_mean": [self.mean] * 3,
            "image_std": [self.std] * 3,
            "tumor_classifier": {
                key: value for key, value in asdict(self).items() if key not in ("mean", "std", "size")
            },
        }

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Writes ``preprocessor_config.json`` into ``directory``; returns its path."""
        path = Path(directory) / PROCESSOR_CONFIG_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_hf_dict(), indent=2) + "\n")
        return path

    @classmethod
    def from_hf_dict(cls, config: dict[str, Any], *, source: str | os.PathLike = PROCESSOR_CONFIG_NAME) -> "MRIPreprocessor":
        """Reads a config written by :meth:`to_hf_dict`, or any ViT/ConvNeXt processor config.

        A config of another project (no ``tumor_classifier`` block) keeps its size and
        normalisation and gets this package's grayscale and head-crop defaults. Every
        value is validated here, so a bad config fails at load time, not at predict time
        (or silently, with NaN probabilities).

        Args:
            config: The parsed JSON.
            source: The file it came from, named in error messages.

        Raises:
            ModelLoadError: ``config`` is not an object, or ``size`` is not a side from
                8 to 2048 (an integer, or ``height`` equal to ``width``), ``image_mean``
                is not finite, ``image_std`` is not finite and positive, ``num_channels``
                is not 1 or 3, ``head_threshold`` is not in [0, 1), or ``crop_to_head`` /
                ``skull_strip`` are not booleans. The message names ``source``.
        """
        from .exceptions import ModelLoadError

        def bad(what: str, value: Any, accepted: str) -> ModelLoadError:
            return ModelLoadError(f"{source}: {what} is {value!r}; {accepted}. Fix or replace the file.")

        def is_number(value: Any) -> bool:  # finite and sane; no float() of a 400-digit integer
            return isinstance(value, (int, float)) and not isinstance(value, bool) and -1e6 < value < 1e6

        if not isinstance(config, dict):
            raise ModelLoadError(f"{source} holds a JSON {type(config).__name__}; expected an object of preprocessing settings.")
        size = config.get("size", 224)
        if isinstance(size, dict) and ("height" in size or "width" in size):
            side = size.get("height") if size.get("height") == size.get("width") else None
        else:
            side = size.get("shortest_edge") if isinstance(size, dict) else size
        if isinstance(side, bool) or not isinstance(side, int) or not 8 <= side <= 2048:
            raise bad("'size'", size, "expected a side from 8 to 2048 pixels, or {'height': n, 'width': n} with equal sides")
        values = {}
        for key, positive in (("image_mean", False), ("image_std", True)):
            value = config.get(key, [0.5])
            listed = value if isinstance(value, list) else [value]
            if not listed or not all(is_number(v) and (v > 0 or not positive) for v in listed):
                accepted = "a positive finite number" if positive else "a finite number"
                accepted += " (below 1e6 in size)"
                raise bad(f"'{key}'", value, f"expected {accepted} or a non-empty list of them")
            # grayscale: one value for all channels
            values[key] = float(listed[0]) if len(set(listed)) == 1 else float(np.mean(listed))
        ours = config.get("tumor_classifier", {})
        if not isinstance(ours, dict):
            raise bad("'tumor_classifier'", ours, "expected an object of this package's settings")
        for key in ("crop_to_head", "skull_strip"):
            if key in ours and not isinstance(ours[key], bool):
                raise bad(f"'tumor_classifier.{key}'", ours[key], "expected true or false")
        if "head_threshold" in ours and not (is_number(ours["head_threshold"]) and 0 <= ours["head_threshold"] < 1):
            raise bad("'tumor_classifier.head_threshold'", ours["head_threshold"], "expected a number in [0, 1)")
        if "num_channels" in ours and not (type(ours["num_channels"]) is int and ours["num_channels"] in (1, 3)):
            raise bad("'tumor_classifier.num_channels'", ours["num_channels"], "expected 1 or 3")
        known = {f for f in cls.__dataclass_fields__ if f not in ("mean", "std", "size")}
        return cls(
            size=side,
            mean=values["image_mean"],
            std=values["image_std"],
            **{key: value for key, value in ours.items() if key in known},
        )

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> "MRIPreprocessor":
        """Loads ``preprocessor_config.json`` from a local model folder.

        Raises:
            ModelLoadError: The file is missing, too large, not JSON, or holds invalid
                settings (see :meth:`from_hf_dict`); the message names it.
        """
        from .model_folder import read_json_limited

        path = Path(directory) / PROCESSOR_CONFIG_NAME
        return cls.from_hf_dict(read_json_limited(path), source=path)
