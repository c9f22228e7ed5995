"""Trains the CNN + LSTM slice-sequence model on volumes built from real Kaggle slices.

    python configs/train_sequence_model.py configs/sequence_model.json
    python configs/train_sequence_model.py --output_dir runs/sequence --train_volumes 500   # flags work too

The backbone is the shipped default model (EfficientNet-Lite0, 160 px), frozen; its slice
embeddings are computed once and cached (``$TUMOR_CLASSIFIER_CACHE``; 20 minutes on two
busy cores the first time). The LSTM reads each slice's class log-probabilities from the
shipped classifier's head (``slice_features="logits"``). Validation volumes are built
from the Kaggle slices the backbone was *not* fine-tuned on and that have no near
duplicate among those it was; training volumes from the slices it was fine-tuned on
(``train_bank``; :mod:`tumor_classifier.sequence_data` says why). The
folder written holds ``config.json``, the LSTM head's ``model.safetensors`` (the backbone
is read from the shipped model on load) and ``metrics.json`` with the comparison against
the slice-aggregation verdict.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from transformers import HfArgumentParser


@dataclass
class SequenceRunArguments:
    data_dir: str = field(default="../shared/data/brain-tumor-mri", metadata={"help": "Kaggle-layout folder (Training/, Testing/)."})
    output_dir: str = field(default="runs/sequence-model", metadata={"help": "Where the model and metrics.json go."})
    train_bank: str = field(default="fine_tuning", metadata={"help": "Slices of the training volumes: held_out_train or fine_tuning."})
    slice_features: str = field(default="logits", metadata={"help": "What the LSTM reads of a slice: logits or embedding."})
    train_volumes: int = field(default=3000, metadata={"help": "Volumes built from the training bank."})
    validation_volumes: int = field(default=400, metadata={"help": "Volumes built from held-out slices without near duplicates in the fine-tuning slices."})
    min_slices: int = field(default=10, metadata={"help": "Fewest slices per built volume."})
    max_slices: int = field(default=24, metadata={"help": "Most slices per built volume."})
    min_run: int = field(default=3, metadata={"help": "Shortest run of tumour slices in a tumour volume."})
    max_run: int = field(default=8, metadata={"help": "Longest run of tumour slices in a tumour volume."})
    lstm_hidden_size: int = field(default=64, metadata={"help": "Hidden width of each LSTM direction."})
    projection_size: int = field(default=128, metadata={"help": "Width the slice embedding is projected to."})
    dropout: float = field(default=0.2, metadata={"help": "Dropout on the projection and before the heads."})
    slice_loss_weight: float = field(default=0.5, metadata={"help": "Weight of the per-slice loss."})
    epochs: float = field(default=8, metadata={"help": "Training epochs."})
    learning_rate: float = field(default=2e-3, metadata={"help": "AdamW learning rate."})
    batch_size: int = field(default=32, metadata={"help": "Volumes per batch."})
    seed: int = field(default=0, metadata={"help": "Seed of the volumes and of training."})


def main(argv: list[str] | None = None) -> dict:
    import torch

    from tumor_classifier import TumorClassifier
    from tumor_classifier.models import get_backbone
    from tumor_classifier.pixels import DEFAULT_CACHE
    from tumor_classifier.sequence_data import VolumeDataset, VolumeRecipe, build_volumes, kaggle_slice_banks
    from tumor_classifier.sequence_model import DEFAULT_SOURCE, SliceSequenceForVolumeClassification
    from tumor_classifier.sequence_training import compare_on_volumes, train_sequence_model

    argv = sys.argv[1:] if argv is None else argv
    parser = HfArgumentParser(SequenceRunArguments)
    if len(argv) == 1 and argv[0].endswith(".json"):
        (args,) = parser.parse_json_file(argv[0])
    else:
        (args,) = parser.parse_args_into_dataclasses(argv)
    torch.manual_seed(args.seed)
    clf = TumorClassifier.from_pretrained()
    model = SliceSequenceForVolumeClassification.from_backbone(
        clf.model_, backbone_source=DEFAULT_SOURCE, slice_features=args.slice_features, lstm_hidden_size=args.lstm_hidden_size,
        projection_size=args.projection_size, dropout=args.dropout, slice_loss_weight=args.slice_loss_weight,
    )
    head = clf.model_.get_submodule(get_backbone(clf.model_.config.backbone_name).head_layer)
    started = time.perf_counter()
    banks, info = kaggle_slice_banks(
        args.data_dir, model, clf.preprocessor_, head=head, proba_classes=list(clf.classes_), cache_dir=DEFAULT_CACHE, seed=args.seed
    )
    train_bank, validation_bank = banks[args.train_bank], banks["validation"]
    info["bank_seconds"] = round(time.perf_counter() - started, 1)
    recipe = VolumeRecipe(args.min_slices, args.max_slices, args.min_run, args.max_run)
    train_volumes = build_volumes(train_bank, args.train_volumes, seed=args.seed, recipe=recipe)
    validation_volumes = build_volumes(validation_bank, args.validation_volumes, seed=args.seed + 1, recipe=recipe)
    started = time.perf_counter()
    trainer = train_sequence_model(
        model, VolumeDataset(train_bank, train_volumes), VolumeDataset(validation_bank, validation_volumes), args.output_dir,
        epochs=args.epochs, learning_rate=args.learning_rate, batch_size=args.batch_size, seed=args.seed,
    )
    info["train_seconds"] = round(time.perf_counter() - started, 1)
    comparison = compare_on_volumes(model, validation_bank, validation_volumes)
    output = Path(args.output_dir)
    model.save_pretrained(output)
    report = {"arguments": asdict(args), "data": info, "validation_volumes": comparison, "log_history": trainer.state.log_history}
    (output / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({"data": info, "validation_volumes": comparison}, indent=2))
    return report


if __name__ == "__main__":
    main()
