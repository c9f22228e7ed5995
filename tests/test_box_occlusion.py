"""The box-occlusion check (does the model use the tumour?), on hand-made inputs with
known answers and end to end with the tiny fitted classifier."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tumor_classifier.box_occlusion import (
    OcclusionScore,
    classifier_occlusion_score,
    control_boxes,
    hide,
    mirrored,
    occlusion_score,
    summarise_occlusion,
)
from tumor_classifier.exceptions import InvalidArgumentError
from tumor_classifier.localisation import Box

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLASSES = ["glioma", "meningioma", "notumor", "pituitary"]
#: The "tumour" of the toy slice: a bright square, and the box that marks it (128 px image).
TUMOUR = (40, 40, 56, 56)
TUMOUR_BOX = Box("glioma/toy.png", "glioma", 48 / 128, 48 / 128, 16 / 128, 16 / 128)


def toy_slice() -> np.ndarray:
    """A 128 px slice: a grey disc (the head, grey 100) with a bright 16 px square (250)."""
    rows, cols = np.mgrid[:128, :128]
    gray = np.where((rows - 64) ** 2 + (cols - 64) ** 2 <= 56**2, 100, 0).astype(np.uint8)
    x0, y0, x1, y1 = TUMOUR
    gray[y0:y1, x0:x1] = 250
    return gray


def looks_at_the_square(images: list[np.ndarray]) -> np.ndarray:
    """A model that decides by the square: glioma's logit is (mean grey there - 100) / 20,
    notumor's is 1, the others 0."""
    x0, y0, x1, y1 = TUMOUR
    logits = np.zeros((len(images), 4))
    logits[:, 0] = [(image[y0:y1, x0:x1].mean() - 100.0) / 20.0 for image in images]
    logits[:, 2] = 1.0
    exp = np.exp(logits - logits.max(1, keepdims=True))
    return exp / exp.sum(1, keepdims=True)


def ignores_the_image(images: list[np.ndarray]) -> np.ndarray:
    """A model that says the same whatever it is shown (a shortcut taken to the limit)."""
    return np.tile([0.7, 0.1, 0.1, 0.1], (len(images), 1))


def test_hide_fills_the_box_only():
    gray = np.arange(20, dtype=np.uint8).reshape(4, 5)
    hidden = hide(gray, (1, 1, 3, 3), 99)
    assert (hidden[1:3, 1:3] == 99).all()
    untouched = np.ones(gray.shape, dtype=bool)
    untouched[1:3, 1:3] = False
    assert (hidden[untouched] == gray[untouched]).all()
    assert gray[1, 1] == 6  # the input is not changed


def test_mirrored_takes_the_other_side():
    gray = np.arange(12, dtype=np.uint8).reshape(2, 6)
    # Across column 2.5: column 0 takes 5, column 1 takes 4; rows are kept.
    assert mirrored(gray, (0, 0, 2, 2), 2.5).tolist() == [[5, 4], [11, 10]]
    # Columns mirrored past the edge are clipped to it.
    assert mirrored(gray, (4, 1, 6, 2), 1.0).tolist() == [[6, 6]]


def test_control_boxes_lie_in_the_head_apart_from_the_box():
    head = toy_slice() > 0
    controls = control_boxes(head, TUMOUR, count=5, seed=0)
    assert len(controls) == 5
    tx0, ty0, tx1, ty1 = TUMOUR
    for x0, y0, x1, y1 in controls:
        assert (x1 - x0, y1 - y0) == (16, 16)
        assert head[y0:y1, x0:x1].mean() >= 0.9
        assert x1 <= tx0 or x0 >= tx1 or y1 <= ty0 or y0 >= ty1  # no overlap with the tumour box
    assert len(set(controls)) == 5
    # Seeded: the same draw again, another draw with another seed.
    assert control_boxes(head, TUMOUR, count=5, seed=0) == controls
    assert control_boxes(head, TUMOUR, count=5, seed=1) != controls


def test_control_boxes_when_the_head_has_no_room():
    head = np.zeros((64, 64), dtype=bool)
    head[20:40, 20:40] = True
    assert control_boxes(head, (20, 20, 40, 40), count=3) == []  # the box fills the head
    assert control_boxes(head, (0, 0, 80, 10), count=3) == []  # wider than the image
    assert control_boxes(head, (20, 20, 30, 30), count=0) == []
    with pytest.raises(InvalidArgumentError, match="count"):
        control_boxes(head, (20, 20, 30, 30), count=-1)


def test_a_model_that_looks_at_the_tumour_loses_its_evidence_with_the_box_only():
    score = occlusion_score(looks_at_the_square, CLASSES, toy_slice(), TUMOUR_BOX, controls=3)
    assert score.controls == 3
    assert (score.predicted, score.predicted_box_hidden) == ("glioma", "notumor")
    # As it is: glioma's logit 7.5 against notumor's 1; hidden (median grey 100): 0 against 1.
    assert score.tumour_evidence == pytest.approx(6.5)
    assert score.tumour_drop_box == pytest.approx(7.5)
    assert score.tumour_drop_control == pytest.approx(0.0, abs=1e-9)
    # Against the other types (logits 0 and 0): 7.5 - log 2 as it is, -log 2 hidden.
    assert score.type_evidence == pytest.approx(7.5 - math.log(2))
    assert score.type_drop_box == pytest.approx(7.5)
    assert score.type_drop_control == pytest.approx(0.0, abs=1e-9)


def test_the_mirror_fill_hides_the_tumour_with_the_other_side():
    # The head's span is columns 8-120, so its middle is column 64 and the square (40-56)
    # is filled from columns 72-88: plain head, grey 100, as the median fill gives.
    score = occlusion_score(looks_at_the_square, CLASSES, toy_slice(), TUMOUR_BOX, fill="mirror")
    assert score.tumour_drop_box == pytest.approx(7.5)
    assert score.tumour_drop_control == pytest.approx(0.0, abs=1e-9)
    assert score.predicted_box_hidden == "notumor"
    with pytest.raises(InvalidArgumentError, match="fill must be one of median, mirror"):
        occlusion_score(looks_at_the_square, CLASSES, toy_slice(), TUMOUR_BOX, fill="noise")


def test_a_model_that_ignores_the_image_loses_nothing():
    score = occlusion_score(ignores_the_image, CLASSES, toy_slice(), TUMOUR_BOX)
    assert score.tumour_evidence == pytest.approx(math.log(7))
    assert score.type_evidence == pytest.approx(math.log(3.5))
    for drop in (score.tumour_drop_box, score.tumour_drop_control, score.type_drop_box, score.type_drop_control):
        assert drop == pytest.approx(0.0, abs=1e-12)
    assert score.predicted == score.predicted_box_hidden == "glioma"


@pytest.mark.parametrize("fill", ["median", "mirror"])
def test_a_black_slice_is_all_head_and_loses_nothing(fill):
    score = occlusion_score(looks_at_the_square, CLASSES, np.zeros((128, 128), np.uint8), TUMOUR_BOX, fill=fill)
    assert score.controls == 3
    assert score.tumour_drop_box == pytest.approx(0.0, abs=1e-12)


def test_without_notumor_or_other_types_those_log_odds_are_nan():
    def constant(first: float):
        return lambda images: np.tile([first, 1.0 - first], (len(images), 1))

    score = occlusion_score(constant(0.8), ["glioma", "pituitary"], toy_slice(), TUMOUR_BOX)
    assert math.isnan(score.tumour_evidence) and math.isnan(score.tumour_drop_box)
    assert score.type_evidence == pytest.approx(math.log(4))
    score = occlusion_score(constant(0.9), ["glioma", "notumor"], toy_slice(), TUMOUR_BOX)
    assert score.tumour_evidence == pytest.approx(math.log(9))
    assert math.isnan(score.type_evidence)


def test_occlusion_score_refuses_bad_input():
    with pytest.raises(InvalidArgumentError, match="'glioma' is not one of the classes"):
        occlusion_score(ignores_the_image, ["meningioma", "notumor"], toy_slice(), TUMOUR_BOX)
    with pytest.raises(InvalidArgumentError, match=r"\(H, W\) slice"):
        occlusion_score(ignores_the_image, CLASSES, np.zeros((8, 8, 3), np.uint8), TUMOUR_BOX)
    with pytest.raises(InvalidArgumentError, match=r"predict_proba gave shape \(1, 4\) for 5 images"):
        occlusion_score(lambda images: ignores_the_image(images[:1]), CLASSES, toy_slice(), TUMOUR_BOX)


def make(label: str, drop_box: float, drop_control: float, *, changed: bool = False, controls: int = 3) -> OcclusionScore:
    return OcclusionScore(
        file=f"{label}/x.png", label=label, predicted=label, predicted_box_hidden="notumor" if changed else label,
        tumour_evidence=5.0, tumour_drop_box=drop_box, tumour_drop_control=drop_control if controls else math.nan,
        type_evidence=4.0, type_drop_box=drop_box / 2, type_drop_control=drop_control / 2 if controls else math.nan,
        controls=controls,
    )


def test_summarise_occlusion_known_answers():
    scores = [
        make("glioma", 2.0, 0.0, changed=True),
        make("glioma", 1.0, 3.0),
        make("glioma", 4.0, 1.0, controls=0),  # no control: left out of the shares and control medians
        make("pituitary", 0.0, 0.5),
    ]
    summary = summarise_occlusion(scores)
    assert list(summary) == ["glioma", "pituitary", "all"]
    glioma = summary["glioma"]
    assert glioma["n"] == 3
    assert glioma["tumour_drop_box"] == 2.0  # median of 2, 1, 4
    assert glioma["tumour_drop_control"] == 1.5  # median of 0 and 3
    assert glioma["tumour_box_beats_control"] == 0.5
    assert glioma["type_drop_box"] == 1.0
    assert glioma["label_changed_box_hidden"] == pytest.approx(1 / 3)
    assert summary["pituitary"]["tumour_box_beats_control"] == 0.0
    assert summary["all"]["n"] == 4
    assert summary["all"]["tumour_box_beats_control"] == pytest.approx(1 / 3)
    with pytest.raises(InvalidArgumentError, match="at least one"):
        summarise_occlusion([])


def test_classifier_occlusion_score_end_to_end(fitted_classifier, data_dir):
    path = data_dir / "Testing" / "glioma" / "Te-gl_0023.jpg"
    box = Box(f"glioma/{path.name}", "glioma", 0.5, 0.45, 0.2, 0.15)
    score = classifier_occlusion_score(fitted_classifier, path, box, controls=2, seed=3)
    assert score.controls == 2
    assert {score.predicted, score.predicted_box_hidden} <= set(fitted_classifier.classes_)
    for value in (score.tumour_evidence, score.tumour_drop_box, score.tumour_drop_control, score.type_drop_box):
        assert math.isfinite(value)
    # The evidence as it is matches predict_proba on the same file.
    proba = fitted_classifier.predict_proba(path)[0]
    classes = list(fitted_classifier.classes_)
    expected = math.log(proba[classes.index("glioma")]) - math.log(proba[classes.index("notumor")])
    assert score.tumour_evidence == pytest.approx(expected, abs=1e-4)
    assert classifier_occlusion_score(fitted_classifier, path, box, controls=2, seed=3) == score
