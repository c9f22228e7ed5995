"""The ``tumor-classifier`` command: predict, evaluate, data-report, serve.

Examples:
    tumor-classifier predict scan.jpg other.png --explain gradcam --out heatmaps/
    tumor-classifier predict scans/*.jpg --json
    tumor-classifier evaluate ../shared/data/brain-tumor-mri --out report/
    tumor-classifier data-report ../shared/data/brain-tumor-mri
    tumor-classifier serve --port 7860
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Sequence

from .data import NO_TUMOR
from .exceptions import TumorClassifierError
from .metrics import tumor_probability

NOT_DIAGNOSTIC = "Research use only: not a medical device, not for diagnosis."


def _load(model: str | None):
    from .classifier import TumorClassifier

    return TumorClassifier.from_pretrained(model)


def _predict(args: argparse.Namespace) -> int:
    from .preprocessing import load_image

    classifier = _load(args.model)
    readable, grays, failures = [], [], []
    for path in args.images:
        try:
            grays.append(load_image(path))  # decoded once: the check and the quality flag share it
            readable.append(path)
        except TumorClassifierError as error:
            failures.append((path, str(error)))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
    rows = []
    if readable:
        if args.explain:
            explanations = classifier.explain(readable, method=args.explain)
        else:
            explanations = None
            proba = classifier.predict_proba(readable)
            tumor_probabilities = tumor_probability(proba, classifier.classes_) if NO_TUMOR in classifier.classes_ else None
        for index, path in enumerate(readable):
            if explanations is not None:
                e = explanations[index]
                probabilities, label, tumor, uncertain = e.probabilities, e.label, e.tumor_probability, e.uncertain
                quality = e.quality
                if args.out:
                    # The index keeps a/scan.jpg and b/scan.jpg from overwriting each other.
                    target = Path(args.out) / f"{index:03d}_{Path(path).stem}_{e.method}.png"
                    e.overlay.save(target)
            else:
                probabilities = {str(c): float(p) for c, p in zip(classifier.classes_, proba[index])}
                label = max(probabilities, key=probabilities.get)
                tumor = float(tumor_probabilities[index]) if tumor_probabilities is not None else math.nan
                uncertain = probabilities[label] < classifier.uncertainty_threshold
                from .quality import assess_image

                quality = assess_image(path, gray=grays[index])
            row = {
                "image": str(path),
                "label": label,
                "probabilities": probabilities,
                "tumor_probability": tumor,
                "uncertain": bool(uncertain),
                "looks_like_mri": quality.looks_like_mri,
                "warnings": quality.reasons,
            }
            if explanations is not None and args.out:
                row["overlay"] = str(target)
            rows.append(row)
    if args.json:
        for row in rows:
            print(json.dumps(row))
        for path, message in failures:
            print(json.dumps({"image": str(path), "error": message}))
    else:
        classes = list(classifier.classes_)
        print(f"{'image':<40} {'class':<11} " + " ".join(f"{c[:10]:>10}" for c in classes) + "  tumor")
        for row in rows:
            flags = []
            if row["uncertain"]:
                flags.append("UNCERTAIN")
            if not row["looks_like_mri"]:
                flags.append("MAY NOT BE A BRAIN MRI: " + "; ".join(row["warnings"]))
            print(
                f"{Path(row['image']).name[:40]:<40} {row['label']:<11} "
                + " ".join(f"{row['probabilities'][c]:>10.3f}" for c in classes)
                + f"  {row['tumor_probability']:.3f}"
                + (f"  [{', '.join(flags)}]" if flags else "")
                + (f"  -> {row['overlay']}" if "overlay" in row else "")
            )
        print(NOT_DIAGNOSTIC)
    for path, message in failures:
        print(f"error: {message}", file=sys.stderr)
    return 1 if failures else 0


def _print_figures(metrics: dict, splits: Sequence[str]) -> None:
    for name in splits:
        if name in metrics:
            m = metrics[name]
            print(f"{name:<30} n={m['n']:<5} accuracy={m['accuracy']:.4f} macro F1={m['f1_macro']:.4f}")


def _evaluate(args: argparse.Namespace) -> int:
    from .evaluation import evaluate_dataset

    classifier = _load(args.model)
    result = evaluate_dataset(classifier, args.data, args.out, dedup=True if args.dedup else (False if args.no_dedup else None), batch_size=args.batch_size)
    _print_figures(result.metrics, ("test", "test_without_near_duplicates"))
    print(f"report written to {args.out}: " + ", ".join(p.name for p in result.files))
    return 0


def _ensemble(args: argparse.Namespace) -> int:
    from .training import make_ensemble

    result = make_ensemble(args.members, args.out, data_dir=args.data)
    calibration = result.metrics["calibration"]
    print(f"ensemble of {len(args.members)} written to {args.out}: temperature {calibration['temperature']:.3f}, "
          f"validation ECE {calibration['validation_ece_before']:.4f} -> {calibration['validation_ece_after']:.4f}")
    _print_figures(result.metrics, ("validation", "test", "test_without_near_duplicates"))
    return 0


def _data_report(args: argparse.Namespace) -> int:
    from .data import describe_folder

    report = describe_folder(args.directory, check_duplicates=not args.no_duplicates)
    print(report.to_text())
    return 0


def _serve(args: argparse.Namespace) -> int:
    from .app import serve

    serve(model=args.model, host=args.host, port=args.port)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tumor-classifier", description="Brain-tumor MRI classification. " + NOT_DIAGNOSTIC)
    commands = parser.add_subparsers(dest="command", required=True)
    model_help = "Model folder or Hub id (default: the model shipped with the package)."

    predict = commands.add_parser("predict", help="Classify images, optionally with heatmaps.")
    predict.add_argument("images", nargs="+", help="Image files (JPEG, PNG, TIFF, BMP ...).")
    predict.add_argument("--model", help=model_help)
    predict.add_argument("--explain", choices=["auto", "gradcam", "integrated_gradients", "occlusion"], help="Attribution method.")
    predict.add_argument("--out", help="Folder for the overlay PNGs (with --explain).")
    predict.add_argument("--json", action="store_true", help="One JSON object per line instead of a table.")
    predict.set_defaults(handler=_predict)

    evaluate = commands.add_parser("evaluate", help="Evaluate on a labelled folder (Kaggle layout) or Hub data set; write a report.")
    evaluate.add_argument("data", help="Folder or Hub data set id.")
    evaluate.add_argument("--model", help=model_help)
    evaluate.add_argument("--out", default="evaluation", help="Report folder (default: ./evaluation).")
    dedup = evaluate.add_mutually_exclusive_group()
    dedup.add_argument("--dedup", action="store_true", help="Require the near-duplicate-free evaluation (needs a training split).")
    dedup.add_argument("--no-dedup", action="store_true", help="Skip the near-duplicate-free evaluation.")
    evaluate.add_argument("--batch-size", type=int, default=64)
    evaluate.set_defaults(handler=_evaluate)

    ensemble = commands.add_parser("ensemble", help="Combine train_hf.py model folders into one calibrated ensemble folder with its report.")
    ensemble.add_argument("members", nargs="+", help="Model folders written by train_hf.py (same preprocessing, classes and validation split).")
    ensemble.add_argument("--out", required=True, help="The ensemble folder to write.")
    ensemble.add_argument("--data", help="The data the members trained on (default: the folder their train_config.json names).")
    ensemble.set_defaults(handler=_ensemble)

    report = commands.add_parser("data-report", help="Class counts, image modes and sizes, train/test duplicates.")
    report.add_argument("directory")
    report.add_argument("--no-duplicates", action="store_true", help="Skip hashing (faster).")
    report.set_defaults(handler=_data_report)

    serve = commands.add_parser("serve", help="Run the Gradio app with its REST endpoint.")
    serve.add_argument("--model", help=model_help)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=7860)
    serve.set_defaults(handler=_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tumor-classifier`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    if getattr(args, "out", None) and getattr(args, "explain", "x") is None and args.command == "predict":
        print("note: --out is used with --explain; no overlays are written without it.", file=sys.stderr)
    try:
        return args.handler(args)
    except TumorClassifierError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
