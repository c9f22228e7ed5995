"""A Hub data set uploaded in the Kaggle layout (Training/, Testing/) keeps its splits for
``tumor-classifier evaluate`` and ``load_mri_dataset`` as the same folder on disk does
(``datasets`` alone reads such a repository as one train split). train_hf.py's side is
tests/test_train_hf_hub_data.py. The Hub is the in-process stand-in of hub_server.py: no network."""

import json

import pytest
from huggingface_hub import HfApi

from tumor_classifier.cli import main


@pytest.fixture
def kaggle_layout_repo(hub_env, data_dir) -> str:
    HfApi().create_repo("org/kaggle-layout", repo_type="dataset")
    HfApi().upload_folder(folder_path=data_dir, repo_id="org/kaggle-layout", repo_type="dataset")
    return "org/kaggle-layout"


def _report(source, model_dir, out) -> dict:
    assert main(["evaluate", str(source), "--model", str(model_dir), "--out", str(out)]) == 0
    return json.loads((out / "metrics.json").read_text())


def test_evaluate_scores_the_testing_images_of_a_hub_data_set_in_the_kaggle_layout(kaggle_layout_repo, data_dir, tiny_model_dir, tmp_path):
    from_hub = _report(kaggle_layout_repo, tiny_model_dir, tmp_path / "hub")
    on_disk = _report(data_dir, tiny_model_dir, tmp_path / "disk")
    assert from_hub["test"]["n"] == on_disk["test"]["n"] == 12  # the Testing images, not a part carved from both
    assert from_hub["test"]["confusion_matrix"] == on_disk["test"]["confusion_matrix"]
    assert from_hub["duplicates"] == on_disk["duplicates"]  # compared with the Training images


def test_load_mri_dataset_keeps_the_splits_of_a_hub_data_set_in_the_kaggle_layout(kaggle_layout_repo, data_dir):
    from tumor_classifier.data import load_mri_dataset

    from_hub, on_disk = load_mri_dataset(kaggle_layout_repo), load_mri_dataset(data_dir)
    assert {name: len(split) for name, split in from_hub.items()} == {"train": 28, "validation": 4, "test": 12}
    assert from_hub["test"]["label"] == on_disk["test"]["label"]
    assert [p.split("Testing")[-1] for p in from_hub["test"]["path"]] == [p.split("Testing")[-1] for p in on_disk["test"]["path"]]
