"""The TumorClassifier contract, its attributions, and the Hub round trip."""

import contextlib
import copy
import io
import socket

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.base import clone
from sklearn.exceptions import NotFittedError as SklearnNotFittedError

from conftest import TINY_CONVNEXT
from tumor_classifier import HubUploadError, InvalidImageError, ModelLoadError, NotFittedError, TumorClassifier, TumorClassifierError
from tumor_classifier.exceptions import InvalidArgumentError
from tumor_classifier.localisation_runs import randomised_copy


def test_init_stores_parameters_and_clone_works():
    clf = TumorClassifier("vit", from_scratch=True, image_size=96, epochs=3, config_overrides={"num_hidden_layers": 2})
    params = clf.get_params()
    assert params["backbone"] == "vit" and params["image_size"] == 96 and params["epochs"] == 3
    copy = clone(clf)
    assert copy.get_params() == params and copy is not clf
    copy.set_params(epochs=7)
    assert copy.epochs == 7 and clf.epochs == 3
    assert not hasattr(clf, "model_")


@pytest.mark.parametrize(
    "call",
    [
        lambda c, x: c.predict(x),
        lambda c, x: c.predict_proba(x),
        lambda c, x: c.tumor_probability(x),
        lambda c, x: c.explain(x),
        lambda c, x: c.score(x, ["glioma"]),
        lambda c, x: c.save_pretrained("never-written"),
        lambda c, x: c.push_to_hub("org/never"),
    ],
)
def test_every_inference_method_needs_a_fitted_model(call, test_images, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(NotFittedError, match="not fitted") as info:
        call(TumorClassifier(), test_images[0][0])
    assert isinstance(info.value, SklearnNotFittedError)
    assert not (tmp_path / "never-written").exists()


def test_probabilities_sum_to_one_and_argmax_is_predict(fitted_classifier, test_images):
    paths, labels = test_images
    proba = fitted_classifier.predict_proba(paths)
    assert proba.shape == (12, 4) and proba.dtype == np.float32
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    assert list(fitted_classifier.classes_) == ["glioma", "meningioma", "notumor", "pituitary"]
    predicted = fitted_classifier.predict(paths)
    np.testing.assert_array_equal(predicted, fitted_classifier.classes_[proba.argmax(1)])
    assert fitted_classifier.score(paths, labels) == np.mean(predicted == np.asarray(labels))
    tumor = fitted_classifier.tumor_probability(paths)
    np.testing.assert_allclose(tumor, 1 - proba[:, 2], atol=1e-6)


def test_the_fitted_classifier_learned_its_training_images(fitted_classifier, train_images):
    paths, labels = train_images
    assert fitted_classifier.score(paths, labels) >= 0.75


def test_every_input_kind_gives_the_same_answer(fitted_classifier, test_images):
    path = test_images[0][0]
    data = path.read_bytes()
    pil = Image.open(io.BytesIO(data))
    array = np.asarray(pil.convert("L"))
    rgb_array = np.stack([array] * 3, axis=-1)
    expected = fitted_classifier.predict_proba(path)
    for source in (str(path), data, pil, array, rgb_array, [path], (path,)):
        np.testing.assert_allclose(fitted_classifier.predict_proba(source), expected, atol=2e-3)
    stack = np.stack([array, array])
    assert fitted_classifier.predict_proba(stack).shape == (2, 4)
    from datasets import Dataset, Features
    from datasets import Image as ImageFeature

    dataset = Dataset.from_dict({"image": [str(path)]}, features=Features({"image": ImageFeature()}))
    np.testing.assert_allclose(fitted_classifier.predict_proba(dataset), expected, atol=1e-6)


def test_batched_prediction_equals_one_by_one(fitted_classifier, test_images):
    paths = test_images[0]
    batched = fitted_classifier.predict_proba(paths)
    single = np.concatenate([fitted_classifier.predict_proba(p) for p in paths])
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_unreadable_input_names_the_image(fitted_classifier, test_images, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(InvalidImageError, match=r"Image 1: .*broken\.jpg") as info:
        fitted_classifier.predict([test_images[0][0], bad])
    assert isinstance(info.value, ValueError)
    with pytest.raises(InvalidImageError, match="empty"):
        fitted_classifier.predict([])
    with pytest.raises(TumorClassifierError, match="gradcam"):
        fitted_classifier.explain(test_images[0][0], method="saliency")


@pytest.mark.parametrize(
    "X, words",
    [
        (np.zeros((5,)), ["1-D numpy array of shape (5,)", "(n, H, W)", "(H, W)"]),
        (np.zeros((2, 2, 2, 2, 2)), ["5-D numpy array of shape (2, 2, 2, 2, 2)", "(n, H, W, C)"]),
        (np.float64(0.5), ["numpy float64 scalar (0.5)", "accepted"]),
        (7, ["object of type int", "accepted"]),
        (None, ["Cannot read None", "accepted"]),
        ([], ["the sequence is empty", "a list of them"]),
        ("open file", ["an open file (BufferedReader)", "its path", "read()"]),
        (memoryview(b"\xff\xd8\xff"), ["a memoryview", "bytes("]),
        (np.zeros((64, 64, 2)), ["3-D numpy array of shape (64, 64, 2)", "(H, W, C) with C in 1, 3, 4"]),
    ],
    ids=["1-D array", "5-D array", "numpy scalar", "int", "None", "empty list", "open file", "memoryview", "2 channels"],
)
def test_input_that_is_no_image_nor_sequence_says_what_it_was(fitted_classifier, test_images, X, words):
    # A 1-D array used to be read as five float64 "images": the message named float64, not the array.
    # An open file was read line by line as "images", a memoryview byte by byte as ints, and an
    # (H, W, 2) array as H images of W x 2 pixels.
    if isinstance(X, str):  # opened here: a parameter would stay open
        X = open(test_images[0][0], "rb")
    with pytest.raises(InvalidImageError) as info, X if hasattr(X, "close") else contextlib.nullcontext():
        fitted_classifier.predict(X)
    for word in words:
        assert word in str(info.value)
    if not isinstance(X, np.ndarray) or X.ndim != 3:  # the (H, W, 2) array is one image, named as one
        assert "Image 0" not in str(info.value)


@pytest.mark.parametrize(
    "params, words",
    [
        ({"batch_size": 0}, ["batch_size", "at least 1", "got 0"]),
        ({"batch_size": -3}, ["batch_size", "got -3"]),
        ({"batch_size": 2.5}, ["batch_size", "whole number"]),
        ({"uncertainty_threshold": 2.0}, ["uncertainty_threshold", "[0, 1]", "got 2.0"]),
        ({"uncertainty_threshold": float("nan")}, ["uncertainty_threshold", "got nan"]),
    ],
    ids=["batch 0", "batch -3", "batch 2.5", "threshold 2", "threshold NaN"],
)
@pytest.mark.parametrize("method", ["predict", "predict_proba", "verdicts", "explain"])
def test_inference_parameters_set_after_loading_are_checked(fitted_classifier, test_images, params, words, method):
    # set_params and from_pretrained(**params) store as scikit-learn does; inference says what is wrong,
    # not "range() arg 3 must not be zero", and never calls every result "uncertain" for a threshold of 2.
    clf = copy.copy(fitted_classifier).set_params(**params)
    with pytest.raises(TumorClassifierError) as info:
        getattr(clf, method)(str(test_images[0][0]))
    assert isinstance(info.value, ValueError)
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize("verbose", [0, 1])
def test_fit_shows_one_progress_bar_or_nothing(train_images, capfd, one_torch_thread, verbose):
    paths, labels = train_images
    clf = TumorClassifier(
        "convnext", from_scratch=True, image_size=32, epochs=2, batch_size=8, augment=False, validation_size=0.25,
        config_overrides=TINY_CONVNEXT, verbose=verbose,
    )
    capfd.readouterr()
    clf.fit(paths[:12], labels[:12])
    out, err = capfd.readouterr()
    if not verbose:
        assert (out, err) == ("", "")
        return
    assert out == ""  # the Trainer's PrinterCallback printed {'train_runtime': ...} here
    assert "train_runtime" not in err and "{'" not in err
    bar = err.replace("\r", "\n").splitlines()
    assert all(line.startswith("fit:") for line in bar if line.strip()), err
    # 9 training images (3 held out to calibrate) in batches of 8: 2 steps an epoch.
    assert "4/4" in bar[-1] and "epoch 2.00/2" in bar[-1] and "loss " in bar[-1], bar[-1]


def test_save_and_load_give_equal_probabilities(fitted_classifier, test_images, tmp_path):
    folder = fitted_classifier.save_pretrained(tmp_path / "model")
    assert {"model.safetensors", "config.json", "preprocessor_config.json"} <= {p.name for p in folder.iterdir()}
    loaded = TumorClassifier.from_pretrained(folder)
    np.testing.assert_array_equal(loaded.classes_, fitted_classifier.classes_)
    np.testing.assert_allclose(loaded.predict_proba(test_images[0]), fitted_classifier.predict_proba(test_images[0]), atol=1e-6)
    assert loaded.preprocessor_ == fitted_classifier.preprocessor_
    with pytest.raises(ModelLoadError, match="config.json"):
        TumorClassifier.from_pretrained(tmp_path)


def test_attribution_maps_are_in_the_coordinates_of_each_input(fitted_classifier, test_images):
    path = test_images[0][0]
    wide = np.zeros((200, 320), dtype=np.uint8)
    wide[:, 48:272] = np.asarray(Image.open(path).convert("L").resize((224, 200)))
    labels, maps = fitted_classifier.predict([path, wide], return_attributions=True)
    assert len(labels) == len(maps) == 2
    assert maps[0].shape == (224, 224) and maps[1].shape == (200, 320)
    for m in maps:
        assert m.dtype == np.float32 and m.min() >= 0 and m.max() <= 1
    # The padding added around the scan is outside the head crop: no attribution there.
    assert maps[1][:, :40].max() == 0 and maps[1][:, -40:].max() == 0
    # Above MAX_DECODED_SIDE the decoder reduces the image by a whole factor, and the map
    # is in the reduced image's coordinates (as the README and predict's docstring say).
    from tumor_classifier.decoding import MAX_DECODED_SIDE

    large = np.kron(wide, np.ones((8, 8), dtype=np.uint8))  # 1600 x 2560: reduced by 2
    assert max(large.shape) > MAX_DECODED_SIDE
    assert fitted_classifier.predict(large, return_attributions=True)[1][0].shape == (800, 1280)


@pytest.mark.parametrize("method", ["gradcam", "integrated_gradients", "occlusion"])
def test_explain_returns_everything_the_app_shows(fitted_classifier, test_images, method):
    paths = test_images[0][:2]
    explanations = fitted_classifier.explain(paths, method=method, n_steps=8, occlusion_window=16, occlusion_stride=16)
    proba = fitted_classifier.predict_proba(paths)
    for e, row, path in zip(explanations, proba, paths):
        assert e.method == method
        assert e.label == fitted_classifier.classes_[row.argmax()]
        assert e.probabilities == pytest.approx(dict(zip(fitted_classifier.classes_, row.tolist())), abs=1e-6)
        assert e.overlay.mode == "RGB" and e.overlay.size == Image.open(path).size
        assert e.attribution.shape == Image.open(path).size[::-1]
        assert e.quality.looks_like_mri


def test_explain_options_and_methods_are_checked_by_name(fitted_classifier, test_images):
    path = test_images[0][0]
    with pytest.raises(InvalidArgumentError, match=r"Unknown explain option 'bogus'.*n_steps"):
        fitted_classifier.explain(path, bogus=1)
    with pytest.raises(InvalidArgumentError, match=r"Unknown attribution method 'nope'"):
        fitted_classifier.predict(path, method="nope")  # also without return_attributions: not silently ignored


@pytest.mark.parametrize("method", ["gradcam", "smoothgrad"])
def test_explain_with_a_target_shows_that_class_and_keeps_the_prediction(fitted_classifier, test_images, method):
    path = test_images[0][0]
    [own] = fitted_classifier.explain(path, method=method)
    other = next(c for c in fitted_classifier.classes_ if c != own.explained)
    assert own.explained == own.label  # by default the most probable class
    [targeted] = fitted_classifier.explain(path, method=method, target=other)
    assert targeted.explained == other and targeted.label == own.label and targeted.verdict == own.verdict
    assert not np.allclose(targeted.attribution, own.attribution)
    [again] = fitted_classifier.explain(path, method=method, target=own.label)
    np.testing.assert_allclose(again.attribution, own.attribution, atol=1e-5)
    with pytest.raises(InvalidArgumentError, match=r"target 'nope' is not a class.*glioma"):
        fitted_classifier.explain(path, target="nope")


def _head_mask(path) -> np.ndarray:
    gray = np.asarray(Image.open(path).convert("L"), dtype=np.float32)
    return gray > 0.1 * np.percentile(gray, 99.5)


def test_most_attribution_mass_falls_inside_the_head(fitted_classifier, test_images):
    paths = test_images[0]
    _, maps = fitted_classifier.predict(paths, return_attributions=True, method="gradcam")
    shares = []
    for path, m in zip(paths, maps):
        head = _head_mask(path)
        if m.sum() > 0:
            shares.append(m[head].sum() / m.sum())
            # Compare with the head's share of the image: the map prefers the head.
            assert shares[-1] >= head.mean() - 0.05
    assert np.mean(shares) > 0.7


def test_model_randomisation_changes_the_maps(fitted_classifier, test_images):
    """Adebayo et al. (2018): maps must depend on the learned weights."""
    paths = test_images[0]
    _, trained = fitted_classifier.predict(paths, return_attributions=True, method="gradcam")
    randomised = randomised_copy(fitted_classifier, seed=123)
    _, random_maps = randomised.predict(paths, return_attributions=True, method="gradcam")
    correlations = []
    for a, b in zip(trained, random_maps):
        # Maps are zero outside the head in both: correlate inside it, where they can differ.
        inside = (a > 0) | (b > 0)
        if a[inside].std() > 0 and b[inside].std() > 0:
            correlations.append(np.corrcoef(a[inside], b[inside])[0, 1])
    assert len(correlations) >= 6
    assert np.median(correlations) < 0.5


def test_fit_accepts_a_datasets_dataset_and_other_label_names(data_dir):
    from tumor_classifier import load_mri_dataset

    data = load_mri_dataset(data_dir, binary=True)
    clf = TumorClassifier("convnext", from_scratch=True, image_size=32, epochs=1, batch_size=16, validation_size=0.0, augment=False, config_overrides=TINY_CONVNEXT)
    clf.fit(data["train"])
    assert list(clf.classes_) == ["notumor", "tumor"]
    assert clf.predict_proba(data["test"]).shape == (12, 2)
    assert clf.tumor_probability(data["test"]).shape == (12,)
    with pytest.raises(TumorClassifierError, match="two classes"):
        TumorClassifier().fit([np.zeros((32, 32))] * 2, ["glioma", "glioma"])
    with pytest.raises(TumorClassifierError, match="labels"):
        TumorClassifier().fit([np.zeros((32, 32))] * 2, ["glioma"])


def test_fit_trains_tumour_images_of_unknown_type_with_the_partial_label_loss(train_images):
    """Images labelled "tumor_type_unknown" (Br35H-like) train the model without becoming a
    class of it; a batch holding them needs the tumour columns (the loss refuses without),
    so a fit that did not pass them would fail here."""
    from tumor_classifier.data import ANY_TUMOR_NAME

    paths, labels = train_images
    labels = [ANY_TUMOR_NAME if label == "glioma" else label for label in labels]
    assert ANY_TUMOR_NAME in labels and "notumor" in labels
    clf = TumorClassifier("convnext", from_scratch=True, image_size=32, epochs=1, batch_size=16, validation_size=0.25, augment=False, config_overrides=TINY_CONVNEXT)
    clf.fit(paths, labels)
    assert ANY_TUMOR_NAME not in clf.classes_ and "notumor" in clf.classes_
    assert clf.predict_proba(paths[:2]).shape == (2, len(clf.classes_))
    with pytest.raises(TumorClassifierError, match="notumor"):
        TumorClassifier().fit([np.zeros((32, 32))] * 3, ["glioma", "meningioma", ANY_TUMOR_NAME])


def test_push_to_hub_then_from_pretrained_in_a_fresh_cache(fitted_classifier, test_images, hub_env, tmp_path):
    url = fitted_classifier.push_to_hub("org/tumor-tiny")
    assert "org/tumor-tiny" in url
    stored = hub_env.server.state.repos  # what the server holds, not what we think we sent
    files = set(_repo_files(stored, "org/tumor-tiny"))
    assert {"model.safetensors", "config.json", "preprocessor_config.json", "README.md"} <= files
    assert not any(name.endswith((".bin", ".pkl", ".pt")) for name in files)
    hub_env.use_fresh_cache(tmp_path / "fresh-cache")
    pulled = TumorClassifier.from_pretrained("org/tumor-tiny")
    np.testing.assert_array_equal(pulled.predict_proba(test_images[0]), fitted_classifier.predict_proba(test_images[0]))
    with pytest.raises(ModelLoadError, match="org/missing"):
        TumorClassifier.from_pretrained("org/missing")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # closed again: nothing listens there


def test_push_to_hub_without_a_reachable_hub_fails_before_writing(fitted_classifier, tmp_path, monkeypatch):
    from hub_server import point_hub_at

    endpoint = f"http://127.0.0.1:{_free_port()}"
    point_hub_at(monkeypatch, endpoint, tmp_path / "cache")
    saved = []
    monkeypatch.setattr(fitted_classifier, "save_pretrained", lambda folder: saved.append(folder))
    with pytest.raises(HubUploadError) as info:
        fitted_classifier.push_to_hub("org/tumor-tiny")
    message = str(info.value)
    assert endpoint in message and "nothing was written or uploaded" in message and "network" in message, message
    assert isinstance(info.value, ConnectionError) and isinstance(info.value, TumorClassifierError)
    assert saved == []  # it used to write the shards, then raise a bare ConnectError


def test_push_to_hub_offline_or_refused_says_what_failed(fitted_classifier, hub_env, monkeypatch):
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    served = len(hub_env.server.state.requests)
    with pytest.raises(HubUploadError, match="offline mode is on \\(HF_HUB_OFFLINE\\)"):
        fitted_classifier.push_to_hub("org/tumor-tiny")
    assert len(hub_env.server.state.requests) == served
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN")  # the stand-in refuses writes without a token, as the Hub does
    monkeypatch.setenv("HF_HOME", str(hub_env.cache_dir / "home"))  # and no stored token either
    with pytest.raises(HubUploadError, match=f"Could not create the repository org/tumor-tiny on the Hugging Face Hub at {hub_env.base_url}") as info:
        fitted_classifier.push_to_hub("org/tumor-tiny")
    assert "401" in str(info.value)
    assert ("model", "org/tumor-tiny") not in hub_env.server.state.repos


def _repo_files(repos, repo_id):
    repo = repos[("model", repo_id)]
    return repo.resolve("main").files


def test_pull_from_a_prefilled_cache_offline(fitted_classifier, test_images, tmp_path):
    """A cache laid out as huggingface_hub writes it loads with local_files_only, no server."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "cache" / "models--org--offline-model"
    snapshot = repo / "snapshots" / commit
    fitted_classifier.save_pretrained(snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    loaded = TumorClassifier.from_pretrained("org/offline-model", cache_dir=tmp_path / "cache", local_files_only=True)
    np.testing.assert_array_equal(loaded.predict_proba(test_images[0]), fitted_classifier.predict_proba(test_images[0]))
    with pytest.raises(ModelLoadError):
        TumorClassifier.from_pretrained("org/not-cached", cache_dir=tmp_path / "cache", local_files_only=True)


def test_test_time_augmentation_averages_the_mirror_image(fitted_classifier, test_images):
    from tumor_classifier.inference import pixel_values

    paths = test_images[0][:3]
    clf = fitted_classifier
    pixels = pixel_values(clf.preprocessor_, [clf.preprocessor_.prepare(p) for p in paths], clf.model_.device)
    with torch.no_grad():
        plain, mirrored = (torch.softmax(clf.model_(pixel_values=x).logits, -1).numpy() for x in (pixels, pixels.flip(-1)))
    np.testing.assert_allclose(clf.predict_proba(paths), plain, atol=1e-5)
    with_tta = copy.copy(clf).set_params(test_time_augmentation=True)  # same fitted model, public API
    np.testing.assert_allclose(with_tta.predict_proba(paths), (plain + mirrored) / 2, atol=1e-5)
    assert not np.allclose(plain, mirrored, atol=1e-4)  # the check is not vacuous


def test_loading_and_saving_a_model_print_no_progress_bars(tmp_path, capfd):
    """A library call that loads or saves a model is silent (transformers would print a
    "Loading weights" / "Writing model shards" bar per file)."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.enable_progress_bar()
    clf = TumorClassifier.from_pretrained()
    clf.save_pretrained(tmp_path / "copy")
    TumorClassifier.from_pretrained(tmp_path / "copy")
    captured = capfd.readouterr()
    assert "Loading weights" not in captured.err and "Writing model shards" not in captured.err, captured.err
    assert transformers_logging.is_progress_bar_enabled()  # the caller's setting is left as it was
