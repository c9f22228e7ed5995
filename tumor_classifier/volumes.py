"""Volumes: NIfTI and DICOM in, the package's grayscale slices out; BraTS cases.

A clinician's scan is a volume. :func:`load_volume` reads one into a :class:`Volume`:
uint8 slices (n, H, W) in the grey representation the 2-D model was trained on, in a
canonical orientation and order, with the geometry it came from.

* NIfTI (``.nii``, ``.nii.gz``) through nibabel; a nibabel image object is accepted too.
* DICOM through pydicom: one file (a classic single slice, or an enhanced multi-frame
  file), or a folder holding one series; a folder with several series needs
  ``series_uid`` (the error lists the series it found). Slices are sorted by their
  position along the slice normal (``ImagePositionPatient``), never by file name or
  instance number: the order of acquisition (interleaved, for example) does not matter.
* A numpy array (n, H, W) is taken as slices already in display orientation.

Orientation comes from the affine, never from an assumed axis order. The volume is
turned to RAS+ (nibabel's closest canonical) and cut in the chosen plane, shown the way
radiologists show it: axial slices from inferior to superior, anterior at the top,
patient right on the image left; coronal from posterior to anterior, superior at the
top; sagittal from patient left to right, superior at the top, anterior on the left.
Non-square pixels in the plane are resampled to square ones.

Intensities are windowed once per volume with robust percentiles: the low end is the
0.5th percentile of all voxels, the high end the 99.5th percentile of the voxels above
the volume's minimum (the head, so that a large empty background does not decide it);
values between map linearly to 0-255. A few hot voxels do not darken every slice, and
all slices of a volume share one window, as the slices of one scan in the training JPEGs
do.

What is refused, with :class:`~tumor_classifier.exceptions.InvalidVolumeError`: a wrong
number of dimensions, a 4-D series (time points or channels) without ``time_point``, an
empty or constant volume, NaN or infinite values, a folder with several series and no
``series_uid``, a file whose content is not what its name says, and a DICOM whose
``Modality`` is not MR (CT, PET, NM ... must not get a tumour type). A NIfTI file carries
no modality: a head CT in NIfTI reads fine here, and the not-a-brain-MRI check of
:func:`tumor_classifier.volume_prediction.predict_volume` has to catch it.

Example:
    >>> volume = load_volume("scan.nii.gz")                       # doctest: +SKIP
    >>> volume.slices.shape, volume.plane                          # doctest: +SKIP
    ((155, 240, 240), 'axial')
    >>> case = load_brats_case("BraTS-GLI-00000-000")              # doctest: +SKIP
    >>> sorted(case.sequences)                                     # doctest: +SKIP
    ['t1c', 't1n', 't2f', 't2w']
"""

from __future__ import annotations

import gzip
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from .exceptions import InvalidDatasetError, InvalidVolumeError, MissingDependencyError

#: Planes :func:`load_volume` can cut a volume in.
PLANES = ("axial", "coronal", "sagittal")
#: The percentiles of the intensity window (low of all voxels, high of the head's).
WINDOW_PERCENTILES = (0.5, 99.5)
#: Largest volume read, in voxels (before a time point is chosen): 1024 x 1024 x 1024.
MAX_VOXELS = 1024**3
#: DICOM modalities read as MRI.
MRI_MODALITIES = ("MR",)
#: BraTS 2023 sequence names, and the 2021 names they replace.
BRATS_SEQUENCES = ("t1n", "t1c", "t2w", "t2f")
BRATS_ALIASES = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"}

ACCEPTED_VOLUMES = (
    "a NIfTI file (.nii, .nii.gz), a DICOM file (single slice or enhanced multi-frame), a folder holding "
    "one DICOM series (or several, with series_uid), a nibabel image, or a numpy array (n_slices, H, W)"
)

# Axis letters of RAS+ after canonicalisation: 0 = x (left -> right), 1 = y (posterior ->
# anterior), 2 = z (inferior -> superior).
_SLICE_AXIS = {"axial": 2, "coronal": 1, "sagittal": 0}


@dataclass
class Volume:
    """A volume as slices in the package's grayscale representation.

    Attributes:
        slices: uint8 array (n, H, W): slice ``i`` is an image as the 2-D model sees one.
        plane: ``axial``, ``coronal`` or ``sagittal``; ``None`` for an array given as
            slices (its orientation is unknown).
        spacing: ``(between slices, row, column)`` in mm after resampling (row and column
            equal); ``None`` when unknown.
        window: ``(low, high)``: the intensities mapped to 0 and 255.
        source: What was read, for messages.
        modality: DICOM ``Modality`` (``"MR"``); ``None`` for NIfTI and arrays.
        series_uid: DICOM ``SeriesInstanceUID``; ``None`` otherwise.
        orientation_known: False when the file carried no geometry (slices kept in stored
            order, as stored).
        notes: Sentences about what was assumed or chosen (a time point, a missing
            geometry), for people.
    """

    slices: np.ndarray
    plane: str | None
    spacing: tuple[float, float, float] | None
    window: tuple[float, float]
    source: str
    modality: str | None = None
    series_uid: str | None = None
    orientation_known: bool = True
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.slices.shape[0])


@dataclass
class _Raw:
    """Voxels (x, y, z) in float32 with a RAS+ affine (voxel index -> mm), before cutting."""

    data: np.ndarray
    affine: np.ndarray | None
    source: str
    modality: str | None = None
    series_uid: str | None = None
    notes: list[str] = field(default_factory=list)


def _require(module: str):
    """Imports nibabel or pydicom, or says how to install them (the ``[volumes]`` extra)."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(
            f"Reading volumes needs {module}, which is not installed: pip install 'tumor-classifier[volumes]' "
            "(nibabel and pydicom)."
        ) from None


# ----------------------------------------------------------------------------- public


def load_volume(
    source: Any,
    *,
    plane: str = "axial",
    series_uid: str | None = None,
    time_point: int | None = None,
    percentiles: tuple[float, float] = WINDOW_PERCENTILES,
) -> Volume:
    """Reads a volume into canonical, windowed uint8 slices.

    Args:
        source: A NIfTI path, a DICOM file or folder, a nibabel image, or a numpy array
            (n_slices, H, W) already in display orientation (then ``plane`` must stay
            ``axial``: without an affine the array cannot be re-cut).
        plane: ``axial`` (default), ``coronal`` or ``sagittal``.
        series_uid: The ``SeriesInstanceUID`` to read from a folder holding several.
        time_point: The time point (or channel) of a 4-D volume, 0-based.
        percentiles: ``(low, high)`` of the intensity window, see the module docstring.

    Returns:
        The :class:`Volume`.

    Raises:
        InvalidVolumeError: See the module docstring; the message says what was wrong and
            what is accepted.
    """
    if plane not in PLANES:
        raise InvalidVolumeError(f"Unknown plane {plane!r}; choose one of {', '.join(PLANES)}.")
    low_pct, high_pct = percentiles
    if not 0 <= low_pct < high_pct <= 100:
        raise InvalidVolumeError(f"percentiles must satisfy 0 <= low < high <= 100; got {percentiles}.")
    if isinstance(source, np.ndarray):
        if plane != "axial":
            raise InvalidVolumeError(
                f"A numpy array is read as slices (n, H, W) as they are, so it cannot be cut in the {plane} plane; "
                "pass a nibabel image (its affine says where the axes point) or a file instead."
            )
        data = _check_array(np.asarray(source), "numpy array", time_point, slices_first=True)
        window = robust_window(data, percentiles, "numpy array")
        return Volume(apply_window(data, window), None, None, window, "numpy array", orientation_known=False)
    raw = read_raw(source, series_uid=series_uid, time_point=time_point)
    if raw.affine is None:
        slices = np.ascontiguousarray(np.moveaxis(raw.data, 2, 0).transpose(0, 2, 1))  # stored order, rows first
        window = robust_window(slices, percentiles, raw.source)
        notes = raw.notes + ([f"The {plane} plane was not applied: without geometry the slices stay as stored."] if plane != "axial" else [])
        return Volume(apply_window(slices, window), None, None, window, raw.source, raw.modality, raw.series_uid, False, notes)
    slices, spacing = cut(raw.data, raw.affine, plane)
    window = robust_window(slices, percentiles, raw.source)
    return Volume(apply_window(slices, window), plane, spacing, window, raw.source, raw.modality, raw.series_uid, True, raw.notes)


def read_raw(source: Any, *, series_uid: str | None = None, time_point: int | None = None) -> _Raw:
    """Reads voxels (x, y, z) float32 and their RAS+ affine; no orientation, no window.

    Args and Raises: as :func:`load_volume`.
    """
    if hasattr(source, "affine") and hasattr(source, "dataobj"):  # a nibabel image
        return _nifti_raw(source, type(source).__name__, time_point)
    if not isinstance(source, (str, os.PathLike)):
        raise InvalidVolumeError(f"Cannot read an object of type {type(source).__name__} as a volume; accepted: {ACCEPTED_VOLUMES}.")
    path = Path(source).expanduser()
    if path.is_dir():
        return _dicom_folder_raw(path, series_uid, time_point)
    if not path.is_file():
        raise InvalidVolumeError(f"{path} does not exist or is not a regular file or folder; accepted: {ACCEPTED_VOLUMES}.")
    kind = sniff(path)
    name = path.name.lower()
    claims = "nifti" if name.endswith((".nii", ".nii.gz")) else "dicom" if name.endswith((".dcm", ".dicom", ".ima")) else None
    if claims and kind != claims and not (claims == "nifti" and kind == "nifti-gz"):
        raise InvalidVolumeError(
            f"{path.name} is named like a {claims.upper()} file but its content is "
            f"{_KIND_WORDS.get(kind, kind)}; accepted: {ACCEPTED_VOLUMES}."
        )
    if kind in ("nifti", "nifti-gz"):
        nib = _require("nibabel")

        try:
            image = nib.load(str(path))
        except Exception as error:  # noqa: BLE001 - nibabel raises many kinds on damaged files
            raise InvalidVolumeError(f"{path.name} could not be read as NIfTI ({type(error).__name__}: {error}).") from None
        return _nifti_raw(image, path.name, time_point)
    if kind == "dicom":
        return _dicom_files_raw([path], path.name, None, time_point, single_file=True)
    raise InvalidVolumeError(f"{path.name} is {_KIND_WORDS.get(kind, kind)}, not a volume; accepted: {ACCEPTED_VOLUMES}.")


def cut(data: np.ndarray, affine: np.ndarray, plane: str = "axial") -> tuple[np.ndarray, tuple[float, float, float]]:
    """Turns voxels to RAS+ and cuts them into display slices of one plane.

    Args:
        data: float array (x, y, z) with ``affine`` mapping voxel indices to mm.
        affine: float (4, 4).
        plane: ``axial``, ``coronal`` or ``sagittal``.

    Returns:
        ``(slices, spacing)``: float32 (n, H, W) as described in the module docstring,
        and ``(between slices, pixel, pixel)`` in mm.
    """
    nib = _require("nibabel")

    ornt = nib.orientations.io_orientation(affine)
    data = nib.orientations.apply_orientation(data, ornt)
    input_zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    zooms = np.empty(3)
    zooms[ornt[:, 0].astype(int)] = input_zooms  # input axis i became output axis ornt[i, 0]
    if plane == "axial":  # rows: anterior at the top; columns: patient right on the left
        slices = data[::-1, ::-1, :].transpose(2, 1, 0)
        row_mm, col_mm = zooms[1], zooms[0]
    elif plane == "coronal":  # rows: superior at the top; columns: patient right on the left
        slices = data[::-1, :, ::-1].transpose(1, 2, 0)
        row_mm, col_mm = zooms[2], zooms[0]
    else:  # sagittal, rows: superior at the top; columns: anterior on the left
        slices = data[:, ::-1, ::-1].transpose(0, 2, 1)
        row_mm, col_mm = zooms[2], zooms[1]
    slices = np.ascontiguousarray(slices, dtype=np.float32)
    pixel = float(min(row_mm, col_mm))
    if abs(row_mm - col_mm) > 0.01 * pixel:
        slices = _resample_in_plane(slices, row_mm / pixel, col_mm / pixel)
    return slices, (float(zooms[_SLICE_AXIS[plane]]), pixel, pixel)


def robust_window(data: np.ndarray, percentiles: tuple[float, float] = WINDOW_PERCENTILES, what: str = "volume") -> tuple[float, float]:
    """The intensity window of a volume: see the module docstring.

    Raises:
        InvalidVolumeError: The volume is constant (nothing to show).
    """
    flat = data.reshape(-1)
    if flat.size > 4_000_000:  # percentiles of a strided sample: the same to a grey level
        flat = flat[:: flat.size // 2_000_000]
    minimum = float(flat.min())
    head = flat[flat > minimum]
    if head.size == 0:
        raise InvalidVolumeError(
            f"The {what} is empty: every voxel is {minimum:g}. A volume needs some signal to classify."
        )
    low = float(np.percentile(flat, percentiles[0]))
    high = float(np.percentile(head, percentiles[1]))
    if high <= low:
        high = float(head.max())
    return low, high


def apply_window(data: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Maps ``[low, high]`` linearly to uint8 0-255 (clipped): uint8 array of ``data``'s shape."""
    low, high = window
    scaled = (data.astype(np.float32) - np.float32(low)) * np.float32(255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def head_slices(slices: np.ndarray, min_fraction: float = 0.25, threshold: float = 0.1) -> np.ndarray:
    """Which slices are inside the head: enough bright pixels, relative to the fullest slice.

    A pixel is head when it exceeds ``threshold`` of the volume's bright level (the
    99.5th percentile of its non-zero pixels). A slice counts when its head area is at
    least ``min_fraction`` of the largest slice's; the caps of the head (a few bright
    pixels at the top or bottom) and empty slices do not.

    Args:
        slices: uint8 (n, H, W).
        min_fraction: Share of the largest head area a slice must reach.
        threshold: Share of the bright level that counts as head.

    Returns:
        bool array (n,).
    """
    nonzero = slices[slices > 0]
    if nonzero.size == 0:
        return np.zeros(len(slices), dtype=bool)
    bright = float(np.percentile(nonzero, 99.5))
    area = (slices > threshold * bright).reshape(len(slices), -1).sum(axis=1)
    return area >= max(1, min_fraction * area.max())


# ----------------------------------------------------------------------------- sniffing

_KIND_WORDS = {
    "nifti": "NIfTI",
    "nifti-gz": "gzip-compressed NIfTI",
    "dicom": "DICOM",
    "gzip": "a gzip file that is not NIfTI",
    "empty": "an empty file (0 bytes)",
    "other": "not NIfTI nor DICOM",
}


def sniff(path: Path) -> str:
    """What a file holds, from its first bytes: ``nifti``, ``nifti-gz``, ``dicom``, ``gzip``, ``empty`` or ``other``."""
    with open(path, "rb") as handle:
        head = handle.read(352)
    if not head:
        return "empty"
    if head[:2] == b"\x1f\x8b":
        try:
            with gzip.open(path, "rb") as handle:
                inner = handle.read(352)
        except (OSError, EOFError):
            return "gzip"
        return "nifti-gz" if _is_nifti(inner) else "gzip"
    if _is_nifti(head):
        return "nifti"
    if head[128:132] == b"DICM":
        return "dicom"
    if len(head) >= 8 and head[:2] in (b"\x08\x00", b"\x02\x00") and _looks_like_bare_dicom(path):
        return "dicom"  # old files without the 128-byte preamble
    return "other"


def _is_nifti(head: bytes) -> bool:
    if len(head) >= 348 and head[344:348] in (b"n+1\x00", b"ni1\x00"):
        return True
    return len(head) >= 8 and head[4:8] in (b"n+2\x00", b"ni2\x00")


def _looks_like_bare_dicom(path: Path) -> bool:
    pydicom = _require("pydicom")

    try:
        pydicom.dcmread(str(path), stop_before_pixels=True, force=True, specific_tags=["Modality", "SOPClassUID"])
        return True
    except Exception:  # noqa: BLE001 - anything unreadable is simply not DICOM
        return False


# ----------------------------------------------------------------------------- NIfTI


def _nifti_raw(image: Any, what: str, time_point: int | None) -> _Raw:
    shape = tuple(int(s) for s in image.shape)
    if int(np.prod(shape, dtype=np.int64)) > MAX_VOXELS:
        raise InvalidVolumeError(f"{what} has shape {shape}: more than {MAX_VOXELS} voxels, too large to read.")
    try:
        data = np.asanyarray(image.dataobj)
    except Exception as error:  # noqa: BLE001 - truncated or damaged data
        raise InvalidVolumeError(f"The voxels of {what} could not be read ({type(error).__name__}: {error}).") from None
    if data.dtype.names is not None or np.iscomplexobj(data):
        raise InvalidVolumeError(f"{what} holds {data.dtype} voxels (RGB or complex); a volume of real intensities is accepted.")
    notes: list[str] = []
    data = _check_array(data, what, time_point, slices_first=False, notes=notes)
    return _Raw(data, np.asarray(image.affine, dtype=np.float64), what, notes=notes)


def _check_time_point(time_point: int | None, count: int, what: str, found: str, accepted: str = "") -> None:
    """Refuses a 4-D volume without a ``time_point`` (``found`` says what it holds) or with one out of range."""
    if time_point is None:
        raise InvalidVolumeError(
            f"{found}. Choose one with time_point=0..{count - 1} (--time-point on the command line){accepted}."
        )
    if not 0 <= time_point < count:
        raise InvalidVolumeError(f"time_point={time_point} is out of range: {what} has {count} time points (0..{count - 1}).")


def _check_array(data: np.ndarray, what: str, time_point: int | None, *, slices_first: bool, notes: list[str] | None = None) -> np.ndarray:
    """Checks the dimensions and values of voxels; picks a time point of a 4-D one."""
    if not (np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating) or data.dtype == bool):
        raise InvalidVolumeError(f"{what} holds {data.dtype} values; a volume of real intensities is accepted.")
    while data.ndim > 3 and data.shape[-1] == 1:  # (x, y, z, 1) is a 3-D volume
        data = data[..., 0]
    if data.ndim == 4:
        count = data.shape[-1] if not slices_first else data.shape[0]
        _check_time_point(
            time_point, count, what, f"{what} is 4-D, shape {data.shape}: {count} time points or channels",
            "; a 3-D volume is accepted as it is",
        )
        data = data[..., time_point] if not slices_first else data[time_point]
        if notes is not None:
            notes.append(f"4-D volume: time point {time_point} of {count} read.")
    elif time_point not in (None, 0):
        raise InvalidVolumeError(f"time_point={time_point} was given but {what} is {data.ndim}-D with no time axis.")
    if data.ndim != 3:
        raise InvalidVolumeError(
            f"{what} has {data.ndim} dimension(s), shape {data.shape}; a volume has 3 (or 4 with time_point). "
            "A single 2-D slice goes through TumorClassifier.predict instead."
        )
    if 0 in data.shape:
        raise InvalidVolumeError(f"{what} is empty (shape {data.shape}); a volume needs at least one voxel along each of its 3 axes.")
    if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise InvalidVolumeError(
            f"{what} holds {bad} NaN or infinite voxel(s); only finite intensities can be windowed to grey levels. "
            "Replace them first (for example with numpy.nan_to_num)."
        )
    return data.astype(np.float32, copy=False)


def _resample_in_plane(slices: np.ndarray, row_factor: float, col_factor: float) -> np.ndarray:
    """Bilinear resampling of each slice so pixels become square (factors >= 1 enlarge)."""
    import torch
    import torch.nn.functional as F

    n, height, width = slices.shape
    size = (max(1, int(round(height * row_factor))), max(1, int(round(width * col_factor))))
    tensor = torch.from_numpy(np.ascontiguousarray(slices))[:, None]
    return F.interpolate(tensor, size=size, mode="bilinear", align_corners=False)[:, 0].numpy()


# ----------------------------------------------------------------------------- DICOM


@dataclass
class _Frame:
    """One 2-D frame of a DICOM series, its geometry and where its pixels are."""

    path: Path
    frame: int | None  # index in a multi-frame file
    position: np.ndarray | None  # ImagePositionPatient, mm (LPS)
    orientation: np.ndarray | None  # ImageOrientationPatient (6,)
    spacing: tuple[float, float] | None  # PixelSpacing (row, column) mm
    order: tuple  # time / instance keys that order frames sharing a position
    rescale: tuple[float, float]  # slope, intercept
    shape: tuple[int, int]


def _dicom_folder_raw(folder: Path, series_uid: str | None, time_point: int | None) -> _Raw:
    pydicom = _require("pydicom")

    series: dict[str, list[Path]] = {}
    described: dict[str, str] = {}
    skipped = 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path.name.upper() == "DICOMDIR" or sniff(path) != "dicom":
            skipped += 1
            continue
        try:
            header = pydicom.dcmread(str(path), stop_before_pixels=True, force=True)
        except Exception:  # noqa: BLE001 - unreadable files are skipped like non-DICOM ones
            skipped += 1
            continue
        if "PixelData" not in header and "SeriesInstanceUID" not in header:
            skipped += 1
            continue
        uid = str(header.get("SeriesInstanceUID", "(no SeriesInstanceUID)"))
        series.setdefault(uid, []).append(path)
        described.setdefault(
            uid,
            f"{uid} ({header.get('Modality', '?')}, series {header.get('SeriesNumber', '?')} "
            f"'{header.get('SeriesDescription', '')}'",
        )
    if not series:
        raise InvalidVolumeError(f"The folder {folder} holds no DICOM files ({skipped} other file(s)); accepted: {ACCEPTED_VOLUMES}.")
    if series_uid is None and len(series) > 1:
        listing = "; ".join(f"{described[uid]}, {len(paths)} files)" for uid, paths in sorted(series.items()))
        raise InvalidVolumeError(
            f"The folder {folder} holds {len(series)} DICOM series; choose one with series_uid= "
            f"(--series-uid on the command line). Series found: {listing}."
        )
    if series_uid is not None and series_uid not in series:
        raise InvalidVolumeError(f"The folder {folder} has no series {series_uid!r}; series found: {', '.join(sorted(series))}.")
    uid = series_uid or next(iter(series))
    return _dicom_files_raw(series[uid], str(folder), uid, time_point, single_file=False)


def _float(value: Any, default: float) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def _frames_of(path: Path, dataset: Any) -> list[_Frame]:
    """The frames of one file, classic or enhanced multi-frame, with their geometry."""
    count = int(_float(dataset.get("NumberOfFrames", 1), 1))
    shape = (int(dataset.Rows), int(dataset.Columns))
    shared = dataset.get("SharedFunctionalGroupsSequence")
    shared = shared[0] if shared else None
    per_frame = dataset.get("PerFrameFunctionalGroupsSequence")

    def group(item: Any, name: str, attribute: str):
        for source in (item, shared):
            if source is not None and name in source and source[name].value:
                value = source[name].value[0].get(attribute)
                if value is not None:
                    return value
        return None

    frames = []
    for index in range(count):
        item = per_frame[index] if per_frame and index < len(per_frame) else None
        if count > 1 or item is not None:
            position = group(item, "PlanePositionSequence", "ImagePositionPatient") or (dataset.get("ImagePositionPatient") if count == 1 else None)
            orientation = group(item, "PlaneOrientationSequence", "ImageOrientationPatient") or dataset.get("ImageOrientationPatient")
            spacing = group(item, "PixelMeasuresSequence", "PixelSpacing") or dataset.get("PixelSpacing")
            slope = group(item, "PixelValueTransformationSequence", "RescaleSlope")
            intercept = group(item, "PixelValueTransformationSequence", "RescaleIntercept")
            temporal = group(item, "FrameContentSequence", "TemporalPositionIndex")
            stack = group(item, "FrameContentSequence", "InStackPositionNumber")
        else:
            position = dataset.get("ImagePositionPatient")
            orientation = dataset.get("ImageOrientationPatient")
            spacing = dataset.get("PixelSpacing")
            slope, intercept, temporal, stack = None, None, None, None
        slope = _float(slope if slope is not None else dataset.get("RescaleSlope", 1), 1.0)
        intercept = _float(intercept if intercept is not None else dataset.get("RescaleIntercept", 0), 0.0)
        temporal = temporal if temporal is not None else dataset.get("TemporalPositionIdentifier")
        order = (
            _float(temporal, 0.0),
            _float(dataset.get("TriggerTime"), 0.0),
            str(dataset.get("AcquisitionTime", "")),
            _float(dataset.get("InstanceNumber"), 0.0),
            _float(stack, 0.0),
            index,
        )
        frames.append(
            _Frame(
                path,
                index if count > 1 else None,
                np.asarray([float(v) for v in position]) if position is not None else None,
                np.asarray([float(v) for v in orientation]) if orientation is not None else None,
                (float(spacing[0]), float(spacing[1])) if spacing is not None else None,
                order,
                (slope, intercept),
                shape,
            )
        )
    return frames


def _dicom_files_raw(paths: Sequence[Path], what: str, uid: str | None, time_point: int | None, *, single_file: bool) -> _Raw:
    pydicom = _require("pydicom")

    frames: list[_Frame] = []
    modality = None
    datasets: dict[Path, Any] = {}
    for path in paths:
        try:
            dataset = pydicom.dcmread(str(path), force=True)
        except Exception as error:  # noqa: BLE001 - pydicom raises many kinds on damaged files
            raise InvalidVolumeError(f"{path.name} could not be read as DICOM ({type(error).__name__}: {error}).") from None
        this_modality = str(dataset.get("Modality", "")).upper() or None
        if this_modality is not None and this_modality not in MRI_MODALITIES:
            raise InvalidVolumeError(
                f"{path.name} is a {this_modality} image (DICOM Modality {this_modality!r}), not MRI; this model was "
                "trained on brain MRI slices only and gives no tumour type for other modalities. Accepted: DICOM "
                f"with Modality {' or '.join(MRI_MODALITIES)}."
            )
        modality = modality or this_modality
        if "PixelData" not in dataset:
            raise InvalidVolumeError(f"{path.name} is DICOM without pixel data (a report, structure set ...), not an image.")
        if int(dataset.get("SamplesPerPixel", 1)) != 1:
            raise InvalidVolumeError(
                f"{path.name} holds colour pixels ({dataset.get('PhotometricInterpretation', '?')}); MRI series are "
                "grayscale (SamplesPerPixel 1)."
            )
        uid = uid or (str(dataset.SeriesInstanceUID) if "SeriesInstanceUID" in dataset else None)
        datasets[path] = dataset
        frames.extend(_frames_of(path, dataset))
    shapes = {f.shape for f in frames}
    if len(shapes) > 1:
        raise InvalidVolumeError(f"The series in {what} mixes image sizes {sorted(shapes)}; one series has one size.")
    notes: list[str] = []
    geometry = all(f.position is not None and f.orientation is not None for f in frames)
    if geometry:
        orientations = np.stack([f.orientation for f in frames])
        if np.abs(orientations - orientations[0]).max() > 1e-3:
            raise InvalidVolumeError(
                f"The series in {what} mixes slice orientations (a localiser with several planes?); one volume has one."
            )
        row_cos, col_cos = orientations[0][:3], orientations[0][3:]
        normal = np.cross(row_cos, col_cos)
        distance = np.array([float(f.position @ normal) for f in frames])
        ordered = sorted(range(len(frames)), key=lambda i: (round(distance[i], 2), frames[i].order))
    else:
        ordered = list(range(len(frames)))  # stored order: nothing says better
        notes.append("No slice positions in the DICOM header: frames kept in stored order.")
    # Group frames that share a position: more than one per position is a 4-D series.
    if geometry:
        keys = [round(distance[i], 2) for i in ordered]
        positions = sorted(set(keys))
        groups = [[i for i, k in zip(ordered, keys) if k == p] for p in positions]
    else:
        groups = [[i] for i in ordered]
    counts = {len(g) for g in groups}
    if len(counts) > 1:
        raise InvalidVolumeError(
            f"The series in {what} has {len(positions)} slice positions holding between {min(counts)} and {max(counts)} "
            "images each; a volume (or a 4-D series) has the same number at every position. Is a slice missing, or "
            "are two series mixed?"
        )
    repeats = counts.pop()
    if repeats > 1:
        _check_time_point(time_point, repeats, what, f"{what} is a 4-D series: {len(groups)} slice positions x {repeats} time points")
        chosen = [g[time_point] for g in groups]
        notes.append(f"4-D series: time point {time_point} of {repeats} read.")
    else:
        if time_point not in (None, 0):
            raise InvalidVolumeError(f"time_point={time_point} was given but {what} has one image per slice position.")
        chosen = [g[0] for g in groups]
    pixels = []
    cache: dict[Path, np.ndarray] = {}
    for index in chosen:
        frame = frames[index]
        if frame.path not in cache:
            try:
                cache[frame.path] = datasets[frame.path].pixel_array
            except Exception as error:  # noqa: BLE001 - missing codecs, truncated data
                raise InvalidVolumeError(
                    f"The pixels of {frame.path.name} could not be decoded ({type(error).__name__}: {error})."
                ) from None
        array = cache[frame.path]
        plane = array[frame.frame] if frame.frame is not None else array
        slope, intercept = frame.rescale
        pixels.append(plane.astype(np.float32) * np.float32(slope) + np.float32(intercept))
    stack = np.stack(pixels)  # (k, rows, columns)
    if not np.isfinite(stack).all():
        raise InvalidVolumeError(f"{what} holds NaN or infinite pixel values; only finite intensities can be windowed.")
    data = stack.transpose(2, 1, 0)  # (columns, rows, k): voxel (i, j, k) as DICOM indexes it
    if not geometry:
        return _Raw(np.ascontiguousarray(data), None, what, modality, uid, notes)
    first = frames[chosen[0]]
    row_mm, col_mm = first.spacing if first.spacing is not None else (1.0, 1.0)
    if first.spacing is None:
        notes.append("No PixelSpacing in the DICOM header: 1 mm pixels assumed.")
    if len(chosen) > 1:
        step = (frames[chosen[-1]].position - first.position) / (len(chosen) - 1)
    else:
        thickness = _float(datasets[first.path].get("SpacingBetweenSlices", datasets[first.path].get("SliceThickness", 1.0)), 1.0)
        step = np.cross(first.orientation[:3], first.orientation[3:]) * thickness
    lps = np.eye(4)
    lps[:3, 0] = first.orientation[:3] * col_mm  # along a row: the column index i
    lps[:3, 1] = first.orientation[3:] * row_mm  # down a column: the row index j
    lps[:3, 2] = step
    lps[:3, 3] = first.position
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # DICOM's LPS -> RAS
    return _Raw(np.ascontiguousarray(data), affine, what, modality, uid, notes)


# ----------------------------------------------------------------------------- BraTS


@dataclass
class BratsCase:
    """One BraTS case read by :func:`load_brats_case`.

    Attributes:
        case_id: The folder's name.
        sequences: Sequence name (``t1n``, ``t1c``, ``t2w``, ``t2f``) -> :class:`Volume`;
            the sequences present, all cut the same way.
        segmentation: int array (n, H, W) of labels in the slices' orientation (0 = no
            tumour; BraTS uses 1-3 or 1, 2, 4), or ``None`` without one.
        files: Sequence name (and ``seg``) -> the file read.
    """

    case_id: str
    sequences: dict[str, Volume]
    segmentation: np.ndarray | None
    files: dict[str, Path]

    def tumour_slices(self, min_voxels: int = 1) -> np.ndarray:
        """bool (n,): slices holding at least ``min_voxels`` labelled tumour voxels.

        Raises:
            InvalidDatasetError: The case has no segmentation.
        """
        if self.segmentation is None:
            raise InvalidDatasetError(f"BraTS case {self.case_id} has no segmentation to label its slices.")
        return (self.segmentation > 0).reshape(len(self.segmentation), -1).sum(axis=1) >= min_voxels


def _brats_name(path: Path) -> str | None:
    """The sequence (or ``seg``) a BraTS file holds, from its name; ``None`` otherwise."""
    stem = re.sub(r"\.nii(\.gz)?$", "", path.name.lower())
    if stem == path.name.lower():
        return None
    if "seg" in stem:
        return "seg"
    token = re.split(r"[-_.]", stem)[-1]
    if token in BRATS_SEQUENCES:
        return token
    return BRATS_ALIASES.get(token)


def find_brats_files(directory: str | os.PathLike) -> dict[str, Path]:
    """Sequence name (``t1n`` ... and ``seg``) -> file, for the NIfTI files of one case folder."""
    found: dict[str, Path] = {}
    for path in sorted(Path(directory).iterdir()):
        name = _brats_name(path) if path.is_file() else None
        if name is None:
            continue
        if name in found:
            raise InvalidDatasetError(
                f"The BraTS case {directory} holds two files for {name}: {found[name].name} and {path.name}."
            )
        found[name] = path
    return found


def load_brats_case(directory: str | os.PathLike, *, plane: str = "axial", sequences: Sequence[str] | None = None) -> BratsCase:
    """Reads one BraTS case: its MRI sequences and, if present, the segmentation.

    File names follow BraTS 2023 (``...-t1n.nii.gz``, ``t1c``, ``t2w``, ``t2f``,
    ``...-seg.nii.gz``) or BraTS 2021 (``..._t1``, ``_t1ce``, ``_t2``, ``_flair``,
    ``_seg``); 2021 names are reported under the 2023 ones. Any NIfTI whose name
    contains ``seg`` is the segmentation.

    Args:
        directory: The case folder.
        plane: How to cut the volumes (see :func:`load_volume`).
        sequences: Read only these (2023 or 2021 names); default all present.

    Returns:
        The :class:`BratsCase`.

    Raises:
        InvalidDatasetError: No sequence found, a requested one missing, or the files
            disagree in shape.
        InvalidVolumeError: A file cannot be read as a volume.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise InvalidDatasetError(f"{directory} is not a folder; a BraTS case is a folder of NIfTI files.")
    files = find_brats_files(directory)
    present = [s for s in BRATS_SEQUENCES if s in files]
    if not present:
        raise InvalidDatasetError(
            f"No BraTS sequence found in {directory}; expected NIfTI files named ...-t1n/-t1c/-t2w/-t2f.nii.gz "
            "(BraTS 2023) or ..._t1/_t1ce/_t2/_flair.nii.gz (BraTS 2021)."
        )
    wanted = present if sequences is None else [BRATS_ALIASES.get(s, s) for s in sequences]
    missing = [s for s in wanted if s not in files]
    if missing:
        raise InvalidDatasetError(f"The BraTS case {directory} has no {', '.join(missing)}; it has {', '.join(present)}.")
    volumes = {s: load_volume(files[s], plane=plane) for s in wanted}
    shapes = {s: v.slices.shape for s, v in volumes.items()}
    segmentation = None
    if "seg" in files:
        raw = read_raw(files["seg"])
        # BraTS voxels are isotropic, so cutting does not resample; were they not, the
        # bilinear in-plane resampling is rounded back to labels (edges may shift a voxel).
        labels, _ = cut(raw.data, raw.affine, plane)
        segmentation = np.rint(labels).astype(np.int16)
        shapes["seg"] = segmentation.shape
    if len(set(shapes.values())) > 1:
        raise InvalidDatasetError(f"The files of BraTS case {directory} disagree in shape after orientation: {shapes}.")
    return BratsCase(directory.name, volumes, segmentation, {k: v for k, v in files.items() if k in wanted or k == "seg"})


def _brats_case_folders(root: Path) -> list[Path]:
    if find_brats_files(root):
        return [root]
    return [p for p in sorted(root.iterdir()) if p.is_dir() and any(n in BRATS_SEQUENCES for n in find_brats_files(p))]


def iter_brats_slices(
    root: str | os.PathLike, sequence: str = "t1c", *, plane: str = "axial", min_tumour_voxels: int = 1, min_head_fraction: float = 0.25
) -> Iterator[dict[str, Any]]:
    """Yields one dict per in-head slice of every case with a segmentation under ``root``.

    Keys: ``image`` (uint8 (H, W)), ``label`` (``"tumor"`` / ``"notumor"``), ``case``,
    ``slice`` (index in the volume), ``tumour_voxels``.
    """
    root = Path(root)
    if not root.is_dir():
        raise InvalidDatasetError(f"{root} is not a folder of BraTS cases.")
    sequence = BRATS_ALIASES.get(sequence, sequence)
    if sequence not in BRATS_SEQUENCES:
        raise InvalidDatasetError(f"Unknown BraTS sequence {sequence!r}; choose one of {', '.join(BRATS_SEQUENCES)} (or t1, t1ce, t2, flair).")
    folders = _brats_case_folders(root)
    if not folders:
        raise InvalidDatasetError(f"No BraTS case folders found in {root}.")
    used = 0
    for folder in folders:
        files = find_brats_files(folder)
        if "seg" not in files or sequence not in files:
            continue
        case = load_brats_case(folder, plane=plane, sequences=[sequence])
        slices = case.sequences[sequence].slices
        voxels = (case.segmentation > 0).reshape(len(slices), -1).sum(axis=1)
        inside = head_slices(slices, min_head_fraction)
        used += 1
        for index in np.flatnonzero(inside):
            yield {
                "image": slices[index],
                "label": "tumor" if voxels[index] >= min_tumour_voxels else "notumor",
                "case": case.case_id,
                "slice": int(index),
                "tumour_voxels": int(voxels[index]),
            }
    if not used:
        raise InvalidDatasetError(f"No BraTS case under {root} has both a {sequence} volume and a segmentation.")


def brats_slice_dataset(root: str | os.PathLike, sequence: str = "t1c", *, plane: str = "axial", min_tumour_voxels: int = 1, min_head_fraction: float = 0.25):
    """A ``datasets.Dataset`` of 2-D slices of BraTS cases, labelled tumour / no tumour.

    A slice is ``tumor`` when its segmentation holds at least ``min_tumour_voxels``
    labelled voxels, else ``notumor``; slices outside the head (see :func:`head_slices`)
    are left out. Cases without a segmentation are skipped.

    Args:
        root: A folder of case folders, or one case folder.
        sequence: ``t1n``, ``t1c``, ``t2w``, ``t2f`` (or 2021 names).
        plane: ``axial``, ``coronal`` or ``sagittal``.
        min_tumour_voxels: Voxels a slice needs to count as tumour.
        min_head_fraction: See :func:`head_slices`.

    Returns:
        ``datasets.Dataset`` with columns ``image`` (``Image``, mode L), ``label``
        (``ClassLabel`` of ``("notumor", "tumor")``, as ``load_mri_dataset(binary=True)``),
        ``case``, ``slice``, ``tumour_voxels``.

    Example:
        >>> ds = brats_slice_dataset("BraTS2021_Training_Data", sequence="flair")  # doctest: +SKIP
        >>> ds.features["label"].names                                               # doctest: +SKIP
        ['notumor', 'tumor']
    """
    from datasets import ClassLabel, Dataset, Features, Image as ImageFeature, Value
    from PIL import Image

    from .data import BINARY_CLASS_NAMES

    rows = list(iter_brats_slices(root, sequence, plane=plane, min_tumour_voxels=min_tumour_voxels, min_head_fraction=min_head_fraction))
    features = Features(
        {
            "image": ImageFeature(),
            "label": ClassLabel(names=list(BINARY_CLASS_NAMES)),
            "case": Value("string"),
            "slice": Value("int32"),
            "tumour_voxels": Value("int64"),
        }
    )
    columns = {
        "image": [Image.fromarray(r["image"]) for r in rows],
        "label": [BINARY_CLASS_NAMES.index(r["label"]) for r in rows],
        "case": [r["case"] for r in rows],
        "slice": [r["slice"] for r in rows],
        "tumour_voxels": [r["tumour_voxels"] for r in rows],
    }
    return Dataset.from_dict(columns, features=features)
