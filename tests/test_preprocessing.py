"""Decoding every image kind, the clear errors, head crop geometry, augmentation, processor config."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from tumor_classifier import InvalidImageError, MRIPreprocessor, load_image
from tumor_classifier.preprocessing import (
    MAX_IMAGE_SIDE,
    AugmentationConfig,
    BatchAugmenter,
    head_bounding_box,
    prepare_image,
    strip_skull,
)


def _disc(size=96, centre=(40, 50), radius=20, value=200) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    image = np.zeros((size, size), dtype=np.uint8)
    image[(yy - centre[1]) ** 2 + (xx - centre[0]) ** 2 <= radius**2] = value
    return image


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def slice_gray(data_dir) -> np.ndarray:
    path = next((data_dir / "Testing" / "glioma").glob("*.jpg"))
    return np.asarray(Image.open(path).convert("L"))


def test_every_image_kind_decodes_to_one_grayscale(tmp_path, slice_gray):
    gray = Image.fromarray(slice_gray)
    rgb = gray.convert("RGB")
    sixteen = Image.fromarray(slice_gray.astype(np.uint16) * 257)  # full 16-bit range
    rgba = rgb.convert("RGBA")
    palette = rgb.convert("P")
    kinds = {
        "jpeg_l": _encode(gray, "JPEG", quality=95),
        "jpeg_rgb": _encode(rgb, "JPEG", quality=95),
        "png_16bit": _encode(sixteen, "PNG"),
        "png_rgba": _encode(rgba, "PNG"),
        "png_palette": _encode(palette, "PNG"),
        "jpeg_cmyk": _encode(rgb.convert("CMYK"), "JPEG", quality=95),
        "tiff": _encode(gray, "TIFF"),
        "bmp": _encode(rgb, "BMP"),
    }
    for name, data in kinds.items():
        path = tmp_path / f"{name}.img"
        path.write_bytes(data)
        for source in (data, path, str(path)):
            image = load_image(source)
            assert image.mode == "L", name
            assert image.size == gray.size, name
            # Every kind carries the same content: within JPEG / palette / CMYK rounding.
            difference = np.abs(np.asarray(image, dtype=int) - slice_gray.astype(int)).mean()
            assert difference < 12, (name, difference)


def test_sixteen_bit_uses_the_full_range():
    array = np.linspace(1000, 4000, 64 * 64).reshape(64, 64).astype(np.uint16)  # 12-bit data
    image = np.asarray(load_image(Image.fromarray(array)))
    assert image.min() == 0 and image.max() == 255


def test_numpy_pil_and_storage_mode_give_identical_preparation(slice_gray):
    pre = MRIPreprocessor(size=64)
    # Float and 16-bit inputs are windowed to their own range; give the slice the full one.
    low, high = slice_gray.min(), slice_gray.max()
    slice_gray = np.round((slice_gray - low) / (high - low) * 255).astype(np.uint8)
    from_l = pre.prepare_array(Image.fromarray(slice_gray))
    from_rgb = pre.prepare_array(np.stack([slice_gray] * 3, axis=-1))
    from_float = pre.prepare_array(slice_gray.astype(np.float32) / 255.0 * 7.0)
    np.testing.assert_array_equal(from_l, from_rgb)  # "L" vs "RGB" storage never shows
    assert np.abs(from_l.astype(int) - from_float.astype(int)).max() <= 1


@pytest.mark.parametrize(
    "source, fragment",
    [
        (b"", "empty"),
        (b"this is a text file, not an image", "not an image"),
        (_encode(Image.new("L", (64, 64), 128), "JPEG")[:200], "corrupt"),
        (np.zeros((4, 5, 6, 7)), "shape"),
        (np.zeros((64, 64), dtype=np.complex64), "dtype"),
        (12345, "accepted"),
        (np.zeros((4, 4), dtype=np.uint8), "at least"),
    ],
)
def test_bad_inputs_raise_a_clear_error(source, fragment):
    with pytest.raises(InvalidImageError, match=fragment) as info:
        load_image(source)
    assert isinstance(info.value, ValueError)


def test_missing_file_and_huge_image(tmp_path):
    with pytest.raises(InvalidImageError, match="does not exist"):
        load_image(tmp_path / "nope.png")
    huge = tmp_path / "huge.png"
    Image.new("L", (MAX_IMAGE_SIDE + 1, 8)).save(huge)
    with pytest.raises(InvalidImageError, match="pixels a side are accepted"):
        load_image(huge)


def test_head_crop_finds_the_head_and_maps_back():
    image = _disc(size=96, centre=(30, 60), radius=15)
    left, top, right, bottom = head_bounding_box(image)
    assert (left, top, right, bottom) == (15, 45, 46, 76)
    prepared = prepare_image(Image.fromarray(image), 32)
    # The crop fills the output: the disc touches all four sides.
    array = np.asarray(prepared.image)
    assert array[16, 0] > 100 and array[16, -1] > 100 and array[0, 16] > 100 and array[-1, 16] > 100
    # A map over the prepared image lands on the disc in the input's coordinates.
    back = prepared.to_original((array > 100).astype(np.float32))
    assert back.shape == image.shape
    inside = back[image > 0].mean()
    outside = back[image == 0].mean()
    assert inside > 0.9 and outside < 0.05


def test_empty_image_keeps_the_whole_frame():
    assert head_bounding_box(np.zeros((20, 30), dtype=np.uint8)) == (0, 0, 30, 20)


def test_skull_stripping_removes_the_outer_ring():
    head = _disc(size=128, centre=(64, 64), radius=50, value=250)
    brain = _disc(size=128, centre=(64, 64), radius=40, value=120)
    image = np.where(brain > 0, brain, head)
    stripped = strip_skull(image)
    assert stripped[64, 64] == 120  # brain kept
    assert stripped[64, 64 + 48] == 0  # skull ring removed


def test_augmenter_is_seeded_and_keeps_shape_and_range():
    batch = torch.rand(6, 1, 32, 32)
    first = BatchAugmenter(seed=3)(batch.clone())
    again = BatchAugmenter(seed=3)(batch.clone())
    other = BatchAugmenter(seed=4)(batch.clone())
    assert first.shape == batch.shape
    assert first.min() >= 0 and first.max() <= 1
    torch.testing.assert_close(first, again)
    assert not torch.allclose(first, other)
    identity = BatchAugmenter(AugmentationConfig.none(), seed=0)(batch.clone())
    torch.testing.assert_close(identity, batch, atol=1e-6, rtol=0)


def test_flip_only_augmentation_mirrors_the_image():
    batch = torch.zeros(1, 1, 8, 8)
    batch[..., 0] = 1.0  # left column bright
    config = AugmentationConfig.none()
    config.hflip = 1.0
    flipped = BatchAugmenter(config, seed=0)(batch)
    assert flipped[0, 0, :, -1].mean() > 0.9 and flipped[0, 0, :, 0].mean() < 0.1


def test_processor_config_round_trips_and_plain_transformers_agrees(tmp_path, slice_gray):
    from transformers import AutoImageProcessor

    pre = MRIPreprocessor(size=48, skull_strip=True, head_threshold=0.2, mean=0.4, std=0.3)
    pre.save_pretrained(tmp_path)
    assert MRIPreprocessor.from_pretrained(tmp_path) == pre
    plain = AutoImageProcessor.from_pretrained(tmp_path, backend="pil")
    prepared = pre.prepare(slice_gray).image  # what the package feeds the model
    ours = pre.normalize(torch.from_numpy(np.array(prepared))[None])
    theirs = plain(images=prepared.convert("RGB"), return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
