"""Real volume files for the tests: a phantom head, written as NIfTI (nibabel) and DICOM (pydicom).

Shared by ``test_volumes.py`` and ``test_volume_prediction.py`` (test modules do not
import each other).
"""

import random

import nibabel as nib
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

SHAPE = (24, 28, 20)  # x (left -> right), y (posterior -> anterior), z (inferior -> superior)


def phantom(shape=SHAPE) -> np.ndarray:
    """A head-like ellipsoid (RAS+ voxel axes) with two markers: anterior-right and superior-left."""
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    data = np.where(x**2 + y**2 + (z * 0.9) ** 2 < 0.8, 100.0, 0.0).astype(np.float32)
    data[-5:-2, -6:-3, 8:12] = 400.0  # patient right (high x), anterior (high y), mid-height
    data[2:5, 10:14, -4:-2] = 250.0  # patient left (low x), superior (high z)
    return data


def write_nifti(path, data, affine=None):
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


def write_dicom_series(folder, data, *, spacing=(1.0, 1.0), thickness=2.0, modality="MR", series_uid=None, time_points=1, shuffle=True, names=None):
    """Writes voxels (x, y, z) RAS+ as an axial DICOM series (LPS patient coordinates), one file per slice.

    File names and instance numbers are shuffled: only ImagePositionPatient says the order.
    """
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study = generate_uid()
    nx, ny, nz = data.shape[:3]
    frames = []
    for t in range(time_points):
        for k in range(nz):
            frames.append((t, k))
    order = list(range(len(frames)))
    if shuffle:
        random.Random(0).shuffle(order)
    paths = []
    for file_index, frame_index in enumerate(order):
        t, k = frames[frame_index]
        volume = data[..., t] if data.ndim == 4 else data
        # DICOM rows run along +y in LPS (posterior), columns along +x (patient left).
        # RAS+ voxels: x grows to the right, y to anterior. Flip both for the LPS grid.
        pixels = volume[::-1, ::-1, k].T  # (rows = y from anterior to posterior, columns = x right to left)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series_uid
        ds.Modality = modality
        ds.SeriesNumber = 1
        ds.SeriesDescription = "phantom"
        ds.InstanceNumber = file_index + 1  # deliberately not the slice order
        ds.TemporalPositionIdentifier = t + 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        # Voxel (column i, row j) is at LPS (x0 + i, y0 + j); with RAS voxel x = nx-1-i, y = ny-1-j.
        ds.ImagePositionPatient = [0.0, 0.0, float(k * thickness)]
        ds.PixelSpacing = [spacing[0], spacing[1]]
        ds.SliceThickness = thickness
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
        ds.PixelData = np.ascontiguousarray(pixels.astype(np.uint16)).tobytes()
        name = names[file_index] if names else f"IM{random.Random(file_index).randint(0, 10**6):07d}_{file_index:03d}.dcm"
        path = folder / name
        ds.save_as(str(path), enforce_file_format=True)
        paths.append(path)
    return series_uid, paths
