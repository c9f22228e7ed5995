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

from tumor_classifier.exceptions import TumorClassifierError
from tumor_classifier.training import run_training
from tumor_classifier.training_arguments import DataArguments, ModelArguments, MRITrainingArguments


def main(argv: list[str] | None = None):
    argv = sys.argv[1:] if argv is None else argv
    parser = HfArgumentParser((DataArguments, ModelArguments, MRITrainingArguments))
    if argv and argv[0].endswith(".json"):
        # A JSON config, optionally followed by command-line overrides.
        config = json.loads(Path(argv[0]).read_text())
        flags = []
        for key, value in config.items():
            if value is None:  # null means "the default"
                continue
            values = value if isinstance(value, list) else [value]
            flags += [f"--{key}", *map(str, values)]
        argv = flags + argv[1:]
    data_args, model_args, training_args = parser.parse_args_into_dataclasses(argv)
    result = run_training(data_args, model_args, training_args)
    if "pixel_pack" in result.metrics:
        counts = ", ".join(f"{name} {count}" for name, count in result.metrics["pixel_pack"].items())
        print(f"pixel pack written to {result.output_dir}: {counts} images")
        return result
    summary = ", ".join(
        f"{split} accuracy {result.metrics[split]['accuracy']:.4f}, macro F1 {result.metrics[split]['f1_macro']:.4f}"
        for split in ("validation", "test")
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
