"""train_hf.py on a Hub data set in the Kaggle layout: Training/ is trained on and Testing/
is the test split, as for the same folder on disk (``datasets`` reads such a repository as
one train split, so the test images were trained on and the test split carved from both).
The Hub is the in-process stand-in of hub_server.py: no network."""

import numpy as np
from huggingface_hub import HfApi

from train_runs import tiny_run_args  # also puts the repository on sys.path

import train_hf  # noqa: E402


def _splits(data, tmp_path, name):
    """The splits a run prepares from ``data``: counts and the test split's pixels, from its pixel pack."""
    from tumor_classifier.pixels import read_pixel_pack

    pack = tmp_path / f"{name}.npz"
    args = tiny_run_args(data, tmp_path / name, "--pixel_cache_dir", "", "--write_pixel_pack", str(pack))
    counts = train_hf.main(args).metrics["pixel_pack"]
    return counts, read_pixel_pack(pack).arrays["test"]


def test_a_hub_data_set_in_the_kaggle_layout_keeps_its_testing_split(hub_env, data_dir, tmp_path):
    HfApi().create_repo("org/kaggle-layout", repo_type="dataset")
    HfApi().upload_folder(folder_path=data_dir, repo_id="org/kaggle-layout", repo_type="dataset")
    from_hub, hub_test = _splits("org/kaggle-layout", tmp_path, "hub")
    on_disk, disk_test = _splits(data_dir, tmp_path, "disk")
    assert from_hub == on_disk == {"train": 28, "validation": 4, "test": 12}
    np.testing.assert_array_equal(hub_test[1], disk_test[1])
    np.testing.assert_array_equal(hub_test[0], disk_test[0])  # the same 12 Testing images
