"""Suspect labels: find them (cross-class near duplicates) and apply a reviewed audit list.

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
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from PIL import Image

from .data import BINARY_CLASS_NAMES, CLASS_NAMES, canonical_class_name, to_binary_label
from .decoding import load_image
from .duplicates import NEAR_DUPLICATE_DISTANCE, ImageFingerprint, _hamming_matrix, fingerprint
from .exceptions import InvalidDatasetError

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
        InvalidDatasetError: The file is missing; a column is missing; or a row (the
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
    entries: list[AuditEntry] = []
    seen: dict[str, int] = {}
    with path.open(newline="", encoding="utf-8") as handle:
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


def apply_label_audit_to_dataset(split: "Dataset", entries: Sequence[AuditEntry], root: str | os.PathLike) -> "Dataset":
    """:func:`apply_label_audit` on a split of :func:`~tumor_classifier.data.load_mri_dataset`
    (``path`` and ``label`` columns): the excluded images are dropped and the relabelled
    ones get their new class (its tumour / no-tumour view for a binary split).

    Raises:
        InvalidDatasetError: As :func:`apply_label_audit`; or the split has no ``path``
            column (a Hub data set: its files cannot be matched).
    """
    if "path" not in split.column_names:
        raise InvalidDatasetError("A label audit matches files by path; this data set has no 'path' column (a Hub data set?).")
    names = split.features["label"].names
    binary = list(names) == list(BINARY_CLASS_NAMES)
    # A binary split's labels say only tumor / notumor; the audit speaks of the four
    # classes, which the class folder of each file still tells.
    items = [(path, canonical_class_name(Path(path).parent.name) if binary else names[label])
             for path, label in zip(split["path"], split["label"])]
    kept, summary = apply_label_audit(items, entries, root)
    labels = {path: to_binary_label(name) if binary else name for path, name in kept}
    split = split.select([i for i, (path, _) in enumerate(items) if path in labels])
    if summary["relabelled"]:
        split = split.map(lambda batch: {"label": [names.index(labels[p]) for p in batch["path"]]}, batched=True)
    return split


@dataclass(frozen=True)
class DuplicatePair:
    """Two near-duplicate images of a group, as indices into the caller's items.

    Attributes:
        first, second: Indices, ``first < second``.
        distance: pHash Hamming distance (0-64) between them, the smaller of the plain
            and the mirrored comparison.
        mirrored: Whether that distance is between one image and the other's left-right
            mirror image.
    """

    first: int
    second: int
    distance: int
    mirrored: bool


@dataclass(frozen=True)
class CrossClassGroup:
    """Near duplicates (connected through pairs within the threshold) with different labels.

    Attributes:
        indices: Indices of the members into the caller's items, ascending.
        paths: Their sources as text (the paths, for path items).
        labels: Their class names.
        pairs: The near-duplicate pairs inside the group, each member in at least one.
    """

    indices: tuple[int, ...]
    paths: tuple[str, ...]
    labels: tuple[str, ...]
    pairs: tuple[DuplicatePair, ...]

    @property
    def class_counts(self) -> dict[str, int]:
        """Class name -> number of members, most common first."""
        counts: dict[str, int] = {}
        for label in self.labels:
            counts[label] = counts.get(label, 0) + 1
        return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def mirror_fingerprints(sources: Sequence[Any]) -> tuple[list[ImageFingerprint], list[ImageFingerprint]]:
    """Fingerprints of each image and of its left-right mirror image, decoding each once.

    The SHA-256 is of the grayscale pixels (so an "L" and an "RGB" copy of a slice match),
    the pHash as :func:`~tumor_classifier.duplicates.fingerprint` computes it.

    Args:
        sources: Image sources (paths, bytes, PIL images, arrays).

    Returns:
        ``(plain, mirrored)``, each one :class:`~tumor_classifier.duplicates.ImageFingerprint`
        per source.

    Raises:
        InvalidImageError: A source cannot be read as an image.
    """
    plain, mirrored = [], []
    for source in sources:
        gray = load_image(source)
        plain.append(fingerprint(gray))
        mirrored.append(fingerprint(gray.transpose(Image.Transpose.FLIP_LEFT_RIGHT)))
    return plain, mirrored


def find_near_duplicate_pairs(
    fingerprints: tuple[Sequence[ImageFingerprint], Sequence[ImageFingerprint]],
    *,
    threshold: int = NEAR_DUPLICATE_DISTANCE,
    mirror: bool = True,
) -> list[DuplicatePair]:
    """Every pair of images within ``threshold`` pHash bits, labels aside.

    Args:
        fingerprints: ``(plain, mirrored)`` fingerprints from :func:`mirror_fingerprints`;
            ``mirrored`` is ignored (and may be empty) with ``mirror=False``.
        threshold: pHash Hamming distance at or below which two images are near duplicates.
        mirror: Also compare each image with the other's left-right mirror image.

    Returns:
        The pairs, ``first < second``, sorted; indices into the fingerprint lists.
    """
    plain, flipped = fingerprints
    hashes = np.array([p.phash for p in plain], dtype=np.uint64)
    mirrored = np.array([p.phash for p in flipped], dtype=np.uint64) if mirror else None
    pairs: list[DuplicatePair] = []
    for start in range(0, len(hashes), 256):  # bounded memory: 256 x n x 64 bytes per block
        block = hashes[start : start + 256]
        distances = _hamming_matrix(block, hashes)
        via_mirror = np.zeros(distances.shape, dtype=bool)
        if mirrored is not None:
            # d(a, mirror(b)) and d(mirror(a), b) differ a little (pHash is not exactly
            # mirror-equivariant); either way the pair is a mirror copy, so take the smaller.
            flipped_distances = np.minimum(
                _hamming_matrix(block, mirrored), _hamming_matrix(mirrored[start : start + 256], hashes)
            )
            via_mirror = flipped_distances < distances
            distances = np.minimum(distances, flipped_distances)
        rows, columns = np.nonzero(distances <= threshold)
        for row, column in zip(rows.tolist(), columns.tolist()):
            if start + row < column:
                pairs.append(DuplicatePair(start + row, column, int(distances[row, column]), bool(via_mirror[row, column])))
    return sorted(pairs, key=lambda pair: (pair.first, pair.second))


def find_cross_class_duplicates(
    items: Sequence[tuple[Any, str]],
    *,
    threshold: int = NEAR_DUPLICATE_DISTANCE,
    mirror: bool = True,
    fingerprints: tuple[list[ImageFingerprint], list[ImageFingerprint]] | None = None,
) -> list[CrossClassGroup]:
    """Groups of near-duplicate images whose members carry different class labels.

    Two images are near duplicates when their 64-bit pHashes differ in at most
    ``threshold`` bits, comparing each image also with the other's left-right mirror
    image (``mirror=True``): this data set holds mirrored copies of slices. Groups are the
    connected components of that relation, so a chain of near duplicates forms one group;
    only groups with at least two different labels are returned.

    Args:
        items: ``(image source, class name)`` pairs; sources as for
            :func:`~tumor_classifier.duplicates.fingerprint` (paths, bytes, PIL images, arrays).
            Mix splits (Training and Testing items) to find groups across them.
        threshold: pHash Hamming distance at or below which two images are near duplicates.
        mirror: Also match left-right mirror images.
        fingerprints: Precomputed ``(plain, mirrored)`` fingerprints from
            :func:`mirror_fingerprints`, one per item, to skip decoding.

    Returns:
        The groups, largest first, then by first index; each with its members' indices,
        paths and labels and the near-duplicate pairs that join them.

    Raises:
        InvalidImageError: An image cannot be read.
        InvalidDatasetError: ``fingerprints`` does not have one entry per item.

    Example:
        >>> items = list_image_files("../shared/data/brain-tumor-mri/Training")  # doctest: +SKIP
        >>> groups = find_cross_class_duplicates(items)  # doctest: +SKIP
        >>> groups[0].class_counts  # doctest: +SKIP
        {'glioma': 1, 'meningioma': 1}
    """
    items = list(items)
    if fingerprints is None:
        fingerprints = mirror_fingerprints([source for source, _ in items])
    plain, flipped = fingerprints
    if len(plain) != len(items) or (mirror and len(flipped) != len(items)):
        raise InvalidDatasetError(
            f"find_cross_class_duplicates got {len(items)} items but {len(plain)} / {len(flipped)} fingerprints; "
            "pass one (plain, mirrored) fingerprint per item, as mirror_fingerprints returns them."
        )
    if not items:
        return []
    pairs = find_near_duplicate_pairs((plain, flipped), threshold=threshold, mirror=mirror)

    parent = list(range(len(items)))

    def find(index: int) -> int:
        while parent[index] != index:
            parent[index] = parent[parent[index]]
            index = parent[index]
        return index

    for pair in pairs:
        parent[find(pair.first)] = find(pair.second)
    members: dict[int, list[int]] = {}
    for index in range(len(items)):
        members.setdefault(find(index), []).append(index)
    group_pairs: dict[int, list[DuplicatePair]] = {}
    for pair in pairs:
        group_pairs.setdefault(find(pair.first), []).append(pair)
    groups = []
    for root, indices in members.items():
        labels = tuple(str(items[i][1]) for i in indices)
        if len(set(labels)) < 2:
            continue
        groups.append(
            CrossClassGroup(
                indices=tuple(indices),
                paths=tuple(str(items[i][0]) for i in indices),
                labels=labels,
                pairs=tuple(group_pairs[root]),
            )
        )
    return sorted(groups, key=lambda group: (-len(group.indices), group.indices[0]))
