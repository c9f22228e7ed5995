"""An experiment, not part of the package and not shipped: a tumour / no-tumour detector
that never sees the collection the tumour boxes come from.

The box-occlusion check (``benchmarks/localisation.py``) shows the shipped model tells
glioma and pituitary slices from the rest without using the tumour: those classes come
from one collection (figshare, contrast T1), so the collection itself is a cue. This
detector is trained on Br35H tumour slices against the Kaggle Training ``notumor`` slices
only (two classes, ``tumor`` / ``notumor``; no figshare slice), to see whether a model that
cannot lean on that collection looks at the tumour on it. It did not: see
configs/README.md, "Tried, not shipped". Kept so that the figures there can be remade.

    python configs/try_br35h_detector.py train runs/br35h-detector [--epochs 6]
    python configs/try_br35h_detector.py score runs/br35h-detector [--limit 100]

``score`` gives, per tumour-box class, the share of slices called ``tumor``, the pointing
game of the ``tumor`` map (the model's ``auto`` method, against no tumour) and the
box-occlusion figures of ``tumor_classifier.box_occlusion``.
"""

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))
from tumor_classifier import TumorClassifier, load_image  # noqa: E402
from tumor_classifier.box_occlusion import classifier_occlusion_score, summarise_occlusion  # noqa: E402
from tumor_classifier.localisation import pointing_game, read_boxes  # noqa: E402
from tumor_classifier.localisation_runs import class_attribution  # noqa: E402

TUMOUR = "tumor"


def train(out: Path, epochs: float) -> None:
    tumours = sorted((DATA / "br35h-tumor" / "tumor").glob("*.jpg"))
    healthy = sorted((DATA / "brain-tumor-mri" / "Training" / "notumor").glob("*.jpg"))
    print(f"{len(tumours)} Br35H tumour slices, {len(healthy)} Kaggle Training notumor slices", flush=True)
    classifier = TumorClassifier(image_size=160, epochs=epochs, batch_size=32, random_state=0)
    classifier.fit([str(p) for p in tumours + healthy], [TUMOUR] * len(tumours) + ["notumor"] * len(healthy))
    classifier.save_pretrained(out)


def score(model: Path, limit: int) -> None:
    classifier = TumorClassifier.from_pretrained(str(model))
    folder = DATA / "tumour-boxes"
    taken: dict[str, int] = {}
    hits: dict[str, list[bool]] = {}
    found: dict[str, list[bool]] = {}
    occlusion = []
    for file, box in read_boxes(folder / "boxes.csv").items():
        taken[box.label] = taken.get(box.label, 0) + 1
        if taken[box.label] > limit:
            continue
        gray = load_image(folder / file)
        heatmap = class_attribution(classifier, gray, TUMOUR)
        hits.setdefault(box.label, []).append(pointing_game(heatmap, box.to_pixels(*gray.size)))
        as_tumour = classifier_occlusion_score(classifier, gray, dataclasses.replace(box, label=TUMOUR))
        found.setdefault(box.label, []).append(as_tumour.predicted == TUMOUR)  # its pass on the slice as it is
        occlusion.append(dataclasses.replace(as_tumour, label=box.label))
    for label in sorted(hits):
        print(f"{label}: called tumour {100 * np.mean(found[label]):.1f} %, pointing game {100 * np.mean(hits[label]):.1f} %")
    print(f"mean pointing game {100 * np.mean([np.mean(v) for v in hits.values()]):.1f} %")
    for label, figures in summarise_occlusion(occlusion).items():
        print(f"{label}: tumour log-odds {figures['tumour_evidence']:.2f}, fall with the box hidden "
              f"{figures['tumour_drop_box']:.2f}, with a control {figures['tumour_drop_control']:.2f}, "
              f"box falls more {100 * figures['tumour_box_beats_control']:.1f} %")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("train", "score"))
    parser.add_argument("model", type=Path, help="Model folder to write (train) or read (score).")
    parser.add_argument("--epochs", type=float, default=6)
    parser.add_argument("--limit", type=int, default=100, help="Tumour-box slices per class (score).")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.action == "train":
        train(args.model, args.epochs)
    else:
        score(args.model, args.limit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
