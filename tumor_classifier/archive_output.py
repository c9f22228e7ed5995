"""Where an archive run's rows go: part files while it runs, one merged output at the end.

Used by :mod:`tumor_classifier.archive` (see its docstring for the whole run). The
output's suffix chooses the format: ``.csv`` and ``.jsonl`` parts are appended to in
place, one write and an fsync per chunk, and a torn last line left by a kill is ignored
and cut off; ``.parquet`` cannot be appended to, so each chunk is its own part file,
written under a temporary name and renamed. Parts live in ``<output>.parts/`` as
``rank<r>.csv`` / ``rank<r>.jsonl`` / ``rank<r>-<n>.parquet``; :func:`merge_parts`
writes the output (a temporary file, renamed) and removes them.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

from .exceptions import InvalidArgumentError


def _complete_text(path: Path) -> str:
    """A line-based part up to its last newline (a killed writer may leave a torn last line)."""
    text = path.read_text(encoding="utf-8")
    return text[: text.rfind("\n") + 1]


def _cut_torn_line(path: Path) -> None:
    """Cuts a torn last line (a kill in the middle of a write) off a line-based part; reads one byte when there is none."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as handle:
        handle.seek(-1, os.SEEK_END)
        if handle.read(1) != b"\n":
            handle.seek(0)
            handle.truncate(handle.read().rfind(b"\n") + 1)


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
        _cut_torn_line(path)
        header = not path.exists() or path.stat().st_size == 0
        with open(path, "a", encoding="utf-8", newline="") as handle:
            handle.write(self._text(rows, columns, header=header))
            handle.flush()
            os.fsync(handle.fileno())

    def columns(self, path: Path) -> list[str]:
        """The columns of a file written by this class, from its first line."""
        with open(path, encoding="utf-8", newline="") as handle:
            first = handle.readline()
        if self.suffix == ".jsonl":
            row = json.loads(first)
            return list(row) if isinstance(row, dict) else []
        return next(csv.reader([first]), [])

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

    def __init__(self) -> None:
        self._next: int | None = None

    def part(self, parts: Path, rank: int) -> Path:
        """A new part per call: after those an earlier run left (listed once, not per chunk)."""
        if self._next is None:
            taken = [int(p.stem.split("-")[1]) for p in parts.glob(f"rank{rank}-*.parquet")]
            self._next = max(taken, default=-1) + 1
        self._next += 1
        return parts / f"rank{rank}-{self._next - 1:06d}.parquet"

    def parts(self, parts: Path) -> list[Path]:
        return sorted(parts.glob("rank*-*.parquet"))

    def _schema(self, columns: Sequence[str]):
        import pyarrow as pa

        kinds = {c: "float64" if c.startswith("p_") else self._types.get(c, "string") for c in columns}
        return pa.schema([(c, getattr(pa, kind)()) for c, kind in kinds.items()])

    def append(self, path: Path, rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
        self.write(path, rows, columns)  # a new part per chunk

    def columns(self, path: Path) -> list[str]:
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)

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
    """The output path, once it is known to be one this command can write and resume.

    Raises:
        InvalidArgumentError: The suffix is not ``.parquet``, ``.csv`` or ``.jsonl``; the
            path is a folder or lies below a file; or a file is there already that is not
            a results file of this command (no ``path`` column, or not in the format its
            suffix names). Such a file is left as it is.
    """
    output = Path(output)
    form = _format(output)
    if output.exists() and not output.is_file():
        raise InvalidArgumentError(f"The output {output} is a folder, not a results file; give a file path such as {output / 'results'}{form.suffix}.")
    above = output.parent
    while not above.exists() and above != above.parent:
        above = above.parent
    if not above.is_dir():
        raise InvalidArgumentError(f"The output {output} cannot be written: {above} is a file, not a folder.")
    if output.is_file() and output.stat().st_size:
        try:
            columns = form.columns(output)
        except Exception as error:  # noqa: BLE001 - csv, json and pyarrow each raise their own
            columns, reason = [], f"{type(error).__name__}: {error}"
        else:
            reason = f"its columns are {', '.join(map(str, columns[:6]))}"
        if "path" not in columns:
            raise InvalidArgumentError(
                f"The output {output} exists and is not a results file of this command ({' '.join(reason.split())[:200]}); "
                "a run resumes only from its own results. Give another --output, or move that file away."
            )
    return output


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


def _row_key(row: dict[str, Any]) -> tuple[str, str | None]:
    """What names a row: its path and, for a folder holding several DICOM series, the series
    (a CSV reads a missing one as ``""``; an output written before the column has none)."""
    return row["path"], row.get("series_uid") or None


def _written(output: Path) -> list[dict[str, Any]]:
    """Every row the output and the parts hold (a later one wins for a row given twice)."""
    form = _format(output)
    sources = ([output] if output.exists() else []) + (form.parts(parts_folder(output)) if parts_folder(output).is_dir() else [])
    return [row for source in sources for row in form.read(source)]


def done_paths(output: str | os.PathLike) -> set[str]:
    """The paths that already have a row in ``output`` or its parts."""
    return {row["path"] for row in _written(Path(output))}


def merge_parts(output: str | os.PathLike, order: Sequence[str], columns: Sequence[str]) -> list[dict[str, Any]]:
    """Writes the output's and every part's rows to ``output`` in the order of ``order``; removes the parts.

    Args:
        output: The results file.
        order: Paths in the order their rows go (the walk; the series of one folder by
            ``series_uid``); rows for other paths (files gone since an earlier run) are kept,
            after these, sorted by path.
        columns: The columns, in order.

    Returns:
        The rows written, in order (as read back: a CSV's empty cells are ``""``).
    """
    output = Path(output)
    rows = {_row_key(row): row for row in _written(output)}
    order = {path: index for index, path in enumerate(order)}
    ranked = sorted(rows.values(), key=lambda row: (order.get(row["path"], len(order)), *map(str, _row_key(row))))
    temporary = output.with_name(output.name + ".tmp")
    _format(output).write(temporary, ranked, columns)
    os.replace(temporary, output)
    shutil.rmtree(parts_folder(output), ignore_errors=True)
    return ranked


class PartWriter:
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
