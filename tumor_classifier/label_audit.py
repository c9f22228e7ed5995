"""Suspect labels: apply a reviewed audit list (finding them: :mod:`tumor_classifier.label_suspects`).

An audit list is a CSV with the header ``file,action,new_label,reason``, one row per
image:

* ``file``: the path relative to the data root, with ``/`` (``Training/notumor/Tr-no_1440.jpg``);
* ``action``: ``exclude`` (drop the image) or ``relabel`` (give it ``new_label``);
* ``new_label``: one of :data:`~tumor_classifier.data.CLASS_NAMES` for ``relabel``,
  empty for ``exclude``;
* ``reason``: what a reviewer saw, never empty.

Further columns (a candidate list's scores, say) are ignored. The project keeps its
reviewed list in ``configs/label_audit.csv``, outside the package: callers pass its path.

An audit list is for training data only. :func:`apply_label_audit` refuses entries that
name a test split file (``Testing/...`` or ``test/...``) unless ``allow_test=True``:
dropping "wrong" test images would flatter every reported figure, so suspect test images
are reported beside the full split instead.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Sequence

from .data import BINARY_CLASS_NAMES, CLASS_NAMES, canonical_class_name, to_binary_label
from .exceptions import InvalidDatasetError
from .label_suspects import (  # noqa: F401 - importable from here as before
    DuplicatePair,
    CrossClassGroup,
    mirror_fingerprints,
    find_near_duplicate_pairs,
    find_cross_class_duplicates,
)

if TYPE_CHECKING:
    from datasets import Dataset

AUDIT_COLUMNS = ("file", "action", "new_label", "reason")
AUDIT_ACTIONS = ("exclude", "relabel")
#: First path components (lower case) that mark a file of a test split.
_TEST_SPLIT_FOLDERS = ("testing", "test")


@dataclass(frozen=True)
class AuditEntry:
    """One reviewed image of an audit list.

    Attributes:
        file: Path relative to the data root, ``/``-separated (``Training/notumor/Tr-no_1440.jpg``).
        action: ``"exclude"`` or ``"relabel"``.
        new_label: The class for ``"relabel"`` (one of ``CLASS_NAMES``); ``None`` for ``"exclude"``.
        reason: What the reviewer saw.
    """

    file: str
    action: str
    new_label: str | None
    reason: str

    @property
    def is_test_file(self) -> bool:
        """Whether ``file`` lies in a test split (``Testing/`` or ``test/``)."""
        return PurePosixPath(self.file).parts[0].lower() in _TEST_SPLIT_FOLDERS


def _normalise_file(file: str) -> str:
    """``/``-separated relative path, or ``""`` when it is absolute or leaves the root."""
    file = file.strip().replace("\\", "/")
    parts = PurePosixPath(file).parts
    if not parts or file.startswith("/") or ".." in parts or ":" in parts[0]:
        return ""
    return "/".join(part for part in parts if part != ".")


def read_label_audit(path: str | os.PathLike) -> list[AuditEntry]:
    """Reads an audit list (CSV ``file,action,new_label,reason``).

    Args:
        path: The CSV file, e.g. ``configs/label_audit.csv``.

    Returns:
        The entries in file order.

    Raises:
        InvalidDatasetError: The file is missing or not UTF-8 text (a byte order mark is
            fine); a column is missing; or a row (the
            message gives the file and line) has an empty, absolute or ``..`` file, a file
            already listed, an action other than ``exclude`` / ``relabel``, a ``relabel``
            without a known class (or to the class of the file's own folder), a
            ``new_label`` on an ``exclude``, or an empty reason.

    Example:
        >>> entries = read_label_audit("configs/label_audit.csv")  # doctest: +SKIP
        >>> entries[0].file, entries[0].action  # doctest: +SKIP
        ('Training/notumor/Tr-no_1440.jpg', 'exclude')
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidDatasetError(f"No label audit file at {path}; expected a CSV with the columns {','.join(AUDIT_COLUMNS)}.")
    try:  # utf-8-sig: Excel's "CSV UTF-8" begins with a byte order mark
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise InvalidDatasetError(
            f"{path} is not UTF-8 text ({error}); save it as UTF-8 (in Excel: CSV UTF-8)."
        ) from None
    entries: list[AuditEntry] = []
    seen: dict[str, int] = {}
    with io.StringIO(text, newline="") as handle:
        reader = csv.DictReader(handle)
        found = [name.strip() for name in reader.fieldnames or []]
        missing = [name for name in AUDIT_COLUMNS if name not in found]
        if missing:
            raise InvalidDatasetError(
                f"{path}, line 1: the header lacks the column(s) {', '.join(missing)}; found {found}, "
                f"expected {','.join(AUDIT_COLUMNS)}."
            )
        reader.fieldnames = found
        for row in reader:
            line = reader.line_num  # the line the row ends on; rows may span lines in quotes
            where = f"{path}, line {line}"
            values = {name: (row.get(name) or "").strip() for name in AUDIT_COLUMNS}
            if None in row:  # more cells than header columns
                raise InvalidDatasetError(
                    f"{where}: {len(found) + len(row[None])} cells for {len(found)} columns; "
                    "quote a reason that holds a comma."
                )
            file = _normalise_file(values["file"])
            if not file:
                raise InvalidDatasetError(
                    f"{where}: file {values['file']!r} is not a path relative to the data root "
                    "(such as Training/notumor/Tr-no_1440.jpg)."
                )
            if file in seen:
                raise InvalidDatasetError(f"{where}: {file} is already listed on line {seen[file]}; one row per file.")
            action = values["action"].lower()
            if action not in AUDIT_ACTIONS:
                raise InvalidDatasetError(
                    f"{where}: action {values['action']!r} for {file}; expected one of {', '.join(AUDIT_ACTIONS)}."
                )
            new_label: str | None = None
            if action == "relabel":
                if not values["new_label"]:
                    raise InvalidDatasetError(f"{where}: relabel of {file} needs a new_label ({', '.join(CLASS_NAMES)}).")
                try:
                    new_label = canonical_class_name(values["new_label"])
                except InvalidDatasetError as error:
                    raise InvalidDatasetError(f"{where}: {error}") from None
                folder = PurePosixPath(file).parent.name
                if folder and _class_or_none(folder) == new_label:
                    raise InvalidDatasetError(
                        f"{where}: relabel of {file} to {new_label}, the class its folder already gives; "
                        "remove the row or name another class."
                    )
            elif values["new_label"]:
                raise InvalidDatasetError(
                    f"{where}: exclude of {file} has new_label {values['new_label']!r}; leave new_label empty "
                    "for exclude, or use the action relabel."
                )
            if not values["reason"]:
                raise InvalidDatasetError(f"{where}: {file} has no reason; say what was seen (e.g. 'axial T2 with a large mass, labelled notumor').")
            seen[file] = line
            entries.append(AuditEntry(file, action, new_label, values["reason"]))
    return entries


def _class_or_none(name: str) -> str | None:
    try:
        return canonical_class_name(name)
    except InvalidDatasetError:
        return None


def _relative_to_root(path: str | os.PathLike, root: Path) -> str | None:
    """``path`` relative to ``root`` with ``/``; ``None`` when it lies outside."""
    absolute = Path(os.path.abspath(path))
    try:
        return absolute.relative_to(root).as_posix()
    except ValueError:
        return None


def apply_label_audit(
    items: Sequence[tuple[str, str]],
    entries: Sequence[AuditEntry],
    root: str | os.PathLike,
    *,
    allow_test: bool = False,
) -> tuple[list[tuple[str, str]], dict[str, Any]]:
    """Drops the excluded images and relabels the relabelled ones.

    Args:
        items: ``(path, class name)`` pairs, as :func:`~tumor_classifier.data.list_image_files`
            gives them; paths absolute or relative to the working directory.
        entries: The audit list (:func:`read_label_audit`).
        root: The data root the entries' files are relative to (the folder holding
            ``Training/``).
        allow_test: Accept entries for test split files (``Testing/...``). Off by default:
            an audit list is for training data.

    Returns:
        ``(kept, summary)``: the items in their order without the excluded ones and with
        the new labels, and a summary dict with ``kept``, ``excluded``, ``relabelled``,
        ``unmatched`` (counts) and ``unmatched_files`` (entries that matched no item,
        sorted: a renamed file or a list written for another copy of the data).

    Raises:
        InvalidDatasetError: An entry names a test split file and ``allow_test`` is
            false (the message lists them).

    Example:
        >>> items = list_image_files("../shared/data/brain-tumor-mri/Training")  # doctest: +SKIP
        >>> entries = read_label_audit("configs/label_audit.csv")  # doctest: +SKIP
        >>> kept, summary = apply_label_audit(items, entries, "../shared/data/brain-tumor-mri")  # doctest: +SKIP
        >>> summary["excluded"]  # doctest: +SKIP
        7
    """
    test_entries = [entry.file for entry in entries if entry.is_test_file]
    if test_entries and not allow_test:
        shown = ", ".join(test_entries[:5]) + (f" and {len(test_entries) - 5} more" if len(test_entries) > 5 else "")
        raise InvalidDatasetError(
            f"The label audit names {len(test_entries)} test split file(s) ({shown}); an audit list is applied "
            "to training data only, so that test figures stay comparable. Remove those rows (keep suspect test "
            "images in a separate list and report with and without them), or pass allow_test=True."
        )
    root_path = Path(os.path.abspath(root))
    by_file = {entry.file: entry for entry in entries}
    matched: set[str] = set()
    kept: list[tuple[str, str]] = []
    excluded = relabelled = 0
    for path, label in items:
        relative = _relative_to_root(path, root_path)
        entry = by_file.get(relative) if relative is not None else None
        if entry is None:
            kept.append((path, label))
            continue
        matched.add(entry.file)
        if entry.action == "exclude":
            excluded += 1
        else:
            relabelled += 1
            kept.append((path, entry.new_label))
    unmatched = sorted(set(by_file) - matched)
    summary = {
        "kept": len(kept),
        "excluded": excluded,
        "relabelled": relabelled,
        "unmatched": len(unmatched),
        "unmatched_files": unmatched,
    }
    return kept, summary


# --------------------------------------------------------------------------- duplicates


def apply_label_audit_to_dataset(
    split: "Dataset", entries: Sequence[AuditEntry], root: str | os.PathLike, *, return_summary: bool = False
) -> "Dataset" | tuple["Dataset", dict[str, Any]]:
    """:func:`apply_label_audit` on a split of :func:`~tumor_classifier.data.load_mri_dataset`
    (``path`` and ``label`` columns): the excluded images are dropped and the relabelled
    ones get their new class (its tumour / no-tumour view for a binary split).

    Args:
        split: The split.
        entries: The audit list (:func:`read_label_audit`).
        root: The data root the entries' files are relative to.
        return_summary: Also return :func:`apply_label_audit`'s summary (counts and the
            ``unmatched_files`` of this split).

    Returns:
        The audited split, or ``(split, summary)`` with ``return_summary``.

    Raises:
        InvalidDatasetError: As :func:`apply_label_audit`; or the split has no ``path``
            column (a Hub data set: its files cannot be matched).
    """
    if "path" not in split.column_names:
        raise InvalidDatasetError("A label audit matches files by path; this data set has no 'path' column (a Hub data set?).")
    names = split.features["label"].names
    binary = list(names) == list(BINARY_CLASS_NAMES)
    # A binary split's items keep their tumor / notumor label (a file's folder need not name
    # a class: subfolders, or tumour / healthy folders); an entry's four-class new_label is
    # turned into its binary view below.
    items = [(path, names[label]) for path, label in zip(split["path"], split["label"])]
    kept, summary = apply_label_audit(items, entries, root)
    labels = {path: to_binary_label(name) if binary else name for path, name in kept}
    split = split.select([i for i, (path, _) in enumerate(items) if path in labels])
    if summary["relabelled"]:
        split = split.map(lambda batch: {"label": [names.index(labels[p]) for p in batch["path"]]}, batched=True)
    return (split, summary) if return_summary else split
