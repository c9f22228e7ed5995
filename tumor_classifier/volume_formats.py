"""What a volume file is and its raw voxels: sniffing, NIfTI, the checks every reader shares.

Readers return a :class:`_Raw` (voxels (x, y, z) float32 and a RAS+ affine, before any
orientation or window); :mod:`tumor_classifier.dicom` reads DICOM into the same shape and
:func:`tumor_classifier.volumes.read_raw` picks the reader. nibabel and pydicom are
optional (the ``[volumes]`` extra) and imported on first use (:func:`_require`).
"""

from __future__ import annotations

import gzip
import io
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .exceptions import InvalidVolumeError, MissingDependencyError, TimePointRequiredError

#: Largest volume read, in voxels (before a time point is chosen): 1024 x 1024 x 1024.
MAX_VOXELS = 1024**3
#: DICOM modalities read as MRI.
MRI_MODALITIES = ("MR",)
#: File name endings that say NIfTI and DICOM (lower case); the content is checked all the same.
NIFTI_SUFFIXES = (".nii", ".nii.gz")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
#: The magic of a NIfTI-2 header (bytes 4-8); NIfTI-1 has its own at bytes 344-348.
_NIFTI2_MAGIC = (b"n+2\x00", b"ni2\x00")

ACCEPTED_VOLUMES = (
    "a NIfTI file (.nii, .nii.gz), a DICOM file (single slice or enhanced multi-frame), a folder holding "
    "one DICOM series (or several, with series_uid), a nibabel image, or a numpy array (n_slices, H, W)"
)


@dataclass
class _Raw:
    """Voxels (x, y, z) in float32 with a RAS+ affine (voxel index -> mm), before cutting."""

    data: np.ndarray
    affine: np.ndarray | None
    source: str
    modality: str | None = None
    series_uid: str | None = None
    notes: list[str] = field(default_factory=list)


def volume_stem(name: str) -> str:
    """A volume's file name less its NIfTI / DICOM ending (a series folder's dotted UID name stays whole)."""
    ending = next((s for s in (*NIFTI_SUFFIXES, *DICOM_SUFFIXES) if name.lower().endswith(s)), "")
    return name[: len(name) - len(ending)]


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


# ----------------------------------------------------------------------------- sniffing

_KIND_WORDS = {
    "nifti": "NIfTI",
    "nifti-gz": "gzip-compressed NIfTI",
    "dicom": "DICOM",
    "gzip": "a gzip file that is not NIfTI",
    "empty": "an empty file (0 bytes)",
    "other": "not NIfTI nor DICOM",
}


def sniff(source: Path | bytes) -> str:
    """What a file (or its bytes: an upload) holds, from its first bytes: ``nifti``, ``nifti-gz``, ``dicom``,
    ``gzip``, ``empty`` or ``other``."""

    def opened():
        return io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else open(source, "rb")

    with opened() as handle:
        head = handle.read(352)
    if not head:
        return "empty"
    if head[:2] == b"\x1f\x8b":
        try:
            with opened() as raw, gzip.open(raw, "rb") as handle:
                inner = handle.read(352)
        except (OSError, EOFError, zlib.error):  # not gzip after all, truncated, or a broken deflate stream
            return "gzip"
        return "nifti-gz" if _is_nifti(inner) else "gzip"
    if _is_nifti(head):
        return "nifti"
    if head[128:132] == b"DICM":
        return "dicom"
    if len(head) >= 8 and head[:2] in (b"\x08\x00", b"\x02\x00") and _looks_like_bare_dicom(opened):
        return "dicom"  # old files without the 128-byte preamble
    return "other"


def _is_nifti(head: bytes) -> bool:
    if len(head) >= 348 and head[344:348] in (b"n+1\x00", b"ni1\x00"):
        return True
    return len(head) >= 8 and head[4:8] in _NIFTI2_MAGIC


def _looks_like_bare_dicom(opened: Any) -> bool:
    """Whether pydicom reads a DICOM header from the file ``opened()`` opens (a binary file object)."""
    pydicom = _require("pydicom")

    try:
        with opened() as handle:
            pydicom.dcmread(handle, stop_before_pixels=True, force=True, specific_tags=["Modality", "SOPClassUID"])
        return True
    except Exception:  # noqa: BLE001 - anything unreadable is simply not DICOM
        return False


# ----------------------------------------------------------------------------- NIfTI


def _nifti_raw(image: Any, what: str, time_point: int | None) -> _Raw:
    shape = tuple(int(s) for s in image.shape)
    if int(np.prod(shape, dtype=np.int64)) > MAX_VOXELS:
        raise InvalidVolumeError(f"{what} has shape {shape}: more than {MAX_VOXELS} voxels, too large to read.")
    proxy = image.dataobj  # a nibabel array proxy reads only what is sliced: one time point of a 4-D series
    if proxy.dtype.names is not None or np.issubdtype(proxy.dtype, np.complexfloating):
        raise InvalidVolumeError(f"{what} holds {proxy.dtype} voxels (RGB or complex); a volume of real intensities is accepted.")
    notes: list[str] = []
    try:
        data = _check_array(proxy, what, time_point, slices_first=False, notes=notes)
    except InvalidVolumeError:
        raise
    except Exception as error:  # noqa: BLE001 - truncated or damaged data
        raise InvalidVolumeError(f"The voxels of {what} could not be read ({type(error).__name__}: {error}).") from None
    return _Raw(data, np.asarray(image.affine, dtype=np.float64), what, notes=notes)


def _nifti_file_raw(path: Path, kind: str, time_point: int | None) -> _Raw:
    """A NIfTI file's voxels; ``kind`` is what :func:`sniff` found (``nifti`` or ``nifti-gz``).

    nibabel tells the format by the file's name, so a file whose content is NIfTI under another
    name (no suffix, as some pipelines write them) is read from its bytes instead.
    """
    nib = _require("nibabel")
    try:
        if path.name.lower().endswith(NIFTI_SUFFIXES):
            return _nifti_raw(nib.load(str(path)), path.name, time_point)
        with (gzip.open if kind == "nifti-gz" else open)(path, "rb") as handle:
            nifti2 = handle.read(8)[4:8] in _NIFTI2_MAGIC
            handle.seek(0)
            image = (nib.Nifti2Image if nifti2 else nib.Nifti1Image).from_stream(handle)
            return _nifti_raw(image, path.name, time_point)  # the voxels are read while the file is open
    except InvalidVolumeError:
        raise
    except Exception as error:  # noqa: BLE001 - nibabel raises many kinds on damaged files
        raise InvalidVolumeError(f"{path.name} could not be read as NIfTI ({type(error).__name__}: {error}).") from None


def _check_time_point(time_point: int | None, count: int, what: str, found: str, accepted: str = "") -> None:
    """Refuses a 4-D volume without a ``time_point`` (``found`` says what it holds; :class:`TimePointRequiredError`)
    or with one out of range."""
    if time_point is None:
        raise TimePointRequiredError(
            f"{found}. Choose one with time_point=0..{count - 1} (--time-point on the command line){accepted}.", count
        )
    if not 0 <= time_point < count:
        raise InvalidVolumeError(f"time_point={time_point} is out of range: {what} has {count} time points (0..{count - 1}).")


def _check_array(data: np.ndarray, what: str, time_point: int | None, *, slices_first: bool, notes: list[str] | None = None) -> np.ndarray:
    """Checks the dimensions and values of voxels; picks a time point of a 4-D one.

    ``data`` is an array or a nibabel array proxy, which is read here, after the time point is chosen.
    """
    if not (np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating) or data.dtype == bool):
        raise InvalidVolumeError(f"{what} holds {data.dtype} values; a volume of real intensities is accepted.")
    while data.ndim > 3 and data.shape[-1] == 1:  # (x, y, z, 1) is a 3-D volume
        data = data[..., 0]
    while slices_first and data.ndim > 3 and data.shape[0] == 1:  # so is (1, n, H, W), a batch of one
        data = data[0]
    if slices_first and data.ndim == 4 and data.shape[-1] in (3, 4):  # np.stack of RGB images, not time points
        raise InvalidVolumeError(
            f"{what} has shape {data.shape}: colour (RGB or RGBA) slices. A volume of grey slices (n, H, W) is "
            "accepted: convert each slice to grey first (for example PIL's Image.convert('L'))."
        )
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
    data = np.asanyarray(data)
    if data.ndim != 3:
        single = (
            "A single 2-D slice goes through TumorClassifier.predict instead." if slices_first else
            "A single slice saved as a 2-D file is read once saved with a third axis of length 1 (x, y, 1), or as a PNG."
        )  # fmt: skip
        raise InvalidVolumeError(f"{what} has {data.ndim} dimension(s), shape {data.shape}; a volume has 3 (or 4 with time_point). {single}")
    if 0 in data.shape:
        raise InvalidVolumeError(f"{what} is empty (shape {data.shape}); a volume needs at least one voxel along each of its 3 axes.")
    if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise InvalidVolumeError(
            f"{what} holds {bad} NaN or infinite voxel(s); only finite intensities can be windowed to grey levels. "
            "Replace them first (for example with numpy.nan_to_num)."
        )
    if data.dtype.itemsize > 4 and np.issubdtype(data.dtype, np.floating) and max(data.max(), -data.min()) > np.finfo(np.float32).max:
        raise InvalidVolumeError(
            f"{what} holds {data.dtype} voxels beyond the float32 range (|value| > 3.4e38), which this reader "
            "uses; rescale the intensities first."
        )
    return data.astype(np.float32, copy=False)
