"""Training away from the images (pixel packs), augmentation where the batch lives, and
turning trained folders into one calibrated ensemble - the path the shipped model took."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from train_runs import REPO, tiny_run_args as _args  # also puts the repository on sys.path

import train_hf  # noqa: E402
from tumor_classifier import CLASS_NAMES, TumorClassifier, TumorClassifierError, find_duplicates
from tumor_classifier.data import image_sources, load_mri_dataset
from tumor_classifier.preprocessing import MRIPreprocessor
from tumor_classifier.pixels import PixelDataset, collate_pixels, prepare_pixels, read_pixel_pack, write_pixel_pack
from tumor_classifier.training import TimeLimitCallback, build_trainer, make_ensemble
from tumor_classifier.training_arguments import MRITrainingArguments


@pytest.fixture(scope="module")
def packs(tmp_path_factory, data_dir):
    folder = tmp_path_factory.mktemp("packs")
    lossless, lossy = folder / "png.npz", folder / "jpeg.npz"
    train_hf.main(_args(data_dir, folder / "unused", "--write_pixel_pack", str(lossless), "--pixel_cache_dir", ""))
    train_hf.main(_args(data_dir, folder / "unused", "--write_pixel_pack", str(lossy), "--pixel_pack_jpeg_quality", "95", "--pixel_cache_dir", ""))
    return lossless, lossy


def test_pack_holds_the_prepared_splits_and_the_duplicate_check(packs, data_dir):
    lossless, lossy = packs
    pack = read_pixel_pack(lossless)
    data = load_mri_dataset(data_dir)  # the same carving train_hf.py uses by default
    preprocessor = MRIPreprocessor(size=64)
    assert pack.preprocessor == preprocessor and pack.class_names == list(CLASS_NAMES)
    for name in ("train", "validation", "test"):
        pixels, labels = prepare_pixels(data[name], preprocessor, cache_dir=None)
        np.testing.assert_array_equal(pack.arrays[name][0], pixels)  # PNG is lossless
        np.testing.assert_array_equal(pack.arrays[name][1], labels)
    duplicates = find_duplicates(image_sources(data["train"]) + image_sources(data["validation"]), image_sources(data["test"]))
    assert list(pack.test_clean) == duplicates.clean_queries
    assert pack.duplicates == duplicates.summary()

    jpeg = read_pixel_pack(lossy)
    assert jpeg.jpeg_quality == 95 and pack.jpeg_quality is None
    error = np.abs(jpeg.arrays["train"][0].astype(int) - pack.arrays["train"][0].astype(int)).mean()
    assert 0 < error < 2.0  # lossy, by less than two grey levels on average


def test_training_from_a_pack_reads_no_image(packs, tmp_path):
    lossless, _ = packs
    output = tmp_path / "model"
    # A data_dir that does not exist: every pixel must come from the pack.
    result = train_hf.main(_args(tmp_path / "no-such-folder", output, "--max_steps", "1", "--pixel_pack", str(lossless),
                                 "--save_strategy", "no", "--load_best_model_at_end", "false"))  # fmt: skip
    metrics = json.loads((output / "metrics.json").read_text())
    pack = read_pixel_pack(lossless)
    assert metrics["test"]["n"] == len(pack.arrays["test"][1])
    assert metrics["test_without_near_duplicates"]["n"] == len(pack.test_clean) == metrics["duplicates"]["without_near_duplicate"]
    assert metrics["training"]["data"] == str(lossless)
    assert result.metrics["training"]["global_steps"] == 1
    assert (output / "log_history.json").is_file()
    assert TumorClassifier.from_pretrained(output).predict_proba(np.zeros((64, 64), np.uint8)).shape == (1, 4)


def test_a_pack_without_its_test_split_trains_until_the_time_limit_and_writes_its_card(packs, tmp_path):
    """The GPU path: Testing left out of the pack (to travel light), a wall-clock limit
    that ends training early; the run still calibrates, saves and writes its card."""
    lossless, _ = packs
    pack = read_pixel_pack(lossless)
    del pack.arrays["test"]
    pack.test_clean = None
    light = write_pixel_pack(tmp_path / "no-test.npz", pack)
    output = tmp_path / "model"
    result = train_hf.main(_args(tmp_path / "no-such-folder", output, "--num_train_epochs", "50", "--max_train_minutes", "0.0001",
                                 "--pixel_pack", str(light), "--save_strategy", "no", "--load_best_model_at_end", "false"))  # fmt: skip
    assert result.metrics["training"]["global_steps"] == 1  # stopped after its first step, not after 50 epochs
    assert "test" not in result.metrics and result.metrics["calibration"]["temperature"] > 0
    card = (output / "README.md").read_text()
    assert "Per class on the validation split" in card and (output / "confusion_matrix.png").is_file()
    with pytest.raises(TumorClassifierError, match="max_train_minutes must be positive"):
        TimeLimitCallback(0)


def test_a_pack_made_with_other_settings_is_refused(packs, tmp_path):
    lossless, _ = packs
    args = _args(tmp_path, tmp_path / "model", "--max_steps", "1", "--pixel_pack", str(lossless))
    args[args.index("--image_size") + 1] = "96"
    with pytest.raises(TumorClassifierError, match="prepared with .* this run asks for"):
        train_hf.main(args)
    with pytest.raises(TumorClassifierError, match="not a pixel pack"):
        np.savez(tmp_path / "other.npz", x=np.zeros(3))
        train_hf.main(_args(tmp_path, tmp_path / "model", "--max_steps", "1", "--pixel_pack", str(tmp_path / "other.npz")))


def _tiny_training_step_setup(tmp_path, **trainer_options):
    """A tiny ConvNeXt, four labelled 32 px images, their batch, and a Trainer over them whose
    model records (pixel_values, logits) of every forward pass in the returned list."""
    from tumor_classifier.losses import make_loss_function
    from tumor_classifier.models import create_model

    torch.manual_seed(0)
    preprocessor = MRIPreprocessor(size=32)
    pixels = np.random.default_rng(0).integers(0, 256, (4, 32, 32), dtype=np.uint8)
    labels = np.array([0, 1, 2, 3])
    model = create_model("convnext", from_scratch=True, image_size=32, config_overrides={"hidden_sizes": [8, 16, 24, 32], "depths": [1, 1, 1, 1]})
    args = MRITrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, eval_strategy="no", save_strategy="no",
                                load_best_model_at_end=False, per_device_train_batch_size=4, per_device_eval_batch_size=4,
                                learning_rate=0.0)  # fmt: skip
    trainer = build_trainer(model, preprocessor, PixelDataset(pixels, labels), None, args,
                            loss_function=make_loss_function("cross_entropy"), **trainer_options)  # fmt: skip
    seen = []
    model.register_forward_hook(lambda module, args_, kwargs, output: seen.append((kwargs["pixel_values"], output.logits)), with_kwargs=True)
    batch = collate_pixels([{"pixels": torch.from_numpy(p), "labels": torch.tensor(y)} for p, y in zip(pixels, labels)])
    return trainer, model, preprocessor, pixels, labels, batch, seen


def test_batches_are_augmented_while_training_only(tmp_path):
    """What the model receives: augmented pixels in a training step, the plain ones in prediction."""
    trainer, model, preprocessor, pixels, labels, batch, seen = _tiny_training_step_setup(tmp_path)
    assert batch["pixels"].dtype == torch.uint8  # what travels to the device
    plain = preprocessor.normalize(torch.from_numpy(pixels))
    model.train()
    trainer.training_step(model, batch)
    assert seen[-1][0].shape == plain.shape and not torch.allclose(seen[-1][0], plain)
    model.eval()
    trainer.predict(PixelDataset(pixels, labels))
    torch.testing.assert_close(seen[-1][0], plain)


@pytest.fixture(scope="module")
def members(tmp_path_factory, data_dir):
    folder = tmp_path_factory.mktemp("members")
    for seed in (0, 1):
        train_hf.main(_args(data_dir, folder / f"seed{seed}", "--max_steps", "2", "--seed", str(seed),
                            "--save_strategy", "no", "--load_best_model_at_end", "false"))  # fmt: skip
    return [folder / "seed0", folder / "seed1"]


def test_make_ensemble_writes_a_calibrated_folder_that_loads_and_reports(members, data_dir, tmp_path):
    output = tmp_path / "ensemble"
    result = make_ensemble(members, output, data_dir=str(data_dir), pixel_cache_dir=None)
    manifest = json.loads((output / "ensemble.json").read_text())
    metrics = json.loads((output / "metrics.json").read_text())
    assert manifest["temperature"] == pytest.approx(metrics["calibration"]["temperature"]) and manifest["temperature"] > 0
    assert [m["seed"] for m in metrics["members"]] == [0, 1]
    for name in manifest["members"]:
        assert {"config.json", "model.safetensors", "train_config.json"} <= {p.name for p in (output / "members" / name).iterdir()}
    assert metrics["test"]["n"] == 12 and metrics["test_without_near_duplicates"]["n"] == metrics["duplicates"]["without_near_duplicate"]
    card = (output / "README.md").read_text()
    assert "ensemble of 2" in card and "not a medical device" in card and "| 1 | 1 |" in card

    # The reported test figures are those of the folder as loaded by the estimator.
    clf = TumorClassifier.from_pretrained(output)
    data = load_mri_dataset(data_dir)
    proba = clf.predict_proba(image_sources(data["test"]))
    labels = np.asarray(data["test"]["label"])
    assert np.mean(proba.argmax(1) == labels) == pytest.approx(result.metrics["test"]["accuracy"])
    [explanation] = clf.explain(image_sources(data["test"])[0], method="gradcam")
    assert explanation.attribution.max() <= 1.0


def test_members_validated_on_different_splits_are_refused(members, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "metrics.json"):
        (other / name).write_bytes((members[1] / name).read_bytes())
    config = json.loads((members[1] / "train_config.json").read_text())
    config["data"]["split_seed"] = 7
    (other / "train_config.json").write_text(json.dumps(config))
    with pytest.raises(TumorClassifierError, match="different splits"):
        make_ensemble([members[0], other], tmp_path / "ensemble")
    with pytest.raises(TumorClassifierError, match="no train_config.json"):
        make_ensemble([members[0], tmp_path], tmp_path / "ensemble")


def test_an_ensemble_whose_data_cannot_be_read_writes_no_folder(members, tmp_path):
    # A half-written folder (members, temperature 1, no metrics) would load as an uncalibrated model.
    output = tmp_path / "ensemble"
    with pytest.raises(TumorClassifierError, match="not a folder"):
        make_ensemble(members, output, data_dir=str(tmp_path / "no-such-data"), pixel_cache_dir=None)
    assert not output.exists()


def test_a_recorded_data_folder_not_found_from_here_names_its_record_and_the_way_out(members, tmp_path, monkeypatch):
    # train_hf.py records --data_dir as given: a relative folder is relative to where it ran.
    member = tmp_path / "member"
    member.mkdir()
    for source in members[0].iterdir():
        if source.is_file():
            (member / source.name).write_bytes(source.read_bytes())
    config = json.loads((member / "train_config.json").read_text())
    config["data"]["data_dir"] = "../scans/brain-tumor-mri"
    (member / "train_config.json").write_text(json.dumps(config))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TumorClassifierError) as raised:
        make_ensemble([member], tmp_path / "ensemble", pixel_cache_dir=None)
    message = str(raised.value)
    assert "../scans/brain-tumor-mri" in message and str(member / "train_config.json") in message
    assert "--data" in message and "data_dir=" in message
    assert not (tmp_path / "ensemble").exists()


def test_ensemble_command_prints_the_calibration_and_figures(members, data_dir, tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "tumor_classifier.cli", "ensemble", *map(str, members), "--out", str(tmp_path / "e"), "--data", str(data_dir)],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "ensemble of 2 written to" in completed.stdout and "test_without_near_duplicates" in completed.stdout
    assert (Path(tmp_path) / "e" / "ensemble.json").is_file()


def test_consistency_loss_is_jensen_shannon_between_two_views():
    from tumor_classifier.losses import consistency_loss

    same = torch.tensor([[2.0, -1.0, 0.5]])
    assert float(consistency_loss(same, same)) == pytest.approx(0.0, abs=1e-7)
    certain_a, certain_b = torch.tensor([[50.0, 0.0]]), torch.tensor([[0.0, 50.0]])
    assert float(consistency_loss(certain_a, certain_b)) == pytest.approx(np.log(2.0), rel=1e-5)  # its bound
    # p = (0.5, 0.5), q = (1, 0): m = (0.75, 0.25), JS = (KL(p|m) + KL(q|m)) / 2 = 0.215762 by hand.
    half, one = torch.tensor([[0.0, 0.0]]), torch.tensor([[50.0, 0.0]])
    assert float(consistency_loss(half, one)) == pytest.approx(0.215762, abs=1e-5)
    assert float(consistency_loss(one, half)) == pytest.approx(float(consistency_loss(half, one)))  # symmetric


def test_training_with_consistency_sees_two_augmented_views_and_adds_their_divergence(tmp_path):
    """One real training step: the model gets rows i and n + i, two augmentations of image i,
    and the loss is cross-entropy over both views plus weight x JS between them."""
    from tumor_classifier.losses import consistency_loss

    trainer, model, preprocessor, pixels, labels, batch, seen = _tiny_training_step_setup(tmp_path, consistency_weight=2.0)
    model.train()
    loss = trainer.training_step(model, batch)
    (values, logits), = seen
    assert values.shape[0] == 8  # two views of each of the four images
    assert not torch.allclose(values[:4], values[4:])  # drawn independently
    expected = torch.nn.functional.cross_entropy(logits.float(), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])) + 2.0 * consistency_loss(logits[:4], logits[4:])
    expected = expected.detach()
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    assert float(consistency_loss(logits[:4], logits[4:]).detach()) > 0
    # Evaluation and prediction see each image once, unaugmented.
    model.eval()
    assert trainer.predict(PixelDataset(pixels, labels)).predictions.shape == (4, 4)
    assert seen[-1][0].shape[0] == 4
    with pytest.raises(TumorClassifierError, match="consistency_weight must be 0"):
        build_trainer(model, preprocessor, PixelDataset(pixels, labels), None, trainer.args, consistency_weight=-1.0)



def test_the_trainer_trains_channels_last_and_hands_back_the_default_layout(tmp_path):
    """Channels-last weights make the CPU step fast; gradients in the weights' own layout are what DDP's
    buckets need; the trained model comes back in the default layout (a reload gives the same bits)."""
    from transformers import TrainerCallback

    trainer, model, preprocessor, pixels, labels, batch, seen = _tiny_training_step_setup(tmp_path)
    seen_in_training = []

    class Look(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
            channels_last = all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)
            grads_in_layout = all(p.grad.stride() == p.stride() for p in model.parameters() if p.grad is not None)
            seen_in_training.append((channels_last and not all(w.is_contiguous() for w in weights), grads_in_layout))

    trainer.add_callback(Look())
    trainer.args.max_steps = 1
    trainer.train()
    assert seen_in_training == [(True, True)]
    assert all(p.is_contiguous() for p in model.parameters())
