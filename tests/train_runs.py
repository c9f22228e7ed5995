"""Helpers shared by the train_hf.py tests (a helper module, not a test module: test
modules import from here, never from each other)."""

import json
import sys
from pathlib import Path

from conftest import TINY_CONVNEXT

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # train_hf.py lives at the repository root


def tiny_run_args(data_dir, output_dir, *extra) -> list[str]:
    """train_hf.py arguments of a tiny from-scratch ConvNeXt run at 64 px, evaluated and saved every step."""
    return [
        "--data_dir", str(data_dir),
        "--backbone", "convnext",
        "--from_scratch",
        "--image_size", "64",
        "--config_overrides", json.dumps(TINY_CONVNEXT),
        "--per_device_train_batch_size", "8",
        "--per_device_eval_batch_size", "16",
        "--output_dir", str(output_dir),
        "--eval_strategy", "steps", "--eval_steps", "1",
        "--save_strategy", "steps", "--save_steps", "1",
        "--logging_strategy", "steps", "--logging_steps", "1",
        "--disable_tqdm", "true",
        "--seed", "0",
        *extra,
    ]  # fmt: skip
