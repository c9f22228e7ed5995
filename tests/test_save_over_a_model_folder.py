"""save_pretrained into a folder that already holds another model: the companions this
package wrote for that model (train_hf.py's train_config.json, log_history.json, card plots,
an ONNX graph ...) go with it, so nothing describes or stands in for a model that is no
longer there; files the package did not write stay. Saved back into its own folder, a
model keeps them all."""

import pytest

from train_runs import tiny_run_args  # also puts the repository on sys.path

import train_hf  # noqa: E402

from tumor_classifier import TumorClassifier, TumorClassifierError  # noqa: E402

RUN_COMPANIONS = {"train_config.json", "log_history.json", "metrics.json", "loss_curve.png", "accuracy_curve.png",
                  "confusion_matrix.png", "reliability.png"}  # fmt: skip


@pytest.fixture
def trained_folder(data_dir, tmp_path):
    output = tmp_path / "run"
    train_hf.main(tiny_run_args(data_dir, output, "--max_steps", "1", "--pixel_cache_dir", "",
                                "--save_strategy", "no", "--load_best_model_at_end", "false"))  # fmt: skip
    assert RUN_COMPANIONS <= {path.name for path in output.iterdir()}
    (output / "notes.txt").write_text("the user's own file")
    (output / "scan.png").write_bytes(b"the user's own picture")
    return output


def test_a_model_saved_over_a_trained_folder_leaves_none_of_the_old_models_companions(trained_folder, tiny_model_dir, tmp_path):
    TumorClassifier.from_pretrained(tiny_model_dir).save_pretrained(trained_folder)
    left = {path.name for path in trained_folder.iterdir()}
    assert not left & RUN_COMPANIONS, left & RUN_COMPANIONS
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md", "notes.txt", "scan.png"} <= left
    assert (trained_folder / "notes.txt").read_text() == "the user's own file"
    # make_ensemble reads a member's train_config.json: none is left to describe another model's training.
    from tumor_classifier.training import make_ensemble

    with pytest.raises(TumorClassifierError, match="has no train_config.json"):
        make_ensemble([trained_folder, trained_folder], tmp_path / "ensemble", pixel_cache_dir=None)


def test_a_fitted_model_saved_over_a_trained_folder_gets_its_own_metrics_only(trained_folder, fitted_classifier):
    fitted_classifier.save_pretrained(trained_folder)
    left = {path.name for path in trained_folder.iterdir()}
    assert "train_config.json" not in left and "log_history.json" not in left and "loss_curve.png" not in left
    assert (trained_folder / "metrics.json").is_file() and "TumorClassifier.fit" in (trained_folder / "README.md").read_text()


def test_a_model_saved_back_into_its_own_folder_keeps_its_companions(trained_folder):
    before = {path.name: path.read_bytes() for path in trained_folder.iterdir() if path.is_file() and path.name in RUN_COMPANIONS}
    TumorClassifier.from_pretrained(trained_folder).save_pretrained(trained_folder)
    assert {path.name: path.read_bytes() for path in trained_folder.iterdir() if path.name in RUN_COMPANIONS} == before
