"""Ensembles of ConvNeXt members behind the TumorClassifier API.

Real parts: three tiny from-scratch ConvNeXt members (random weights, different seeds,
64 px) saved as train_hf.py would save them, the real transformers loaders, Captum, the
CLI, the app's pure predict function and the stand-in Hub server.
"""

from __future__ import annotations

import copy
import json
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open
from transformers import AutoModelForImageClassification

from conftest import TINY_CONVNEXT
from tumor_classifier import (
    EnsembleForImageClassification,
    ModelLoadError,
    TumorClassifier,
    TumorClassifierError,
    build_ensemble,
    create_model,
)
from tumor_classifier.attributions import METHODS, attribution_layer, compute_attributions, default_method
from tumor_classifier.ensemble import is_ensemble_folder
from tumor_classifier.preprocessing import MRIPreprocessor

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = 64  # four ConvNeXt stages leave a 2 x 2 feature map: Grad-CAM still has a location
TEMPERATURE = 2.0
#: Half-precision storage moves a probability of these tiny random members by ~1e-4.
FP16_ATOL = 2e-3


def _save_member(folder, seed, *, class_names=("glioma", "meningioma", "notumor", "pituitary"), size=SIZE):
    torch.manual_seed(seed)
    model = create_model("convnext", class_names=list(class_names), image_size=size, config_overrides=TINY_CONVNEXT)
    model.eval().save_pretrained(folder)
    MRIPreprocessor(size=size).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def member_dirs(tmp_path_factory):
    """Three train_hf.py-style member folders: config.json, model.safetensors, preprocessor_config.json."""
    root = tmp_path_factory.mktemp("members")
    return [_save_member(root / f"seed-{seed}", seed) for seed in range(3)]


@pytest.fixture(scope="module")
def ensemble_dir(member_dirs, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ensemble") / "model"
    build_ensemble(member_dirs, temperature=TEMPERATURE, output_dir=folder)
    return folder


@pytest.fixture(scope="module")
def ensemble_classifier(ensemble_dir):
    return TumorClassifier.from_pretrained(ensemble_dir)


@pytest.fixture(scope="module")
def pixel_values():
    return torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


def _members(member_dirs):
    return [AutoModelForImageClassification.from_pretrained(folder).eval() for folder in member_dirs]


def _normalise(maps: np.ndarray) -> np.ndarray:
    flat = maps.reshape(len(maps), -1)
    low, high = flat.min(axis=1, keepdims=True), flat.max(axis=1, keepdims=True)
    scaled = np.where(high > low, (flat - low) / np.where(high > low, high - low, 1), 0)
    return scaled.reshape(maps.shape)


# -- the model -------------------------------------------------------------------------
def test_logits_are_the_mean_of_the_members_over_the_temperature(member_dirs, pixel_values):
    ensemble = build_ensemble(member_dirs, temperature=TEMPERATURE)
    members = _members(member_dirs)
    with torch.no_grad():
        member_logits = torch.stack([m(pixel_values).logits for m in members])
        output = ensemble(pixel_values)
    assert not torch.allclose(member_logits[0], member_logits[1], atol=1e-3)  # the mean is not vacuous
    torch.testing.assert_close(output.logits, member_logits.mean(dim=0) / TEMPERATURE)
    assert ensemble.config.id2label == members[0].config.id2label and ensemble.config.model_type == "convnext"
    assert ensemble.device == torch.device("cpu") and not ensemble.training
    labels = torch.tensor([0, 1, 2])
    with torch.no_grad():
        loss = ensemble(pixel_values, labels=labels).loss
    torch.testing.assert_close(loss, F.cross_entropy(output.logits, labels))


def test_save_then_load_stores_half_precision_and_computes_in_float32(member_dirs, pixel_values, tmp_path):
    ensemble = build_ensemble(member_dirs, temperature=TEMPERATURE)
    folder = ensemble.save_pretrained(tmp_path / "ensemble")
    assert is_ensemble_folder(folder) and not (folder / "config.json").exists()
    manifest = json.loads((folder / "ensemble.json").read_text())
    assert manifest == {
        "format": "tumor-classifier-ensemble",
        "members": ["member-0", "member-1", "member-2"],
        "temperature": TEMPERATURE,
        "combine": "mean_logits",
    }
    for name in manifest["members"]:
        weights = folder / "members" / name / "model.safetensors"
        assert (folder / "members" / name / "config.json").is_file()
        with safe_open(str(weights), "pt") as stored:
            assert {stored.get_tensor(key).dtype for key in stored.keys()} == {torch.float16}
        assert weights.stat().st_size < 0.6 * (member_dirs[0] / "model.safetensors").stat().st_size

    loaded = EnsembleForImageClassification.from_pretrained(folder)
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}
    assert not any(m.training for m in loaded.modules())
    assert loaded.temperature == TEMPERATURE and len(loaded.members) == 3
    with torch.no_grad():
        expected = torch.softmax(ensemble(pixel_values).logits, dim=-1)
        torch.testing.assert_close(torch.softmax(loaded(pixel_values).logits, dim=-1), expected, atol=FP16_ATOL, rtol=0)
    # Each member is a plain transformers folder on its own.
    member = AutoModelForImageClassification.from_pretrained(folder / "members" / "member-1", dtype=torch.float32)
    torch.testing.assert_close(member.state_dict()["classifier.weight"], loaded.members[1].state_dict()["classifier.weight"])

    exact = ensemble.save_pretrained(tmp_path / "float32", dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(EnsembleForImageClassification.from_pretrained(exact)(pixel_values).logits,
                                   ensemble(pixel_values).logits, atol=0, rtol=0)
    # Saving a smaller ensemble over a bigger one leaves no stale member behind.
    EnsembleForImageClassification(list(ensemble.members)[:2]).save_pretrained(folder)
    assert sorted(p.name for p in (folder / "members").iterdir()) == ["member-0", "member-1"]


def test_mismatched_members_are_refused_with_a_clear_message(member_dirs, tmp_path):
    other_classes = _save_member(tmp_path / "binary", 5, class_names=("notumor", "tumor"))
    with pytest.raises(TumorClassifierError, match=r"share their classes.*binary"):
        build_ensemble([member_dirs[0], other_classes])
    other_size = _save_member(tmp_path / "big", 6, size=96)
    with pytest.raises(TumorClassifierError, match=r"share their preprocessing.*big.*image size"):
        build_ensemble([member_dirs[0], other_size])
    bare = tmp_path / "bare"
    create_model("convnext", image_size=SIZE, config_overrides=TINY_CONVNEXT).save_pretrained(bare)
    with pytest.raises(TumorClassifierError, match="preprocessor_config.json"):
        build_ensemble([member_dirs[0], bare])
    with pytest.raises(TumorClassifierError, match="at least one"):
        build_ensemble([])
    with pytest.raises(TumorClassifierError, match="temperature"):
        build_ensemble(member_dirs[:1], temperature=0.0)
    with pytest.raises(TumorClassifierError, match="same classes"):
        EnsembleForImageClassification(_members([member_dirs[0], other_classes]))


def test_broken_ensemble_folders_raise_model_load_error(ensemble_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(ensemble_dir, broken)
    shutil.rmtree(broken / "members" / "member-2")
    with pytest.raises(ModelLoadError, match="member-2"):
        TumorClassifier.from_pretrained(broken)
    (broken / "ensemble.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="ensemble.json"):
        TumorClassifier.from_pretrained(broken)
    (broken / "ensemble.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ModelLoadError, match="format"):
        TumorClassifier.from_pretrained(broken)


# -- the estimator ---------------------------------------------------------------------
def test_classifier_on_an_ensemble_folder_matches_the_softmax_of_the_mean_logits(
    ensemble_classifier, ensemble_dir, member_dirs, test_images
):
    clf = ensemble_classifier
    paths, labels = test_images
    assert isinstance(clf.model_, EnsembleForImageClassification)
    assert list(clf.classes_) == ["glioma", "meningioma", "notumor", "pituitary"]
    assert clf.backbone == "convnext" and clf.image_size == SIZE and clf.attribution_method_ == "gradcam"
    assert clf.model_folder_ == ensemble_dir
    proba = clf.predict_proba(paths)
    assert proba.shape == (12, 4) and proba.dtype == np.float32
    # By hand: the members as saved by train_hf.py (float32), the same pixel values.
    pixels = clf.preprocessor_(paths)
    with torch.no_grad():
        mean_logits = torch.stack([m(pixels).logits for m in _members(member_dirs)]).mean(dim=0)
    np.testing.assert_allclose(proba, torch.softmax(mean_logits / TEMPERATURE, dim=-1).numpy(), atol=FP16_ATOL)
    np.testing.assert_array_equal(clf.predict(paths), clf.classes_[proba.argmax(axis=1)])
    assert clf.score(paths, labels) == np.mean(clf.predict(paths) == np.asarray(labels))
    np.testing.assert_allclose(clf.tumor_probability(paths), 1 - proba[:, 2], atol=1e-6)


def test_classifier_save_then_load_keeps_the_ensemble(ensemble_classifier, test_images, tmp_path):
    folder = ensemble_classifier.save_pretrained(tmp_path / "again")
    names = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert {"ensemble.json", "preprocessor_config.json", "members/member-0/model.safetensors",
            "members/member-2/config.json"} <= names
    assert "config.json" not in names and "model.safetensors" not in names
    loaded = TumorClassifier.from_pretrained(folder)
    # float16 -> float32 -> float16 is exact, so a re-saved ensemble is bit-identical.
    np.testing.assert_array_equal(loaded.predict_proba(test_images[0]), ensemble_classifier.predict_proba(test_images[0]))
    assert loaded.preprocessor_ == ensemble_classifier.preprocessor_
    # A single model saved over the ensemble folder replaces it rather than hiding behind it.
    single = TumorClassifier.from_pretrained(folder / "members" / "member-0")  # a member is a model folder of its own
    single.save_pretrained(folder)
    assert not (folder / "ensemble.json").exists() and not (folder / "members").exists()
    assert not isinstance(TumorClassifier.from_pretrained(folder).model_, EnsembleForImageClassification)


def test_test_time_augmentation_works_on_an_ensemble(ensemble_classifier, test_images):
    paths = test_images[0][:3]
    with_tta = copy.copy(ensemble_classifier).set_params(test_time_augmentation=True)  # same fitted model, public API
    pixels = ensemble_classifier.preprocessor_(paths)
    with torch.no_grad():
        plain = torch.softmax(ensemble_classifier.model_(pixels).logits, dim=-1)
        mirrored = torch.softmax(ensemble_classifier.model_(pixels.flip(-1)).logits, dim=-1)
    np.testing.assert_allclose(with_tta.predict_proba(paths), ((plain + mirrored) / 2).numpy(), atol=1e-5)


@pytest.mark.parametrize("method", ["auto", *METHODS])
def test_predict_and_explain_give_maps_in_the_input_coordinates(ensemble_classifier, test_images, method):
    clf = ensemble_classifier
    paths = test_images[0][:2]
    options = {"n_steps": 4, "occlusion_window": 16, "occlusion_stride": 16}
    labels, maps = clf.predict(paths, return_attributions=True, method=method)
    explanations = clf.explain(paths, method=method, **options)
    proba = clf.predict_proba(paths)
    for path, label, attribution, e, row in zip(paths, labels, maps, explanations, proba):
        size = Image.open(path).size
        assert attribution.shape == size[::-1] and attribution.dtype == np.float32
        assert 0 <= attribution.min() and attribution.max() <= 1
        assert e.method == ("gradcam" if method == "auto" else method)
        assert e.label == label == clf.classes_[row.argmax()]
        assert e.probabilities == pytest.approx(dict(zip(clf.classes_, row.tolist())), abs=1e-5)
        assert e.attribution.shape == size[::-1] and e.overlay.size == size


# -- attributions ----------------------------------------------------------------------
def _raw_gradcam(member, pixel_values, target):
    """Grad-CAM by hand for one member: ReLU(sum_c mean(dlogit/dA_c) * A_c), bilinear to the input."""
    captured = {}
    handle = member.convnext.encoder.stages[-1].register_forward_hook(lambda _m, _i, out: captured.update(a=out))
    try:
        logits = member(pixel_values.clone().requires_grad_(True)).logits
        (gradient,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), captured["a"])
    finally:
        handle.remove()
    cam = torch.relu((gradient.mean(dim=(2, 3), keepdim=True) * captured["a"]).sum(dim=1, keepdim=True))
    return F.interpolate(cam, size=pixel_values.shape[-2:], mode="bilinear", align_corners=False)[:, 0].detach().numpy()


def test_gradcam_of_an_ensemble_is_the_normalised_mean_of_the_members_raw_maps(member_dirs, pixel_values):
    """What is asserted: the ensemble's map equals min-max(mean over members of each
    member's *raw* (un-normalised) Grad-CAM map for the same target), the target being
    the ensemble's predicted class when none is given."""
    ensemble = build_ensemble(member_dirs, temperature=TEMPERATURE)
    # head_only=False: the raw maps are compared, before masking to the head.
    maps, logits = compute_attributions(ensemble, pixel_values, None, "gradcam", return_logits=True, head_only=False)
    with torch.no_grad():
        expected_logits = ensemble(pixel_values).logits
    np.testing.assert_allclose(logits, expected_logits.numpy(), atol=1e-5)
    target = expected_logits.argmax(dim=1)
    raw = np.mean([_raw_gradcam(member, pixel_values, target) for member in ensemble.members], axis=0)
    assert (raw.reshape(3, -1).max(axis=1) > 0).all()  # every map has evidence: not vacuous
    np.testing.assert_allclose(maps, _normalise(raw), atol=1e-5)
    # An explicit target gives the same as the predicted one when they agree, and differs otherwise.
    np.testing.assert_allclose(compute_attributions(ensemble, pixel_values, target, "gradcam", head_only=False), maps, atol=1e-6)
    other = (target + 1) % 4
    raw_other = np.mean([_raw_gradcam(member, pixel_values, other) for member in ensemble.members], axis=0)
    np.testing.assert_allclose(
        compute_attributions(ensemble, pixel_values, other, "gradcam", head_only=False), _normalise(raw_other), atol=1e-5
    )


def test_an_ensemble_of_one_model_repeated_explains_like_that_model(member_dirs, pixel_values):
    """Its logits are the model's over 3; every method's map is linear in the logits, and
    maps are min-max normalised, so the maps are the model's own. Grad-CAM++ is left out:
    its weights (second and third powers of the gradient) are not linear in the logits;
    HiResCAM sums gradient x activation over channels before the ReLU, where float
    rounding of the 1/3 scale moves near-zero values across zero (tolerance 0.05)."""
    member = _members(member_dirs[:1])[0]
    ensemble = EnsembleForImageClassification([member, member, member], temperature=3.0)
    target = torch.tensor([0, 1, 3])
    options = {"n_steps": 4, "occlusion_window": 16, "occlusion_stride": 16}
    for method in METHODS:
        if method == "gradcam_plusplus":
            continue
        np.testing.assert_allclose(
            compute_attributions(ensemble, pixel_values, target, method, **options),
            compute_attributions(member, pixel_values, target, method, **options),
            atol=0.05 if method == "hirescam" else 1e-5,
            err_msg=method,
        )


def test_default_method_and_layers_follow_the_members(member_dirs):
    ensemble = build_ensemble(member_dirs)
    assert default_method(ensemble) == "gradcam"
    layers = attribution_layer(ensemble)
    assert isinstance(layers, torch.nn.ModuleList) and len(layers) == 3
    for layer, member in zip(layers, ensemble.members):
        assert layer is member.convnext.encoder.stages[-1]
    vit = create_model("vit", image_size=32, config_overrides={"patch_size": 8, "hidden_size": 16, "num_hidden_layers": 1,
                                                              "num_attention_heads": 2, "intermediate_size": 32})
    mixed = EnsembleForImageClassification([ensemble.members[0], vit])
    assert default_method(mixed) == "integrated_gradients"  # no common backbone: the model-agnostic method


def _state(model):
    return (
        [(name, module.training) for name, module in model.named_modules()],
        [(name, param.requires_grad) for name, param in model.named_parameters()],
    )


def _hooks(model):
    return [name for name, module in model.named_modules() if module._forward_hooks or module._forward_pre_hooks
            or module._backward_hooks or getattr(module, "_backward_pre_hooks", None)]


@pytest.mark.parametrize("method", METHODS)
def test_every_members_state_is_restored_and_no_hook_is_left(member_dirs, pixel_values, method):
    ensemble = build_ensemble(member_dirs).train()
    for param in ensemble.members[1].convnext.embeddings.parameters():
        param.requires_grad_(False)
    ensemble.members[2].classifier.eval()
    before = _state(ensemble)
    compute_attributions(ensemble, pixel_values, [0, 1, 2], method, n_steps=4, occlusion_window=16, occlusion_stride=16)
    assert _state(ensemble) == before
    assert _hooks(ensemble) == []
    assert all(param.grad is None for param in ensemble.parameters())


# -- the CLI, the app and the Hub ------------------------------------------------------
def test_cli_predict_and_evaluate_take_an_ensemble_folder(ensemble_dir, ensemble_classifier, test_images, data_dir, tmp_path, capsys):
    from tumor_classifier.cli import main

    path = str(test_images[0][0])
    out = tmp_path / "overlays"
    assert main(["predict", path, "--model", str(ensemble_dir), "--json", "--explain", "gradcam", "--out", str(out)]) == 0
    row = json.loads(capsys.readouterr().out.splitlines()[0])
    assert row["label"] == ensemble_classifier.predict(path)[0]
    assert len(list(out.glob("*_gradcam.png"))) == 1
    report = tmp_path / "report"
    assert main(["evaluate", str(data_dir), "--model", str(ensemble_dir), "--out", str(report), "--no-dedup"]) == 0
    assert json.loads((report / "metrics.json").read_text())["test"]["n"] == 12


def test_app_predict_scan_uses_the_ensemble(ensemble_classifier, test_images):
    from tumor_classifier.app import predict_scan

    path = test_images[0][0]
    _, label, heatmap, tumor = predict_scan(str(path), "gradcam", 0.45, classifier=ensemble_classifier)
    confidences = {c["label"]: c["confidence"] for c in label["confidences"]}
    proba = ensemble_classifier.predict_proba(path)[0]
    assert confidences == pytest.approx(dict(zip(ensemble_classifier.classes_, proba.tolist())), abs=1e-4)
    assert heatmap.size == Image.open(path).size


def test_push_to_hub_then_from_pretrained_downloads_every_member(ensemble_classifier, test_images, hub_env, tmp_path):
    ensemble_classifier.push_to_hub("org/tumor-ensemble")
    stored = set(hub_env.server.state.repos[("model", "org/tumor-ensemble")].resolve("main").files)
    members = {f"members/member-{i}/{name}" for i in range(3) for name in ("config.json", "model.safetensors")}
    assert {"ensemble.json", "preprocessor_config.json", "README.md"} | members <= stored
    assert "config.json" not in stored

    cache = hub_env.use_fresh_cache(tmp_path / "fresh-cache")
    pulled = TumorClassifier.from_pretrained("org/tumor-ensemble")
    assert isinstance(pulled.model_, EnsembleForImageClassification) and len(pulled.model_.members) == 3
    assert pulled.model_folder_.is_relative_to(cache)
    downloaded = {p.relative_to(pulled.model_folder_).as_posix() for p in pulled.model_folder_.rglob("*") if p.is_file()}
    assert {"ensemble.json", "preprocessor_config.json"} | members <= downloaded
    gets = [path for method, path in hub_env.server.state.requests if method == "GET"]
    assert any(re.fullmatch(r"/org/tumor-ensemble/resolve/[^/]+/members/member-2/model\.safetensors", p) for p in gets)
    np.testing.assert_array_equal(pulled.predict_proba(test_images[0]), ensemble_classifier.predict_proba(test_images[0]))


def test_build_ensemble_never_writes_into_a_members_folder(member_dirs, tmp_path):
    """output_dir = a member's folder used to add ensemble.json and members/ beside the
    member's own config.json and weights: the member's folder then loaded as the ensemble."""
    import shutil

    member = shutil.copytree(member_dirs[0], tmp_path / "seed-0")
    before = sorted(p.name for p in member.iterdir())
    for target in (member, member / "ensemble"):
        with pytest.raises(TumorClassifierError, match=rf"output_dir {re.escape(str(target))} .*member {re.escape(str(member))}"):
            build_ensemble([member, member_dirs[1]], output_dir=target)
    assert sorted(p.name for p in member.iterdir()) == before


def test_an_ensemble_built_over_a_single_model_folder_leaves_no_stale_model(member_dirs, test_images, tmp_path):
    import shutil

    folder = shutil.copytree(member_dirs[2], tmp_path / "was-single")
    build_ensemble(member_dirs[:2], output_dir=folder)
    assert not (folder / "config.json").exists() and not (folder / "model.safetensors").exists()
    expected = TumorClassifier.from_pretrained(member_dirs[0]).predict_proba(test_images[0][:1])
    assert TumorClassifier.from_pretrained(folder).predict_proba(test_images[0][:1]).shape == expected.shape


def test_members_that_are_not_model_folders_are_named_for_what_they_are(member_dirs, ensemble_dir, tmp_path):
    with pytest.raises(TumorClassifierError, match=rf"{re.escape(str(tmp_path / 'nowhere'))} does not exist"):
        build_ensemble([member_dirs[0], tmp_path / "nowhere"])
    with pytest.raises(TumorClassifierError, match=rf"{re.escape(str(ensemble_dir))} is an ensemble itself.*model folders its members came from"):
        build_ensemble([member_dirs[0], ensemble_dir])


def test_an_ensemble_card_does_not_offer_plain_transformers_for_the_whole_folder(tmp_path):
    """The Hub offers "Use this model with transformers" from the card's library_name; an
    ensemble folder has no config.json, so that snippet fails. A single model keeps it."""
    from tumor_classifier.metrics import classification_metrics
    from tumor_classifier.reports import write_model_card

    validation = classification_metrics(np.array([0, 1]), np.array([[0.9, 0.1], [0.2, 0.8]]), ["notumor", "tumor"])
    single = {"validation": validation, "training": {"backbone": "convnext", "image_size": 64}}
    ensemble = dict(single, members=[{"seed": 0, "validation_accuracy": 1.0}, {"seed": 1, "validation_accuracy": 1.0}])
    assert "library_name: transformers\n" in write_model_card(tmp_path / "single", single, [], ["notumor", "tumor"]).read_text()
    card = write_model_card(tmp_path / "ensemble", ensemble, [], ["notumor", "tumor"]).read_text()
    assert "library_name: transformers" not in card and "library_name: tumor-classifier" in card
