#!/usr/bin/env python
"""Train a brain-tumor MRI classifier with the Hugging Face Trainer.

Examples:
    python train_hf.py --data_dir ../shared/data/brain-tumor-mri --backbone convnext \
        --from_scratch --image_size 128 --num_train_epochs 40 --output_dir runs/convnext
    python train_hf.py configs/default_model.json          # the same, from a JSON file
    torchrun --nproc_per_node 2 train_hf.py ...              # distributed (gloo on CPU)

Every option of ``transformers.TrainingArguments`` works too (``--push_to_hub``,
``--hub_model_id``, ``--resume_from_checkpoint``, ``--bf16`` ...); ``--help`` lists all.
"""

import sys

from transformers import HfArgumentParser

from tumor_classifier.training import DataArguments, ModelArguments, MRITrainingArguments, run_training


def main(argv: list[str] | None = None):
    argv = sys.argv[1:] if argv is None else argv
    parser = HfArgumentParser((DataArguments, ModelArguments, MRITrainingArguments))
    if len(argv) == 1 and argv[0].endswith(".json"):
        data_args, model_args, training_args = parser.parse_json_file(argv[0])
    else:
        data_args, model_args, training_args = parser.parse_args_into_dataclasses(argv)
    result = run_training(data_args, model_args, training_args)
    test = result.metrics["test"]
    print(f"model written to {result.output_dir}: test accuracy {test['accuracy']:.4f}, macro F1 {test['f1_macro']:.4f}")
    return result


if __name__ == "__main__":
    main()
