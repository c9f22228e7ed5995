"""The CNN + LSTM slice-sequence model: storage, padding, training through the Trainer, errors, predict_volume.

A tiny from-scratch ResNet from the registry is the backbone; the shipped model on real
built volumes is configs/train_sequence_model.py and benchmarks/sequence_model.py.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel

from tumor_classifier import TumorClassifier
from tumor_classifier.decoding import load_image
from tumor_classifier.exceptions import InvalidArgumentError, InvalidDatasetError, ModelLoadError
from tumor_classifier.models import create_model
from tumor_classifier.preprocessing import MRIPreprocessor
from tumor_classifier.sequence_data import TUMOUR_LABEL, SliceBank, VolumeDataset, VolumeRecipe, build_volumes, collate_volumes
from tumor_classifier.sequence_model import SliceSequenceConfig, SliceSequenceForVolumeClassification, load_sequence_model
from tumor_classifier.sequence_prediction import sequence_verdict
from tumor_classifier.sequence_training import compare_on_volumes, train_sequence_model

from conftest import CLASSES
from volume_files import phantom

TINY_RESNET = {"hidden_sizes": [8, 8, 8, 16], "depths": [1, 1, 1, 1], "embedding_size": 8}


def tiny_backbone(class_names=("notumor", "tumor")):
    return create_model("resnet", class_names=list(class_names), image_size=32, config_overrides=TINY_RESNET)


@pytest.fixture(scope="module")
def model(one_torch_thread):
    torch.manual_seed(0)
    return SliceSequenceForVolumeClassification.from_backbone(tiny_backbone(), lstm_hidden_size=8, projection_size=16).eval()


def volumes_and_mask():
    torch.manual_seed(1)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    return torch.rand(2, 5, 3, 32, 32), mask


def test_save_and_reload_give_equal_outputs_and_keep_the_config(model, tmp_path):
    pixels, mask = volumes_and_mask()
    before = model(pixel_values=pixels, attention_mask=mask)
    model.save_pretrained(tmp_path / "seq")
    loaded = load_sequence_model(tmp_path / "seq")
    after = loaded(pixel_values=pixels, attention_mask=mask)
    torch.testing.assert_close(after.logits, before.logits)
    torch.testing.assert_close(after.slice_logits, before.slice_logits)
    assert loaded.config.lstm_hidden_size == 8 and loaded.config.id2label == {0: "notumor", 1: "tumor"}
    assert loaded.config.embedding_size == 16 and not any(p.requires_grad for p in loaded.backbone.parameters())


def test_a_saved_folder_loads_with_the_auto_classes_in_a_fresh_interpreter(model, tmp_path):
    model.save_pretrained(tmp_path / "seq")
    pixels, mask = volumes_and_mask()
    torch.save((pixels, mask), tmp_path / "inputs.pt")
    expected = model(pixel_values=pixels, attention_mask=mask).logits
    code = (
        "import sys, torch, tumor_classifier\n"
        "tumor_classifier.SliceSequenceForVolumeClassification  # registers the Auto classes, as create_model does for EfficientNet\n"
        "from transformers import AutoConfig, AutoModel\n"
        f"folder = {str(tmp_path / 'seq')!r}\n"
        "assert type(AutoConfig.from_pretrained(folder)).__name__ == 'SliceSequenceConfig'\n"
        "model = AutoModel.from_pretrained(folder).eval()\n"
        f"pixels, mask = torch.load({str(tmp_path / 'inputs.pt')!r})\n"
        f"torch.save(model(pixel_values=pixels, attention_mask=mask).logits, {str(tmp_path / 'out.pt')!r})\n"
        "print(type(model).__name__)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "SliceSequenceForVolumeClassification"
    torch.testing.assert_close(torch.load(tmp_path / "out.pt"), expected)
    # And in this process, where the module is imported:
    assert isinstance(AutoConfig.from_pretrained(tmp_path / "seq"), SliceSequenceConfig)
    assert isinstance(AutoModel.from_pretrained(tmp_path / "seq"), SliceSequenceForVolumeClassification)


def test_with_a_backbone_source_only_the_head_is_saved_and_the_backbone_is_read_back(tmp_path, one_torch_thread):
    torch.manual_seed(2)
    backbone = tiny_backbone()
    backbone.save_pretrained(tmp_path / "backbone")
    model = SliceSequenceForVolumeClassification.from_backbone(backbone, backbone_source=tmp_path / "backbone", lstm_hidden_size=8).eval()
    model.save_pretrained(tmp_path / "seq")
    saved = load_file(str(tmp_path / "seq" / "model.safetensors"))
    assert saved and not any(key.startswith("backbone.") for key in saved)
    pixels, mask = volumes_and_mask()
    loaded = load_sequence_model(tmp_path / "seq")
    torch.testing.assert_close(loaded(pixel_values=pixels, attention_mask=mask).logits, model(pixel_values=pixels, attention_mask=mask).logits)
    torch.testing.assert_close(loaded.backbone.resnet.embedder.embedder.convolution.weight, backbone.resnet.embedder.embedder.convolution.weight)
    (tmp_path / "backbone" / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="no config.json and model.safetensors"):
        load_sequence_model(tmp_path / "seq")


def test_the_logits_variant_reads_the_image_head_and_saves_neither_it_nor_the_backbone(tmp_path, one_torch_thread):
    torch.manual_seed(3)
    backbone = tiny_backbone(CLASSES).eval()
    backbone.save_pretrained(tmp_path / "backbone")
    model = SliceSequenceForVolumeClassification.from_backbone(
        backbone, backbone_source=tmp_path / "backbone", slice_features="logits", lstm_hidden_size=8
    ).eval()
    pixels, mask = volumes_and_mask()
    # The LSTM's input is the 2-D classifier's clamped log-probabilities of each slice.
    embeddings = model.embed(pixels[0])
    torch.testing.assert_close(
        model.image_head(embeddings).log_softmax(-1).clamp(min=-14), torch.log_softmax(backbone(pixel_values=pixels[0]).logits, -1).clamp(min=-14)
    )
    assert model.projection.in_features == 4 and not any(p.requires_grad for p in model.image_head.parameters())
    model.save_pretrained(tmp_path / "seq")
    saved = load_file(str(tmp_path / "seq" / "model.safetensors"))
    assert not any(key.startswith(("backbone.", "image_head.")) for key in saved)
    loaded = load_sequence_model(tmp_path / "seq")
    torch.testing.assert_close(loaded(pixel_values=pixels, attention_mask=mask).logits, model(pixel_values=pixels, attention_mask=mask).logits)
    with pytest.raises(ModelLoadError, match="slice_features must be one of"):
        SliceSequenceForVolumeClassification.from_backbone(backbone, slice_features="pixels")


def test_padding_and_packing_leave_each_volume_unchanged(model):
    pixels, mask = volumes_and_mask()
    batched = model(pixel_values=pixels, attention_mask=mask)
    alone = [model(pixel_values=pixels[i : i + 1, : int(mask[i].sum())]) for i in range(2)]
    for i, single in enumerate(alone):
        torch.testing.assert_close(batched.logits[i], single.logits[0])
        torch.testing.assert_close(batched.slice_logits[i, : int(mask[i].sum())], single.slice_logits[0])
    assert torch.all(batched.slice_logits[0, 3:] == 0)  # padding rows
    # What the padding holds does not matter either.
    noisy = pixels.clone()
    noisy[0, 3:] = torch.rand_like(noisy[0, 3:])
    torch.testing.assert_close(model(pixel_values=noisy, attention_mask=mask).logits, batched.logits)


def synthetic_bank(width: int, seed: int) -> SliceBank:
    """Slices whose embeddings carry their class in a few dimensions, plus noise;
    the 2-D classifier's probabilities say the same with some slices wrong."""
    rng = np.random.default_rng(seed)
    classes = np.repeat([0, 1, 2], [120, 40, 40])  # notumor, glioma, pituitary
    embeddings = rng.normal(size=(classes.size, width)).astype(np.float32)
    embeddings[classes > 0, :4] += 2.5
    tumour_p = np.clip(np.where(classes > 0, 0.8, 0.2) + rng.normal(scale=0.25, size=classes.size), 0.01, 0.99)
    proba = np.stack([1 - tumour_p, tumour_p / 2, tumour_p / 2], axis=1).astype(np.float32)
    return SliceBank(embeddings, classes, ["notumor", "glioma", "pituitary"], proba, ["notumor", "glioma", "pituitary"])


def test_the_trainer_learns_built_volumes(tmp_path, one_torch_thread):
    torch.manual_seed(0)
    model = SliceSequenceForVolumeClassification.from_backbone(tiny_backbone(), lstm_hidden_size=16, projection_size=16, dropout=0.0)
    recipe = VolumeRecipe(min_slices=6, max_slices=14, min_run=2, max_run=4)
    train_bank, eval_bank = synthetic_bank(16, 0), synthetic_bank(16, 1)
    train = VolumeDataset(train_bank, build_volumes(train_bank, 256, seed=0, recipe=recipe))
    held_out = build_volumes(eval_bank, 96, seed=1, recipe=recipe)
    trainer = train_sequence_model(model, train, VolumeDataset(eval_bank, held_out), tmp_path / "run", epochs=8, learning_rate=5e-3)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses[-1] < 0.5 * losses[0]
    assert trainer.evaluate()["eval_accuracy"] >= 0.9
    comparison = compare_on_volumes(model, eval_bank, held_out)
    assert comparison["sequence_model"]["accuracy"] >= 0.9 and comparison["volumes"]["count"] == 96
    assert 0 <= comparison["slice_aggregation"]["accuracy"] <= 1
    # The per-slice head finds the tumour slices of the held-out volumes.
    batch = collate_volumes([VolumeDataset(eval_bank, held_out)[i] for i in range(len(held_out))])
    with torch.inference_mode():
        slice_logits = model(slice_embeddings=batch["slice_embeddings"], attention_mask=batch["attention_mask"]).slice_logits
    real = batch["attention_mask"]
    assert (slice_logits.argmax(-1)[real] == batch["slice_labels"][real]).float().mean() >= 0.85


def test_built_volumes_follow_the_recipe():
    bank = synthetic_bank(4, 0)
    recipe = VolumeRecipe(min_slices=5, max_slices=9, min_run=3, max_run=4)
    volumes = build_volumes(bank, 20, seed=3, recipe=recipe)
    assert [v.label for v in volumes] == [TUMOUR_LABEL, 0] * 10
    # One tumour index for the labels, the volume logits (the config's labels) and the per-slice logits.
    assert SliceSequenceConfig().id2label[TUMOUR_LABEL] == "tumor" and TUMOUR_LABEL == 1
    for volume in volumes:
        assert 5 <= len(volume.indices) <= 9 and len(set(volume.indices.tolist())) == len(volume.indices)
        assert np.array_equal(volume.slice_labels, bank.tumour[volume.indices].astype(int))
        run = np.flatnonzero(volume.slice_labels)
        assert (run.size == 0) == (volume.label == 0)
        if run.size:  # one run, consecutive, of one tumour class
            assert 3 <= run.size <= 4 and np.all(np.diff(run) == 1) and len(set(bank.classes[volume.indices[run]])) == 1
    again = build_volumes(bank, 20, seed=3, recipe=recipe)
    assert all(np.array_equal(a.indices, b.indices) for a, b in zip(volumes, again))


def test_bad_input_gets_a_clear_error(model, tmp_path):
    pixels, mask = volumes_and_mask()
    embeddings = torch.zeros(2, 5, model.config.embedding_size)
    with pytest.raises(InvalidArgumentError, match="either pixel_values"):
        model(pixel_values=pixels, slice_embeddings=embeddings)
    with pytest.raises(InvalidArgumentError, match="either pixel_values"):
        model()
    with pytest.raises(InvalidArgumentError, match=r"\(B, S, C, H, W\)"):
        model(pixel_values=pixels[0])
    with pytest.raises(InvalidArgumentError, match=r"must be \(B, S, 16\)"):
        model(slice_embeddings=torch.zeros(2, 5, 7))
    with pytest.raises(InvalidArgumentError, match="at least one slice"):
        model(slice_embeddings=embeddings, attention_mask=torch.tensor([[1, 1, 0, 0, 0], [0, 0, 0, 0, 0]]))
    with pytest.raises(InvalidArgumentError, match="right padding"):
        model(slice_embeddings=embeddings, attention_mask=torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]]))
    with pytest.raises(InvalidArgumentError, match=r"attention_mask must be \(B, S\)"):
        model(slice_embeddings=embeddings, attention_mask=mask[:, :3])
    unnamed = tiny_backbone()
    del unnamed.config.backbone_name
    with pytest.raises(InvalidArgumentError, match="no backbone_name"):
        SliceSequenceForVolumeClassification.from_backbone(unnamed)
    tiny_backbone().save_pretrained(tmp_path / "image-model")
    with pytest.raises(ModelLoadError, match="not a 'slice_sequence_lstm'"):
        load_sequence_model(tmp_path / "image-model")
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_sequence_model(tmp_path / "missing")
    with pytest.raises(InvalidDatasetError, match="notumor slices"):
        build_volumes(synthetic_bank(4, 0), 2, seed=0, recipe=VolumeRecipe(min_slices=10, max_slices=500))
    with pytest.raises(InvalidArgumentError, match="volume recipe"):
        build_volumes(synthetic_bank(4, 0), 2, seed=0, recipe=VolumeRecipe(min_slices=4, max_slices=8, min_run=5, max_run=6))


def rows_through(*modules):
    """Counts the images each module's forward pass sees (real passes, counted by hooks)."""
    seen = [0] * len(modules)

    def count(index):
        def hook(_module, args, kwargs):
            seen[index] += len(kwargs["pixel_values"] if "pixel_values" in kwargs else args[0])

        return hook

    handles = [m.register_forward_pre_hook(count(i), with_kwargs=True) for i, m in enumerate(modules)]
    return seen, handles


@pytest.mark.parametrize("same_weights", [True, False])
def test_predict_volume_lets_the_sequence_model_decide(tmp_path, one_torch_thread, same_weights):
    from tumor_classifier.sequence_prediction import shares_backbone

    torch.manual_seed(0)
    folder = tmp_path / "clf"
    tiny_backbone(CLASSES).save_pretrained(folder)
    MRIPreprocessor(size=32).save_pretrained(folder)
    clf = TumorClassifier.from_pretrained(folder)
    sequence = SliceSequenceForVolumeClassification.from_backbone(clf.model_, backbone_source=folder, lstm_hidden_size=8).eval()
    if not same_weights:  # another fine-tune of the same backbone: legal, but it cannot share the classifier's pass
        with torch.no_grad():
            sequence.backbone.resnet.embedder.embedder.convolution.weight.mul_(1.5)
    assert shares_backbone(clf, sequence) == same_weights
    volume = phantom()
    plain = clf.predict_volume(volume, explain=False)
    seen, handles = rows_through(clf.model_, sequence.backbone)
    try:
        result = clf.predict_volume(volume, explain=False, sequence_model=sequence)
    finally:
        for handle in handles:
            handle.remove()
    classified = int(plain.classified.sum())
    # One backbone pass per slice when the weights are the classifier's, two otherwise.
    assert seen == ([0, classified] if same_weights else [classified, classified])
    direct = sequence_verdict(sequence, [plain.volume.slices[i] for i in np.flatnonzero(plain.classified)], clf.preprocessor_)
    assert result.tumour_probability == pytest.approx(direct.tumour_probability)
    assert result.tumour == (direct.tumour_probability >= 0.5)
    assert (result.model_label == "notumor") == (not result.tumour)
    assert result.notes[-1].startswith("Verdict by the slice-sequence model")
    np.testing.assert_array_equal(result.slice_probabilities, plain.slice_probabilities)
    assert direct.slice_tumour_probability.shape == (classified,)
    from tumor_classifier.sequence_prediction import apply_sequence_model

    with pytest.raises(InvalidArgumentError, match="one row per classified slice"):
        apply_sequence_model(sequence, plain, clf.preprocessor_, embeddings=np.zeros((classified + 1, sequence.config.embedding_size), np.float32))
    clf.test_time_augmentation = True  # mirror images: the classifier's pass is no longer the backbone's
    assert not shares_backbone(clf, sequence)


def test_kaggle_banks_keep_validation_slices_apart_from_training_near_duplicates(data_dir, tmp_path, one_torch_thread):
    from tumor_classifier.duplicates import find_duplicates
    from tumor_classifier.sequence_data import kaggle_slice_banks

    torch.manual_seed(0)
    backbone = tiny_backbone(CLASSES)
    model = SliceSequenceForVolumeClassification.from_backbone(backbone, lstm_hidden_size=8).eval()
    head = backbone.get_submodule("classifier.1")
    preprocessor = MRIPreprocessor(size=32)
    banks, info = kaggle_slice_banks(data_dir, model, preprocessor, head=head, proba_classes=list(CLASSES), cache_dir=tmp_path)
    train = banks["fine_tuning"]
    # 32 Training slices: 4 carved off as validation (as the backbone's run did), 28 fine-tuned on.
    assert len(train.paths) == sum(info["fine_tuning_slices"].values()) == 28 and info["held_out_slices"] == 16
    assert train.embeddings.shape == (28, model.config.embedding_size) and train.slice_proba.shape == (28, 4)
    # No held-out slice kept has a near duplicate among the fine-tuning slices (groups are
    # transitive, so a slice chained to them through another held-out slice goes too),
    # and the two held-out banks share no near-duplicate group.
    every = sorted(str(p) for p in data_dir.glob("*/*/*.jpg"))
    held_out = sorted(set(every) - set(train.paths))
    kept = banks["held_out_train"].paths + banks["validation"].paths
    assert len(held_out) == 16 and set(kept) <= set(held_out) and len(kept) == info["held_out_without_near_duplicates"]
    report = find_duplicates(train.paths, held_out)
    assert not {held_out[i] for i in report.near_duplicate_queries} & set(kept)
    across = find_duplicates(banks["held_out_train"].paths, banks["validation"].paths)
    assert banks["validation"].paths and banks["held_out_train"].paths and not across.near_duplicate_queries
    # The embeddings are the backbone's: one slice again by hand, and the cache gives the same banks.
    pixels = torch.from_numpy(np.array(preprocessor.prepare_array(train.paths[0])[None]))
    with torch.inference_mode():
        torch.testing.assert_close(torch.from_numpy(train.embeddings[:1]), model.embed(preprocessor.normalize(pixels)), rtol=1e-4, atol=1e-5)
    again = kaggle_slice_banks(data_dir, model, preprocessor, head=head, proba_classes=list(CLASSES), cache_dir=tmp_path)
    np.testing.assert_array_equal(again[0]["fine_tuning"].embeddings, train.embeddings)


def test_the_shipped_head_is_small_reads_the_shipped_backbone_and_tells_a_run_of_tumour_slices(data_dir, one_torch_thread):
    from tumor_classifier.classifier_storage import DEFAULT_MODEL_DIR
    from tumor_classifier.sequence_model import DEFAULT_SEQUENCE_MODEL_DIR

    assert (DEFAULT_SEQUENCE_MODEL_DIR / "model.safetensors").stat().st_size < 2 * 1024**2
    model = load_sequence_model()
    assert model.config.backbone_source == "default" and model.config.slice_features == "logits"
    from tumor_classifier.sequence_prediction import shares_backbone

    assert shares_backbone(TumorClassifier.from_pretrained(), model)  # predict_volume runs the backbone once per slice
    shipped = load_file(str(DEFAULT_MODEL_DIR / "model.safetensors"))
    torch.testing.assert_close(model.backbone.efficientnet._conv_stem.weight, shipped["efficientnet._conv_stem.weight"])
    torch.testing.assert_close(model.image_head.weight, shipped["efficientnet._fc.weight"])
    # Real slices in order: 11 notumor slices, then the same with 4 glioma slices in the middle.
    healthy = [np.asarray(load_image(p)) for p in sorted(data_dir.glob("*/notumor/*.jpg"))]
    glioma = [np.asarray(load_image(p)) for p in sorted(data_dir.glob("Training/glioma/*.jpg"))[:4]]
    preprocessor = MRIPreprocessor.from_pretrained(DEFAULT_MODEL_DIR)
    without = sequence_verdict(model, healthy, preprocessor)
    with_run = sequence_verdict(model, healthy[:4] + glioma + healthy[4:], preprocessor)
    assert without.tumour_probability < 0.5 <= with_run.tumour_probability, (without, with_run)
    assert with_run.slice_tumour_probability[4:8].min() > with_run.slice_tumour_probability[:4].max()


def test_the_backbone_preprocessor_comes_from_the_backbone_source_folder_else_the_fallback(tmp_path, one_torch_thread):
    from tumor_classifier.sequence_prediction import backbone_preprocessor

    torch.manual_seed(4)
    backbone = tiny_backbone()
    backbone.save_pretrained(tmp_path / "backbone")
    sourced = SliceSequenceForVolumeClassification.from_backbone(backbone, backbone_source=tmp_path / "backbone", lstm_hidden_size=8)
    fallback = MRIPreprocessor(size=48)
    # No preprocessor_config.json in the folder (yet): the fallback, and without one a clear error.
    assert backbone_preprocessor(sourced, fallback) is fallback
    with pytest.raises(InvalidArgumentError, match="pass the preprocessor"):
        backbone_preprocessor(sourced)
    MRIPreprocessor(size=32, crop_to_head=False).save_pretrained(tmp_path / "backbone")
    assert backbone_preprocessor(sourced, fallback) == MRIPreprocessor(size=32, crop_to_head=False)
    unsourced = SliceSequenceForVolumeClassification.from_backbone(backbone, lstm_hidden_size=8)
    assert backbone_preprocessor(unsourced, fallback) is fallback


def test_a_folder_of_another_model_type_is_refused_before_its_weights_are_read(tmp_path, one_torch_thread):
    import json

    torch.manual_seed(5)
    backbone = tiny_backbone()
    backbone.save_pretrained(tmp_path / "backbone")
    SliceSequenceForVolumeClassification.from_backbone(backbone, backbone_source=tmp_path / "backbone", lstm_hidden_size=8).save_pretrained(tmp_path / "seq")
    config_file = tmp_path / "backbone" / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "model_type": "convnext"}))
    with pytest.raises(ModelLoadError, match="holds a 'convnext' model, not a 'resnet' model like this sequence model's backbone"):
        load_sequence_model(tmp_path / "seq")
    (tmp_path / "seq" / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="config.json is not valid JSON"):
        load_sequence_model(tmp_path / "seq")


def test_embedding_passes_refuse_non_finite_output_and_hold_the_models_lock(one_torch_thread):
    import threading

    from tumor_classifier.exceptions import NonFiniteOutputError
    from tumor_classifier.inference import model_passes
    from tumor_classifier.sequence_data import embed_pixels

    torch.manual_seed(6)
    backbone = tiny_backbone(CLASSES).eval()
    model = SliceSequenceForVolumeClassification.from_backbone(backbone, lstm_hidden_size=8).eval()
    preprocessor = MRIPreprocessor(size=32)
    pixels = np.random.default_rng(0).integers(0, 256, size=(5, 32, 32), dtype=np.uint8)
    head = backbone.get_submodule("classifier.1")
    embeddings, proba = embed_pixels(model, preprocessor, pixels, head=head, batch_size=2)
    assert embeddings.shape == (5, model.config.embedding_size) and np.allclose(proba.sum(axis=1), 1, atol=1e-5)
    # Another thread's pass holds the model: this one waits for it.
    finished = threading.Event()
    with model_passes(model):
        worker = threading.Thread(target=lambda: (embed_pixels(model, preprocessor, pixels), finished.set()))
        worker.start()
        assert not finished.wait(0.5)
    worker.join(timeout=60)
    assert finished.is_set()
    # A NaN in the head's output, then in the backbone's, is the package's error naming the slice.
    with torch.no_grad():
        head.bias[0] = float("nan")
    with pytest.raises(NonFiniteOutputError, match="NaN or infinite logits for image 0"):
        embed_pixels(model, preprocessor, pixels, head=head)
    with torch.no_grad():
        model.backbone.resnet.embedder.embedder.convolution.weight.fill_(float("nan"))
    with pytest.raises(NonFiniteOutputError, match="NaN or infinite embeddings for image 0"):
        embed_pixels(model, preprocessor, pixels)


def test_loading_the_shipped_sequence_model_prints_no_progress_bar(capfd):
    """transformers drew a "Loading weights" bar on stderr for a 0.4 MB head, as the
    classifier's own loading (model_folder.quiet_weights) does not."""
    load_sequence_model()
    assert "Loading weights" not in capfd.readouterr().err
