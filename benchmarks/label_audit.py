"""Candidate suspect labels in the Kaggle brain-tumour MRI set, for review by eye.

Kinds of evidence, none of which proves a label wrong on its own:

(a) cross-class near duplicates: pairs of slices within pHash Hamming distance 4 of each
    other (each also compared with the other's left-right mirror image) that carry
    different labels, within Training, between Training and Testing, and within Testing
    (Testing rows are for the separate Testing list, never to drop). Pairs are shown
    in their groups (chains of near duplicates); only the images of such a pair become
    candidates, not every image the chain passes through;
(b) confident disagreements: Training slices where the model (the shipped one by default)
    predicts another class with probability >= 0.9. The shipped model was trained on
    these very labels, so what it still contradicts is worth a look;
(c) with ``--audit LIST...``: unlisted near copies (same pHash rule) of files an audit list
    already names. Copies of a wrong slice under the same label escape (a), and a model
    trained on them agrees with them, so (b) misses them too.

Every candidate goes into one CSV (``--out``) in the audit-list format
(``file,action,new_label,reason``, action ``exclude`` proposed) plus evidence columns;
review each image by eye and copy the rows you are sure of into
``configs/label_audit.csv`` (Training) or ``configs/label_audit_testing.csv`` (Testing,
reported with and without, never dropped). ``--sheets DIR`` writes contact sheets of the
groups and of the disagreements, captioned, to make that review quick.

    python benchmarks/label_audit.py ../shared/data/brain-tumor-mri [--model ID_OR_DIR]
        [--out suspects.csv] [--min-probability 0.9] [--probabilities proba.npz]
        [--sheets DIR] [--audit configs/label_audit.csv configs/label_audit_testing.csv] [--threads 1]

The model pass over the 5708 Training slices takes a few minutes on one CPU thread;
``--probabilities FILE`` keeps its result and reuses it on the next run.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from tumor_classifier import TumorClassifier
from tumor_classifier.data import find_split_dirs, list_image_files
from tumor_classifier.label_audit import AUDIT_COLUMNS, read_label_audit
from tumor_classifier.label_suspects import (
    CrossClassGroup,
    DuplicatePair,
    find_cross_class_duplicates,
    find_near_duplicate_pairs,
    mirror_fingerprints,
)

BATCH_SIZE = 64
CANDIDATE_COLUMNS = AUDIT_COLUMNS + ("kinds", "split", "label", "predicted", "probability", "group")


@dataclass
class Candidate:
    """Evidence gathered for one file; one CSV row."""

    file: str
    split: str
    label: str
    reasons: list[str] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    predicted: str = ""
    probability: float | None = None
    group: str = ""


def relative(path: str, root: Path) -> str:
    return Path(path).resolve().relative_to(root).as_posix()


def cross_label_pairs(group: CrossClassGroup, split_of: list[str], splits: tuple[str, str]) -> list[DuplicatePair]:
    """The group's pairs whose two images carry different labels and lie in ``splits``
    (one image in each): the direct evidence; other members only chain them."""
    label = dict(zip(group.indices, group.labels))
    return [
        pair for pair in group.pairs
        if label[pair.first] != label[pair.second]
        and sorted((split_of[pair.first], split_of[pair.second])) == sorted(splits)
    ]


def describe_group(group: CrossClassGroup, pairs: list[DuplicatePair], root: Path) -> list[str]:
    path = dict(zip(group.indices, group.paths))
    label = dict(zip(group.indices, group.labels))
    lines = [
        f"  {len(group.indices)} images (" + ", ".join(f"{n} {c}" for c, n in group.class_counts.items())
        + f"), {len(group.pairs)} near-duplicate pairs, {len(pairs)} across labels:"
    ]
    for pair in pairs:
        a, b = relative(path[pair.first], root), relative(path[pair.second], root)
        lines.append(
            f"    d={pair.distance}{' mirror' if pair.mirrored else '       '}  {a} ({label[pair.first]})  ~  {b} ({label[pair.second]})"
        )
    return lines


def pair_evidence(group: CrossClassGroup, pairs: list[DuplicatePair], index: int, root: Path) -> str:
    """For one image, its differently-labelled near duplicates."""
    path = dict(zip(group.indices, group.paths))
    label = dict(zip(group.indices, group.labels))
    notes = []
    for pair in pairs:
        if index in (pair.first, pair.second):
            other = pair.second if pair.first == index else pair.first
            how = "mirror image of" if pair.mirrored else "near duplicate of"
            notes.append(f"{how} {relative(path[other], root)} (pHash distance {pair.distance}) labelled {label[other]}")
    return f"labelled {label[index]}; " + "; ".join(notes)


def model_probabilities(model: str | None, paths: list[str], cache: Path | None) -> tuple[np.ndarray, list[str]]:
    """``(probabilities (n, n_classes), class names)``, from the cache when it matches."""
    if cache is not None and cache.is_file():
        stored = np.load(cache, allow_pickle=False)
        if list(stored["paths"]) == paths and str(stored["model"]) == str(model):
            print(f"probabilities read from {cache}")
            return stored["proba"], list(stored["classes"])
        print(f"{cache} holds another model or file list; recomputing")
    classifier = TumorClassifier.from_pretrained(model, batch_size=BATCH_SIZE)
    proba = np.empty((len(paths), len(classifier.classes_)), dtype=np.float32)
    start_time = time.perf_counter()
    for start in range(0, len(paths), BATCH_SIZE):
        proba[start : start + BATCH_SIZE] = classifier.predict_proba(paths[start : start + BATCH_SIZE])
        done = min(start + BATCH_SIZE, len(paths))
        if (start // BATCH_SIZE) % 10 == 0 or done == len(paths):
            elapsed = time.perf_counter() - start_time
            print(f"  model: {done}/{len(paths)} images, {elapsed:.0f} s", flush=True)
    classes = [str(c) for c in classifier.classes_]
    if cache is not None:
        np.savez(cache, proba=proba, classes=np.array(classes), paths=np.array(paths), model=np.array(str(model)))
    return proba, classes


def write_sheet(entries: list[tuple[str, str]], out: Path, columns: int = 6, side: int = 200) -> None:
    """A contact sheet: each image at ``side`` px with a caption under it."""
    from PIL import Image, ImageDraw

    from tumor_classifier.preprocessing import load_image

    caption = 28
    rows = (len(entries) + columns - 1) // columns
    sheet = Image.new("L", (columns * side, rows * (side + caption)), 40)
    draw = ImageDraw.Draw(sheet)
    for n, (path, text) in enumerate(entries):
        x, y = (n % columns) * side, (n // columns) * (side + caption)
        sheet.paste(load_image(path).resize((side, side)), (x, y))
        for k, line in enumerate(text.split("\n")[:2]):
            draw.text((x + 3, y + side + 1 + 13 * k), line[:34], fill=255)
    sheet.save(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, help="Kaggle-layout folder with Training/ and Testing/")
    parser.add_argument("--model", default=None, help="model folder or Hub id; default: the shipped model")
    parser.add_argument("--out", type=Path, default=Path("suspects.csv"), help="candidate CSV to write")
    parser.add_argument("--min-probability", type=float, default=0.9, help="confidence of a disagreement")
    parser.add_argument("--threshold", type=int, default=4, help="pHash Hamming distance of a near duplicate")
    parser.add_argument("--probabilities", type=Path, default=None, help="npz to keep / reuse model probabilities")
    parser.add_argument("--sheets", type=Path, default=None, help="folder for contact sheets of the candidates")
    parser.add_argument("--max-disagreements", type=int, default=48, help="disagreements on the contact sheets")
    parser.add_argument("--audit", type=Path, nargs="*", default=[], help="audit lists already reviewed: "
                        "report unlisted near copies of their files (c)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    root = args.data.resolve()
    splits = find_split_dirs(root)
    if "train" not in splits:
        parser.error(f"{root} has no Training folder")
    train = list_image_files(splits["train"])
    test = list_image_files(splits["test"]) if "test" in splits else []
    split_of = ["Training"] * len(train) + ["Testing"] * len(test)
    print(f"{len(train)} Training and {len(test)} Testing images; hashing (plain and mirrored) ...", flush=True)
    start = time.perf_counter()
    plain, mirrored = mirror_fingerprints([path for path, _ in train + test])
    print(f"  {time.perf_counter() - start:.0f} s")

    candidates: dict[str, Candidate] = {}

    def candidate(path: str, split: str, label: str) -> Candidate:
        file = relative(path, root)
        return candidates.setdefault(file, Candidate(file, split, label))

    # (a) cross-class near duplicates, within Training, then across Training and Testing
    n_train = len(train)
    within = find_cross_class_duplicates(
        train, threshold=args.threshold, fingerprints=(plain[:n_train], mirrored[:n_train])
    )
    everything = find_cross_class_duplicates(train + test, threshold=args.threshold, fingerprints=(plain, mirrored))
    sections = [
        ("training", "within Training", [(g, cross_label_pairs(g, split_of, ("Training", "Training"))) for g in within]),
        ("train-test", "between Training and Testing", [(g, cross_label_pairs(g, split_of, ("Training", "Testing"))) for g in everything]),
        ("testing", "within Testing", [(g, cross_label_pairs(g, split_of, ("Testing", "Testing"))) for g in everything]),
    ]
    for kind, title, groups in sections:
        groups = [(g, pairs) for g, pairs in groups if pairs]
        members = sorted({i for _, pairs in groups for p in pairs for i in (p.first, p.second)})
        n_pairs = sum(len(pairs) for _, pairs in groups)
        print(f"\n(a) cross-class near duplicates {title}: {len(groups)} groups, {n_pairs} pairs across labels, "
              f"{len(members)} images in them")
        for number, (group, pairs) in enumerate(groups, start=1):
            name = f"{kind}-{number}"
            print(f" group {name}:")
            print("\n".join(describe_group(group, pairs, root)))
            involved = sorted({i for p in pairs for i in (p.first, p.second)})
            for index in involved:
                path, label = (train + test)[index]
                entry = candidate(path, split_of[index], label)
                entry.kinds.append(kind)
                entry.reasons.append(pair_evidence(group, pairs, index, root))
                entry.group = entry.group or name
            if args.sheets is not None:
                args.sheets.mkdir(parents=True, exist_ok=True)
                write_sheet(
                    [(str((train + test)[i][0]), f"{Path((train + test)[i][0]).stem}\n{split_of[i]} {(train + test)[i][1]}") for i in involved],
                    args.sheets / f"group-{name}.png",
                )

    # (c) near copies of files an audit list already names: same label, so (a) misses them,
    # and the model was trained on them, so (b) does too
    if args.audit:
        listed = {entry.file: (audit, entry) for audit in args.audit for entry in read_label_audit(audit)}
        everyone = train + test
        files = [relative(path, root) for path, _ in everyone]
        copies = [
            pair for pair in find_near_duplicate_pairs((plain, mirrored), threshold=args.threshold)
            if (files[pair.first] in listed) != (files[pair.second] in listed)
        ]
        print(f"\n(c) unlisted near copies of files in {', '.join(map(str, args.audit))}: "
              f"{len({p.first if files[p.second] in listed else p.second for p in copies})} images")
        for pair in copies:
            known, other = (pair.first, pair.second) if files[pair.first] in listed else (pair.second, pair.first)
            audit, entry = listed[files[known]]
            how = "mirror image of" if pair.mirrored else "near duplicate of"
            print(f"    d={pair.distance}{' mirror' if pair.mirrored else '       '}  {files[other]}  ~  {files[known]} ({entry.action})")
            item = candidate(everyone[other][0], split_of[other], everyone[other][1])
            if "copy" not in item.kinds:
                item.kinds.append("copy")
            item.reasons.append(f"{how} {files[known]} (pHash distance {pair.distance}), listed in {audit.name}: {entry.reason}")

    # (b) confident disagreements of the model on Training
    print(f"\n(b) model ({args.model or 'shipped default'}) on {len(train)} Training images ...", flush=True)
    paths = [path for path, _ in train]
    proba, classes = model_probabilities(args.model, paths, args.probabilities)
    predicted = np.asarray(classes)[proba.argmax(1)]
    top = proba.max(1)
    labels = np.asarray([label for _, label in train])
    accuracy = float((predicted == labels).mean())
    disagree = np.flatnonzero((predicted != labels) & (top >= args.min_probability))
    disagree = disagree[np.argsort(-top[disagree], kind="stable")]
    print(f"  accuracy on Training {accuracy:.4f}; {int((predicted != labels).sum())} disagreements, "
          f"{len(disagree)} with probability >= {args.min_probability}")
    for index in disagree:
        path, label = train[index]
        entry = candidate(path, "Training", label)
        entry.kinds.append("model")
        entry.predicted, entry.probability = str(predicted[index]), float(top[index])
        entry.reasons.append(f"labelled {label}; model predicts {predicted[index]} with p={top[index]:.3f}")
        print(f"    {entry.file:<45} {label:<11} -> {predicted[index]:<11} {top[index]:.3f}")
    if args.sheets is not None and len(disagree):
        shown = disagree[: args.max_disagreements]
        for page in range(0, len(shown), 24):
            write_sheet(
                [(train[i][0], f"{Path(train[i][0]).stem} {top[i]:.3f}\n{labels[i]} -> {predicted[i]}") for i in shown[page : page + 24]],
                args.sheets / f"disagreements-{page // 24 + 1}.png",
            )

    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(CANDIDATE_COLUMNS)
        for entry in sorted(candidates.values(), key=lambda e: (e.split != "Training", e.file)):
            writer.writerow([
                entry.file, "exclude", "", " | ".join(entry.reasons), "+".join(entry.kinds), entry.split, entry.label,
                entry.predicted, "" if entry.probability is None else f"{entry.probability:.4f}", entry.group,
            ])
    counts = {kind: sum(kind in e.kinds for e in candidates.values()) for kind in ("training", "train-test", "testing", "copy", "model")}
    print(f"\n{len(candidates)} candidate files written to {args.out} "
          f"(in cross-label pairs: within Training {counts['training']}, Training-Testing {counts['train-test']}, "
          f"within Testing {counts['testing']}; copies of listed files {counts['copy']}; "
          f"model disagreements {counts['model']}); review each by eye before listing it.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
