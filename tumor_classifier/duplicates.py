"""Exact and near duplicates of MRI slices: fingerprints, duplicate reports, group splits.

:func:`fingerprint` gives an image's SHA-256 and 64-bit pHash (on the package's grey
image, so an "L" and an "RGB" copy of one slice hash alike); :func:`find_duplicates`
finds each query's duplicates among reference images (Testing in Training, say);
:func:`near_duplicate_groups` joins near duplicates transitively and :func:`group_split`
splits by those groups, so no slice sits on both sides of a train / validation split.
``imagehash`` is imported when a fingerprint is taken.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .decoding import load_image
from .exceptions import InvalidDatasetError

#: pHash Hamming distance at or below which two images count as near duplicates.
NEAR_DUPLICATE_DISTANCE = 4

__all__ = [
    "NEAR_DUPLICATE_DISTANCE",
    "DuplicateReport",
    "ImageFingerprint",
    "find_duplicates",
    "fingerprint",
    "group_split",
    "near_duplicate_groups",
]


@dataclass
class ImageFingerprint:
    """Exact and perceptual identity of one image."""

    sha256: str
    phash: int


def fingerprint(source: Any) -> ImageFingerprint:
    """SHA-256 of the file bytes (of the pixels, for in-memory images) and 64-bit pHash.

    The pHash is taken on the package's grayscale representation, so an "L" and an "RGB"
    copy of the same slice hash alike.
    """
    import imagehash

    if isinstance(source, dict):
        data = source.get("bytes") or Path(source["path"]).read_bytes()
    elif isinstance(source, (str, os.PathLike)):
        data = Path(source).read_bytes()
    elif isinstance(source, (bytes, bytearray)):
        data = bytes(source)
    else:
        data = None
    gray = load_image(data if data is not None else source)
    if data is None:
        data = gray.tobytes()
    digest = hashlib.sha256(data).hexdigest()
    return ImageFingerprint(digest, int(str(imagehash.phash(gray)), 16))


@dataclass
class DuplicateReport:
    """Duplicates of query images (for example Testing) among reference images (Training).

    Attributes:
        exact: ``(query index, reference index)`` pairs with byte-identical files.
        distances: int array (n_queries,): pHash Hamming distance to the nearest reference.
        nearest: int array (n_queries,): index of that nearest reference image.
        threshold: Distance at or below which a query counts as a near duplicate.
    """

    exact: list[tuple[int, int]]
    distances: np.ndarray
    nearest: np.ndarray
    threshold: int = NEAR_DUPLICATE_DISTANCE

    @property
    def exact_queries(self) -> list[int]:
        return sorted({query for query, _ in self.exact})

    @property
    def same_hash_queries(self) -> list[int]:
        return [int(i) for i in np.flatnonzero(self.distances == 0)]

    @property
    def near_duplicate_queries(self) -> list[int]:
        return [int(i) for i in np.flatnonzero(self.distances <= self.threshold)]

    @property
    def clean_queries(self) -> list[int]:
        """Indices of queries with no near duplicate among the references."""
        return [int(i) for i in np.flatnonzero(self.distances > self.threshold)]

    def summary(self) -> dict[str, int]:
        return {
            "queries": int(self.distances.size),
            "byte_identical": len(self.exact_queries),
            "same_phash": len(self.same_hash_queries),
            f"phash_within_{self.threshold}": len(self.near_duplicate_queries),
            "without_near_duplicate": len(self.clean_queries),
        }


def _hamming_matrix(queries: np.ndarray, references: np.ndarray) -> np.ndarray:
    xor = np.bitwise_xor(queries[:, None], references[None, :])
    return np.unpackbits(xor.view(np.uint8).reshape(xor.shape + (8,)), axis=-1).sum(-1)


def find_duplicates(
    references: Sequence[Any],
    queries: Sequence[Any],
    *,
    threshold: int = NEAR_DUPLICATE_DISTANCE,
    fingerprints: tuple[list[ImageFingerprint], list[ImageFingerprint]] | None = None,
) -> DuplicateReport:
    """Finds exact and near duplicates of each query image among the references.

    Args:
        references: Image sources (paths, bytes, PIL images, arrays), e.g. Training.
        queries: Image sources to check, e.g. Testing.
        threshold: pHash Hamming distance at or below which a pair is a near duplicate.
        fingerprints: Precomputed ``(reference, query)`` fingerprints, to skip hashing.

    Returns:
        The :class:`DuplicateReport`.

    Raises:
        InvalidDatasetError: There are no reference images.

    Example:
        >>> report = find_duplicates(train_paths, test_paths)  # doctest: +SKIP
        >>> report.summary()["byte_identical"]  # doctest: +SKIP
        216
    """
    if len(references) == 0:
        raise InvalidDatasetError("find_duplicates needs at least one reference image.")
    ref_prints, query_prints = fingerprints or (
        [fingerprint(s) for s in references],
        [fingerprint(s) for s in queries],
    )
    by_digest: dict[str, list[int]] = {}
    for index, item in enumerate(ref_prints):
        by_digest.setdefault(item.sha256, []).append(index)
    exact = [(q, r) for q, item in enumerate(query_prints) for r in by_digest.get(item.sha256, [])]
    ref_hashes = np.array([p.phash for p in ref_prints], dtype=np.uint64)
    query_hashes = np.array([p.phash for p in query_prints], dtype=np.uint64)
    distances = np.empty(len(query_hashes), dtype=np.int64)
    nearest = np.empty(len(query_hashes), dtype=np.int64)
    for start in range(0, len(query_hashes), 256):  # bounded memory: 256 x n_refs x 8 bytes
        block = _hamming_matrix(query_hashes[start : start + 256], ref_hashes)
        nearest[start : start + 256] = block.argmin(axis=1)
        distances[start : start + 256] = block.min(axis=1)
    return DuplicateReport(exact, distances, nearest, threshold)


def near_duplicate_groups(hashes: Sequence[int], threshold: int = NEAR_DUPLICATE_DISTANCE) -> np.ndarray:
    """Groups images that are near duplicates of each other, transitively.

    Two images whose pHash Hamming distance is at most ``threshold`` share a group, and so
    does everything chained to them (union-find), so a slice re-saved at three sizes is
    one group even when its first and last copy are further apart.

    Args:
        hashes: 64-bit pHashes (:attr:`ImageFingerprint.phash`), one per image.
        threshold: Largest distance that joins two images.

    Returns:
        int64 array (n,): a group id per image, ids numbered 0.. in order of first image.
    """
    codes = np.asarray(list(hashes), dtype=np.uint64)
    parent = np.arange(len(codes))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for start in range(0, len(codes), 256):  # bounded memory, as in find_duplicates
        block = _hamming_matrix(codes[start : start + 256], codes)
        for a, b in zip(*np.nonzero(block <= threshold)):
            ra, rb = root(start + int(a)), root(int(b))
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    roots = [root(i) for i in range(len(codes))]
    ids: dict[int, int] = {}
    return np.array([ids.setdefault(r, len(ids)) for r in roots], dtype=np.int64)


def group_split(groups: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Splits image indices by group, so that no group straddles the two parts.

    Groups are shuffled with ``seed`` and taken whole into the second part until it holds
    about ``fraction`` of the images.

    Args:
        groups: int array (n,), from :func:`near_duplicate_groups`.
        fraction: Target share of images in the second part (validation), in (0, 1).
        seed: Seed of the shuffle.

    Returns:
        ``(first, second)``: sorted int64 index arrays.

    Raises:
        InvalidDatasetError: ``fraction`` outside (0, 1), or fewer than two groups.
    """
    groups = np.asarray(groups)
    if not 0 < fraction < 1:
        raise InvalidDatasetError(f"The validation fraction must lie between 0 and 1; got {fraction}.")
    unique = np.unique(groups)
    if len(unique) < 2:
        raise InvalidDatasetError(f"A group split needs at least two groups of images; got {len(unique)}.")
    order = np.random.default_rng(seed).permutation(unique)
    sizes = np.array([np.count_nonzero(groups == g) for g in order])
    # Whole groups until the target is reached; at least one group on each side.
    taken = min(max(int(np.searchsorted(np.cumsum(sizes), fraction * len(groups))) + 1, 1), len(order) - 1)
    second = np.isin(groups, order[:taken])
    return np.flatnonzero(~second), np.flatnonzero(second)


def stratified_group_split(labels: Sequence[int], groups: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`group_split` within each label: whole groups, about ``fraction`` of each label's images.

    A group whose images carry several labels (a slice filed under two classes) counts
    for the label of its first image and moves whole.

    Raises:
        InvalidDatasetError: ``fraction`` outside (0, 1), or a label with fewer than two
            groups (it could not be on both sides).
    """
    labels, groups = np.asarray(labels), np.asarray(groups)
    first_label = {}
    for label, group in zip(labels.tolist(), groups.tolist()):
        first_label.setdefault(group, label)
    owner = np.array([first_label[g] for g in groups.tolist()])
    second = np.zeros(len(labels), dtype=bool)
    for label in np.unique(owner):
        members = np.flatnonzero(owner == label)
        if len(np.unique(groups[members])) < 2:
            raise InvalidDatasetError(
                f"Class {label} has a single group of near-duplicate images, so it cannot lie on both sides of a "
                "split by group; add images of it, or carve the validation split per file."
            )
        _, carved = group_split(groups[members], fraction, seed)
        second[members[carved]] = True
    return np.flatnonzero(~second), np.flatnonzero(second)
