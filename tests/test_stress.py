"""Stress transforms and the sequence / plane estimator (tumor_classifier.stress), and the
audit benchmark's main() end to end on the shipped slices with the tiny fixture model."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from tumor_classifier import load_image
from tumor_classifier.exceptions import InvalidImageError
from tumor_classifier.localisation import head_mask
from tumor_classifier.sequence_plane import PLANES, SEQUENCES, estimate_plane, estimate_sequence, plane_features, sequence_features
from tumor_classifier.stress import STRESSES, blur, content_seed, gamma, gaussian_noise, invert_in_head

SHIPPED = sorted((Path(__file__).parent / "data" / "brain-tumor-mri" / "Testing").glob("*/*.jpg"))


def _ellipse(shape=(224, 224), centre=(112, 112), radii=(90, 72)) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((yy - centre[0]) / radii[0]) ** 2 + ((xx - centre[1]) / radii[1]) ** 2 <= 1


def _head(seed: int = 0) -> np.ndarray:
    """A synthetic axial 'head': black background, a textured ellipse with a bright rim."""
    rng = np.random.default_rng(seed)
    inside = _ellipse()
    gray = np.zeros((224, 224), dtype=np.uint8)
    gray[inside] = rng.integers(60, 140, size=int(inside.sum()))
    gray[inside & ~_ellipse(radii=(82, 64))] = 230
    return gray


def _brain(lines: str, ventricles: str, seed: int = 0) -> np.ndarray:
    """A synthetic slice for the sequence rules: a grey ellipse (110) with thin curved
    lines of moderate contrast (+-45, as sulci / cortex) and two central 'ventricles'
    (15 or 230), each ``"dark"`` or ``"bright"``."""
    rng = np.random.default_rng(seed)
    line_level = {"dark": 65, "bright": 155}
    ventricle_level = {"dark": 15, "bright": 230}
    yy, xx = np.mgrid[:224, :224]
    inside = _ellipse()
    gray = np.zeros((224, 224), dtype=np.float64)
    gray[inside] = 110 + rng.normal(0, 3, size=int(inside.sum()))
    for radius in range(14, 90, 14):  # concentric thin rings, sparser than the 9 px window
        ring = np.abs(np.hypot((yy - 112) * 0.8, xx - 112) - radius) < 1.2
        gray[ring & inside] = line_level[lines]
    gray[_ellipse(centre=(112, 100), radii=(24, 7))] = ventricle_level[ventricles]
    gray[_ellipse(centre=(112, 124), radii=(24, 7))] = ventricle_level[ventricles]
    gray[inside & ~_ellipse(radii=(84, 66))] = 200  # scalp
    return np.clip(gray, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def real_slices() -> list[np.ndarray]:
    return [np.asarray(load_image(path)) for path in SHIPPED]


# --------------------------------------------------------------------------- stresses


@pytest.mark.parametrize("name", sorted(STRESSES))
def test_every_stress_keeps_shape_and_dtype(name, real_slices):
    for gray in [_head(), np.zeros((31, 47), np.uint8), *real_slices[:3]]:
        out = STRESSES[name](gray)
        assert out.shape == gray.shape and out.dtype == np.uint8
        assert out is not gray


def test_registry_names():
    assert set(STRESSES) == {"inverted", "gamma_0.4", "gamma_2.5", "noise_0.1", "blur_7px"}


@pytest.mark.parametrize("name", sorted(STRESSES))
def test_stresses_are_deterministic_and_leave_the_input_alone(name, real_slices):
    gray = real_slices[0]
    before = gray.copy()
    assert np.array_equal(STRESSES[name](gray), STRESSES[name](gray))
    assert np.array_equal(gray, before)


def test_inversion_keeps_background_and_reverses_order_inside_the_head(real_slices):
    for gray in [_head(), *real_slices]:
        mask = head_mask(gray)
        out = invert_in_head(gray)
        assert np.array_equal(out[~mask], gray[~mask])
        assert np.array_equal(out[mask], 255 - gray[mask])
        inside = gray[mask].astype(int)
        a, b = np.argmin(inside), np.argmax(inside)
        assert out[mask][a] > out[mask][b]  # the darkest becomes the brightest
    black = np.zeros((20, 20), dtype=np.uint8)
    assert np.array_equal(invert_in_head(black), black)  # no head, nothing to invert
    synthetic = _head()
    out = invert_in_head(synthetic)
    assert out[0, 0] == 0 and out[5, 200] == 0  # corners stay black
    assert out[112, 112] == 255 - synthetic[112, 112]


def test_gamma_keeps_ends_and_order_and_moves_mid_grey():
    ramp = np.arange(256, dtype=np.uint8).reshape(16, 16)
    for g in (0.4, 1.0, 2.5):
        out = gamma(ramp, g).ravel().astype(int)
        assert out[0] == 0 and out[255] == 255
        assert np.all(np.diff(out) >= 0)
    assert np.array_equal(gamma(ramp, 1.0), ramp)
    assert gamma(ramp, 0.4).ravel()[128] > 128 > gamma(ramp, 2.5).ravel()[128]
    assert gamma(ramp, 0.4).ravel()[128] == round(255 * (128 / 255) ** 0.4)
    with pytest.raises(ValueError, match="g > 0"):
        gamma(ramp, 0)


def test_gaussian_noise_has_the_asked_spread_and_repeats_with_its_seed():
    flat = np.full((200, 200), 128, dtype=np.uint8)
    out = gaussian_noise(flat, 0.1, seed=3)
    spread = (out.astype(float) - 128).std()
    assert abs(spread - 25.5) < 1.5
    assert abs((out.astype(float) - 128).mean()) < 1.0
    assert np.array_equal(out, gaussian_noise(flat, 0.1, seed=3))
    assert not np.array_equal(out, gaussian_noise(flat, 0.1, seed=4))
    assert np.array_equal(gaussian_noise(flat, 0.0, seed=0), flat)
    clipped = gaussian_noise(np.full((50, 50), 250, np.uint8), 0.5, seed=0)
    assert clipped.max() == 255 and clipped.min() >= 0
    with pytest.raises(ValueError, match="sigma"):
        gaussian_noise(flat, -0.1, seed=0)


def test_noise_stress_seeds_from_the_pixels(real_slices):
    a, b = real_slices[0], real_slices[1]
    assert content_seed(a) == content_seed(a.copy()) != content_seed(b)
    assert np.array_equal(STRESSES["noise_0.1"](a), gaussian_noise(a, 0.1, seed=content_seed(a)))


def test_blur_is_a_box_mean():
    point = np.zeros((41, 41), dtype=np.uint8)
    point[20, 20] = 245
    out = blur(point, 7)
    assert np.all(out[17:24, 17:24] == 5)  # 245 / 49, spread over the 7 x 7 square
    assert out.sum() == 49 * 5 and out[16, 20] == 0 and out[20, 24] == 0
    flat = np.full((20, 30), 77, dtype=np.uint8)
    assert np.array_equal(blur(flat, 7), flat)  # borders repeat the edge
    rng = np.random.default_rng(0)
    noisy = rng.integers(0, 256, (25, 25)).astype(np.uint8)
    padded = np.pad(noisy.astype(float), 3, mode="edge")
    naive = np.array([[padded[i : i + 7, j : j + 7].mean() for j in range(25)] for i in range(25)])
    assert np.abs(blur(noisy, 7).astype(float) - naive).max() <= 0.5
    assert blur(noisy, 7).std() < noisy.std() / 3
    assert np.array_equal(blur(noisy, 1), noisy)
    for bad in (0, 4, -3, 2.5):
        with pytest.raises(ValueError, match="odd"):
            blur(noisy, bad)


@pytest.mark.parametrize("bad", [np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.float32), np.zeros((0, 5), np.uint8)])
def test_stresses_and_estimators_refuse_what_is_not_a_grey_uint8_slice(bad):
    for call in (*STRESSES.values(), estimate_sequence, estimate_plane):
        with pytest.raises(InvalidImageError):
            call(bad)
    assert issubclass(InvalidImageError, ValueError)


# --------------------------------------------------------------------------- estimator


def test_estimators_return_valid_labels(real_slices):
    for gray in [*real_slices, _head(), np.zeros((64, 64), np.uint8), np.full((64, 64), 200, np.uint8)]:
        sequence, features = estimate_sequence(gray, return_features=True)
        plane, shape = estimate_plane(gray, return_features=True)
        assert sequence in SEQUENCES and plane in PLANES
        assert estimate_sequence(gray) == sequence and estimate_plane(gray) == plane
        assert set(features) == set(sequence_features(gray))
        assert set(shape) == set(plane_features(gray))
        assert all(np.isfinite(v) for v in (*features.values(), *shape.values()))


def test_sequence_rules_on_synthetic_contrasts():
    # T1: dark CSF in thin sulci and in the ventricles.
    assert estimate_sequence(_brain(lines="dark", ventricles="dark")) == "T1"
    # T2: bright CSF everywhere.
    assert estimate_sequence(_brain(lines="bright", ventricles="bright")) == "T2"
    # FLAIR: bright cortex-like lines, dark ventricles.
    assert estimate_sequence(_brain(lines="bright", ventricles="dark")) == "FLAIR"
    features = sequence_features(_brain(lines="dark", ventricles="dark"))
    assert features["local_polarity"] < 0 < sequence_features(_brain(lines="bright", ventricles="bright"))["local_polarity"]


def test_plane_rules_on_synthetic_shapes():
    rng = np.random.default_rng(0)
    # Axial: a left-right symmetric ellipse, longer than wide, clear of the image edges.
    axial = _head()
    half = axial[:, :112]
    axial[:, 112:] = half[:, ::-1]
    assert estimate_plane(axial) == "axial"
    assert plane_features(axial)["symmetry"] > 0.6  # pixel noise, mirrored half a pixel off the axis

    # Coronal: a symmetric round head on a wide, darker neck that runs off the bottom.
    coronal = np.zeros((224, 224), dtype=np.uint8)
    coronal[_ellipse(centre=(90, 112), radii=(80, 80))] = 150
    coronal[90:, 52:172] = 90
    coronal[:, 112:] = coronal[:, :112][:, ::-1]
    assert plane_features(coronal)["touches_bottom"] == 1.0
    assert estimate_plane(coronal) == "coronal"

    # Sagittal: about as long as tall, a face on one side, no left-right symmetry.
    sagittal = np.zeros((224, 224), dtype=np.uint8)
    round_head = _ellipse(centre=(100, 100), radii=(80, 82))
    sagittal[round_head] = rng.integers(40, 200, size=int(round_head.sum()))
    sagittal[120:200, 150:200] = 180  # face and jaw in front
    sagittal[150:, 70:130] = 120  # neck
    features = plane_features(sagittal)
    assert features["symmetry"] < 0.38 and features["mask_symmetry"] < 0.93
    assert estimate_plane(sagittal) == "sagittal"


def test_a_frame_without_outline_defaults_to_axial():
    framed = np.full((100, 100), 90, dtype=np.uint8)  # grey everywhere: the mask is the whole image
    assert plane_features(framed)["fill"] > 1.15
    assert estimate_plane(framed) == "axial"


def test_labels_file_is_well_formed():
    import csv

    path = Path(__file__).parents[1] / "benchmarks" / "sequence_plane_labels.csv"
    rows = list(csv.DictReader(path.open()))
    assert len(rows) >= 150
    assert {row["sequence"] for row in rows} <= {*SEQUENCES, "other"}
    assert {row["plane"] for row in rows} <= set(PLANES)
    assert {row["role"] for row in rows} == {"tuning", "holdout"}
    assert len({row["file"] for row in rows}) == len(rows)
    assert all(row["file"].startswith(("brain-tumor-mri/Testing/", "br35h-tumor/")) for row in rows)


# --------------------------------------------------------------------------- benchmark


def test_audit_benchmark_end_to_end(fitted_classifier, tmp_path, monkeypatch):
    """The script's main() on the shipped slices (copied into a data folder of the shared
    layout, three of them standing in for Br35H) and the saved tiny model, no peer."""
    shipped = Path(__file__).parent / "data" / "brain-tumor-mri"
    data = tmp_path / "data"
    shutil.copytree(shipped, data / "brain-tumor-mri")
    (data / "br35h-tumor" / "tumor").mkdir(parents=True)
    for i, path in enumerate(SHIPPED[:3]):
        shutil.copy(path, data / "br35h-tumor" / "tumor" / f"y{i}.jpg")
    labels = tmp_path / "labels.csv"
    labels.write_text("file,sequence,plane,role\nbrain-tumor-mri/Testing/glioma/Te-gl_0023.jpg,T1,axial,tuning\n"
                      "br35h-tumor/tumor/y1.jpg,T1,axial,holdout\nbrain-tumor-mri/Testing/glioma/missing.jpg,T2,axial,tuning\n")
    model = fitted_classifier.save_pretrained(tmp_path / "model")
    script = Path(__file__).parents[1] / "benchmarks" / "audit.py"
    spec = importlib.util.spec_from_file_location("audit_benchmark", script)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    out = tmp_path / "audit.json"
    code = module.main(["--model", str(model), "--data", str(data), "--threads", "1", "--json", str(out),
                        "--fingerprint-cache", str(tmp_path / "prints.npz"), "--labels", str(labels)])
    assert code == 0
    report = json.loads(out.read_text())
    assert list(report["stress"]) == ["baseline (file)", "grey copy", *STRESSES]
    baseline = report["stress"]["baseline (file)"]["tumor-classifier"]
    assert set(baseline) == {"glioma", "meningioma", "pituitary", "all"}
    assert all(0.0 <= v <= 1.0 for v in baseline.values())
    assert report["stress"]["grey copy"] == report["stress"]["baseline (file)"]
    assert report["br35h"]["all"]["n"] == 3
    assert report["br35h"]["validation groups"]["n"] + report["br35h"]["training groups"]["n"] == 3
    assert report["kaggle_testing"]["accuracy, all"]["n"] == 12
    assert sum(r["n"] for r in report["recall_per_group"]) == 9 + 3
    agreement = report["estimator_agreement"]
    assert set(agreement) == {"tuning", "holdout", "all"}
    assert agreement["all"]["plane"]["n"] == 2  # the missing file is skipped
    assert (tmp_path / "prints.npz").exists()
