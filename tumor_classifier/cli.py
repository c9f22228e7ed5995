"""The ``tumor-classifier`` command: predict, evaluate, data-report, serve.

Examples:
    tumor-classifier predict scan.jpg other.png --explain gradcam --out heatmaps/
    tumor-classifier predict scans/*.jpg --json
    tumor-classifier predict scans/*.jpg --backend onnx
    tumor-classifier export --format onnx default exported/ --quantize
    tumor-classifier predict scan.nii.gz --slices --explain auto --out heatmaps/
    tumor-classifier predict archive/ --recursive --output results.parquet
    tumor-classifier evaluate ../shared/data/brain-tumor-mri --out report/
    tumor-classifier data-report ../shared/data/brain-tumor-mri
    tumor-classifier serve --port 7860
    tumor-classifier serve --backend onnx
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Sequence

from .data import NO_TUMOR
from .exceptions import InvalidArgumentError, MissingDependencyError, TumorClassifierError
from .decoding import ACCEPTED_FORMATS_TEXT

NOT_DIAGNOSTIC = "Research use only: not a medical device, not for diagnosis."
#: ``attributions.METHODS`` and ``auto``, written out so that ``--help`` imports no torch
#: (tests/test_cli.py checks that the two lists agree).
EXPLAIN_METHODS = ("auto", "gradcam", "smoothcam_contrast", "smoothgrad", "smoothgrad_contrast", "hirescam", "gradcam_fine", "gradcam_multiscale",
                   "gradcam_plusplus", "integrated_gradients", "occlusion")


#: The name of the shipped model wherever a command takes a model (--model, MODEL, ensemble members).
DEFAULT_MODEL = "default"


def _model_source(model: str | None) -> str | None:
    """A model as the user named it, as ``from_pretrained`` takes it: ``None`` for the shipped one."""
    return None if model == DEFAULT_MODEL else model


def _load(model: str | None, backend: str = "torch"):
    from .classifier import TumorClassifier

    return TumorClassifier.from_pretrained(_model_source(model), backend=backend)


def _figure_text(explanation) -> tuple[str, str]:
    """The exported figure's title and what its map is evidence for.

    An input the MRI check flags gets no class and no probability, as in the table: they
    would read as a tumor type for something that is not a brain MRI.
    """
    from .verdict import format_probability

    if not explanation.verdict.brain_mri:
        return f"{explanation.verdict.headline}: no tumor type given; not a diagnostic device", "the model's top class"
    probabilities = explanation.probabilities
    explained = explanation.explained  # the class the map belongs to
    return f"{explanation.verdict.title} ({explained} {format_probability(probabilities[explained])}); not a diagnostic device", explained


def _figure(explanation):
    """The exported heatmap: the overlay with its verdict written above and a colour bar below."""
    from .visualization import annotate

    title, target = _figure_text(explanation)
    return annotate(explanation.overlay, title=title, target=target, method=explanation.method)


def _predict(args: argparse.Namespace) -> int:
    from .decoding import decode

    if args.output or args.recursive:
        return _predict_archive(args)
    if args.out and args.explain:  # without --explain nothing goes there, not even the folder
        _overlay_folder(args.out)  # before the model loads: a bad --out costs nothing
    classifier = _load(args.model, args.backend)
    inputs = [file for path in args.images for file in (_brats_sequences(path) or [path])]
    volumes = [path for path in inputs if _is_volume(path)]
    volume_failures = _predict_volumes(classifier, volumes, args) if volumes else 0
    images = [path for path in inputs if path not in volumes]
    if not images:
        if not args.json:
            print(NOT_DIAGNOSTIC)
        return 1 if volume_failures else 0
    readable, decoded, failures = [], [], []
    for path in images:
        if _is_folder(path):  # not a DICOM series nor a BraTS case (those went to the volumes)
            failures.append((path, f"{path} is a directory with no DICOM series or BraTS case in it; to classify every "
                                   "image and volume below it, add --recursive --output results.parquet (or .csv, .jsonl)."))
            continue
        try:
            decoded.append(decode(path))  # decoded once: the model, the MRI check and the overlay share it
            readable.append(path)
        except TumorClassifierError as error:
            failures.append((path, str(error)))
    rows = []
    if readable:
        if args.explain:
            explanations = classifier.explain(decoded, method=args.explain)
            verdicts = [e.verdict for e in explanations]
        else:
            explanations, verdicts = None, classifier.verdicts(decoded)
        for index, (path, verdict) in enumerate(zip(readable, verdicts)):
            probabilities = verdict.probabilities
            row = {
                "image": str(path),
                "label": verdict.label,
                "verdict": verdict.kind,
                "message": verdict.text,
                "probabilities": probabilities,
                # None (JSON null) without a no-tumour class: NaN is not JSON.
                "tumor_probability": 1.0 - probabilities[NO_TUMOR] if NO_TUMOR in probabilities else None,
                "uncertain": max(probabilities.values()) < classifier.uncertainty_threshold,
                "looks_like_mri": verdict.brain_mri,
                "mri_score": verdict.mri_score,
                "warnings": list(verdict.reasons),
            }
            if explanations is not None and args.out:
                # The index keeps a/scan.jpg and b/scan.jpg from overwriting each other.
                target = Path(args.out) / f"{index:03d}_{Path(path).stem}_{explanations[index].method}.png"
                _figure(explanations[index]).save(target)
                row["overlay"] = str(target)
            rows.append(row)
    if args.json:
        for row in rows:
            print(json.dumps(row))
        for path, message in failures:
            print(json.dumps({"image": str(path), "error": message}))
    elif rows:  # no table over no rows: the errors below are all there is
        classes = list(classifier.classes_)
        names = _table_names([row["image"] for row in rows])
        print(f"{'image':<40} {'class':<13} " + " ".join(f"{c[:10]:>10}" for c in classes) + "  tumor  verdict")
        for row, name in zip(rows, names):
            # A flagged input shows no probabilities: they would read as a tumor type.
            shown = row["verdict"] != "not_brain_mri"
            print(
                f"{name:<40} {row['label']:<13} "
                + " ".join(f"{row['probabilities'][c]:>10.3f}" if shown else f"{'-':>10}" for c in classes)
                + (f"  {row['tumor_probability']:.3f}" if shown and row["tumor_probability"] is not None else "      -")
                + f"  {row['message']}"
                + (f"  -> {row['overlay']}" if "overlay" in row else "")
            )
    if rows and not args.json:
        print(NOT_DIAGNOSTIC)
    for path, message in failures:
        print(f"error: {message}", file=sys.stderr)
    return 1 if failures or volume_failures else 0


def _table_names(paths: Sequence[str], width: int = 40) -> list[str]:
    """The table's image column: file names, or the paths as given when two names are alike
    (a/scan.jpg and b/scan.jpg); a longer one keeps its end, where the name is."""
    names = [Path(path).name for path in paths]
    shown = names if len(set(names)) == len(names) else [str(path) for path in paths]
    return [text if len(text) <= width else "..." + text[-(width - 3):] for text in shown]


def _overlay_folder(out: str) -> Path:
    """``--out``, created if missing; refused when it cannot hold the overlay PNGs.

    Raises:
        InvalidArgumentError: ``out`` is a file, cannot be created, or is not writable.
    """
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise InvalidArgumentError(f"--out {out} is a file, not a folder; give a folder for the overlay PNGs (it is created if missing).")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InvalidArgumentError(
            f"--out {out} cannot be made a folder for the overlay PNGs ({error.strerror or error}); "
            "give a folder that exists or can be created."
        ) from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InvalidArgumentError(f"--out {out} is a folder this user cannot write to; give a writable folder for the overlay PNGs.")
    return folder


def _predict_archive(args: argparse.Namespace) -> int:
    """``--output``: one row per file into a results file (tumor_classifier.archive); unreadable files are rows too.

    Exits 1, like a plain ``predict`` with an unreadable file, when the results file holds
    an error row (resumed ones included), after a one-line count on stderr; 0 otherwise.
    """
    from .archive import check_output, parts_folder, predict_archive

    if not args.output or args.explain or args.slices or args.json:
        raise InvalidArgumentError("--recursive and --output write one row per file to a results file: give --output results.parquet "
                                   "(or .csv, .jsonl) and leave out --explain, --slices and --json, which are for printed results.")
    if args.series_uid:
        raise InvalidArgumentError("--series-uid chooses a series of one DICOM folder; with --output each DICOM series gets its own "
                                   "row (a folder holding several, a row per series, named in the series_uid column): leave out --series-uid.")
    check_output(args.output)  # before the model loads
    classifier = _load(args.model, args.backend)
    try:
        summary = predict_archive(classifier, args.images, args.output, recursive=args.recursive, plane=args.plane, time_point=args.time_point)
    except KeyboardInterrupt:
        print(f"\ninterrupted: the rows predicted so far are kept in {parts_folder(args.output)}; "
              "run the same command again to resume.", file=sys.stderr)
        return 130  # the shell's status for a run stopped by Ctrl-C
    print(summary.text)
    # Only process 0 knows the merged output, and only it may fail the run: under torchrun
    # a process that exits non-zero gets the others stopped, possibly in the middle of the merge.
    if summary.errors_written:
        files, errors = summary.rows_written, summary.errors_written
        print(f"error: {files} file{'' if files == 1 else 's'}, {errors} error{'' if errors == 1 else 's'} "
              f"(see the error column of {summary.output})", file=sys.stderr)
        return 1
    return 0


def _is_folder(path: str) -> bool:
    """Whether ``path`` is a folder; a path the system refuses (too long, no permission) is not: the image reader says why."""
    try:
        return Path(path).is_dir()
    except OSError:
        return False


def _brats_sequences(path: str) -> list[str]:
    """A BraTS case folder's sequence files (t1n, t1c, t2w, t2f), each predicted as a volume; [] for other paths."""
    from .volumes import BRATS_SEQUENCES, find_brats_files

    try:
        files = find_brats_files(path) if Path(path).is_dir() else {}
    except (OSError, TumorClassifierError):  # unreadable, or two files for one sequence: the folder reader says what it is
        return []
    return [str(files[name]) for name in BRATS_SEQUENCES if name in files]


def _is_volume(path: str) -> bool:
    """A folder holding DICOM, or a file the archive walk lists as a volume (named or sniffed as NIfTI /
    DICOM, or a zip, whose reader says to unzip it); other paths are images."""
    from .archive import volume_kind
    from .volumes import sniff

    candidate = Path(path)
    try:
        if candidate.is_dir():  # a series folder: some DICOM among its first files
            files = [f for _, f in zip(range(50), (f for f in candidate.rglob("*") if f.is_file()))]
            return any(sniff(f) == "dicom" for f in files)
        return volume_kind(candidate) is not None
    except OSError:  # a name too long, no permission ...: the image path reports it
        return False


def _volume_figure(result):
    """The exported key-slice heatmap, framed as :func:`_figure` frames an image's, with the volume's verdict
    and, when the plane is known, the patient's directions lettered at the edges."""
    from .visualization import annotate
    from .volume_slices import mark_edges

    title, target = result.figure_text()
    overlay = result.explanation.overlay if result.volume.plane is None else mark_edges(result.explanation.overlay, result.volume.plane)
    return annotate(overlay, title=title, target=target, method=result.explanation.method)


def _predict_volumes(classifier, paths: Sequence[str], args: argparse.Namespace) -> int:
    """Prints each volume's verdict (and with --slices its per-slice table); returns the failure count."""
    from .plots import plot_slice_probabilities
    from .volume_formats import volume_stem

    out = Path(args.out) if args.out else None
    failures = 0
    for index, path in enumerate(paths):
        try:
            result = classifier.predict_volume(
                path,
                plane=args.plane,
                series_uid=args.series_uid,
                time_point=args.time_point,
                explain=bool(args.explain),
                method=args.explain or "auto",
            )
        except TumorClassifierError as error:
            failures += 1
            print(json.dumps({"volume": str(path), "error": str(error)}) if args.json else f"error: {path}: {error}", file=sys.stdout if args.json else sys.stderr)
            continue
        written = {}
        if out is not None and args.explain:
            out.mkdir(parents=True, exist_ok=True)
            # The index keeps a/t1c.nii.gz and b/t1c.nii.gz apart; a series folder keeps its dotted UID name.
            stem = f"{index:03d}_" + (volume_stem(Path(path).name) or "volume")
            written["overlay"] = str(out / f"{stem}_key_slice_{result.key_slice:03d}_{result.explanation.method}.png")
            _volume_figure(result).save(written["overlay"])
            written["plot"] = str(
                plot_slice_probabilities(
                    result.slice_tumour_probability,
                    out / f"{stem}_slice_probabilities.png",
                    threshold=result.threshold,
                    key_slice=result.key_slice,
                    runs=result.shown_runs,
                    title=result.plot_title(Path(path).name),
                )
            )
        if args.json:
            row = {
                "volume": str(path),
                "label": result.label,
                "verdict": result.verdict,
                "model_label": result.model_label,
                "tumour": result.tumour_answer,
                "tumor_probability": result.tumour_probability,
                "probabilities": result.probabilities,
                "key_slice": result.key_slice,
                "runs": result.runs,
                "slices": len(result.classified),
                "classified_slices": int(result.classified.sum()),
                "plane": result.volume.plane,
                "looks_like_mri": result.looks_like_mri,
                "warnings": result.mri_reasons + result.notes,
                **written,
            }
            if args.slices:
                row["slice_table"] = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in result.slice_table()]
            print(json.dumps(row))
            continue
        reasons = f" ({'; '.join(result.mri_reasons)})" if not result.looks_like_mri else ""
        print(f"{path}: {result.headline}{reasons}")
        print(f"  {result.summary()}")
        for note in result.notes:
            print(f"  note: {note}")
        for name, target in written.items():
            print(f"  {name}: {target}")
        if args.slices:
            classes = list(result.probabilities)
            if not result.looks_like_mri:
                print("  (not a brain MRI? the per-slice probabilities below are the model's output, no answer about a tumor)")
            print("  slice  tumor " + " ".join(f"{c[:10]:>10}" for c in classes))
            for row in result.slice_table():
                if row["classified"]:
                    print(f"  {row['slice']:>5}  {row['tumor_probability']:.3f} " + " ".join(f"{row[c]:>10.3f}" for c in classes))
                else:
                    print(f"  {row['slice']:>5}  (not at brain level, not classified)")
    return failures


def _print_figures(metrics: dict, splits: Sequence[str]) -> None:
    for name in splits:
        if name in metrics:
            m = metrics[name]
            print(f"{name:<41} n={m['n']:<5} accuracy={m['accuracy']:.4f} macro F1={m['f1_macro']:.4f}")


def _evaluate(args: argparse.Namespace) -> int:
    from .evaluation import check_report_folder, evaluate_dataset

    if args.batch_size < 1:
        raise InvalidArgumentError(f"--batch-size {args.batch_size}: give a positive number of images per forward pass (default 64).")
    check_report_folder(args.out, name="--out")  # before the model loads and the images are predicted
    classifier = _load(args.model, args.backend)
    result = evaluate_dataset(
        classifier, args.data, args.out, dedup=True if args.dedup else (False if args.no_dedup else None),
        batch_size=args.batch_size, suspects=args.suspects,
    )
    _print_figures(result.metrics, result.subsets)
    print(f"report written to {args.out}: " + ", ".join(p.name for p in result.files))
    return 0


def _ensemble(args: argparse.Namespace) -> int:
    from .classifier_storage import DEFAULT_MODEL_DIR
    from .training import make_ensemble

    members = [DEFAULT_MODEL_DIR if member == DEFAULT_MODEL else member for member in args.members]
    result = make_ensemble(members, args.out, data_dir=args.data)
    calibration = result.metrics["calibration"]
    print(f"ensemble of {len(args.members)} written to {args.out}: temperature {calibration['temperature']:.3f}, "
          f"validation ECE {calibration['validation_ece_before']:.4f} -> {calibration['validation_ece_after']:.4f}")
    _print_figures(result.metrics, ("validation", "test", "test_without_near_duplicates"))
    return 0


def _export(args: argparse.Namespace) -> int:
    from .classifier import TumorClassifier
    from .model_folder import check_writable_folder

    from .onnx_export import check_tolerance

    check_tolerance(args.tolerance, name="--tolerance")  # both before minutes of loading and exporting
    check_writable_folder(args.out, name="OUT", what="the graph")
    classifier = TumorClassifier.from_pretrained(_model_source(args.model))
    result = classifier.export_onnx(args.out, images=args.images, tolerance=args.tolerance, quantize=args.quantize)
    print(result.summary())
    return 0


def _data_report(args: argparse.Namespace) -> int:
    from .data import describe_folder

    report = describe_folder(args.directory, check_duplicates=not args.no_duplicates)
    print(report.to_text())
    return 0


def _export_slices(args: argparse.Namespace) -> int:
    from .volume_export import export_slices

    fraction = {} if args.min_head_fraction is None else {"min_head_fraction": args.min_head_fraction}
    written = export_slices(args.volume, args.out, planes=args.planes, step=args.step, series_uid=args.series_uid,
                            time_point=args.time_point, **fraction)
    counts = {plane: sum(path.stem.split("_")[-2] == plane for path in written) for plane in args.planes}
    print(f"{len(written)} slices written to {args.out} ({', '.join(f'{n} {plane}' for plane, n in counts.items())}).")
    return 0


def _serve(args: argparse.Namespace) -> int:
    # The entry point, not the library, sets these: before Gradio is imported, which reads
    # its switch then. (The package's own import may have read huggingface_hub's already;
    # Hub telemetry only rides on Hub downloads.)
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    try:
        from .app import serve
    except ModuleNotFoundError as error:
        if (error.name or "").split(".")[0] not in ("gradio", "fastapi", "uvicorn", "starlette", "pydantic"):
            raise
        raise MissingDependencyError(
            f"`tumor-classifier serve` needs the app's packages ({error.name} is not installed): "
            'pip install "tumor-classifier[app]"'
        ) from None

    serve(model=_model_source(args.model), host=args.host, port=args.port, backend=args.backend)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tumor-classifier", description="Brain-tumor MRI classification. " + NOT_DIAGNOSTIC)
    commands = parser.add_subparsers(dest="command", required=True)
    model_help = (f"Model folder or Hub id; '{DEFAULT_MODEL}' (or leaving it out) for the model shipped with the package "
                  f"(./{DEFAULT_MODEL} for a folder of that name).")
    backend_help = ("Inference engine: torch (default) or onnx (onnxruntime, pip install \"tumor-classifier[onnx]\"; "
                    "the graph is the model folder's model.onnx or exported once into a cache). Heatmaps always use torch.")

    predict = commands.add_parser(
        "predict", help="Classify images, optionally with heatmaps.",
        epilog="Exit status: 0 when every file was read; 1 when some could not be (each named on stderr, or with --output "
               "a row with an error and a count on stderr; the other files' results are still given); 2 when the command is "
               "refused (bad arguments, a model that cannot be loaded).",
    )
    predict.add_argument("images", nargs="+", help=f"Image files ({ACCEPTED_FORMATS_TEXT}) or volumes (.nii, .nii.gz, DICOM file or series folder); with --output also folders to walk.")
    predict.add_argument("--model", help=model_help)
    predict.add_argument("--explain", nargs="?", const="auto", choices=EXPLAIN_METHODS, help="Attribution method (bare --explain: auto).")
    predict.add_argument("--out", help="Folder for the overlay PNGs (with --explain); for a volume also its probability-along-slices plot.")
    predict.add_argument("--json", action="store_true", help="One JSON object per line instead of a table.")
    predict.add_argument("--backend", choices=["torch", "onnx"], default="torch", help=backend_help)
    predict.add_argument("--slices", action="store_true", help="Volumes: also print the per-slice probabilities.")
    predict.add_argument("--plane", choices=["axial", "coronal", "sagittal"], default="axial", help="Volumes: the plane to cut (default axial).")
    predict.add_argument("--series-uid", help="DICOM folders holding several series: the SeriesInstanceUID to read.")
    predict.add_argument("--time-point", type=int, help="4-D volumes: the time point (or channel) to read, 0-based (with --output: in each 4-D series; 3-D volumes are read as they are).")
    predict.add_argument("--output", help="Write one row per file to this .parquet, .csv or .jsonl (resumes: files already "
                         "in it are skipped; under torchrun / accelerate launch each process takes a share). Unreadable files "
                         "get a row with an error; then the exit status is 1.")
    predict.add_argument("--recursive", action="store_true", help="With --output: walk the folders' subfolders too.")
    predict.set_defaults(handler=_predict)

    evaluate = commands.add_parser("evaluate", help="Evaluate on a labelled folder (Kaggle layout) or Hub data set; write a report.")
    evaluate.add_argument("data", help="Folder or Hub data set id.")
    evaluate.add_argument("--model", help=model_help)
    evaluate.add_argument("--out", default="evaluation", help="Report folder (default: ./evaluation).")
    dedup = evaluate.add_mutually_exclusive_group()
    dedup.add_argument("--dedup", action="store_true", help="Require the near-duplicate-free evaluation (needs a training split).")
    dedup.add_argument("--no-dedup", action="store_true", help="Skip the near-duplicate-free evaluation.")
    evaluate.add_argument("--batch-size", type=int, default=64)
    evaluate.add_argument(
        "--suspects", metavar="CSV",
        help="A reviewed list of suspect test labels (file,action,new_label,reason; e.g. configs/label_audit_testing.csv): "
        "the report adds the test figures without those images beside the full split's.",
    )
    evaluate.add_argument("--backend", choices=["torch", "onnx"], default="torch", help=backend_help)
    evaluate.set_defaults(handler=_evaluate)

    ensemble = commands.add_parser("ensemble", help="Combine train_hf.py model folders into one calibrated ensemble folder with its report.")
    ensemble.add_argument("members", nargs="+", help="Model folders written by train_hf.py (same preprocessing, classes and validation "
                          f"split); '{DEFAULT_MODEL}' for the shipped model.")
    ensemble.add_argument("--out", required=True, help="The ensemble folder to write.")
    ensemble.add_argument("--data", help="The data the members trained on (default: the folder their train_config.json names).")
    ensemble.set_defaults(handler=_ensemble)

    export = commands.add_parser("export", help="Export a model (an ensemble as one graph) to ONNX, verified against torch.")
    export.add_argument("--format", choices=["onnx"], required=True, help="Export format (onnx: model.onnx, opset 20, dynamic batch).")
    export.add_argument("model", metavar="MODEL", help=f"Model folder or Hub id; '{DEFAULT_MODEL}' for the shipped model.")
    export.add_argument("out", metavar="OUT", help="Folder to write model.onnx, onnx_config.json and preprocessor_config.json to "
                        "(the model folder itself, for from_pretrained(..., backend='onnx') with no export step).")
    export.add_argument("--images", nargs="+", help="Real images to verify the graph on (default: the package's four examples).")
    export.add_argument("--tolerance", type=float, default=1e-4, help="Largest accepted probability difference against torch.")
    export.add_argument("--quantize", action="store_true", help="Also write model.int8.onnx (dynamic int8 MatMul/Gemm) with its agreement.")
    export.set_defaults(handler=_export)

    report = commands.add_parser("data-report", help="Class counts, image modes and sizes, train/test duplicates.")
    report.add_argument("directory")
    report.add_argument("--no-duplicates", action="store_true", help="Skip hashing (faster).")
    report.set_defaults(handler=_data_report)

    slices = commands.add_parser(
        "export-slices", help="Write a volume's head slices, in each plane, as PNG images (e.g. healthy slices for "
        "train_hf.py --no_tumour_dirs), in the grey representation predict classifies.")
    slices.add_argument("volume", help="A NIfTI file, a DICOM file or a DICOM series folder.")
    slices.add_argument("--out", required=True, help="Folder to write <volume>_<plane>_<slice>.png into.")
    slices.add_argument("--planes", nargs="+", choices=["axial", "coronal", "sagittal"], default=["axial", "coronal", "sagittal"])
    slices.add_argument("--step", type=int, default=1, help="Write every STEP-th head slice (default 1: all).")
    slices.add_argument("--min-head-fraction", type=float,
                        help="Share of the fullest slice's head area a slice needs to be written (default: half).")
    slices.add_argument("--series-uid", help="DICOM folders holding several series: the SeriesInstanceUID to read.")
    slices.add_argument("--time-point", type=int, help="4-D volumes: the time point (or channel) to read, 0-based.")
    slices.set_defaults(handler=_export_slices)

    serve = commands.add_parser("serve", help="Run the Gradio app with its REST endpoint.")
    serve.add_argument("--model", help=model_help)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=7860)
    serve.add_argument("--backend", choices=["torch", "onnx"], default="torch", help=backend_help)
    serve.set_defaults(handler=_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tumor-classifier`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    # No transformers switch here: loading and saving a model are quiet already
    # (model_folder.quiet_weights), and `predict --backend onnx` never imports transformers.
    if getattr(args, "out", None) and getattr(args, "explain", "x") is None and args.command == "predict":
        print("note: --out is used with --explain; no overlays are written without it.", file=sys.stderr)
    if args.command == "predict" and args.explain and not args.out and not (args.output or args.recursive):
        # Heatmaps cost several times a prediction; without a folder to hold them nobody would see them.
        print("note: --explain writes its overlays into --out DIR; without --out no heatmaps are made.", file=sys.stderr)
        args.explain = None
    try:
        return args.handler(args)
    except TumorClassifierError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # an archive run handles its own first (it keeps its rows)
        print("interrupted (Ctrl-C): stopped before finishing; results not printed above were not made.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
