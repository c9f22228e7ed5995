"""train_hf.py's model config overrides: a value the backbone's config cannot take is one
``train_hf.py: error:`` line naming the attribute, the value and what is accepted, from a
JSON config or the command line, before any image is prepared."""

import json

import pytest

from train_runs import tiny_run_args  # also puts the repository on sys.path

import train_hf  # noqa: E402


def _refusal(capsys, argv) -> str:
    assert train_hf.cli(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("train_hf.py: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def _without_overrides(args: list[str]) -> list[str]:
    at = args.index("--config_overrides")
    return args[:at] + args[at + 2:]


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"depths": 1}, ["'depths'", "1", "list[int]"]),
        ({"hidden_sizes": "abc"}, ["'hidden_sizes'", "'abc'", "list[int]"]),
        ({"hidden_sizes": [16.5, 32, 48, 64]}, ["'hidden_sizes'", "16.5", "list[int]"]),
        ({"layer_norm_eps": "small"}, ["'layer_norm_eps'", "'small'", "float"]),
    ],
)
def test_a_wrongly_typed_override_on_the_command_line_is_one_error_line(data_dir, tmp_path, capsys, overrides, expected):
    args = _without_overrides(tiny_run_args(data_dir, tmp_path / "model", "--max_steps", "1", "--pixel_cache_dir", ""))
    err = _refusal(capsys, [*args, "--config_overrides", json.dumps(overrides)])
    assert "config_overrides" in err and "ConvNextConfig" in err
    for text in expected:
        assert text in err, err
    assert not (tmp_path / "model").exists()


def test_a_wrongly_typed_override_in_a_json_config_is_one_error_line(data_dir, tmp_path, capsys):
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"backbone": "convnext", "from_scratch": True, "config_overrides": {"depths": [1, "two", 1, 1]}}))
    args = _without_overrides(tiny_run_args(data_dir, tmp_path / "model", "--max_steps", "1", "--pixel_cache_dir", ""))
    err = _refusal(capsys, [str(config), *args])
    assert "'depths'" in err and "[1, 'two', 1, 1]" in err and "list[int]" in err


@pytest.mark.parametrize("overrides", [{"hidden_sizes": [16, 32]}, {"hidden_sizes": [-1, 32, 48, 64]}])
def test_overrides_of_the_right_type_that_build_no_model_are_one_error_line(data_dir, tmp_path, capsys, overrides):
    """Two stage widths for four stages, a negative width: transformers fails deep in the model's constructor."""
    args = _without_overrides(tiny_run_args(data_dir, tmp_path / "model", "--max_steps", "1", "--pixel_cache_dir", ""))
    err = _refusal(capsys, [*args, "--config_overrides", json.dumps(overrides)])
    assert "config_overrides" in err and json.dumps(overrides) in err and "convnext" in err
