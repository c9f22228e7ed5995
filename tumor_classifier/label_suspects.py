"""Finding suspect labels: near duplicates (also mirrored) whose labels disagree.

:func:`find_cross_class_duplicates` groups images connected through near-duplicate
pairs (pHash, plain or left-right mirrored, within a Hamming distance) and returns the
groups whose members carry different labels: one of them is wrong, or the task is
ambiguous. ``benchmarks/label_audit.py`` turns them, with a model's confident
disagreements, into a candidate list for review by eye; the reviewed list is applied by
:mod:`tumor_classifier.label_audit`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from PIL import Image

from .decoding import load_image
from .duplicates import NEAR_DUPLICATE_DISTANCE, ImageFingerprint, _hamming_matrix, fingerprint
from .exceptions import InvalidDatasetError


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
