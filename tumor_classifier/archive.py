"""Whole archives: every slice image and volume under some folders, one row each, resumable, sharded.

``tumor-classifier predict DIR --recursive --output results.parquet`` (or ``.csv`` /
``.jsonl``) calls :func:`predict_archive`. Its parts:

* **Walking** (:func:`find_inputs`): folders are walked in sorted order, through symbolic
  links (a folder reached twice, or a link loop, is walked once). A file named like
  an image the decoder reads (:data:`IMAGE_SUFFIXES`) is a ``slice``; a ``.nii`` /
  ``.nii.gz`` file, or a file whose first bytes say NIfTI, is a ``volume``; a folder that
  directly holds DICOM files is one ``volume`` (the series reader also reads its
  subfolders, so the walk does not descend into it). A NIfTI link whose target is gone is
  listed (its row says so), and so is a ``.zip`` (its row says to unzip it). Other files are not listed.
* **Rows** (:func:`row_columns`): ``path``, ``kind``, ``series_uid`` (DICOM volumes; a
  folder holding several series, a study exported flat, gets a row per series), ``label`` (the class, or
  ``not_brain_mri``), ``verdict`` (``tumor``, ``no_tumor``, ``uncertain`` or
  ``not_brain_mri``), ``tumor_probability``, ``p_<class>`` per class, ``looks_like_mri``,
  ``slices`` (slices classified: 1 for an image, those inside the head for a volume),
  ``key_slice`` (volumes) and ``error``: a file that cannot be read gets a row with only
  the error, and the run goes on (the command then exits 1: :attr:`ArchiveSummary.errors_written`).
  Slices get :meth:`TumorClassifier.verdicts`, volumes :meth:`TumorClassifier.predict_volume`
  without a heatmap.
* **Writing** (:mod:`tumor_classifier.archive_output`): rows go to ``<output>.parts/``
  a chunk at a time (every :data:`FLUSH_ROWS` rows or :data:`FLUSH_SECONDS` seconds):
  appended to ``rank<r>.csv`` / ``rank<r>.jsonl``, or one ``rank<r>-<n>.parquet`` per
  chunk (Parquet cannot be appended to), so a killed run leaves whole parts (at most a
  torn last line in a CSV / JSON lines part, which is ignored and cut off). At the end
  the previous output and every part are merged into ``output`` in walk order and the
  parts folder is removed.
* **Resume**: a path that already has a row, in the output or in any part, is not
  predicted again, error rows included (delete a row to retry it). Run the same command
  again; the paths must be spelled the same way (they are the keys).
* **Several processes**: under ``torchrun --nproc_per_node N`` or ``accelerate launch``,
  accelerate's ``PartialState`` gives each process its rank and the world size (from
  ``RANK`` / ``WORLD_SIZE``). Process ``r`` takes items ``r, r + N, r + 2N ...`` of the
  walk, the same split in every process because the walk is sorted, and writes its
  own parts; after a barrier, process 0 merges.

Example:
    >>> clf = TumorClassifier.from_pretrained()                              # doctest: +SKIP
    >>> summary = predict_archive(clf, ["scans/"], "results.parquet")        # doctest: +SKIP
    >>> summary.predicted, summary.failed, summary.rows_written, summary.errors_written   # doctest: +SKIP
    (1200, 3, 1200, 3)
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Sequence

from .archive_output import PartWriter, check_output, done_paths, merge_parts, parts_folder
from .data import IMAGE_SUFFIXES, NO_TUMOR
from .exceptions import InvalidArgumentError, TimePointRequiredError, TumorClassifierError
from .verdict import NOT_BRAIN_MRI
from .volume_formats import DICOM_SUFFIXES, NIFTI_SUFFIXES

SLICE, VOLUME = "slice", "volume"
#: Listed as volumes so that their rows say to unzip them (the volume reader reads files and folders).
ZIP_SUFFIXES = (".zip",)
#: Rows a process keeps before writing them out, and the longest it waits to write them.
FLUSH_ROWS = 64
FLUSH_SECONDS = 30.0
#: How long a finished process waits at the barrier for the slowest one.
BARRIER_TIMEOUT = timedelta(hours=24)


@dataclass(frozen=True)
class ArchiveItem:
    """One thing to predict: a slice image file, or a volume (NIfTI file, DICOM series folder)."""

    path: str
    kind: str


@dataclass
class ArchiveSummary:
    """What one process did.

    Attributes:
        output: The results file.
        rank, world_size: This process and how many took part.
        found: Items the walk found (all processes together).
        already_done: Of this process's items, those the output or parts already held.
        predicted: Items this process predicted now (error rows included).
        failed: Of those, the ones that could not be read (rows with an ``error``).
        slices: 2-D slices this process classified (an image is one).
        seconds: Time this process spent predicting and writing.
        rows_written: Rows in the merged output (process 0), else ``None``.
        errors_written: Of those, the error rows, resumed ones included (process 0), else ``None``.
    """

    output: Path
    rank: int
    world_size: int
    found: int
    already_done: int
    predicted: int
    failed: int
    slices: int
    seconds: float
    rows_written: int | None = None
    errors_written: int | None = None

    @property
    def text(self) -> str:
        """One line for people (two on process 0: the merge)."""
        rate = f" ({self.slices / self.seconds:.1f} slices/s)" if self.seconds > 0 and self.slices else ""
        line = (
            f"rank {self.rank} of {self.world_size}: {self.predicted} files predicted ({self.failed} unreadable), "
            f"{self.already_done} already done, {self.slices} slices in {self.seconds:.1f} s{rate}"
        )
        if self.rows_written is not None:
            line += f"\n{self.rows_written} rows ({self.found} files found) written to {self.output}"
        return line


# ----------------------------------------------------------------------------- walking


def volume_kind(path: Path) -> str | None:
    """``"nifti"``, ``"dicom"``, ``"zip"`` or ``None``: by the name when it says, else by the first bytes, read once."""
    from .volumes import sniff

    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(ZIP_SUFFIXES):
        return "zip"
    if name.endswith(DICOM_SUFFIXES):
        return "dicom"
    kind = sniff(path)
    return "nifti" if kind in ("nifti", "nifti-gz") else "dicom" if kind == "dicom" else None


def _items_in(folder: Path, names: Sequence[str]) -> tuple[list[ArchiveItem], bool]:
    """The items among a folder's files, and whether the folder is a DICOM series."""
    items, series = [], False
    for name in sorted(names):
        path = folder / name
        try:
            if name.lower().endswith(IMAGE_SUFFIXES):
                items.append(ArchiveItem(os.path.normpath(path), SLICE))
            elif path.is_symlink() and not path.exists():  # a link whose target is gone: a row says so
                if name.lower().endswith(NIFTI_SUFFIXES):
                    items.append(ArchiveItem(os.path.normpath(path), VOLUME))
            elif not path.is_file():
                continue
            else:
                kind = volume_kind(path)
                if kind in ("nifti", "zip"):  # a zip's row says to unzip it
                    items.append(ArchiveItem(os.path.normpath(path), VOLUME))
                elif kind == "dicom":
                    series = True
        except OSError:  # unreadable while sniffing: listed as an image, whose row says why
            items.append(ArchiveItem(os.path.normpath(path), SLICE))
    return items, series


def find_inputs(paths: Sequence[str | os.PathLike], *, recursive: bool = True, exclude: Sequence[str | os.PathLike] = ()) -> list[ArchiveItem]:
    """The slice images and volumes under ``paths``, in a fixed order (see the module docstring).

    Args:
        paths: Folders to walk, or single files (each taken as it is).
        recursive: Walk subfolders too (else only each folder's own files).
        exclude: Paths to leave out, with everything below them (the output and its parts).

    Returns:
        The items in walk order; a path named twice is listed once.

    Raises:
        InvalidArgumentError: A path does not exist.
    """
    skip = {os.path.normpath(p) for p in exclude}
    found: dict[str, ArchiveItem] = {}
    for given in paths:
        root = Path(given)
        if root.is_file():
            kind = SLICE if root.name.lower().endswith(IMAGE_SUFFIXES) or volume_kind(root) is None else VOLUME
            found.setdefault(os.path.normpath(root), ArchiveItem(os.path.normpath(root), kind))
            continue
        if not root.is_dir():
            raise InvalidArgumentError(f"{root} does not exist; give folders to walk or image / volume files.")
        walked: set[str] = set()  # real paths: a folder reached through links (or a link loop) is walked once
        for folder, subfolders, names in os.walk(root, followlinks=True):
            if os.path.realpath(folder) in walked:
                subfolders[:] = []
                continue
            walked.add(os.path.realpath(folder))
            subfolders[:] = sorted(d for d in subfolders if os.path.normpath(Path(folder) / d) not in skip) if recursive else []
            items, series = _items_in(Path(folder), [n for n in names if os.path.normpath(Path(folder) / n) not in skip])
            if series:
                items.insert(0, ArchiveItem(os.path.normpath(folder), VOLUME))
                subfolders[:] = []  # the series reader takes the subfolders' files
            for item in items:
                found.setdefault(item.path, item)
    return list(found.values())


def shard(items: Sequence[ArchiveItem], rank: int, world_size: int) -> list[ArchiveItem]:
    """Process ``rank``'s share: every ``world_size``-th item, starting at ``rank``."""
    if not 0 <= rank < world_size:
        raise InvalidArgumentError(f"rank must be in [0, world_size); got rank {rank} of {world_size}.")
    return list(items[rank::world_size])


# ----------------------------------------------------------------------------- rows


def row_columns(classes: Sequence[str]) -> list[str]:
    """The output's columns, in order, for a model with these classes."""
    return ["path", "kind", "series_uid", "label", "verdict", "tumor_probability", *(f"p_{c}" for c in classes), "looks_like_mri", "slices", "key_slice", "error"]


def _number(value: float | None) -> float | None:
    """A probability for the file: 6 decimals, NaN as missing (JSON has no NaN)."""
    return None if value is None or math.isnan(value) else round(float(value), 6)


def _row(item: ArchiveItem, columns: Sequence[str], **values: Any) -> dict[str, Any]:
    row = dict.fromkeys(columns)
    row.update(path=item.path, kind=item.kind, **values)
    return row


def _slice_rows(classifier: Any, items: Sequence[ArchiveItem], columns: Sequence[str]) -> list[dict[str, Any]]:
    """Rows for a batch of slice images: decoded once each, classified together."""
    from .decoding import decode

    decoded, rows = {}, {}
    for item in items:
        try:
            decoded[item] = decode(item.path)
        except (TumorClassifierError, OSError) as error:
            rows[item] = _error_row(item, columns, error)
    try:
        verdicts = dict(zip(decoded, classifier.verdicts(list(decoded.values())))) if decoded else {}
    except TumorClassifierError:  # one image spoils the batch (e.g. NaN out): find it, keep the rest
        verdicts = {}
        for item, image in decoded.items():
            try:
                verdicts[item] = classifier.verdicts([image])[0]
            except TumorClassifierError as error:
                rows[item] = _error_row(item, columns, error)
    for item, verdict in verdicts.items():
        p = verdict.probabilities
        rows[item] = _row(
            item, columns, label=verdict.label, verdict=verdict.kind,
            tumor_probability=_number(1.0 - p[NO_TUMOR]) if NO_TUMOR in p else None,
            **{f"p_{c}": _number(v) for c, v in p.items()}, looks_like_mri=verdict.brain_mri, slices=1,
        )  # fmt: skip
    return [rows[item] for item in items]


def _volume_rows(classifier: Any, item: ArchiveItem, columns: Sequence[str], plane: str, time_point: int | None) -> list[dict[str, Any]]:
    """A volume's row; a DICOM folder holding several series gets one row per series (their headers read once)."""
    from .volumes import scan_dicom

    source, series = item.path, [None]
    try:
        if os.path.isdir(item.path):
            source = scan_dicom(item.path)
            if len(source.series) > 1:  # a study exported flat: every series is a volume of its own
                series = sorted(source.series)
    except (TumorClassifierError, OSError) as error:
        return [_error_row(item, columns, error)]
    return [_volume_row(classifier, item, columns, source, uid, plane, time_point) for uid in series]


def _volume_row(classifier: Any, item: ArchiveItem, columns: Sequence[str], source: Any, series_uid: str | None, plane: str, time_point: int | None) -> dict[str, Any]:
    """A volume's row; ``time_point`` chooses in 4-D series only (3-D volumes are read as they are)."""
    try:
        try:
            result = classifier.predict_volume(source, series_uid=series_uid, plane=plane, explain=False)
        except TimePointRequiredError:
            if time_point is None:
                raise
            result = classifier.predict_volume(source, series_uid=series_uid, plane=plane, time_point=time_point, explain=False)
    except (TumorClassifierError, OSError) as error:
        return _error_row(item, columns, error, series_uid=series_uid)
    return _row(
        item, columns, series_uid=series_uid or result.volume.series_uid,
        label=result.label or NOT_BRAIN_MRI,  # a flagged volume has no label
        verdict=result.verdict,
        tumor_probability=_number(result.tumour_probability),
        **{f"p_{c}": _number(v) for c, v in result.probabilities.items()},
        looks_like_mri=result.looks_like_mri, slices=int(result.classified.sum()), key_slice=int(result.key_slice),
    )  # fmt: skip


def _error_row(item: ArchiveItem, columns: Sequence[str], error: BaseException, **values: Any) -> dict[str, Any]:
    # One line: a CSV or JSON lines row must not span lines (resume cuts at the last newline).
    return _row(item, columns, error=" ".join(f"{type(error).__name__}: {error}".split()), **values)


# ----------------------------------------------------------------------------- running


def predict_shard(
    classifier: Any,
    items: Sequence[ArchiveItem],
    output: str | os.PathLike,
    *,
    rank: int = 0,
    world_size: int = 1,
    plane: str = "axial",
    time_point: int | None = None,
    progress: bool = True,
    flush_rows: int = FLUSH_ROWS,
    flush_seconds: float = FLUSH_SECONDS,
) -> ArchiveSummary:
    """Predicts process ``rank``'s share of ``items`` that has no row yet, into the parts folder.

    Args:
        classifier: A fitted :class:`~tumor_classifier.TumorClassifier`.
        items: The whole walk (:func:`find_inputs`), the same in every process.
        output: The results file (its suffix chooses the format).
        rank, world_size: This process and how many share the work.
        plane, time_point: For volumes, see :func:`~tumor_classifier.volumes.load_volume`; ``time_point`` chooses in 4-D series and leaves 3-D volumes as they are.
        progress: Show a tqdm bar (on stderr).
        flush_rows, flush_seconds: Write out after this many rows or seconds.

    Returns:
        The :class:`ArchiveSummary` (no ``rows_written``: :func:`merge_parts` writes the output).
    """
    from tqdm.auto import tqdm

    output = Path(output)
    columns = row_columns([str(c) for c in classifier.classes_])
    mine = shard(items, rank, world_size)
    done = done_paths(output)
    todo = [item for item in mine if item.path not in done]
    writer = PartWriter(output, rank, columns, flush_rows, flush_seconds)
    start, failed, slices = time.perf_counter(), 0, 0
    batch = max(1, int(getattr(classifier, "batch_size", 32)))
    try:
        with tqdm(total=len(todo), unit="file", desc=f"rank {rank}" if world_size > 1 else "predict", position=rank, disable=not progress, dynamic_ncols=True) as bar:
            index = 0
            while index < len(todo):
                if todo[index].kind == VOLUME:
                    chunk = todo[index : index + 1]
                    rows = _volume_rows(classifier, chunk[0], columns, plane, time_point)
                else:  # consecutive slice images, classified as one batch
                    end = index
                    while end < len(todo) and end - index < batch and todo[end].kind == SLICE:
                        end += 1
                    chunk = todo[index:end]
                    rows = _slice_rows(classifier, chunk, columns)
                writer.add(rows)
                failed += sum(row["error"] is not None for row in rows)
                slices += sum(row["slices"] or 0 for row in rows)
                index += len(chunk)
                bar.update(len(chunk))
    finally:
        # Also on Ctrl-C: the rows held are whole, and a rerun skips them instead of predicting them again.
        writer.flush()
    return ArchiveSummary(output, rank, world_size, len(items), len(mine) - len(todo), len(todo), failed, slices, time.perf_counter() - start)


def predict_archive(
    classifier: Any,
    inputs: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    *,
    recursive: bool = True,
    plane: str = "axial",
    time_point: int | None = None,
    progress: bool = True,
) -> ArchiveSummary:
    """Predicts every slice image and volume under ``inputs`` into ``output``, resuming what is done.

    In a process started by ``torchrun`` or ``accelerate launch`` this is one process's
    share; process 0 merges once all are done (see the module docstring).

    Args:
        classifier: A fitted :class:`~tumor_classifier.TumorClassifier`.
        inputs: Folders to walk and single files.
        output: ``.parquet``, ``.csv`` or ``.jsonl`` file.
        recursive: Walk subfolders.
        plane, time_point: For volumes.
        progress: Show a progress bar.

    Returns:
        This process's :class:`ArchiveSummary`.

    Raises:
        InvalidArgumentError: An unknown output suffix or an input that does not exist.

    Example:
        >>> predict_archive(clf, ["scans"], "results.csv").rows_written   # doctest: +SKIP
        1200
    """
    from accelerate import PartialState

    output = check_output(output)
    items = find_inputs(inputs, recursive=recursive, exclude=[output, parts_folder(output)])
    # Rank and world size come from the launcher's environment. The process group carries
    # only the barrier, so it is gloo (cpu=True) on every machine: NCCL would refuse two
    # processes sharing one GPU. The classifier keeps its own device.
    state = PartialState(cpu=True, timeout=BARRIER_TIMEOUT)
    summary = predict_shard(
        classifier, items, output, rank=state.process_index, world_size=state.num_processes,
        plane=plane, time_point=time_point, progress=progress,
    )  # fmt: skip
    state.wait_for_everyone()
    if state.is_main_process:
        rows = merge_parts(output, [item.path for item in items], row_columns([str(c) for c in classifier.classes_]))
        summary.rows_written = len(rows)
        summary.errors_written = sum(bool(row["error"]) for row in rows)  # None in Parquet / JSON lines, "" in a CSV
    return summary
