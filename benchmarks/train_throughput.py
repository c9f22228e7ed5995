"""Training throughput: our Trainer pipeline against a minimal hand-written loop.

Same model (the default ConvNeXt preset), same prepared images, same batch size, same
batch augmentation and loss; the Trainer path is `build_trainer` exactly as train_hf.py
uses it. Rounds alternate between the two so a shared machine slows both alike; the
first steps of each round (warm-up, set-up) are not timed.

    python benchmarks/train_throughput.py [--data ../shared/data/brain-tumor-mri] [--steps 12] [--rounds 2]

Goal: the Trainer pipeline reaches at least 0.8 of the hand loop's images/s.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import TrainerCallback

from tumor_classifier.models import create_model
from tumor_classifier.preprocessing import AugmentationConfig, BatchAugmenter, MRIPreprocessor
from tumor_classifier.losses import make_loss_function
from tumor_classifier.pixels import PixelDataset, collate_pixels, pixels_to_values, prepare_pixels
from tumor_classifier.training import build_trainer
from tumor_classifier.training_arguments import MRITrainingArguments

WARMUP = 2


def _load_pixels(data: str, preprocessor: MRIPreprocessor, minimum: int) -> tuple[np.ndarray, np.ndarray]:
    from tumor_classifier import load_mri_dataset

    split = load_mri_dataset(data)["train"]
    pixels, labels = prepare_pixels(split, preprocessor)
    repeats = int(np.ceil(minimum / len(labels)))
    return np.tile(pixels, (repeats, 1, 1))[:minimum], np.tile(labels, repeats)[:minimum]


def hand_loop(pixels, labels, preprocessor, image_size, batch_size, steps) -> float:
    """Images/s of a plain PyTorch loop over the same pieces."""
    torch.manual_seed(0)
    model = create_model("convnext", image_size=image_size)
    # The Trainer's default optimizer on torch >= 2.8 is the fused AdamW: use the same.
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05, fused=True)
    loss_function = make_loss_function(label_smoothing=0.1)
    loader = torch.utils.data.DataLoader(
        PixelDataset(pixels, labels),
        batch_size=batch_size,
        shuffle=True,
        collate_fn=collate_pixels,
        drop_last=True,
    )
    augmenter = BatchAugmenter(AugmentationConfig(), seed=0)
    model.train()
    started = None
    for step, batch in enumerate(loader):
        if step == WARMUP:
            started = time.perf_counter()
        outputs = model(pixel_values=pixels_to_values(batch["pixels"], preprocessor, augmenter))
        loss = loss_function(outputs, batch["labels"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # the Trainer clips too
        optimizer.step()
        optimizer.zero_grad()
        if step + 1 == steps:
            break
    return (steps - WARMUP) * batch_size / (time.perf_counter() - started)


class _StepClock(TrainerCallback):
    def __init__(self):
        self.times: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter())


def trainer_loop(pixels, labels, preprocessor, image_size, batch_size, steps) -> float:
    """Images/s of the Trainer pipeline (train_hf.py's build_trainer)."""
    torch.manual_seed(0)
    model = create_model("convnext", image_size=image_size)
    with tempfile.TemporaryDirectory() as output:
        args = MRITrainingArguments(
            output_dir=output,
            max_steps=steps,
            per_device_train_batch_size=batch_size,
            eval_strategy="no",
            save_strategy="no",
            logging_strategy="no",
            load_best_model_at_end=False,
            disable_tqdm=True,
            seed=0,
        )
        trainer = build_trainer(
            model, preprocessor, PixelDataset(pixels, labels), None, args,
            loss_function=make_loss_function(label_smoothing=0.1),
        )  # fmt: skip
        clock = _StepClock()
        trainer.add_callback(clock)
        trainer.train()
    # Steps WARMUP..steps-1 end at times[WARMUP-1 .. steps-1].
    return (steps - WARMUP) * batch_size / (clock.times[-1] - clock.times[WARMUP - 1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(Path(__file__).parents[1] / "tests" / "data" / "brain-tumor-mri"))
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    preprocessor = MRIPreprocessor(size=args.image_size)
    pixels, labels = _load_pixels(args.data, preprocessor, args.batch_size * (args.steps + 1))
    results: dict[str, list[float]] = {"hand loop": [], "Trainer pipeline": []}
    for round_index in range(args.rounds):
        results["hand loop"].append(hand_loop(pixels, labels, preprocessor, args.image_size, args.batch_size, args.steps))
        results["Trainer pipeline"].append(trainer_loop(pixels, labels, preprocessor, args.image_size, args.batch_size, args.steps))
        print(f"round {round_index + 1}: " + ", ".join(f"{k} {v[-1]:.1f} img/s" for k, v in results.items()), flush=True)
    hand = statistics.median(results["hand loop"])
    trainer = statistics.median(results["Trainer pipeline"])
    print(f"\nConvNeXt preset at {args.image_size} px, batch {args.batch_size}, {args.steps - WARMUP} timed steps x {args.rounds} rounds, {torch.get_num_threads()} threads")
    print(f"hand loop        {hand:7.1f} img/s")
    print(f"Trainer pipeline {trainer:7.1f} img/s")
    print(f"ratio            {trainer / hand:7.2f} (goal >= 0.8)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
