"""The slice-sequence model against the slice-aggregation verdict, on the same volumes.

    OMP_NUM_THREADS=1 python benchmarks/sequence_model.py runs/sequence-model --full_path 100 --real

1. Built validation volumes (held-out Kaggle slices without a near duplicate among the
   backbone's fine-tuning slices, the validation side of the group split, assembled as configs/train_sequence_model.py did, same seed and recipe): accuracy,
   sensitivity and specificity of the sequence model and of ``predict_volume``'s
   aggregation rule applied to the shipped classifier's probabilities of the same slices;
   sensitivity by tumour-run length.
2. ``--full_path N``: the first N of those volumes as arrays (slices padded square and
   resized to 256 px) through the whole ``predict_volume`` path (window, head slices, MRI
   check), once with the aggregation verdict and once with ``sequence_model=``.
3. ``--real``: both verdicts on real volumes: nilearn's MNI152 T1 template (healthy) and
   the shared check volumes of ``../shared/data/volumes`` (never trained on).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

SHARED_VOLUMES = Path("../shared/data/volumes")
REAL_VOLUMES = {
    "healthy T1 NIfTI (expect notumor)": "nifti/healthy_t1_chris.nii.gz",
    "healthy contrast T1, skull-stripped": "nifti/healthy_t1ce_MR_Gd.nii.gz",
    "healthy T1 DICOM series (expect notumor)": "dicom/healthy_sagittal_t1_series",
    "BraTS glioma t1n (expect tumour)": "brats_layout_tumour_case/t1n.nii.gz",
    "BraTS glioma t1c (expect tumour)": "brats_layout_tumour_case/t1c.nii.gz",
    "BraTS glioma t2w (expect tumour)": "brats_layout_tumour_case/t2w.nii.gz",
    "BraTS glioma t2f (expect tumour)": "brats_layout_tumour_case/t2f.nii.gz",
    "head CT (expect flagged)": "nifti/not_mri_head_ct.nii.gz",
}


def _square(path: str, side: int = 256) -> np.ndarray:
    from PIL import Image

    from tumor_classifier.decoding import load_image

    gray = np.asarray(load_image(path))
    height, width = gray.shape
    canvas = np.zeros((max(height, width),) * 2, dtype=np.uint8)
    canvas[(canvas.shape[0] - height) // 2 :][:height, (canvas.shape[1] - width) // 2 :][:, :width] = gray
    return np.asarray(Image.fromarray(canvas).resize((side, side), Image.Resampling.BILINEAR))


def _row(name: str, metrics: dict) -> str:
    return f"  {name:<20} accuracy {metrics['accuracy']:.3f}  sensitivity {metrics['sensitivity']:.3f}  specificity {metrics['specificity']:.3f}"


def main() -> None:
    import torch

    from tumor_classifier import TumorClassifier
    from tumor_classifier.models import get_backbone
    from tumor_classifier.pixels import DEFAULT_CACHE
    from tumor_classifier.sequence_data import VolumeRecipe, build_volumes, kaggle_slice_banks
    from tumor_classifier.sequence_model import load_sequence_model
    from tumor_classifier.sequence_prediction import apply_sequence_model
    from tumor_classifier.sequence_training import aggregation_verdicts, binary_metrics, compare_on_volumes, sequence_probabilities

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="A sequence model folder written by configs/train_sequence_model.py.")
    parser.add_argument("--full_path", type=int, default=0, help="Validation volumes to run through predict_volume.")
    parser.add_argument("--real", action="store_true", help="Also the MNI152 template and the shared check volumes.")
    parser.add_argument("--out", help="Write the figures as JSON here.")
    options = parser.parse_args()

    torch.set_num_threads(max(1, torch.get_num_threads()))
    run = json.loads((Path(options.model) / "metrics.json").read_text())["arguments"]
    clf = TumorClassifier.from_pretrained()
    model = load_sequence_model(options.model)
    head = clf.model_.get_submodule(get_backbone(clf.model_.config.backbone_name).head_layer)
    banks, info = kaggle_slice_banks(run["data_dir"], model, clf.preprocessor_, head=head, proba_classes=list(clf.classes_), cache_dir=DEFAULT_CACHE, seed=run["seed"])
    bank = banks["validation"]
    recipe = VolumeRecipe(run["min_slices"], run["max_slices"], run["min_run"], run["max_run"])
    volumes = build_volumes(bank, run["validation_volumes"], seed=run["seed"] + 1, recipe=recipe)
    report: dict = {"data": info, "built_validation_volumes": compare_on_volumes(model, bank, volumes)}
    print(f"Built validation volumes: {len(volumes)} (slices per class: {info['validation_slices']})")
    for name in ("sequence_model", "slice_aggregation"):
        print(_row(name, report["built_validation_volumes"][name]))
    sequence = sequence_probabilities(model, bank, volumes) >= 0.5
    aggregation = aggregation_verdicts(bank, volumes)
    runs = np.asarray([int(v.slice_labels.sum()) for v in volumes])
    by_run = {}
    for length in sorted(set(runs[runs > 0].tolist())):
        chosen = runs == length
        by_run[length] = {"volumes": int(chosen.sum()), "sequence_model": float(sequence[chosen].mean()), "slice_aggregation": float(aggregation[chosen].mean())}
    report["sensitivity_by_run_length"] = by_run
    print("  sensitivity by tumour-run length: " + ", ".join(f"{k}: {v['sequence_model']:.2f} / {v['slice_aggregation']:.2f}" for k, v in by_run.items()) + "  (sequence / aggregation)")

    if options.full_path:
        chosen = volumes[: options.full_path]
        truth, verdicts, started = np.asarray([v.label for v in chosen]), {"sequence_model": [], "slice_aggregation": []}, time.perf_counter()
        for volume in chosen:
            array = np.stack([_square(bank.paths[i]) for i in volume.indices])
            plain = clf.predict_volume(array, explain=False)
            verdicts["slice_aggregation"].append(plain.tumour)
            verdicts["sequence_model"].append(apply_sequence_model(model, plain, clf.preprocessor_).tumour)
        seconds = (time.perf_counter() - started) / len(chosen)
        report["full_path"] = {name: binary_metrics(np.asarray(v), truth) for name, v in verdicts.items()}
        report["full_path"]["seconds_per_volume_both"] = seconds
        print(f"Through predict_volume (window, head slices, MRI check), first {len(chosen)} volumes, {seconds:.1f} s per volume for both:")
        for name in ("sequence_model", "slice_aggregation"):
            print(_row(name, report["full_path"][name]))

    if options.real:
        import nilearn

        sources = {"MNI152 T1 template, nilearn (healthy)": Path(nilearn.__file__).parent / "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"}
        sources.update({name: SHARED_VOLUMES / relative for name, relative in REAL_VOLUMES.items() if (SHARED_VOLUMES / relative).exists()})
        report["real_volumes"] = {}
        print("Real volumes (aggregation verdict | sequence verdict, tumour probability):")
        for name, path in sources.items():
            plain = clf.predict_volume(path, explain=False)
            with_sequence = apply_sequence_model(model, plain, clf.preprocessor_)
            row = {
                "slice_aggregation": plain.label, "aggregation_tumour": plain.tumour,
                "sequence_model": with_sequence.label, "sequence_tumour": with_sequence.tumour,
                "sequence_tumour_probability": round(with_sequence.tumour_probability, 3), "looks_like_mri": plain.looks_like_mri,
            }
            report["real_volumes"][name] = row
            print(f"  {name:<45} {str(plain.label):<10} ({'tumour' if plain.tumour else 'no tumour'}) | "
                  f"{str(with_sequence.label):<10} ({'tumour' if with_sequence.tumour else 'no tumour'}, p={with_sequence.tumour_probability:.2f})")
    if options.out:
        Path(options.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
