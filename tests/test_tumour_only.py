"""Training with "tumour, type unknown" images (Br35H): the partial-label loss, the split
by near-duplicate group, and train_hf.py end to end with a tumour-only folder."""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY_CONVNEXT
from tumor_classifier.data import ANY_TUMOR, fingerprint, group_split, load_tumour_only_images, near_duplicate_groups
from tumor_classifier.exceptions import InvalidDatasetError, TumorClassifierError
from tumor_classifier.losses import compute_eval_metrics, make_loss_function, tumor_columns_of

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import train_hf  # noqa: E402

TUMOR_COLUMNS = [0, 1, 3]  # glioma, meningioma, pituitary; notumor is column 2


def _logits(rows):
    return {"logits": torch.tensor(rows, dtype=torch.float32)}


def test_partial_label_loss_by_hand():
    loss = make_loss_function(tumor_columns=TUMOR_COLUMNS)
    # Uniform probabilities: the tumour classes together hold 3/4.
    assert loss(_logits([[0.0, 0.0, 0.0, 0.0]]), torch.tensor([ANY_TUMOR])).item() == pytest.approx(-math.log(0.75))
    # Softmax of [ln 1, ln 2, ln 5, ln 2]: p = (.1, .2, .5, .2); tumour mass 0.5.
    row = [math.log(1), math.log(2), math.log(5), math.log(2)]
    assert loss(_logits([row]), torch.tensor([ANY_TUMOR])).item() == pytest.approx(-math.log(0.5), abs=1e-6)
    # The type does not matter: all mass on glioma or on pituitary costs the same (near 0).
    assert loss(_logits([[20.0, 0, 0, 0]]), torch.tensor([ANY_TUMOR])).item() == pytest.approx(0, abs=1e-6)
    assert loss(_logits([[0, 0, 0, 20.0]]), torch.tensor([ANY_TUMOR])).item() == pytest.approx(0, abs=1e-6)
    # A mixed batch: the mean of each image's own term.
    mixed = loss(_logits([row, row]), torch.tensor([ANY_TUMOR, 2]))
    assert mixed.item() == pytest.approx((-math.log(0.5) - math.log(0.5)) / 2, abs=1e-6)
    mixed = loss(_logits([row, row]), torch.tensor([ANY_TUMOR, 1]))
    assert mixed.item() == pytest.approx((-math.log(0.5) - math.log(0.2)) / 2, abs=1e-6)


def test_partial_label_loss_trains_the_tumour_mass_up_and_needs_the_columns():
    logits = torch.zeros(1, 4, requires_grad=True)
    make_loss_function(tumor_columns=TUMOR_COLUMNS)({"logits": logits}, torch.tensor([ANY_TUMOR])).backward()
    assert logits.grad[0, 2] > 0 and (logits.grad[0, TUMOR_COLUMNS] < 0).all()  # descent lowers notumor
    with pytest.raises(TumorClassifierError, match="tumor_columns"):
        make_loss_function()(_logits([[0.0] * 4]), torch.tensor([ANY_TUMOR]))
    assert tumor_columns_of(["glioma", "meningioma", "notumor", "pituitary"]) == TUMOR_COLUMNS
    assert tumor_columns_of(["notumor", "tumor"]) == [1]


def test_labelled_batches_lose_what_they_lost_before():
    row = torch.randn(5, 4)
    labels = torch.tensor([0, 1, 2, 3, 1])
    expected = torch.nn.functional.cross_entropy(row, labels, label_smoothing=0.1)
    got = make_loss_function(label_smoothing=0.1, tumor_columns=TUMOR_COLUMNS)({"logits": row}, labels)
    torch.testing.assert_close(got, expected)


def test_validation_metrics_report_tumour_only_sensitivity():
    from transformers.trainer_utils import EvalPrediction

    logits = np.array([[5, 0, 0, 0], [0, 0, 5, 0], [0, 0, 0, 5], [0, 0, 5, 0], [5, 0, 0, 0]], dtype=float)
    labels = np.array([0, 2, ANY_TUMOR, ANY_TUMOR, ANY_TUMOR])
    metrics = compute_eval_metrics(EvalPrediction(predictions=logits, label_ids=labels))
    assert metrics["accuracy"] == 1.0 and metrics["tumour_only_sensitivity"] == pytest.approx(2 / 3)
    only_unknown = compute_eval_metrics(EvalPrediction(predictions=logits[2:], label_ids=labels[2:]))
    assert "accuracy" not in only_unknown


def test_near_duplicate_groups_are_transitive():
    # a-b at distance 3 and b-c at distance 3 (a-c at 6) join; d is far from all.
    a, b, c, d = 0, 0b111, 0b111111, (1 << 63) | (1 << 40) | 0xFFFF0000
    groups = near_duplicate_groups([a, b, c, d, a])
    assert list(groups) == [0, 0, 0, 1, 0]


def test_group_split_never_splits_a_group():
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 40, size=300)
    first, second = group_split(groups, 0.2, seed=3)
    assert len(first) + len(second) == 300 and not set(first) & set(second)
    assert not set(groups[first]) & set(groups[second])
    assert 0.1 < len(second) / 300 < 0.35
    again = group_split(groups, 0.2, seed=3)
    assert np.array_equal(again[1], second)
    assert not np.array_equal(group_split(groups, 0.2, seed=4)[1], second)
    with pytest.raises(InvalidDatasetError, match="two groups"):
        group_split(np.zeros(5, int), 0.2, seed=0)
    with pytest.raises(InvalidDatasetError, match="between 0 and 1"):
        group_split(groups, 1.5, seed=0)


@pytest.fixture(scope="module")
def tumour_only_folder(tmp_path_factory, data_dir):
    """The shipped tumour slices, each also saved at two other sizes (near duplicates)."""
    folder = tmp_path_factory.mktemp("tumour-only") / "tumor"
    folder.mkdir()
    for path in sorted(data_dir.glob("Training/[gmp]*/*.jpg"))[:12]:
        image = Image.open(path).convert("L")
        for size in (image.size[0], 150, 300):
            image.resize((size, size)).save(folder / f"{path.stem}-{size}.jpg", quality=92)
    return folder.parent


def test_re_saved_copies_of_a_slice_share_a_group(tumour_only_folder):
    paths = load_tumour_only_images([tumour_only_folder])
    assert len(paths) == 36
    groups = near_duplicate_groups([fingerprint(p).phash for p in paths])
    by_stem = {}
    for path, group in zip(paths, groups):
        by_stem.setdefault(Path(path).stem.rsplit("-", 1)[0], set()).add(int(group))
    assert all(len(g) == 1 for g in by_stem.values())
    assert len(set(groups)) >= 10
    with pytest.raises(InvalidDatasetError, match="does not exist"):
        load_tumour_only_images([tumour_only_folder / "nope"])


def test_train_hf_with_a_tumour_only_folder(tmp_path, data_dir, tumour_only_folder):
    output = tmp_path / "model"
    result = train_hf.main([
        "--data_dir", str(data_dir),
        "--tumour_only_dirs", str(tumour_only_folder),
        "--tumour_only_validation_size", "0.25",
        "--backbone", "convnext", "--from_scratch", "--image_size", "64",
        "--config_overrides", json.dumps(TINY_CONVNEXT),
        "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16",
        "--max_steps", "2", "--eval_strategy", "steps", "--eval_steps", "2",
        "--save_strategy", "no", "--load_best_model_at_end", "false", "--logging_steps", "1", "--disable_tqdm", "true",
        "--invert", "0.5", "--bezier", "0.5", "--gin", "0.3", "--gamma", "1.5",
        "--pixel_cache_dir", str(tmp_path / "cache"),
        "--output_dir", str(output), "--seed", "0",
    ])  # fmt: skip
    tumour_only = result.metrics["validation_tumour_only"]
    assert tumour_only["images"] + tumour_only["train_images"] == 36
    assert 0 < tumour_only["images"] < 36 and tumour_only["images"] % 3 == 0  # whole groups
    assert 0.0 <= tumour_only["sensitivity"] <= 1.0
    written = json.loads((output / "metrics.json").read_text())
    assert written["validation_tumour_only"] == tumour_only
    history = json.loads((output / "log_history.json").read_text())
    assert any("eval_tumour_only_sensitivity" in row for row in history)
    assert "tumour" in (output / "README.md").read_text().lower()
