"""The app in a real browser: Debian's chromium driven by Playwright.

Upload a slice, click Analyze, read the label and see the heatmap; click an example;
upload bad files and read the one message each gets; upload a NIfTI volume, read its
verdict and move the slice slider; open the REST docs page. Every
request a page makes is checked: one to any address but 127.0.0.1 is blocked and fails
the test. Screenshots (after a prediction, after each bad upload, of /docs) are written
to temporary folders; the tests print their paths (``pytest -s``).

Skips only when chromium is not installed (``.ci/run`` installs it with apt-get).
Playwright's own browser download is never used (it needs the network).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import urlsplit

import pytest

import numpy as np

from tumor_classifier.app import build_app, example_paths, start_in_background

from volume_files import phantom, write_nifti

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # Belt and braces: no name resolves except 127.0.0.1, so nothing can leave the machine
    # even if a request slipped past the route handler below.
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
]
TIMEOUT_MS = 30_000
# One list: a second `pytestmark = ...` would replace the first (the skip was lost that way).
pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)"),
    pytest.mark.usefixtures("one_torch_thread"),
]


@pytest.fixture(scope="module")
def app_url(confident_classifier):
    with start_in_background(build_app(confident_classifier)) as server:
        yield server.url


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def _guarded_page(browser, url: str, ready: str = "#scan input[type=file]"):
    """A page on ``url`` whose requests off 127.0.0.1 are blocked and listed in ``outside``."""
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    outside: list[str] = []

    def guard(route):
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    context.route("**/*", guard)
    page = context.new_page()
    page.on("websocket", lambda ws: None if urlsplit(ws.url).hostname == "127.0.0.1" else outside.append(ws.url))
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url)
    page.wait_for_selector(ready, state="attached")
    return context, page, outside


@pytest.fixture
def page(browser, app_url):
    """A fresh page on the app; fails the test if the page asked for anything off 127.0.0.1."""
    context, page, outside = _guarded_page(browser, app_url)
    yield page
    page.wait_for_timeout(500)  # let late requests (fonts, icons) show up
    context.close()
    assert outside == [], f"the page made requests off 127.0.0.1: {outside}"


def _upload(page, path: Path) -> None:
    """Uploads ``path`` and waits until its preview is shown (the upload has arrived)."""
    page.set_input_files("#scan input[type=file]", str(path))
    page.wait_for_function(
        "(name) => { const img = document.querySelector('#scan img');"
        " return img !== null && img.complete && img.naturalWidth > 0 && img.src.includes(name); }",
        arg=path.name,
    )


def _wait_for_result(page) -> str:
    """Waits for the label and a loaded heatmap image; returns the label's headline."""
    page.wait_for_selector("[data-testid=label-output-value]")
    page.wait_for_function(
        "() => { const img = document.querySelector('#heatmap img');"
        " return img !== null && img.complete && img.naturalWidth > 0; }"
    )
    return page.inner_text("[data-testid=label-output-value]").strip().splitlines()[0]


def test_upload_click_and_read_the_verdict(page, confident_classifier, data_dir, tmp_path):
    scan = sorted((data_dir / "Testing" / "meningioma").glob("*.jpg"))[0]
    expected = confident_classifier.predict(str(scan))[0]
    _upload(page, scan)
    page.click("#analyze")
    assert _wait_for_result(page) == expected
    verdict = page.inner_text("#verdict")
    assert ("No tumor detected" if expected == "notumor" else f"Tumor detected: {expected}") in verdict
    assert page.input_value("#tumor-probability textarea, #tumor-probability input").endswith("%")
    assert "not for diagnosis" in page.inner_text("#notice")
    heatmap_size = page.evaluate("() => document.querySelector('#heatmap img').naturalWidth")
    assert heatmap_size == 224  # the overlay is drawn on the uploaded slice, at its size
    # The opacity control re-draws the heatmap (without running the model again).
    drawn = page.get_attribute("#heatmap img", "src")
    page.fill("#opacity input[type=number]", "0.9")
    page.keyboard.press("Enter")
    page.wait_for_function("(old) => document.querySelector('#heatmap img').src !== old", arg=drawn)
    assert _wait_for_result(page) == expected
    # The legend says what the colours mean.
    legend = page.inner_text("#heatmap-legend")
    assert "no evidence" in legend and "strongest" in legend
    # Another method re-computes the heatmap without pressing Analyze again.
    drawn = page.get_attribute("#heatmap img", "src")
    page.locator("#method label", has_text="Integrated Gradients").click()
    page.wait_for_function("(old) => document.querySelector('#heatmap img').src !== old", arg=drawn, timeout=60_000)
    assert _wait_for_result(page) == expected
    # The title and Analyze are drawn with the theme's bold face, which has every letter
    # (see test_app.test_the_themes_fonts_have_every_latin_letter).
    bold = page.evaluate("() => [...document.fonts].filter(f => f.family.includes('Source Sans Pro') && f.weight === '700').map(f => f.status)")
    assert bold == ["loaded"]
    screenshot = tmp_path / "app-after-prediction.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 10_000
    print(f"screenshot of the page after a prediction: {screenshot}")


def test_a_method_chosen_before_the_first_analysis(page, confident_classifier, data_dir):
    """Choosing the heatmap method first, then uploading and analysing, shows the verdict.

    (The method's change event once sent a skip to the label; Gradio rebuilt the label
    from its constructor for the session, without the wrapper that shows "Uncertain", and
    every later analysis of that page failed with "Error" badges.)
    """
    assert page.evaluate("() => document.querySelector('#method input:checked').value") != "hirescam"
    page.locator("#method label", has_text="HiResCAM").click()
    page.wait_for_timeout(500)  # the change event has run
    scan = sorted((data_dir / "Testing" / "glioma").glob("*.jpg"))[0]
    _upload(page, scan)
    page.click("#analyze")
    assert _wait_for_result(page) == confident_classifier.predict(str(scan))[0]
    assert page.locator(".toast-body").count() == 0


def test_click_an_example(page, confident_classifier):
    example = next(path for path in example_paths() if path.stem == "pituitary")
    expected = confident_classifier.predict(str(example))[0]
    page.locator("#examples button", has_text="pituitary").click()
    assert _wait_for_result(page) == expected
    page.wait_for_selector("#scan img")


BAD_UPLOADS = {
    "broken-scan.jpg": "'broken-scan.jpg' looks like a JPEG image but is corrupt or truncated",
    "notes.jpg": "'notes.jpg' is not an image this app can read",
    "empty.jpg": "'empty.jpg' is empty (0 bytes)",
}


@pytest.mark.parametrize("name", list(BAD_UPLOADS))
def test_a_bad_upload_says_what_is_wrong_once(page, data_dir, tmp_path, name):
    jpeg = sorted((data_dir / "Testing" / "glioma").glob("*.jpg"))[0].read_bytes()
    contents = {"broken-scan.jpg": jpeg[: len(jpeg) // 2], "notes.jpg": b"This is a text file, not an image.\n" * 20, "empty.jpg": b""}
    bad = tmp_path / name
    bad.write_bytes(contents[name])
    page.set_input_files("#scan input[type=file]", str(bad))
    page.wait_for_function("(words) => document.querySelector('#verdict').innerText.includes(words)", arg=BAD_UPLOADS[name])
    page.wait_for_timeout(1000)  # a second message (a toast, a repeat) would show up by now
    body = page.inner_text("body")
    # One message, saying what was wrong and what is accepted; no toast, no "Error" badges.
    assert body.count(BAD_UPLOADS[name]) == 1, body
    assert body.count("Upload a brain MRI slice as JPEG, PNG, TIFF, BMP, GIF or WebP") == 1, body
    assert "Error" not in body, body
    assert page.locator(".toast-body").count() == 0
    # The upload box is empty again (its preview would be a broken image); Analyze waits for a usable scan.
    assert page.locator("#scan img").count() == 0
    assert page.is_disabled("#analyze")
    screenshot = tmp_path / f"app-after-bad-upload-{bad.stem}.png"
    page.screenshot(path=str(screenshot), full_page=True)
    print(f"screenshot of the page after the bad upload {name}: {screenshot}")
    # A good file afterwards works as usual.
    good = sorted((data_dir / "Testing" / "notumor").glob("*.jpg"))[0]
    _upload(page, good)
    page.click("#analyze")
    _wait_for_result(page)
    assert BAD_UPLOADS[name] not in page.inner_text("body")


def _loaded_src(page, selector: str, old: str | None = None) -> str:
    """Waits for the image under ``selector`` to be loaded (and differ from ``old``); returns its src."""
    page.wait_for_function(
        "([selector, old]) => { const img = document.querySelector(selector + ' img');"
        " return img !== null && img.complete && img.naturalWidth > 0 && img.src !== old; }",
        arg=[selector, old],
        timeout=60_000,
    )
    return page.get_attribute(f"{selector} img", "src")


def test_a_nifti_volume_gets_a_verdict_and_the_slider_moves_the_heatmap(page, confident_classifier, tmp_path):
    volume = write_nifti(tmp_path / "head.nii.gz", phantom((64, 64, 20)))  # 20 axial slices of 64 x 64
    expected = confident_classifier.predict_volume(str(volume))
    page.get_by_role("tab", name="Volume (NIfTI, DICOM)").click()
    page.set_input_files("#volume input[type=file]", str(volume))
    page.wait_for_function("() => !document.querySelector('#analyze-volume').disabled")
    page.click("#analyze-volume")
    title = "This does not look like a brain MRI volume" if not expected.looks_like_mri else (
        f"Tumor detected: {expected.label}" if expected.tumour else "No tumor detected")
    page.wait_for_function("(words) => document.querySelector('#volume-verdict').innerText.includes(words)", arg=title, timeout=60_000)
    verdict = page.inner_text("#volume-verdict")
    assert "not a medical device" in verdict and "20 axial slices of head.nii.gz" in verdict
    assert page.inner_text("#volume-probabilities [data-testid=label-output-value]").strip().splitlines()[0] == (expected.label or "Not a brain MRI")
    assert page.input_value("#volume-tumor-probability textarea, #volume-tumor-probability input")
    key_src = _loaded_src(page, "#slice-heatmap")
    _loaded_src(page, "#slice-plot")  # the probability-along-slices plot
    assert page.input_value("#slice input[type=number]") == str(expected.key_slice)
    assert page.inner_text("#slice-caption").startswith(f"Slice {expected.key_slice} of 0-19 (key slice)")
    assert page.evaluate("() => document.querySelector('#slice-heatmap img').naturalWidth") == 64
    # The slice's heatmap has the slice tab's colour bar and words.
    legend = page.inner_text("#slice-heatmap-legend")
    assert "no evidence" in legend and "strongest" in legend
    assert page.locator("#slice-heatmap-legend [aria-label='colour bar']").is_visible()
    # Another slice inside the head: its own heatmap, caption and plot marker.
    other = next(int(i) for i in np.flatnonzero(expected.classified) if i != expected.key_slice)
    plot_src = page.get_attribute("#slice-plot img", "src")
    page.fill("#slice input[type=number]", str(other))
    page.keyboard.press("Enter")
    other_src = _loaded_src(page, "#slice-heatmap", key_src)
    page.wait_for_function("(words) => document.querySelector('#slice-caption').innerText.startsWith(words)", arg=f"Slice {other} of 0-19:")
    _loaded_src(page, "#slice-plot", plot_src)
    assert other_src != key_src
    # A number beyond the last slice, typed in the slider's box: the last slice, said in the
    # box too, rather than Gradio's range error and "Error" badges on the heatmap and plot.
    page.fill("#slice input[type=number]", "200")
    page.keyboard.press("Enter")
    page.wait_for_function("() => document.querySelector('#slice-caption').innerText.startsWith('Slice 19 of 0-19')")
    page.wait_for_function("() => document.querySelector('#slice input[type=number]').value === '19'")
    assert page.locator(".toast-body").count() == 0 and "Error" not in page.inner_text("#slice-heatmap")
    screenshot = tmp_path / "app-volume-slider.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 10_000
    print(f"screenshot of the volume tab after moving the slice slider: {screenshot}")
    # A damaged zip: the project's message in the page, no traceback.
    damaged = tmp_path / "damaged.zip"
    damaged.write_bytes(b"PK\x03\x04" + b"\x00" * 200)
    page.reload()  # a fresh page: the file box holds the NIfTI, and its input is gone until cleared
    page.get_by_role("tab", name="Volume (NIfTI, DICOM)").click()
    page.set_input_files("#volume input[type=file]", str(damaged))
    page.wait_for_function("() => !document.querySelector('#analyze-volume').disabled")
    page.click("#analyze-volume")
    words = "The zip 'damaged.zip' is damaged or truncated"
    page.wait_for_function("(words) => document.querySelector('#volume-verdict').innerText.includes(words)", arg=words)
    page.wait_for_timeout(1000)  # a toast or an "Error" badge would show up by now
    # Said once, where it stays (a toast goes after 10 s and left "Error" badges on every output).
    body = page.inner_text("body")
    assert body.count(words) == 1 and "Traceback" not in body and "Error" not in body, body
    assert page.locator(".toast-body").count() == 0


def test_a_slice_dropped_on_the_volume_tab_gets_the_apps_message(page, data_dir):
    """A JPEG given to the volume tab got Gradio's own toast ("Invalid file type ... Only .dcm,
    .gz, .nii, .zip allowed") and a red "Error" badge stuck in the upload box."""
    page.get_by_role("tab", name="Volume (NIfTI, DICOM)").click()
    page.set_input_files("#volume input[type=file]", str(sorted((data_dir / "Testing" / "glioma").glob("*.jpg"))[0]))
    page.wait_for_function("() => document.querySelector('#volume-verdict').innerText.includes('This tab reads volumes')")
    page.wait_for_timeout(1000)  # a toast would show up by now
    assert page.locator(".toast-body").count() == 0 and "Error" not in page.inner_text("body")
    assert page.is_disabled("#analyze-volume")


def test_the_rest_docs_page_loads_nothing_from_elsewhere(browser, app_url, tmp_path):
    context, page, outside = _guarded_page(browser, app_url + "docs", ready="h1")
    assert "POST /api/v1/predict" in page.inner_text("body")
    screenshot = tmp_path / "rest-docs.png"
    page.screenshot(path=str(screenshot), full_page=True)
    print(f"screenshot of /docs: {screenshot}")
    page.wait_for_timeout(300)
    context.close()
    assert outside == []


def test_the_page_and_the_docs_fit_a_phone(browser, app_url, tmp_path):
    """At a phone's width (390 px) neither page scrolls sideways (the /docs tables once did)."""
    for path, ready, name in (("", "#scan input[type=file]", "app"), ("docs", "h1", "rest-docs")):
        context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(app_url + path)
        page.wait_for_selector(ready, state="attached")
        page.wait_for_timeout(300)
        assert page.evaluate("() => document.documentElement.scrollWidth") <= 390, path
        screenshot = tmp_path / f"{name}-phone.png"
        page.screenshot(path=str(screenshot), full_page=True)
        print(f"screenshot of {path or '/'} at a phone's width: {screenshot}")
        context.close()


def test_the_request_guard_catches_outside_requests(browser, app_url):
    """The guard the other tests rely on does see, and block, a request off 127.0.0.1."""
    context, page, outside = _guarded_page(browser, app_url)
    page.evaluate("() => fetch('http://198.51.100.7/probe.png').catch(() => null)")
    page.wait_for_timeout(200)
    context.close()
    assert outside == ["http://198.51.100.7/probe.png"]
