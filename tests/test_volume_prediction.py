"""The volume verdict: the aggregation rule by hand, predict_volume and the CLI on real files.

A tiny random-weight ConvNeXt saved as a model folder stands in for a trained model here:
these tests check the plumbing and the rule, not accuracy (the shipped model on real
volumes is tests/test_volume_verdicts.py).
"""

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from tumor_classifier import TumorClassifier
from tumor_classifier.cli import main
from tumor_classifier.exceptions import InvalidArgumentError
from tumor_classifier.models import create_model
from tumor_classifier.preprocessing import MRIPreprocessor
from tumor_classifier.volume_prediction import VolumePrediction, aggregate, runs_at_least
from tumor_classifier.volumes import load_volume

from conftest import CLASSES, TINY_CONVNEXT
from volume_files import phantom, write_dicom_series, write_nifti


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, one_torch_thread):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-model")
    model = create_model("convnext", class_names=list(CLASSES), from_scratch=True, image_size=32, config_overrides=TINY_CONVNEXT)
    model.save_pretrained(folder)
    MRIPreprocessor(size=32).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def clf(model_dir):
    return TumorClassifier.from_pretrained(model_dir)


def test_runs_at_least_counts_consecutive_slices_and_nan_breaks_a_run():
    values = np.array([0.1, 0.6, 0.7, np.nan, 0.8, 0.9, 0.95, 0.2, 0.5])
    assert runs_at_least(values, 0.5, 3) == [(4, 6)]
    assert runs_at_least(values, 0.5, 2) == [(1, 2), (4, 6)]
    assert runs_at_least(values, 0.5, 1) == [(1, 2), (4, 6), (8, 8)]
    assert runs_at_least(values, 0.99, 1) == []


def _proba(tumour: list[float], tumour_class: str = "glioma") -> np.ndarray:
    """Rows over CLASSES: the tumour probability goes to one class, the rest to notumor."""
    rows = np.zeros((len(tumour), len(CLASSES)), dtype=np.float32)
    for i, p in enumerate(tumour):
        if np.isnan(p):
            rows[i] = np.nan
        else:
            rows[i, CLASSES.index(tumour_class)] = p
            rows[i, CLASSES.index("notumor")] = 1 - p
    return rows


def test_aggregate_by_hand():
    classes = list(CLASSES)
    # One confident slice is not a tumour; three in a row are.
    label, p, _, runs, key = aggregate(_proba([0.1, 0.99, 0.1, 0.2, 0.1]), classes)
    assert (label, runs, key) == ("notumor", [], 1)
    assert p == pytest.approx((0.99 + 0.1 + 0.2) / 3)  # the best mean over 3 consecutive slices
    proba = _proba([np.nan, 0.2, 0.6, 0.9, 0.7, 0.1, np.nan])
    proba[2:5] = _proba([0.6, 0.9, 0.7], "pituitary")
    label, p, mean, runs, key = aggregate(proba, classes)
    assert (label, runs, key) == ("pituitary", [(2, 4)], 3)
    assert p == pytest.approx((0.6 + 0.9 + 0.7) / 3)
    assert mean[classes.index("pituitary")] == pytest.approx(p)
    # The type is the mean over every qualifying run: glioma in a short run, meningioma in a long one.
    proba = np.concatenate([_proba([0.9, 0.9, 0.9], "glioma"), _proba([0.1]), _proba([0.8] * 5, "meningioma")])
    label, _, _, runs, key = aggregate(proba, classes)
    assert label == "meningioma" and runs == [(0, 2), (4, 8)] and 4 <= key <= 8


def test_predict_volume_on_a_nifti_file(clf, tmp_path):
    path = write_nifti(tmp_path / "head.nii.gz", phantom())
    result = clf.predict_volume(path)
    assert isinstance(result, VolumePrediction)
    n = len(result.volume)
    assert result.slice_probabilities.shape == (n, len(CLASSES))
    classified = result.classified
    assert classified.any() and not classified.all()  # the caps of the phantom are skipped
    assert np.isnan(result.slice_probabilities[~classified]).all()
    np.testing.assert_allclose(result.slice_probabilities[classified].sum(axis=1), 1, atol=1e-5)
    # The verdict follows the documented rule from the per-slice numbers.
    assert result.tumour == bool(runs_at_least(result.slice_tumour_probability, result.threshold, result.min_run))
    assert (result.model_label == "notumor") == (not result.tumour)
    assert classified[result.key_slice]
    assert result.explanation.attribution.shape == result.volume.slices[result.key_slice].shape
    assert result.mri_check in ("is_brain_mri", "assess_image") and isinstance(result.looks_like_mri, bool)
    assert (result.label is None) == (not result.looks_like_mri)
    table = result.slice_table()
    assert len(table) == n and set(CLASSES) <= set(table[0])


def test_predict_volume_takes_arrays_and_volumes_and_planes(clf, tmp_path):
    path = write_nifti(tmp_path / "head.nii.gz", phantom())
    volume = load_volume(path)
    from_volume = clf.predict_volume(volume, explain=False)
    from_array = clf.predict_volume(volume.slices, explain=False)
    np.testing.assert_allclose(from_volume.slice_probabilities, from_array.slice_probabilities, atol=1e-6)
    assert from_volume.explanation is None
    coronal = clf.predict_volume(nib.load(str(path)), plane="coronal", explain=False)
    assert coronal.volume.plane == "coronal" and len(coronal.volume) == phantom().shape[1]
    assert any("chosen on axial cuts" in note for note in coronal.notes)  # the user is told the plane is less tried
    assert not any("axial cuts" in note for note in from_volume.notes)


def test_predict_volume_settings_are_checked(clf):
    with pytest.raises(ValueError, match="min_run must be >= 1"):
        clf.predict_volume(np.moveaxis(phantom(), 2, 0), min_run=0)


@pytest.mark.parametrize(
    "setting, message",
    [
        ({"mri_check_slices": 0}, r"mri_check_slices must be >= 1"),
        ({"min_head_fraction": -0.1}, r"min_head_fraction must be in \[0, 1\]"),
        ({"min_head_fraction": 1.5}, r"min_head_fraction must be in \[0, 1\]"),
    ],
)
def test_predict_volume_refuses_the_other_settings_out_of_range(clf, setting, message):
    """mri_check_slices=0 checked no slice and flagged every volume 'not a brain MRI' (the mean of
    no verdicts is NaN); min_head_fraction 1.5 blamed the volume ('no slice holds a head')."""
    with pytest.raises(InvalidArgumentError, match=message):
        clf.predict_volume(np.moveaxis(phantom(), 2, 0), explain=False, **setting)


def test_cli_predicts_a_nifti_with_slices_plot_and_overlay(model_dir, tmp_path, capsys):
    path = write_nifti(tmp_path / "head.nii.gz", phantom())
    out = tmp_path / "out"
    assert main(["predict", str(path), "--model", str(model_dir), "--slices", "--explain", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"{path}: " in printed and ("no tumor" in printed or "tumor, type" in printed or "NOT A BRAIN MRI" in printed)
    assert "(not at brain level, not classified)" in printed  # the --slices table
    # The tiny model's check flags the phantom: its slice table is the model's output, no answer.
    assert "NOT A BRAIN MRI" in printed and "per-slice probabilities below are the model's output, no answer about a tumor" in printed
    files = sorted(p.name for p in out.iterdir())
    assert any(name.startswith("000_head_key_slice_") for name in files) and "000_head_slice_probabilities.png" in files
    assert "Research use only" in printed


def test_cli_json_for_a_dicom_folder_and_a_clear_error_for_ct(model_dir, tmp_path, capsys):
    write_dicom_series(tmp_path / "mr", phantom())
    write_dicom_series(tmp_path / "ct", phantom(), modality="CT")
    assert main(["predict", str(tmp_path / "mr"), str(tmp_path / "ct"), "--model", str(model_dir), "--json"]) == 1
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows[0]["volume"] == str(tmp_path / "mr") and rows[0]["plane"] == "axial"
    assert rows[0]["classified_slices"] < rows[0]["slices"] == phantom().shape[2]
    assert "not MRI" in rows[1]["error"]


def test_cli_volumes_beside_images_one_disclaimer_and_names_that_tell_files_apart(model_dir, tmp_path, capsys):
    from PIL import Image

    volume = write_nifti(tmp_path / "head.nii.gz", phantom())
    slices = load_volume(volume).slices
    for folder in ("a", "b"):  # two scans with one name
        (tmp_path / folder).mkdir()
        Image.fromarray(slices[len(slices) // 2]).save(tmp_path / folder / "scan.png")
    images = [str(tmp_path / "a" / "scan.png"), str(tmp_path / "b" / "scan.png")]
    assert main(["predict", str(volume), *images, "--model", str(model_dir)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("Research use only") == 1
    rows = [line.split()[0] for line in printed.splitlines() if "scan.png" in line]
    assert len(rows) == 2 and rows[0] != rows[1]  # not "scan.png" twice


def test_cli_json_gives_no_tumour_answer_for_a_volume_flagged_not_mri(model_dir, tmp_path, capsys):
    volume = write_nifti(tmp_path / "head.nii.gz", phantom())
    assert main(["predict", str(volume), "--model", str(model_dir), "--json"]) == 0
    [row] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert row["looks_like_mri"] is False  # the tiny test model's check flags the phantom
    assert row["label"] is None and row["tumour"] is None and row["model_label"] in CLASSES
    assert row["verdict"] == "not_brain_mri"  # the key an image's JSON line and an archive row have


def test_the_mni152_template_is_a_healthy_brain_mri(one_torch_thread):
    """A real healthy T1 with skull that CI has (nilearn's wheel), with the shipped model.

    The brain-level gate and the volume MRI check were chosen on it (and on one more
    healthy volume), so this pins that choice rather than validating it.
    """
    nilearn = pytest.importorskip("nilearn")
    from pathlib import Path

    template = Path(nilearn.__file__).parent / "datasets" / "data" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
    result = TumorClassifier.from_pretrained().predict_volume(template, explain=False)
    assert result.looks_like_mri and result.label == "notumor" and not result.runs, (result.runs, result.mri_reasons)
    assert 0.2 < result.classified.mean() < 0.4  # brain-level slices only (53 of 189)


def test_volume_figures_and_text_carry_the_volume_verdict_not_the_key_slices_own(clf, tmp_path, capsys):
    """The key-slice overlay of a volume said what the 2-D check made of that one slice
    ("Not a brain MRI") under a volume verdict of "tumour, glioma"; and a flagged volume's
    printed summary and plot showed a tumour probability and runs as if they were an answer."""
    import dataclasses

    result = clf.predict_volume(write_nifti(tmp_path / "head.nii.gz", phantom()))
    assert not result.looks_like_mri  # the tiny test model's check flags the phantom
    n = len(result.classified)
    title, target = result.figure_text()
    assert f"Axial slice {result.key_slice}/{n}" in title and "not a brain MRI" in title and "diagnostic" in title
    assert target == "the model's top class"  # no tumour type named for a flagged volume
    plot = result.plot_title("head.nii.gz")
    assert "head.nii.gz" in plot and "NOT A BRAIN MRI" in plot and "no answer" in plot
    assert dataclasses.replace(result, runs=[(0, 2)]).shown_runs == []  # the CLI's plot shades none either
    summary = result.summary()
    assert "tumor probability" not in summary and "runs" not in summary and f"key slice {result.key_slice}" in summary
    # The same volume had it passed the check, whatever its key slice's own check says.
    passing = dataclasses.replace(result, looks_like_mri=True, label=result.model_label, tumour=True, runs=[(0, 2)])
    title, target = passing.figure_text()
    assert f"volume: {passing.label} (" in title and "not a brain mri" not in title.lower()
    explained = max(result.explanation.probabilities, key=result.explanation.probabilities.get)
    assert target == explained
    assert "tumor probability" in passing.summary()
    # One spelling in what is printed, as in the app and the slice verdicts ("tumour, type glioma" before).
    healthy = dataclasses.replace(passing, tumour=False, runs=[])
    printed = [passing.headline, passing.summary(), title, healthy.headline, healthy.figure_text()[0]]
    assert passing.headline.startswith("tumor, type ") and healthy.headline == "no tumor"
    assert not any("tumour" in text for text in printed), printed


def test_cli_predicts_each_sequence_of_a_brats_case_folder(model_dir, tmp_path, capsys):
    """A BraTS case folder was refused as 'a directory, not an image file; give the path of one
    image file', under an empty table header."""
    case = tmp_path / "BraTS-GLI-00000-000"
    case.mkdir()
    for name in ("t2f", "t1n", "seg"):
        write_nifti(case / f"BraTS-GLI-00000-000-{name}.nii.gz", phantom())
    assert main(["predict", str(case), "--model", str(model_dir)]) == 0
    printed = capsys.readouterr().out
    verdicts = [line.split(": ")[0] for line in printed.splitlines() if line.startswith(str(case))]
    assert verdicts == [str(case / "BraTS-GLI-00000-000-t1n.nii.gz"), str(case / "BraTS-GLI-00000-000-t2f.nii.gz")]
    assert "image " not in printed  # no empty table of images


def test_cli_on_a_zip_of_a_dicom_series_says_to_unzip_it(model_dir, tmp_path, capsys):
    """A zipped series (what PACS and the app's upload take) was refused as 'not an image in a
    format this package reads; accepted: JPEG, PNG ...', with no word of volumes or zips."""
    import zipfile

    _, paths = write_dicom_series(tmp_path / "series", phantom())
    with zipfile.ZipFile(tmp_path / "series.zip", "w") as bundle:
        for path in paths:
            bundle.write(path, f"series/{path.name}")
    assert main(["predict", str(tmp_path / "series.zip"), "--model", str(model_dir)]) == 1
    err = capsys.readouterr().err
    assert "series.zip is a zip archive" in err and "unzip it" in err and "Traceback" not in err


def test_cli_volume_figures_of_two_scans_with_one_name_do_not_overwrite_each_other(model_dir, tmp_path, capsys):
    """a/t1c.nii.gz and b/t1c.nii.gz (two BraTS cases, say) wrote one t1c_slice_probabilities.png,
    the second over the first; a series folder named by its UID became '1_...'."""
    for case in ("a", "b"):
        (tmp_path / case).mkdir()
        write_nifti(tmp_path / case / "t1c.nii.gz", phantom())
    write_dicom_series(tmp_path / "1.2.840.5", phantom())
    volumes = [str(tmp_path / "a" / "t1c.nii.gz"), str(tmp_path / "b" / "t1c.nii.gz"), str(tmp_path / "1.2.840.5")]
    out = tmp_path / "out"
    assert main(["predict", *volumes, "--model", str(model_dir), "--explain", "--out", str(out)]) == 0
    files = sorted(p.name for p in out.iterdir())
    assert len(files) == 6 and sum(name.endswith("_slice_probabilities.png") for name in files) == 3
    assert any(name.startswith("002_1.2.840.5_") for name in files), files
    printed = capsys.readouterr().out
    assert all(str(out / name) in printed for name in files)  # each written file is named beside its volume
