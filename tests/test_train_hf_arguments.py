"""train_hf.py's TrainingArguments combinations that transformers refuses (a save strategy
that does not match the evaluation one while the best checkpoint is kept, zero logging
steps ...): one ``train_hf.py: error:`` line that says what was given and what works,
before any image is read."""

import pytest

from train_runs import REPO  # noqa: F401  (puts the repository on sys.path)

import train_hf  # noqa: E402


def _error_line(capsys, *flags) -> str:
    assert train_hf.cli(["--data_dir", "no-such-data", *flags]) == 1
    err = capsys.readouterr().err
    assert err.startswith("train_hf.py: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--eval_strategy", "steps", "--save_strategy", "no"], ["'steps'", "'no'", "--save_strategy steps", "--load_best_model_at_end false"]),
        (["--eval_strategy", "no"], ["'no'", "'epoch'", "--eval_strategy epoch", "--load_best_model_at_end false"]),
        (["--eval_strategy", "epoch", "--save_strategy", "steps"], ["'epoch'", "'steps'", "--save_strategy epoch", "--eval_strategy steps"]),
    ],
)
def test_mismatched_eval_and_save_strategies_are_one_line(capsys, flags, expected):
    err = _error_line(capsys, *flags)
    assert "--eval_strategy" in err and "--save_strategy" in err and "best" in err
    for text in expected:
        assert text in err, err


def test_save_steps_that_are_no_multiple_of_eval_steps_are_one_line(capsys):
    err = _error_line(capsys, "--eval_strategy", "steps", "--eval_steps", "2", "--save_strategy", "steps", "--save_steps", "3")
    assert "--save_steps 3" in err and "--eval_steps 2" in err and "multiple" in err and "--load_best_model_at_end false" in err, err


def test_the_same_strategies_without_the_best_checkpoint_are_accepted():
    *_, training_args = train_hf.parse_arguments(["--eval_strategy", "steps", "--save_strategy", "no", "--load_best_model_at_end", "false"])
    assert training_args.save_strategy == "no"


def test_another_refused_training_argument_is_one_line_too(capsys):
    err = _error_line(capsys, "--logging_strategy", "steps", "--logging_steps", "0")
    assert "--logging_steps" in err, err
