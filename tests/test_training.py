"""train_hf.py end to end (2 steps, resume, hyperparameter search, 2 processes) and the losses."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from train_runs import REPO, tiny_run_args as _args  # also puts the repository on sys.path

import train_hf  # noqa: E402

from tumor_classifier import TumorClassifier  # noqa: E402
from tumor_classifier.losses import class_weights, make_loss_function  # noqa: E402

MODEL_FILES = {
    "model.safetensors",
    "config.json",
    "preprocessor_config.json",
    "metrics.json",
    "README.md",
    "loss_curve.png",
    "accuracy_curve.png",
    "confusion_matrix.png",
    "reliability.png",
}


@pytest.fixture(scope="module")
def two_step_run(tmp_path_factory, data_dir):
    output = tmp_path_factory.mktemp("train") / "model"
    result = train_hf.main(_args(data_dir, output, "--max_steps", "2"))
    return output, result


def test_two_step_run_writes_a_complete_model_folder(two_step_run):
    output, result = two_step_run
    assert MODEL_FILES <= {p.name for p in output.iterdir()}
    assert not list(output.glob("*.bin")) and not list(output.glob("*.pkl"))  # safetensors only
    metrics = json.loads((output / "metrics.json").read_text())
    for split in ("validation", "test", "test_without_near_duplicates"):
        m = metrics[split]
        assert 0.0 <= m["accuracy"] <= 1.0
        assert set(m["per_class"]) == {"glioma", "meningioma", "notumor", "pituitary"}
        assert np.asarray(m["confusion_matrix"]).sum() == m["n"]
    assert metrics["test"]["n"] == 12
    assert metrics["test_without_near_duplicates"]["n"] == metrics["duplicates"]["without_near_duplicate"]
    assert metrics["training"]["global_steps"] == 2
    assert metrics["calibration"]["temperature"] > 0
    assert metrics["training_duplicates_across_classes"] == []  # checked, and none in the shipped slices
    assert metrics["validation_without_near_duplicates"]["n"] == metrics["validation"]["n"]  # no copies in them either
    config = json.loads((output / "config.json").read_text())
    assert config["id2label"] == {"0": "glioma", "1": "meningioma", "2": "notumor", "3": "pituitary"}
    card = (output / "README.md").read_text()
    assert "pipeline_tag: image-classification" in card and "not a medical device" in card
    assert f"{100 * metrics['test']['accuracy']:.2f}%" in card
    assert result.metrics["test"]["accuracy"] == metrics["test"]["accuracy"]


def test_saved_model_loads_with_plain_transformers_and_gives_the_same_probabilities(two_step_run, test_images):
    from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline

    output, _ = two_step_run
    ours = TumorClassifier.from_pretrained(output)
    paths = test_images[0][:4]
    expected = ours.predict_proba(paths)
    prepared = [ours.preprocessor_.prepare(p).image.convert("RGB") for p in paths]
    processor = AutoImageProcessor.from_pretrained(output, backend="pil")
    model = AutoModelForImageClassification.from_pretrained(output).eval()
    with torch.no_grad():
        logits = model(**processor(images=prepared, return_tensors="pt")).logits
    np.testing.assert_allclose(torch.softmax(logits, -1).numpy(), expected, atol=1e-5)
    classify = pipeline("image-classification", model=model, image_processor=processor, top_k=None)
    for row, result in zip(expected, classify(prepared)):
        scores = {item["label"]: item["score"] for item in result}
        np.testing.assert_allclose([scores[c] for c in ours.classes_], row, atol=1e-5)


def test_resume_from_checkpoint_continues_the_step_count(two_step_run, data_dir, tmp_path):
    output, _ = two_step_run
    checkpoint = output / "checkpoint-2"
    assert (checkpoint / "trainer_state.json").is_file()
    resumed = train_hf.main(_args(data_dir, tmp_path / "resumed", "--max_steps", "3", "--resume_from_checkpoint", str(checkpoint)))
    assert resumed.metrics["training"]["global_steps"] == 3
    history = json.loads((tmp_path / "resumed" / "checkpoint-3" / "trainer_state.json").read_text())["log_history"]
    assert [e["step"] for e in history if "loss" in e] == [1, 2, 3]  # steps 1-2 came from the checkpoint



def test_saving_the_trained_model_shows_no_progress_bar(data_dir, tmp_path, capfd):
    """With --disable_tqdm true, transformers' "Writing model shards" bar still came out when
    the model was written; saving is as quiet as loading, and the bars are switched back on."""
    from transformers.utils import logging as transformers_logging

    output = tmp_path / "model"
    train_hf.main(_args(data_dir, output, "--max_steps", "1", "--save_strategy", "no", "--load_best_model_at_end", "false"))
    err = capfd.readouterr().err
    assert (output / "model.safetensors").is_file()
    assert "Writing model shards" not in err, err[-2000:]
    assert transformers_logging.is_progress_bar_enabled()

def test_hyperparameter_search_runs_trials_and_applies_the_best(data_dir, tmp_path):
    result = train_hf.main(
        _args(data_dir, tmp_path / "hpo", "--max_steps", "1", "--hp_search_trials", "2", "--save_strategy", "no", "--load_best_model_at_end", "false")
    )
    best = result.best_hyperparameters
    assert set(best) == {"learning_rate", "per_device_train_batch_size", "weight_decay", "dropout"}
    assert 3e-4 <= best["learning_rate"] <= 5e-3
    assert result.metrics["training"]["hyperparameter_search"] == best
    # The final run trained with the best values.
    used = json.loads((tmp_path / "hpo" / "train_config.json").read_text())
    assert used["training"]["learning_rate"] == best["learning_rate"]
    assert used["training"]["per_device_train_batch_size"] == best["per_device_train_batch_size"]
    assert used["model"]["dropout"] == best["dropout"]


def test_two_processes_with_torchrun(data_dir, tmp_path):
    output = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(REPO / "train_hf.py"),
        *_args(data_dir, output, "--max_steps", "2", "--ddp_backend", "gloo", "--save_strategy", "no", "--load_best_model_at_end", "false"),
    ]  # fmt: skip
    completed = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["training"]["world_size"] == 2
    assert metrics["training"]["global_steps"] == 2
    # Evaluation gathers both processes' shards: every test image is counted once.
    assert metrics["test"]["n"] == 12 and np.asarray(metrics["test"]["confusion_matrix"]).sum() == 12
    assert completed.stdout.count("model written to") == 1  # one line per run, not one per process


def test_push_to_hub_without_a_reachable_hub_fails_before_training(data_dir, tmp_path, monkeypatch):
    import socket

    from hub_server import point_hub_at

    from tumor_classifier import HubUploadError

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{probe.getsockname()[1]}"  # closed again: nothing listens there
    point_hub_at(monkeypatch, endpoint, tmp_path / "cache")
    output = tmp_path / "model"
    with pytest.raises(HubUploadError, match="nothing was written or uploaded"):
        train_hf.main(_args(data_dir, output, "--max_steps", "1", "--push_to_hub", "--hub_model_id", "org/tiny"))
    assert not output.exists()  # refused before the first step, not after the training


def test_focal_loss_reduces_to_cross_entropy_and_weights_apply():
    logits = torch.tensor([[2.0, 0.5, -1.0, 0.0], [0.1, 0.2, 0.3, 0.4]])
    labels = torch.tensor([0, 3])
    outputs = {"logits": logits}
    ce = make_loss_function("cross_entropy")(outputs, labels)
    focal0 = make_loss_function("focal", focal_gamma=0.0)(outputs, labels)
    focal2 = make_loss_function("focal", focal_gamma=2.0)(outputs, labels)
    torch.testing.assert_close(ce, focal0)
    assert focal2 < ce  # easy examples are down-weighted
    weights = class_weights(np.array([0, 0, 0, 1, 2, 3]), 4)
    assert weights[0] < weights[1] and torch.isclose(weights.mean(), torch.tensor(1.0))
    weighted = make_loss_function("weighted_cross_entropy", weights=weights)(outputs, labels)
    manual = torch.nn.functional.cross_entropy(logits, labels, weight=weights)
    torch.testing.assert_close(weighted, manual)


def test_train_hf_and_fit_share_one_copy_of_the_augmentation_defaults():
    from tumor_classifier.augmentation import AugmentationConfig
    from tumor_classifier.training_arguments import DataArguments

    assert DataArguments().augmentation() == AugmentationConfig()
    assert DataArguments(rotation=3.0).augmentation().rotation == 3.0


def test_the_recipe_builds_the_same_model_from_json_or_dict_overrides():
    from tumor_classifier.data import CLASS_NAMES
    from tumor_classifier.recipe import create_run_model, make_run_loss
    from tumor_classifier.training_arguments import ModelArguments

    overrides = {"hidden_sizes": [8, 16, 24, 32], "depths": [1, 1, 1, 1]}
    base = dict(backbone="convnext", from_scratch=True, image_size=32)
    as_json = create_run_model(ModelArguments(**base, config_overrides=json.dumps(overrides)), CLASS_NAMES)
    as_dict = create_run_model(ModelArguments(**base, config_overrides=overrides), CLASS_NAMES)
    assert as_json.config.hidden_sizes == as_dict.config.hidden_sizes == overrides["hidden_sizes"]
    assert create_run_model(ModelArguments(**base, config_overrides=overrides), CLASS_NAMES, dropout=0.3).config.drop_path_rate == 0.3
    # The class weights come from the labelled images only: "tumour, type unknown" (-1) is not a class.
    loss = make_run_loss(ModelArguments(loss="weighted_cross_entropy", label_smoothing=0.0), CLASS_NAMES, np.array([0, 0, 1, 2, 3, -1]))
    logits, labels = torch.tensor([[2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]), torch.tensor([0, 1])
    weights = class_weights(np.array([0, 0, 1, 2, 3]), len(CLASS_NAMES))
    assert weights[0] < weights[1]  # class 0 is twice as frequent
    expected = torch.nn.functional.cross_entropy(logits, labels, weight=weights)
    np.testing.assert_allclose(float(loss({"logits": logits}, labels)), float(expected), rtol=1e-6)
    assert not np.isclose(float(expected), float(torch.nn.functional.cross_entropy(logits, labels)))


def test_fit_and_train_hf_share_the_model_defaults():
    """One recipe: an estimator built with no arguments trains what a bare train_hf.py run trains."""
    from tumor_classifier import TumorClassifier
    from tumor_classifier.training_arguments import ModelArguments, MRITrainingArguments

    params, model_args = TumorClassifier().get_params(), ModelArguments()
    for name in ("backbone", "from_scratch", "checkpoint", "image_size", "dropout", "label_smoothing"):
        assert params[name] == getattr(model_args, name), name
    training_args = MRITrainingArguments(output_dir="unused")
    assert (params["learning_rate"], params["weight_decay"]) == (training_args.learning_rate, training_args.weight_decay)
    assert params["augment"] is True  # AugmentationConfig's defaults, as DataArguments take them


def test_a_bad_data_folder_ends_the_script_with_one_line_not_a_traceback(tmp_path, capsys):
    """The entry point turns the package's errors into one 'error:' line and exit status 1."""
    output = tmp_path / "model"
    status = train_hf.cli(["--data_dir", str(tmp_path / "no-such-folder"), "--output_dir", str(output)])
    err = capsys.readouterr().err
    assert status == 1
    assert err.startswith("train_hf.py: error: ") and "no-such-folder" in err and "is not a folder" in err
    assert "Traceback" not in err and err.count("\n") == 1
    assert not output.exists()



def _write_config(tmp_path, **config):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return str(path)


def test_a_json_config_takes_an_object_for_config_overrides(data_dir, tmp_path):
    """JSON is the natural way to write config_overrides in a JSON config: an object, not a quoted string."""
    from conftest import TINY_CONVNEXT

    args = _args(data_dir, tmp_path / "unused", "--max_steps", "1")
    config = _write_config(tmp_path, config_overrides=TINY_CONVNEXT, backbone="convnext", from_scratch=True)
    _, model_args, _ = train_hf.parse_arguments([config, *args[:args.index("--config_overrides")]])
    assert json.loads(model_args.config_overrides) == TINY_CONVNEXT


@pytest.mark.parametrize(
    "config, expected",
    [
        ({"epochs": 3}, "unknown key.*'epochs'"),
        ({"learning_rat": 0.01}, "unknown key.*'learning_rat'"),  # argparse would take it for learning_rate
        ({"num_train_epochs": [1, 2]}, "num_train_epochs"),
        ([1, 2], "a JSON object"),
    ],
)
def test_a_json_config_with_a_wrong_key_or_value_is_refused_by_name(tmp_path, config, expected):
    from tumor_classifier import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match=expected) as caught:
        train_hf.parse_arguments([_write_config(tmp_path, **config) if isinstance(config, dict) else _json_file(tmp_path, config)])
    assert "config.json" in str(caught.value) and "--help" in str(caught.value)


def _json_file(tmp_path, value):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(value))
    return str(path)


@pytest.mark.parametrize("text, expected", [(None, "no such file"), ('{"data_dir": "x",}', "not valid JSON")])
def test_an_unreadable_json_config_is_named(tmp_path, text, expected):
    from tumor_classifier import InvalidArgumentError

    path = tmp_path / "config.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(InvalidArgumentError, match=expected):
        train_hf.parse_arguments([str(path)])


def test_an_unknown_command_line_option_is_refused_by_name():
    from tumor_classifier import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match="unknown option.*--epochs 3"):
        train_hf.parse_arguments(["--epochs", "3"])


@pytest.mark.parametrize("overrides, expected", [("{bad", "not valid JSON"), ("[1, 2]", "a JSON object")])
def test_config_overrides_that_are_not_a_json_object_are_refused_by_name(overrides, expected):
    from tumor_classifier import InvalidArgumentError
    from tumor_classifier.data import CLASS_NAMES
    from tumor_classifier.recipe import create_run_model
    from tumor_classifier.training_arguments import ModelArguments

    with pytest.raises(InvalidArgumentError, match=f"config_overrides.*{expected}"):
        create_run_model(ModelArguments(backbone="convnext", from_scratch=True, image_size=32, config_overrides=overrides), CLASS_NAMES)


def test_resume_from_a_folder_that_is_no_checkpoint_is_refused_before_anything_is_written(data_dir, tmp_path):
    from tumor_classifier import InvalidArgumentError

    output = tmp_path / "model"
    for value, expected in ((str(tmp_path / "no-such-checkpoint"), "no-such-checkpoint.*not a checkpoint folder"),
                            ("true", "newest checkpoint.*has none")):
        with pytest.raises(InvalidArgumentError, match=expected):
            train_hf.main(_args(data_dir, output, "--max_steps", "1", "--resume_from_checkpoint", value))
        assert not output.exists()


def test_resume_true_continues_from_the_newest_checkpoint_in_the_output_folder(two_step_run, data_dir, tmp_path):
    import shutil

    output, _ = two_step_run
    shutil.copytree(output / "checkpoint-2", tmp_path / "run" / "checkpoint-2")
    resumed = train_hf.main(_args(data_dir, tmp_path / "run", "--max_steps", "3", "--resume_from_checkpoint", "true"))
    assert resumed.metrics["training"]["global_steps"] == 3
    history = json.loads((tmp_path / "run" / "checkpoint-3" / "trainer_state.json").read_text())["log_history"]
    assert [e["step"] for e in history if "loss" in e] == [1, 2, 3]


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--tumour_only_dirs", "no-such-tumour-folder"], "no-such-tumour-folder does not exist"),
        (["--label_audit", "no-such-audit.csv"], "No label audit file at no-such-audit.csv"),
        (["--config_overrides", "{bad"], "config_overrides.*not valid JSON"),
    ],
)
def test_a_bad_option_is_refused_before_the_images_are_prepared(data_dir, tmp_path, extra, expected):
    """The images take minutes to prepare; an option that cannot work says so first. A
    corrupt image in the data would stop the preparation: the error must be the option's."""
    import shutil

    from tumor_classifier import TumorClassifierError

    root = tmp_path / "data"
    shutil.copytree(data_dir, root)
    (root / "Training" / "glioma" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    args = _args(root, tmp_path / "model", "--max_steps", "1", "--pixel_cache_dir", "")
    if extra[0] == "--config_overrides":
        args = args[: args.index("--config_overrides")] + args[args.index("--config_overrides") + 2 :]
    with pytest.raises(TumorClassifierError, match=expected):
        train_hf.main([*args, *extra])


def test_the_same_seed_trains_the_same_model(data_dir, tmp_path):
    """--seed decides the from-scratch weights too: ensemble members differ by --seed alone,
    and a run can be repeated."""
    from safetensors.torch import load_file

    weights = []
    for name, torch_seed in (("first", 1), ("second", 2)):
        torch.manual_seed(torch_seed)  # whatever ran before in this process
        train_hf.main(_args(data_dir, tmp_path / name, "--max_steps", "1", "--eval_strategy", "no",
                            "--save_strategy", "no", "--load_best_model_at_end", "false", "--no_calibrate"))
        weights.append(load_file(tmp_path / name / "model.safetensors"))
    for key in weights[0]:
        torch.testing.assert_close(weights[0][key], weights[1][key], msg=key)


def test_fit_with_the_same_random_state_fits_the_same_model(train_images):
    from conftest import TINY_CONVNEXT

    paths, labels = train_images
    probabilities = []
    for torch_seed in (1, 2):
        torch.manual_seed(torch_seed)
        clf = TumorClassifier("convnext", from_scratch=True, image_size=32, epochs=1, batch_size=8, verbose=0,
                              random_state=3, config_overrides=TINY_CONVNEXT).fit(paths, labels)
        probabilities.append(clf.predict_proba(paths[:4]))
    np.testing.assert_allclose(probabilities[0], probabilities[1], atol=1e-6)


def test_training_curves_of_a_run_without_validation_warn_nothing_and_say_why_they_are_empty(tmp_path):
    import warnings

    from PIL import Image

    from tumor_classifier.plots import plot_training_curves

    history = [{"loss": 1.2, "epoch": 0.5}, {"loss": 0.9, "epoch": 1.0}]  # eval_strategy "no": no eval_* entries
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib's "No artists with labels found to put in legend"
        paths = plot_training_curves(history, tmp_path)
    assert [p.name for p in paths] == ["loss_curve.png", "accuracy_curve.png"]
    assert all(Image.open(p).size[0] > 100 for p in paths)


def test_validation_copies_of_training_images_are_left_out_of_the_fresh_validation_figures(tmp_path, data_dir):
    """Each shipped Training slice also saved at another size: carved per file, many
    validation images have their copy in training, and the fresh figures leave them out."""
    from PIL import Image

    from tumor_classifier.data import load_mri_dataset
    from tumor_classifier.duplicates import find_duplicates

    folder = tmp_path / "data"
    for path in sorted((data_dir / "Training").glob("*/*.jpg")):
        target = folder / "Training" / path.parent.name
        target.mkdir(parents=True, exist_ok=True)
        image = Image.open(path).convert("L")
        image.save(target / path.name)
        image.resize((200, 200)).save(target / f"{path.stem}-200.jpg", quality=92)
    for path in sorted((data_dir / "Testing").glob("*/*.jpg")):
        (folder / "Testing" / path.parent.name).mkdir(parents=True, exist_ok=True)
        Image.open(path).save(folder / "Testing" / path.parent.name / path.name)
    result = train_hf.main(_args(folder, tmp_path / "model", "--max_steps", "1", "--save_strategy", "no",
                                 "--load_best_model_at_end", "false", "--validation_size", "0.25"))
    splits = load_mri_dataset(folder, validation_size=0.25, seed=42)  # train_hf.py's carving (split_seed 42)
    fresh = find_duplicates(list(splits["train"]["path"]), list(splits["validation"]["path"])).clean_queries
    metrics = result.metrics
    assert 0 < len(fresh) < len(splits["validation"]) == metrics["validation"]["n"]
    assert metrics["validation_without_near_duplicates"]["n"] == len(fresh)
    card = (tmp_path / "model" / "README.md").read_text()
    assert f"| validation_without_near_duplicates | {len(fresh)} |" in card
    # Carved by group instead, no validation image has its copy in training.
    grouped = train_hf.main(_args(folder, tmp_path / "grouped", "--max_steps", "1", "--save_strategy", "no",
                                  "--load_best_model_at_end", "false", "--validation_size", "0.25", "--validation_by", "group"))
    assert grouped.metrics["validation_without_near_duplicates"]["n"] == grouped.metrics["validation"]["n"] > 0
