"""The app reads only files Gradio itself received: no server path can be named in a request.

A Gradio ``FileData`` payload carries a ``path``. A client can write any path there and
send it to ``/gradio_api/call/predict``; these tests do exactly that against the real
server (uvicorn on 127.0.0.1) and check that every path outside Gradio's upload folder
is refused with one message whatever lies there (so nothing says which files exist),
that nothing is copied into Gradio's cache, and that the probe files are never opened
(a FIFO would block whoever opened it: the request would hang).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import urllib.parse
from pathlib import Path

import pytest
import requests
from gradio.utils import get_upload_folder
from PIL import Image

from tumor_classifier.app import build_app, start_in_background

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def server(confident_classifier):
    with start_in_background(build_app(confident_classifier, max_batch_size=4)) as running:
        yield running


def _call_predict(server, path: str, timeout: float = 30) -> tuple[str, str]:
    """Sends a FileData naming ``path`` to the named endpoint; returns (event, data)."""
    payload = {"data": [{"path": path, "meta": {"_type": "gradio.FileData"}}, "gradcam", 0.0]}
    started = requests.post(server.url + "gradio_api/call/predict", json=payload, timeout=timeout)
    if started.status_code != 200:
        return "http", f"{started.status_code} {started.text}"
    event_id = started.json()["event_id"]
    stream = requests.get(f"{server.url}gradio_api/call/predict/{event_id}", timeout=timeout)
    events = re.findall(r"event: (\w+)\ndata: (.*)", stream.text)
    return events[-1] if events else ("none", stream.text)


def _digests(folder: Path) -> set[str]:
    found = set()
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            try:
                found.add(hashlib.sha256(path.read_bytes()).hexdigest())
            except OSError:
                pass
    return found


@pytest.fixture
def probes(tmp_path, test_images):
    """Files outside the upload folder that a request must not reach, and paths to them."""
    outside = tmp_path / "outside"
    outside.mkdir()
    image = outside / "private-scan.png"
    Image.open(test_images[0][0]).save(image)  # a real, readable image
    text = outside / "secret.txt"
    text.write_text("not for the web\n")
    fifo = outside / "pipe.png"
    os.mkfifo(fifo)
    upload_folder = Path(get_upload_folder())
    upload_folder.mkdir(parents=True, exist_ok=True)
    link_dir = upload_folder / f"probe-{os.getpid()}-{tmp_path.name}"
    link_dir.mkdir()
    link = link_dir / "scan.png"
    link.symlink_to(image)
    relative_up = os.path.relpath(image, upload_folder)
    paths = {
        "absolute image": str(image),
        "absolute text": str(text),
        "passwd": "/etc/passwd",
        "missing": str(outside / "does-not-exist.png"),
        "dot-dot from the upload folder": str(upload_folder / relative_up),
        "percent-encoded": urllib.parse.quote(str(image)),
        "relative": os.path.relpath(image),
        "directory": str(outside),
        "fifo": str(fifo),
        "symlink in the upload folder": str(link),
    }
    yield paths, [image, text]
    link.unlink()
    link_dir.rmdir()


def test_no_server_path_can_be_read_through_the_app(server, probes):
    paths, secrets = probes
    cache = Path(get_upload_folder())
    secret_digests = {hashlib.sha256(p.read_bytes()).hexdigest() for p in secrets}
    messages = {}
    for name, path in paths.items():
        event, data = _call_predict(server, path)
        assert event == "error", (name, event, data)
        message = json.loads(data) if data.startswith(("{", '"')) else data
        text = json.dumps(message)
        assert "root:" not in text and "not for the web" not in text, name
        # The path may be echoed (as sent, or made absolute); apart from it the answer
        # must not depend on what lies there.
        for echoed in sorted({path, os.path.abspath(path)}, key=len, reverse=True):
            text = text.replace(json.dumps(echoed)[1:-1], "PATH")
        messages[name] = text
    assert len(set(messages.values())) == 1, messages
    # Nothing of the probes was copied into Gradio's cache.
    assert not (_digests(cache) & secret_digests)


def test_a_real_upload_still_works(server, test_images):
    path = test_images[0][0]
    with path.open("rb") as handle:
        uploaded = requests.post(server.url + "gradio_api/upload", files={"files": (path.name, handle)}, timeout=30)
    assert uploaded.status_code == 200, uploaded.text
    [server_path] = uploaded.json()
    event, data = _call_predict(server, server_path)
    assert event == "complete", data
    assert json.loads(data)[1]["confidences"]


@pytest.mark.parametrize("route", ["gradio_api/file=", "gradio_api/file/", "gradio_api/proxy="])
@pytest.mark.parametrize("target", ["http://127.0.0.1:9/x.png", "https://example.com/x.png", "//example.com/x.png", "HTTP://example.com/x"])
def test_no_server_side_fetch_of_urls(server, route, target):
    response = requests.get(server.url + route + target, timeout=30)
    assert response.status_code in (403, 404), (route, target, response.status_code)


def test_the_event_itself_reads_only_regular_files_in_the_upload_folder(confident_classifier, probes, test_images):
    """The second layer: the function Gradio serves checks the path again (a directory,
    FIFO or link inside the upload folder, or any path outside it, is 'not found')."""
    import gradio as gr

    from tumor_classifier.app import UPLOAD_NOT_FOUND, build_demo

    [served] = [fn.fn for fn in build_demo(confident_classifier).fns.values() if fn.api_name == "predict"]
    paths, _ = probes
    inside = Path(get_upload_folder()) / f"probe-{os.getpid()}-event"
    inside.mkdir(parents=True, exist_ok=True)
    fifo = inside / "pipe.png"
    os.mkfifo(fifo)
    real = inside / "scan.jpg"
    real.write_bytes(test_images[0][0].read_bytes())
    try:
        for path in [*paths.values(), str(inside), str(fifo), str(inside / "missing.png")]:
            with pytest.raises(gr.Error, match="could not be found on the server") as caught:
                served([{"path": path}], ["gradcam"], [0.0])
            assert caught.value.message == UPLOAD_NOT_FOUND, path
        verdicts, labels, *_ = served([{"path": str(real)}], ["gradcam"], [0.0])
        assert labels[0]["confidences"], verdicts[0]
    finally:
        for child in inside.iterdir():
            child.unlink()
        inside.rmdir()
