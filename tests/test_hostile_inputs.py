"""Hostile inputs: every bad input gives InvalidImageError with a clear message, in bounded memory.

One test per row of :data:`BAD_INPUTS` (the README's "bad input -> what happens" table),
checks of the reduced decoding of large images, EXIF orientation, and hypothesis
properties: whatever the bytes, array or path, ``load_image`` returns an "L" image or
raises ``InvalidImageError`` - nothing else. ``benchmarks/fuzz_decoder.py`` runs the same
properties with a large budget.
"""

from __future__ import annotations

import io
import os
import struct
import sys
import threading
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tumor_classifier import InvalidImageError, load_image
from tumor_classifier import decoding, encoded_images
from tumor_classifier.preprocessing import MAX_DECODED_SIDE, MAX_FILE_BYTES, MAX_IMAGE_SIDE

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is in the test extra")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402


# ------------------------------------------------------------------ crafted inputs
def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _scan(size: int = 64) -> Image.Image:
    """A disc on black: a stand-in for a slice, with structure for the codecs."""
    yy, xx = np.mgrid[:size, :size]
    disc = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2) * (80 + (xx % 50) * 3)
    return Image.fromarray(disc.astype(np.uint8))


def png_header_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (tiny file: the data is a stub)."""
    data = bytearray(_encode(Image.new("L", (16, 16)), "PNG"))
    # IHDR: 8-byte signature, 4-byte length, b"IHDR", width, height, ... then a CRC.
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def jpeg_header_claiming(width: int, height: int) -> bytes:
    """A 16 x 16 JPEG whose frame header (SOF0) claims ``width`` x ``height``."""
    data = bytearray(_encode(Image.new("L", (16, 16), 90), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def gif_frame_claiming(width: int, height: int) -> bytes:
    """A GIF with a 16 x 16 screen whose first frame claims ``width`` x ``height``.

    PIL grows the image to the frame while opening and runs its global bomb check there.
    """
    data = bytearray(_encode(Image.new("L", (16, 16), 90), "GIF"))
    descriptor = data.index(b",", 13)
    data[descriptor + 5 : descriptor + 9] = struct.pack("<HH", width, height)
    return bytes(data)


def animated_gif() -> bytes:
    frames = [Image.new("L", (32, 32), level) for level in (40, 200, 120)]
    return _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)


def exif_rotated(fmt: str, orientation: int = 6) -> bytes:
    """A 40 x 20 (W x H) image, bright in its left quarter, tagged with an EXIF orientation."""
    array = np.zeros((20, 40), dtype=np.uint8)
    array[:, :10] = 255
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _encode(Image.fromarray(array), fmt, exif=exif)


def big_png(side: int = 4096) -> bytes:
    """A real, highly compressible RGB PNG of ``side`` x ``side`` pixels (about 0.2 MB)."""
    yy, xx = np.mgrid[:side, :side]
    level = ((xx ^ yy) & 255).astype(np.uint8)
    return _encode(Image.fromarray(np.stack([level, level // 2, 255 - level], axis=-1)), "PNG", compress_level=1)


def _peak_rss_growth(function) -> int | None:
    """Bytes the process's peak resident memory grew while ``function`` ran (Linux), else None.

    Writing "5" to /proc/self/clear_refs resets the peak ("VmHWM") to the current RSS,
    which also counts the C allocations of PIL and numpy that tracemalloc does not see.
    """

    def field(name: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1]) * 1024
        raise KeyError(name)

    try:
        Path("/proc/self/clear_refs").write_text("5")
        before = field("VmRSS")
    except (OSError, KeyError):
        return None
    function()
    return field("VmHWM") - before


def make_places(folder: Path) -> dict[str, Path]:
    """Bad files in ``folder``: empty, text, a 1 GiB sparse file, a FIFO; and a good scan."""
    files = {
        "empty.png": b"",
        "notes.txt": b"This is a text file, not an image.\n" * 20,
        "scan.png": _encode(_scan(), "PNG"),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    sparse = folder / "huge.bin"  # a 1 GiB file that takes no disk: refused from its size
    with open(sparse, "wb") as file:
        file.truncate(2**30)
    if hasattr(os, "mkfifo"):
        os.mkfifo(folder / "pipe")
    return {"folder": folder, **{name: folder / name for name in files}, "huge.bin": sparse, "pipe": folder / "pipe"}


@pytest.fixture(scope="module")
def places(tmp_path_factory) -> dict[str, Path]:
    return make_places(tmp_path_factory.mktemp("hostile"))


_JPEG = _encode(_scan(), "JPEG", quality=90)
_PNG = _encode(_scan(), "PNG")

#: (id, input or a function of the ``places`` fixture, words the message must contain).
BAD_INPUTS = [
    ("path longer than the OS allows", lambda p: str(p["folder"] / ("a" * 5000)), ["cannot be read", "name too long"]),
    ("file name longer than 255 bytes", lambda p: str(p["folder"] / ("b" * 300 + ".png")), ["name too long"]),
    ("path with a NUL byte", lambda p: str(p["folder"]) + "/scan\x00.png", ["cannot be read", "not a valid path"]),
    ("path that does not exist", lambda p: p["folder"] / "nope.png", ["does not exist"]),
    ("directory", lambda p: p["folder"], ["is a directory, not an image file"]),
    ("FIFO (named pipe)", lambda p: p["pipe"], ["not a regular file", "FIFO"]),
    ("/dev/zero", lambda p: "/dev/zero", ["not a regular file", "character device"]),
    ("1 GiB file", lambda p: p["huge.bin"], ["1024.0 MiB", f"up to {MAX_FILE_BYTES / 2**20:.1f} MiB"]),
    ("empty file", lambda p: p["empty.png"], ["empty"]),
    ("0 bytes", b"", ["empty"]),
    ("text file", lambda p: p["notes.txt"], ["not an image in a format this package reads", "accepted"]),
    ("EPS (a format PIL knows, not accepted)", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n", ["not an image in a format"]),
    ("PPM (a format PIL knows, not accepted)", _encode(_scan(), "PPM"), ["not an image in a format"]),
    ("truncated JPEG", _JPEG[: len(_JPEG) // 3], ["corrupt or truncated"]),
    ("truncated PNG", _PNG[: len(_PNG) // 2], ["corrupt or truncated"]),
    ("PNG cut inside its header", _PNG[:20], ["corrupt or truncated"]),
    ("PNG header claiming 8000x8000", png_header_claiming(8000, 8000), ["corrupt or truncated"]),
    ("PNG header claiming 10000x10000", png_header_claiming(10000, 10000), ["10000x10000", "up to 8192 pixels a side"]),
    ("PNG header claiming 50000x50000", png_header_claiming(50000, 50000), ["50000x50000", "up to 8192 pixels a side"]),
    ("JPEG header claiming 50000x50000", jpeg_header_claiming(50000, 50000), ["50000x50000", "up to 8192 pixels a side"]),
    ("GIF frame claiming 10000x10000", gif_frame_claiming(10000, 10000), ["10000x10000", "up to 8192 pixels a side"]),
    ("image of 4x4 pixels", _encode(Image.new("L", (4, 4)), "PNG"), ["4x4", "at least 8 pixels"]),
    ("float array with +-1e308", None, None),  # decodes: see test_huge_finite_floats_use_the_full_grey_range
    ("float array with inf", np.full((16, 16), np.inf), ["NaN or infinite", "nan_to_num"]),
    ("float array with -inf", np.where(np.eye(16) > 0, -np.inf, 1.0), ["NaN or infinite"]),
    ("float array with NaN", np.where(np.eye(16) > 0, np.nan, 1.0).astype(np.float32), ["NaN or infinite"]),
    ("long double beyond float64", np.full((16, 16), np.longdouble(10) ** 400), ["beyond the float64 range"]),
    ("0 bytes, said as such", b"", ["The image data (0 bytes) is empty", "expected a file path"]),
    ("12 bytes of text", b"hello world!", ["The image data (12 bytes) is not an image in a format", "accepted"]),
    ("1-D array", np.zeros(100), ["a 1-D numpy array of shape (100,)", "(H, W)"]),
    ("5-D array", np.zeros((2, 2, 2, 2, 2)), ["a 5-D numpy array of shape (2, 2, 2, 2, 2)"]),
    ("numpy scalar", np.float64(1.5), ["a numpy float64 scalar (1.5)", "accepted"]),
    ("array of 0x0", np.zeros((0, 0)), ["0x0", "at least 8 pixels"]),
    ("array of 9000x8", np.zeros((9000, 8), dtype=np.uint8), ["8x9000", "up to 8192 pixels a side"]),
    ("complex array", np.zeros((16, 16), dtype=np.complex64), ["dtype complex64", "accepted: numeric"]),
    ("object array", np.zeros((16, 16), dtype=object), ["dtype object", "accepted: numeric"]),
    ("not an image type", 12345, ["an object of type int", "accepted"]),
]
_ROWS = [row for row in BAD_INPUTS if row[2] is not None]


@pytest.mark.parametrize("name, source, words", _ROWS, ids=[row[0] for row in _ROWS])
def test_bad_input_gives_a_clear_error(name, source, words, places):
    if callable(source):
        source = source(places)
    if name == "FIFO (named pipe)" and not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this system")
    if isinstance(source, str) and source.startswith("/dev/") and not os.path.exists(source):
        pytest.skip(f"no {source} on this system")
    outcome: list[BaseException | Image.Image] = []

    def run() -> None:  # in a thread: a decoder that opens a FIFO would block forever
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                outcome.append(load_image(source))
            except BaseException as error:  # noqa: BLE001 - the test looks at what it was
                outcome.append(error)
        outcome.extend(w.message for w in caught if issubclass(w.category, Image.DecompressionBombWarning))

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout=20)
    assert not worker.is_alive(), f"load_image blocked on the {name}"
    error = outcome[0]
    assert isinstance(error, InvalidImageError), f"{name}: {error!r}"
    assert isinstance(error, ValueError)
    for word in words:
        assert word in str(error), (name, str(error))
    assert len(outcome) == 1, f"a DecompressionBombWarning escaped: {outcome[1:]}"


@pytest.mark.parametrize("name", ["empty.png", "notes.txt", "huge.bin", "folder", "missing.png"])
def test_decode_names_a_bad_file_as_load_image_does(name, places):
    """The CLI, the archive and the app decode with ``decode``: its message must name the file too."""
    path = places["folder"] / "missing.png" if name == "missing.png" else places[name]
    with pytest.raises(InvalidImageError) as expected:
        load_image(path)
    with pytest.raises(InvalidImageError) as info:
        decoding.decode(path)
    assert str(info.value) == str(expected.value)
    assert path.name in str(info.value)


def test_messages_stay_short_for_long_paths(places):
    with pytest.raises(InvalidImageError) as info:
        load_image("/" + "x" * 100_000)
    assert len(str(info.value)) < 500 and "100001 characters" in str(info.value)


def test_a_file_over_the_byte_limit_is_refused_and_never_read_whole(places, monkeypatch):
    procfs = Path("/proc/self/status")  # stat says 0 bytes: read in chunks up to the limit
    if procfs.exists():
        with pytest.raises(InvalidImageError, match="not an image in a format"):
            load_image(procfs)
    monkeypatch.setattr(encoded_images, "MAX_FILE_BYTES", 1000)  # the reader reads its own global
    (places["folder"] / "big.png").write_bytes(_encode(_scan(256), "PNG", compress_level=0))
    with pytest.raises(InvalidImageError, match="bytes; files up to 1000 bytes are accepted"):
        load_image(places["folder"] / "big.png")
    with pytest.raises(InvalidImageError, match="is 2000 bytes; files up to 1000 bytes"):
        load_image(bytes(2000))
    if procfs.exists() and len(procfs.read_bytes()) > 1000:
        with pytest.raises(InvalidImageError, match="is more than 1000 bytes"):
            load_image(procfs)


def test_huge_finite_floats_use_the_full_grey_range():
    array = np.tile([1e308, -1e308, 0.0, 0.5e308], (16, 4))
    gray = np.asarray(load_image(array))  # was all black: 1e308 - -1e308 overflowed to inf
    assert gray[0, 0] == 255 and gray[0, 1] == 0 and gray[0, 2] == 128 and gray[0, 3] == 191
    largest = np.finfo(np.float64).max
    assert np.asarray(load_image(np.tile([largest, -largest], (16, 8))))[0, :2].tolist() == [255, 0]
    # Any range at all: the window is the image's own min..max, computed in float64.
    tiny = np.array([[5e-324, 1e-323] * 8] * 16)
    assert set(np.unique(np.asarray(load_image(tiny)))) == {0, 255}


def test_huge_header_jpeg_decodes_reduced_in_bounded_memory():
    data = jpeg_header_claiming(8000, 8000)  # 6 KB; decoding it whole took +64 MiB to +788 MiB
    assert len(data) < 10_000
    result = {}
    growth = _peak_rss_growth(lambda: result.setdefault("gray", load_image(data)))
    gray = result["gray"]
    assert gray.mode == "L" and gray.size == (2000, 2000)  # 1/4: the smallest factor to <= 2048
    if growth is not None:
        assert growth < 40 * 2**20, f"+{growth / 2**20:.0f} MiB"


def test_large_png_decodes_reduced():
    data = big_png(4096)
    result = {}
    growth = _peak_rss_growth(lambda: result.setdefault("gray", load_image(data)))
    gray = result["gray"]
    assert gray.size == (MAX_DECODED_SIDE, MAX_DECODED_SIDE) and gray.mode == "L"
    # The same as converting at full size and box-reducing by 2.
    full = Image.open(io.BytesIO(data)).convert("L").reduce(2)
    np.testing.assert_array_equal(np.asarray(gray), np.asarray(full))
    if growth is not None:  # one RGB frame (48 MiB) plus strips; was +144 MiB here, +2.1 GiB for 16 bit
        assert growth < 100 * 2**20, f"+{growth / 2**20:.0f} MiB"


def test_reduction_is_the_same_for_every_input_kind():
    rng = np.random.default_rng(0)
    sixteen = (rng.random((2500, 3000)) * 4000 + 1000).astype(np.uint16)  # 12-bit data, > 2048
    expected = Image.fromarray(np.round((sixteen - 1000.0) / (sixteen.max() - 1000.0) * 255).astype(np.uint8))
    expected = np.asarray(expected.reduce(2))
    for source in (sixteen, Image.fromarray(sixteen), _encode(Image.fromarray(sixteen), "PNG", compress_level=1)):
        gray = load_image(source)
        assert gray.size == (1500, 1250)
        np.testing.assert_array_equal(np.asarray(gray), expected)
    # A palette image with transparency, reduced strip by strip, equals reducing the whole.
    palette = Image.fromarray(rng.integers(0, 256, (2100, 2300), dtype=np.uint8)).convert("P")
    palette.info["transparency"] = 7
    whole = decoding._pil_to_gray(palette).reduce(2)
    np.testing.assert_array_equal(np.asarray(load_image(palette)), np.asarray(whole))
    # A thin strip keeps a short side of at least MIN_IMAGE_SIDE.
    assert load_image(np.zeros((8, 8000), dtype=np.uint8)).size == (8000, 8)


def test_images_up_to_the_decoded_side_are_unchanged():
    array = np.asarray(_scan(MAX_DECODED_SIDE))
    gray = load_image(_encode(Image.fromarray(array), "PNG", compress_level=1))
    np.testing.assert_array_equal(np.asarray(gray), array)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "TIFF", "WEBP"])
def test_exif_orientation_is_applied(fmt):
    gray = load_image(exif_rotated(fmt, 6))  # 6: the camera was turned; rotate 90 deg clockwise
    assert gray.size == (20, 40)
    array = np.asarray(gray)
    assert array[:8].mean() > 200 and array[-25:].mean() < 30  # the bright left quarter is on top
    assert load_image(Image.open(io.BytesIO(exif_rotated(fmt, 6)))).size == (20, 40)  # PIL input too


def test_animated_gif_gives_its_first_frame():
    gray = load_image(animated_gif())
    assert gray.mode == "L" and gray.size == (32, 32) and np.asarray(gray).mean() == pytest.approx(40, abs=2)


def test_good_inputs_still_decode_as_before(places):
    array = np.asarray(_scan())
    for source in (places["scan.png"], str(places["scan.png"]), _PNG, bytearray(_PNG), {"bytes": _PNG, "path": None}):
        np.testing.assert_array_equal(np.asarray(load_image(source)), array)
    l_image = Image.fromarray(array)
    assert load_image(l_image) is l_image  # an "L" image is returned as it is, as before


def test_cli_reports_bad_paths_and_predicts_the_good_ones(fitted_classifier, test_images, tmp_path, capsys):
    import json

    from tumor_classifier.cli import main

    model = fitted_classifier.save_pretrained(tmp_path / "model")
    good = str(test_images[0][0])
    long_path = str(tmp_path / ("a" * 5000))
    assert main(["predict", good, long_path, str(tmp_path), "--model", str(model), "--json"]) == 1
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows[0]["image"] == good and rows[0]["label"] in fitted_classifier.classes_
    errors = [row.get("error", "") for row in rows[1:]]
    assert any("name too long" in e for e in errors) and any("is a directory" in e for e in errors)


# ------------------------------------------------------------------ properties
def _seeds() -> list[bytes]:
    """Small valid images of every accepted format and several modes: the mutation seeds."""
    scan = _scan(24)
    seeds = [
        _encode(scan, "JPEG"),
        _encode(scan.convert("RGB"), "JPEG", progressive=True),
        _encode(scan.convert("CMYK"), "JPEG"),
        _encode(scan, "PNG"),
        _encode(Image.fromarray(np.asarray(scan).astype(np.uint16) * 200), "PNG"),
        _encode(scan.convert("RGBA"), "PNG"),
        _encode(scan.convert("P"), "PNG", transparency=0),
        _encode(scan, "TIFF"),
        _encode(Image.fromarray(np.asarray(scan).astype(np.float32)), "TIFF"),
        _encode(scan.convert("RGB"), "TIFF", compression="tiff_deflate"),
        _encode(scan.convert("RGB"), "BMP"),
        _encode(scan, "GIF"),
        animated_gif(),
        exif_rotated("PNG"),
        exif_rotated("JPEG"),
    ]
    try:
        seeds.append(_encode(scan.convert("RGB"), "WEBP"))
    except (KeyError, OSError):  # Pillow without WebP
        pass
    return seeds


SEEDS = _seeds()


@st.composite
def hostile_bytes(draw) -> bytes:
    """Arbitrary bytes, or a valid image with bytes overwritten, inserted or cut off."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=512))
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 6))):
        position = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["set", "insert", "delete"]))
        chunk = draw(st.binary(min_size=1, max_size=8))
        if action == "set":
            data[position : position + len(chunk)] = chunk
        elif action == "insert":
            data[position:position] = chunk
        else:
            del data[position : position + len(chunk)]
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


_DTYPES = [np.uint8, np.uint16, np.int16, np.float32, np.float64]


@st.composite
def hostile_arrays(draw) -> np.ndarray:
    """Small arrays of 0 to 5 dimensions; floats include NaN, inf and the extremes."""
    dtype = np.dtype(draw(st.sampled_from(_DTYPES)))
    shape = draw(
        st.one_of(
            hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=12),
            st.tuples(st.integers(0, 40), st.integers(0, 40)),
            st.tuples(st.integers(6, 24), st.integers(6, 24), st.sampled_from([1, 2, 3, 4, 5])),
        )
    )
    if dtype.kind == "f":
        info = np.finfo(dtype)
        extremes = [info.max, -info.max, info.tiny, -info.tiny, 0.0, np.nan, np.inf, -np.inf]
        if dtype == np.float64:
            extremes += [1e308, -1e308, 5e-324]
        elements = st.one_of(hnp.from_dtype(dtype), st.sampled_from([dtype.type(v) for v in extremes]))
    else:
        info = np.iinfo(dtype)
        elements = st.one_of(hnp.from_dtype(dtype), st.sampled_from([info.min, info.max, 0]))
    # Every element drawn for small arrays; larger ones are a fill value with some drawn
    # elements (drawing 10^5 elements one by one would make each example slow).
    small = int(np.prod(shape)) <= 256
    fill = draw(st.sampled_from([None, elements])) if small else elements
    return draw(hnp.arrays(dtype, shape, elements=elements, fill=fill))


def hostile_paths(folder: Path) -> st.SearchStrategy:
    special = [
        "",
        ".",
        "..",
        "/",
        "/dev/zero",
        "/dev/null",
        "/proc/self/status",
        "/proc/self/mem",
        "/proc/self/fd/0",
        str(folder),
        str(folder / "pipe"),
        str(folder / "scan.png"),
        str(folder / "scan.png") + "/..",
        str(folder / "notes.txt"),
        str(folder / "huge.bin"),
    ]
    return st.one_of(
        st.sampled_from(special),
        st.text(max_size=40),
        st.text(alphabet="./a\x00\udc80é", max_size=300),
        st.builds(lambda part, n: part * n, st.sampled_from(["a", "../", "/", "é"]), st.integers(0, 6000)),
        st.builds(lambda name: str(folder / name), st.text(max_size=300)),
    ).flatmap(lambda text: st.sampled_from([text, Path(text) if "\x00" not in text else text]))


def hostile_inputs(folder: Path) -> st.SearchStrategy:
    return st.one_of(
        hostile_bytes(),
        hostile_arrays(),
        hostile_paths(folder),
        st.builds(lambda data: {"bytes": data, "path": None}, hostile_bytes()),
        st.sampled_from([None, 3.5, [], object()]),
    )


def check_decoder(source) -> None:
    """The property: an "L" image of accepted size, or InvalidImageError; nothing else."""
    try:
        gray = load_image(source)
    except InvalidImageError:
        return
    assert isinstance(gray, Image.Image) and gray.mode == "L"
    assert min(gray.size) >= decoding.MIN_IMAGE_SIDE and max(gray.size) <= MAX_IMAGE_SIDE


@pytest.fixture(scope="module")
def fuzz_folder(places) -> Path:
    return places["folder"]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX paths")
@pytest.mark.filterwarnings("ignore:Corrupt EXIF data:UserWarning")  # PIL's own, on mutated files
def test_load_image_never_raises_a_foreign_exception(fuzz_folder):
    @settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(hostile_inputs(fuzz_folder))
    def check(source):
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            check_decoder(source)

    check()


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data:UserWarning")
def test_predict_never_raises_a_foreign_exception(fitted_classifier, fuzz_folder):
    @settings(max_examples=50, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(hostile_inputs(fuzz_folder))
    def check(source):
        try:
            labels = fitted_classifier.predict([source])
        except InvalidImageError:
            return
        assert len(labels) == 1 and labels[0] in (*fitted_classifier.classes_, "not_brain_mri")

    check()
