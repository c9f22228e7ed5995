"""Training slices from volumes: a volume's head slices written as PNG images.

A volume without a tumour is a source of "no tumour" slices in every plane, in exactly the
grey representation :func:`~tumor_classifier.volume_prediction.predict_volume` classifies
(the same reading, orientation and window of :func:`~tumor_classifier.volumes.load_volume`).
The folder written here is what ``train_hf.py --no_tumour_dirs`` reads; the Kaggle set's
healthy slices are almost all axial, so healthy coronal and sagittal slices are what it
lacks.

Example:
    >>> export_slices("healthy.nii.gz", "slices/healthy", step=2)   # doctest: +SKIP
    [PosixPath('slices/healthy/healthy_axial_040.png'), ...]
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from PIL import Image

from .exceptions import InvalidArgumentError, InvalidVolumeError
from .volume_formats import volume_stem
from .volume_slices import PLANES, head_slices
from .volumes import load_volume

#: Share of the fullest slice's head area a slice needs to be written: lower than the
#: 0.85 that :func:`~tumor_classifier.volume_prediction.predict_volume` classifies, so the
#: slices near the skull base and the vertex, where a healthy head looks least like the
#: Kaggle slices, are among them.
EXPORT_HEAD_FRACTION = 0.5


def export_slices(
    source: Any,
    out_dir: str | Path,
    *,
    planes: Sequence[str] = PLANES,
    step: int = 1,
    min_head_fraction: float = EXPORT_HEAD_FRACTION,
    name: str | None = None,
    series_uid: str | None = None,
    time_point: int | None = None,
) -> list[Path]:
    """Writes the head slices of one volume, in each plane, as ``<name>_<plane>_<index>.png``.

    Args:
        source: What :func:`~tumor_classifier.volumes.load_volume` reads.
        out_dir: Folder to write to (made if missing); a file of the same name is replaced.
        planes: Planes to cut; each needs the volume's geometry (an array has only ``axial``).
        step: Write every ``step``-th head slice (neighbouring slices are near copies).
        min_head_fraction: See :data:`EXPORT_HEAD_FRACTION`.
        name: File name prefix; the source's name without its suffixes by default.
        series_uid, time_point: See :func:`~tumor_classifier.volumes.load_volume`.

    Returns:
        The written paths, in plane and slice order.

    Raises:
        InvalidArgumentError: ``step`` < 1, ``min_head_fraction`` outside [0, 1], an
            unknown or repeated plane, or ``out_dir`` cannot be a folder (checked first).
        InvalidVolumeError: The volume cannot be read or cut in a plane.
    """
    if step < 1 or not 0 <= min_head_fraction <= 1:
        raise InvalidArgumentError(f"step must be >= 1 and min_head_fraction in [0, 1]; got step={step}, min_head_fraction={min_head_fraction}.")
    unknown = [plane for plane in planes if plane not in PLANES]
    if unknown or not planes or len(set(planes)) != len(planes):
        raise InvalidArgumentError(f"planes must be distinct names among {', '.join(PLANES)}; got {list(planes)}.")
    from .model_folder import check_writable_folder

    out_dir = check_writable_folder(out_dir, name="The slice folder", what="the slices")
    if name is None:
        name = (volume_stem(Path(source).name) if isinstance(source, (str, os.PathLike)) else "") or "volume"
    chosen = {}  # every plane is read and checked before the first file is written
    for plane in planes:
        volume = load_volume(source, plane=plane, series_uid=series_uid, time_point=time_point)
        inside = head_slices(volume.slices, min_head_fraction).nonzero()[0]
        if inside.size == 0:
            raise InvalidVolumeError(f"No {plane} slice of {volume.source} holds a head-sized bright region; nothing to write.")
        chosen[plane] = (volume.slices, inside[::step])
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for plane, (slices, indices) in chosen.items():
        for index in indices:
            path = out_dir / f"{name}_{plane}_{index:03d}.png"
            Image.fromarray(slices[index]).save(path)
            written.append(path)
    return written
