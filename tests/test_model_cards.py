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
from tumor_classifier.metrics import classification_metrics  # noqa: E402
from tumor_classifier.reports import write_model_card  # noqa: E402

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
