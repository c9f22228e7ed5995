"""Whole archives: every slice image and volume under some folders, one row each, resumable, sharded.

``tumor-classifier predict DIR --recursive --output results.parquet`` (or ``.csv`` /
``.jsonl``) calls :func:`predict_archive`. Its parts:

* **Walking** (:func:`find_inputs`): folders are walked in sorted order. A file named like
  an image the decoder reads (:data:`IMAGE_SUFFIXES`) is a ``slice``; a ``.nii`` /
  ``.nii.gz`` file, or a file whose first bytes say NIfTI, is a ``volume``; a folder that
  directly holds DICOM files is one ``volume`` (the series reader also reads its
  subfolders, so the walk does not descend into it). Other files are not listed.
* **Rows** (:func:`row_columns`): ``path``, ``kind``, ``label`` (the class, or
  ``not_brain_mri``), ``verdict`` (``tumor``, ``no_tumor``, ``uncertain`` or
  ``not_brain_mri``), ``tumor_probability``, ``p_<class>`` per class, ``looks_like_mri``,
  ``slices`` (slices classified: 1 for an image, those inside the head for a volume),
  ``key_slice`` (volumes) and ``error``: a file that cannot be read gets a row with only
  the error, and the run goes on. Slices get :meth:`TumorClassifier.verdicts`, volumes
  :meth:`TumorClassifier.predict_volume` without a heatmap.
* **Writing**: rows go to ``<output>.parts/`` a chunk at a time (every
  :data:`FLUSH_ROWS` rows or :data:`FLUSH_SECONDS` seconds): CSV and JSON lines are
  appended to ``rank<r>.csv`` / ``rank<r>.jsonl`` with one write and an fsync per chunk;
  Parquet, which cannot be appended to, gets one file per chunk,
  ``rank<r>-<n>.parquet``, written under a temporary name and renamed into place. At
  the end the previous output and every part are merged into ``output`` in walk order
  (written to a temporary file, then renamed) and the parts folder is removed. A killed
  run thus leaves the last complete output plus whole parts (at most a torn last line
  in a CSV / JSON lines part, which is ignored and cut off).
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
    >>> summary.predicted, summary.failed, summary.rows_written              # doctest: +SKIP
    (1200, 3, 1200)
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterable, Sequence

from .data import NO_TUMOR
from .exceptions import InvalidArgumentError, TumorClassifierError
from .verdict import NOT_BRAIN_MRI

SLICE, VOLUME = "slice", "volume"
#: File names the walk takes for slice images (the formats :mod:`tumor_classifier.decoding` reads).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".gif", ".webp")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
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


def _is_nifti(path: Path) -> bool:
    from .volumes import sniff

    return path.name.lower().endswith(NIFTI_SUFFIXES) or sniff(path) in ("nifti", "nifti-gz")


def _is_dicom(path: Path) -> bool:
    from .volumes import sniff

    return path.suffix.lower() in (".dcm", ".dicom", ".ima") or sniff(path) == "dicom"


def _items_in(folder: Path, names: Sequence[str]) -> tuple[list[ArchiveItem], bool]:
    """The items among a folder's files, and whether the folder is a DICOM series."""
    items, series = [], False
    for name in sorted(names):
        path = folder / name
        try:
            if name.lower().endswith(IMAGE_SUFFIXES):
                items.append(ArchiveItem(os.path.normpath(path), SLICE))
            elif not path.is_file():
                continue
            elif _is_nifti(path):
                items.append(ArchiveItem(os.path.normpath(path), VOLUME))
            elif not series and _is_dicom(path):
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
            kind = SLICE if root.name.lower().endswith(IMAGE_SUFFIXES) or not (_is_nifti(root) or _is_dicom(root)) else VOLUME
            found.setdefault(os.path.normpath(root), ArchiveItem(os.path.normpath(root), kind))
            continue
        if not root.is_dir():
            raise InvalidArgumentError(f"{root} does not exist; give folders to walk or image / volume files.")
        for folder, subfolders, names in os.walk(root):
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
    return ["path", "kind", "label", "verdict", "tumor_probability", *(f"p_{c}" for c in classes), "looks_like_mri", "slices", "key_slice", "error"]


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


def _volume_row(classifier: Any, item: ArchiveItem, columns: Sequence[str], plane: str, time_point: int | None) -> dict[str, Any]:
    try:
        result = classifier.predict_volume(item.path, plane=plane, time_point=time_point, explain=False)
    except (TumorClassifierError, OSError) as error:
        return _error_row(item, columns, error)
    flagged = not result.looks_like_mri
    return _row(
        item, columns,
        label=NOT_BRAIN_MRI if flagged else result.label,
        verdict=NOT_BRAIN_MRI if flagged else "tumor" if result.tumour else "no_tumor",
        tumor_probability=_number(result.tumour_probability),
        **{f"p_{c}": _number(v) for c, v in result.probabilities.items()},
        looks_like_mri=result.looks_like_mri, slices=int(result.classified.sum()), key_slice=int(result.key_slice),
    )  # fmt: skip


def _error_row(item: ArchiveItem, columns: Sequence[str], error: BaseException) -> dict[str, Any]:
    # One line: a CSV or JSON lines row must not span lines (resume cuts at the last newline).
    return _row(item, columns, error=" ".join(f"{type(error).__name__}: {error}".split()))


# ----------------------------------------------------------------------------- formats


def _complete_text(path: Path) -> str:
    """A line-based part up to its last newline (a killed writer may leave a torn last line)."""
    text = path.read_text(encoding="utf-8")
    return text[: text.rfind("\n") + 1]


class _Lines:
    """CSV or JSON lines: appended in place; a torn last line is cut off before appending."""

    def __init__(self, suffix: str) -> None:
        self.suffix = suffix

    def part(self, parts: Path, rank: int) -> Path:
        return parts / f"rank{rank}{self.suffix}"

    def parts(self, parts: Path) -> list[Path]:
        return sorted(parts.glob(f"rank*{self.suffix}"))

    def _text(self, rows: Iterable[dict[str, Any]], columns: Sequence[str], header: bool) -> str:
        if self.suffix == ".jsonl":
            return "".join(json.dumps(row) + "\n" for row in rows)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, columns, lineterminator="\n")
        if header:
            writer.writeheader()
        writer.writerows(rows)
        return buffer.getvalue()

    def append(self, path: Path, rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
        complete = _complete_text(path) if path.exists() else ""
        if path.exists() and len(complete.encode("utf-8")) != path.stat().st_size:
            with open(path, "r+", encoding="utf-8") as handle:
                handle.truncate(len(complete.encode("utf-8")))
        with open(path, "a", encoding="utf-8", newline="") as handle:
            handle.write(self._text(rows, columns, header=not complete))
            handle.flush()
            os.fsync(handle.fileno())

    def read(self, path: Path) -> list[dict[str, Any]]:
        text = _complete_text(path)
        if self.suffix == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        return list(csv.DictReader(io.StringIO(text)))

    def write(self, path: Path, rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
        path.write_text(self._text(rows, columns, header=True), encoding="utf-8")


class _Parquet:
    """Parquet: one file per chunk (a Parquet file cannot be appended to), renamed into place when whole."""

    suffix = ".parquet"
    _types = {"tumor_probability": "float64", "looks_like_mri": "bool_", "slices": "int64", "key_slice": "int64"}

    def part(self, parts: Path, rank: int) -> Path:
        taken = [int(p.stem.split("-")[1]) for p in parts.glob(f"rank{rank}-*.parquet")]
        return parts / f"rank{rank}-{max(taken, default=-1) + 1:06d}.parquet"

    def parts(self, parts: Path) -> list[Path]:
        return sorted(parts.glob("rank*-*.parquet"))

    def _schema(self, columns: Sequence[str]):
        import pyarrow as pa

        kinds = {c: "float64" if c.startswith("p_") else self._types.get(c, "string") for c in columns}
        return pa.schema([(c, getattr(pa, kind)()) for c, kind in kinds.items()])

    def append(self, path: Path, rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
        self.write(path, rows, columns)  # a new part per chunk

    def read(self, path: Path) -> list[dict[str, Any]]:
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()

    def write(self, path: Path, rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        temporary = path.with_name(path.name + ".tmp")
        pq.write_table(pa.Table.from_pylist(rows, schema=self._schema(columns)), temporary)
        os.replace(temporary, path)


def check_output(output: str | os.PathLike) -> Path:
    """The output path, once its suffix is known to name a format.

    Raises:
        InvalidArgumentError: The suffix is not ``.parquet``, ``.csv`` or ``.jsonl``.
    """
    _format(Path(output))
    return Path(output)


def _format(output: Path) -> _Lines | _Parquet:
    suffix = output.suffix.lower()
    if suffix == ".parquet":
        return _Parquet()
    if suffix in (".csv", ".jsonl"):
        return _Lines(suffix)
    raise InvalidArgumentError(f"The output {output} must end in .parquet, .csv or .jsonl (the suffix chooses the format); got {suffix or 'no suffix'}.")


def parts_folder(output: str | os.PathLike) -> Path:
    """Where the processes write their parts until the merge: ``<output>.parts``."""
    output = Path(output)
    return output.with_name(output.name + ".parts")


def _written(output: Path) -> list[dict[str, Any]]:
    """Every row the output and the parts hold (a later one wins for a path given twice)."""
    form = _format(output)
    sources = ([output] if output.exists() else []) + (form.parts(parts_folder(output)) if parts_folder(output).is_dir() else [])
    return [row for source in sources for row in form.read(source)]


def done_paths(output: str | os.PathLike) -> set[str]:
    """The paths that already have a row in ``output`` or its parts."""
    return {row["path"] for row in _written(Path(output))}


def merge_parts(output: str | os.PathLike, items: Sequence[ArchiveItem], columns: Sequence[str]) -> int:
    """Writes the output's and every part's rows to ``output`` in walk order; removes the parts.

    Rows for paths the walk no longer finds are kept, after the others, sorted by path.

    Returns:
        The number of rows written.
    """
    output = Path(output)
    rows = {row["path"]: row for row in _written(output)}
    order = {item.path: index for index, item in enumerate(items)}
    ranked = sorted(rows.values(), key=lambda row: (order.get(row["path"], len(order)), row["path"]))
    temporary = output.with_name(output.name + ".tmp")
    _format(output).write(temporary, ranked, columns)
    os.replace(temporary, output)
    shutil.rmtree(parts_folder(output), ignore_errors=True)
    return len(ranked)


# ----------------------------------------------------------------------------- running


class _PartWriter:
    """This process's rows, buffered and written out a chunk at a time."""

    def __init__(self, output: Path, rank: int, columns: Sequence[str], flush_rows: int, flush_seconds: float) -> None:
        self.format, self.folder, self.rank, self.columns = _format(output), parts_folder(output), rank, columns
        self.flush_rows, self.flush_seconds = flush_rows, flush_seconds
        self.rows: list[dict[str, Any]] = []
        self.last = time.monotonic()

    def add(self, rows: list[dict[str, Any]]) -> None:
        self.rows.extend(rows)
        if len(self.rows) >= self.flush_rows or time.monotonic() - self.last >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.format.append(self.format.part(self.folder, self.rank), self.rows, self.columns)
            self.rows = []
        self.last = time.monotonic()


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
        plane, time_point: For volumes, see :func:`~tumor_classifier.volumes.load_volume`.
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
    writer = _PartWriter(output, rank, columns, flush_rows, flush_seconds)
    start, failed, slices = time.perf_counter(), 0, 0
    batch = max(1, int(getattr(classifier, "batch_size", 32)))
    with tqdm(total=len(todo), unit="file", desc=f"rank {rank}" if world_size > 1 else "predict", position=rank, disable=not progress, dynamic_ncols=True) as bar:
        index = 0
        while index < len(todo):
            if todo[index].kind == VOLUME:
                chunk = todo[index : index + 1]
                rows = [_volume_row(classifier, chunk[0], columns, plane, time_point)]
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
    import torch
    from accelerate import PartialState

    output = check_output(output)
    items = find_inputs(inputs, recursive=recursive, exclude=[output, parts_folder(output)])
    # Rank and world size come from the launcher's environment; the process group only
    # carries the barrier, so gloo on a CPU-only machine.
    state = PartialState(cpu=not torch.cuda.is_available(), timeout=BARRIER_TIMEOUT)
    summary = predict_shard(
        classifier, items, output, rank=state.process_index, world_size=state.num_processes,
        plane=plane, time_point=time_point, progress=progress,
    )  # fmt: skip
    state.wait_for_everyone()
    if state.is_main_process:
        summary.rows_written = merge_parts(output, items, row_columns([str(c) for c in classifier.classes_]))
    return summary
