"""Volumes in the app: NIfTI, one DICOM file and a zipped DICOM series, through the real app
functions and a real server; bad volumes and hostile zips get a clear error and write nothing
outside a private folder that is gone afterwards.

Real files only: small phantom heads (20 slices of 64 x 64) written here with nibabel and
pydicom (tests/volume_files.py); the classifier is the session's tiny fitted ConvNeXt.
"""

from __future__ import annotations

import dataclasses

import io
import stat
from collections import Counter
import tempfile
import uuid
import zipfile
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import requests
from gradio_client import Client, handle_file
from matplotlib.figure import Figure
from PIL import Image

import tumor_classifier.volumes as volumes_module
from tumor_classifier.exceptions import InvalidImageError, InvalidVolumeError
from tumor_classifier.app import (
    MAX_ZIP_MEMBERS,
    UploadTooLargeError,
    VolumeReport,
    build_app,
    check_scan,
    check_volume,
    predict_volume_for_page,
    predict_scan,
    predict_volume_upload,
    show_slice,
    start_in_background,
)
from tumor_classifier.reports import DISCLAIMER
from tumor_classifier.volumes import load_volume

from volume_files import phantom, write_dicom_series, write_nifti

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SHAPE = (64, 64, 20)  # x, y, z: 20 axial slices of 64 x 64
PREFIX = "tumor-classifier-volume-"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("volumes")
    data = phantom(SHAPE)
    nifti = write_nifti(folder / "head.nii.gz", data)
    _, series = write_dicom_series(folder / "series", data)
    archive = folder / "series.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bundle:
        for path in series:
            bundle.write(path, f"DICOM/{path.name}")
        bundle.writestr("README.txt", "one series")  # not DICOM: skipped, as in a folder
    return {"nifti": nifti, "series": series[0].parent, "zip": archive, "dcm": series[0]}


def _leftovers() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob(PREFIX + "*")}


# ------------------------------------------------------------------ reading uploads
def test_nifti_zip_and_folder_read_the_same_slices(files):
    before = _leftovers()
    from_zip = check_volume(files["zip"])
    np.testing.assert_array_equal(from_zip.slices, load_volume(files["series"]).slices)
    assert from_zip.source == "series.zip" and from_zip.slices.shape == (20, 64, 64)
    nifti = check_volume(files["nifti"])
    assert nifti.slices.shape == (20, 64, 64) and nifti.plane == "axial"
    np.testing.assert_array_equal(check_volume(files["nifti"].read_bytes(), name="head.nii.gz").slices, nifti.slices)
    np.testing.assert_array_equal(check_volume(files["zip"].read_bytes(), name="series.zip").slices, from_zip.slices)
    assert check_volume(files["dcm"]).slices.shape == (1, 64, 64)
    assert _leftovers() == before  # the private folders are gone


def test_a_hostile_zip_writes_nothing_outside_its_private_folder(files, tmp_path):
    """Members named ../x, /abs/x, a link to /etc/passwd: read as data under our own names, never by their paths."""
    tag = uuid.uuid4().hex
    escapes = [f"../../escape-{tag}.dcm", f"/tmp/escape-{tag}.dcm", f"a/../../../escape-{tag}.dcm", f"..\\..\\escape-{tag}.dcm"]
    series = sorted(files["series"].iterdir())
    archive = tmp_path / "upload" / "hostile.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as bundle:
        for name, path in zip(escapes, series):
            bundle.writestr(name, path.read_bytes())
        for path in series[len(escapes):]:
            bundle.write(path, path.name)
        link = zipfile.ZipInfo(f"link-{tag}")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        bundle.writestr(link, "/etc/passwd")
    work = tmp_path / "work"
    work.mkdir()
    volume = check_volume(archive, temp_root=work)
    np.testing.assert_array_equal(volume.slices, load_volume(files["series"]).slices)
    assert list(work.iterdir()) == []  # the private folder is deleted
    for root in (tmp_path, tmp_path.parent, Path("/tmp"), Path(tempfile.gettempdir()), archive.parent):
        assert not list(root.glob(f"*escape-{tag}*")) and not list(root.glob(f"link-{tag}")), root


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as bundle:
        for name, data in members.items():
            bundle.writestr(name, data)
    return path


@pytest.fixture(scope="module")
def bad_volumes(tmp_path_factory, files) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bad-volumes")
    nifti = files["nifti"].read_bytes()
    two = folder / "two"
    _, first = write_dicom_series(two / "a", phantom(SHAPE))
    _, second = write_dicom_series(two / "b", phantom(SHAPE))
    _, ct = write_dicom_series(folder / "ct", phantom(SHAPE), modality="CT")
    made = {
        "empty.nii.gz": b"",
        "notes.nii.gz": b"This is a text file, not a volume.\n" * 20,
        "cut.nii.gz": nifti[: len(nifti) // 3],
        "photo.dcm": b"\x89PNG\r\n\x1a\n" + b"\x00" * 400,
    }
    for name, data in made.items():
        (folder / name).write_bytes(data)
    write_nifti(folder / "flat.nii", np.ones((64, 64), dtype=np.float32))
    _zip(folder / "no-dicom.zip", {"a.txt": b"hello", "b.jpg": b"\xff\xd8\xff"})
    (folder / "damaged.zip").write_bytes(files["zip"].read_bytes()[:4000])
    # Intact zip structure, broken deflate stream: zeros read as a stored block with bad lengths (zlib.error).
    packed = io.BytesIO()
    with zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as bundle:
        bundle.writestr("0.dcm", first[0].read_bytes())
    corrupt = bytearray(packed.getvalue())
    corrupt[30 + len("0.dcm") : 30 + len("0.dcm") + 64] = bytes(64)
    (folder / "corrupt-stream.zip").write_bytes(bytes(corrupt))
    _zip(folder / "two-series.zip", {f"{i}.dcm": p.read_bytes() for i, p in enumerate(first + second)})
    _zip(folder / "ct.zip", {p.name: p.read_bytes() for p in ct})
    _zip(folder / "crowded.zip", {f"{i}.dcm": b"" for i in range(MAX_ZIP_MEMBERS + 1)})
    write_nifti(folder / "fmri.nii.gz", np.stack([phantom(SHAPE)] * 3, axis=-1))
    _, fmri = write_dicom_series(folder / "fmri", np.stack([phantom(SHAPE)] * 2, axis=-1), time_points=2)
    _zip(folder / "fmri.zip", {p.name: p.read_bytes() for p in fmri})
    return {path.name: path for path in folder.iterdir() if path.is_file()}


BAD_VOLUMES = [
    ("empty.nii.gz", "is empty (0 bytes)"),
    ("notes.nii.gz", "is not a volume this app can read. Upload a brain MRI volume as NIfTI (.nii, .nii.gz)"),
    ("cut.nii.gz", "could not be read"),
    ("photo.dcm", "is not a volume this app can read"),
    ("flat.nii", "has 2 dimension(s)"),
    ("no-dicom.zip", "holds no DICOM files (2 other file(s)); zip the files of one DICOM series"),
    ("damaged.zip", "is damaged or truncated"),
    ("corrupt-stream.zip", "could not be read (error: Error -3 while decompressing data"),
    ("two-series.zip", "holds 2 DICOM series"),
    ("ct.zip", "is a CT image (DICOM Modality 'CT'), not MRI"),
    ("crowded.zip", f"holds {MAX_ZIP_MEMBERS + 1} files; up to {MAX_ZIP_MEMBERS} are accepted"),
]

#: A 4-D volume: the library's "Choose one with time_point=..." names an option the app lacks.
FOUR_D = [
    ("fmri.nii.gz", "is 4-D: 3 time points (or channels). This app reads 3-D volumes"),
    ("fmri.zip", "is 4-D: 2 time points (or channels). This app reads 3-D volumes"),
]


@pytest.mark.parametrize("name, words", FOUR_D)
def test_a_4d_volume_says_what_the_app_reads_and_where_to_choose_a_time_point(confident_classifier, bad_volumes, name, words):
    with pytest.raises(gr.Error) as raised:
        predict_volume_upload(str(bad_volumes[name]), "gradcam", classifier=confident_classifier)
    message = str(raised.value.message)
    assert words in message and name in message, message
    assert "export one time point" in message and "--time-point" in message and "predict_volume(" in message, message
    assert "Choose one with time_point" not in message and "(--time-point on the command line)" not in message, message
    assert tempfile.gettempdir() + "/" not in message, message


@pytest.mark.parametrize("name, words", BAD_VOLUMES)
def test_a_bad_volume_is_a_clear_gr_error(confident_classifier, bad_volumes, name, words):
    before = _leftovers()
    with pytest.raises(gr.Error) as raised:
        predict_volume_upload(str(bad_volumes[name]), "gradcam", classifier=confident_classifier)
    message = str(raised.value.message)
    assert words in message and name in message, message
    assert tempfile.gettempdir() + "/" not in message and "Traceback" not in message  # no server folder shown
    assert _leftovers() == before


@pytest.mark.parametrize("name", ["notes.nii.gz", "damaged.zip", "two-series.zip"])
def test_the_page_says_a_bad_volume_in_the_verdict_panel(confident_classifier, bad_volumes, name):
    """The volume tab's Analyze: the message stays in the verdict panel, no toast; the outputs are cleared."""
    with pytest.raises(gr.Error) as raised:  # what the API endpoint says
        predict_volume_upload(str(bad_volumes[name]), "gradcam", classifier=confident_classifier)
    verdict, label, tumor, slider, heatmap, caption, plot, state = predict_volume_for_page(
        str(bad_volumes[name]), "gradcam", classifier=confident_classifier
    )
    assert verdict == f"### Cannot analyze this volume\n{raised.value.message}"
    assert (label, tumor, heatmap, caption, plot, state) == (None, "", None, "", None, None)
    assert slider.interactive is False


@pytest.mark.parametrize("check, error, noun", [(check_scan, InvalidImageError, "image"), (check_volume, InvalidVolumeError, "volume")])
def test_slices_and_volumes_pass_one_intake(check, error, noun, tmp_path):
    """Missing, empty, too large, of another type: the same checks and words for a slice and a volume."""
    (tmp_path / "empty.bin").write_bytes(b"")
    cases = [
        (None, {}, f"No {noun} was given. Upload a brain MRI {'slice' if noun == 'image' else noun} as "),
        (tmp_path / "gone.nii", {}, "The file 'gone.nii' was not found on the server."),
        (tmp_path / "empty.bin", {}, "The file 'empty.bin' is empty (0 bytes)."),
        (b"", {}, "The upload is empty (0 bytes)."),
        ([1, 2], {}, f"Cannot read a list as a{'n' if noun == 'image' else ''} {noun}."),
    ]
    for source, options, words in cases:
        with pytest.raises(error) as raised:
            check(source, **options)
        assert str(raised.value).startswith(words), (source, str(raised.value))
    with pytest.raises(UploadTooLargeError, match=r"^The file 'big.dcm' is 2.0 MB; files up to 1.0 MB are accepted.$"):
        check(b"\x00" * 2 * 1024**2, name="big.dcm", max_bytes=1024**2)


def test_a_zip_that_unpacks_too_large_is_refused(tmp_path, monkeypatch):
    """By its declared sizes before anything is unpacked; a directory that understates them
    is refused too, and nothing stays in the private folder."""
    import tumor_classifier.app.volume_uploads as volume_uploads

    monkeypatch.setattr(volume_uploads, "MAX_ZIP_BYTES", 3 * 1024**2)
    archive = _zip(tmp_path / "bomb.zip", {"big.dcm": b"\x00" * (2 * 1024**2), "bigger.dcm": b"\x00" * (2 * 1024**2)})
    with pytest.raises(InvalidVolumeError, match=r"unpacks to 4.0 MB; up to 3.0 MB"):
        check_volume(archive)
    # Forge the central directory to claim 1 byte per member.
    data = bytearray(archive.read_bytes())
    entries = [i for i in range(len(data) - 4) if data[i : i + 4] == b"PK\x01\x02"]
    assert len(entries) == 2
    for entry in entries:
        data[entry + 24 : entry + 28] = (1).to_bytes(4, "little")  # uncompressed size
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(InvalidVolumeError, match="'forged.zip' (could not be read|unpacks to more than)"):
        check_volume(bytes(data), name="forged.zip", temp_root=work)
    assert list(work.iterdir()) == []


# ------------------------------------------------------------------ the UI functions
@pytest.fixture(scope="module")
def nifti_result(confident_classifier, files):
    return predict_volume_upload(str(files["nifti"]), "gradcam", classifier=confident_classifier)


def test_rest_says_no_tumor_answer_for_a_volume_that_is_not_a_brain_mri(nifti_result):
    """A head CT's REST answer read 'tumor: true' beside 'verdict: not_brain_mri': a client reading
    only ``tumor`` was told of a tumour the app does not report."""
    from tumor_classifier.app.rest import volume_report_to_json

    report = nifti_result[-1]
    flagged = dataclasses.replace(report.prediction, label=None, tumour=True, looks_like_mri=False, mri_reasons=["a CT"])
    body = volume_report_to_json(dataclasses.replace(report, prediction=flagged))
    assert body["verdict"] == "not_brain_mri" and body["label"] is None
    assert body["tumor"] is None and body["not_brain_mri"] is True
    mri = dataclasses.replace(report.prediction, label=report.prediction.model_label, looks_like_mri=True, mri_reasons=[])
    assert volume_report_to_json(dataclasses.replace(report, prediction=mri))["tumor"] is mri.tumour  # a brain MRI keeps its answer


def test_predict_volume_upload_gives_the_librarys_verdict(confident_classifier, files, nifti_result):
    verdict, label, tumor, slider, heatmap, caption, plot, state = nifti_result
    expected = confident_classifier.predict_volume(str(files["nifti"]), method="gradcam")
    assert isinstance(state, VolumeReport)
    p = state.prediction
    assert (p.label, p.tumour, p.key_slice, p.runs) == (expected.label, expected.tumour, expected.key_slice, expected.runs)
    np.testing.assert_allclose(p.slice_tumour_probability, expected.slice_tumour_probability, atol=1e-6, equal_nan=True)
    title = "Tumor detected: " + str(expected.label) if expected.tumour else "No tumor detected"
    if not expected.looks_like_mri:
        title = "This does not look like a brain MRI volume"
    assert verdict.startswith(f"### {title}") and DISCLAIMER in verdict and "20 axial slices of head.nii.gz" in verdict
    assert label["label"] == (expected.label or "Not a brain MRI")
    assert tumor.endswith("%") or tumor.startswith("n/a")
    assert (slider.maximum, slider.value, slider.step) == (19, expected.key_slice, 1)
    assert heatmap.size == (64, 64) and heatmap.mode == "RGB"
    assert caption.startswith(f"Slice {expected.key_slice} of 0-19 (key slice)")
    # The plot is the library's figure (the CLI's), drawn from the slice probabilities.
    assert isinstance(plot, Figure)
    line = plot.axes[0].lines[0]
    np.testing.assert_allclose(line.get_ydata(), expected.slice_tumour_probability, atol=1e-6, equal_nan=True)


def test_the_slider_shows_each_slices_own_heatmap(confident_classifier, nifti_result):
    state = nifti_result[-1]
    p = state.prediction
    classified = [int(i) for i in np.flatnonzero(p.classified)]
    assert not p.classified[0] and not p.classified[19] and len(classified) >= 3  # the phantom's caps are empty
    other = next(i for i in classified if i != p.key_slice)
    heatmap, caption, plot = show_slice(state, other, "gradcam", classifier=confident_classifier)
    expected = confident_classifier.explain([p.volume.slices[other]], method="gradcam")[0].overlay
    np.testing.assert_array_equal(np.asarray(heatmap), np.asarray(expected))
    assert caption.startswith(f"Slice {other} of 0-19:") and "tumor probability" in caption
    assert [line.get_label() for line in plot.axes[0].lines][-1] == f"shown slice {other}"
    key_heatmap, _, _ = show_slice(state, p.key_slice, "gradcam", classifier=confident_classifier)
    assert np.asarray(key_heatmap).tobytes() == np.asarray(p.explanation.overlay).tobytes()
    # Another method re-draws the slice with it.
    occluded, caption, _ = show_slice(state, other, "occlusion", classifier=confident_classifier)
    # Named as the method buttons name it (the caption said "heatmap: smoothgrad_contrast" beside
    # a button reading "SmoothGrad, tumor vs. no tumor").
    assert "heatmap: Occlusion." in caption and not np.array_equal(np.asarray(occluded), np.asarray(heatmap))
    # Not at brain level: the slice as read, no heatmap.
    outside, caption, _ = show_slice(state, 0, "gradcam", classifier=confident_classifier)
    np.testing.assert_array_equal(np.asarray(outside)[..., 0], p.volume.slices[0])
    assert "not at brain level, not classified" in caption
    assert show_slice(None, 3, "gradcam", classifier=confident_classifier) == (gr.skip(), gr.skip(), gr.skip())


def test_a_volume_is_read_once_per_request(confident_classifier, files, monkeypatch):
    """The upload is read into slices once; the verdict, the key slice and the slider's
    slices come from that Volume (counted where the library reads files)."""
    reads = []
    real = volumes_module.read_raw
    monkeypatch.setattr(volumes_module, "read_raw", lambda *args, **kwargs: reads.append(args[0]) or real(*args, **kwargs))
    *_, state = predict_volume_upload(str(files["zip"]), "gradcam", classifier=confident_classifier)
    for index in range(3, 6):
        show_slice(state, index, "gradcam", classifier=confident_classifier)
    assert len(reads) == 1, reads


@pytest.mark.parametrize(
    "kind, expected",
    [("nifti", {"nifti header": 1}), ("zip", {"dicom header": 20, "dicom file": 20}), ("dcm", {"dicom header": 1, "dicom file": 1})],
)
def test_a_volume_header_is_parsed_once_per_request(confident_classifier, files, monkeypatch, kind, expected):
    """The headers the app checks its limits on are those the library reads the voxels
    from (counted where headers are parsed: spies around nibabel's and pydicom's real
    readers). A DICOM file is opened twice, its header for the checks, then whole for its
    pixels; never its header alone again."""
    import nibabel
    import pydicom

    parsed = []
    real_load, real_read = nibabel.load, pydicom.dcmread

    def read(path, *args, **kwargs):
        parsed.append(("dicom header" if kwargs.get("stop_before_pixels") else "dicom file", Path(path).name))
        return real_read(path, *args, **kwargs)

    monkeypatch.setattr(nibabel, "load", lambda path, *args, **kwargs: parsed.append(("nifti header", Path(path).name)) or real_load(path, *args, **kwargs))
    monkeypatch.setattr(pydicom, "dcmread", read)
    verdict, *_ = predict_volume_upload(str(files[kind]), "gradcam", classifier=confident_classifier)
    assert verdict.startswith("### ") and len(parsed) == len(set(parsed)), parsed  # no file read the same way twice
    assert Counter(what for what, _ in parsed) == expected, parsed


# ------------------------------------------------------------------ a real server
@pytest.fixture(scope="module")
def server(confident_classifier):
    with start_in_background(build_app(confident_classifier, max_batch_size=2)) as running:
        yield running


def test_gradio_client_predict_volume(server, confident_classifier, files, bad_volumes):
    from gradio_client.exceptions import AppError

    client = Client(server.url, verbose=False, download_files=True)
    try:
        endpoint = requests.get(server.url + "gradio_api/info", timeout=30).json()["named_endpoints"]["/predict_volume"]
        assert [p["parameter_name"] for p in endpoint["parameters"]] == ["volume", "method"]
        expected = confident_classifier.predict_volume(str(files["series"]), method="gradcam")
        verdict, label, tumor, slider, heatmap, caption, plot = client.predict(handle_file(str(files["zip"])), "gradcam", api_name="/predict_volume")
        assert label["label"] == (expected.label or "Not a brain MRI") and DISCLAIMER in verdict
        assert (slider["value"], slider["maximum"]) == (expected.key_slice, 19)  # the slider update, as sent to the page
        with Image.open(heatmap) as image:
            assert image.size == (64, 64)
        with pytest.raises(AppError, match="holds 2 DICOM series"):
            client.predict(handle_file(str(bad_volumes["two-series.zip"])), "gradcam", api_name="/predict_volume")
    finally:
        client.close()


def test_rest_predict_volume(server, confident_classifier, files, bad_volumes):
    expected = confident_classifier.predict_volume(str(files["nifti"]), method="auto")
    with files["nifti"].open("rb") as handle:
        response = requests.post(server.url + "api/v1/predict_volume", files={"file": ("head.nii.gz", handle)}, timeout=120)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["label"] == expected.label and body["tumor"] == (expected.tumour if expected.looks_like_mri else None)
    assert body["key_slice"] == expected.key_slice
    assert body["slices"] == 20 and body["classified_slices"] == int(expected.classified.sum())
    assert [None if np.isnan(v) else pytest.approx(v, abs=1e-6) for v in expected.slice_tumour_probability] == body["slice_tumor_probability"]
    overlay = requests.post(
        server.url + "api/v1/predict_volume", params={"overlay": "true"}, files={"file": ("head.nii.gz", files["nifti"].read_bytes())}, timeout=120
    ).json()["key_slice_overlay_png_base64"]
    import base64

    assert Image.open(io.BytesIO(base64.b64decode(overlay))).size == (64, 64)
    for name, status in (("two-series.zip", 400), ("notes.nii.gz", 415), ("empty.nii.gz", 400), ("fmri.nii.gz", 400), ("fmri.zip", 400)):
        response = requests.post(server.url + "api/v1/predict_volume", files={"file": (name, bad_volumes[name].read_bytes())}, timeout=60)
        assert response.status_code == status, (name, response.text)
        assert name in response.json()["detail"]
        if name.startswith("fmri"):
            assert "This app reads 3-D volumes" in response.json()["detail"] and "Choose one with" not in response.json()["detail"]



def test_a_volume_sent_as_a_slice_is_pointed_to_the_volume_route_and_tab(server, confident_classifier, files):
    """A NIfTI or DICOM file sent to the slice route was "not an image this app can read",
    as if it were a text file; it is a volume, which the app reads elsewhere."""
    for path in (files["nifti"], files["dcm"]):
        response = requests.post(server.url + "api/v1/predict", files={"file": (path.name, path.read_bytes())}, timeout=60)
        detail = response.json()["detail"]
        assert response.status_code == 415 and path.name in detail, detail
        assert "is a volume" in detail and "POST /api/v1/predict_volume" in detail and "not an image this app can read" not in detail, detail
        with pytest.raises(gr.Error) as raised:  # the slice tab's endpoint
            predict_scan(str(path), "gradcam", 0.45, classifier=confident_classifier)
        assert "is a volume" in raised.value.message and "Volume tab" in raised.value.message, raised.value.message
    # The slice tab's upload box (Gradio's type filter refuses a volume before the app sees it) says where volumes go.
    components = requests.get(server.url + "config", timeout=30).json()["components"]
    scan = next(c for c in components if c.get("props", {}).get("elem_id") == "scan")
    assert "Volume tab" in scan["props"]["label"], scan["props"]["label"]
    # A file that is neither keeps its message.
    response = requests.post(server.url + "api/v1/predict", files={"file": ("notes.txt", b"not a scan" * 50)}, timeout=60)
    assert "not an image this app can read" in response.json()["detail"] and "predict_volume" not in response.json()["detail"]

def test_a_volume_that_is_not_a_brain_mri_shows_no_tumour_probability_per_slice(confident_classifier, nifti_result):
    """A head CT read "n/a" as the volume's tumor probability, while the key slice's caption said
    "tumor probability 87.7%" and the plot shaded a "tumour run": numbers the verdict withholds."""
    report = nifti_result[-1]
    p = report.prediction
    flagged = dataclasses.replace(report, prediction=dataclasses.replace(p, label=None, looks_like_mri=False, mri_reasons=["a CT"], runs=[(p.key_slice, p.key_slice)]))
    assert flagged.tumor_probability_text.startswith("n/a")
    _, caption, plot = show_slice(flagged, p.key_slice, "gradcam", classifier=confident_classifier)
    assert "%" not in caption and "not look like a brain MRI" in caption, caption
    labels = [artist.get_label() for artist in plot.axes[0].get_children()]
    assert "tumor run" not in labels
    assert "not a brain MRI" in plot.axes[0].get_title()
    # A brain MRI volume keeps its numbers.
    mri = dataclasses.replace(report, prediction=dataclasses.replace(p, label=p.model_label, looks_like_mri=True, mri_reasons=[]))
    _, caption, plot = show_slice(mri, p.key_slice, "gradcam", classifier=confident_classifier)
    assert "tumor probability" in caption and "%" in caption and "not a brain MRI" not in plot.axes[0].get_title()


def test_the_probability_plot_spells_tumor_one_way(confident_classifier, nifti_result):
    """The app's plot was titled "Tumor probability" over a legend of "tumour probability", "tumour
    run" and a "P(tumour)" axis; the app and the verdicts say "tumor", and so does every figure."""
    from tumor_classifier.plots import slice_probabilities_figure

    report = nifti_result[-1]
    p = report.prediction
    with_run = dataclasses.replace(report, prediction=dataclasses.replace(p, looks_like_mri=True, runs=[(p.key_slice, p.key_slice)]))
    _, _, app_plot = show_slice(with_run, p.key_slice, "gradcam", classifier=confident_classifier)
    library_plot = slice_probabilities_figure(np.array([0.1, 0.9, 0.8]), key_slice=1, runs=[(1, 2)])  # the CLI's figure
    for figure in (app_plot, library_plot):
        axis = figure.axes[0]
        texts = [axis.get_title(), axis.get_ylabel(), *(text.get_text() for text in axis.get_legend().get_texts())]
        assert not any("tumour" in text.lower() for text in texts), texts
        assert "tumor run" in texts and "P(tumor)" in texts and axis.get_title().startswith("Tumor probability"), texts
