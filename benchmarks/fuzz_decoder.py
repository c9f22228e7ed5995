"""Fuzzes the decoder: every input gives an "L" image or InvalidImageError, nothing else.

The properties and input strategies of ``tests/test_hostile_inputs.py`` with a large
budget: arbitrary bytes and mutated valid JPEG / PNG / TIFF / BMP / GIF / WebP files,
arrays of 0-5 dimensions (uint8, uint16, int16, float32, float64 with NaN, inf and the
extremes), hostile paths (very long, NUL bytes, ``..``, directories, a FIFO, devices,
procfs), ``datasets`` dicts and other objects, for
:func:`tumor_classifier.load_image`, and optionally the same inputs for
``TumorClassifier.predict`` with the tiny ConvNeXt of ``tests/conftest.py``.

Unlike the test, it never stops at the first failure: each input runs once (no
shrinking), and foreign exceptions (anything but ``InvalidImageError``), wrong results
and escaped ``DecompressionBombWarning`` s are counted by type, with one example each.
The goal is 0 foreign exceptions.

    OMP_NUM_THREADS=1 nice -n 19 python benchmarks/fuzz_decoder.py --examples 30000
        [--predict-examples 500] [--seed 0]

Exit status 1 if anything foreign was seen.
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import numpy as np  # noqa: E402
from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402
from PIL import Image  # noqa: E402

import test_hostile_inputs as properties  # noqa: E402 - the strategies the test uses
from tumor_classifier import InvalidImageError, load_image  # noqa: E402
from tumor_classifier.decoding import MAX_IMAGE_SIDE, MIN_IMAGE_SIDE  # noqa: E402
from tumor_classifier.verdict import NOT_BRAIN_MRI  # noqa: E402


class Tally:
    """Outcomes by kind, foreign ones with a first example and its traceback."""

    def __init__(self) -> None:
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.foreign: collections.Counter[str] = collections.Counter()
        self.warnings: collections.Counter[str] = collections.Counter()
        self.examples: dict[str, str] = {}

    def run(self, call: Callable[[], Any], check: Callable[[Any], str | None], source: Any) -> None:
        with warnings.catch_warnings(record=True) as caught:  # a benchmark may; the decoder may not
            warnings.simplefilter("always")
            try:
                problem = check(call())
                self.outcomes["result"] += 1
            except InvalidImageError:
                problem = None
                self.outcomes["InvalidImageError"] += 1
            except Exception as error:  # noqa: BLE001 - counting them is the point
                problem = f"{type(error).__name__}"
                self.examples.setdefault(problem, f"{_show(source)}\n{traceback.format_exc(limit=-4)}")
        if problem is not None:
            self.foreign[problem] += 1
            self.examples.setdefault(problem, _show(source))
        for warning in caught:
            name = warning.category.__name__
            self.warnings[name] += 1
            if issubclass(warning.category, Image.DecompressionBombWarning):
                self.foreign["escaped DecompressionBombWarning"] += 1
                self.examples.setdefault("escaped DecompressionBombWarning", _show(source))

    def report(self, title: str, seconds: float) -> None:
        total = sum(self.outcomes.values())
        print(f"\n== {title}: {total} cases in {seconds:.0f} s ({total / max(seconds, 1e-9):.0f}/s)")
        for name, count in self.outcomes.most_common():
            print(f"   {name:<24} {count}")
        print(f"   foreign exceptions / wrong results: {sum(self.foreign.values())}")
        for name, count in self.foreign.most_common():
            print(f"     {name}: {count}\n       first: {self.examples[name]}")
        if self.warnings:
            print("   warnings seen (PIL's own, e.g. corrupt EXIF): " + ", ".join(f"{k} {v}" for k, v in self.warnings.items()))


def _show(source: Any) -> str:
    if isinstance(source, np.ndarray):
        return f"array {source.dtype} {source.shape}: {np.array2string(source.ravel()[:8], threshold=8)}"
    text = repr(source)
    return text if len(text) <= 300 else f"{text[:240]}...{text[-40:]} ({len(text)} chars)"


def _gray_problem(gray: Any) -> str | None:
    if not isinstance(gray, Image.Image) or gray.mode != "L":
        return f"not an 'L' image: {type(gray).__name__}"
    if not (MIN_IMAGE_SIDE <= min(gray.size) and max(gray.size) <= MAX_IMAGE_SIDE):
        return "an image outside the size limits"
    return None


def _fit_tiny_classifier(data: Path):
    import torch

    from tumor_classifier import TumorClassifier

    torch.manual_seed(0)
    torch.set_num_threads(1)
    paths = sorted((data / "Training").glob("*/*.jpg"))
    return TumorClassifier(
        "convnext", from_scratch=True, image_size=64, epochs=5, batch_size=8, augment=False, random_state=0,
        config_overrides={"hidden_sizes": [16, 32, 48, 64], "depths": [1, 1, 1, 1]},
    ).fit(paths, [p.parent.name for p in paths])


def fuzz(strategy, examples: int, rng_seed: int, body: Callable[[Any], None]) -> None:
    @seed(rng_seed)
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.generate],  # each input once: no replay, no shrinking
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def run(source: Any) -> None:
        body(source)

    run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=30000, help="inputs for load_image")
    parser.add_argument("--predict-examples", type=int, default=0, help="inputs for TumorClassifier.predict")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    folder = Path(tempfile.mkdtemp(prefix="fuzz-decoder-"))
    places = properties.make_places(folder)
    strategy = properties.hostile_inputs(places["folder"])
    failed = 0

    tally = Tally()
    start = time.perf_counter()
    fuzz(strategy, args.examples, args.seed, lambda source: tally.run(lambda: load_image(source), _gray_problem, source))
    tally.report("load_image", time.perf_counter() - start)
    failed += sum(tally.foreign.values())

    if args.predict_examples:
        classifier = _fit_tiny_classifier(Path(__file__).resolve().parents[1] / "tests" / "data" / "brain-tumor-mri")

        def labels_problem(labels: Any) -> str | None:
            # A class, or the verdict policy's answer for an input that is not a brain MRI.
            ok = len(labels) == 1 and labels[0] in (*classifier.classes_, NOT_BRAIN_MRI)
            return None if ok else f"wrong labels: {labels!r}"

        tally = Tally()
        start = time.perf_counter()
        fuzz(
            strategy,
            args.predict_examples,
            args.seed + 1,
            lambda source: tally.run(lambda: classifier.predict([source]), labels_problem, source),
        )
        tally.report("TumorClassifier.predict", time.perf_counter() - start)
        failed += sum(tally.foreign.values())

    print(f"\nforeign exceptions in total: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
