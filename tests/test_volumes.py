"""Reading volumes: NIfTI and DICOM files written here with nibabel and pydicom, BraTS cases.

Every file is real (written by the libraries that write them in practice); the phantom
carries markers whose place says whether orientation and slice order came out right.
"""

import random

import pydicom
import nibabel as nib
import numpy as np
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
from volume_files import SHAPE, phantom, write_dicom_series, write_nifti

from tumor_classifier.exceptions import InvalidDatasetError, InvalidImageError, InvalidVolumeError, TimePointRequiredError
from tumor_classifier.volume_slices import frame_head
from tumor_classifier.volumes import (
    BRATS_SEQUENCES,
    Volume,
    brats_slice_dataset,
    head_slices,
    load_brats_case,
    load_volume,
    read_raw,
    robust_window,
)


def marker_position(slices: np.ndarray, level: int = 255) -> tuple[float, float, float]:
    """Mean (slice, row, column) of the brightest voxels."""
    return tuple(float(i.mean()) for i in np.nonzero(slices >= level))


# ------------------------------------------------------------------------------- NIfTI


def test_nifti_axial_slices_run_inferior_to_superior_anterior_up_patient_right_on_the_left(tmp_path):
    volume = load_volume(write_nifti(tmp_path / "p.nii.gz", phantom()))
    assert isinstance(volume, Volume) and volume.plane == "axial"
    assert volume.slices.dtype == np.uint8 and volume.slices.shape == (SHAPE[2], SHAPE[1], SHAPE[0])
    k, row, col = marker_position(volume.slices)
    assert 8 <= k < 12  # the anterior-right marker sits mid-height
    assert row < SHAPE[1] / 3  # anterior at the top
    assert col < SHAPE[0] / 3  # patient right on the image left (radiological)


@pytest.mark.parametrize("flips", [(0,), (1,), (0, 1), (2,), (0, 1, 2)])
def test_orientation_comes_from_the_affine_not_the_axis_order(tmp_path, flips):
    """The same head stored flipped (LAS, LPS, RAI ...) or with axes swapped reads the same."""
    data = phantom()
    reference = load_volume(write_nifti(tmp_path / "ras.nii", data))
    affine = np.eye(4)
    stored = data.copy()
    for axis in flips:  # flip the storage and let the affine point the axis the other way
        stored = np.flip(stored, axis)
        affine[axis, axis] = -1
        affine[axis, 3] = SHAPE[axis] - 1
    flipped = load_volume(write_nifti(tmp_path / "flipped.nii", np.ascontiguousarray(stored), affine))
    np.testing.assert_array_equal(flipped.slices, reference.slices)
    # Swap x and y in storage, with an affine that says so.
    swapped_affine = np.array([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=float)
    swapped = load_volume(write_nifti(tmp_path / "swapped.nii", np.ascontiguousarray(data.transpose(1, 0, 2)), swapped_affine))
    np.testing.assert_array_equal(swapped.slices, reference.slices)


def test_coronal_and_sagittal_planes(tmp_path):
    path = write_nifti(tmp_path / "p.nii.gz", phantom())
    coronal = load_volume(path, plane="coronal")
    assert coronal.slices.shape == (SHAPE[1], SHAPE[2], SHAPE[0])
    k, row, col = marker_position(coronal.slices)
    assert k > 2 * SHAPE[1] / 3 and col < SHAPE[0] / 3  # anterior slices; patient right on the left
    sagittal = load_volume(path, plane="sagittal")
    assert sagittal.slices.shape == (SHAPE[0], SHAPE[2], SHAPE[1])
    k, row, col = marker_position(sagittal.slices)
    assert k > 2 * SHAPE[0] / 3 and col < SHAPE[1] / 3  # right-hand slices; anterior on the left
    # The superior-left marker (250 -> below the window's top) is near the top of sagittal slices.
    left = sagittal.slices[2:5]
    rows = np.nonzero((left > 100) & (left < 255))[1]
    assert rows.size and rows.min() <= 3


def test_anisotropic_voxels_are_resampled_to_square_pixels(tmp_path):
    affine = np.diag([1.0, 1.0, 3.0, 1.0])  # 3 mm slices
    volume = load_volume(write_nifti(tmp_path / "thick.nii.gz", phantom(), affine), plane="coronal")
    assert volume.slices.shape == (SHAPE[1], 3 * SHAPE[2], SHAPE[0])
    assert volume.spacing == (1.0, 1.0, 1.0)


def test_window_is_robust_to_a_few_hot_voxels(tmp_path):
    data = phantom()
    data[0, 0, 0] = 1e6  # one hot voxel must not darken the whole volume
    volume = load_volume(write_nifti(tmp_path / "hot.nii.gz", data))
    assert volume.window[1] < 1000
    assert np.median(volume.slices[volume.slices > 0]) > 40


def test_four_d_needs_a_time_point(tmp_path):
    data = np.stack([phantom(), 2 * phantom()], axis=-1)
    path = write_nifti(tmp_path / "fmri.nii.gz", data)
    with pytest.raises(TimePointRequiredError, match=r"4-D.*2 time points.*time_point=0\.\.1") as raised:
        load_volume(path)
    assert raised.value.time_points == 2  # what the app says instead of naming the option it lacks
    volume = load_volume(path, time_point=1)
    assert volume.notes == ["4-D volume: time point 1 of 2 read."]
    with pytest.raises(InvalidVolumeError, match="out of range"):
        load_volume(path, time_point=2)
    # A trailing axis of length 1 is a 3-D volume, not a 4-D one.
    assert load_volume(write_nifti(tmp_path / "one.nii.gz", phantom()[..., None])).slices.shape[0] == SHAPE[2]


@pytest.mark.parametrize(
    "data, message",
    [
        (np.ones((8, 8), dtype=np.float32), "2 dimension"),
        (np.ones((4, 4, 4, 2, 2), dtype=np.float32), "5 dimension"),
        (np.zeros(SHAPE, dtype=np.float32), "empty: every voxel is 0"),
        # It was called "empty" too, which a user holding 13440 voxels of 7 cannot make sense of.
        (np.full(SHAPE, 7, dtype=np.float32), "has no contrast: every voxel is 7"),
        (np.where(phantom() > 0, np.nan, 0).astype(np.float32), "NaN or infinite"),
        (np.where(phantom() > 0, np.inf, 0).astype(np.float32), "NaN or infinite"),
    ],
    ids=["2d", "5d", "empty", "constant", "nan", "inf"],
)
def test_bad_nifti_volumes_are_refused_clearly(tmp_path, data, message):
    path = write_nifti(tmp_path / "bad.nii.gz", data)
    with pytest.raises(InvalidVolumeError, match=message) as caught:
        load_volume(path)
    assert isinstance(caught.value, InvalidImageError) and isinstance(caught.value, ValueError)


def test_a_file_that_is_not_what_its_name_says(tmp_path):
    text = tmp_path / "scan.nii.gz"
    text.write_text("not a volume")
    with pytest.raises(InvalidVolumeError, match=r"named like a NIFTI file but its content is not NIfTI nor DICOM"):
        load_volume(text)
    dicom_named = tmp_path / "scan.dcm"
    write_nifti(tmp_path / "real.nii", phantom())
    dicom_named.write_bytes((tmp_path / "real.nii").read_bytes())
    with pytest.raises(InvalidVolumeError, match=r"named like a DICOM file but its content is NIfTI"):
        load_volume(dicom_named)
    empty = tmp_path / "empty.nii"
    empty.write_bytes(b"")
    with pytest.raises(InvalidVolumeError, match="empty file"):
        load_volume(empty)
    with pytest.raises(InvalidVolumeError, match="does not exist"):
        load_volume(tmp_path / "missing.nii.gz")


def test_arrays_and_nibabel_images(tmp_path):
    data = phantom()
    from_image = load_volume(nib.Nifti1Image(data, np.eye(4)))
    np.testing.assert_array_equal(from_image.slices, load_volume(write_nifti(tmp_path / "p.nii", data)).slices)
    slices = np.moveaxis(data, 2, 0)
    from_array = load_volume(slices)
    assert from_array.slices.shape == slices.shape and not from_array.orientation_known
    with pytest.raises(InvalidVolumeError, match="cannot be cut in the coronal plane"):
        load_volume(slices, plane="coronal")
    with pytest.raises(InvalidVolumeError, match="Unknown plane"):
        load_volume(slices, plane="oblique")
    with pytest.raises(InvalidVolumeError, match="Cannot read an object of type list"):
        load_volume([1, 2, 3])


def test_head_slices_and_window():
    slices = np.zeros((5, 10, 10), dtype=np.uint8)
    slices[1:4, 2:8, 2:8] = 200
    slices[4, 0, 0] = 200  # a cap of the head: one bright pixel
    np.testing.assert_array_equal(head_slices(slices), [False, True, True, True, False])
    assert robust_window(np.arange(1000, dtype=np.float32).reshape(10, 10, 10))[1] == pytest.approx(994.01, abs=0.01)


def test_frame_head_centres_the_head_in_a_square_it_fills_as_training_slices_do():
    gray = np.zeros((100, 120), dtype=np.uint8)
    gray[10:20, 30:70] = 200  # a 10 x 40 head far from the centre of a wide frame
    framed = frame_head(gray, fill=0.8)
    assert framed.shape == (50, 50)  # 40 / 0.8
    rows, cols = np.nonzero(framed)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (20, 29, 5, 44)
    assert framed.sum() == gray.sum()


# ------------------------------------------------------------------------------- DICOM


def test_dicom_series_is_sorted_by_position_not_file_name(tmp_path):
    data = phantom()
    data[..., :] += np.arange(SHAPE[2], dtype=np.float32)[None, None, :] * (data[..., :] > 0)  # brighter upwards
    write_dicom_series(tmp_path / "series", data, thickness=1.0)
    dicom = load_volume(tmp_path / "series")
    nifti = load_volume(write_nifti(tmp_path / "same.nii", data))
    assert dicom.modality == "MR" and dicom.plane == "axial"
    np.testing.assert_array_equal(dicom.slices, nifti.slices)  # same slices, same orientation, same order
    means = [s[s > 0].mean() for s in dicom.slices if (s > 0).any()]
    assert means[-1] > means[0]


def test_dicom_series_with_thick_slices_keeps_their_spacing(tmp_path):
    write_dicom_series(tmp_path / "s", phantom(), spacing=(0.5, 0.5), thickness=2.0)
    volume = load_volume(tmp_path / "s")
    assert volume.spacing == (2.0, 0.5, 0.5)
    coronal = load_volume(tmp_path / "s", plane="coronal")
    assert coronal.slices.shape == (SHAPE[1], 4 * SHAPE[2], SHAPE[0])


def test_dicom_folder_with_two_series_needs_a_series_uid(tmp_path):
    first, _ = write_dicom_series(tmp_path / "mixed", phantom())
    second, _ = write_dicom_series(tmp_path / "mixed", 2 * phantom(), names=[f"b{i}.dcm" for i in range(SHAPE[2])])
    (tmp_path / "mixed" / "notes.txt").write_text("not DICOM, skipped")
    with pytest.raises(InvalidVolumeError, match="holds 2 DICOM series; choose one with series_uid") as caught:
        load_volume(tmp_path / "mixed")
    assert first in str(caught.value) and second in str(caught.value)
    assert load_volume(tmp_path / "mixed", series_uid=second).series_uid == second
    with pytest.raises(InvalidVolumeError, match="has no series 'nope'"):
        load_volume(tmp_path / "mixed", series_uid="nope")


def test_four_d_dicom_series_needs_a_time_point(tmp_path):
    data = np.stack([phantom(), 3 * phantom()], axis=-1)
    write_dicom_series(tmp_path / "fmri", data, time_points=2)
    with pytest.raises(TimePointRequiredError, match=r"4-D series: 20 slice positions x 2 time points") as raised:
        load_volume(tmp_path / "fmri")
    assert raised.value.time_points == 2 and isinstance(raised.value, InvalidVolumeError)
    first = load_volume(tmp_path / "fmri", time_point=0)
    second = load_volume(tmp_path / "fmri", time_point=1)
    assert first.window[1] * 2.5 < second.window[1]


def test_dicom_series_with_a_missing_slice_at_a_repeated_position_is_refused(tmp_path):
    _, paths = write_dicom_series(tmp_path / "s", np.stack([phantom(), phantom()], axis=-1), time_points=2, shuffle=False)
    paths[-1].unlink()  # one position now holds one image, the others two
    with pytest.raises(InvalidVolumeError, match="same number at every position"):
        load_volume(tmp_path / "s", time_point=0)


def test_ct_is_refused_by_its_dicom_header(tmp_path):
    write_dicom_series(tmp_path / "ct", phantom(), modality="CT")
    with pytest.raises(InvalidVolumeError, match=r"CT image \(DICOM Modality 'CT'\), not MRI"):
        load_volume(tmp_path / "ct")
    real_ct = get_testdata_file("CT_small.dcm")  # a real CT file shipped in the pydicom wheel
    with pytest.raises(InvalidVolumeError, match="not MRI"):
        load_volume(real_ct)


def test_a_real_single_mr_file_reads_as_a_one_slice_volume():
    volume = load_volume(get_testdata_file("MR_small.dcm"))
    assert volume.slices.shape == (1, 64, 64) and volume.modality == "MR"


def test_a_folder_without_dicom_is_refused(tmp_path):
    (tmp_path / "a.txt").write_text("hello")
    with pytest.raises(InvalidVolumeError, match="holds no DICOM files"):
        load_volume(tmp_path)


def write_enhanced_mr(path, data, order):
    """One enhanced MR multi-frame file: frames stored in ``order``, each with its PlanePositionSequence."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4.1"  # Enhanced MR Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "MR"
    frames = [data[::-1, ::-1, k].T for k in order]
    ds.NumberOfFrames = len(frames)
    ds.Rows, ds.Columns = frames[0].shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    shared = Dataset()
    orientation, measures = Dataset(), Dataset()
    orientation.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    measures.PixelSpacing = [1.0, 1.0]
    measures.SliceThickness = 1.0
    shared.PlaneOrientationSequence = [orientation]
    shared.PixelMeasuresSequence = [measures]
    ds.SharedFunctionalGroupsSequence = [shared]
    per_frame = []
    for k in order:
        item, position = Dataset(), Dataset()
        position.ImagePositionPatient = [0.0, 0.0, float(k)]
        item.PlanePositionSequence = [position]
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = per_frame
    ds.PixelData = np.ascontiguousarray(np.stack(frames).astype(np.uint16)).tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return path


def test_enhanced_multiframe_frames_are_sorted_by_their_positions(tmp_path):
    data = phantom()
    order = list(range(SHAPE[2]))
    random.Random(1).shuffle(order)
    volume = load_volume(write_enhanced_mr(tmp_path / "enhanced.dcm", data, order))
    np.testing.assert_array_equal(volume.slices, load_volume(write_nifti(tmp_path / "same.nii", data)).slices)


# ------------------------------------------------------------------------------- BraTS


def write_brats_case(folder, *, year=2023, tumour_slices=range(8, 13), seg=True):
    """A small BraTS case: four sequences with a bright lesion on ``tumour_slices`` and its segmentation."""
    folder.mkdir(parents=True)
    names = dict(zip(BRATS_SEQUENCES, BRATS_SEQUENCES)) if year == 2023 else {"t1n": "t1", "t1c": "t1ce", "t2w": "t2", "t2f": "flair"}
    sep = "-" if year == 2023 else "_"
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])  # LPS, as BraTS stores them
    labels = np.zeros(SHAPE, dtype=np.uint8)
    for k in tumour_slices:
        labels[8:14, 10:16, k] = 2
    for index, sequence in enumerate(BRATS_SEQUENCES):
        data = phantom() * (1 + index) + 300.0 * (labels > 0)
        write_nifti(folder / f"{folder.name}{sep}{names[sequence]}.nii.gz", data.astype(np.float32), affine)
    if seg:
        write_nifti(folder / f"{folder.name}{sep}seg.nii.gz", labels, affine)
    return folder


@pytest.mark.parametrize("year", [2023, 2021])
def test_load_brats_case_reads_four_sequences_and_the_segmentation(tmp_path, year):
    case = load_brats_case(write_brats_case(tmp_path / f"BraTS-{year}-00001", year=year))
    assert sorted(case.sequences) == sorted(BRATS_SEQUENCES)
    assert case.segmentation.shape == case.sequences["t1c"].slices.shape == (SHAPE[2], SHAPE[1], SHAPE[0])
    np.testing.assert_array_equal(np.flatnonzero(case.tumour_slices()), np.arange(8, 13))
    # The lesion is where the segmentation says, in every sequence (same orientation).
    lesion = case.segmentation > 0
    for volume in case.sequences.values():
        assert volume.slices[lesion].min() > np.median(volume.slices[~lesion & (volume.slices > 0)])


def test_brats_case_errors(tmp_path):
    with pytest.raises(InvalidDatasetError, match="No BraTS sequence"):
        (tmp_path / "empty").mkdir()
        load_brats_case(tmp_path / "empty")
    case = write_brats_case(tmp_path / "c1", seg=False)
    assert load_brats_case(case).segmentation is None
    with pytest.raises(InvalidDatasetError, match="has no segmentation"):
        load_brats_case(case).tumour_slices()
    (case / "c1-t1c.nii.gz").unlink()
    with pytest.raises(InvalidDatasetError, match="has no t1c"):
        load_brats_case(case, sequences=["t1ce"])


def test_brats_slice_dataset_labels_slices_from_the_segmentation(tmp_path):
    root = tmp_path / "brats"
    write_brats_case(root / "case-a", tumour_slices=range(8, 13))
    write_brats_case(root / "case-b", year=2021, tumour_slices=range(5, 7))
    write_brats_case(root / "case-c", seg=False)  # skipped: nothing to label it with
    ds = brats_slice_dataset(root, sequence="flair")
    assert ds.features["label"].names == ["notumor", "tumor"]
    assert set(ds["case"]) == {"case-a", "case-b"}
    tumour = {(c, s) for c, s, y in zip(ds["case"], ds["slice"], ds["label"]) if y == 1}
    assert tumour == {("case-a", k) for k in range(8, 13)} | {("case-b", k) for k in range(5, 7)}
    image = ds[0]["image"]
    assert image.mode == "L" and image.size == (SHAPE[0], SHAPE[1])
    with pytest.raises(InvalidDatasetError, match="Unknown BraTS sequence"):
        brats_slice_dataset(root, sequence="dwi")


def test_damaged_dicom_headers_and_compressed_streams_get_the_projects_error(tmp_path):
    """pydicom parses a value when it is read and gzip inflates lazily: found by corrupting files
    at random (ValueError, NotImplementedError, zlib.error escaped before)."""
    import gzip

    _, files = write_dicom_series(tmp_path / "series", phantom(SHAPE), spacing=(0.5, 0.5))
    raw = files[0].read_bytes()
    assert raw.count(b"0.5\\0.5") == 1
    damaged = tmp_path / "damaged.dcm"
    damaged.write_bytes(raw.replace(b"0.5\\0.5", b"0.r\\0.5"))  # PixelSpacing no longer a number
    with pytest.raises(InvalidVolumeError, match="damaged.dcm could not be read as DICOM"):
        load_volume(damaged)
    nifti = write_nifti(tmp_path / "head.nii.gz", phantom(SHAPE)).read_bytes()
    assert gzip.decompress(nifti)  # a real gzip, then its deflate stream zeroed after the header
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(nifti[:10] + bytes(64) + nifti[74:])
    with pytest.raises(InvalidVolumeError):
        load_volume(broken)


def test_a_nearly_constant_volume_gets_a_window_not_a_division_by_zero():
    """Both percentiles land on the same value when one level fills the volume (ZeroDivisionError before)."""
    data = np.full((6, 8, 8), 5.0, dtype=np.float32)
    data[0, 0, 0] = 0.0  # one dark voxel: far below the 0.5th percentile
    volume = load_volume(data)
    assert volume.window == (0.0, 5.0)
    assert volume.slices[0, 0, 0] == 0 and (volume.slices.reshape(-1)[1:] == 255).all()


def _rewrite(paths, **values):
    import pydicom

    for path in paths:
        dataset = pydicom.dcmread(str(path))
        for keyword, value in values.items():
            setattr(dataset, keyword, value)
        dataset.save_as(str(path))


@pytest.mark.parametrize(
    "values, message",
    [
        ({"ImagePositionPatient": [0.0, 0.0]}, r"2 value\(s\) in ImagePositionPatient; DICOM gives 3"),
        ({"ImageOrientationPatient": [1, 0, 0, 0, 1]}, r"5 value\(s\) in ImageOrientationPatient; DICOM gives 6"),
        ({"PixelSpacing": [0.5]}, r"1 value\(s\) in PixelSpacing; DICOM gives 2"),
        ({"ImageOrientationPatient": [0, 0, 0, 0, 0, 0]}, "not two perpendicular unit vectors"),
        ({"ImageOrientationPatient": [1, 0, 0, 1, 0, 0]}, "not two perpendicular unit vectors"),
    ],
    ids=["position-2", "orientation-5", "spacing-1", "orientation-zero", "orientation-parallel"],
)
def test_damaged_dicom_geometry_is_refused_clearly(tmp_path, values, message):
    """numpy's ValueError escaped before, or a misleading '4-D series: 1 slice position' error."""
    _, paths = write_dicom_series(tmp_path / "s", phantom(), shuffle=False)
    _rewrite(paths, **values)
    with pytest.raises(InvalidVolumeError, match=message):
        load_volume(tmp_path / "s")


def test_a_degenerate_affine_is_refused_clearly(tmp_path):
    """A zero pixel spacing or an all-zero sform gave nibabel's OrientationError before."""
    write_dicom_series(tmp_path / "s", phantom(), spacing=(0.0, 0.0))
    with pytest.raises(InvalidVolumeError, match="affine .* degenerate"):
        load_volume(tmp_path / "s")
    path = write_nifti(tmp_path / "p.nii", phantom())
    header = bytearray(path.read_bytes())
    header[252:254] = bytes(2)  # qform_code 0: the sform decides
    header[280:328] = bytes(48)  # srow_x, srow_y, srow_z all zero
    path.write_bytes(bytes(header))
    with pytest.raises(InvalidVolumeError, match="affine .* degenerate"):
        load_volume(path)


def test_apply_window_holds_one_float_copy_of_the_volume_at_most():
    """A 1024**3 volume is 4 GiB in float32: each temporary copy costs that much again."""
    import tracemalloc

    from tumor_classifier.volume_slices import apply_window

    data = np.random.default_rng(0).random((32, 256, 256), dtype=np.float32)
    tracemalloc.start()
    try:
        out = apply_window(data, (0.1, 0.9))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out.dtype == np.uint8 and out.shape == data.shape
    np.testing.assert_array_equal(out, np.clip(np.rint((data - 0.1) * (255 / 0.8)), 0, 255).astype(np.uint8))
    assert peak <= 1.35 * data.nbytes  # one float32 buffer and the uint8 result


def test_a_dicom_series_with_a_slice_missing_says_so(tmp_path):
    """The step was the mean over the series: a gap went unnoticed and every slice after it sat misplaced."""
    _, paths = write_dicom_series(tmp_path / "s", phantom(), thickness=1.0, shuffle=False)
    assert load_volume(tmp_path / "s").notes == []
    paths[10].unlink()
    volume = load_volume(tmp_path / "s")
    assert len(volume) == SHAPE[2] - 1
    assert any("Uneven slice spacing (1 to 2 mm)" in note for note in volume.notes), volume.notes


def test_a_dicom_folder_holding_copies_of_its_files_reads_each_image_once(tmp_path):
    """An export with the series twice (same SOPInstanceUIDs) was called a 4-D series of 2 time points."""
    import shutil

    _, paths = write_dicom_series(tmp_path / "s" / "a", phantom())
    shutil.copytree(tmp_path / "s" / "a", tmp_path / "s" / "copy")
    volume = load_volume(tmp_path / "s")
    np.testing.assert_array_equal(volume.slices, load_volume(tmp_path / "s" / "a").slices)


def test_one_time_point_of_a_4d_nifti_is_read_not_the_whole_series(tmp_path):
    """Reading every time point to keep one cost the whole series in memory (an fMRI run is GiBs)."""
    import tracemalloc

    series = np.stack([phantom() * (1 + t) for t in range(40)], axis=-1)  # 40 time points, 2 MiB in float32
    path = write_nifti(tmp_path / "fmri.nii.gz", series)
    tracemalloc.start()
    try:
        raw = read_raw(path, time_point=7)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(raw.data, series[..., 7])
    assert raw.notes == ["4-D volume: time point 7 of 40 read."]
    assert peak < series.nbytes / 4


def test_reading_a_dicom_series_holds_few_copies_of_it(tmp_path):
    """A list of float planes, their stack and a contiguous copy each cost the whole volume:
    4.3 times its float32 size at the peak before, with the decoded files kept to the end."""
    import tracemalloc

    data = phantom((160, 160, 24))
    write_dicom_series(tmp_path / "s", data)
    read_raw(tmp_path / "s")  # imports and caches outside the measure
    tracemalloc.start()
    try:
        raw = read_raw(tmp_path / "s")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(raw.data[::-1, ::-1], data)
    assert peak < 3.2 * data.size * 4  # the files' pixel bytes, the float32 volume, a finite-check mask


def test_a_dicom_series_declaring_more_than_max_voxels_is_refused_before_its_pixels_are_read(tmp_path):
    """MAX_VOXELS held for NIfTI only: a DICOM series of any size was read (and a header that lies
    about its size got numpy's MemoryError or a decoding error)."""
    _, paths = write_dicom_series(tmp_path / "s", phantom(), shuffle=False)
    _rewrite(paths, Rows=4096, Columns=4096, NumberOfFrames=100)  # 1.7e9 voxels declared by each file
    for source in (tmp_path / "s", paths[0]):
        with pytest.raises(InvalidVolumeError, match="more than 1073741824 voxels, too large to read"):
            load_volume(source)


def test_a_dicom_file_declaring_no_frames_is_refused_not_dropped(tmp_path):
    """NumberOfFrames 0 gave the file no frame: its slice vanished from the volume without a word."""
    _, paths = write_dicom_series(tmp_path / "s", phantom(), shuffle=False)
    _rewrite(paths[-1:], NumberOfFrames=0)
    with pytest.raises(InvalidVolumeError, match="NumberOfFrames 0"):
        load_volume(tmp_path / "s")


def test_a_dicom_series_where_some_images_lack_a_position_is_refused_not_scrambled(tmp_path):
    """One file without ImagePositionPatient put every slice in file-name order (shuffled here),
    noted as 'No slice positions in the DICOM header' though the others had them."""
    import pydicom

    _, paths = write_dicom_series(tmp_path / "s", phantom())
    dataset = pydicom.dcmread(str(paths[3]))
    del dataset.ImagePositionPatient
    dataset.save_as(str(paths[3]))
    with pytest.raises(InvalidVolumeError, match=r"1 of 20 images have no ImagePositionPatient or ImageOrientationPatient"):
        load_volume(tmp_path / "s")


def test_a_monochrome1_series_is_not_read_inverted(tmp_path):
    """MONOCHROME1 shows its lowest value white: read as stored, the head came out as a negative."""
    data = phantom()
    write_dicom_series(tmp_path / "m2", data)
    _, paths = write_dicom_series(tmp_path / "m1", 1000 - data)
    _rewrite(paths, PhotometricInterpretation="MONOCHROME1")
    inverted, plain = load_volume(tmp_path / "m1"), load_volume(tmp_path / "m2")
    assert np.abs(inverted.slices.astype(int) - plain.slices).max() <= 1


@pytest.mark.parametrize("percentiles", [(0.5,), (0.5, 99.5, 100), None, ("low", "high")])
def test_percentiles_that_are_not_two_numbers_are_refused_clearly(percentiles):
    """Python's unpacking errors ('not enough values to unpack', 'cannot unpack non-iterable') escaped."""
    with pytest.raises(InvalidVolumeError, match="percentiles must be two numbers"):
        load_volume(np.moveaxis(phantom(), 2, 0), percentiles=percentiles)


def test_a_dicom_folder_whose_images_lack_a_series_uid_is_read_as_one_series(tmp_path):
    """The scan reads headers without pixels, so its 'no PixelData' test was always true: images
    without SeriesInstanceUID were skipped and the folder 'held no DICOM files'."""
    import pydicom

    _, paths = write_dicom_series(tmp_path / "s", phantom())
    for path in paths:
        dataset = pydicom.dcmread(str(path))
        del dataset.SeriesInstanceUID
        dataset.save_as(str(path))
    volume = load_volume(tmp_path / "s")
    np.testing.assert_array_equal(volume.slices, load_volume(write_nifti(tmp_path / "p.nii", phantom())).slices)
    assert volume.series_uid is None


def test_a_stack_of_colour_slices_is_named_as_such_not_taken_for_time_points():
    rgb_stack = np.zeros((12, 32, 32, 3), dtype=np.uint8)  # what stacking 12 RGB PNGs gives
    with pytest.raises(InvalidVolumeError, match=r"colour \(RGB or RGBA\) slices.*grey slices \(n, H, W\)") as caught:
        load_volume(rgb_stack)
    assert "time point" not in str(caught.value)


def test_float64_voxels_beyond_float32_range_are_refused_not_turned_into_infinities():
    data = phantom().astype(np.float64)
    data[0, 0, 0] = 1e300  # finite in float64, inf once read as float32
    with pytest.raises(InvalidVolumeError, match=r"beyond the float32 range"):
        load_volume(nib.Nifti1Image(data, np.eye(4)))


def test_a_dicom_series_without_modality_is_read_with_a_note_saying_so(tmp_path):
    _, paths = write_dicom_series(tmp_path / "s", phantom())
    for path in paths:
        ds = pydicom.dcmread(path)
        del ds.Modality
        ds.save_as(path)
    volume = load_volume(tmp_path / "s")
    assert volume.modality is None
    assert any("no Modality" in note for note in volume.notes)


def test_slices_too_small_to_classify_are_refused_as_a_volume_with_the_plane_that_fits(tmp_path):
    """A single sagittal DICOM slice cut axially gave 256 slices of 1 x 256 pixels, and the user
    read 'Image 0: The numpy array of shape (256, 1) ... at least 8 pixels a side are needed'."""
    write_dicom_series(tmp_path / "one", phantom()[..., 10:11])  # one axial slice: 24 x 28 pixels
    assert load_volume(tmp_path / "one").slices.shape == (1, 28, 24)
    with pytest.raises(InvalidVolumeError, match=r"sagittal slices of .* are 28x\d pixels.*at least 8.*axial plane"):
        load_volume(tmp_path / "one", plane="sagittal")
    with pytest.raises(InvalidVolumeError, match=r"slices of numpy array are 2x2 pixels.*at least 8 and at most 8192 pixels a side"):
        load_volume(np.arange(5 * 2 * 2, dtype=np.float32).reshape(5, 2, 2))


@pytest.mark.parametrize("name, compress", [("scan", True), ("scan.bin", False)])
def test_nifti_content_under_another_name_is_read_as_nifti(tmp_path, name, compress):
    """The reader tells NIfTI by its first bytes, and the archive walk lists such a file as a
    volume; nibabel then refused it ('Cannot work out file type') for its name."""
    import gzip

    written = write_nifti(tmp_path / ("x.nii.gz" if compress else "x.nii"), phantom())
    path = tmp_path / name
    path.write_bytes(written.read_bytes())
    assert gzip.open(path).read(1) if compress else True  # the bytes are what their name does not say
    expected = load_volume(written)
    volume = load_volume(path)
    assert np.array_equal(volume.slices, expected.slices) and volume.source == name
    two_d = nib.Nifti2Image(phantom(), np.eye(4))
    nib.save(two_d, str(tmp_path / "y.nii"))
    (tmp_path / "y2").write_bytes((tmp_path / "y.nii").read_bytes())
    assert np.array_equal(load_volume(tmp_path / "y2").slices, expected.slices)


def test_a_folder_without_dicom_says_how_folders_of_images_and_brats_cases_are_read(tmp_path):
    (tmp_path / "BraTS-GLI-00000-000-t1n.nii.gz").write_bytes(b"")
    with pytest.raises(InvalidVolumeError, match=r"holds no DICOM files.*load_brats_case.*--recursive --output"):
        load_volume(tmp_path)


def test_a_brats_segmentation_on_another_voxel_grid_is_refused_not_misplaced(tmp_path):
    """A segmentation saved with another affine (here 2 mm voxels, or another origin) was cut to
    the sequences' shape and its labels put on the wrong slices, without a word."""
    for name, affine in (("spacing", np.diag([2.0, 2.0, 2.0, 1.0])), ("origin", np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 7.0], [0, 0, 0, 1]]))):
        case = write_brats_case(tmp_path / name)
        seg = next(case.glob("*seg.nii.gz"))
        write_nifti(seg, np.asarray(nib.load(str(seg)).dataobj), affine)
        with pytest.raises(InvalidDatasetError, match=r"do not share one voxel grid.*seg.*t1n.*co-registered"):
            load_brats_case(case)


def test_a_dicom_folder_reads_the_files_of_its_linked_subfolders(tmp_path):
    """Series files reached through a linked subfolder were skipped (Path.rglob does not follow
    links), so the folder 'held no DICOM files', or a series came out with slices missing."""
    write_dicom_series(tmp_path / "store" / "series", phantom())
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "series").symlink_to(tmp_path / "store" / "series", target_is_directory=True)
    (tmp_path / "study" / "loop").symlink_to(tmp_path / "study", target_is_directory=True)  # read once, not forever
    assert np.array_equal(load_volume(tmp_path / "study").slices, load_volume(tmp_path / "store" / "series").slices)


def test_a_truncated_dicom_in_a_series_is_named_as_such(tmp_path):
    """A series file cut inside its pixels was called 'DICOM without pixel data (a report,
    structure set ...)'; one cut inside its header was dropped without a word, and the volume
    came out a slice short with only a note about uneven spacing."""
    _, paths = write_dicom_series(tmp_path / "pixels", phantom())
    data = paths[3].read_bytes()
    paths[3].write_bytes(data[: data.rindex(b"\xe0\x7f\x10\x00") + 6])  # cut inside the PixelData element's header
    with pytest.raises(InvalidVolumeError, match=rf"{paths[3].name} is an image whose pixel data is missing or cut short"):
        load_volume(tmp_path / "pixels")
    _, paths = write_dicom_series(tmp_path / "header", phantom())
    paths[3].write_bytes(paths[3].read_bytes()[:300])
    volume = load_volume(tmp_path / "header")
    assert len(volume) == SHAPE[2] - 1
    assert any("1 file that looks like DICOM could not be read and was left out" in note for note in volume.notes), volume.notes


def test_an_array_with_a_leading_axis_of_one_is_a_3d_volume():
    """(1, n, H, W), a batch of one as torch code holds a volume, was refused as '4-D: 1 time
    points or channels. Choose one with time_point=0..0'. A NIfTI's (x, y, z, 1) was read already."""
    slices = np.moveaxis(phantom(), 2, 0)
    np.testing.assert_array_equal(load_volume(slices[None]).slices, load_volume(slices).slices)
    with pytest.raises(InvalidVolumeError, match="2 time points or channels"):
        load_volume(np.stack([slices, slices]))


def test_a_2d_nifti_is_refused_with_advice_that_works_for_a_nifti(tmp_path):
    """A slice saved as a 2-D NIfTI was told it 'goes through TumorClassifier.predict instead',
    which reads no NIfTI (nor does the command's image path)."""
    flat = write_nifti(tmp_path / "slice.nii.gz", phantom()[:, :, 10])
    with pytest.raises(InvalidVolumeError, match=r"has 2 dimension\(s\).*third axis of length 1") as caught:
        load_volume(flat)
    assert "TumorClassifier.predict instead" not in str(caught.value)
    with pytest.raises(InvalidVolumeError, match="TumorClassifier.predict instead"):  # right for an array
        load_volume(phantom()[:, :, 10])


def test_slice_edges_name_where_each_cut_puts_the_patient(tmp_path):
    """The key-slice figure showed no orientation: a reader had to know that the image's left is
    the patient's right. SLICE_EDGES letters the edges, checked here against the cut itself."""
    from PIL import Image

    from tumor_classifier.volume_slices import PLANES, SLICE_EDGES, mark_edges

    path = write_nifti(tmp_path / "p.nii.gz", phantom())
    for plane in PLANES:
        slices = load_volume(path, plane=plane).slices
        _, row, col = marker_position(slices)  # the anterior, patient-right marker
        top, bottom, left, right = SLICE_EDGES[plane]
        height, width = slices.shape[1:]
        if "A" in (top, bottom):
            assert (row < height / 2) == (top == "A"), plane
        for near in ("R", "A"):
            if near in (left, right):
                assert (col < width / 2) == (left == near), plane
    gray = Image.new("RGB", (240, 240), (128, 128, 128))
    marked = np.asarray(mark_edges(gray, "axial"), dtype=int) - 128
    assert np.abs(marked[100:140, :20]).max() > 0 and np.abs(marked[:20, 100:140]).max() > 0  # letters at the edges
    assert np.abs(marked[60:180, 60:180]).max() == 0  # the slice itself untouched


def test_a_4d_brats_sequence_is_refused_as_a_brats_error_without_time_point_advice(tmp_path):
    """load_brats_case takes no time point: its error must not advise one."""
    case = write_brats_case(tmp_path / "c4", seg=False)
    t1c = next(case.glob("*t1c.nii.gz"))
    data = np.asarray(nib.load(str(t1c)).dataobj)
    write_nifti(t1c, np.stack([data, data], axis=-1), nib.load(str(t1c)).affine)
    with pytest.raises(InvalidVolumeError, match=r"t1c.*4-D.*2 time points.*BraTS case holds 3-D") as raised:
        load_brats_case(case)
    assert "time_point" not in str(raised.value) and "--time-point" not in str(raised.value)
