"""Shared by the training experiments in configs/ (not part of the package): train_hf.py
with each training batch changed before the batch augmenter sees it.

    train_with_batch_change(change, argv)

``change(pixels, labels)`` takes uint8 (n, H, W) pixels and int labels of one training
batch and returns both (changed or not); evaluation batches are left alone.
"""

import sys
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train_hf  # noqa: E402
from tumor_classifier import mri_trainer  # noqa: E402

BatchChange = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def train_with_batch_change(change: BatchChange, argv: list[str]) -> None:
    """Runs ``train_hf.main(argv)`` with ``MRITrainer`` passing each training batch through ``change``."""
    prepare = mri_trainer.MRITrainer._prepare_inputs

    def with_change(self, inputs):
        if self.model.training and "pixels" in inputs and "labels" in inputs:
            pixels, labels = change(inputs["pixels"], inputs["labels"])
            inputs = dict(inputs, pixels=pixels, labels=labels)
        return prepare(self, inputs)

    mri_trainer.MRITrainer._prepare_inputs = with_change
    train_hf.main(argv)
