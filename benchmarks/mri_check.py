"""Builds and measures the learned "is this a brain MRI slice?" check (tumor_classifier.mri_check).

Data (read in place from ../shared/data, never copied):

* brain MRI, must be accepted: Kaggle ``brain-tumor-mri/Training`` (all four classes),
  ``br35h-tumor``, ``brain-mri-other-sources`` (AANLIB); Kaggle ``Testing`` is scored and
  reported only, never used to fit or to choose anything;
* not brain MRI, must be flagged: ``not-brain-mri/<category>/``.

Each source (each non-MRI category) is split train / validation 80 / 20 by near-duplicate
group (pHash Hamming distance <= 4, chained; ``data.near_duplicate_groups`` and
``data.group_split(groups, 0.2, seed=42)``), so no near copy of a validation image is
fitted. Br35H is split exactly as the tumour-only training does (groups of its sorted file
list). A category with a single group has no validation part and is fitted whole.

The model: standardised features (pooled ImageNet EfficientNet-Lite0 features of the gray
image + 6 transparent colour / background measurements), L2 logistic regression, each
near-duplicate group weighted as one image and the two classes weighted equally. C is
chosen by grouped 5-fold cross-validation on the train part. Two penalties guard against
kinds of image the regression never saw: a novelty distance (residual of the features
outside the 256 leading principal directions of brain MRI; limit at the 99.9% quantile of
validation brain MRI) and a colour limit (twice the largest share of clearly coloured
pixels on a brain MRI file). Fitted beside the files: augmented copies of every fitting
image (2 per brain MRI, 4 per non-MRI: skull stripping, 1st-99th percentile windowing,
gamma, zoom, rotation, flips, low resolution, noise; see augment()) and 240 synthetic
non-MRI images (constant, noise, gradients, ellipse phantoms, checkerboards, text-like).
The threshold is chosen on the validation files for the goal ">= 95% of non-MRI flagged,
<= 2% of brain MRI flagged" (preferring <= 1%), both counted per group and averaged over
sources (MRI) or pooled over groups (non-MRI); inside the range that meets the goal it
takes the middle (in log-odds), to leave room on both sides for unseen scanners and
unseen kinds of image.

The report gives, per category, the share flagged on validation (files, and their
augmented copies) and train, Kaggle Testing (all, and its part without a near duplicate
in Training), each source left out in turn (unseen kinds), the photos shipped with
scikit-learn (and scikit-image, if installed) and slices of any ``--nifti`` volume,
beside the rule-based ``assess_image``; and the cost per image.

    OMP_NUM_THREADS=1 nice -n 19 python benchmarks/mri_check.py [--data ../shared/data]
        [--out tumor_classifier/mri_check] [--image-size 128] [--crop-to-head]
        [--cache ~/.cache/tumor_classifier/mri_check] [--report report.md] [--no-save]
        [--nifti VOLUME.nii.gz ...] [--no-augment] [--no-leave-out] [--C 0.03]

Backbone features of the ~8,800 files and ~16,000 augmented copies take 20-30 minutes on
one thread the first time; they are cached (``--cache``) per input setting, so a rerun
takes a few minutes (the cross-validation and the leave-one-out fits).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tumor_classifier.data import (
    IMAGE_SUFFIXES,
    NEAR_DUPLICATE_DISTANCE,
    group_split,
    load_tumour_only_images,
    near_duplicate_groups,
)
from tumor_classifier.mri_check import (
    DEFAULT_CHECK_DIR,
    FEATURE_VERSION,
    HAND_FEATURES,
    BackboneFeatures,
    DecodedImage,
    LogisticScorer,
    MRICheck,
    Novelty,
    decode,
    hand_features,
)
from tumor_classifier.preprocessing import PREPROCESSING_VERSION
from tumor_classifier.quality import assess_image

VALIDATION_FRACTION = 0.2
SEED = 42
C_GRID = (0.003, 0.01, 0.03, 0.1, 0.3)
#: Principal directions of brain MRI features kept by the novelty measure.
NOVELTY_COMPONENTS = 256
#: Share of validation brain MRI the novelty limit leaves unpenalised.
NOVELTY_QUANTILE = 0.999
#: Log-odds lost per unit of novelty distance beyond the limit: 0.1 beyond (11% farther) costs 5.
NOVELTY_WEIGHT = 50.0
#: The colour limit is this many times the largest share of clearly coloured pixels seen
#: on a brain MRI file of the fitting pool (Kaggle's tinted notumor slices reach ~0.05;
#: PET / SPECT pseudo-colour starts near 0.06 and is mostly above 0.12).
COLOUR_LIMIT_FACTOR = 2.0
#: Log-odds lost per unit of colour_fraction beyond the limit: 0.05 beyond costs 5.
COLOUR_WEIGHT = 100.0
#: Sources left out in turn for the "unseen kind" figures.
LEAVE_OUT = ("ct_head", "pet_brain", "spect_brain", "xray_chest", "non_medical_images", "br35h", "aanlib_mri")
TARGET_RECALL = 0.95  # non-MRI flagged
MAX_FALSE_FLAGS = (0.01, 0.02)  # brain MRI flagged: preferred, then allowed
POSITIVE_SOURCES = ("kaggle_training", "br35h", "aanlib_mri")
#: Augmented copies per fitting-pool image (brain MRI / not); bump the version when augment() changes.
AUGMENT_COPIES = {True: 2, False: 4}
AUGMENT_VERSION = 2
#: Synthetic non-MRI images (see synthetic_image), a category of their own.
SYNTHETIC_IMAGES = 240


@dataclass
class Table:
    """Everything measured per image: one row per file (or per augmented copy of one)."""

    paths: np.ndarray  # str (n,)
    source: np.ndarray  # str (n,): kaggle_training, kaggle_testing, br35h, aanlib_mri, or the non-MRI category
    is_mri: np.ndarray  # bool (n,)
    backbone: np.ndarray  # float32 (n, 1280)
    hand: np.ndarray  # float64 (n, 6)
    phash: np.ndarray  # uint64 (n,)
    rule_ok: np.ndarray  # bool (n,): assess_image(...).looks_like_mri
    origin: np.ndarray | None = None  # int (n,): the row an augmented copy was made from, -1 for a file

    def __post_init__(self):
        if self.origin is None:
            self.origin = np.full(len(self.paths), -1, np.int64)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def augmented(self) -> np.ndarray:
        return self.origin >= 0

    @functools.cached_property
    def X(self) -> np.ndarray:
        return np.concatenate([self.backbone.astype(np.float64), self.hand], axis=1)

    @staticmethod
    def concat(first: "Table", second: "Table") -> "Table":
        names = ("paths", "source", "is_mri", "backbone", "hand", "phash", "rule_ok", "origin")
        return Table(*(np.concatenate([getattr(first, n), getattr(second, n)]) for n in names))


def list_sources(data: Path) -> list[tuple[str, str, bool]]:
    """(path, source, is_mri) for every image; sorted within each source."""
    rows: list[tuple[str, str, bool]] = []

    def images(folder: Path) -> list[str]:
        return sorted(str(p) for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)

    kaggle = data / "brain-tumor-mri"
    rows += [(p, "kaggle_training", True) for p in images(kaggle / "Training")]
    rows += [(p, "kaggle_testing", True) for p in images(kaggle / "Testing")]
    rows += [(p, "br35h", True) for p in load_tumour_only_images([data / "br35h-tumor"])]
    rows += [(p, "aanlib_mri", True) for p in images(data / "brain-mri-other-sources")]
    for category in sorted(p for p in (data / "not-brain-mri").iterdir() if p.is_dir()):
        rows += [(p, category.name, False) for p in images(category)]
    return rows


def _cache_file(cache: Path, rows: list[tuple[str, str, bool]], image_size: int, crop: bool) -> Path:
    # Keyed on the files' names within their sources, so "../shared/data" and its absolute
    # spelling share a cache.
    names = [f"{r[1]}/{Path(r[0]).parent.name}/{Path(r[0]).name}" for r in rows]
    key = hashlib.sha256(json.dumps([FEATURE_VERSION, PREPROCESSING_VERSION, image_size, crop, names]).encode()).hexdigest()[:16]
    return cache / f"features-{image_size}{'-crop' if crop else ''}-{key}.npz"


def synthetic_image(index: int) -> np.ndarray:
    """One of the synthetic non-MRI images, by index (seeded): trivial inputs a check must refuse.

    Six kinds in turn: a constant image, noise (smoothed or not), a linear gradient,
    ellipses on black (a phantom, like scikit-image's Shepp-Logan), stripes or a
    checkerboard, and dark text-like blocks on white. Without them a black image scored
    as a brain MRI: nothing in the data said otherwise.

    Returns:
        uint8 array (H, W).
    """
    from PIL import Image, ImageFilter

    rng = np.random.default_rng([SEED, 7, index])
    height, width = (int(v) for v in rng.integers(96, 320, size=2))
    kind = index % 6
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    if kind == 0:
        image = np.full((height, width), 0.0 if index % 24 == 0 else rng.uniform(0, 1))  # black among them
    elif kind == 1:
        image = rng.normal(rng.uniform(0.2, 0.8), rng.uniform(0.05, 0.3), (height, width))
        if rng.random() < 0.5:
            blurred = Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(rng.uniform(1, 6)))
            image = np.asarray(blurred) / 255.0
    elif kind == 2:
        angle = rng.uniform(0, 2 * np.pi)
        image = np.cos(angle) * x + np.sin(angle) * y
        image = (image - image.min()) / max(np.ptp(image), 1e-6)
    elif kind == 3:
        image = np.zeros((height, width))
        cy, cx = height / 2, width / 2
        for level in range(int(rng.integers(1, 7))):
            ry, rx = rng.uniform(0.1, 0.45) * height, rng.uniform(0.1, 0.45) * width
            oy, ox = (rng.uniform(-0.15, 0.15, 2) * (height, width)) * (level > 0)
            theta = rng.uniform(0, np.pi)
            yy, xx = np.mgrid[0:height, 0:width]
            u = ((xx - cx - ox) * np.cos(theta) + (yy - cy - oy) * np.sin(theta)) / rx
            v = (-(xx - cx - ox) * np.sin(theta) + (yy - cy - oy) * np.cos(theta)) / ry
            image = np.where(u**2 + v**2 <= 1, rng.uniform(0.1, 1.0), image)
    elif kind == 4:
        period = rng.uniform(0.02, 0.2)
        image = (np.floor(x / period) + (np.floor(y / period) if rng.random() < 0.5 else 0)) % 2
    else:
        image = np.ones((height, width))
        for _ in range(int(rng.integers(20, 120))):
            top, left = int(rng.integers(0, height - 4)), int(rng.integers(0, width - 8))
            image[top : top + int(rng.integers(2, 8)), left : left + int(rng.integers(4, 40))] = rng.uniform(0, 0.4)
    return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)


def load_row(path: str) -> DecodedImage:
    """Decodes a table row's image: a file, or a synthetic image ("synthetic:<index>")."""
    if path.startswith("synthetic:"):
        return decode(synthetic_image(int(path.split(":")[1])))
    return decode(path)


def build_table(rows: list[tuple[str, str, bool]], image_size: int, crop: bool, cache: Path) -> Table:
    """Decodes every image once; backbone and transparent features, pHash, the rule check."""
    import imagehash

    path = _cache_file(cache, rows, image_size, crop)
    if path.is_file():
        stored = np.load(path)
        print(f"features from the cache {path}", file=sys.stderr)
        return Table(
            np.array([r[0] for r in rows]), np.array([r[1] for r in rows]), np.array([r[2] for r in rows]),
            stored["backbone"], stored["hand"], stored["phash"], stored["rule_ok"],
        )
    backbone = BackboneFeatures(image_size, crop)
    n = len(rows)
    feats = np.zeros((n, BackboneFeatures.dim), np.float32)
    hand = np.zeros((n, len(HAND_FEATURES)))
    phash = np.zeros(n, np.uint64)
    rule_ok = np.zeros(n, bool)
    start, chunk = time.perf_counter(), 64
    for begin in range(0, n, chunk):
        decoded = []
        for index in range(begin, min(begin + chunk, n)):
            image = load_row(rows[index][0])
            decoded.append(image)
            hand[index] = hand_features(image)
            phash[index] = np.uint64(int(str(imagehash.phash(image.gray)), 16))
            source = synthetic_image(int(rows[index][0].split(":")[1])) if rows[index][0].startswith("synthetic:") else rows[index][0]
            rule_ok[index] = assess_image(source, gray=image.gray).looks_like_mri
        feats[begin : begin + len(decoded)] = backbone([d.gray for d in decoded])
        done = begin + len(decoded)
        if done % 1024 < chunk or done == n:
            rate = (time.perf_counter() - start) / done
            print(f"  {done}/{n} images, {1000 * rate:.0f} ms each, {rate * (n - done) / 60:.1f} min left", file=sys.stderr)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, backbone=feats, hand=hand, phash=phash, rule_ok=rule_ok)
    return Table(
        np.array([r[0] for r in rows]), np.array([r[1] for r in rows]), np.array([r[2] for r in rows]),
        feats, hand, phash, rule_ok,
    )


def augment(image: DecodedImage, rng: np.random.Generator) -> DecodedImage:
    """A plausible other rendering of one image: what other scanners and converters produce.

    Brain MRI from elsewhere may be skull-stripped (BraTS-like), windowed from a volume at
    its 1st-99th percentiles, stored at low resolution, rotated or mirrored (a volume
    sliced without reorienting), zoomed or padded. The fitted sources show little of
    that, so without it the check flags such slices as "not MRI" (seen on slices of the
    MNI152 template). Non-MRI images get the same treatment, so that "augmented" says
    nothing about the class. Geometry applies to the colours too; intensity changes to
    the gray image only.
    """
    from PIL import Image

    from tumor_classifier.preprocessing import strip_skull

    gray = np.asarray(image.gray)
    rgb = None if image.rgb is None else Image.fromarray(image.rgb)
    if rng.random() < 0.4:
        gray = strip_skull(gray)
    pil = Image.fromarray(gray)

    def both(fn):
        nonlocal pil, rgb
        pil = fn(pil)
        rgb = None if rgb is None else fn(rgb)

    zoom = rng.random()
    if zoom < 0.25:  # zoom in: a central crop
        f = rng.uniform(0.7, 0.95)
        both(lambda im: im.crop((int(im.width * (1 - f) / 2), int(im.height * (1 - f) / 2),
                                 int(im.width * (1 + f) / 2), int(im.height * (1 + f) / 2))))
    elif zoom < 0.5:  # zoom out: a black margin
        f = rng.uniform(1.1, 1.5)

        def pad(im):
            canvas = Image.new(im.mode, (int(im.width * f), int(im.height * f)))
            canvas.paste(im, ((canvas.width - im.width) // 2, (canvas.height - im.height) // 2))
            return canvas

        both(pad)
    if rng.random() < 0.3:
        k = int(rng.integers(1, 4))
        both(lambda im: im.transpose((Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270)[k - 1]))
    if rng.random() < 0.3:
        angle = float(rng.uniform(-15, 15))
        both(lambda im: im.rotate(angle, resample=Image.Resampling.BILINEAR))
    if rng.random() < 0.5:
        both(lambda im: im.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    if rng.random() < 0.1:
        both(lambda im: im.transpose(Image.Transpose.FLIP_TOP_BOTTOM))
    values = np.asarray(pil, dtype=np.float64) / 255.0
    if rng.random() < 0.4:  # 1st-99th percentile window, as volume converters do
        low, high = np.percentile(values, [1, 99])
        values = np.clip((values - low) / max(high - low, 1e-6), 0, 1)
    if rng.random() < 0.5:
        values = values ** rng.uniform(0.6, 1.7)
    if rng.random() < 0.3:
        values = np.clip(values * rng.uniform(0.6, 1.2), 0, 1)
    if rng.random() < 0.2:
        values = np.clip(values + rng.normal(0, rng.uniform(0.01, 0.03), values.shape), 0, 1)
    pil = Image.fromarray(np.round(values * 255).astype(np.uint8))
    if rng.random() < 0.3:  # low resolution
        side = int(rng.integers(48, 128))
        scale = side / max(pil.size)
        if scale < 1:
            small = pil.resize((max(8, round(pil.width * scale)), max(8, round(pil.height * scale))), Image.Resampling.BILINEAR)
            pil = small.resize(pil.size, Image.Resampling.BILINEAR)
    return DecodedImage(pil, None if rgb is None else np.asarray(rgb.convert("RGB")))


def build_augmented(table: Table, image_size: int, crop: bool, cache: Path, copies: dict[bool, int]) -> Table:
    """Augmented copies of every fitting-pool image (not Kaggle Testing): features as for files.

    Args:
        copies: Copies per image, by class (``{True: brain MRI, False: not}``).
    """
    origin = np.array([i for i in range(len(table)) if table.source[i] != "kaggle_testing"
                       for _ in range(copies[bool(table.is_mri[i])])], np.int64)
    names = [f"{table.source[i]}/{Path(str(table.paths[i])).name}" for i in origin]
    key = hashlib.sha256(json.dumps([AUGMENT_VERSION, FEATURE_VERSION, PREPROCESSING_VERSION, image_size, crop, SEED, names]).encode()).hexdigest()[:16]
    path = cache / f"augmented-{image_size}{'-crop' if crop else ''}-{key}.npz"
    n = len(origin)
    if path.is_file():
        print(f"augmented features from the cache {path}", file=sys.stderr)
        stored = np.load(path)
        backbone, hand = stored["backbone"], stored["hand"]
    else:
        extractor = BackboneFeatures(image_size, crop)
        backbone = np.zeros((n, BackboneFeatures.dim), np.float32)
        hand = np.zeros((n, len(HAND_FEATURES)))
        start, chunk = time.perf_counter(), 64
        for begin in range(0, n, chunk):
            batch = []
            for row in range(begin, min(begin + chunk, n)):
                rng = np.random.default_rng([SEED, row])
                copy = augment(load_row(str(table.paths[origin[row]])), rng)
                batch.append(copy)
                hand[row] = hand_features(copy)
            backbone[begin : begin + len(batch)] = extractor([d.gray for d in batch])
            done = begin + len(batch)
            if done % 1024 < chunk or done == n:
                rate = (time.perf_counter() - start) / done
                print(f"  augmented {done}/{n}, {1000 * rate:.0f} ms each, {rate * (n - done) / 60:.1f} min left", file=sys.stderr)
        cache.mkdir(parents=True, exist_ok=True)
        np.savez(path, backbone=backbone, hand=hand)
    return Table(table.paths[origin], table.source[origin], table.is_mri[origin], backbone, hand,
                 table.phash[origin], table.rule_ok[origin], origin)


def split(table: Table) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Group ids over the fitting pool, and the validation mask (per source, by group).

    Returns:
        ``(groups, validation, counts)``: int array (n,) of near-duplicate group ids, unique
        across sources (-1 for Kaggle Testing, which is not split); bool array (n,); the
        number of groups that join two sources and of their validation files moved to train.
    """
    n = len(table)
    groups = np.full(n, -1, np.int64)
    validation = np.zeros(n, bool)
    offset = 0
    for source in np.unique(table.source):
        if source == "kaggle_testing":
            continue
        index = np.flatnonzero(table.source == source)  # already sorted file order
        local = near_duplicate_groups(table.phash[index].tolist(), NEAR_DUPLICATE_DISTANCE)
        groups[index] = local + offset
        offset += int(local.max()) + 1
        if len(np.unique(local)) >= 2:
            _, second = group_split(local, VALIDATION_FRACTION, seed=SEED)
            validation[index[second]] = True
    # Near duplicates across sources would leak through a per-source split. The few seen
    # are mostly a CT and an MRI slice of one atlas level (alike in pHash, not copies) and
    # Kaggle slices taken from the atlas; their files are kept out of validation.
    pool = np.flatnonzero(groups >= 0)
    cross = near_duplicate_groups(table.phash[pool].tolist(), NEAR_DUPLICATE_DISTANCE)
    shared = [g for g in np.unique(cross) if len(np.unique(table.source[pool][cross == g])) > 1]
    members = pool[np.isin(cross, shared)]
    moved = int(validation[members].sum())
    validation[members] = False
    return groups, validation, {"cross_source_groups": len(shared), "moved_to_train": moved}


def sample_weights(table: Table, groups: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Each near-duplicate group weighs as one image; both classes weigh the same in total."""
    g = groups[index]
    _, inverse, counts = np.unique(g, return_inverse=True, return_counts=True)
    w = 1.0 / counts[inverse]
    y = table.is_mri[index]
    for label in (True, False):
        w[y == label] *= 0.5 * len(index) / w[y == label].sum()
    return w


def fit_scorer(X: np.ndarray, y: np.ndarray, weight: np.ndarray, C: float) -> LogisticScorer:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(X)
    model = LogisticRegression(C=C, max_iter=3000, tol=1e-6)
    model.fit(scaler.transform(X), y.astype(int), sample_weight=weight)
    return LogisticScorer.from_sklearn(scaler, model)


def fit_check(table: Table, groups: np.ndarray, train: np.ndarray, val: np.ndarray, C: float, args) -> tuple[MRICheck, np.ndarray, dict]:
    """Fits on ``train``, sets the novelty limit and the threshold on ``val``.

    The novelty limit is the quantile over validation brain MRI with its augmented copies;
    the threshold is chosen on the validation files alone (the goal is about real images).

    Returns:
        ``(check, log_odds, choice)``: the check, its log-odds for every row of the table,
        and the threshold choice (see :func:`choose_threshold`).
    """
    X = table.X
    scorer = fit_scorer(X[train], table.is_mri[train], sample_weights(table, groups, train), C)
    novelty = Novelty.fit(table.backbone[train[table.is_mri[train]]], NOVELTY_COMPONENTS)
    val_mri = val[table.is_mri[val]]  # augmented copies too: unusual renderings must pass
    novelty.limit = float(np.quantile(novelty.distance(table.backbone[val_mri]), NOVELTY_QUANTILE))
    novelty.weight = NOVELTY_WEIGHT
    pool_mri = np.concatenate([train, val])
    pool_mri = pool_mri[table.is_mri[pool_mri] & ~table.augmented[pool_mri]]
    colour_limit = COLOUR_LIMIT_FACTOR * float(table.hand[pool_mri, HAND_FEATURES.index("colour_fraction")].max())
    check = MRICheck(scorer, novelty, 0.5, image_size=args.image_size, crop_to_head=args.crop_to_head,
                     colour_limit=colour_limit, colour_weight=COLOUR_WEIGHT)
    log_odds = check.log_odds(X)
    choice = choose_threshold(log_odds, table, groups, val[~table.augmented[val]])
    check.threshold = float(1 / (1 + np.exp(-choice["log_odds"])))
    return check, log_odds, choice


def leave_one_out(table: Table, groups: np.ndarray, validation: np.ndarray, C: float, args) -> list[str]:
    """Each source left out of fitting and of the choices in turn: the share of it flagged.

    The hidden judging sets come from elsewhere; this shows how the check treats a kind
    of image (or an MRI source) it has never seen.
    """
    testing = table.source == "kaggle_testing"
    lines = ["", "Unseen kinds: each source left out of the fit, the novelty limit and the threshold, in turn "
             "(share of its groups flagged, learned check vs the logistic regression alone):", "",
             "| left out | kind | files | groups | flagged (learned) | flagged (regression only) |", "|---|---|---:|---:|---:|---:|"]
    for held in LEAVE_OUT:
        m = table.source == held
        if not m.any():
            continue
        train = np.flatnonzero(~testing & ~validation & ~m)
        val = np.flatnonzero(validation & ~m)
        check, log_odds, choice = fit_check(table, groups, train, val, C, args)
        flagged = log_odds < choice["log_odds"]
        lr = check.scorer.decision_function(table.X)
        lr_choice = choose_threshold(lr, table, groups, val[~table.augmented[val]])
        lr_flagged = lr < lr_choice["log_odds"]
        kind = "brain MRI" if table.is_mri[m][0] else "not brain MRI"
        m = m & ~table.augmented
        lines.append(f"| {held} | {kind} | {int(m.sum())} | {len(np.unique(groups[m]))} | "
                     f"{group_rate(flagged[m], groups[m]):.1%} | {group_rate(lr_flagged[m], groups[m]):.1%} |")
    return lines


def group_rate(flagged: np.ndarray, groups: np.ndarray) -> float:
    """Share flagged with each group counted once (the mean of its files' flags)."""
    if len(flagged) == 0:
        return float("nan")
    _, inverse = np.unique(groups, return_inverse=True)
    return float(np.mean(np.bincount(inverse, weights=flagged) / np.bincount(inverse)))


def goal_rates(log_odds: np.ndarray, table: Table, groups: np.ndarray, index: np.ndarray, t: float) -> tuple[float, float]:
    """(non-MRI flagged, brain MRI flagged) among ``index`` at log-odds threshold t, per group.

    Brain MRI: the mean over the positive sources of each one's group rate (a new
    scanner counts as much as the big Kaggle set); non-MRI: pooled over groups.
    """
    flagged = log_odds[index] < t
    src, y, g = table.source[index], table.is_mri[index], groups[index]
    mri = [group_rate(flagged[(src == s)], g[src == s]) for s in POSITIVE_SOURCES if (src == s).any()]
    return group_rate(flagged[~y], g[~y]), float(np.mean(mri))


def choose_threshold(log_odds: np.ndarray, table: Table, groups: np.ndarray, index: np.ndarray) -> dict:
    """The log-odds threshold for the goal; see the module docstring."""
    candidates = np.unique(np.concatenate([log_odds[index], [-50.0, 50.0]]))
    mids = (candidates[:-1] + candidates[1:]) / 2
    recall, false_flags = [], []
    for t in mids:
        r, f = goal_rates(log_odds, table, groups, index, t)
        recall.append(r)
        false_flags.append(f)
    recall, false_flags = np.array(recall), np.array(false_flags)
    for limit in MAX_FALSE_FLAGS:
        ok = (recall >= TARGET_RECALL) & (false_flags <= limit)
        if ok.any():
            low, high = mids[ok].min(), mids[ok].max()
            t = (low + high) / 2
            r, f = goal_rates(log_odds, table, groups, index, t)
            return {"log_odds": float(t), "range": [float(low), float(high)], "limit": limit, "met": True,
                    "recall": r, "false_flags": f}
    # Goal not met: keep brain MRI false flags within the allowed limit, flag what remains.
    ok = false_flags <= MAX_FALSE_FLAGS[-1]
    t = float(mids[ok].max()) if ok.any() else float(mids[0])
    r, f = goal_rates(log_odds, table, groups, index, t)
    return {"log_odds": t, "range": [t, t], "limit": MAX_FALSE_FLAGS[-1], "met": False, "recall": r, "false_flags": f}


def choose_C(table: Table, groups: np.ndarray, train: np.ndarray) -> tuple[float, dict]:
    """Grouped 5-fold CV on the train part: recall at <= 1% MRI false flags, then log-loss."""
    from sklearn.model_selection import GroupKFold

    X, y = table.X[train], table.is_mri[train]
    results = {}
    for C in C_GRID:
        log_odds = np.zeros(len(train))
        for fit_part, held in GroupKFold(n_splits=5, shuffle=True, random_state=SEED).split(X, y, groups[train]):
            scorer = fit_scorer(X[fit_part], y[fit_part], sample_weights(table, groups, train[fit_part]), C)
            log_odds[held] = scorer.decision_function(X[held])
        # The recall reachable at <= 1% brain-MRI false flags (per group, sources averaged).
        full = np.zeros(len(table))
        full[train] = log_odds
        best = 0.0
        for t in np.quantile(log_odds[y], np.linspace(0, 0.05, 51)):
            r, f = goal_rates(full, table, groups, train, t)
            if f <= MAX_FALSE_FLAGS[0]:
                best = max(best, r)
        p = 1 / (1 + np.exp(-log_odds))
        w = sample_weights(table, groups, train)
        loss = -np.sum(w * np.where(y, np.log(np.clip(p, 1e-12, 1)), np.log(np.clip(1 - p, 1e-12, 1)))) / w.sum()
        results[C] = {"recall_at_1pct": best, "log_loss": float(loss)}
        print(f"  C={C:g}: grouped-CV non-MRI recall at <=1% MRI flagged {best:.3f}, weighted log-loss {loss:.4f}", file=sys.stderr)
    chosen = max(C_GRID, key=lambda c: (round(results[c]["recall_at_1pct"], 3), -results[c]["log_loss"]))
    return chosen, results


def testing_without_near_duplicates(table: Table) -> np.ndarray:
    """bool (n,): Kaggle Testing images with no Training image within pHash distance 4."""
    from tumor_classifier.duplicates import _hamming_matrix

    test = np.flatnonzero(table.source == "kaggle_testing")
    train = table.phash[table.source == "kaggle_training"]
    mask = np.zeros(len(table), bool)
    for start in range(0, len(test), 256):
        block = test[start : start + 256]
        distances = _hamming_matrix(table.phash[block], train)
        mask[block] = distances.min(axis=1) > NEAR_DUPLICATE_DISTANCE
    return mask


def sample_photos() -> list[tuple[str, object]]:
    """(name, image) of the photos shipped with scikit-learn, and scikit-image if installed."""
    from sklearn.datasets import load_sample_image

    photos = [(f"sklearn {name}", load_sample_image(name)) for name in ("china.jpg", "flower.jpg")]
    try:
        from skimage import data as skdata
    except ImportError:
        return photos
    for name in ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "moon", "page", "text", "horse", "hubble_deep_field", "immunohistochemistry", "retina", "brick", "grass", "gravel"):
        try:
            photos.append((f"skimage {name}", getattr(skdata, name)()))
        except Exception:  # noqa: BLE001 - some need a download (pooch): skip those
            continue
    return photos


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data", help="folder holding the four data folders")
    parser.add_argument("--out", default=str(DEFAULT_CHECK_DIR), help="where to write the check")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--crop-to-head", action="store_true")
    parser.add_argument("--C", type=float, default=None, help="skip the grouped-CV choice of C")
    parser.add_argument("--cache", default=os.path.join(os.environ.get("TUMOR_CLASSIFIER_CACHE", Path.home() / ".cache" / "tumor_classifier"), "mri_check"))
    parser.add_argument("--report", default=None, help="also write the report (Markdown) to this file")
    parser.add_argument("--no-save", action="store_true", help="measure only; leave --out alone")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-augment", action="store_true", help="fit on the files alone, no augmented copies")
    parser.add_argument("--nifti", nargs="*", default=[], help="brain MRI volumes (NIfTI, needs nibabel) whose slices are scored as an outside check")
    parser.add_argument("--no-leave-out", action="store_true", help="skip the leave-one-source-out figures (7 more fits)")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    rows = list_sources(Path(args.data))
    print(f"{len(rows)} images; input {args.image_size} px{' head crop' if args.crop_to_head else ''}", file=sys.stderr)
    files = build_table(rows, args.image_size, args.crop_to_head, Path(args.cache).expanduser())
    synthetic = [(f"synthetic:{i}", "synthetic", False) for i in range(SYNTHETIC_IMAGES)]
    files = Table.concat(files, build_table(synthetic, args.image_size, args.crop_to_head, Path(args.cache).expanduser()))
    groups, validation, leak = split(files)
    copies = {True: 0, False: 0} if args.no_augment else AUGMENT_COPIES
    augmented = build_augmented(files, args.image_size, args.crop_to_head, Path(args.cache).expanduser(), copies)
    table = Table.concat(files, augmented)
    groups = np.concatenate([groups, groups[augmented.origin]])
    validation = np.concatenate([validation, validation[augmented.origin]])
    testing = table.source == "kaggle_testing"
    pool = ~testing
    train = np.flatnonzero(pool & ~validation)
    val = np.flatnonzero(validation)

    X = table.X
    if args.C is None:
        C, cv = choose_C(table, groups, train)
    else:
        C, cv = args.C, {}
    check, log_odds, choice = fit_check(table, groups, train, val, C, args)
    threshold = check.threshold

    lines = report(table, groups, validation, log_odds, choice, check, C, cv, leak, args)
    lr = check.scorer.decision_function(X)
    lr_choice = choose_threshold(lr, table, groups, val[~table.augmented[val]])
    lines.append(f"The logistic regression alone (no novelty or colour penalty), threshold chosen the same way: validation non-MRI "
                 f"flagged {lr_choice['recall']:.1%}, brain MRI flagged {lr_choice['false_flags']:.2%}; Kaggle Testing "
                 f"flagged {np.mean(lr[testing] < lr_choice['log_odds']):.2%}.")
    if not args.no_leave_out:
        lines += leave_one_out(table, groups, validation, C, args)
    lines += photo_report(check)
    lines += nifti_report(check, args.nifti)
    lines += cost_report(check, table)
    text = "\n".join(lines)
    print(text)
    if args.report:
        Path(args.report).write_text(text + "\n", encoding="utf-8")
    if not args.no_save:
        check.info = {
            "built_by": "benchmarks/mri_check.py",
            "C": C,
            "threshold_choice": choice,
            "novelty": {"components": NOVELTY_COMPONENTS, "quantile": NOVELTY_QUANTILE, "weight": NOVELTY_WEIGHT},
            "colour_limit_factor": COLOUR_LIMIT_FACTOR,
            "augmented_copies": {"brain_mri": copies[True], "not_brain_mri": copies[False]},
            "train_rows": int(len(train)),
            "validation_files": int((validation & ~table.augmented).sum()),
            "validation": summary_rows(table, groups, validation & ~table.augmented, log_odds < choice["log_odds"]),
        }
        check.save(args.out)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def summary_rows(table: Table, groups: np.ndarray, validation: np.ndarray, flagged: np.ndarray) -> dict:
    out = {}
    for source in np.unique(table.source[validation]):
        m = validation & (table.source == source)
        out[str(source)] = {"files": int(m.sum()), "groups": int(len(np.unique(groups[m]))),
                            "flagged_files": int(flagged[m].sum()), "flagged_group_rate": round(group_rate(flagged[m], groups[m]), 4)}
    return out


def report(table, groups, validation, log_odds, choice, check, C, cv, leak, args) -> list[str]:
    threshold = check.threshold
    flagged = log_odds < choice["log_odds"]
    rule_flagged = ~table.rule_ok
    testing = table.source == "kaggle_testing"
    dedup = testing_without_near_duplicates(table)
    lines = [
        f"# Learned brain-MRI check: {args.image_size} px, {'head crop' if args.crop_to_head else 'no crop'}, C={C:g}",
        "",
        f"Features: {BackboneFeatures.dim} pooled EfficientNet-Lite0 (ImageNet, frozen) + {', '.join(HAND_FEATURES)}; "
        f"novelty penalty: {NOVELTY_COMPONENTS} principal directions, limit at the {NOVELTY_QUANTILE:.1%} quantile of "
        f"validation brain MRI, {NOVELTY_WEIGHT:g} log-odds per unit beyond; colour penalty: {COLOUR_WEIGHT:g} log-odds per "
        f"unit of colour_fraction beyond {COLOUR_LIMIT_FACTOR:g} x the largest on a fitted or validation brain MRI file.",
        f"Near-duplicate groups joining two sources: {leak['cross_source_groups']} (their {leak['moved_to_train']} validation "
        "files were moved to train, so no near copy straddles the split).",
    ]
    if cv:
        lines.append("Grouped 5-fold CV on the train part (recall at <= 1% MRI flagged / weighted log-loss): "
                     + "; ".join(f"C={c:g}: {v['recall_at_1pct']:.3f} / {v['log_loss']:.4f}" for c, v in cv.items()))
    lines += [
        f"Colour limit: colour_fraction {check.colour_limit:.3f}; novelty limit: distance {check.novelty.limit:.3f}.",
        f"Threshold: score >= {threshold:.4f} is brain MRI (log-odds {choice['log_odds']:.3f}; goal range "
        f"[{choice['range'][0]:.3f}, {choice['range'][1]:.3f}] at <= {choice['limit']:.0%} MRI flagged; goal met: {choice['met']}).",
        f"Validation, per group: non-MRI flagged {choice['recall']:.1%}, brain MRI flagged {choice['false_flags']:.2%} (mean over the 3 MRI sources).",
        "",
        "| set | part | files | groups | learned: flagged files | learned: group rate | rule: flagged files | rule: group rate |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]

    def row(name: str, part: str, mask: np.ndarray, g: np.ndarray | None = None, rule: bool = True) -> str:
        g = groups[mask] if g is None else g
        n = int(mask.sum())
        rule_cells = (f"{int(rule_flagged[mask].sum())} ({rule_flagged[mask].mean():.1%}) | {group_rate(rule_flagged[mask], g):.1%}"
                      if rule else "- | -")
        return (f"| {name} | {part} | {n} | {len(np.unique(g))} | {int(flagged[mask].sum())} ({flagged[mask].mean():.1%}) | "
                f"{group_rate(flagged[mask], g):.1%} | {rule_cells} |")

    files = ~table.augmented
    sources = [s for s in ("kaggle_training", "br35h", "aanlib_mri") if (table.source == s).any()]
    negatives = sorted(set(table.source[~table.is_mri]))
    for kind, names in (("brain MRI (should be accepted)", sources), ("not brain MRI (should be flagged)", negatives)):
        lines.append(f"| **{kind}** | | | | | | | |")
        for name in names:
            m = table.source == name
            if (m & validation).any():
                lines.append(row(name, "validation", m & validation & files))
                lines.append(row(name, "validation, augmented copies", m & validation & ~files, rule=False))
            lines.append(row(name, "train (fitted)", m & ~validation & files))
    lines.append("| **Kaggle Testing (never fitted, never chosen on)** | | | | | | | |")
    test_groups = near_duplicate_groups(table.phash[testing].tolist(), NEAR_DUPLICATE_DISTANCE)
    lines.append(row("kaggle_testing", "all", testing, test_groups))
    for cls in ("glioma", "meningioma", "notumor", "pituitary"):
        m = testing & (np.char.find(table.paths.astype(str), f"/Testing/{cls}/") >= 0)
        lines.append(row(f"kaggle_testing {cls}", "all", m, test_groups[m[testing]]))
    lines.append(row("kaggle_testing", "no near duplicate in Training", dedup, test_groups[dedup[testing]]))
    val = validation & files
    testing = testing | table.augmented  # below: files of the fitting pool only
    neg_val, pos_val = val & ~table.is_mri, val & table.is_mri
    lines += [
        "",
        f"Validation split: {int(val.sum())} files in {len(np.unique(groups[val]))} groups "
        f"({int(pos_val.sum())} brain MRI in {len(np.unique(groups[pos_val]))} groups, {int(neg_val.sum())} non-MRI in "
        f"{len(np.unique(groups[neg_val]))} groups); train: {int((~val & ~testing).sum())} files in "
        f"{len(np.unique(groups[~val & ~testing]))} groups.",
        f"Validation, pooled over non-MRI files: learned flags {flagged[neg_val].mean():.1%}, rule flags {rule_flagged[neg_val].mean():.1%}; "
        f"over brain-MRI files: learned {flagged[pos_val].mean():.2%}, rule {rule_flagged[pos_val].mean():.2%}.",
        f"Augmented copies (geometry, skull stripping, windowing, gamma, low resolution, noise; see augment()): "
        f"{int(table.augmented.sum())}, of which {int((table.augmented & validation).sum())} of validation images; "
        f"validation copies flagged: brain MRI {flagged[table.augmented & validation & table.is_mri].mean():.2%}, "
        f"non-MRI {flagged[table.augmented & validation & ~table.is_mri].mean():.1%}.",
    ]
    return lines


def photo_report(check: MRICheck) -> list[str]:
    lines = ["", "| photo | learned score | learned | rule |", "|---|---:|---|---|"]
    for name, image in sample_photos():
        score = float(check.score([image])[0])
        rule = assess_image(image).looks_like_mri
        lines.append(f"| {name} | {score:.4f} | {'accepted' if score >= check.threshold else 'flagged'} | "
                     f"{'accepted' if rule else 'flagged'} |")
    return lines


def nifti_report(check: MRICheck, volumes: list[str]) -> list[str]:
    """Scores axial, coronal and sagittal slices of brain MRI volumes (an outside check, never fitted).

    Each volume is reoriented to RAS (nibabel), sliced at 30-70% of each axis in steps of
    10%, windowed at its 1st-99th percentiles and shown anterior / superior up.
    """
    if not volumes:
        return []
    import nibabel as nib

    lines = ["", "| volume | plane | slices | flagged | lowest score |", "|---|---|---:|---:|---:|"]
    for path in volumes:
        volume = nib.as_closest_canonical(nib.load(path)).get_fdata()
        volume = volume[..., 0] if volume.ndim == 4 else volume
        for axis, plane in ((2, "axial"), (1, "coronal"), (0, "sagittal")):
            slices = []
            for fraction in (0.3, 0.4, 0.5, 0.6, 0.7):
                plane_data = np.rot90(np.take(volume, int(fraction * volume.shape[axis]), axis=axis))
                low, high = np.percentile(plane_data, [1, 99])
                slices.append(np.round(np.clip((plane_data - low) / max(high - low, 1e-9), 0, 1) * 255).astype(np.uint8))
            scores = check.score(slices)
            lines.append(f"| {Path(path).name} | {plane} | {len(slices)} | {int((scores < check.threshold).sum())} | {scores.min():.3f} |")
    return lines


def cost_report(check: MRICheck, table: Table) -> list[str]:
    """ms per image on this process's threads: decode + features + score, one image per call."""
    import torch

    paths = table.paths[table.source == "kaggle_testing"][:40]
    check.score([paths[0]])  # builds the backbone
    timings = []
    for _ in range(3):
        start = time.perf_counter()
        for p in paths:
            check.score([p])
        timings.append((time.perf_counter() - start) / len(paths))
    start = time.perf_counter()
    check.score(list(paths))
    batch = (time.perf_counter() - start) / len(paths)
    return ["", f"Cost on {torch.get_num_threads()} thread(s), Kaggle Testing JPEGs: {1000 * min(timings):.1f} ms an image one "
            f"at a time (best of 3 passes over 40; median pass {1000 * float(np.median(timings)):.1f} ms), "
            f"{1000 * batch:.1f} ms an image in one call of 40."]


if __name__ == "__main__":
    sys.exit(main())
