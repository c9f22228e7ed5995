"""The backbone registry and model construction."""

import pytest
import torch

from tumor_classifier import ModelLoadError, UnknownBackboneError, create_model, list_backbones
from tumor_classifier.models import get_backbone

TINY = {
    "convnext": {"hidden_sizes": [8, 16, 16, 16], "depths": [1, 1, 1, 1]},
    "vit": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64},
    "resnet": {"hidden_sizes": [8, 16, 16, 16], "embedding_size": 8, "depths": [1, 1, 1, 1]},
}


def test_registry_lists_vit_convnext_and_resnet():
    names = [b.name for b in list_backbones()]
    assert names == ["convnext", "vit", "resnet"]
    assert get_backbone("ViT").checkpoint == "google/vit-base-patch16-224-in21k"
    assert get_backbone("convnext").checkpoint == "facebook/convnext-tiny-224"


def test_unknown_backbone_lists_the_known_ones():
    with pytest.raises(UnknownBackboneError, match="available: convnext, vit, resnet") as info:
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
