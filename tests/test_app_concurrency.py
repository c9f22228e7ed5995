"""Requests on several threads: no process-wide state changed, uploads never held behind the model.

Real threads on the real functions the REST route calls (``check_scan``, ``analyze_scans``);
no timing: where each step runs is read from the calls themselves.
"""

from __future__ import annotations

import io
import struct
import sys
import threading
import warnings

import numpy as np
import pytest
from PIL import Image

from tumor_classifier import InvalidImageError
from tumor_classifier.app import analyze_scans, check_scan
from tumor_classifier.classifier import _model_passes
from tumor_classifier.preprocessing import load_image

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _png_header_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header declares ``width`` x ``height`` (PIL's bomb check warns on it)."""
    import zlib

    data = bytearray(_encode(Image.new("L", (16, 16)), "PNG"))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def test_concurrent_uploads_leave_pil_limit_and_warning_filters_alone(one_per_class_bytes):
    """PIL's MAX_IMAGE_PIXELS and the warning filters are process-wide: changing them and
    restoring them from several threads leaves a wrong value behind (seen in issue 10)."""
    pixels_before = Image.MAX_IMAGE_PIXELS
    filters_before = list(warnings.filters)
    uploads = [
        *one_per_class_bytes,
        _png_header_claiming(10_000, 10_000),  # over PIL's warning limit (89 Mpx), refused by size
        _encode(Image.new("RGB", (3000, 2000), (40, 40, 40)), "JPEG"),  # decoded reduced
        b"not an image at all",
    ]
    failures: list[BaseException] = []

    def work(offset: int) -> None:
        try:
            for round_ in range(4):
                for data in uploads[offset:] + uploads[:offset]:
                    try:
                        check_scan(data)
                        load_image(data)
                    except InvalidImageError:
                        pass
        except BaseException as error:  # noqa: BLE001 - reported below
            failures.append(error)

    threads = [threading.Thread(target=work, args=(i % len(uploads),)) for i in range(6)]
    with warnings.catch_warnings(record=True) as caught:  # the test's own thread only
        warnings.simplefilter("always")
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    assert not failures, failures
    assert Image.MAX_IMAGE_PIXELS == pixels_before
    assert list(warnings.filters) == filters_before


@pytest.fixture(scope="module")
def one_per_class_bytes(data_dir) -> list[bytes]:
    return [sorted((data_dir / "Testing" / c).glob("*.jpg"))[0].read_bytes() for c in ("glioma", "meningioma", "notumor", "pituitary")]


def test_upload_is_decoded_and_drawn_outside_the_model_lock(confident_classifier, one_per_class_bytes):
    """Only the model's passes hold the lock: a large upload's decode, the overlay and the
    map's resizing must not keep other requests' passes waiting (issue 9, item 5)."""
    lock = _model_passes(confident_classifier.model_)
    watched = {"read_header", "load_image", "decode", "to_original", "overlay", "compute_attributions"}
    seen: list[tuple[str, bool]] = []
    large = _encode(Image.fromarray(np.tile(np.asarray(Image.open(io.BytesIO(one_per_class_bytes[0])).convert("L")), (3, 3))), "PNG")

    def profile(frame, event, arg):
        if event == "call" and frame.f_code.co_name in watched:
            seen.append((frame.f_code.co_name, lock._is_owned()))

    errors: list[BaseException] = []

    def request() -> None:
        sys.setprofile(profile)
        try:
            analyze_scans([large], ["gradcam"], [0.45], classifier=confident_classifier)
        except BaseException as error:  # noqa: BLE001 - re-raised in the test's thread
            errors.append(error)
        finally:
            sys.setprofile(None)

    worker = threading.Thread(target=request)
    worker.start()
    worker.join()
    if errors:
        raise errors[0]
    names = {name for name, _ in seen}
    assert {"read_header", "load_image", "to_original", "overlay", "compute_attributions"} <= names, names
    held = {name for name, owned in seen if owned}
    assert held == {"compute_attributions"}, f"run while holding the model lock: {sorted(held)}"


def test_model_passes_wait_for_each_other_not_for_uploads(confident_classifier, one_per_class_bytes):
    """While another thread holds the model, an upload is still checked and refused or decoded."""
    lock = _model_passes(confident_classifier.model_)
    answers: list[object] = []
    with lock:
        worker = threading.Thread(target=lambda: answers.extend([check_scan(one_per_class_bytes[1]), _refusal(b"\xff\xd8\xff")]))
        worker.start()
        worker.join(timeout=120)
        assert not worker.is_alive(), "check_scan waited for the model lock"
    assert answers[0] is not None and answers[1].startswith("The upload is not an image this app can read")


def _refusal(data: bytes) -> str:
    try:
        check_scan(data)
    except InvalidImageError as error:
        return str(error)
    return ""


def test_read_header_gives_the_declared_size_without_decoding_or_warning():
    from tumor_classifier.preprocessing import read_header

    gif = bytearray(_encode(Image.new("L", (16, 16), 90), "GIF"))
    descriptor = gif.index(b",", 13)
    gif[descriptor + 5 : descriptor + 9] = struct.pack("<HH", 10_000, 10_000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL's DecompressionBombWarning would fail here
        assert read_header(_png_header_claiming(30_000, 20_000)) == ("PNG", (30_000, 20_000))
        assert read_header(bytes(gif)) == ("GIF", (10_000, 10_000))
        assert read_header(_encode(Image.new("RGB", (40, 30)), "JPEG")) == ("JPEG", (40, 30))
    with pytest.raises(InvalidImageError, match="not an image in a format this package reads"):
        read_header(b"This is a text file.")
    with pytest.raises(InvalidImageError):
        read_header(_encode(Image.new("L", (64, 64)), "ICO"))  # readable by PIL, not one of ours
