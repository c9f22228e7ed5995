"""Archive throughput (slices/s): ``predict DIR --recursive --output`` with 1 and with 2 processes on 2 CPU threads.

The archive is built in a temporary folder of links: ``--slices`` JPEG slices of the
shared Kaggle data (or the test images, repeated) and ``--volumes`` BraTS-sized volumes
(155 x 240 x 240: links to the shared glioma case's t1c, else a synthetic head written
with nibabel). One process runs with 2 torch threads; two run under ``torchrun`` with
1 thread each; one process with 1 thread is shown too, because on a busy two-core
machine two threads of one process wait on each other. All use the shipped model. Figures: slices classified per second of
predicting (the processes' own clocks, slowest process) and the command's wall time,
which adds start-up (imports, model, the merge). Seconds per volume against 155
separate ``predict`` calls: ``benchmarks/volume_speed.py``.

Usage:
    python benchmarks/archive_speed.py [--slices 240] [--volumes 2] [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SUMMARY = re.compile(r"rank (\d+) of (\d+): (\d+) files predicted .* (\d+) slices in ([\d.]+) s")


def build_archive(root: Path, data: Path, n_slices: int, n_volumes: int) -> str:
    images = sorted((data / "brain-tumor-mri" / "Testing").rglob("*.jpg")) or sorted((REPO / "tests" / "data").rglob("*.jpg"))
    for index in range(n_slices):
        folder = root / "slices" / f"{index // 100:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{index:05d}.jpg").symlink_to(images[index % len(images)].resolve())
    brats = data / "volumes" / "brats_layout_tumour_case" / "t1c.nii.gz"
    if n_volumes and not brats.is_file():
        import nibabel as nib
        import numpy as np

        from volume_speed import synthetic_volume  # this folder's neighbour

        brats = root / "synthetic.nii.gz"  # (x, y, z) as NIfTI stores it
        nib.save(nib.Nifti1Image(np.ascontiguousarray(synthetic_volume().transpose(2, 1, 0)), np.eye(4)), str(brats))
    for index in range(n_volumes):
        (root / "volumes").mkdir(exist_ok=True)
        (root / "volumes" / f"case{index:03d}.nii.gz").symlink_to(brats.resolve())
    return f"{n_slices} JPEG slices from {images[0].parents[2]}, {n_volumes} x {brats.name if n_volumes else '-'}"


def run(archive: Path, output: Path, processes: int, threads: int) -> tuple[float, float, int]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}
    cli = ["-m", "tumor_classifier.cli", "predict", str(archive), "--recursive", "--output", str(output)]
    launcher = [sys.executable] if processes == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    start = time.perf_counter()
    completed = subprocess.run(launcher + cli, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if completed.returncode != 0:
        raise SystemExit(completed.stderr[-3000:])
    ranks = [(int(m[4]), float(m[5])) for m in SUMMARY.finditer(completed.stdout)]
    if len(ranks) != processes:
        raise SystemExit(f"expected {processes} summaries, got:\n{completed.stdout}")
    slices = sum(s for s, _ in ranks)
    return slices / max(seconds for _, seconds in ranks), wall, slices


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=240)
    parser.add_argument("--volumes", type=int, default=2)
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="archive-speed-") as folder:
        archive = Path(folder) / "archive"
        what = build_archive(archive, Path(args.data), args.slices, args.volumes)
        print(f"archive: {what}; shipped model; 2 CPU threads in all", flush=True)
        for processes, threads in ((1, 2), (1, 1), (2, 1)):
            rate, wall, slices = run(archive, Path(folder) / f"results-{processes}x{threads}.parquet", processes, threads)
            print(f"{processes} process(es) x {threads} thread(s): {slices} slices, {rate:7.1f} slices/s predicting, "
                  f"{wall:6.1f} s wall for the command", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
