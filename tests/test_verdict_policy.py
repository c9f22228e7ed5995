"""One verdict policy: a colour photo is "not a brain MRI" with no tumour type in the library,
the CLI, REST and the app, and one image gets the same verdict through all four.

Real parts: scikit-learn's china.jpg file, the shipped learned MRI check, the session's tiny
fitted classifier, the CLI's main(), the app on a real uvicorn server on 127.0.0.1.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import requests

from tumor_classifier.app import build_app, predict_scan, start_in_background
from tumor_classifier.cli import main
from tumor_classifier.verdict import NOT_BRAIN_MRI, VERDICTS, decide_verdict, format_probability

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REST = "api/v1/predict"


@pytest.fixture(scope="module")
def china() -> Path:
    """scikit-learn's colour photo, as the file it ships (the rule check once let it through)."""
    import sklearn.datasets

    path = Path(sklearn.datasets.__file__).parent / "images" / "china.jpg"
    assert path.is_file()
    return path


@pytest.fixture(scope="module")
def kaggle_slice(data_dir) -> Path:
    return sorted((data_dir / "Testing" / "glioma").glob("*.jpg"))[0]


@pytest.fixture(scope="module")
def model_dir(fitted_classifier, tmp_path_factory):
    return fitted_classifier.save_pretrained(tmp_path_factory.mktemp("verdict") / "model")


@pytest.fixture(scope="module")
def server(fitted_classifier):
    """The app around the fitted classifier (default uncertainty threshold, as the CLI loads it)."""
    with start_in_background(build_app(fitted_classifier, max_batch_size=2)) as running:
        yield running


# ------------------------------------------------------------------ the policy itself
def test_the_policy_names_a_type_only_for_a_confident_brain_mri():
    proba = {"glioma": 0.7, "meningioma": 0.1, "notumor": 0.1, "pituitary": 0.1}
    tumour = decide_verdict(proba, brain_mri=True, uncertainty_threshold=0.6)
    assert (tumour.kind, tumour.label, tumour.tumor_type) == ("tumor", "glioma", "glioma")
    assert tumour.markdown.startswith("### Tumor detected: glioma")
    photo = decide_verdict(proba, brain_mri=False, uncertainty_threshold=0.6, reasons=["it has colours"])
    assert (photo.kind, photo.label, photo.tumor_type, photo.headline) == (NOT_BRAIN_MRI, NOT_BRAIN_MRI, None, "Not a brain MRI")
    assert "glioma" not in photo.markdown and "glioma" not in photo.text and "it has colours" in photo.text
    unsure = decide_verdict({"glioma": 0.5, "meningioma": 0.1, "notumor": 0.3, "pituitary": 0.1}, brain_mri=True, uncertainty_threshold=0.8)
    assert (unsure.kind, unsure.tumor_type, unsure.headline) == ("uncertain", None, "Uncertain")
    healthy = decide_verdict({"glioma": 0.05, "notumor": 0.95}, brain_mri=True, uncertainty_threshold=0.6)
    assert (healthy.kind, healthy.tumor_type) == ("no_tumor", None)
    assert {v.kind for v in (tumour, photo, unsure, healthy)} == set(VERDICTS)
    assert format_probability(0.9996) == "> 99.9%" and format_probability(0.0004) == "< 0.1%"


def test_a_sure_tumour_of_unsure_type_is_a_tumour_without_a_type():
    """Any tumour at 90% but no type at the threshold: "uncertain" would hide a near-certain
    finding, a type would claim what the model does not know."""
    proba = {"glioma": 0.45, "meningioma": 0.4, "notumor": 0.1, "pituitary": 0.05}
    verdict = decide_verdict(proba, brain_mri=True, uncertainty_threshold=0.6)
    assert (verdict.kind, verdict.label, verdict.tumor_type) == ("tumor", "glioma", None)
    assert verdict.headline == "Tumor, type uncertain"
    assert "Probability of a tumor: 90.0%" in verdict.text and "glioma" in verdict.text and "45.0%" in verdict.text
    # The same top class with the tumour itself in doubt stays uncertain.
    doubtful = decide_verdict({"glioma": 0.46, "meningioma": 0.06, "notumor": 0.44, "pituitary": 0.04}, brain_mri=True, uncertainty_threshold=0.6)
    assert doubtful.kind == "uncertain"
    # No tumour on top, even with the tumour classes summing high: no claim either way.
    split = decide_verdict({"glioma": 0.22, "meningioma": 0.22, "notumor": 0.34, "pituitary": 0.22}, brain_mri=True, uncertainty_threshold=0.6)
    assert split.kind == "uncertain"


# ------------------------------------------------------------------ china.jpg everywhere
def test_library_calls_china_not_a_brain_mri_and_names_no_type(fitted_classifier, china, kaggle_slice):
    assert fitted_classifier.is_brain_mri([china, kaggle_slice]).tolist() == [False, True]
    assert fitted_classifier.predict(china)[0] == NOT_BRAIN_MRI
    [explanation] = fitted_classifier.explain(china)
    assert explanation.label == NOT_BRAIN_MRI and explanation.verdict.kind == NOT_BRAIN_MRI
    assert explanation.verdict.tumor_type is None and not explanation.quality.looks_like_mri
    assert explanation.quality.reasons and explanation.verdict.mri_score < 0.5
    # The model's own probabilities stay available, and sum to one.
    np.testing.assert_allclose(fitted_classifier.predict_proba(china).sum(), 1.0, atol=1e-5)


def test_cli_calls_china_not_a_brain_mri(model_dir, china, capsys):
    assert main(["predict", str(china), "--model", str(model_dir), "--json"]) == 0
    [row] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert row["label"] == NOT_BRAIN_MRI and row["verdict"] == NOT_BRAIN_MRI and row["looks_like_mri"] is False
    assert row["message"].startswith("This does not look like a brain MRI slice")
    assert row["message"].lower().count("does not look like a brain mri") == 1  # the headline, not repeated by a reason
    assert main(["predict", str(china), "--model", str(model_dir)]) == 0
    table = capsys.readouterr().out
    line = next(text for text in table.splitlines() if text.startswith("china.jpg"))
    assert NOT_BRAIN_MRI in line and "Tumor detected" not in line


def test_rest_calls_china_not_a_brain_mri(server, china):
    response = requests.post(server.url + REST, files={"file": (china.name, china.read_bytes(), "image/jpeg")}, timeout=120)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["class"] == NOT_BRAIN_MRI and body["verdict"] == NOT_BRAIN_MRI and body["not_brain_mri"] is True
    assert body["quality_reasons"] and body["mri_score"] < 0.5 and "Tumor detected" not in body["message"]


def test_app_event_calls_china_not_a_brain_mri(fitted_classifier, china):
    verdict, label, heatmap, tumor = predict_scan(str(china), classifier=fitted_classifier)
    assert label == {"label": "Not a brain MRI", "confidences": []}  # no class bars that read as a type
    assert verdict.startswith("### This does not look like a brain MRI slice") and "Tumor detected" not in verdict
    assert tumor.startswith("n/a") and heatmap.size == (640, 427)


def test_a_kaggle_testing_slice_still_gets_a_type(confident_classifier, kaggle_slice):
    [explanation] = confident_classifier.explain(kaggle_slice)
    assert explanation.verdict.kind in ("tumor", "no_tumor") and explanation.quality.looks_like_mri
    assert explanation.label in confident_classifier.classes_
    _, label, _, _ = predict_scan(str(kaggle_slice), classifier=confident_classifier)
    assert label["label"] == explanation.label and label["confidences"]


# ------------------------------------------------------------------ one image, one verdict
def test_same_image_same_verdict_in_library_cli_rest_and_app(fitted_classifier, model_dir, server, china, kaggle_slice, capsys):
    for image in (china, kaggle_slice):
        [explanation] = fitted_classifier.explain(image)
        library = (explanation.verdict.kind, explanation.label)

        assert main(["predict", str(image), "--model", str(model_dir), "--json"]) == 0
        [row] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        cli = (row["verdict"], row["label"])

        response = requests.post(server.url + REST, files={"file": (image.name, image.read_bytes(), "image/jpeg")}, timeout=120)
        assert response.status_code == 200, response.text
        rest = (response.json()["verdict"], response.json()["class"])

        markdown, label, _, _ = predict_scan(str(image), classifier=fitted_classifier)
        assert markdown == explanation.verdict.markdown and label["label"] == explanation.verdict.headline

        assert library == cli == rest, (image.name, library, cli, rest)
