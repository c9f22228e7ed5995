"""DICOM series in, raw voxels out: one file (single slice or enhanced multi-frame) or a folder.

Slices are sorted by their position along the slice normal (``ImagePositionPatient``),
never by file name or instance number; a folder with several series needs
``series_uid``; a ``Modality`` other than MR is refused; a copy of an image (the same
``SOPInstanceUID``) is read once; MONOCHROME1 pixels are negated so bright stays bright.
:func:`scan_dicom` reads the headers (no pixels) once; a caller can check them (the
app's size limits) and hand the :class:`DicomScan` to
:func:`~tumor_classifier.volumes.load_volume`, which reads the chosen series' pixels
without scanning again. See :mod:`tumor_classifier.volumes` for
what happens to the voxels next.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .exceptions import InvalidVolumeError
from .volume_formats import ACCEPTED_VOLUMES, MAX_VOXELS, MRI_MODALITIES, _check_time_point, _Raw, _require, sniff


#: The key of a scan's images that carry no SeriesInstanceUID.
_NO_UID = "(no SeriesInstanceUID)"


@dataclass
class _Frame:
    """One 2-D frame of a DICOM series, its geometry and where its pixels are."""

    path: Path
    frame: int | None  # index in a multi-frame file
    position: np.ndarray | None  # ImagePositionPatient, mm (LPS)
    orientation: np.ndarray | None  # ImageOrientationPatient (6,)
    spacing: np.ndarray | None  # PixelSpacing (row, column) mm
    order: tuple  # time / instance keys that order frames sharing a position
    rescale: tuple[float, float]  # slope, intercept
    shape: tuple[int, int]


@dataclass
class DicomScan:
    """The DICOM headers (no pixels) of one file or of the files under a folder, each read once.

    Made by :func:`scan_dicom`; :func:`~tumor_classifier.volumes.load_volume` takes it as
    its source and reads one series' pixels from it.

    Attributes:
        source: The file or folder scanned.
        series: ``SeriesInstanceUID`` -> its files, in path order (a single file: one entry,
            whatever its header says).
        headers: Each listed file's header (pydicom dataset read up to the pixels).
        described: ``SeriesInstanceUID`` -> how messages name the series.
        skipped: Files of a folder that are not DICOM images (other files, DICOMDIR,
            unreadable headers) or copies of an image listed already (same
            ``SOPInstanceUID``), read no further.
        unreadable: Of those, the files that start like DICOM but whose header cannot be
            read (damaged, cut short): a series may lack them, and the volume's notes say so.
    """

    source: Path
    series: dict[str, list[Path]] = field(default_factory=dict)
    headers: dict[Path, Any] = field(default_factory=dict)
    described: dict[str, str] = field(default_factory=dict)
    skipped: int = 0
    unreadable: int = 0

    def voxels(self, uid: str) -> int:
        """Voxels the series' headers declare: rows x columns x frames, summed over its files (none read).

        A header whose values cannot be parsed counts 0: the reader says what is wrong with it.
        """
        total = 0
        for path in self.series[uid]:
            header = self.headers[path]
            try:  # pydicom parses values on access: a damaged element raises here
                total += int(header.get("Rows", 0) or 0) * int(header.get("Columns", 0) or 0) * int(header.get("NumberOfFrames", 1) or 1)
            except Exception:  # noqa: BLE001 - pydicom raises many kinds on damaged values
                continue
        return total


def scan_dicom(source: str | os.PathLike) -> DicomScan:
    """Reads the headers of a DICOM file, or of every file under a folder, and groups them by series.

    Args:
        source: A DICOM file or a folder (walked with its subfolders, linked ones included).

    Returns:
        The :class:`DicomScan`; a folder's files that are not DICOM images are counted in
        ``skipped`` (a folder with none gives empty ``series``).

    Raises:
        InvalidVolumeError: A single file whose header cannot be read as DICOM.
    """
    pydicom = _require("pydicom")

    path = Path(source)
    scan = DicomScan(path)
    instances: set[str] = set()  # an export can hold a series twice: each image is read once
    if not path.is_dir():
        try:
            header = pydicom.dcmread(str(path), stop_before_pixels=True, force=True)
            uid = str(header.get("SeriesInstanceUID", _NO_UID))
        except Exception as error:  # noqa: BLE001 - pydicom raises many kinds on damaged files, also on access
            raise InvalidVolumeError(f"{path.name} could not be read as DICOM ({type(error).__name__}: {error}).") from None
        scan.series[uid], scan.headers[path], scan.described[uid] = [path], header, uid
        return scan
    for path in _files_under(path):
        if path.name.upper() == "DICOMDIR" or sniff(path) != "dicom":
            scan.skipped += 1
            continue
        try:  # pydicom parses values on access: a damaged element raises here, not in dcmread
            header = pydicom.dcmread(str(path), stop_before_pixels=True, force=True)
            if "Rows" not in header and "SeriesInstanceUID" not in header:  # not an image (read up to its pixels)
                scan.skipped += 1
                scan.unreadable += _declares_an_image(header)  # ... or an image's file cut inside its header
                continue
            uid = str(header.get("SeriesInstanceUID", _NO_UID))
            instance = header.get("SOPInstanceUID")
            if instance is not None and str(instance) in instances:
                scan.skipped += 1
                continue
            description = (
                f"{uid} ({header.get('Modality', '?')}, series {header.get('SeriesNumber', '?')} "
                f"'{header.get('SeriesDescription', '')}'"
            )
        except Exception:  # noqa: BLE001 - unreadable files are skipped like non-DICOM ones, and counted
            scan.skipped += 1
            scan.unreadable += 1
            continue
        if instance is not None:
            instances.add(str(instance))
        scan.series.setdefault(uid, []).append(path)
        scan.headers[path] = header
        scan.described.setdefault(uid, description)
    return scan


def _declares_an_image(header: Any) -> bool:
    """Whether a header's file meta names an image storage class (MR Image Storage ...)."""
    meta = getattr(header, "file_meta", None)
    sop_class = meta.get("MediaStorageSOPClassUID") if meta is not None else None
    return sop_class is not None and "Image Storage" in getattr(sop_class, "name", "")


def _files_under(folder: Path) -> list[Path]:
    """The files under a folder and its subfolders, through links (each real folder once: a link loop ends), sorted."""
    files, walked = [], set()
    for parent, subfolders, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(parent)
        if real in walked:
            subfolders[:] = []
            continue
        walked.add(real)
        files.extend(path for path in (Path(parent) / name for name in names) if path.is_file())
    return sorted(files)


def _dicom_scan_raw(scan: DicomScan, series_uid: str | None, time_point: int | None) -> _Raw:
    """The voxels of one series of a scan: the only one, or ``series_uid``'s; refuses more than MAX_VOXELS."""
    if not scan.source.is_dir():
        _check_declared_voxels(scan, next(iter(scan.series)), scan.source.name)
        return _dicom_files_raw([scan.source], scan.source.name, None, time_point, single_file=True)
    folder, series = scan.source, scan.series
    if not series:
        raise InvalidVolumeError(
            f"The folder {folder} holds no DICOM files ({scan.skipped} other file(s)), and a folder is read as one DICOM "
            f"series; accepted: {ACCEPTED_VOLUMES}. A BraTS case folder is read by load_brats_case (or predict it on the "
            "command line: each sequence is a volume); a folder of images or volumes is walked by "
            "tumor-classifier predict FOLDER --recursive --output results.csv."
        )
    if series_uid is None and len(series) > 1:
        listing = "; ".join(f"{scan.described[uid]}, {len(paths)} files)" for uid, paths in sorted(series.items()))
        raise InvalidVolumeError(
            f"The folder {folder} holds {len(series)} DICOM series; choose one with series_uid= "
            f"(--series-uid on the command line). Series found: {listing}."
        )
    if series_uid is not None and series_uid not in series:
        raise InvalidVolumeError(f"The folder {folder} has no series {series_uid!r}; series found: {', '.join(sorted(series))}.")
    uid = series_uid or next(iter(series))
    _check_declared_voxels(scan, uid, str(folder))
    raw = _dicom_files_raw(series[uid], str(folder), None if uid == _NO_UID else uid, time_point, single_file=False)
    if scan.unreadable:
        count = "1 file that looks like DICOM" if scan.unreadable == 1 else f"{scan.unreadable} files that look like DICOM"
        raw.notes.append(f"{count} could not be read and {'was' if scan.unreadable == 1 else 'were'} left out (damaged or cut short?): a slice may be missing.")
    return raw


def _check_declared_voxels(scan: DicomScan, uid: str, what: str) -> None:
    """Refuses a series whose headers declare more than MAX_VOXELS, before any pixel is read."""
    declared = scan.voxels(uid)
    if declared > MAX_VOXELS:
        raise InvalidVolumeError(f"{what} declares {declared} voxels: more than {MAX_VOXELS} voxels, too large to read.")


def _float(value: Any, default: float) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def _slice_step_mm(dataset: Any) -> float:
    """SpacingBetweenSlices, else SliceThickness, else 1 mm; a damaged value counts as absent."""
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        try:
            value = dataset.get(keyword)
        except Exception:  # noqa: BLE001 - pydicom parses on access; a damaged element raises here
            continue
        if value is not None:
            return _float(value, 1.0)
    return 1.0


def _vector(value: Any, count: int, keyword: str, path: Path) -> np.ndarray | None:
    """A geometry tag as floats, ``None`` when absent; refuses a wrong number of values."""
    if value is None:
        return None
    vector = np.atleast_1d(np.asarray(value, dtype=np.float64))  # pydicom gives one value as a scalar
    if vector.shape != (count,):
        raise InvalidVolumeError(f"{path.name} has {vector.size} value(s) in {keyword}; DICOM gives {count}.")
    return vector


def _frames_of(path: Path, dataset: Any) -> list[_Frame]:
    """The frames of one file, classic or enhanced multi-frame, with their geometry."""
    count = int(_float(dataset.get("NumberOfFrames", 1), 1))
    if count < 1:
        raise InvalidVolumeError(f"{path.name} declares NumberOfFrames {count}; an image has at least one frame.")
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
        if str(dataset.get("PhotometricInterpretation", "")).strip().upper() == "MONOCHROME1":
            slope, intercept = -slope, -intercept  # its lowest value is white: negate so bright stays bright
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
                _vector(position, 3, "ImagePositionPatient", path),
                _vector(orientation, 6, "ImageOrientationPatient", path),
                _vector(spacing, 2, "PixelSpacing", path),
                order,
                (slope, intercept),
                shape,
            )
        )
    return frames


def _interpret(path: Path, dataset: Any) -> tuple[str | None, str | None, list[_Frame]]:
    """The modality, series UID and frames of one read DICOM file; refuses non-MR, pixel-less and colour files.

    pydicom parses an element's value when it is first read, so a damaged header raises
    here (ValueError, NotImplementedError, AttributeError ...); the caller turns that into
    the project's error.
    """
    this_modality = str(dataset.get("Modality", "")).upper() or None
    if this_modality is not None and this_modality not in MRI_MODALITIES:
        raise InvalidVolumeError(
            f"{path.name} is a {this_modality} image (DICOM Modality {this_modality!r}), not MRI; this model was "
            "trained on brain MRI slices only and gives no tumour type for other modalities. Accepted: DICOM "
            f"with Modality {' or '.join(MRI_MODALITIES)}."
        )
    if "PixelData" not in dataset:
        if "Rows" in dataset and "Columns" in dataset:  # an image's header: the file ends before its pixels
            raise InvalidVolumeError(
                f"{path.name} is an image whose pixel data is missing or cut short (a truncated copy?); copy the file again."
            )
        raise InvalidVolumeError(f"{path.name} is DICOM without pixel data (a report, structure set ...), not an image.")
    if int(dataset.get("SamplesPerPixel", 1)) != 1:
        raise InvalidVolumeError(
            f"{path.name} holds colour pixels ({dataset.get('PhotometricInterpretation', '?')}); MRI series are "
            "grayscale (SamplesPerPixel 1)."
        )
    uid = str(dataset.SeriesInstanceUID) if "SeriesInstanceUID" in dataset else None
    return this_modality, uid, _frames_of(path, dataset)


def _dicom_files_raw(paths: Sequence[Path], what: str, uid: str | None, time_point: int | None, *, single_file: bool) -> _Raw:
    pydicom = _require("pydicom")

    frames: list[_Frame] = []
    modality = None
    datasets: dict[Path, Any] = {}
    for path in paths:
        try:
            dataset = pydicom.dcmread(str(path), force=True)
            this_modality, this_uid, these_frames = _interpret(path, dataset)
        except InvalidVolumeError:
            raise
        except Exception as error:  # noqa: BLE001 - pydicom raises many kinds on damaged files, also on access
            raise InvalidVolumeError(f"{path.name} could not be read as DICOM ({type(error).__name__}: {error}).") from None
        modality = modality or this_modality
        uid = uid or this_uid
        datasets[path] = dataset
        frames.extend(these_frames)
    shapes = {f.shape for f in frames}
    if len(shapes) > 1:
        raise InvalidVolumeError(f"The series in {what} mixes image sizes {sorted(shapes)}; one series has one size.")
    notes: list[str] = []
    placed = sum(f.position is not None and f.orientation is not None for f in frames)
    if 0 < placed < len(frames):  # stored order would scramble the slices the others place
        raise InvalidVolumeError(
            f"In the series in {what}, {len(frames) - placed} of {len(frames)} images have no ImagePositionPatient or "
            "ImageOrientationPatient, so their place among the slices is unknown; a series has them in every image "
            "or in none."
        )
    geometry = placed == len(frames)
    if geometry:
        orientations = np.stack([f.orientation for f in frames])
        if np.abs(orientations - orientations[0]).max() > 1e-3:
            raise InvalidVolumeError(
                f"The series in {what} mixes slice orientations (a localiser with several planes?); one volume has one."
            )
        row_cos, col_cos = orientations[0][:3], orientations[0][3:]
        normal = np.cross(row_cos, col_cos)
        if np.abs(np.linalg.norm([row_cos, col_cos, normal], axis=1) - 1).max() > 0.01:
            raise InvalidVolumeError(
                f"The series in {what} has ImageOrientationPatient {orientations[0].tolist()}: its row and column directions "
                "are not two perpendicular unit vectors, so the slices have no order in space; the header is damaged."
            )
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
    # The volume is filled in place and each file's decoded pixels dropped once used: a series
    # can be GiBs, and a list of planes, their stack and a contiguous copy each cost as much.
    stack = np.empty((len(chosen), *frames[chosen[0]].shape), dtype=np.float32)  # (k, rows, columns)
    cache: dict[Path, np.ndarray] = {}  # a multi-frame file's frames, decoded once
    for k, index in enumerate(chosen):
        frame = frames[index]
        if frame.path not in cache:
            try:
                cache[frame.path] = datasets[frame.path].pixel_array
            except Exception as error:  # noqa: BLE001 - missing codecs, truncated data
                raise InvalidVolumeError(
                    f"The pixels of {frame.path.name} could not be decoded ({type(error).__name__}: {error})."
                ) from None
        array = cache[frame.path] if frame.frame is not None else cache.pop(frame.path)
        slope, intercept = frame.rescale
        stack[k] = array[frame.frame] if frame.frame is not None else array
        stack[k] *= np.float32(slope)
        stack[k] += np.float32(intercept)
    if not np.isfinite(stack).all():
        raise InvalidVolumeError(f"{what} holds NaN or infinite pixel values; only finite intensities can be windowed.")
    if modality is None:
        notes.append("The DICOM header has no Modality, so it does not say MR: the not-a-brain-MRI check decides.")
    data = stack.transpose(2, 1, 0)  # (columns, rows, k): voxel (i, j, k) as DICOM indexes it
    if not geometry:
        return _Raw(data, None, what, modality, uid, notes)
    first = frames[chosen[0]]
    row_mm, col_mm = first.spacing if first.spacing is not None else (1.0, 1.0)
    if first.spacing is None:
        notes.append("No PixelSpacing in the DICOM header: 1 mm pixels assumed.")
    if len(chosen) > 1:
        step = (frames[chosen[-1]].position - first.position) / (len(chosen) - 1)
        gaps = np.diff([distance[i] for i in chosen])
        if gaps.max() - gaps.min() > 0.05 * gaps.mean():  # a regular grid cannot hold them: say so
            notes.append(
                f"Uneven slice spacing ({gaps.min():.3g} to {gaps.max():.3g} mm): a slice may be missing; "
                f"read with the mean step, {gaps.mean():.3g} mm."
            )
    else:
        thickness = _slice_step_mm(datasets[first.path])
        step = np.cross(first.orientation[:3], first.orientation[3:]) * thickness
    lps = np.eye(4)
    lps[:3, 0] = first.orientation[:3] * col_mm  # along a row: the column index i
    lps[:3, 1] = first.orientation[3:] * row_mm  # down a column: the row index j
    lps[:3, 2] = step
    lps[:3, 3] = first.position
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # DICOM's LPS -> RAS
    return _Raw(data, affine, what, modality, uid, notes)
