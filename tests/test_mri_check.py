"""The learned "is this a brain MRI?" check: shipped folder, answers, scorer, errors, threads."""

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tumor_classifier.exceptions import InvalidImageError, ModelLoadError
from tumor_classifier.mri_check import (
    CONFIG_NAME,
    DEFAULT_CHECK_DIR,
    HAND_FEATURES,
    WEIGHTS_NAME,
    LogisticScorer,
    MRICheck,
    decode,
    hand_features,
)
from tumor_classifier.preprocessing import load_image

MRI_SLICES = sorted((Path(__file__).parent / "data" / "brain-tumor-mri").glob("*/*/*.jpg"))


@pytest.fixture(scope="module")
def check() -> MRICheck:
    return MRICheck.load()


def _synthetic_colour_image() -> np.ndarray:
    """A colour picture with a dark background and a bright round object: MRI-like layout, not MRI colours."""
    y, x = np.mgrid[0:200, 0:200] / 200.0
    disc = ((x - 0.5) ** 2 + (y - 0.5) ** 2) < 0.16
    rgb = np.stack([np.where(disc, 0.9 * x, 0.0), np.where(disc, 0.8 * (1 - y), 0.0), np.where(disc, 0.5 + 0.5 * y, 0.0)], -1)
    return (rgb * 255).astype(np.uint8)


def test_shipped_folder_holds_no_pickle_and_loads_without_it(tmp_path, monkeypatch):
    files = sorted(p for p in DEFAULT_CHECK_DIR.iterdir() if p.is_file())
    assert {p.name for p in files} >= {CONFIG_NAME, WEIGHTS_NAME}
    for path in files:
        assert path.suffix in (".json", ".safetensors", ".md"), f"unexpected file {path.name}"
        head = path.read_bytes()[:4]
        assert not head.startswith(b"\x80"), f"{path.name} looks like a pickle"
        assert not head.startswith(b"PK"), f"{path.name} looks like a zip (torch.save)"
    json.loads((DEFAULT_CHECK_DIR / CONFIG_NAME).read_text())

    def refuse(*args, **kwargs):
        raise AssertionError("the check folder must load without unpickling")

    import pickle

    import torch

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    copy = shutil.copytree(DEFAULT_CHECK_DIR, tmp_path / "check")  # a new path: not the cached object
    loaded = MRICheck.load(copy)
    assert 0.0 < loaded.threshold < 1.0
    assert loaded.scorer.coef.shape == (1280 + len(HAND_FEATURES),)


def test_load_is_cached_per_folder(check):
    assert MRICheck.load() is check
    assert MRICheck.load(DEFAULT_CHECK_DIR) is check


def test_photos_and_a_synthetic_colour_image_are_flagged(check):
    from sklearn.datasets import load_sample_image

    images = [load_sample_image("china.jpg"), load_sample_image("flower.jpg"), _synthetic_colour_image()]
    scores = check.score(images)
    assert not check.is_brain_mri(images).any(), scores
    reasons = check.reasons(images)
    assert all(r and "the learned check scores it" in r[0] for r in reasons)


def test_shipped_mri_slices_are_all_accepted(check):
    assert len(MRI_SLICES) == 44
    scores = check.score(MRI_SLICES)
    accepted = scores >= check.threshold
    assert accepted.all(), {p.name: round(float(s), 4) for p, s in zip(MRI_SLICES, scores) if s < check.threshold}
    assert check.is_brain_mri(MRI_SLICES).all()
    assert check.reasons(MRI_SLICES[:2]) == [[], []]


def test_scores_are_probabilities_one_per_input(check):
    inputs = [MRI_SLICES[0], str(MRI_SLICES[1]), MRI_SLICES[2].read_bytes(), Image.open(MRI_SLICES[3]),
              np.zeros((64, 64), np.uint16), np.full((40, 50, 3), 200, np.uint8)]
    scores = check.score(inputs)
    assert scores.shape == (len(inputs),) and scores.dtype == np.float64
    assert np.all((scores >= 0) & (scores <= 1))
    assert check.score(MRI_SLICES[0]).shape == (1,)  # one input, not a sequence


def test_grays_from_the_decoder_give_the_same_answers(check):
    paths = MRI_SLICES[:6]
    grays = [load_image(p) for p in paths]
    np.testing.assert_allclose(check.score(paths, grays=grays), check.score(paths), atol=0.02)
    with pytest.raises(InvalidImageError, match="one per image"):
        check.score(paths, grays=grays[:2])


def test_decode_keeps_colour_of_a_colour_source():
    decoded = decode(_synthetic_colour_image())
    assert decoded.gray.mode == "L" and decoded.rgb is not None
    features = dict(zip(HAND_FEATURES, hand_features(decoded)))
    assert features["colourfulness"] > 0.1 and features["colour_fraction"] > 0.2
    gray = dict(zip(HAND_FEATURES, hand_features(decode(load_image(MRI_SLICES[0])))))
    assert gray["colourfulness"] == 0.0 and gray["colour_fraction"] == 0.0


def test_unreadable_input_raises_the_decoder_error(check, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image at all")
    with pytest.raises(InvalidImageError, match="broken.jpg"):
        check.score([broken])
    with pytest.raises(InvalidImageError, match="does not exist"):
        check.score([tmp_path / "missing.png"])


def test_numpy_scorer_reproduces_sklearn_predict_proba():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 7)) * rng.uniform(0.1, 50, size=7) + rng.normal(size=7) * 10
    y = (X @ rng.normal(size=7) + rng.normal(size=200) > 0).astype(int)
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(C=0.5)).fit(X, y)
    scorer = LogisticScorer.from_sklearn(*pipeline.named_steps.values())
    X_new = rng.normal(size=(50, 7)) * 30
    np.testing.assert_allclose(scorer.score(X_new), pipeline.predict_proba(X_new)[:, 1], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(scorer.decision_function(X_new), pipeline.decision_function(X_new), rtol=1e-10)
    extreme = scorer.score(X_new * 1e6)  # no overflow: exactly 0 or 1 at the far ends
    assert np.all((extreme >= 0) & (extreme <= 1)) and np.isfinite(extreme).all()


def test_save_then_load_round_trips(check, tmp_path):
    copy = MRICheck(
        check.scorer, check.novelty, check.threshold, check.image_size, check.crop_to_head, check.variant,
        colour_limit=check.colour_limit, colour_weight=check.colour_weight, info={"note": 1},
    )
    folder = copy.save(tmp_path / "saved")
    loaded = MRICheck.load(folder)
    for name in ("mean", "scale", "coef"):
        np.testing.assert_array_equal(getattr(loaded.scorer, name), getattr(check.scorer, name))
    assert loaded.scorer.intercept == check.scorer.intercept and loaded.threshold == check.threshold
    np.testing.assert_array_equal(loaded.novelty.components, check.novelty.components)
    assert (loaded.novelty.limit, loaded.novelty.weight) == (check.novelty.limit, check.novelty.weight)
    assert (loaded.colour_limit, loaded.colour_weight) == (check.colour_limit, check.colour_weight)
    X = np.random.default_rng(0).uniform(0, 2, size=(3, 1280 + len(HAND_FEATURES)))
    np.testing.assert_array_equal(loaded.log_odds(X), check.log_odds(X))
    assert loaded.info == {"note": 1}


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: (d / WEIGHTS_NAME).write_bytes((d / WEIGHTS_NAME).read_bytes()[:100]), "not a readable safetensors"),
        (lambda d: (d / CONFIG_NAME).write_text("{ not json"), "not readable JSON"),
        (lambda d: (d / WEIGHTS_NAME).unlink(), "has no weights.safetensors"),
        (lambda d: (d / CONFIG_NAME).write_text(json.dumps({**json.loads((d / CONFIG_NAME).read_text()), "backbone_dim": 7})), "shape"),
        (lambda d: (d / CONFIG_NAME).write_text(json.dumps({**json.loads((d / CONFIG_NAME).read_text()), "threshold": 2})), "threshold"),
        (lambda d: (d / CONFIG_NAME).write_text(json.dumps({**json.loads((d / CONFIG_NAME).read_text()), "feature_version": 99})), "feature_version"),
        (lambda d: (d / CONFIG_NAME).write_text(json.dumps({**json.loads((d / CONFIG_NAME).read_text()), "novelty": {"components": 3, "limit": 1, "weight": 1}})), "novelty tensors"),
    ],
    ids=["truncated-weights", "bad-json", "missing-weights", "wrong-shape", "bad-threshold", "other-version", "novelty-shape"],
)
def test_a_damaged_folder_raises_model_load_error(tmp_path, damage, message):
    folder = shutil.copytree(DEFAULT_CHECK_DIR, tmp_path / "check")
    damage(folder)
    with pytest.raises(ModelLoadError, match=message):
        MRICheck.load(folder)


def test_a_missing_folder_raises_model_load_error(tmp_path):
    with pytest.raises(ModelLoadError, match="No MRI check folder"):
        MRICheck.load(tmp_path / "nowhere")


def test_concurrent_calls_from_four_threads_agree(check, tmp_path):
    from sklearn.datasets import load_sample_image

    # A copy of the folder: the four threads load it and build its backbone concurrently.
    copy = shutil.copytree(DEFAULT_CHECK_DIR, tmp_path / "check")
    images = list(MRI_SLICES[::4]) + [load_sample_image("china.jpg"), _synthetic_colour_image()]
    expected = check.is_brain_mri(images)
    expected_scores = check.score(images)
    results: dict[int, tuple[MRICheck, np.ndarray, np.ndarray]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def work(index: int) -> None:
        try:
            start.wait()
            fresh = MRICheck.load(copy)
            results[index] = (fresh, fresh.is_brain_mri(images), fresh.score(images))
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert len(results) == 4
    assert len({id(fresh) for fresh, _, _ in results.values()}) == 1  # loaded once
    for _, answers, scores in results.values():
        np.testing.assert_array_equal(answers, expected)
        np.testing.assert_allclose(scores, expected_scores, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------- the ONNX engine
#: Largest accepted |onnx - torch| of the check's probability (seen: 6e-8) and of a
#: backbone feature (in [0, 6]; seen: 2.2e-5), on these 48 slices and 3 pictures.
ENGINE_TOLERANCE = 1e-5
FEATURE_TOLERANCE = 1e-3


def test_the_onnx_engine_gives_the_torch_engine_s_scores_and_decisions(check):
    from sklearn.datasets import load_sample_image

    from tumor_classifier.onnx_export import EXAMPLES_DIR

    # Every shipped slice (tests/data and the package's examples) and three non-MRI pictures.
    images = [*MRI_SLICES, *sorted(EXAMPLES_DIR.glob("*.jpg")), load_sample_image("china.jpg"),
              load_sample_image("flower.jpg"), _synthetic_colour_image()]
    decoded = check.decode_all(images)
    torch_features, onnx_features = (check.features(decoded, engine=e) for e in ("torch", "onnx"))
    backbone = slice(0, torch_features.shape[1] - len(HAND_FEATURES))
    assert np.abs(onnx_features[:, backbone] - torch_features[:, backbone]).max() <= FEATURE_TOLERANCE
    np.testing.assert_array_equal(onnx_features[:, backbone.stop :], torch_features[:, backbone.stop :])  # numpy both times
    (torch_scores, torch_reasons), (onnx_scores, onnx_reasons) = (check.assess(decoded, engine=e) for e in ("torch", "onnx"))
    assert np.abs(onnx_scores - torch_scores).max() <= ENGINE_TOLERANCE
    np.testing.assert_array_equal(onnx_scores >= check.threshold, torch_scores >= check.threshold)
    np.testing.assert_array_equal(check.is_brain_mri(decoded, engine="onnx"), torch_scores >= check.threshold)
    assert [len(r) for r in onnx_reasons] == [len(r) for r in torch_reasons]
    assert (torch_scores[: len(MRI_SLICES)] >= check.threshold).all() and (torch_scores[-3:] < check.threshold).all()


def test_an_unknown_engine_is_refused_with_the_choices(check):
    from tumor_classifier.exceptions import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match="choose one of torch, onnx"):
        check.score(MRI_SLICES[:1], engine="tensorrt")
    with pytest.raises(ValueError, match="'tensorrt'"):
        check.prepare_engine("tensorrt")


def test_the_feature_graph_is_exported_once_and_a_mismatch_fails_loudly(check, tmp_path):
    from tumor_classifier.exceptions import ExportError
    from tumor_classifier.mri_check_onnx import (
        FEATURES_CONFIG_NAME,
        FEATURES_GRAPH_NAME,
        export_feature_graph,
        feature_fingerprint,
    )
    from tumor_classifier.onnx_export import cached_graph_dir

    graph = check._backbone.graph()  # the cache of this test session
    fingerprint = feature_fingerprint(check._backbone)
    assert graph.path == cached_graph_dir(fingerprint) / FEATURES_GRAPH_NAME
    config = json.loads((graph.path.parent / FEATURES_CONFIG_NAME).read_text())
    assert config["source_fingerprint"] == fingerprint and config["image_size"] == check.image_size
    assert 0 <= config["verification"]["max_feature_difference"] <= config["verification"]["tolerance"]
    # A graph that must match torch to better than any float can fails, and leaves nothing behind.
    with pytest.raises(ExportError, match="above the tolerance"):
        export_feature_graph(check._backbone, tmp_path / "strict", fingerprint=fingerprint, tolerance=-1.0)
    assert list((tmp_path / "strict").iterdir()) == []
