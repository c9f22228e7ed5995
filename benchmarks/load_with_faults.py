"""Load with faults (not a test): good MRI slices and bad uploads mixed, 8 REST clients.

Starts the real app (``tumor_classifier.app.serve``, what ``tumor-classifier serve`` runs)
in its own process on a free port of 127.0.0.1, then ``--clients`` threads share
``--requests`` ``POST /api/v1/predict`` requests drawn (seeded) from these kinds:

==============  ===========================================================  ========
kind            what is sent                                                 expected
==============  ===========================================================  ========
good            a Kaggle Testing slice (JPEG), all four classes              200
png_4096        a real 4096 x 4096 colour PNG (about 60 KB; heavy to decode)  200
jpeg_8000       a 16 px JPEG whose frame header declares 8000 x 8000         400
truncated_jpeg  the first half of a Testing JPEG                             400
not_image       a text file                                                  415
empty           0 bytes                                                      400
ico             a Windows icon (an image format the app does not take)       415
wrong_field     a good slice in the multipart field ``image``, not ``file``  400
bad_method      a good slice with ``method=sobel``                           400
too_large       21 MB of random bytes (over the 20 MB limit)                 413
==============  ===========================================================  ========

Printed: p50 / p95 latency per kind and of the good requests (which share the server
with the bad ones in flight), the answers by status, the errors by kind (an expected 4xx
is not an error; an unexpected status, a 5xx, a wrong answer body or a connection error
is), and the server's resident memory (``VmRSS`` from ``/proc``) after start-up and one
warm-up request, its peak during the load (sampled every 50 ms, and ``VmHWM``) and after
the load. The machine may be shared: compare runs made side by side.

Usage::

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python benchmarks/load_with_faults.py
    .venv/bin/python benchmarks/load_with_faults.py --requests 2000 --clients 8 --seed 1
"""

from __future__ import annotations

import argparse
import io
import os
import random
import struct
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import requests
from PIL import Image

from load_app import start_server  # the same child-process app start as the load benchmark

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "brain-tumor-mri" / "Testing"
#: The app's default Gradio batch (tumor_classifier.app.MAX_BATCH_SIZE); REST requests are not batched.
MAX_BATCH_SIZE = 8
#: kind -> (share of the requests, expected HTTP status)
KINDS = {
    "good": (0.70, 200),
    "png_4096": (0.05, 200),
    "jpeg_8000": (0.04, 400),
    "truncated_jpeg": (0.04, 400),
    "not_image": (0.04, 415),
    "empty": (0.03, 400),
    "ico": (0.03, 415),
    "wrong_field": (0.03, 400),
    "bad_method": (0.02, 400),
    "too_large": (0.02, 413),
}


def _encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _jpeg_declaring(width: int, height: int) -> bytes:
    data = bytearray(_encode(Image.new("L", (16, 16), 90), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _png_4096() -> bytes:
    tile = np.zeros((128, 128, 3), dtype=np.uint8)
    tile[:64, :64] = tile[64:, 64:] = (200, 55, 100)
    tile[:64, 64:] = tile[64:, :64] = (0, 255, 0)
    return _encode(Image.fromarray(np.tile(tile, (32, 32, 1))), "PNG")  # 4096 x 4096 colour checkerboard


def make_requests(total: int, seed: int, data: Path = DATA) -> list[tuple[str, str, dict, dict]]:
    """``(kind, file name, files, params)`` per request, in a seeded order."""
    slices = sorted(data.glob("*/*.jpg"))
    if not slices:
        raise SystemExit(f"no Testing slices under {data} (see ../shared/data/brain-tumor-mri/README.md)")
    rng = random.Random(seed)
    good = [p.read_bytes() for p in rng.sample(slices, min(200, len(slices)))]
    fixed = {
        "png_4096": ("big.png", _png_4096()),
        "jpeg_8000": ("declares-8000.jpg", _jpeg_declaring(8000, 8000)),
        "truncated_jpeg": ("truncated.jpg", good[0][: len(good[0]) // 2]),
        "not_image": ("notes.jpg", b"This is a text file, not an image.\n" * 40),
        "empty": ("empty.png", b""),
        "ico": ("icon.ico", _encode(Image.new("L", (64, 64), 128), "ICO")),
        "too_large": ("huge.jpg", os.urandom(21 * 1024 * 1024)),
    }
    kinds = rng.choices(list(KINDS), weights=[share for share, _ in KINDS.values()], k=total)
    out = []
    for index, kind in enumerate(kinds):
        data = good[index % len(good)]
        name, field, params = f"slice-{index}.jpg", "file", {"method": "gradcam"}
        if kind in fixed:
            name, data = fixed[kind]
        elif kind == "wrong_field":
            field = "image"
        elif kind == "bad_method":
            params = {"method": "sobel"}
        out.append((kind, name, {field: (name, data)}, params))
    return out


def _status_mib(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def run_load(url: str, planned: list, clients: int) -> tuple[list[tuple[str, int | str, float, str]], float]:
    """Sends the planned requests from ``clients`` threads; ``(kind, status, seconds, problem)`` each."""
    results: list[tuple[str, int | str, float, str]] = []
    lock = threading.Lock()
    queue = iter(planned)

    def work() -> None:
        session = requests.Session()
        while True:
            with lock:
                item = next(queue, None)
            if item is None:
                return
            kind, _name, files, params = item
            start = time.perf_counter()
            problem, status = "", "connection"
            try:
                response = session.post(url + "api/v1/predict", files=files, params=params, timeout=300)
                status = response.status_code
                body = response.json()
                if status == 200 and not (body.get("class") and abs(sum(body["probabilities"].values()) - 1) < 1e-3):
                    problem = f"incomplete answer {str(body)[:120]}"
                elif status != 200:
                    detail = body.get("detail")
                    problem = "" if detail else f"no detail in {str(body)[:120]}"
                    if status != KINDS[kind][1]:
                        problem = f"{problem} {str(detail)[:200]}".strip()
            except Exception as error:  # noqa: BLE001 - counted and reported, the load goes on
                problem = f"{type(error).__name__}: {str(error)[:160]}"
            elapsed = time.perf_counter() - start
            with lock:
                results.append((kind, status, elapsed, problem))
                if len(results) % 100 == 0:
                    print(f"  {len(results)} / {len(planned)} requests", file=sys.stderr, flush=True)

    threads = [threading.Thread(target=work) for _ in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="Model folder or Hub id (default: the model shipped in the package).")
    parser.add_argument("--requests", type=int, default=1000, help="Requests in all (default 1000).")
    parser.add_argument("--clients", type=int, default=8, help="Concurrent REST clients (default 8).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the request mix and order (default 0).")
    parser.add_argument("--start-timeout", type=float, default=900.0, help="Seconds the app may take to start (default 900; a busy machine is slow).")
    parser.add_argument("--data", type=Path, default=DATA, help="The Kaggle Testing folder (default: ../shared/data/brain-tumor-mri/Testing).")
    args = parser.parse_args(argv)

    planned = make_requests(args.requests, args.seed, args.data)
    print("starting the app ...", file=sys.stderr, flush=True)
    process, url = start_server(args.model, batch=True, max_batch_size=MAX_BATCH_SIZE, timeout=args.start_timeout)
    print(f"app up on {url}", file=sys.stderr, flush=True)
    samples: list[float] = []
    stop = threading.Event()
    try:
        warm = requests.post(url + "api/v1/predict", files={"file": ("warm.jpg", planned_good(planned))}, timeout=300)
        warm.raise_for_status()
        before = _status_mib(process.pid, "VmRSS")

        def sample() -> None:
            while not stop.is_set():
                samples.append(_status_mib(process.pid, "VmRSS"))
                stop.wait(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        results, wall = run_load(url, planned, args.clients)
        stop.set()
        sampler.join()
        time.sleep(1.0)
        after = _status_mib(process.pid, "VmRSS")
        high_water = _status_mib(process.pid, "VmHWM")
        server_log = ""
    finally:
        stop.set()
        process.terminate()
        try:
            _, server_log = process.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            _, server_log = process.communicate()

    expected = {kind: status for kind, (_, status) in KINDS.items()}
    by_kind: dict[str, list[float]] = defaultdict(list)
    statuses: Counter = Counter()
    errors: Counter = Counter()
    examples: dict[str, str] = {}
    for kind, status, elapsed, problem in results:
        by_kind[kind].append(elapsed)
        statuses[(kind, status)] += 1
        if status == "connection":
            label = "connection error"
        elif isinstance(status, int) and status >= 500:
            label = f"unexpected {status}"
        elif status != expected[kind]:
            label = f"unexpected {status} (expected {expected[kind]})"
        elif problem:
            label = "bad answer body"
        else:
            continue
        errors[(kind, label)] += 1
        examples.setdefault(f"{kind}: {label}", problem)

    print(
        f"model: {args.model or 'shipped default'}; {len(results)} requests from {args.clients} clients in {wall:.1f} s "
        f"({len(results) / wall:.1f} req/s); {os.cpu_count()} CPUs; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; "
        f"load average at the end {os.getloadavg()[0]:.2f}"
    )
    print("\n| kind | requests | expected | answers | p50 ms | p95 ms | max ms |")
    print("|---|---|---|---|---|---|---|")
    for kind in KINDS:
        times = by_kind.get(kind, [])
        answers = ", ".join(f"{s}: {n}" for (k, s), n in sorted(statuses.items(), key=str) if k == kind)
        print(
            f"| {kind} | {len(times)} | {expected[kind]} | {answers} | {1000 * percentile(times, 50):.0f} | "
            f"{1000 * percentile(times, 95):.0f} | {1000 * max(times, default=float('nan')):.0f} |"
        )
    bad = [t for kind, times in by_kind.items() if kind != "good" for t in times]
    print(f"\ngood requests: p50 {1000 * percentile(by_kind['good'], 50):.0f} ms, p95 {1000 * percentile(by_kind['good'], 95):.0f} ms")
    print(f"bad/heavy requests: p50 {1000 * percentile(bad, 50):.0f} ms, p95 {1000 * percentile(bad, 95):.0f} ms")
    expected_4xx = sum(n for (kind, status), n in statuses.items() if status == expected[kind] and expected[kind] >= 400)
    print(f"expected 4xx answers: {expected_4xx}")
    print(f"errors (unexpected status, 5xx, bad body, connection): {sum(errors.values())}")
    for (kind, label), n in sorted(errors.items()):
        print(f"  {kind}: {label}: {n}   e.g. {examples.get(f'{kind}: {label}', '')[:160]}")
    peak = max(samples, default=float("nan"))
    print(f"server RSS MiB: before {before:.0f}, peak {peak:.0f} (VmHWM {high_water:.0f}), after {after:.0f}")
    tracebacks = server_log.count("Traceback")
    print(f"tracebacks in the server log: {tracebacks}")
    if tracebacks:
        print(server_log[-2000:])
    return 1 if errors else 0


def planned_good(planned: list) -> bytes:
    """The bytes of the first good slice of the plan (for the warm-up request)."""
    for kind, _name, files, _params in planned:
        if kind == "good":
            return files["file"][1]
    raise SystemExit("no good request in the plan")


if __name__ == "__main__":
    sys.exit(main())
