"""Tests of tumor_classifier.localisation and localisation_runs: scores with known answers, one image end to end.

The scores are checked on synthetic maps and boxes small enough to count by hand; the
end-to-end tests run the benchmark's per-image step (and the script's ``main``) on the
tiny fitted classifier and two shipped Testing slices with made-up boxes.
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tumor_classifier.exceptions import InvalidDatasetError, InvalidImageError, TumorClassifierError
from tumor_classifier.localisation import Box, head_mask, mass_in_box, mass_in_mask, pointing_game, rank_correlation, read_boxes
from tumor_classifier.explanations import method_options
from tumor_classifier.localisation_runs import ImageScore, class_attribution, randomised_copy, score_image, summarise

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# A 100 x 50 (width x height) image with the box x in [40, 60), y in [15, 35).
WIDTH, HEIGHT = 100, 50
BOX = (40, 15, 60, 35)


def peak(row: int, col: int) -> np.ndarray:
    heat = np.zeros((HEIGHT, WIDTH))
    heat[row, col] = 1.0
    return heat


# --------------------------------------------------------------------------- boxes


def test_to_pixels_by_hand():
    # x: 0.5 +- 0.1 of 100 -> 40..60; y: 0.5 +- 0.2 of 50 -> 15..35. (0.5 + 0.1) * 100 is
    # 60.00000000000001 in floating point, which must not round up to 61.
    assert Box("a.jpg", "", 0.5, 0.5, 0.2, 0.4).to_pixels(WIDTH, HEIGHT) == BOX
    # Edges between pixels: every touched pixel is in (x 12.5..27.5 -> 12..28).
    assert Box("a.jpg", "", 0.2, 0.5, 0.15, 0.2).to_pixels(WIDTH, HEIGHT) == (12, 20, 28, 30)
    # A box over the border is clipped to the image.
    assert Box("a.jpg", "", 0.95, 0.05, 0.2, 0.2).to_pixels(WIDTH, HEIGHT) == (85, 0, 100, 8)
    # A box thinner than a pixel still covers one.
    x0, y0, x1, y1 = Box("a.jpg", "", 0.505, 0.51, 0.001, 0.001).to_pixels(WIDTH, HEIGHT)
    assert (x1 - x0, y1 - y0) == (1, 1)


@pytest.mark.parametrize("values", [(1.2, 0.5, 0.1, 0.1), (0.5, 0.5, 0.0, 0.1), (0.5, float("nan"), 0.1, 0.1)])
def test_box_rejects_bad_fractions(values):
    with pytest.raises(InvalidDatasetError):
        Box("a.jpg", "", *values)


def test_read_boxes(tmp_path):
    csv_path = tmp_path / "boxes.csv"
    csv_path.write_text(
        "file,x_center,y_center,width,height\n"
        "pituitary/7.jpg,0.49,0.40,0.13,0.10\n"
        "glioma/3.jpg,0.5,0.5,0.2,0.4\n"
    )
    boxes = read_boxes(csv_path)
    assert list(boxes) == ["glioma/3.jpg", "pituitary/7.jpg"]  # sorted: a fixed order for runs
    glioma = boxes["glioma/3.jpg"]
    assert (glioma.label, glioma.file) == ("glioma", "glioma/3.jpg")
    assert glioma.to_pixels(WIDTH, HEIGHT) == BOX
    assert boxes["pituitary/7.jpg"] == Box("pituitary/7.jpg", "pituitary", 0.49, 0.40, 0.13, 0.10)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("file,x_center,y_center,width\na.jpg,0.5,0.5,0.1\n", "height"),
        ("file,x_center,y_center,width,height\ng/a.jpg,0.5,0.5,0.1,abc\n", "row 2"),
        ("file,x_center,y_center,width,height\ng/a.jpg,0.5,0.5,0.1,0.1\ng/b.jpg,1.5,0.5,0.1,0.1\n", "row 3"),
        ("file,x_center,y_center,width,height\ng/a.jpg,0.5,0.5,0.1,0.1\ng/a.jpg,0.5,0.5,0.1,0.1\n", "second box"),
    ],
)
def test_read_boxes_reports_the_problem(tmp_path, text, match):
    csv_path = tmp_path / "boxes.csv"
    csv_path.write_text(text)
    with pytest.raises(InvalidDatasetError, match=match):
        read_boxes(csv_path)
    with pytest.raises(ValueError):  # argument errors are ValueErrors too
        read_boxes(tmp_path / "missing.csv")


# --------------------------------------------------------------------------- pointing game


def test_pointing_game_peak_inside_is_a_hit():
    assert pointing_game(peak(20, 45), BOX)
    assert pointing_game(peak(15, 40), BOX, tolerance_px=0)  # first pixel of the box
    assert pointing_game(peak(34, 59), BOX, tolerance_px=0)  # last pixel of the box


def test_pointing_game_tolerance():
    # Ends are exclusive: column 60 is the first column outside the box.
    assert not pointing_game(peak(20, 60), BOX, tolerance_px=0)
    assert pointing_game(peak(20, 60 + 14), BOX)  # 15 px outside the box's last column
    assert not pointing_game(peak(20, 60 + 15), BOX)  # 16 px outside
    assert pointing_game(peak(0, 25), BOX)  # 15 rows above the first row, 15 columns left
    assert pointing_game(peak(49, 74), BOX)  # 15 below the last row, 15 right of the last column


def test_pointing_game_far_outside_is_a_miss():
    assert not pointing_game(peak(45, 5), BOX)
    assert not pointing_game(peak(2, 95), BOX)


def test_pointing_game_blank_and_negative_maps():
    assert not pointing_game(np.zeros((HEIGHT, WIDTH)), BOX)  # no maximum worth the name
    assert not pointing_game(-np.ones((HEIGHT, WIDTH)), BOX)  # no positive value
    heat = -5.0 * np.ones((HEIGHT, WIDTH))  # strongly negative elsewhere, small peak inside
    heat[20, 45] = 0.1
    assert pointing_game(heat, BOX)


def test_pointing_game_rejects_bad_input():
    with pytest.raises(InvalidImageError):
        pointing_game(np.zeros(10), BOX)
    with pytest.raises(InvalidImageError):
        pointing_game(np.full((HEIGHT, WIDTH), np.nan), BOX)
    with pytest.raises(TumorClassifierError):
        pointing_game(peak(20, 45), (60, 15, 40, 35))  # x1 < x0
    with pytest.raises(TumorClassifierError):
        pointing_game(peak(20, 45), BOX, tolerance_px=-1)


# --------------------------------------------------------------------------- mass


def test_mass_in_box_uniform_map_is_the_area_share():
    assert mass_in_box(np.ones((HEIGHT, WIDTH)), BOX) == pytest.approx(20 * 20 / (100 * 50))


def test_mass_in_box_known_answers():
    assert mass_in_box(np.zeros((HEIGHT, WIDTH)), BOX) == 0.0
    heat = np.zeros((HEIGHT, WIDTH))
    heat[20, 45] = 3.0  # inside
    heat[0, 0] = 1.0  # outside
    assert mass_in_box(heat, BOX) == pytest.approx(0.75)
    # Negative values count as zero: only the positive mass is shared out.
    heat[40:, :10] = -100.0
    assert mass_in_box(heat, BOX) == pytest.approx(0.75)
    assert mass_in_box(-np.ones((HEIGHT, WIDTH)), BOX) == 0.0


def test_mass_in_mask():
    mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
    mask[:, :50] = True
    assert mass_in_mask(np.ones((HEIGHT, WIDTH)), mask) == pytest.approx(0.5)
    assert mass_in_mask(np.zeros((HEIGHT, WIDTH)), mask) == 0.0
    with pytest.raises(InvalidImageError):
        mass_in_mask(np.ones((HEIGHT, WIDTH)), mask[:, :10])


def test_head_mask_fills_the_head_and_leaves_the_corners():
    rows, cols = np.mgrid[:HEIGHT, :WIDTH]
    disc = (rows - 25) ** 2 + (cols - 50) ** 2 <= 20**2
    gray = np.where(disc, 200, 0).astype(np.uint8)
    gray[20:30, 45:55] = 0  # a dark core inside the head stays head
    mask = head_mask(gray)
    assert mask[25, 50]
    assert not mask[0, 0] and not mask[6, 32]  # inside the head's bounding box, off the disc
    np.testing.assert_array_equal(mask, disc)
    assert head_mask(np.zeros((HEIGHT, WIDTH), dtype=np.uint8)).all()


# --------------------------------------------------------------------------- rank correlation


def test_rank_correlation_known_answers(rng):
    heat = rng.random((HEIGHT, WIDTH))
    assert rank_correlation(heat, heat) == pytest.approx(1.0)
    assert rank_correlation(heat, 2 * heat + 1) == pytest.approx(1.0)  # ranks only
    assert rank_correlation(heat, -heat) == pytest.approx(-1.0)
    assert math.isnan(rank_correlation(heat, np.zeros_like(heat)))


def test_rank_correlation_ties_and_mask_match_scipy(rng):
    from scipy.stats import spearmanr

    first = np.round(rng.random((HEIGHT, WIDTH)), 1)  # many ties, as in positive-only maps
    second = np.clip(first + rng.normal(0, 0.3, first.shape), 0, None)
    assert rank_correlation(first, second) == pytest.approx(spearmanr(first.ravel(), second.ravel())[0])
    mask = np.zeros(first.shape, dtype=bool)
    mask[10:40, 20:80] = True
    assert rank_correlation(first, second, mask) == pytest.approx(spearmanr(first[mask], second[mask])[0])
    # Shared zeros outside the mask would make unrelated maps look alike.
    a, b = np.zeros((HEIGHT, WIDTH)), np.zeros((HEIGHT, WIDTH))
    a[mask], b[mask] = rng.random(mask.sum()), rng.random(mask.sum())
    assert rank_correlation(a, b) > 0.5
    assert abs(rank_correlation(a, b, mask)) < 0.1


# --------------------------------------------------------------------------- aggregate


def make_score(label: str, hit: bool, mass: float, explain_ms: float, **kwargs) -> ImageScore:
    fields = dict(
        file=f"{label}/x.jpg", label=label, method="gradcam", predicted=label, hit=hit, mass_in_box=mass,
        mass_in_head=1.0, box_area=0.1, head_chance=0.2, centre_hit=False, explain_ms=explain_ms, predict_ms=10.0,
    )
    fields.update(kwargs)
    return ImageScore(**fields)


def test_summarise_per_class_and_macro_mean():
    scores = [
        make_score("glioma", True, 0.5, 30.0),
        make_score("glioma", False, 0.1, 10.0, predicted="meningioma"),
        make_score("glioma", True, 0.3, 20.0),
        make_score("pituitary", False, 0.2, 40.0, random_hit=True, random_rank_correlation=0.1),
    ]
    summary = summarise(scores)
    assert list(summary) == ["glioma", "pituitary", "mean"]
    glioma = summary["glioma"]
    assert glioma["n"] == 3
    assert glioma["pointing_game"] == pytest.approx(2 / 3)
    assert glioma["mass_in_box"] == pytest.approx(0.3)
    assert glioma["accuracy"] == pytest.approx(2 / 3)
    assert glioma["explain_ms"] == 20.0  # median
    assert glioma["explain_over_predict"] == pytest.approx(2.0)
    assert math.isnan(glioma["random_pointing_game"])  # no randomised maps for glioma
    mean = summary["mean"]
    assert mean["n"] == 4
    assert mean["pointing_game"] == pytest.approx((2 / 3 + 0) / 2)  # each class weighs the same
    assert mean["random_pointing_game"] == 1.0  # classes without randomised maps are skipped
    assert mean["explain_ms"] == 25.0  # median over all images
    with pytest.raises(TumorClassifierError):
        summarise([])
    with pytest.raises(TumorClassifierError):
        summarise([scores[0], make_score("glioma", True, 0.5, 1.0, method="occlusion")])


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def slices(data_dir) -> list[Path]:
    """Two shipped Testing slices, one glioma and one pituitary."""
    return [data_dir / "Testing" / "glioma" / "Te-gl_0023.jpg", data_dir / "Testing" / "pituitary" / "Te-pi_0060.jpg"]


@pytest.fixture(scope="module")
def randomised(fitted_classifier):
    return randomised_copy(fitted_classifier, seed=0)


def test_randomised_copy_changes_the_copy_only(fitted_classifier, randomised):
    import torch

    before = {name: p.detach().clone() for name, p in fitted_classifier.model_.named_parameters()}
    copy = randomised_copy(fitted_classifier, seed=1)
    for name, param in fitted_classifier.model_.named_parameters():
        assert torch.equal(param, before[name]), name  # the original is untouched
    changed = [
        name for name, param in copy.model_.named_parameters()
        if not torch.equal(param, before[name])
    ]
    # Everything but parameters whose initial value the training did not move (e.g. a
    # LayerNorm left at ones) is new; the classifier head certainly is.
    assert len(changed) > len(before) // 2
    assert any("classifier" in name for name in changed)
    assert list(copy.classes_) == list(fitted_classifier.classes_)
    assert not copy.model_.training


@pytest.mark.parametrize("method", ["gradcam", "integrated_gradients", "smoothgrad_contrast"])
def test_class_attribution_of_the_predicted_class_is_the_explained_map(fitted_classifier, slices, method):
    explanation = fitted_classifier.explain(slices[0], method)[0]
    heat = class_attribution(fitted_classifier, slices[0], explanation.label, method)
    width, height = Image.open(slices[0]).size
    assert heat.shape == explanation.attribution.shape == (height, width)
    np.testing.assert_allclose(heat, explanation.attribution, atol=1e-5)
    with pytest.raises(TumorClassifierError, match="Unknown class"):
        class_attribution(fitted_classifier, slices[0], "astrocytoma", method)


def test_the_classifier_contrasts_smoothgrad_with_no_tumour(fitted_classifier):
    classes = [str(c) for c in fitted_classifier.classes_]
    assert method_options(fitted_classifier, "smoothgrad_contrast", {}) == {"versus": classes.index("notumor")}
    assert method_options(fitted_classifier, "smoothgrad_contrast", {"versus": 0}) == {"versus": 0}  # the caller's choice stays
    assert method_options(fitted_classifier, "smoothgrad", {}) == {}
    assert "baseline" in method_options(fitted_classifier, "occlusion", {})


def test_score_image_end_to_end(fitted_classifier, randomised, slices):
    for path in slices:
        box = Box(f"{path.parent.name}/{path.name}", path.parent.name, 0.5, 0.45, 0.2, 0.15)  # made up
        score = score_image(fitted_classifier, path, box, "gradcam", randomised=randomised)
        assert (score.file, score.label, score.method) == (box.file, box.label, "gradcam")
        assert score.predicted in fitted_classifier.classes_
        assert isinstance(score.hit, bool) and isinstance(score.centre_hit, bool)
        assert isinstance(score.random_hit, bool)
        for value in (score.mass_in_box, score.mass_in_head, score.random_mass_in_box):
            assert 0.0 <= value <= 1.0
        assert score.box_area == pytest.approx(0.2 * 0.15, rel=0.05)
        assert score.box_area <= score.head_chance <= 1.0
        assert -1.0 <= score.random_rank_correlation <= 1.0
        assert score.explain_ms > 0 and score.predict_ms > 0
    # Without a randomised model the randomisation fields stay empty.
    plain = score_image(fitted_classifier, slices[0], box, "gradcam")
    assert plain.random_hit is None and math.isnan(plain.random_rank_correlation)


def test_benchmark_script_end_to_end(fitted_classifier, slices, tmp_path):
    """The script's main() on a two-image box set and the saved tiny model."""
    data = tmp_path / "boxes"
    for path in slices:
        (data / path.parent.name).mkdir(parents=True)
        shutil.copy(path, data / path.parent.name / path.name)
    (data / "boxes.csv").write_text(
        "file,x_center,y_center,width,height\n"
        + "".join(f"{p.parent.name}/{p.name},0.5,0.45,0.2,0.15\n" for p in slices)
    )
    model = fitted_classifier.save_pretrained(tmp_path / "model")
    script = Path(__file__).parents[1] / "benchmarks" / "localisation.py"
    spec = importlib.util.spec_from_file_location("localisation_benchmark", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "figures.json"
    code = module.main(["--model", str(model), "--data", str(data), "--methods", "gradcam",
                        "--limit", "1", "--threads", "1", "--json", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    summary = report["summary"]["gradcam"]
    assert set(summary) == {"glioma", "pituitary", "mean"}
    assert summary["mean"]["n"] == 2
    assert 0.0 <= summary["mean"]["pointing_game"] <= 1.0
    assert len(report["images"]["gradcam"]) == 2
    # The box-occlusion check ran once, for the model, on both images.
    assert list(report["occlusion"]["summary"]) == ["glioma", "pituitary", "all"]
    assert report["occlusion"]["summary"]["all"]["n"] == 2
    assert [image["file"] for image in report["occlusion"]["images"]] == [f"{p.parent.name}/{p.name}" for p in slices]
    # Without --methods: the model's own default (auto, named as what it resolves to) and Grad-CAM, each once.
    assert module.main(["--model", str(model), "--data", str(data), "--limit", "1", "--threads", "1",
                        "--skip-randomisation", "--skip-occlusion", "--json", str(out)]) == 0
    assert list(json.loads(out.read_text())["summary"]) == list(dict.fromkeys([fitted_classifier.attribution_method_, "gradcam"]))
    assert json.loads(out.read_text())["occlusion"] is None
    # Each slice is its own near duplicate, so none is left for the repeated occlusion table.
    assert module.main(["--model", str(model), "--data", str(data), "--methods", "gradcam", "--limit", "1",
                        "--threads", "1", "--skip-randomisation", "--near-duplicates-of", str(data),
                        "--occlusion-fill", "mirror", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["without_near_duplicates"] == {"reference": str(data), "files": [], "occlusion": None}
    assert report["occlusion"]["fill"] == "mirror" and report["occlusion"]["summary"]["all"]["n"] == 2


def test_unfitted_classifier_raises_not_fitted(slices):
    from tumor_classifier import TumorClassifier
    from tumor_classifier.exceptions import NotFittedError

    box = Box("glioma/a.jpg", "glioma", 0.5, 0.5, 0.2, 0.2)
    for call in (
        lambda clf: score_image(clf, slices[0], box, "gradcam"),
        lambda clf: class_attribution(clf, slices[0], "glioma", "gradcam"),
        lambda clf: randomised_copy(clf),
    ):
        with pytest.raises(NotFittedError):
            call(TumorClassifier())
