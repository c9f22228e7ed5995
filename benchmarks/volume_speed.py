"""Seconds per volume: predict_volume against 155 separate predict calls, on 2 threads.

The volume is BraTS-sized (155 slices of 240 x 240): the shared glioma case's t1c when
../shared/data/volumes is there, else a synthetic head of the same size. Both paths use
the shipped model; ``predict`` per slice also runs the learned brain-MRI check on each
call, as a user calling it slice by slice would pay.

Usage:
    python benchmarks/volume_speed.py [--data ../shared/data/volumes] [--rounds 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch


def synthetic_volume(n: int = 155, side: int = 240) -> np.ndarray:
    z, y, x = np.meshgrid(np.linspace(-1, 1, n), np.linspace(-1, 1, side), np.linspace(-1, 1, side), indexing="ij")
    head = (x**2 + (y * 0.85) ** 2 + (z * 0.9) ** 2) < 0.75
    rng = np.random.default_rng(0)
    return np.where(head, 400 + 50 * rng.standard_normal(head.shape), 0).astype(np.float32)


def timed(function, rounds: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(rounds):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/volumes")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from tumor_classifier import TumorClassifier
    from tumor_classifier.exceptions import NonFiniteOutputError
    from tumor_classifier.volumes import load_volume

    clf = TumorClassifier.from_pretrained()
    path = Path(args.data) / "brats_layout_tumour_case" / "t1c.nii.gz"
    source = path if path.is_file() else None
    what = str(path) if source else "synthetic 155 x 240 x 240 head"
    read_s, volume = timed(lambda: load_volume(source if source else synthetic_volume()), args.rounds)
    slices = volume.slices
    print(f"volume: {what}, slices {slices.shape}, threads {args.threads}, median of {args.rounds} rounds")
    clf.predict_proba(list(slices[60:64]))  # warm-up
    whole_s, result = timed(lambda: clf.predict_volume(source if source else volume, explain=False), args.rounds)
    n = int(result.classified.sum())
    print(f"predict_volume (read + {n} slices at brain level){whole_s:8.2f} s per volume", flush=True)
    explain_s, _ = timed(lambda: clf.predict_volume(volume, explain=True), args.rounds)
    print(f"predict_volume, already read, with the key heatmap {explain_s:8.2f} s per volume", flush=True)
    failed = []

    def separately(method):
        failed.clear()
        for s in slices:
            try:
                method(s)
            except NonFiniteOutputError:  # the shipped model answers NaN on an all-black slice
                failed.append(1)

    separate_s, _ = timed(lambda: separately(clf.predict), args.rounds)
    print(f"155 separate predict calls                         {separate_s:8.2f} s  ({separate_s / whole_s:.1f}x predict_volume; "
          f"{len(failed)} raised NonFiniteOutputError)", flush=True)
    proba_s, _ = timed(lambda: separately(clf.predict_proba), args.rounds)
    print(f"155 separate predict_proba calls                   {proba_s:8.2f} s  ({proba_s / whole_s:.1f}x predict_volume)", flush=True)
    print(f"read + window alone (load_volume)                  {read_s:8.2f} s")
    print(f"verdict: {result.label} / model {result.model_label} (tumour probability {result.tumour_probability:.3f}, runs {result.runs})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
