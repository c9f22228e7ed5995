"""From voxels to display slices: orientation and plane, square pixels, the intensity window, head slices.

No file is read here: the functions take voxels (and their affine) from
:mod:`tumor_classifier.volume_formats` / :mod:`tumor_classifier.dicom`, as
:func:`tumor_classifier.volumes.load_volume` does.
"""

from __future__ import annotations

import numpy as np

from .encoded_images import MAX_IMAGE_SIDE, MIN_IMAGE_SIDE
from .exceptions import InvalidVolumeError
from .volume_formats import _require

#: Planes :func:`load_volume` can cut a volume in.
PLANES = ("axial", "coronal", "sagittal")
#: The percentiles of the intensity window (low of all voxels, high of the head's).
WINDOW_PERCENTILES = (0.5, 99.5)
#: Longer side of the head's box over the image side in the Kaggle Training slices (the
#: median of 400 random ones; quartiles 0.85 and 0.98): how :func:`frame_head` frames a slice.
HEAD_FILL = 0.93

#: Where :func:`cut` puts the patient in each plane's slices: the letters of the (top,
#: bottom, left, right) image edges (A/P anterior/posterior, S/I superior/inferior, R/L the
#: patient's right/left), for figures a reader must orient.
SLICE_EDGES = {"axial": ("A", "P", "R", "L"), "coronal": ("S", "I", "R", "L"), "sagittal": ("S", "I", "A", "P")}

# Axis letters of RAS+ after canonicalisation: 0 = x (left -> right), 1 = y (posterior ->
# anterior), 2 = z (inferior -> superior).
_SLICE_AXIS = {"axial": 2, "coronal": 1, "sagittal": 0}


def cut(data: np.ndarray, affine: np.ndarray, plane: str = "axial", what: str = "volume") -> tuple[np.ndarray, tuple[float, float, float]]:
    """Turns voxels to RAS+ and cuts them into display slices of one plane.

    Args:
        data: float array (x, y, z) with ``affine`` mapping voxel indices to mm.
        affine: float (4, 4).
        plane: ``axial``, ``coronal`` or ``sagittal``.
        what: How messages name the volume.

    Returns:
        ``(slices, spacing)``: float32 (n, H, W) as the :mod:`tumor_classifier.volumes` docstring describes,
        and ``(between slices, pixel, pixel)`` in mm.

    Raises:
        InvalidVolumeError: The affine is degenerate (a voxel axis points nowhere).
    """
    nib = _require("nibabel")

    ornt = nib.orientations.io_orientation(affine)
    if np.isnan(ornt).any():  # nibabel leaves an axis without a direction NaN and then refuses to apply it
        raise InvalidVolumeError(
            f"The affine of {what} is degenerate: voxel axis {int(np.flatnonzero(np.isnan(ornt[:, 0]))[0])} has no "
            "direction in space (a zero pixel or slice spacing, or an all-zero sform?), so its orientation is unknown. "
            "Fix the header's spacing or affine."
        )
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


def check_slice_size(slices: np.ndarray, what: str, plane: str | None, affine: np.ndarray | None = None, shape: tuple[int, ...] | None = None) -> None:
    """Refuses slices the 2-D model cannot take (sides outside MIN_IMAGE_SIDE..MAX_IMAGE_SIDE), naming a plane that fits.

    Args:
        slices: The cut slices (n, H, W).
        what: How messages name the volume.
        plane: The plane they were cut in; ``None`` for slices as given.
        affine, shape: The voxels' affine and shape (x, y, z), to say which other plane gives slices that fit.

    Raises:
        InvalidVolumeError: A slice side is too small or too large.
    """
    height, width = slices.shape[1:]
    if MIN_IMAGE_SIDE <= min(height, width) and max(height, width) <= MAX_IMAGE_SIDE:
        return
    hint = ""
    if affine is not None and shape is not None:
        nib = _require("nibabel")
        ras = [0, 0, 0]  # the voxel counts along x, y, z of RAS+
        for axis, (ras_axis, _) in enumerate(nib.orientations.io_orientation(affine)):
            ras[int(ras_axis)] = int(shape[axis])
        sides = {"axial": (ras[1], ras[0]), "coronal": (ras[2], ras[0]), "sagittal": (ras[2], ras[1])}
        fitting = [p for p, (h, w) in sides.items() if p != plane and MIN_IMAGE_SIDE <= min(h, w) and max(h, w) <= MAX_IMAGE_SIDE]
        if fitting:
            hint = f" Cut it in the {' or '.join(fitting)} plane instead (plane=..., --plane on the command line)."
    named = f"The {plane} slices of {what}" if plane else f"The slices of {what}"
    raise InvalidVolumeError(
        f"{named} are {width}x{height} pixels; the model classifies slices of at least {MIN_IMAGE_SIDE} and at most "
        f"{MAX_IMAGE_SIDE} pixels a side.{hint}"
    )


def robust_window(data: np.ndarray, percentiles: tuple[float, float] = WINDOW_PERCENTILES, what: str = "volume") -> tuple[float, float]:
    """The intensity window of a volume: see the :mod:`tumor_classifier.volumes` docstring.

    Raises:
        InvalidVolumeError: The volume is constant (nothing to show).
    """
    flat = data.reshape(-1)
    if flat.size > 4_000_000:  # percentiles of a strided sample: the same to a grey level
        flat = flat[:: flat.size // 2_000_000]
    minimum = float(flat.min())
    head = flat[flat > minimum]
    if head.size == 0:
        state = "is empty" if minimum == 0 else "has no contrast"
        raise InvalidVolumeError(f"The {what} {state}: every voxel is {minimum:g}. A volume needs some signal to classify.")
    low = float(np.percentile(flat, percentiles[0]))
    high = float(np.percentile(head, percentiles[1]))
    if high <= low:
        high = float(head.max())
    if high <= low:  # one level fills the volume above the 0.5th percentile: window from the minimum
        low = minimum
    return low, high


def apply_window(data: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Maps ``[low, high]`` linearly to uint8 0-255 (clipped): uint8 array of ``data``'s shape."""
    low, high = window
    # One float32 buffer, changed in place: a volume can be GiBs, and each temporary costs as much.
    scaled = np.subtract(data, np.float32(low), dtype=np.float32)
    scaled *= np.float32(255.0 / (high - low))
    np.rint(scaled, out=scaled)
    np.clip(scaled, 0, 255, out=scaled)
    return scaled.astype(np.uint8)


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


def frame_head(gray: np.ndarray, fill: float = HEAD_FILL) -> np.ndarray:
    """A slice framed as the 2-D training slices are: the head centred in a square it fills to ``fill``.

    A volume's field of view leaves a small head (a skull-stripped BraTS brain) in a wide
    dark frame; the Kaggle JPEGs were cut close around the head. Checks that look at the
    whole image (the learned not-a-brain-MRI check does not crop) see the volume's slices
    as the training slices were framed.

    Args:
        gray: uint8 (H, W).
        fill: Longer side of the head's box over the side of the square, in (0, 1].

    Returns:
        uint8 (S, S), zero outside ``gray``.
    """
    from .preprocessing import head_bounding_box

    left, top, right, bottom = head_bounding_box(gray)
    box = gray[top:bottom, left:right]
    side = max(1, int(round(max(box.shape) / fill)))
    framed = np.zeros((side, side), dtype=gray.dtype)
    row, col = (side - box.shape[0]) // 2, (side - box.shape[1]) // 2
    framed[row : row + box.shape[0], col : col + box.shape[1]] = box
    return framed


def mark_edges(image, plane: str):
    """A copy of a slice image (PIL, as its overlay) with :data:`SLICE_EDGES` lettered at the middle of each edge.

    The letters are white on a dark box, a little inside the edges, so they read on any scan.
    """
    from PIL import ImageDraw

    from .visualization import _font

    marked = image.convert("RGB")
    draw = ImageDraw.Draw(marked)
    size = max(10, min(marked.size) // 16)
    font = _font(size)
    pad = max(2, size // 5)
    width, height = marked.size
    places = (((width / 2, pad), "mt"), ((width / 2, height - pad), "mb"), ((pad, height / 2), "lm"), ((width - pad, height / 2), "rm"))
    for letter, ((x, y), anchor) in zip(SLICE_EDGES[plane], places):  # top, bottom, left, right
        box = draw.textbbox((x, y), letter, font=font, anchor=anchor)
        draw.rectangle((box[0] - 1, box[1] - 1, box[2] + 1, box[3] + 1), fill=(0, 0, 0))
        draw.text((x, y), letter, fill=(255, 255, 255), font=font, anchor=anchor)
    return marked


def _resample_in_plane(slices: np.ndarray, row_factor: float, col_factor: float) -> np.ndarray:
    """Bilinear resampling of each slice so pixels become square (factors >= 1 enlarge)."""
    import torch
    import torch.nn.functional as F

    n, height, width = slices.shape
    size = (max(1, int(round(height * row_factor))), max(1, int(round(width * col_factor))))
    tensor = torch.from_numpy(np.ascontiguousarray(slices))[:, None]
    return F.interpolate(tensor, size=size, mode="bilinear", align_corners=False)[:, 0].numpy()
