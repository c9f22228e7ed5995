"""Load benchmark of the web app (not a test): concurrent gradio_client clients, batching on and off.

For each mode (Gradio ``batch=True`` with ``--max-batch-size``, then ``batch=False``) the
script starts the app in its own process on a free port of 127.0.0.1 and measures:

* ``1 client``: sequential requests, the single-request round trip (upload, queue,
  prediction with a Grad-CAM heatmap, download of the heatmap PNG). Goal: p50 < 300 ms
  on the project's 2 CPU cores with the shipped model.
* ``N clients``: ``--clients`` threads, each with its own ``gradio_client.Client``,
  share ``--requests`` requests; latency percentiles, throughput, errors (must be 0).
* ``REST``: the same single-request round trip through ``POST /api/v1/predict``
  (no Gradio queue), for reference.

The server's peak resident memory (``VmHWM``) is read from ``/proc`` at the end of each
mode. The machine may be shared (a training run beside it): compare the two modes of one
run, and repeat a run before trusting a number.

Usage::

    nice -n 5 .venv/bin/python benchmarks/load_app.py                      # shipped model
    nice -n 5 .venv/bin/python benchmarks/load_app.py --model runs/default_model \\
        --requests 200 --clients 8 --single 40
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
SERVER_CODE = (
    "import sys\n"
    "from tumor_classifier.app import serve\n"
    "serve(model=sys.argv[1] or None, host='127.0.0.1', port=int(sys.argv[2]),"
    " batch=sys.argv[3] == 'on', max_batch_size=int(sys.argv[4]))\n"
)


@dataclass
class Phase:
    """Latencies (seconds) and errors of one measured phase."""

    name: str
    clients: int
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    wall: float = 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.wall if self.wall else float("nan")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_server(
    model: str | None, batch: bool, max_batch_size: int, threads: int | None = None, timeout: float = 120.0
) -> tuple[subprocess.Popen, str]:
    """Starts the app in a child process; returns it and its URL once the page answers."""
    port = _free_port()
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_OFFLINE="1")
    if threads:
        # At process start, so that every thread's OpenMP team gets it (Gradio and
        # FastAPI run the model on worker threads, where torch.set_num_threads of the
        # main thread does not reach oneDNN).
        env["OMP_NUM_THREADS"] = str(threads)
    process = subprocess.Popen(
        [sys.executable, "-c", SERVER_CODE, model or "", str(port), "on" if batch else "off", str(max_batch_size)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the app exited with status {process.returncode}:\n{process.stderr.read()[-3000:]}")
        try:
            if requests.get(url + "config", timeout=2).status_code == 200:
                return process, url
        except requests.ConnectionError:
            pass
        time.sleep(0.25)
    process.kill()
    raise RuntimeError(f"the app did not answer on {url} within {timeout:.0f} s")


def stop_server(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def drive_gradio(url: str, images: list[Path], clients: int, total: int, method: str, name: str) -> Phase:
    """``clients`` threads, one ``Client`` each, share ``total`` requests."""
    from gradio_client import Client, handle_file

    phase = Phase(name, clients)
    connections = [Client(url, verbose=False) for _ in range(clients)]
    lock = threading.Lock()
    counter = iter(range(total))

    def work(client: Client) -> None:
        while True:
            with lock:
                index = next(counter, None)
            if index is None:
                return
            image = images[index % len(images)]
            start = time.perf_counter()
            try:
                verdict, label, heatmap, tumor = client.predict(handle_file(str(image)), method, 0.45, api_name="/predict")
                if not label or not label.get("confidences") or not heatmap or not Path(heatmap).is_file():
                    raise RuntimeError(f"incomplete answer: label={label!r}, heatmap={heatmap!r}")
                elapsed = time.perf_counter() - start
                with lock:
                    phase.latencies.append(elapsed)
            except Exception as error:  # noqa: BLE001 - counted and reported, the load goes on
                with lock:
                    phase.errors.append(f"{type(error).__name__}: {error}")

    threads = [threading.Thread(target=work, args=(c,)) for c in connections]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    phase.wall = time.perf_counter() - start
    for connection in connections:
        connection.close()
    return phase


def drive_rest(url: str, images: list[Path], total: int, method: str) -> Phase:
    phase = Phase("REST", 1)
    session = requests.Session()
    start_all = time.perf_counter()
    for index in range(total):
        image = images[index % len(images)]
        start = time.perf_counter()
        try:
            response = session.post(url + "api/v1/predict", params={"method": method, "overlay": "true"}, files={"file": (image.name, image.read_bytes())}, timeout=120)
            response.raise_for_status()
            if not response.json().get("overlay_png_base64"):
                raise RuntimeError("no overlay in the answer")
            phase.latencies.append(time.perf_counter() - start)
        except Exception as error:  # noqa: BLE001
            phase.errors.append(f"{type(error).__name__}: {error}")
    phase.wall = time.perf_counter() - start_all
    return phase


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="Model folder or Hub id (default: the model shipped in the package).")
    parser.add_argument("--requests", type=int, default=96, help="Requests in the concurrent phase (default 96).")
    parser.add_argument("--clients", type=int, default=8, help="Concurrent gradio_client clients (default 8).")
    parser.add_argument("--single", type=int, default=30, help="Sequential requests of the 1-client and REST phases (default 30).")
    parser.add_argument("--max-batch-size", type=int, default=8, help="Gradio max_batch_size with batching on (default 8).")
    parser.add_argument("--method", default="gradcam", help="Heatmap method (default gradcam).")
    parser.add_argument("--images", type=Path, default=ROOT / "tumor_classifier" / "examples", help="Folder of slices to send (default: the shipped examples).")
    parser.add_argument("--warmup", type=int, default=4, help="Unmeasured requests first (default 4).")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS of the server (default: torch's default, one per core).")
    args = parser.parse_args(argv)

    images = sorted(p for p in args.images.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"})
    if not images:
        parser.error(f"no images in {args.images}")
    print(
        f"model: {args.model or 'shipped default'}; {len(images)} images; {os.cpu_count()} CPUs; "
        f"server threads {args.threads or 'default'}; load average {os.getloadavg()[0]:.2f}; Python {platform.python_version()}",
        flush=True,
    )
    rows = []
    failures = 0
    for batch in (True, False):
        mode = f"batch on (max {args.max_batch_size})" if batch else "batch off"
        process, url = start_server(args.model, batch, args.max_batch_size, args.threads)
        try:
            drive_gradio(url, images, 1, args.warmup, args.method, "warmup")
            phases = [
                drive_gradio(url, images, 1, args.single, args.method, "1 client"),
                drive_gradio(url, images, args.clients, args.requests, args.method, f"{args.clients} clients"),
                drive_rest(url, images, args.single, args.method),
            ]
            peak = _peak_rss_mb(process.pid)
        finally:
            stop_server(process)
        for phase in phases:
            rows.append((mode, phase, peak))
            failures += len(phase.errors)
            for error in phase.errors[:3]:
                print(f"  {mode}, {phase.name}: {error}", flush=True)
        print(f"{mode}: done", flush=True)

    print()
    print("| mode | phase | requests | p50 ms | p95 ms | throughput req/s | errors | server peak MB |")
    print("|---|---|---|---|---|---|---|---|")
    for mode, phase, peak in rows:
        print(
            f"| {mode} | {phase.name} | {len(phase.latencies) + len(phase.errors)} | {1000 * phase.percentile(50):.0f} | "
            f"{1000 * phase.percentile(95):.0f} | {phase.throughput:.2f} | {len(phase.errors)} | {peak:.0f} |"
        )
    single = next(phase for mode, phase, _ in rows if phase.name == "1 client")
    goal = 1000 * single.percentile(50)
    print(f"\nsingle-request round trip p50 {goal:.0f} ms (goal < 300 ms): {'met' if goal < 300 else 'NOT met'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
