#!/usr/bin/env python
"""Train a brain-tumor MRI classifier with the Hugging Face Trainer.

Examples:
    python train_hf.py --data_dir ../shared/data/brain-tumor-mri --backbone convnext \
        --from_scratch --image_size 128 --num_train_epochs 40 --output_dir runs/convnext
    python train_hf.py configs/default_model.json          # the same, from a JSON file
    python train_hf.py configs/default_model.json --num_train_epochs 5   # JSON plus overrides
    torchrun --nproc_per_node 2 train_hf.py ...              # distributed (gloo on CPU)
    python train_hf.py configs/default_model.json --write_pixel_pack pack.npz   # prepare once...
    python train_hf.py configs/default_model.json --pixel_pack pack.npz --bf16 true   # ...train elsewhere

Every option of ``transformers.TrainingArguments`` works too (``--push_to_hub``,
``--hub_model_id``, ``--resume_from_checkpoint``, ``--bf16`` ...); ``--help`` lists all.
"""

import json
import sys
from pathlib import Path

from transformers import HfArgumentParser

from tumor_classifier.exceptions import InvalidArgumentError, TumorClassifierError
from tumor_classifier.training import run_training
from tumor_classifier.training_arguments import DataArguments, ModelArguments, MRITrainingArguments


def _config_flags(path: str, parser: HfArgumentParser) -> list[str]:
    """A JSON config file as command-line flags, so that flags after it override it."""
    where = f"The config {path}"
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidArgumentError(f"{where}: no such file.") from None
    except (OSError, UnicodeDecodeError) as error:
        raise InvalidArgumentError(f"{where} cannot be read: {error}.") from None
    except json.JSONDecodeError as error:
        raise InvalidArgumentError(f"{where} is not valid JSON: {error}.") from None
    if not isinstance(config, dict):
        raise InvalidArgumentError(
            f"{where} holds a JSON {type(config).__name__}; it must hold a JSON object of option names "
            'and values, e.g. {"data_dir": "my-scans", "num_train_epochs": 5} (train_hf.py --help lists the options).'
        )
    # The keys are the options' names without "--" ("data_dir", "data-dir", "no_calibrate").
    actions = {option[2:]: action for action in parser._actions for option in action.option_strings if option.startswith("--")}
    unknown = sorted(key for key in config if key not in actions)
    if unknown:  # exact names only: argparse would take "learning_rat" for "learning_rate"
        raise InvalidArgumentError(
            f"{where} has the unknown key(s) {', '.join(map(repr, unknown))}; its keys are the option names "
            "without '--' (train_hf.py --help lists them)."
        )
    flags = []
    for key, value in config.items():
        if value is None:  # null means "the default"
            continue
        if actions[key].nargs == 0:  # a switch such as no_calibrate: true sets it, false leaves it off
            flags += [f"--{key}"] if value else []
            continue
        if isinstance(value, list) and actions[key].nargs not in ("+", "*"):
            raise InvalidArgumentError(f"{where}: {key!r} takes one value, not the list {value!r} (train_hf.py --help).")
        # An object is JSON text to the options that take one (config_overrides, lr_scheduler_kwargs ...).
        values = value if isinstance(value, list) else [value]
        flags += [f"--{key}", *(json.dumps(v) if isinstance(v, dict) else str(v) for v in values)]
    return flags


def parse_arguments(argv: list[str]) -> tuple[DataArguments, ModelArguments, MRITrainingArguments]:
    """The run's three argument dataclasses from flags, or a JSON config followed by flags.

    Raises:
        InvalidArgumentError: The config cannot be read or has an unknown key, or an
            option is unknown or given too many values.
    """
    parser = HfArgumentParser((DataArguments, ModelArguments, MRITrainingArguments), allow_abbrev=False)
    source = "the command line"
    if argv and argv[0].endswith(".json"):
        source = f"the config {argv[0]} or the command line"
        argv = _config_flags(argv[0], parser) + argv[1:]
    *parsed, remaining = parser.parse_args_into_dataclasses(argv, return_remaining_strings=True)
    if remaining:
        raise InvalidArgumentError(
            f"{source} has an unknown option or more values than an option takes: {' '.join(remaining)}; "
            "train_hf.py --help lists the options."
        )
    return tuple(parsed)


def main(argv: list[str] | None = None):
    argv = sys.argv[1:] if argv is None else argv
    data_args, model_args, training_args = parse_arguments(argv)
    result = run_training(data_args, model_args, training_args)
    if training_args.process_index != 0:  # under torchrun every process gets here; one line says it
        return result
    if "pixel_pack" in result.metrics:
        counts = ", ".join(f"{name} {count}" for name, count in result.metrics["pixel_pack"].items())
        print(f"pixel pack written to {result.output_dir}: {counts} images")
        return result
    summary = ", ".join(
        f"{split} accuracy {result.metrics[split]['accuracy']:.4f}, macro F1 {result.metrics[split]['f1_macro']:.4f}"
        for split in ("validation", "validation_without_near_duplicates", "test")
        if split in result.metrics
    )
    print(f"model written to {result.output_dir}: {summary}")
    return result


def cli(argv: list[str] | None = None) -> int:
    """The script's entry point: :func:`main`, with the package's errors (a missing folder, a
    corrupt image, a bad option value) as one ``train_hf.py: error:`` line on stderr and exit
    status 1 instead of a traceback. Argument parsing errors exit with 2, as argparse does."""
    try:
        main(argv)
    except TumorClassifierError as error:
        print(f"train_hf.py: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli())
