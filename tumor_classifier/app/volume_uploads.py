"""Reading volume uploads: NIfTI, one DICOM file, or a zip of one DICOM series, within limits.

:func:`check_volume` turns an upload into a :class:`~tumor_classifier.volumes.Volume`
(read once, by :func:`~tumor_classifier.volumes.load_volume`), or raises
:class:`~tumor_classifier.InvalidVolumeError` with a message for people. What it refuses
before any voxel is read: files above the byte limit, volumes above
:data:`MAX_VOLUME_VOXELS` (from the NIfTI header or the DICOM headers), and zips with more
than :data:`MAX_ZIP_MEMBERS` files, more than :data:`MAX_ZIP_BYTES` uncompressed, or
encrypted members.

A zip is never extracted by the paths it names: each member is read into a private
temporary folder (created for the request, deleted after it) under a name made from its
index and the letters of its base name, so ``../``, absolute paths and links in an
archive reach nothing. NIfTI and DICOM files that Gradio received are read where they
are; raw bytes (the REST route) are written to the private folder first.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Any

from ..dicom import DicomScan
from ..exceptions import InvalidVolumeError, TimePointRequiredError
from ..volume_formats import _require
from .uploads import MAX_UPLOAD_BYTES, UnsupportedImageTypeError, megabytes, receive_upload

#: What the app accepts as a volume, for messages and the page.
ACCEPTED_VOLUME_TEXT = "NIfTI (.nii, .nii.gz), one DICOM file (.dcm) or a .zip of one DICOM series"
#: File name endings the volume upload takes (the page's file picker offers these).
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".dcm", ".zip")
#: Largest volume the app reads, in voxels (a 256 x 256 x 1024 volume): about 256 MB as
#: float32 while it is windowed, so a request's memory stays bounded. The library's own
#: limit (1024**3) is for files on the user's own machine.
MAX_VOLUME_VOXELS = 64 * 1024**2
#: Most files in a zipped series (a series rarely has more than a few hundred slices).
MAX_ZIP_MEMBERS = 2048
#: Most bytes a zip may unpack to, all members together.
MAX_ZIP_BYTES = 256 * 1024**2
_CHUNK = 1024**2


class UnsupportedVolumeTypeError(InvalidVolumeError, UnsupportedImageTypeError):
    """A readable file that is not NIfTI, DICOM or a zip of DICOM (HTTP 415)."""


def is_volume_name(name: str | os.PathLike | None) -> bool:
    """Whether a file name ends like a volume (:data:`VOLUME_SUFFIXES`), case-insensitive."""
    return name is not None and str(name).lower().endswith(VOLUME_SUFFIXES)


def check_volume(source: Any, *, name: str | None = None, max_bytes: int = MAX_UPLOAD_BYTES, temp_root: str | os.PathLike | None = None):
    """Checks one volume upload and reads it, once.

    Args:
        source: A file path (NIfTI, DICOM or zip) or its raw bytes.
        name: How to call the file in messages (default: the path's file name; ``"upload"``
            for bytes, which are named by their content).
        max_bytes: Largest accepted upload.
        temp_root: Where the private temporary folder of a zip or raw bytes is made
            (default: the system's temporary folder). It is deleted before this returns.

    Returns:
        The :class:`~tumor_classifier.volumes.Volume`; its ``source`` is ``name``.

    Raises:
        InvalidVolumeError: With a message that says what is wrong and what to upload
            (:class:`UnsupportedVolumeTypeError` for a file of another kind; also
            :class:`~.uploads.UploadTooLargeError` above ``max_bytes``).
    """
    hint = f"Upload a brain MRI volume as {ACCEPTED_VOLUME_TEXT}."
    upload = receive_upload(source, name=name, max_bytes=max_bytes, noun="a volume", hint=hint, error=InvalidVolumeError)
    shown, path = upload.name or "upload", upload.path
    with tempfile.TemporaryDirectory(prefix="tumor-classifier-volume-", dir=temp_root) as work:
        if path is None:
            path = _write_upload(upload.data, Path(work))
        try:
            return _read(path, shown, Path(work), hint)
        except TimePointRequiredError as error:  # the library names time_point=, an option the app has not
            raise TimePointRequiredError(_four_d_message(shown, error.time_points), error.time_points) from None
        except InvalidVolumeError as error:
            # The library names the files it read; the private folder means nothing to people.
            message = str(error).replace(f"folder {work}{os.sep}series", f"zip {shown!r}").replace(f"{work}{os.sep}", "")
            if shown not in message:  # a message about a file inside a zip: say which upload
                message = f"In {shown!r}: {message}"
            raise type(error)(message) from None


def _four_d_message(shown: str, time_points: int) -> str:
    """What the app says of a 4-D volume: it reads 3-D ones, and where a time point can be chosen."""
    return (
        f"The volume {shown!r} is 4-D: {time_points} time points (or channels). This app reads 3-D volumes: "
        "export one time point as a 3-D NIfTI or DICOM series and upload that, or classify the 4-D file on your "
        f"own machine with the command line (tumor-classifier predict FILE --time-point N) or the library "
        f"(TumorClassifier.predict_volume(path, time_point=N)), N from 0 to {time_points - 1}."
    )


def _write_upload(data: bytes, work: Path) -> Path:
    """Writes raw bytes into the private folder, named by their content (readers tell NIfTI by its ending)."""
    from ..volumes import sniff

    path = work / "upload"
    path.write_bytes(data)
    kind = "zip" if zipfile.is_zipfile(path) else sniff(path)
    suffix = {"zip": ".zip", "nifti": ".nii", "nifti-gz": ".nii.gz", "dicom": ".dcm"}.get(kind, "")
    return path.rename(path.with_name("upload" + suffix))


def _safe_name(name: str) -> str:
    """The letters of a base name a file may carry in the private folder (no separator, no dot-dot)."""
    base = PurePosixPath(str(name).replace("\\", "/")).name
    return re.sub(r"[^A-Za-z0-9._-]", "_", base).lstrip(".")[-80:] or "file"


def _read(path: Path, shown: str, work: Path, hint: str):
    """Checks the headers of a file (or a zip's members) against the limits, then reads it with the library.

    The headers read for the checks (a nibabel image, a :class:`~tumor_classifier.dicom.DicomScan`)
    are what the library reads the voxels from: no header is parsed twice.
    """
    from ..volumes import load_volume, scan_dicom, sniff

    if zipfile.is_zipfile(path):
        header = _check_series(scan_dicom(_unpack_series(path, shown, work / "series")), shown)
    else:
        kind = sniff(path)
        if kind in ("nifti", "nifti-gz"):
            header = _nifti_header(path, shown)
        elif kind == "dicom":
            header = _check_series(scan_dicom(path), shown)
        elif _first_bytes(path, 2) == b"PK":
            raise InvalidVolumeError(f"The zip {shown!r} is damaged or truncated, so it cannot be read; zip one DICOM series again.")
        else:
            raise UnsupportedVolumeTypeError(f"The file {shown!r} is not a volume this app can read. {hint}")
    return dataclasses.replace(load_volume(header), source=shown)


def _first_bytes(path: Path, count: int) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(count)


def _unpack_series(archive: Path, shown: str, folder: Path) -> Path:
    """Reads the members of a zip into ``folder`` under names of our own, within the limits."""
    try:
        with zipfile.ZipFile(archive) as bundle:
            members = [info for info in bundle.infolist() if not info.is_dir()]
            if not members:
                raise InvalidVolumeError(f"The zip {shown!r} holds no files; zip the files of one DICOM series.")
            if len(members) > MAX_ZIP_MEMBERS:
                raise InvalidVolumeError(
                    f"The zip {shown!r} holds {len(members)} files; up to {MAX_ZIP_MEMBERS} are accepted (one DICOM series)."
                )
            if any(info.flag_bits & 0x1 for info in members):
                raise InvalidVolumeError(f"The zip {shown!r} is encrypted; zip the series without a password.")
            declared = sum(info.file_size for info in members)
            if declared > MAX_ZIP_BYTES:
                raise InvalidVolumeError(
                    f"The zip {shown!r} unpacks to {megabytes(declared)}; up to {megabytes(MAX_ZIP_BYTES)} are accepted."
                )
            folder.mkdir()
            unpacked = 0
            for index, info in enumerate(members):
                # Our name, never the archive's path: "../x", "/etc/x" and links reach nothing.
                target = folder / f"{index:05d}_{_safe_name(info.filename)}"
                with bundle.open(info) as member, open(target, "xb") as out:
                    while chunk := member.read(_CHUNK):
                        unpacked += len(chunk)
                        if unpacked > MAX_ZIP_BYTES:  # a header that understates its size
                            raise InvalidVolumeError(
                                f"The zip {shown!r} unpacks to more than {megabytes(MAX_ZIP_BYTES)}; up to that is accepted."
                            )
                        out.write(chunk)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, OSError, zlib.error) as error:
        # A damaged archive, an unknown compression method, a truncated member, a broken deflate stream.
        raise InvalidVolumeError(f"The zip {shown!r} could not be read ({type(error).__name__}: {error}); zip one DICOM series again.") from None
    return folder


def _nifti_header(path: Path, shown: str):
    """The NIfTI's nibabel image, once its header declares at most :data:`MAX_VOLUME_VOXELS` (no voxel is read)."""
    nibabel = _require("nibabel")  # missing: MissingDependencyError says how to install it
    try:
        image = nibabel.load(str(path))  # the header only: nibabel reads voxels lazily
        shape = tuple(int(n) for n in image.shape)
    except Exception as error:  # noqa: BLE001 - nibabel raises many kinds on damaged headers
        raise InvalidVolumeError(f"The file {shown!r} could not be read as NIfTI ({type(error).__name__}: {error}).") from None
    _check_voxels(shape, shown)
    return image


def _check_series(scan: DicomScan, shown: str) -> DicomScan:
    """The scan, once it holds one DICOM series of at most :data:`MAX_VOLUME_VOXELS` (no pixel is read)."""
    if not scan.series:  # a README, a DICOMDIR, a folder listing only: the reader skips those
        raise InvalidVolumeError(f"The zip {shown!r} holds no DICOM files ({scan.skipped} other file(s)); zip the files of one DICOM series.")
    if len(scan.series) > 1:
        raise InvalidVolumeError(
            f"The zip {shown!r} holds {len(scan.series)} DICOM series ({', '.join(sorted(scan.series))}); this app reads one "
            "series per upload: zip the files of one series."
        )
    _check_voxels((scan.voxels(next(iter(scan.series))),), shown)
    return scan


def _check_voxels(shape: tuple[int, ...], shown: str) -> None:
    voxels = 1
    for n in shape:
        voxels *= max(n, 0)
    if voxels > MAX_VOLUME_VOXELS:
        described = "x".join(map(str, shape)) if len(shape) > 1 else str(voxels)
        raise InvalidVolumeError(
            f"The volume {shown!r} has {described} voxels; this app reads volumes up to {MAX_VOLUME_VOXELS} voxels "
            "(for example 256 x 256 x 1024). Use the command line (tumor-classifier predict) for larger ones."
        )
