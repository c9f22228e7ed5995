"""Shortcut audit: does a model read the tumour, or the MRI contrast and the plane?

The Kaggle 4-class set's tumour slices are almost all T1, many coronal or sagittal; its
no-tumour slices are mostly axial T2 / FLAIR. A model can score well on its Testing split
by learning "T2-looking axial slice = no tumour". This benchmark makes that measurable,
for our model and (with ``--peer``) the PyPI peer ``detect-tumor`` in the same run:

* **stress table**: the 906 Testing tumour slices (glioma, meningioma, pituitary) under
  each transform of :data:`tumor_classifier.stress.STRESSES` (contrast inverted inside
  the head, gamma 0.4 / 2.5, Gaussian noise 0.1, 7 px box blur); the share called
  ``notumor``, per class and overall. Two unstressed rows: ``baseline (file)`` (what a
  user gets from the file) and ``grey copy`` (our grayscale decode written as PNG, the
  exact image the stresses start from; for our model it equals the baseline).
* **br35h-tumor sensitivity**: the share of the 684 Br35H tumour slices (about half T2 /
  FLAIR, all axial) not called ``notumor``; on all of them and on the *validation
  groups* training held out (near-duplicate groups, ``group_split(groups, 0.2,
  seed=42)``, the second part, exactly as ``train_hf.py --tumour_only_dirs`` splits).
  "all" includes images a model trained with ``--tumour_only_dirs`` has seen.
* **Kaggle Testing**: accuracy on all 1311 slices, on the part with no near duplicate in
  Training, and both again without the suspect Testing slices of
  ``configs/label_audit_testing.csv`` (every listed file is left out, whatever its
  action); notumor specificity; tumour sensitivity.
* **recall per estimated group**: tumour recall (not called ``notumor``) per class x
  sequence x plane, with the sequence and plane from
  :func:`~tumor_classifier.sequence_plane.estimate_sequence` /
  :func:`~tumor_classifier.sequence_plane.estimate_plane` (a heuristic: its agreement with
  by-eye labels is printed too), on Testing tumours and Br35H; notumor specificity per
  group on Testing.
* **estimator agreement**: confusion matrices of the estimator against the by-eye
  labels of ``benchmarks/sequence_plane_labels.csv`` (``tuning`` rows set its
  thresholds, ``holdout`` rows were labelled afterwards and checked once).

    pip install detect-tumor   # only for --peer
    python benchmarks/audit.py [--model ID_OR_DIR] [--data ../shared/data] [--peer]
        [--peer-cache FILE] [--limit N] [--json OUT] [--threads 1]

Every image is decoded once into the package's grayscale representation; our model,
the stresses and the estimator all take that array. The peer takes file paths only
(:class:`peer.PeerModel`), so it reads the original files for the baseline and PNG
copies of the stressed arrays (written to a temporary folder) for the rest; its
probabilities are cached in ``--peer-cache`` (an ``.npz`` of ``paths`` and ``proba``, the
format ``compare_peers.py`` writes): files under their path, arrays under the SHA-1 of
their pixels, so a changed stress is never served from the cache. Image fingerprints
(for the duplicate check and the Br35H groups) are cached in ``--fingerprint-cache``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from peer import load_peer, peer_available  # noqa: E402

from tumor_classifier import CLASS_NAMES, TumorClassifier, find_duplicates, load_image  # noqa: E402
from tumor_classifier.data import (  # noqa: E402
    NO_TUMOR,
    ImageFingerprint,
    fingerprint,
    group_split,
    list_image_files,
    load_tumour_only_images,
    near_duplicate_groups,
)
from tumor_classifier.label_audit import read_label_audit  # noqa: E402
from tumor_classifier.sequence_plane import PLANES, SEQUENCES, estimate_plane, estimate_sequence  # noqa: E402
from tumor_classifier.stress import STRESSES  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TUMOUR_CLASSES = tuple(name for name in CLASS_NAMES if name != NO_TUMOR)
OURS, PEER = "tumor-classifier", "detect-tumor"


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _every_kth(items: list, limit: int | None) -> list:
    """At most ``limit`` items spread over the list (every k-th, as compare_peers.py)."""
    if not limit or limit >= len(items):
        return items
    return items[:: max(1, len(items) // limit)][:limit]


# --------------------------------------------------------------------------- caches


def _fingerprints(paths: Sequence[str], cache: Path | None) -> list[ImageFingerprint]:
    """:func:`tumor_classifier.data.fingerprint` of each file, cached by path, size, mtime."""
    stored: dict[str, tuple[str, int]] = {}
    if cache and cache.exists():
        with np.load(cache) as data:
            stored = {k: (s, int(h)) for k, s, h in zip(data["keys"].tolist(), data["sha256"].tolist(), data["phash"])}
    keys = []
    for path in paths:
        stat = os.stat(path)
        keys.append(f"{Path(path).resolve()}|{stat.st_size}|{stat.st_mtime_ns}")
    missing = [i for i, key in enumerate(keys) if key not in stored]
    if missing:
        _log(f"hashing {len(missing)} images ...")
        for i in missing:
            found = fingerprint(paths[i])
            stored[keys[i]] = (found.sha256, found.phash)
        if cache:
            names = list(stored)
            tmp = cache.with_name(cache.name + ".tmp.npz")
            np.savez(tmp, keys=np.array(names), sha256=np.array([stored[k][0] for k in names]),
                     phash=np.array([stored[k][1] for k in names], dtype=np.uint64))
            os.replace(tmp, cache)
    return [ImageFingerprint(*stored[key]) for key in keys]


class PeerRunner:
    """The peer's probabilities for files and for arrays, through ``peer.PeerModel``, cached.

    Args:
        threads: onnxruntime intra-op threads.
        cache: ``.npz`` with ``paths`` (keys) and ``proba`` (n, 4), or ``None``.
    """

    def __init__(self, threads: int, cache: Path | None) -> None:
        self.peer = load_peer(intra_op_threads=threads)
        self.cache = cache
        self.stored: dict[str, np.ndarray] = {}
        if cache and cache.exists():
            with np.load(cache) as data:
                # compare_peers.py stores paths as given; files are keyed here by their
                # resolved path, so "../shared/data/..." and "/work/shared/data/..." meet.
                self.stored = {self._key(k): row for k, row in zip(data["paths"].tolist(), data["proba"])}
        self.computed = 0

    @staticmethod
    def _key(path_or_key: str) -> str:
        return path_or_key if path_or_key.startswith("sha1:") else str(Path(path_or_key).resolve())

    def _save(self) -> None:
        if not self.cache:
            return
        keys = list(self.stored)
        tmp = self.cache.with_name(self.cache.name + ".tmp.npz")
        np.savez(tmp, paths=np.array(keys), proba=np.stack([self.stored[k] for k in keys]))
        os.replace(tmp, self.cache)

    def _run(self, keys: list[str], files: list[str], what: str) -> np.ndarray:
        todo = [i for i, key in enumerate(keys) if key not in self.stored]
        if todo:
            _log(f"  peer: {len(todo)} of {len(keys)} {what} not cached, running ...")
            started, cpu = time.perf_counter(), time.process_time()
            for start in range(0, len(todo), 64):  # save every 64 so an interrupted run keeps them
                chunk = todo[start : start + 64]
                proba = self.peer.predict_proba_batched([files[i] for i in chunk], batch_size=16)
                for i, row in zip(chunk, proba):
                    self.stored[keys[i]] = np.asarray(row, dtype=np.float32)
                self._save()
            self.computed += len(todo)
            _log(f"  peer: {(time.perf_counter() - started) * 1000 / len(todo):.0f} ms/image wall, "
                 f"{(time.process_time() - cpu) * 1000 / len(todo):.0f} ms CPU")
        proba = np.stack([self.stored[key] for key in keys])
        return proba

    def labels(self, proba: np.ndarray) -> np.ndarray:
        return np.array(self.peer.classes, dtype=object)[proba.argmax(axis=1)]

    def predict_files(self, paths: Sequence[str]) -> np.ndarray:
        """Class names for image files, as the peer reads them."""
        return self.labels(self._run([self._key(str(p)) for p in paths], [str(p) for p in paths], "files"))

    def predict_arrays(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        """Class names for uint8 arrays (H, W), given to the peer as PNG files."""
        keys = [f"sha1:{hashlib.sha1(a.tobytes() + str(a.shape).encode()).hexdigest()}" for a in arrays]
        with tempfile.TemporaryDirectory(prefix="audit-peer-") as folder:
            files = []
            for i, (key, array) in enumerate(zip(keys, arrays)):
                file = os.path.join(folder, f"{i}.png")
                if key not in self.stored:
                    Image.fromarray(array).save(file)
                files.append(file)
            return self.labels(self._run(keys, files, "arrays"))


def _predict_ours(clf: TumorClassifier, images: Sequence[np.ndarray], batch_size: int) -> np.ndarray:
    """Class names from ``clf.predict``, ``batch_size`` arrays per call."""
    out = [clf.predict(list(images[i : i + batch_size])) for i in range(0, len(images), batch_size)]
    return np.concatenate(out) if out else np.array([], dtype=object)


# --------------------------------------------------------------------------- figures


@dataclass
class ImageSet:
    """One set of images, decoded once, with what the audit knows and predicts about them.

    Attributes:
        paths: Image files.
        gray: uint8 arrays (H, W), the package's grayscale decode of ``paths``.
        true: object array (n,) of class names (``"tumour"`` for Br35H).
        sequence, plane: Estimated sequence and plane per image.
        predicted: ``{system: object array (n,) of class names}``.
    """

    paths: list[str]
    gray: list[np.ndarray]
    true: np.ndarray
    sequence: list[str] = field(default_factory=list)
    plane: list[str] = field(default_factory=list)
    predicted: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def load(cls, paths: list[str], labels: Sequence[str]) -> "ImageSet":
        gray = [np.asarray(load_image(path)) for path in paths]
        return cls(paths, gray, np.array(list(labels), dtype=object),
                   [estimate_sequence(g) for g in gray], [estimate_plane(g) for g in gray])


def _share(mask: np.ndarray) -> float | None:
    return float(np.mean(mask)) if len(mask) else None


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _print_table(title: str, header: list[str], rows: list[list[str]], spans: list[tuple[str, int]] | None = None) -> None:
    """A plain-text table; ``spans`` names groups of columns after the first one."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]

    def line(cells: list[str]) -> str:
        return "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    print(f"\n{title}")
    if spans:
        parts, column = [" " * widths[0]], 1
        for label, count in spans:
            width = sum(widths[column : column + count]) + 2 * (count - 1)
            parts.append(label[:width].center(width, "."))
            column += count
        print("  ".join(parts))
    print(line(header))
    print("-" * len(line(header)))
    for row in rows:
        print(line(row))


def _kappa(confusion: np.ndarray) -> float:
    """Cohen's kappa of a square confusion matrix (agreement beyond chance)."""
    n = confusion.sum()
    observed = np.trace(confusion) / n
    expected = float((confusion.sum(0) * confusion.sum(1)).sum()) / n**2
    return float((observed - expected) / (1 - expected)) if expected < 1 else float("nan")


# --------------------------------------------------------------------------- sections


def stress_section(test: ImageSet, stressed: dict[str, dict[str, np.ndarray]]) -> dict:
    """Share of Testing tumour images called notumor per stress, class and system."""
    tumour = np.isin(test.true, TUMOUR_CLASSES)
    true = test.true[tumour]
    systems = list(stressed)
    result, rows = {}, []
    for row_name in stressed[systems[0]]:
        result[row_name], cells = {}, [row_name]
        for system in systems:
            called = stressed[system][row_name] == NO_TUMOR
            figures = {cls: _share(called[true == cls]) for cls in TUMOUR_CLASSES} | {"all": _share(called)}
            result[row_name][system] = figures
            cells += [_pct(figures[key]) for key in (*TUMOUR_CLASSES, "all")]
        rows.append(cells)
    counts = ", ".join(f"{cls} {int((true == cls).sum())}" for cls in TUMOUR_CLASSES)
    _print_table(
        f"STRESS: share of the {int(tumour.sum())} Testing tumour images called notumor ({counts}); lower is better",
        ["stress"] + [cls for _ in systems for cls in (*TUMOUR_CLASSES, "all")],
        rows,
        spans=[(f" {system} ", len(TUMOUR_CLASSES) + 1) for system in systems],
    )
    return result


def br35h_section(br35h: ImageSet, validation: np.ndarray) -> dict:
    """Share of Br35H images called a tumour: all, validation groups, training groups."""
    systems = list(br35h.predicted)
    result, rows = {}, []
    for part, mask in (("all", np.ones(len(br35h.paths), bool)), ("validation groups", validation), ("training groups", ~validation)):
        result[part] = {"n": int(mask.sum())}
        cells = [f"{part} (n={int(mask.sum())})"]
        for system in systems:
            result[part][system] = _share(br35h.predicted[system][mask] != NO_TUMOR)
            cells.append(_pct(result[part][system]))
        rows.append(cells)
    _print_table("BR35H-TUMOR: share called a tumour (sensitivity). 'all' and 'training groups' include images a model "
                 "trained with --tumour_only_dirs has seen; 'validation groups' were held out", ["images"] + systems, rows)
    return result


def kaggle_section(test: ImageSet, clean: np.ndarray, suspect: np.ndarray) -> dict:
    """Accuracy on Testing subsets; notumor specificity and tumour sensitivity."""
    systems = list(test.predicted)
    everything = np.ones(len(test.paths), bool)
    result, rows = {}, []

    def add(key: str, mask: np.ndarray, score: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> None:
        result[key] = {"n": int(mask.sum())}
        cells = [f"{key} (n={int(mask.sum())})"]
        for system in systems:
            result[key][system] = _share(score(test.predicted[system][mask], test.true[mask]))
            cells.append(_pct(result[key][system]))
        rows.append(cells)

    for part, mask in (("all", everything), ("no near duplicate in Training", clean),
                       ("all, suspects left out", ~suspect), ("no near duplicate, suspects left out", clean & ~suspect)):
        add(f"accuracy, {part}", mask, lambda pred, true: pred == true)
    for part, mask in (("all", everything), ("suspects left out", ~suspect)):
        add(f"notumor specificity, {part}", mask & (test.true == NO_TUMOR), lambda pred, true: pred == NO_TUMOR)
        add(f"tumour sensitivity, {part}", mask & (test.true != NO_TUMOR), lambda pred, true: pred != NO_TUMOR)
    _print_table(f"KAGGLE TESTING ({int(suspect.sum())} suspect images in this run)", ["figure"] + systems, rows)
    return result


def _group_rows(source: str, images: ImageSet, mask: np.ndarray, want_notumor: bool) -> tuple[list[list[str]], list[dict]]:
    """One row per (class, sequence, plane) among ``images[mask]``."""
    systems = list(images.predicted)
    keys = [(str(c), s, p) for c, s, p, m in zip(images.true, images.sequence, images.plane, mask) if m]
    index = np.flatnonzero(mask)
    rows, records = [], []
    for key in sorted(set(keys), key=lambda k: (k[0], SEQUENCES.index(k[1]), PLANES.index(k[2]))):
        chosen = index[[k == key for k in keys]]
        record = {"source": source, "class": key[0], "sequence": key[1], "plane": key[2], "n": len(chosen)}
        for system in systems:
            record[system] = _share((images.predicted[system][chosen] == NO_TUMOR) == want_notumor)
        rows.append([source, *key, str(len(chosen))] + [_pct(record[s]) for s in systems])
        records.append(record)
    return rows, records


def group_section(test: ImageSet, br35h: ImageSet | None) -> dict:
    """Tumour recall per estimated (class, sequence, plane) and per sequence; notumor specificity per group."""
    systems = list(test.predicted)
    tumour = test.true != NO_TUMOR
    rows, recall = _group_rows("Testing", test, tumour, want_notumor=False)
    if br35h is not None:
        more_rows, more = _group_rows("Br35H", br35h, np.ones(len(br35h.paths), bool), want_notumor=False)
        rows, recall = rows + more_rows, recall + more
    _print_table("TUMOUR RECALL per estimated group (share called a tumour; sequence and plane are estimates, "
                 "see ESTIMATOR AGREEMENT)", ["source", "class", "sequence", "plane", "n"] + systems, rows)

    rows, per_sequence = [], []
    for source, images, mask in (("Testing tumours", test, tumour),
                                 ("Br35H", br35h, None) if br35h is not None else ("", None, None)):
        if images is None:
            continue
        mask = np.ones(len(images.paths), bool) if mask is None else mask
        for seq in SEQUENCES:
            chosen = mask & (np.array(images.sequence, dtype=object) == seq)
            if not chosen.any():
                continue
            record = {"source": source, "sequence": seq, "n": int(chosen.sum())}
            for system in systems:
                record[system] = _share(images.predicted[system][chosen] != NO_TUMOR)
            rows.append([source, seq, str(record["n"])] + [_pct(record[s]) for s in systems])
            per_sequence.append(record)
    _print_table("TUMOUR RECALL per estimated sequence (classes and planes pooled)", ["source", "sequence", "n"] + systems, rows)

    rows, specificity = _group_rows("Testing", test, ~tumour, want_notumor=True)
    if rows:
        _print_table("NOTUMOR SPECIFICITY per estimated group (share called notumor)",
                     ["source", "class", "sequence", "plane", "n"] + systems, rows)
    return {"recall_per_group": recall, "recall_per_sequence": per_sequence, "notumor_specificity_per_group": specificity}


def estimator_agreement(labels_csv: Path, data_root: Path, estimates: dict[str, tuple[str, str]]) -> dict:
    """Confusion of the estimator against by-eye labels, per ``role`` and overall.

    Args:
        labels_csv: CSV ``file,sequence,plane[,role]``, files relative to ``data_root``.
        data_root: The shared data folder.
        estimates: ``{resolved path: (sequence, plane)}`` already computed; labelled files
            not in it are decoded and estimated here (and added to it).

    Returns:
        ``{role: {"sequence": {...}, "plane": {...}}}`` (roles in file order, then
        ``"all"``) with ``n``, ``agreement``, ``kappa``, ``majority_baseline``,
        ``confusion`` (rows by eye, columns estimated), ``labels`` and ``other`` (by-eye
        labels the estimator cannot give, e.g. ``other`` for a CT slice; left out).
    """
    rows = []
    with labels_csv.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            path = data_root / row["file"]
            if not path.is_file():
                continue
            key = str(path.resolve())
            if key not in estimates:
                gray = np.asarray(load_image(path))
                estimates[key] = (estimate_sequence(gray), estimate_plane(gray))
            rows.append((row.get("role") or "all", row["sequence"], row["plane"], *estimates[key]))
    roles = list(dict.fromkeys(r[0] for r in rows))
    result = {}
    for role in roles + (["all"] if len(roles) > 1 else []):
        chosen = [r for r in rows if role == "all" or r[0] == role]
        result[role] = {}
        for kind, names, true_at, estimated_at in (("sequence", SEQUENCES, 1, 3), ("plane", PLANES, 2, 4)):
            usable = [r for r in chosen if r[true_at] in names]
            confusion = np.zeros((len(names), len(names)), dtype=int)
            for r in usable:
                confusion[names.index(r[true_at]), names.index(r[estimated_at])] += 1
            result[role][kind] = {
                "n": len(usable),
                "agreement": float(np.trace(confusion) / max(len(usable), 1)),
                "kappa": _kappa(confusion) if usable else float("nan"),
                "majority_baseline": float(confusion.sum(1).max() / max(len(usable), 1)),
                "labels": list(names),
                "confusion": confusion.tolist(),
                "other": len(chosen) - len(usable),
            }
    return result


def print_agreement(agreement: dict) -> None:
    print("\nESTIMATOR AGREEMENT with by-eye labels (rows: by eye, columns: estimated; thresholds were set on "
          "'tuning', 'holdout' was labelled afterwards)")
    if not agreement:
        print("none of the labelled files was found under --data")
    for role, kinds in agreement.items():
        for kind, a in kinds.items():
            if not a["n"]:
                continue
            extra = f"; {a['other']} labelled other (CT) left out" if a["other"] else ""
            print(f"\n{role} - {kind}: agreement {_pct(a['agreement'])} of {a['n']}, Cohen's kappa {a['kappa']:.2f} "
                  f"(always the commonest label: {_pct(a['majority_baseline'])}){extra}")
            width = max(len(x) for x in a["labels"]) + 2
            print(" " * width + "".join(x.rjust(width) for x in a["labels"]))
            for label, counts in zip(a["labels"], a["confusion"]):
                print(label.ljust(width) + "".join(str(c).rjust(width) for c in counts))


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="Our model folder or Hub id (default: the shipped model).")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data",
                        help="Folder holding brain-tumor-mri/ (Training/, Testing/) and br35h-tumor/ (optional).")
    parser.add_argument("--peer", action="store_true", help="Also run the peer detect-tumor (pip install detect-tumor).")
    parser.add_argument("--peer-cache", type=Path, help="Cache of the peer's probabilities (.npz), read and updated.")
    parser.add_argument("--limit", type=int, help="Use at most N Testing and N Br35H images (every k-th).")
    parser.add_argument("--json", type=Path, help="Write every figure to this JSON file.")
    parser.add_argument("--threads", type=int, default=1, help="torch and onnxruntime threads.")
    parser.add_argument("--batch-size", type=int, default=64, help="Images per predict call of our model.")
    parser.add_argument("--fingerprint-cache", type=Path,
                        default=Path(tempfile.gettempdir()) / "tumor_classifier_audit_fingerprints.npz",
                        help="Cache of image hashes (.npz).")
    parser.add_argument("--labels", type=Path, default=Path(__file__).parent / "sequence_plane_labels.csv",
                        help="By-eye sequence / plane labels for the estimator check.")
    parser.add_argument("--suspects", type=Path, default=REPO / "configs" / "label_audit_testing.csv",
                        help="Audit list of suspect Testing images (file,action,new_label,reason).")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    kaggle, br35h_dir = args.data / "brain-tumor-mri", args.data / "br35h-tumor"

    # Images, decoded once; duplicate check, suspects, Br35H validation groups.
    items = _every_kth(list_image_files(kaggle / "Testing"), args.limit)
    test = ImageSet.load([p for p, _ in items], [label for _, label in items])
    train_paths = [p for p, _ in list_image_files(kaggle / "Training")]
    prints = _fingerprints(train_paths + test.paths, args.fingerprint_cache)
    report_dup = find_duplicates(train_paths, test.paths, fingerprints=(prints[: len(train_paths)], prints[len(train_paths) :]))
    clean = np.isin(np.arange(len(test.paths)), report_dup.clean_queries)
    suspect_files = {entry.file for entry in read_label_audit(args.suspects)} if args.suspects.is_file() else set()
    test_rel = [Path(p).relative_to(kaggle).as_posix() for p in test.paths]
    suspect = np.array([rel in suspect_files for rel in test_rel], dtype=bool)
    _log(f"{len(test.paths)} Testing images, {int(clean.sum())} with no near duplicate in Training, {int(suspect.sum())} suspect")

    br35h, validation, report = None, np.zeros(0, bool), {"model": args.model or "shipped default", "limit": args.limit}
    if br35h_dir.is_dir():
        every = load_tumour_only_images([br35h_dir])  # sorted, as training lists them
        groups = near_duplicate_groups([f.phash for f in _fingerprints(every, args.fingerprint_cache)])
        held_out = set(group_split(groups, 0.2, seed=42)[1].tolist())
        chosen = _every_kth(list(range(len(every))), args.limit)
        br35h = ImageSet.load([every[i] for i in chosen], ["tumour"] * len(chosen))
        validation = np.array([i in held_out for i in chosen], dtype=bool)
        report["br35h_split"] = {"images": len(every), "groups": int(groups.max()) + 1, "validation_images": len(held_out)}
        _log(f"{len(chosen)} Br35H images, {int(validation.sum())} in validation groups")
    else:
        _log(f"no folder {br35h_dir}: the Br35H sections are skipped")

    # The systems: each predicts files (with their decoded arrays) and bare arrays.
    clf = TumorClassifier.from_pretrained(args.model)
    clf.batch_size = args.batch_size
    ours = lambda arrays: _predict_ours(clf, arrays, args.batch_size)  # noqa: E731
    systems: dict[str, tuple[Callable, Callable]] = {OURS: (lambda images: ours(images.gray), ours)}
    runner = None
    if args.peer and not peer_available():
        _log("detect-tumor is not installed (pip install detect-tumor): our model only")
    elif args.peer:
        runner = PeerRunner(args.threads, args.peer_cache)
        systems[PEER] = (lambda images: runner.predict_files(images.paths), runner.predict_arrays)

    tumour_gray = [g for g, label in zip(test.gray, test.true) if label in TUMOUR_CLASSES]
    stressed: dict[str, dict[str, np.ndarray]] = {}
    for system, (predict_set, predict_arrays) in systems.items():
        t0 = time.perf_counter()
        _log(f"{system}: Testing and Br35H ...")
        test.predicted[system] = predict_set(test)
        if br35h is not None:
            br35h.predicted[system] = predict_set(br35h)
        rows = {"baseline (file)": test.predicted[system][np.isin(test.true, TUMOUR_CLASSES)]}
        # For our model the grey copy *is* what it read from the file (same array).
        rows["grey copy"] = rows["baseline (file)"] if system == OURS else predict_arrays(tumour_gray)
        for name, stress in STRESSES.items():
            _log(f"{system}: {name} ...")
            rows[name] = predict_arrays([stress(g) for g in tumour_gray])
        stressed[system] = rows
        _log(f"{system}: {time.perf_counter() - t0:.0f} s")

    report["stress"] = stress_section(test, stressed)
    if br35h is not None:
        report["br35h"] = br35h_section(br35h, validation)
    report["kaggle_testing"] = kaggle_section(test, clean, suspect)
    report["suspects_in_run"] = [rel for rel, s in zip(test_rel, suspect) if s]
    report.update(group_section(test, br35h))
    if args.labels.is_file():
        estimates = {str(Path(p).resolve()): (s, pl) for images in (test, br35h) if images is not None
                     for p, s, pl in zip(images.paths, images.sequence, images.plane)}
        report["estimator_agreement"] = estimator_agreement(args.labels, args.data, estimates)
        print_agreement(report["estimator_agreement"])

    report["seconds"] = time.perf_counter() - started
    report["peer_images_computed"] = runner.computed if runner else None
    n_br = len(br35h.paths) if br35h is not None else 0
    print(f"\n{len(test.paths)} Testing + {n_br} Br35H images, {len(STRESSES)} stresses, threads {args.threads}, "
          f"{report['seconds']:.0f} s" + (f"; the peer ran on {runner.computed} images not in its cache" if runner else ""))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
