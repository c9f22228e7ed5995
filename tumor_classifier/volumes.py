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
values between map linearly to 0-255 (when one level fills the volume, so that both
ends meet, the low end is the minimum). A few hot voxels do not darken every slice, and
all slices of a volume share one window, as the slices of one scan in the training JPEGs
do.

What is refused, with :class:`~tumor_classifier.exceptions.InvalidVolumeError`: a wrong
number of dimensions, a 4-D series (time points or channels) without ``time_point``, an
empty or constant volume, NaN or infinite values, a folder with several series and no
``series_uid``, a file whose content is not what its name says, more than
:data:`MAX_VOXELS` voxels (DICOM: as its headers declare, before any pixel is read), an
affine or a DICOM geometry that gives no orientation or slice order (a zero spacing,
damaged ``ImageOrientationPatient``, a position in some images of a series but not all),
and a DICOM whose ``Modality`` is not MR (CT, PET, NM ... must not get a tumour type).
A DICOM series whose slice spacing is uneven (a slice missing) is read with its mean
step, and the :class:`Volume`'s notes say so. A NIfTI file carries
no modality: a head CT in NIfTI reads fine here, and the not-a-brain-MRI check of
:func:`tumor_classifier.volume_prediction.predict_volume` has to catch it.

This module holds the entry points (:func:`load_volume`, :func:`read_raw`) and BraTS
cases; the readers live in :mod:`tumor_classifier.volume_formats` (sniffing, NIfTI, the
shared checks) and :mod:`tumor_classifier.dicom`, orientation, window and head slices in
:mod:`tumor_classifier.volume_slices`.

Example:
    >>> volume = load_volume("scan.nii.gz")                       # doctest: +SKIP
    >>> volume.slices.shape, volume.plane                          # doctest: +SKIP
    ((155, 240, 240), 'axial')
    >>> case = load_brats_case("BraTS-GLI-00000-000")              # doctest: +SKIP
    >>> sorted(case.sequences)                                     # doctest: +SKIP
    ['t1c', 't1n', 't2f', 't2w']
"""

from __future__ import annotations

import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from .dicom import DicomScan, _dicom_scan_raw, scan_dicom
from .exceptions import InvalidDatasetError, InvalidVolumeError, TimePointRequiredError
from .volume_formats import (
    _KIND_WORDS,
    ACCEPTED_VOLUMES,
    DICOM_SUFFIXES,
    MAX_VOXELS,
    MRI_MODALITIES,
    NIFTI_SUFFIXES,
    _check_array,
    _nifti_file_raw,
    _nifti_raw,
    _Raw,
    _require,
    sniff,
)
from .volume_slices import PLANES, WINDOW_PERCENTILES, apply_window, check_slice_size, cut, head_slices, robust_window

# Reading lives in volume_formats (sniffing, NIfTI) and dicom, slice geometry and
# intensities in volume_slices; their public names stay importable from here.
__all__ = [
    "ACCEPTED_VOLUMES", "BRATS_ALIASES", "BRATS_SEQUENCES", "MAX_VOXELS", "MRI_MODALITIES", "PLANES",
    "WINDOW_PERCENTILES", "BratsCase", "DicomScan", "Volume", "apply_window", "brats_slice_dataset", "cut",
    "find_brats_files", "head_slices", "iter_brats_slices", "load_brats_case", "load_volume", "read_raw",
    "robust_window", "scan_dicom", "sniff",
]

#: BraTS 2023 sequence names, and the 2021 names they replace.
BRATS_SEQUENCES = ("t1n", "t1c", "t2w", "t2f")
BRATS_ALIASES = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"}


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
            ``axial``: without an affine the array cannot be re-cut). A header read
            already is not read again: pass the nibabel image, or the
            :class:`~tumor_classifier.dicom.DicomScan` of :func:`scan_dicom`.
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
    try:
        low_pct, high_pct = (float(p) for p in percentiles)
    except (TypeError, ValueError):
        raise InvalidVolumeError(f"percentiles must be two numbers (low, high), such as (0.5, 99.5); got {percentiles!r}.") from None
    if not 0 <= low_pct < high_pct <= 100:
        raise InvalidVolumeError(f"percentiles must satisfy 0 <= low < high <= 100; got {percentiles}.")
    percentiles = (low_pct, high_pct)
    if isinstance(source, np.ndarray):
        if plane != "axial":
            raise InvalidVolumeError(
                f"A numpy array is read as slices (n, H, W) as they are, so it cannot be cut in the {plane} plane; "
                "pass a nibabel image (its affine says where the axes point) or a file instead."
            )
        data = _check_array(np.asarray(source), "numpy array", time_point, slices_first=True)
        check_slice_size(data, "numpy array", None)
        window = robust_window(data, percentiles, "numpy array")
        return Volume(apply_window(data, window), None, None, window, "numpy array", orientation_known=False)
    raw = read_raw(source, series_uid=series_uid, time_point=time_point)
    if raw.affine is None:
        slices = np.ascontiguousarray(np.moveaxis(raw.data, 2, 0).transpose(0, 2, 1))  # stored order, rows first
        check_slice_size(slices, raw.source, None)
        window = robust_window(slices, percentiles, raw.source)
        notes = raw.notes + ([f"The {plane} plane was not applied: without geometry the slices stay as stored."] if plane != "axial" else [])
        return Volume(apply_window(slices, window), None, None, window, raw.source, raw.modality, raw.series_uid, False, notes)
    slices, spacing = cut(raw.data, raw.affine, plane, raw.source)
    check_slice_size(slices, raw.source, plane, raw.affine, raw.data.shape)
    window = robust_window(slices, percentiles, raw.source)
    return Volume(apply_window(slices, window), plane, spacing, window, raw.source, raw.modality, raw.series_uid, True, raw.notes)


def read_raw(source: Any, *, series_uid: str | None = None, time_point: int | None = None) -> _Raw:
    """Reads voxels (x, y, z) float32 and their RAS+ affine; no orientation, no window.

    Args and Raises: as :func:`load_volume`.
    """
    if hasattr(source, "affine") and hasattr(source, "dataobj"):  # a nibabel image, named by its file if it has one
        filename = source.get_filename() if hasattr(source, "get_filename") else None
        return _nifti_raw(source, Path(filename).name if filename else type(source).__name__, time_point)
    if isinstance(source, DicomScan):
        return _dicom_scan_raw(source, series_uid, time_point)
    if not isinstance(source, (str, os.PathLike)):
        raise InvalidVolumeError(f"Cannot read an object of type {type(source).__name__} as a volume; accepted: {ACCEPTED_VOLUMES}.")
    path = Path(source).expanduser()
    if path.is_dir():
        return _dicom_scan_raw(scan_dicom(path), series_uid, time_point)
    if not path.is_file():
        raise InvalidVolumeError(f"{path} does not exist or is not a regular file or folder; accepted: {ACCEPTED_VOLUMES}.")
    kind = sniff(path)
    name = path.name.lower()
    if kind == "other" and zipfile.is_zipfile(path):
        raise InvalidVolumeError(
            f"{path.name} is a zip archive; volumes are read from files and folders: unzip it and give the DICOM series "
            f"folder or the NIfTI file inside (the app, tumor-classifier serve, takes a zip of one DICOM series). Accepted: {ACCEPTED_VOLUMES}."
        )
    claims = "nifti" if name.endswith(NIFTI_SUFFIXES) else "dicom" if name.endswith(DICOM_SUFFIXES) else None
    if claims and kind != claims and not (claims == "nifti" and kind == "nifti-gz"):
        raise InvalidVolumeError(
            f"{path.name} is named like a {claims.upper()} file but its content is "
            f"{_KIND_WORDS.get(kind, kind)}; accepted: {ACCEPTED_VOLUMES}."
        )
    if kind in ("nifti", "nifti-gz"):
        return _nifti_file_raw(path, kind, time_point)
    if kind == "dicom":
        return _dicom_scan_raw(scan_dicom(path), None, time_point)  # the header first: its size is checked
    raise InvalidVolumeError(f"{path.name} is {_KIND_WORDS.get(kind, kind)}, not a volume; accepted: {ACCEPTED_VOLUMES}.")


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
            disagree in shape or voxel grid (affine).
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
    _check_one_grid(directory, {name: files[name] for name in [*wanted, "seg"] if name in files})
    volumes = {}
    for sequence in wanted:
        try:
            volumes[sequence] = load_volume(files[sequence], plane=plane)
        except TimePointRequiredError as error:  # load_brats_case takes no time point: no advice to choose one
            raise InvalidVolumeError(
                f"{files[sequence].name} is 4-D ({error.time_points} time points or channels); a BraTS case holds 3-D "
                "sequences: save the time point you want as a 3-D NIfTI."
            ) from None
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


def _check_one_grid(directory: Path, files: dict[str, Path]) -> None:
    """Refuses a case whose files do not share one voxel grid (their affines, read from the headers).

    Cut to one shape, files on different grids would still line up slice by slice, and a
    segmentation's labels would land on the wrong voxels without a word.
    """
    nib = _require("nibabel")
    grids = {}
    for name, path in files.items():
        try:
            grids[name] = np.asarray(nib.load(str(path)).affine, dtype=np.float64)
        except Exception:  # noqa: BLE001 - a damaged header: the reader says what is wrong with it
            continue
    if not grids:
        return
    reference, affine = next(iter(grids.items()))
    differ = [name for name, other in grids.items() if not np.allclose(other, affine, atol=1e-3)]
    if differ:
        raise InvalidDatasetError(
            f"The files of BraTS case {directory} do not share one voxel grid: the affine of {', '.join(differ)} differs "
            f"from {reference}'s ({files[reference].name}). A case's sequences and segmentation are co-registered on one "
            "grid; resample them onto one first."
        )


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
