"""Model cards (the Hub README.md of a model folder) say what holds for the model in that
folder: the data it was trained on, the duplicates measured there, the figures its own
training measured, and how plain transformers loads it - whichever way the folder was made."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from train_runs import tiny_run_args  # also puts the repository on sys.path

import train_hf  # noqa: E402
from conftest import TINY_CONVNEXT  # noqa: E402
from tumor_classifier import TumorClassifier  # noqa: E402
from tumor_classifier.classifier import DEFAULT_MODEL_DIR  # noqa: E402
from tumor_classifier.data import carve_indices  # noqa: E402
from tumor_classifier.metrics import classification_metrics  # noqa: E402
from tumor_classifier.reports import metrics_table, write_model_card  # noqa: E402

#: What only the Kaggle brain-tumour set (and the shipped model trained on it) can claim.
KAGGLE_ONLY = ("figshare", "SARTAJ", "Br35H")


def _shown_files(card: str) -> set[str]:
    return set(re.findall(r"\]\(([^)\s]+\.png)\)", card))


def _assert_shows_only_files_it_has(folder: Path) -> str:
    card = (folder / "README.md").read_text()
    missing = {name for name in _shown_files(card) if not (folder / name).is_file()}
    assert not missing, f"the card shows plots the folder lacks: {sorted(missing)}"
    return card


@pytest.fixture(scope="module")
def own_data(tmp_path_factory, data_dir) -> Path:
    """A user's own folder in the Kaggle layout: the shipped slices, plus one test image that
    is a byte copy of a training image."""
    folder = tmp_path_factory.mktemp("cards") / "my-scans"
    shutil.copytree(data_dir, folder)
    copied = sorted((folder / "Training" / "glioma").glob("*.jpg"))[0]
    shutil.copyfile(copied, folder / "Testing" / "glioma" / "copy-of-a-training-slice.jpg")
    return folder


@pytest.fixture(scope="module")
def own_data_run(own_data, tmp_path_factory, one_torch_thread) -> Path:
    output = tmp_path_factory.mktemp("cards") / "model"
    train_hf.main(tiny_run_args(own_data, output, "--num_train_epochs", "1", "--pixel_cache_dir", ""))
    return output


def test_a_card_for_a_model_trained_on_own_data_describes_that_data(own_data_run, own_data):
    card = _assert_shows_only_files_it_has(own_data_run)
    metrics = json.loads((own_data_run / "metrics.json").read_text())
    for claim in KAGGLE_ONLY:
        assert claim not in card, claim
    assert str(own_data) in card
    assert f"{metrics['training']['train_images']} training images" in card
    for split in ("validation", "test"):
        assert f"{metrics[split]['n']} {split} images" in card


def test_a_card_reports_the_duplicates_measured_not_a_fixed_sentence(own_data_run):
    card = (own_data_run / "README.md").read_text()
    duplicates = json.loads((own_data_run / "metrics.json").read_text())["duplicates"]
    assert duplicates["byte_identical"] == 1  # the copied slice, found
    near = duplicates["queries"] - duplicates["without_near_duplicate"]
    assert f"{near} of the {duplicates['queries']} test images have a near duplicate" in card.replace("\n", " ")
    assert "1 of them byte-identical" in card


def test_a_card_for_a_model_trained_from_a_pixel_pack_names_the_images_it_was_made_from(own_data, tmp_path, one_torch_thread):
    pack = tmp_path / "pack.npz"
    train_hf.main(tiny_run_args(own_data, tmp_path / "unused", "--write_pixel_pack", str(pack), "--pixel_cache_dir", ""))
    output = tmp_path / "model"
    train_hf.main(tiny_run_args(tmp_path / "elsewhere", output, "--max_steps", "1", "--pixel_pack", str(pack),
                                "--save_strategy", "no", "--load_best_model_at_end", "false"))  # fmt: skip
    card = _assert_shows_only_files_it_has(output)
    assert f"the images of `{own_data}`, prepared as the pixel pack `{pack}`" in card
    assert "1 of them byte-identical" in card  # the duplicate check made where the images were


def test_a_card_without_duplicates_does_not_call_the_test_split_inflated(tmp_path):
    validation = classification_metrics(np.array([0, 1]), np.array([[0.9, 0.1], [0.2, 0.8]]), ["notumor", "tumor"])
    metrics = {
        "validation": validation, "test": validation, "test_without_near_duplicates": validation,
        "duplicates": {"queries": 2, "byte_identical": 0, "same_phash": 0, "phash_within_4": 0, "without_near_duplicate": 2},
        "training": {"backbone": "convnext", "image_size": 64, "epochs_run": 1.0, "train_images": 20, "data": "org/scans"},
    }  # fmt: skip
    card = write_model_card(tmp_path, metrics, [], ["notumor", "tumor"]).read_text()
    assert "inflated" not in card and "byte-identical" not in card
    assert "No test image has a near duplicate" in card
    assert "`org/scans`" in card and not any(claim in card for claim in KAGGLE_ONLY)

@pytest.mark.parametrize(("epochs", "images", "expected"), [
    (1.0, 1, "1 epoch, 1 training image"),
    (2.0, 5, "2 epochs, 5 training images"),
    (0.67, 9, "0.67 epochs, 9 training images"),
])  # fmt: skip
def test_a_card_counts_in_words_that_agree_with_the_number(tmp_path, epochs, images, expected):
    validation = classification_metrics(np.array([0, 1]), np.array([[0.9, 0.1], [0.2, 0.8]]), ["notumor", "tumor"])
    metrics = {"validation": validation, "training": {"backbone": "convnext", "image_size": 64, "epochs_run": epochs, "train_images": images}}
    card = write_model_card(tmp_path, metrics, [], ["notumor", "tumor"]).read_text()
    assert expected in card.replace("\n", " ")


def test_the_card_of_a_train_hf_run_says_1_epoch(own_data_run):
    card = (own_data_run / "README.md").read_text().replace("\n", " ")
    assert "1 epoch," in card and "1 epochs" not in card



def test_a_card_says_one_duplicate_in_the_singular(tmp_path):
    validation = classification_metrics(np.array([0, 1]), np.array([[0.9, 0.1], [0.2, 0.8]]), ["notumor", "tumor"])
    metrics = {
        "validation": validation, "test": validation, "test_without_near_duplicates": validation,
        "duplicates": {"queries": 2, "byte_identical": 1, "same_phash": 1, "phash_within_4": 1, "without_near_duplicate": 1},
        "training": {"backbone": "convnext", "image_size": 64, "epochs_run": 1.0, "train_images": 20},
    }  # fmt: skip
    card = write_model_card(tmp_path, metrics, [], ["notumor", "tumor"]).read_text().replace("\n", " ")
    assert "1 of the 2 test images has a near duplicate" in card and "keeps only the 1 test image without one" in card

@pytest.fixture(scope="module")
def fitted_folder(fitted_classifier, tmp_path_factory) -> Path:
    return fitted_classifier.save_pretrained(tmp_path_factory.mktemp("cards") / "fitted")


def test_a_fitted_and_saved_model_gets_a_card_with_the_figures_fit_measured(fitted_folder, fitted_classifier, train_images):
    card = _assert_shows_only_files_it_has(fitted_folder)
    metrics = json.loads((fitted_folder / "metrics.json").read_text())
    assert "TumorClassifier.fit" in card and "train_hf.py" not in card
    assert not any(claim in card for claim in KAGGLE_ONLY)
    assert "| test |" not in card and "test_without_near_duplicates" not in card  # fit measures no test split
    # The validation row is the held-out calibration images, measured again here.
    paths, labels = train_images
    _, held_out = carve_indices(np.asarray(labels), 0.25, 0)
    predicted = fitted_classifier.predict([paths[i] for i in held_out])
    accuracy = float(np.mean(predicted == np.asarray(labels)[held_out]))
    assert metrics["validation"]["n"] == len(held_out) == 8
    assert metrics["validation"]["accuracy"] == pytest.approx(accuracy)
    assert f"| validation | 8 | {100 * accuracy:.2f}% |" in card
    assert "30 epochs" in card.replace("\n", " ") and f"{32 - 8} training images" in card.replace("\n", " ")


def test_a_fit_without_held_out_images_reports_no_figures(train_images, tmp_path, one_torch_thread):
    paths, labels = train_images
    clf = TumorClassifier("convnext", from_scratch=True, image_size=32, epochs=1, batch_size=16, validation_size=0,
                          augment=False, config_overrides=TINY_CONVNEXT, verbose=0)  # fmt: skip
    folder = clf.fit(paths, labels).save_pretrained(tmp_path / "model")
    card = _assert_shows_only_files_it_has(folder)
    assert "| validation |" not in card and "n/a" not in card and "nan" not in card
    assert "no images were held out" in card
    assert "temperature" not in card.lower().replace("no temperature", "")


def test_a_loaded_model_saved_elsewhere_keeps_its_card_and_what_it_shows(fitted_folder, tmp_path):
    again = TumorClassifier.from_pretrained(fitted_folder).save_pretrained(tmp_path / "again")
    assert (again / "README.md").read_text() == (fitted_folder / "README.md").read_text()
    assert (again / "metrics.json").read_text() == (fitted_folder / "metrics.json").read_text()
    _assert_shows_only_files_it_has(again)
    TumorClassifier.from_pretrained(again).save_pretrained(again)  # onto itself: nothing lost
    assert (again / "README.md").read_text() == (fitted_folder / "README.md").read_text()



def test_a_model_saved_without_a_recorded_training_gets_a_card_that_claims_only_its_classes(tiny_model_dir, tmp_path):
    """A folder from elsewhere (no card, no record of its training): the card names the
    classes and no figures; an ensemble's does not offer plain transformers for the folder."""
    from tumor_classifier.ensemble import build_ensemble

    single = TumorClassifier.from_pretrained(tiny_model_dir).save_pretrained(tmp_path / "single")
    card = _assert_shows_only_files_it_has(single)
    assert "library_name: transformers\n" in card and "glioma, meningioma, notumor, pituitary" in card
    assert "| validation |" not in card and not any(claim in card for claim in KAGGLE_ONLY)
    build_ensemble([tiny_model_dir, tiny_model_dir], output_dir=tmp_path / "members")
    ensemble = TumorClassifier.from_pretrained(tmp_path / "members").save_pretrained(tmp_path / "ensemble")
    assert "library_name: tumor-classifier\n" in (ensemble / "README.md").read_text()

def test_the_shipped_card_says_plain_transformers_needs_the_efficientnet_import():
    card = (DEFAULT_MODEL_DIR / "README.md").read_text()
    assert "once `import tumor_classifier.efficientnet` has registered EfficientNet-Lite" in card
    # Its figures are still those of metrics.json.
    metrics = json.loads((DEFAULT_MODEL_DIR / "metrics.json").read_text())
    sections = {k: metrics[k] for k in ("validation", "test", "test_without_near_duplicates")}
    assert metrics_table(sections) in card


def test_the_card_of_a_run_without_calibration_says_it_is_not_calibrated(own_data, tmp_path, one_torch_thread):
    output = tmp_path / "model"
    train_hf.main(tiny_run_args(own_data, output, "--max_steps", "1", "--no_calibrate", "--pixel_cache_dir", "",
                                "--save_strategy", "no", "--load_best_model_at_end", "false"))  # fmt: skip
    card = (output / "README.md").read_text()
    ece = json.loads((output / "metrics.json").read_text())["calibration"]["validation_ece_before"]
    assert "fitted on validation" not in card and "folding it into the head" not in card
    assert f"The probabilities are not calibrated (`--no_calibrate`); validation ECE {ece:.4f}." in card
