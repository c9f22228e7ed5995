"""Hostile model folders: every one is refused at load time with a ModelLoadError naming the file.

Each folder is a real saved model (the tiny fitted classifier's ``save_pretrained`` output,
or a copy of the shipped ensemble) with one file damaged the way a security review did:
corrupt safetensors, pickle weights, hostile JSON, preprocessing that would give NaN,
ensemble members outside the folder. Nothing is mocked; the pickle case carries a real
payload that would create a marker file if anything unpickled it.
"""

from __future__ import annotations

import copy
import json
import pathlib
import pickle
import re
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from tumor_classifier import ModelLoadError, TumorClassifier
from tumor_classifier.classifier import DEFAULT_MODEL_DIR
from tumor_classifier.exceptions import NonFiniteOutputError
from tumor_classifier.model_folder import check_safetensors, read_json_limited
from tumor_classifier.preprocessing import MRIPreprocessor

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
PREPROCESSOR = "preprocessor_config.json"
ENSEMBLE = "ensemble.json"


class TouchOnUnpickle:
    """A pickle payload: unpickling it calls ``Path(marker).touch()`` (no shell, no os.system)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


@pytest.fixture(scope="module")
def saved_model(fitted_classifier, tmp_path_factory) -> Path:
    """A valid single-model folder: config.json, model.safetensors, preprocessor_config.json."""
    return fitted_classifier.save_pretrained(tmp_path_factory.mktemp("valid") / "model")


@pytest.fixture
def model_copy(saved_model, tmp_path) -> Path:
    return Path(shutil.copytree(saved_model, tmp_path / "model"))


@pytest.fixture
def ensemble_copy(saved_model, tmp_path) -> Path:
    """A two-member ensemble of the tiny model, stored in float16 as ensembles are, so a
    test may damage it."""
    from tumor_classifier.ensemble import build_ensemble

    build_ensemble([saved_model, saved_model], temperature=1.0, output_dir=tmp_path / "ensemble")
    return tmp_path / "ensemble"


def _header(path: Path) -> tuple[dict, bytes]:
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + length]), data[8 + length :]


def _with_header(path: Path, header: dict, body: bytes) -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + body)


def _edit_json(name: str, edit):
    def damage(folder: Path) -> None:
        value = json.loads((folder / name).read_text())
        value = edit(value) or value
        (folder / name).write_text(json.dumps(value))

    return damage


def _huge_tensor(folder: Path) -> None:
    header, body = _header(folder / WEIGHTS)
    name = next(k for k in header if k != "__metadata__")
    header[name] = {"dtype": "F32", "shape": [100_000, 100_000], "data_offsets": [0, 40_000_000_000]}  # 40 GB
    _with_header(folder / WEIGHTS, header, body)


def _offsets_outside(folder: Path) -> None:
    header, body = _header(folder / WEIGHTS)
    name = next(k for k in header if k != "__metadata__")
    begin, end = header[name]["data_offsets"]
    shift = len(body) - begin  # same length, moved past the end of the data
    header[name]["data_offsets"] = [begin + shift, end + shift]
    _with_header(folder / WEIGHTS, header, body)


def _wrong_byte_count(folder: Path) -> None:
    header, body = _header(folder / WEIGHTS)
    name = next(k for k in header if k != "__metadata__" and header[k]["shape"])
    header[name]["shape"] = [header[name]["shape"][0] + 1, *header[name]["shape"][1:]]
    _with_header(folder / WEIGHTS, header, body)


def _three_labels(config: dict) -> None:  # the saved head has 4 outputs
    config["id2label"] = {"0": "glioma", "1": "meningioma", "2": "notumor"}
    config["label2id"] = {"glioma": 0, "meningioma": 1, "notumor": 2}


SINGLE_MODEL_CASES = {
    # -- model.safetensors ---------------------------------------------------------------
    "random bytes": (lambda f: (f / WEIGHTS).write_bytes(np.random.default_rng(0).bytes(4096)), WEIGHTS, "header"),
    "truncated": (lambda f: (f / WEIGHTS).write_bytes((f / WEIGHTS).read_bytes()[:20_000]), WEIGHTS, "bytes"),
    "empty": (lambda f: (f / WEIGHTS).write_bytes(b""), WEIGHTS, "0 bytes"),
    "huge header length": (lambda f: (f / WEIGHTS).write_bytes(struct.pack("<Q", 2**62) + b"{}" * 100), WEIGHTS, "at most"),
    "header not JSON": (lambda f: (f / WEIGHTS).write_bytes(struct.pack("<Q", 9) + b"{not json" + b"\0" * 64), WEIGHTS, "JSON"),
    "header a list": (lambda f: _with_header(f / WEIGHTS, [1, 2], b""), WEIGHTS, "not an object"),
    "40 GB tensor declared": (_huge_tensor, WEIGHTS, "40000000000 bytes"),
    "offsets outside the data": (_offsets_outside, WEIGHTS, "data_offsets"),
    "shape and bytes disagree": (_wrong_byte_count, WEIGHTS, "needs"),
    # -- config.json ---------------------------------------------------------------------
    "config nested 100000 deep": (lambda f: (f / CONFIG).write_text("[" * 100_000 + "]" * 100_000), CONFIG, "levels deep"),
    "config over 1 MB": (lambda f: (f / CONFIG).write_text(json.dumps({"pad": "x" * 1_100_000})), CONFIG, "bytes"),
    "config a list": (lambda f: (f / CONFIG).write_text("[]"), CONFIG, "JSON object"),
    "3 labels for a 4-way head": (_edit_json(CONFIG, _three_labels), CONFIG, "3 classes"),
    "id2label keys not 0..n-1": (_edit_json(CONFIG, lambda c: c["id2label"].update({"7": c["id2label"].pop("3")})), CONFIG, "0..3"),
    "mistyped field": (_edit_json(CONFIG, lambda c: c.update(hidden_sizes="big")), CONFIG, "hidden_sizes"),
    "unknown model_type": (_edit_json(CONFIG, lambda c: c.update(model_type="no-such-model")), CONFIG, "no-such-model"),
    # -- preprocessor_config.json ----------------------------------------------------------
    "preprocessing a list": (lambda f: (f / PREPROCESSOR).write_text("[1, 2]"), PREPROCESSOR, "JSON list"),
    "size a list": (_edit_json(PREPROCESSOR, lambda c: c.update(size=[64, 64])), PREPROCESSOR, "'size'"),
    "size negative": (_edit_json(PREPROCESSOR, lambda c: c.update(size=-64)), PREPROCESSOR, "'size'"),
    "size huge": (_edit_json(PREPROCESSOR, lambda c: c.update(size={"height": 100_000, "width": 100_000})), PREPROCESSOR, "'size'"),
    "height differs from width": (_edit_json(PREPROCESSOR, lambda c: c.update(size={"height": 64, "width": 32})), PREPROCESSOR, "'size'"),
    "image_std 0": (_edit_json(PREPROCESSOR, lambda c: c.update(image_std=[0, 0, 0])), PREPROCESSOR, "'image_std'"),
    "image_mean NaN": (_edit_json(PREPROCESSOR, lambda c: c.update(image_mean=[float("nan")] * 3)), PREPROCESSOR, "'image_mean'"),
    "num_channels 0": (_edit_json(PREPROCESSOR, lambda c: c["tumor_classifier"].update(num_channels=0)), PREPROCESSOR, "num_channels"),
    "num_channels 3.0": (_edit_json(PREPROCESSOR, lambda c: c["tumor_classifier"].update(num_channels=3.0)), PREPROCESSOR, "num_channels"),
    "image_std a 400-digit integer": (_edit_json(PREPROCESSOR, lambda c: c.update(image_std=10**400)), PREPROCESSOR, "'image_std'"),
    "crop_to_head a string": (_edit_json(PREPROCESSOR, lambda c: c["tumor_classifier"].update(crop_to_head="no")), PREPROCESSOR, "crop_to_head"),
    "preprocessing nested deep": (lambda f: (f / PREPROCESSOR).write_text('{"a":' * 100_000 + "1" + "}" * 100_000), PREPROCESSOR, "levels deep"),
}


@pytest.mark.parametrize("case", SINGLE_MODEL_CASES)
def test_a_damaged_single_model_folder_is_refused_naming_the_file(case, model_copy, test_images):
    damage, damaged_file, what = SINGLE_MODEL_CASES[case]
    damage(model_copy)
    with pytest.raises(ModelLoadError) as info:
        TumorClassifier.from_pretrained(model_copy)
    message = str(info.value)
    assert str(model_copy / damaged_file) in message, message
    assert what in message, message


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "weights.pth", "last.ckpt", "model.pkl"])
def test_pickle_weights_are_refused_and_never_unpickled(name, model_copy, tmp_path):
    proof = tmp_path / "the-payload-works"
    pickle.loads(pickle.dumps(TouchOnUnpickle(proof)))
    assert proof.exists()  # the payload is real: anything that unpickles the file creates its marker
    marker = tmp_path / "unpickled"
    (model_copy / name).write_bytes(pickle.dumps(TouchOnUnpickle(marker)))
    (model_copy / WEIGHTS).unlink()
    with pytest.raises(ModelLoadError, match=rf"{re.escape(str(model_copy))}.*{re.escape(name)}.*never opened"):
        TumorClassifier.from_pretrained(model_copy)
    assert not marker.exists()


def test_a_pickle_beside_safetensors_is_never_opened(model_copy, tmp_path, monkeypatch, test_images):
    from transformers import AutoModelForImageClassification

    marker = tmp_path / "unpickled"
    (model_copy / "pytorch_model.bin").write_bytes(pickle.dumps(TouchOnUnpickle(marker)))
    calls = []
    original = AutoModelForImageClassification.from_pretrained

    def spy(*args, **kwargs):  # the real loader, with its arguments recorded
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(AutoModelForImageClassification, "from_pretrained", spy)
    clf = TumorClassifier.from_pretrained(model_copy)
    assert np.isfinite(clf.predict_proba(test_images[0][:2])).all()
    assert not marker.exists()
    assert calls and all(call.get("use_safetensors") is True and call.get("dtype") is torch.float32 for call in calls)


def test_nan_weights_are_refused_at_load_time(model_copy):
    weights = load_file(model_copy / WEIGHTS)
    weights["classifier.bias"][0] = float("nan")
    save_file(weights, model_copy / WEIGHTS, metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match=rf"{re.escape(str(model_copy / WEIGHTS))}.*NaN or infinite.*classifier\.bias"):
        TumorClassifier.from_pretrained(model_copy)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_logits_raise_instead_of_nan_probabilities(value, fitted_classifier, test_images):
    broken = copy.deepcopy(fitted_classifier)
    with torch.no_grad():
        broken.model_.classifier.bias[1] = value
    for call in (broken.predict_proba, broken.predict):
        with pytest.raises(NonFiniteOutputError, match="NaN or infinite logits for image 0"):
            call(test_images[0][:2])
    assert isinstance(NonFiniteOutputError("x"), FloatingPointError)


# -- ensembles -----------------------------------------------------------------------------
def _set_members(folder: Path, members) -> None:
    manifest = json.loads((folder / ENSEMBLE).read_text())
    manifest["members"] = members
    (folder / ENSEMBLE).write_text(json.dumps(manifest))


@pytest.fixture
def outside_model(saved_model, tmp_path) -> Path:
    """A loadable model folder beside (outside) the ensemble copy: what an escaping path reaches."""
    return Path(shutil.copytree(saved_model, tmp_path / "outside"))


@pytest.mark.parametrize("how", ["dot-dot", "absolute", "symlink"])
def test_ensemble_members_outside_the_folder_are_refused(how, ensemble_copy, outside_model):
    if how == "dot-dot":
        _set_members(ensemble_copy, ["member-0", "../../outside"])
    elif how == "absolute":
        _set_members(ensemble_copy, ["member-0", str(outside_model)])
    else:
        shutil.rmtree(ensemble_copy / "members" / "member-1")
        (ensemble_copy / "members" / "member-1").symlink_to(outside_model, target_is_directory=True)
    with pytest.raises(ModelLoadError, match=rf"{re.escape(str(ensemble_copy / ENSEMBLE))}.*outside"):
        TumorClassifier.from_pretrained(ensemble_copy)


@pytest.mark.parametrize(
    "edit, what",
    [
        (lambda m: m.update(temperature=0), "temperature"),
        (lambda m: m.update(temperature=-1.0), "temperature"),
        (lambda m: m.update(temperature=float("nan")), "temperature"),
        (lambda m: m.update(temperature="hot"), "temperature"),
        (lambda m: m.update(temperature=10**400), "int too large"),
        (lambda m: m.update(members=[f"member-{i % 4}" for i in range(1000)]), "1000 members"),
        (lambda m: m.update(members=[]), "members"),
    ],
    ids=["temperature 0", "temperature negative", "temperature NaN", "temperature a string", "temperature 400 digits", "1000 members", "no members"],
)
def test_an_invalid_ensemble_description_is_refused(edit, what, ensemble_copy):
    _edit_json(ENSEMBLE, edit)(ensemble_copy)
    with pytest.raises(ModelLoadError, match=rf"{re.escape(str(ensemble_copy / ENSEMBLE))}.*{what}"):
        TumorClassifier.from_pretrained(ensemble_copy)


def test_an_ensemble_description_nested_deep_is_refused(ensemble_copy):
    (ensemble_copy / ENSEMBLE).write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ModelLoadError, match=rf"{re.escape(str(ensemble_copy / ENSEMBLE))}.*levels deep"):
        TumorClassifier.from_pretrained(ensemble_copy)


def test_a_corrupt_ensemble_member_is_named(ensemble_copy):
    weights = ensemble_copy / "members" / "member-1" / WEIGHTS
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match=r"member-1/model\.safetensors"):
        TumorClassifier.from_pretrained(ensemble_copy)


def test_a_damaged_ensemble_preprocessing_is_named(ensemble_copy):
    _edit_json(PREPROCESSOR, lambda c: c.update(image_std=[0.0, 0.0, 0.0]))(ensemble_copy)
    with pytest.raises(ModelLoadError, match=rf"{re.escape(str(ensemble_copy / PREPROCESSOR))}.*image_std"):
        TumorClassifier.from_pretrained(ensemble_copy)


# -- what must still load --------------------------------------------------------------------
def test_the_shipped_model_and_a_saved_model_still_load(saved_model, fitted_classifier, test_images):
    paths = test_images[0][:3]
    shipped = TumorClassifier.from_pretrained()
    proba = shipped.predict_proba(paths)
    assert np.isfinite(proba).all() and np.allclose(proba.sum(axis=1), 1, atol=1e-5)
    loaded = TumorClassifier.from_pretrained(saved_model)
    np.testing.assert_allclose(loaded.predict_proba(paths), fitted_classifier.predict_proba(paths), atol=1e-6)


def test_a_half_precision_member_loads_alone_in_float32(ensemble_copy, test_images):
    member = ensemble_copy / "members" / "member-0"
    assert _header(member / WEIGHTS)[0]["classifier.bias"]["dtype"] == "F16"  # stored in half precision
    clf = TumorClassifier.from_pretrained(member)
    assert {p.dtype for p in clf.model_.parameters()} == {torch.float32}
    proba = clf.predict_proba(test_images[0][:3])
    assert proba.shape == (3, 4) and np.isfinite(proba).all()
    np.testing.assert_allclose(proba.sum(axis=1), 1, atol=1e-5)


def test_the_checks_accept_what_save_pretrained_writes(saved_model):
    shapes = check_safetensors(saved_model / WEIGHTS)
    assert shapes["classifier.bias"] == [4]
    assert read_json_limited(saved_model / CONFIG)["id2label"]["3"] == "pituitary"
    assert MRIPreprocessor.from_pretrained(saved_model) == MRIPreprocessor(size=64)
    # Configs of other projects (ConvNeXt's shortest_edge, one mean for all channels) still read.
    other = MRIPreprocessor.from_hf_dict({"size": {"shortest_edge": 96}, "image_mean": 0.4, "image_std": [0.2, 0.3, 0.4]})
    assert (other.size, other.mean, other.std) == (96, 0.4, pytest.approx(0.3))


# -- a config that does not describe the weights -----------------------------------------------
def _vit_config(hidden_size: int) -> dict:
    """A ViT config (another architecture) with the tiny ConvNeXt's four classes."""
    from transformers import ViTConfig

    classes = ["glioma", "meningioma", "notumor", "pituitary"]
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=hidden_size, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64, id2label=dict(enumerate(classes)), label2id={c: i for i, c in enumerate(classes)})
    return config.to_dict()


FOREIGN_CONFIGS = {
    # The tiny ConvNeXt's head is Linear(64, 4): a 64-wide ViT's head takes those weights
    # and every other ViT weight would be random, which transformers only logs.
    "ViT config whose head fits": lambda config: _vit_config(64),
    "ViT config whose head does not fit": lambda config: _vit_config(32),
    "one layer more than the weights hold": lambda config: {**config, "depths": [2, 1, 1, 1]},
}


@pytest.mark.parametrize("case", FOREIGN_CONFIGS)
def test_a_config_that_does_not_describe_the_weights_is_refused(case, tiny_model_dir, tmp_path, capfd):
    """A config.json of another architecture (or with more layers) beside real weights would
    load with freshly random weights and answer noise; it is refused naming both files, and
    transformers' key-by-key report does not flood the terminal."""
    folder = Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))
    config = json.loads((folder / CONFIG).read_text())
    (folder / CONFIG).write_text(json.dumps(FOREIGN_CONFIGS[case](config)))
    with pytest.raises(ModelLoadError) as info:
        TumorClassifier.from_pretrained(folder)
    message = str(info.value)
    assert str(folder / CONFIG) in message and str(folder / WEIGHTS) in message, message
    assert "do not match" in message and "report" not in message, message
    captured = capfd.readouterr()
    assert "LOAD REPORT" not in captured.out + captured.err
