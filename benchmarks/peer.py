"""The peer to beat: PyPI ``detect-tumor`` (VGG16 exported to ONNX, run with onnxruntime).

This module wraps the peer so benchmarks can put it beside ``tumor_classifier`` in the
same run. It imports nothing from our package.

What the peer does (read from detect-tumor 0.1.1, ``detect_tumor/preprocess.py`` and
``detector.py``):

* decode with PIL, ``.convert("RGB")`` (grayscale "L" files become three equal
  channels), ``.resize((240, 240))`` with PIL's default filter (bicubic), float32 in
  [0, 1], **no** mean/std normalisation, NHWC layout, shape (1, 240, 240, 3);
* one ``onnxruntime.InferenceSession`` (CPUExecutionProvider, default session options)
  built lazily on the first call from the 65 MB model bundled in the wheel;
* the output ``dense_3`` is already a softmax over
  ``class_indices.json`` = {glioma: 0, meningioma: 1, notumor: 2, pituitary: 3};
* ``TumorDetector.predict`` returns a pydantic ``DetectionResult`` whose
  ``probabilities`` are percentages rounded to 2 decimals (so 1e-4 resolution as a
  probability) and whose ``predicted_class`` is the argmax of the unrounded output.

Threads: ``TumorDetector`` accepts only ``model_path`` and ``providers``; it exposes no
``SessionOptions``, so its thread count is onnxruntime's default (one intra-op thread
per physical core: 2 on the project's machine, more elsewhere). For a fair comparison
:func:`load_peer` swaps in a session built from the same bundled model with
``intra_op_num_threads`` set (default 2). That touches three private attributes of
``TumorDetector``; if a future version renames them we fall back to the peer's own
session and say so in :attr:`PeerModel.intra_op_threads` (``None``).

Run as a script to measure the peer on a folder of class subfolders::

    nice -n 10 .venv/bin/python benchmarks/peer.py ../shared/data/brain-tumor-mri/Testing
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

#: Our class order; every probability column returned here follows it.
CLASSES: tuple[str, ...] = ("glioma", "meningioma", "notumor", "pituitary")
#: Peer's model file inside the ``detect_tumor.models`` package.
_PEER_MODEL_FILE = "Tumor_classification_vgg16.onnx"
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}


def peer_available() -> bool:
    """Whether ``detect-tumor`` and ``onnxruntime`` are importable (imports neither)."""
    return all(importlib.util.find_spec(name) is not None for name in ("detect_tumor", "onnxruntime"))


class PeerModel:
    """``detect_tumor.TumorDetector`` behind the interface our benchmarks use.

    Attributes:
        classes: Class names in our order; columns of every probability array.
        size_bytes: Size of the peer's ONNX model file on disk.
        version: Installed ``detect-tumor`` distribution version.
        intra_op_threads: onnxruntime intra-op threads in use, or ``None`` when the
            peer's own session (onnxruntime's default thread count) is used.
        detector: The underlying ``detect_tumor.TumorDetector``.

    Use :func:`load_peer` rather than constructing this directly.
    """

    classes: tuple[str, ...] = CLASSES

    def __init__(self, intra_op_threads: int | None = 2) -> None:
        from importlib.metadata import version
        from importlib.resources import as_file, files

        import onnxruntime as ort
        from detect_tumor import TumorDetector
        from detect_tumor.labels import load_class_labels
        from detect_tumor.preprocess import preprocess

        self.version = version("detect-tumor")
        self._preprocess = preprocess
        self.detector = TumorDetector()
        model_ref = files("detect_tumor.models") / _PEER_MODEL_FILE
        with as_file(model_ref) as model_path:
            self.size_bytes = Path(model_path).stat().st_size

        # The peer's labels (index -> name) mapped onto our columns, checked, not assumed.
        peer_labels = load_class_labels()
        if sorted(peer_labels.values()) != sorted(CLASSES):
            raise RuntimeError(f"detect-tumor classes {peer_labels} differ from ours {CLASSES}")
        self._peer_to_ours = np.array([CLASSES.index(peer_labels[i]) for i in range(len(CLASSES))])

        self.intra_op_threads = None
        if intra_op_threads is not None and all(
            hasattr(self.detector, a) for a in ("_session", "_input_name", "_class_labels")
        ):
            options = ort.SessionOptions()
            options.intra_op_num_threads = intra_op_threads
            # Same bytes, same provider list as TumorDetector._ensure_session uses.
            session = ort.InferenceSession(
                model_ref.read_bytes(), sess_options=options, providers=["CPUExecutionProvider"]
            )
            self.detector._session = session
            self.detector._input_name = session.get_inputs()[0].name
            self.detector._class_labels = peer_labels
            self.intra_op_threads = intra_op_threads
        elif intra_op_threads is not None:
            warnings.warn(
                "detect_tumor.TumorDetector internals changed; using its default onnxruntime "
                "session, whose thread count cannot be set",
                RuntimeWarning,
                stacklevel=2,
            )
        # Build the session now (a no-op if injected) so the first predict is not a load.
        self._session, self._input_name, _ = self.detector._ensure_session()

    def predict(self, paths: list[str]) -> list[str]:
        """Class names as the peer reports them (``predicted_class``), one image at a time."""
        return [r.predicted_class for r in self._results(paths)]

    def _results(self, paths: list[str]) -> list:
        """The peer's ``DetectionResult`` for each path, one ``predict`` call each."""
        return [self.detector.predict(str(p)) for p in paths]

    @staticmethod
    def _to_proba(results: list) -> np.ndarray:
        out = np.zeros((len(results), len(CLASSES)), dtype=np.float64)
        for row, result in enumerate(results):
            for name, percent in result.probabilities.items():
                out[row, CLASSES.index(name)] = percent / 100.0
        return out

    def predict_proba(self, paths: list[str]) -> np.ndarray:
        """Probabilities through the peer's public API, one image at a time.

        Args:
            paths: Image files (anything PIL opens).

        Returns:
            float64 array (n, 4) in [0, 1], columns in :attr:`classes`. Values are the
            peer's rounded percentages / 100, so they have 1e-4 resolution and a row may
            sum to 1 +- 2e-4; use :meth:`predict_proba_batched` for unrounded values.

        Raises:
            detect_tumor.InvalidImageError: a file is not an image.
        """
        return self._to_proba(self._results(paths))

    def predict_proba_batched(self, paths: list[str], batch_size: int = 32) -> np.ndarray:
        """Unrounded probabilities, several images per onnxruntime call.

        The peer has no batch API, but its ONNX input has a dynamic batch dimension
        (``input``: [N, 240, 240, 3]), so this stacks the peer's own ``preprocess``
        output and runs the peer's session on it. Same numbers as one at a time up
        to float32 rounding.

        Returns:
            float32 array (n, 4) in [0, 1], rows sum to 1, columns in :attr:`classes`.
        """
        out = np.zeros((len(paths), len(CLASSES)), dtype=np.float32)
        for start in range(0, len(paths), batch_size):
            chunk = paths[start : start + batch_size]
            batch = np.concatenate([self._preprocess(str(p)) for p in chunk])
            probs = self._session.run(None, {self._input_name: batch})[0]
            out[start : start + len(chunk)][:, self._peer_to_ours] = probs
        return out


@functools.lru_cache(maxsize=None)
def load_peer(intra_op_threads: int | None = 2) -> PeerModel:
    """Load the peer once (per thread setting) and return it.

    Args:
        intra_op_threads: onnxruntime intra-op threads; ``None`` keeps the peer's own
            session with onnxruntime's default (one per physical core).

    Raises:
        ImportError: ``detect-tumor`` or ``onnxruntime`` is not installed
            (``pip install detect-tumor``); check :func:`peer_available` first.
    """
    if not peer_available():
        raise ImportError("the peer is not installed: pip install detect-tumor")
    return PeerModel(intra_op_threads=intra_op_threads)


def list_images(folder: str | Path, limit: int | None = None) -> tuple[list[str], np.ndarray]:
    """Images under ``folder/<class>/`` for our classes, sorted, with label indices.

    With ``limit``, take images round-robin across classes so a small limit still
    covers every class.
    """
    folder = Path(folder)
    per_class = []
    for label, name in enumerate(CLASSES):
        files = sorted(p for p in (folder / name).glob("*") if p.suffix.lower() in _IMAGE_SUFFIXES)
        per_class.append([(str(p), label) for p in files])
    if not any(per_class):
        raise FileNotFoundError(f"no images in {folder}/{{{','.join(CLASSES)}}}/")
    if limit is None:
        pairs = [pair for items in per_class for pair in items]
    else:
        pairs = []
        for i in range(max(map(len, per_class))):
            pairs += [items[i] for items in per_class if i < len(items)]
        pairs = pairs[:limit]
    return [p for p, _ in pairs], np.array([y for _, y in pairs], dtype=np.int64)


def time_per_item(fn, items: list, warmup: int = 10) -> dict[str, float]:
    """Wall-clock ms of ``fn(item)``, one item at a time, after ``warmup`` untimed calls.

    Returns:
        ``median``, ``p90`` and ``min`` in ms, ``cpu_median`` (process CPU ms per call,
        all threads: about threads x wall on an idle machine) and ``n`` timed calls.
        The machine is shared: compare numbers measured in one run, and read ``min``
        as the closest to an idle machine.
    """
    for item in items[:warmup]:
        fn(item)
    wall, cpu = [], []
    for item in items[warmup:]:
        c0, t0 = time.process_time(), time.perf_counter()
        fn(item)
        wall.append((time.perf_counter() - t0) * 1000)
        cpu.append((time.process_time() - c0) * 1000)
    if not wall:
        raise ValueError(f"need more than warmup={warmup} items, got {len(items)}")
    return {
        "median": statistics.median(wall),
        "p90": float(np.percentile(wall, 90)),
        "min": min(wall),
        "cpu_median": statistics.median(cpu),
        "n": len(wall),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Accuracy and speed of the detect-tumor peer")
    parser.add_argument("folder", help="folder with glioma/ meningioma/ notumor/ pituitary/ subfolders")
    parser.add_argument("--limit", type=int, default=None, help="use at most N images (round-robin over classes)")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads; 0 = peer default")
    parser.add_argument("--timing-images", type=int, default=100, help="images timed one at a time")
    parser.add_argument("--warmup", type=int, default=10, help="untimed calls before timing")
    parser.add_argument("--timing-only", action="store_true", help="skip the accuracy pass")
    args = parser.parse_args(argv)

    if not peer_available():
        print("detect-tumor is not installed: pip install detect-tumor", file=sys.stderr)
        return 1
    import onnxruntime as ort

    t0 = time.perf_counter()
    peer = load_peer(args.threads or None)
    load_s = time.perf_counter() - t0
    paths, y = list_images(args.folder, args.limit)
    threads = peer.intra_op_threads if peer.intra_op_threads else "onnxruntime default"
    print(f"detect-tumor {peer.version}, onnxruntime {ort.__version__}, intra-op threads: {threads}")
    print(f"model: {peer.size_bytes:,} bytes ({peer.size_bytes / 2**20:.1f} MiB); load {load_s:.2f} s")

    # Speed: the public predict on one path (decode + resize + ONNX run), one at a time.
    timed = paths[: args.warmup + args.timing_images]
    t = time_per_item(peer.detector.predict, timed, args.warmup)
    print(
        f"one at a time (TumorDetector.predict): median {t['median']:.1f} ms/image, "
        f"p90 {t['p90']:.1f}, min {t['min']:.1f}, CPU {t['cpu_median']:.0f} ms (n={t['n']})"
    )
    arrays = [peer._preprocess(p) for p in timed]
    run = lambda a: peer._session.run(None, {peer._input_name: a})  # noqa: E731
    t = time_per_item(run, arrays, args.warmup)
    print(f"  ONNX session.run alone: median {t['median']:.1f} ms/image, min {t['min']:.1f}")
    if args.timing_only:
        return 0

    # Accuracy over every image, through the public API, one at a time.
    t0 = time.perf_counter()
    results = peer._results(paths)  # what predict_proba and predict both use
    elapsed = time.perf_counter() - t0
    proba = peer._to_proba(results)
    pred = np.array([CLASSES.index(r.predicted_class) for r in results])
    acc = float((pred == y).mean())
    print(f"accuracy: {acc:.2%} ({int((pred == y).sum())}/{len(y)}) in {elapsed:.0f} s")
    print(f"  argmax of predict_proba (rounded) disagrees with predicted_class on "
          f"{int((proba.argmax(1) != pred).sum())} images; row sums in "
          f"[{proba.sum(1).min():.4f}, {proba.sum(1).max():.4f}]")
    for k, name in enumerate(CLASSES):
        mask = y == k
        if mask.any():
            print(f"  {name:<11} {float((pred[mask] == k).mean()):.2%} of {int(mask.sum())}")
    conf = np.zeros((len(CLASSES), len(CLASSES)), dtype=int)
    np.add.at(conf, (y, pred), 1)
    print("confusion (rows true, cols predicted, our class order):")
    print(conf)

    # Batched path: check agreement and speed per image.
    sample = paths[: min(len(paths), 64)]
    t0 = time.perf_counter()
    batched = peer.predict_proba_batched(sample, batch_size=16)
    per_img = (time.perf_counter() - t0) * 1000 / len(sample)
    diff = float(np.abs(batched - proba[: len(sample)]).max())
    print(f"batched (16): {per_img:.1f} ms/image incl. decode; max |diff| vs one-at-a-time {diff:.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
