"""Volume verdicts of the shipped model (or `--model`): the table in the README's "Volumes" section.

Two groups of volumes, kept apart on purpose:

* ``--choose`` (default: the nilearn MNI152 T1 template, skull-stripped as nilearn ships it, and
  ``volumes/nifti/healthy_t1ce_MR_Gd.nii.gz``, a healthy skull-stripped contrast T1 that
  the issue does not list): healthy volumes on which ``MIN_HEAD_FRACTION`` was chosen;
* ``--check`` (default: the four volumes the issue names, the BraTS case in its four
  sequences): reported only, never used to choose anything.

For each volume, each ``--plane`` and each ``--min-head-fraction``: the label (``None`` when flagged not a
brain MRI), what the aggregation alone says, the classified slices, the longest run of
tumour slices, and whether the volume passes the not-a-brain-MRI check (with its reason
when not).

    OMP_NUM_THREADS=1 python benchmarks/volume_verdicts.py [--data ../shared/data] [--model DIR]
        [--min-head-fraction 0.25 0.85] [--plane axial coronal sagittal] [--choose VOLUME ...] [--check VOLUME ...]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from tumor_classifier import TumorClassifier
from tumor_classifier.volume_prediction import MIN_HEAD_FRACTION, predict_volume

CHECK = [
    "nifti/healthy_t1_chris.nii.gz",
    "dicom/healthy_sagittal_t1_series",
    "brats_layout_tumour_case/t1n.nii.gz",
    "brats_layout_tumour_case/t1c.nii.gz",
    "brats_layout_tumour_case/t2w.nii.gz",
    "brats_layout_tumour_case/t2f.nii.gz",
    "nifti/not_mri_head_ct.nii.gz",
]


def nilearn_template() -> Path:
    import nilearn

    return Path(nilearn.__file__).parent / "datasets" / "data" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"


def expected(path: str) -> str:
    if "brats" in path:
        return "tumour"
    if "not_mri" in path:
        return "flagged"
    return "notumor"


def row(clf, path: str, fraction: float, plane: str = "axial") -> str:
    start = time.perf_counter()
    result = predict_volume(clf, path, plane=plane, min_head_fraction=fraction, explain=False)
    longest = max((b - a + 1 for a, b in result.runs), default=0)
    verdict = "flagged" if result.label is None else ("notumor" if result.label == "notumor" else "tumour")
    ok = "yes" if verdict == expected(path) else "NO"
    return (
        f"| {Path(path).name if 'brats' not in path else 'brats ' + Path(path).name} | {plane} | {fraction:.2f} | {expected(path)} | "
        f"{result.label} | {result.model_label} {result.tumour_probability:.2f} | "
        f"{int(result.classified.sum())}/{len(result.classified)} | {longest} | "
        f"{result.looks_like_mri}{'' if result.looks_like_mri else ' (' + result.mri_reasons[0] + ')'} | {ok} | "
        f"{time.perf_counter() - start:.0f} s |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--model", default=None, help="model folder or Hub id (default: the shipped model)")
    parser.add_argument("--min-head-fraction", type=float, nargs="+", default=[MIN_HEAD_FRACTION])
    parser.add_argument("--plane", nargs="+", choices=["axial", "coronal", "sagittal"], default=["axial"])
    parser.add_argument("--choose", nargs="*", default=None, help="volumes to choose settings on")
    parser.add_argument("--check", nargs="*", default=None, help="volumes reported only")
    args = parser.parse_args(argv)
    volumes = Path(args.data) / "volumes"
    choose = args.choose if args.choose is not None else [str(nilearn_template()), str(volumes / "nifti/healthy_t1ce_MR_Gd.nii.gz")]
    check = args.check if args.check is not None else [str(volumes / v) for v in CHECK]
    clf = TumorClassifier.from_pretrained(args.model)
    header = "| volume | plane | min_head_fraction | expected | label | aggregation alone | classified | longest run | looks like MRI | right | time |"
    for title, group in (("Chosen on (healthy, not in the issue's list)", choose), ("Checked (the issue's volumes)", check)):
        if not group:
            continue
        print(f"\n{title}\n\n{header}\n|---|---|---:|---|---|---|---:|---:|---|---|---:|", flush=True)
        for path in group:
            for plane in args.plane:
                for fraction in args.min_head_fraction:
                    print(row(clf, path, fraction, plane), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
