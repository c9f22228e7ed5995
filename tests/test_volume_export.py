"""Training slices from volumes: export_slices, the export-slices command, and train_hf.py
reading the written folder as no-tumour images (real NIfTI and DICOM files written here)."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import TINY_CONVNEXT
from tumor_classifier.cli import main
from tumor_classifier.data import load_no_tumour_images
from tumor_classifier.exceptions import InvalidArgumentError, InvalidDatasetError, InvalidVolumeError
from tumor_classifier.volume_export import export_slices
from tumor_classifier.volume_slices import head_slices
from tumor_classifier.volumes import load_volume
from volume_files import phantom, write_dicom_series, write_nifti

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import train_hf  # noqa: E402


@pytest.fixture(scope="module")
def nifti(tmp_path_factory):
    return write_nifti(tmp_path_factory.mktemp("volume") / "head.nii.gz", phantom())


def _plane(path: Path) -> str:
    return path.stem.split("_")[-2]


def test_each_plane_writes_the_slices_predict_volume_reads(nifti, tmp_path):
    written = export_slices(nifti, tmp_path / "slices")
    assert written == sorted(written, key=lambda p: (["axial", "coronal", "sagittal"].index(_plane(p)), p.name))
    assert sorted(p.name for p in (tmp_path / "slices").iterdir()) == sorted(p.name for p in written)
    for plane in ("axial", "coronal", "sagittal"):
        volume = load_volume(nifti, plane=plane)
        inside = np.flatnonzero(head_slices(volume.slices, 0.5))
        mine = [p for p in written if _plane(p) == plane]
        assert [int(p.stem.split("_")[-1]) for p in mine] == list(inside)
        assert all(p.name.startswith("head_") for p in mine)  # the .nii.gz ending is not part of the name
        for path in mine[:: max(1, len(mine) // 4)]:
            index = int(path.stem.split("_")[-1])
            assert np.array_equal(np.asarray(Image.open(path)), volume.slices[index])  # lossless, same grey levels


def test_step_fraction_and_planes_choose_fewer_slices(nifti, tmp_path):
    every = export_slices(nifti, tmp_path / "all", planes=["axial"])
    second = export_slices(nifti, tmp_path / "step", planes=["axial"], step=2)
    assert [p.name for p in second] == [p.name for p in every[::2]]
    fuller = export_slices(nifti, tmp_path / "full", planes=["axial"], min_head_fraction=0.95)
    assert 0 < len(fuller) < len(every)
    assert {_plane(p) for p in export_slices(nifti, tmp_path / "two", planes=["sagittal", "coronal"])} == {"sagittal", "coronal"}


def test_a_dicom_series_folder_is_named_after_the_folder(tmp_path):
    folder = tmp_path / "1.2.840.99.series"
    write_dicom_series(folder, phantom())
    written = export_slices(folder, tmp_path / "out", planes=["axial"])
    assert written and all(p.name.startswith("1.2.840.99.series_axial_") for p in written)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"step": 0}, "step must be >= 1"),
        ({"min_head_fraction": 1.5}, "min_head_fraction in"),
        ({"planes": ["axial", "axial"]}, "distinct names"),
        ({"planes": ["oblique"]}, "distinct names among axial, coronal, sagittal"),
        ({"planes": []}, "distinct names"),
    ],
)
def test_bad_settings_are_refused_before_anything_is_written(nifti, tmp_path, kwargs, match):
    with pytest.raises(InvalidArgumentError, match=match):
        export_slices(nifti, tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_a_plane_that_cannot_be_cut_writes_nothing(tmp_path):
    slices = (phantom()[:, :, :].transpose(2, 1, 0) > 0).astype(np.uint8) * 200
    with pytest.raises(InvalidVolumeError, match="coronal"):
        export_slices(slices, tmp_path / "out", planes=["axial", "coronal"])
    assert not (tmp_path / "out").exists()
    written = export_slices(slices, tmp_path / "out", planes=["axial"])
    assert written and all(p.name.startswith("volume_axial_") for p in written)


def test_a_file_where_the_folder_should_be_is_refused(nifti, tmp_path):
    (tmp_path / "taken").write_text("not a folder")
    with pytest.raises(InvalidArgumentError, match="is a file, not a folder"):
        export_slices(nifti, tmp_path / "taken")
    assert (tmp_path / "taken").read_text() == "not a folder"


def test_the_command_reports_what_it_wrote(nifti, tmp_path, capsys):
    assert main(["export-slices", str(nifti), "--out", str(tmp_path / "out"), "--planes", "axial", "coronal", "--step", "3"]) == 0
    written = sorted((tmp_path / "out").glob("*.png"))
    axial = sum(_plane(p) == "axial" for p in written)
    assert capsys.readouterr().out.strip() == (
        f"{len(written)} slices written to {tmp_path / 'out'} ({axial} axial, {len(written) - axial} coronal)."
    )
    assert main(["export-slices", str(nifti), "--out", str(tmp_path / "full"), "--planes", "axial", "coronal", "--step", "3",
                 "--min-head-fraction", "0.95"]) == 0
    assert 0 < len(list((tmp_path / "full").glob("*.png"))) < len(written)
    capsys.readouterr()
    assert main(["export-slices", str(tmp_path / "missing.nii.gz"), "--out", str(tmp_path / "other")]) == 2
    assert "error:" in capsys.readouterr().err and not (tmp_path / "other").exists()


def test_no_tumour_folders_must_hold_images(tmp_path):
    with pytest.raises(InvalidDatasetError, match="no-tumour image folder .* does not exist"):
        load_no_tumour_images([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidDatasetError, match="No images .* below the no-tumour folder"):
        load_no_tumour_images([tmp_path / "empty"])


def test_train_hf_trains_the_exported_slices_as_notumor(tmp_path, data_dir, nifti):
    written = export_slices(nifti, tmp_path / "healthy", step=4)
    common = [
        "--data_dir", str(data_dir),
        "--backbone", "convnext", "--from_scratch", "--image_size", "64",
        "--config_overrides", json.dumps(TINY_CONVNEXT),
        "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16",
        "--max_steps", "1", "--save_strategy", "no", "--eval_strategy", "no", "--disable_tqdm", "true",
        "--pixel_cache_dir", str(tmp_path / "cache"), "--seed", "0",
    ]  # fmt: skip
    plain = train_hf.main(common + ["--output_dir", str(tmp_path / "plain")])
    result = train_hf.main(common + ["--no_tumour_dirs", str(tmp_path / "healthy"), "--output_dir", str(tmp_path / "model")])
    training = result.metrics["training"]
    assert training["no_tumour_images"] == len(written)
    assert training["train_images"] == plain.metrics["training"]["train_images"] + len(written)
    assert training["no_tumour_sources"] == [str(tmp_path / "healthy")]
    assert "no_tumour_images" not in plain.metrics["training"]
    # Through a pixel pack (as on a lent GPU): the slices travel in it and train as notumor.
    pack = tmp_path / "pack.npz"
    train_hf.main(common + ["--no_tumour_dirs", str(tmp_path / "healthy"), "--output_dir", str(tmp_path / "unused"),
                            "--write_pixel_pack", str(pack)])
    packed = train_hf.main(common + ["--pixel_pack", str(pack), "--output_dir", str(tmp_path / "from-pack")])
    assert packed.metrics["training"]["no_tumour_images"] == len(written)
    assert packed.metrics["training"]["train_images"] == training["train_images"]
    assert "no_tumour_sources" not in packed.metrics["training"]
    with pytest.raises(InvalidDatasetError, match="no-tumour image folder"):
        train_hf.main(common + ["--no_tumour_dirs", str(tmp_path / "nope"), "--output_dir", str(tmp_path / "never")])
    assert not (tmp_path / "never").exists()
