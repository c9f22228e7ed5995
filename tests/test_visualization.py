"""Tests of tumor_classifier.visualization: the overlay's blend, and the exported figure's legend."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tumor_classifier.attributions import overlay as overlay_from_its_old_home
from tumor_classifier.exceptions import InvalidImageError, TumorClassifierError
from tumor_classifier.visualization import MIN_FIGURE_WIDTH, annotate, overlay


def _scan(height=20, width=30):
    values = np.linspace(0, 255, height * width).reshape(height, width)
    return np.round(values).astype(np.uint8)


def _blob(height=20, width=30):
    attribution = np.zeros((height, width), dtype=np.float32)
    attribution[5:10, 10:20] = np.linspace(0.2, 1.0, 10)
    return attribution


@pytest.mark.parametrize(
    "image",
    [
        Image.fromarray(_scan()),
        Image.fromarray(_scan()).convert("RGB"),
        _scan(),
        np.stack([_scan()] * 3, axis=-1),
    ],
    ids=["pil-L", "pil-RGB", "numpy-2d", "numpy-rgb"],
)
def test_overlay_keeps_the_scan_where_there_is_no_evidence(image):
    attribution = _blob()
    result = overlay(image, attribution)
    assert isinstance(result, Image.Image) and result.mode == "RGB"
    assert result.size == (30, 20)  # PIL size is (W, H)
    pixels = np.asarray(result)
    gray = _scan()
    zero = attribution == 0
    for channel in range(3):
        np.testing.assert_array_equal(pixels[..., channel][zero], gray[zero])
    # Where the evidence is high the colour map shows (jet at 1.0 is dark red: R >> B).
    hot = pixels[7, 19].astype(int)
    assert not (hot[0] == hot[1] == hot[2])
    assert hot[0] > hot[2]


def test_overlay_blend_follows_the_formula():
    gray = np.full((2, 2), 100, dtype=np.uint8)
    attribution = np.array([[0.0, 0.5], [1.0, 0.25]])
    result = np.asarray(overlay(gray, attribution, alpha=0.5, colormap="gray")).astype(float)
    # colormap "gray" maps v to (v, v, v) (through a 256-entry table, hence the tolerance):
    # pixel = 255 * ((1 - a) * 100 / 255 + a * v) with a = 0.5 * v.
    expected = [(1 - 0.5 * v) * 100 + 0.5 * v * v * 255 for v in attribution.ravel()]
    for channel in range(3):
        np.testing.assert_allclose(result[..., channel].ravel(), expected, atol=1.5)


def test_overlay_refuses_a_map_of_another_shape():
    with pytest.raises(InvalidImageError) as error:
        overlay(Image.fromarray(_scan()), _blob().T)
    assert isinstance(error.value, ValueError)
    assert "(30, 20)" in str(error.value) and "(20, 30)" in str(error.value)
    with pytest.raises(TumorClassifierError, match="colormap"):
        overlay(_scan(), _blob(), colormap="no-such-map")
    with pytest.raises(InvalidImageError, match="NaN"):
        overlay(_scan(), np.full((20, 30), np.nan))


def test_overlay_is_still_importable_from_attributions():
    assert overlay_from_its_old_home is overlay


def _hot_overlay(height=200, width=300):
    scan = np.full((height, width), 90, dtype=np.uint8)
    attribution = np.zeros((height, width), dtype=np.float32)
    attribution[50:100, 100:200] = 1.0
    return overlay(scan, attribution)


def _text_rows(array: np.ndarray) -> np.ndarray:
    """Rows that hold dark (text) pixels on the white bands."""
    return np.flatnonzero((array.min(axis=2) < 100).any(axis=1))


def test_annotate_writes_the_verdict_above_and_a_colour_bar_below():
    picture = _hot_overlay(400, 600)
    figure = annotate(picture, title="glioma 93% - not a diagnostic device", target="glioma", method="gradcam")
    pixels = np.asarray(figure).astype(int)
    # The overlay is pasted unchanged, full width, between a top and a bottom band.
    assert figure.width == picture.width and figure.height > picture.height
    top = next(y for y in range(figure.height) if (pixels[y] != 255).any() and np.array_equal(pixels[y], np.asarray(picture)[0]))
    np.testing.assert_array_equal(pixels[top : top + picture.height], np.asarray(picture))
    assert len(_text_rows(pixels[:top])) > 5  # the verdict is written above
    below = pixels[top + picture.height :]
    assert len(_text_rows(below)) > 5  # the legend's words
    # The colour bar: a row whose colour goes from mid grey (no evidence, the scan shows
    # through) to red-dominated (jet at 1: dark red), left to right.
    bar_rows = [row for row in below if (np.abs(row[:, 0] - row[:, 2]) > 40).sum() > figure.width // 4]
    assert bar_rows, "no coloured bar under the overlay"
    row = bar_rows[len(bar_rows) // 2]
    coloured = np.flatnonzero(np.abs(row[:, 0] - row[:, 2]) > 40)
    right = row[coloured[-1]]
    assert right[0] > right[2] + 40  # hot end: red
    left_end = row[coloured[0] - 5]
    assert abs(left_end[0] - left_end[2]) < 40  # cool end: close to grey (the scan shows)


def test_annotate_enlarges_small_overlays_so_the_text_fits():
    small = _hot_overlay(64, 64)
    figure = annotate(small, title="pituitary 71% (uncertain)", target="pituitary", method="integrated_gradients")
    assert figure.width == MIN_FIGURE_WIDTH
    long_title = "x" * 500
    assert annotate(small, title=long_title, target="glioma", method="gradcam").width == MIN_FIGURE_WIDTH


def test_annotate_refuses_what_is_not_an_overlay():
    with pytest.raises(TumorClassifierError, match="PIL image"):
        annotate(np.zeros((10, 10)), title="t", target="glioma", method="gradcam")
    with pytest.raises(TumorClassifierError, match="alpha"):
        annotate(_hot_overlay(), title="t", target="glioma", method="gradcam", alpha=2)
    with pytest.raises(TumorClassifierError, match="colormap"):
        annotate(_hot_overlay(), title="t", target="glioma", method="gradcam", colormap="nope")
