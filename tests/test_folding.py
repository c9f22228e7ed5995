"""The folded copy that predict runs through: the model's probabilities, made again when the weights change."""

from __future__ import annotations

import numpy as np
import torch

from conftest import efficientnet_with_trained_looking_norms
from tumor_classifier.folding import _folded, folded_network
from tumor_classifier.inference import torch_proba
from tumor_classifier.preprocessing import MRIPreprocessor

SIZE = 64


def _model_with_trained_looking_norms(seed: int = 0):
    return efficientnet_with_trained_looking_norms(SIZE, seed)


def _scans(n: int = 3):
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[:96, :96]
    disc = (rows - 48) ** 2 + (cols - 50) ** 2 <= 36**2
    return [(disc * rng.uniform(60, 250, (96, 96))).astype(np.uint8) for _ in range(n)]


def _own_proba(model, preprocessor, prepared):
    batch = torch.from_numpy(np.stack([np.asarray(p.image) for p in prepared]))
    with torch.no_grad():
        return torch.softmax(model(pixel_values=preprocessor.normalize(batch)).logits, dim=-1).numpy()


def test_predict_runs_through_the_folded_copy_and_gives_the_models_probabilities():
    model, preprocessor = _model_with_trained_looking_norms(), MRIPreprocessor(size=SIZE)
    prepared = [preprocessor.prepare(scan) for scan in _scans()]
    proba = torch_proba(model, preprocessor, prepared, batch_size=2, mirror=False)
    assert model in _folded  # the copy was made and kept
    np.testing.assert_allclose(proba, _own_proba(model, preprocessor, prepared), atol=1e-5)
    assert _folded[model][1] is folded_network(model)  # and reused while the weights stay


def test_after_a_weight_change_predict_follows_the_new_weights():
    model, preprocessor = _model_with_trained_looking_norms(), MRIPreprocessor(size=SIZE)
    prepared = [preprocessor.prepare(scan) for scan in _scans()]
    before = torch_proba(model, preprocessor, prepared, batch_size=4, mirror=False)
    with torch.no_grad():  # in place, as an optimiser step changes them
        model.efficientnet._fc.weight.mul_(3.0).add_(0.2)
    after = torch_proba(model, preprocessor, prepared, batch_size=4, mirror=False)
    assert not np.allclose(after, before, atol=1e-3)
    np.testing.assert_allclose(after, _own_proba(model, preprocessor, prepared), atol=1e-5)


def test_a_model_in_training_mode_is_not_folded():
    model, preprocessor = _model_with_trained_looking_norms(), MRIPreprocessor(size=SIZE)
    prepared = [preprocessor.prepare(scan) for scan in _scans()]
    model.train()
    torch_proba(model, preprocessor, prepared, batch_size=4, mirror=False)
    assert model not in _folded


def test_a_copy_first_made_by_predict_can_be_differentiated_by_smoothgrad_afterwards():
    """predict makes the copy inside torch.inference_mode(); its weights must still serve autograd."""
    from tumor_classifier.attributions import compute_attributions

    model, preprocessor = _model_with_trained_looking_norms(), MRIPreprocessor(size=SIZE)
    prepared = [preprocessor.prepare(scan) for scan in _scans(2)]
    torch_proba(model, preprocessor, prepared, batch_size=2, mirror=False)
    values = preprocessor.normalize(torch.from_numpy(np.stack([np.asarray(p.image) for p in prepared])))
    maps = compute_attributions(model, values, [1, 2], "smoothgrad", n_samples=2)
    assert maps.shape == (2, SIZE, SIZE) and np.isfinite(maps).all() and maps.max() > 0


def test_a_model_made_inside_inference_mode_is_run_as_it_is():
    """Its weights are inference tensors, which keep no version counter: a folded copy could go stale unseen."""
    preprocessor = MRIPreprocessor(size=SIZE)
    with torch.inference_mode():
        model = _model_with_trained_looking_norms()
    prepared = [preprocessor.prepare(scan) for scan in _scans(2)]
    proba = torch_proba(model, preprocessor, prepared, batch_size=2, mirror=False)
    assert model not in _folded
    with torch.inference_mode():
        np.testing.assert_allclose(proba, _own_proba(model, preprocessor, prepared), atol=1e-6)


def test_after_fused_optimiser_steps_predict_follows_the_new_weights():
    """A fused step (the Trainer's default adamw_torch_fused) moves no version counter; the step count is seen."""
    model, preprocessor = _model_with_trained_looking_norms(), MRIPreprocessor(size=SIZE)
    prepared = [preprocessor.prepare(scan) for scan in _scans()]
    before = torch_proba(model, preprocessor, prepared, batch_size=4, mirror=False)
    optimiser = torch.optim.AdamW(model.parameters(), lr=0.01, fused=True)
    for _ in range(3):  # eval mode throughout: no batch-norm statistic moves either
        model(pixel_values=torch.randn(2, 3, SIZE, SIZE)).logits.sum().backward()
        optimiser.step()
        optimiser.zero_grad()
    after = torch_proba(model, preprocessor, prepared, batch_size=4, mirror=False)
    assert np.abs(after - before).max() > 0.01
    np.testing.assert_allclose(after, _own_proba(model, preprocessor, prepared), atol=1e-4)  # folded: rounding only


def test_the_callers_hooks_fire_in_predict_and_never_reach_the_copy():
    model, preprocessor = _model_with_trained_looking_norms(), MRIPreprocessor(size=SIZE)
    prepared = [preprocessor.prepare(scan) for scan in _scans(2)]
    torch_proba(model, preprocessor, prepared, batch_size=2, mirror=False)  # a copy exists
    seen = []
    handle = model.efficientnet._conv_head.register_forward_hook(lambda *_: seen.append(1))
    torch_proba(model, preprocessor, prepared, batch_size=2, mirror=False)
    assert seen == [1]  # the model ran itself, so its hook fired
    handle.remove()
    model.efficientnet._fc.register_forward_hook(lambda *_: seen.append(2))
    copy = model.folded_copy()
    assert not any(m._forward_hooks for m in copy.modules())


def test_a_model_with_any_kind_of_hook_runs_itself():
    """Every kind of hook the copy leaves behind (folded_copy clears four) keeps the model running itself."""
    from tumor_classifier.folding import folded_network

    model = _model_with_trained_looking_norms()
    assert folded_network(model) is not model
    layer = model.efficientnet._conv_head
    for register in (lambda: layer.register_forward_hook(lambda *_: None),
                     lambda: layer.register_forward_pre_hook(lambda *_: None),
                     lambda: layer.register_full_backward_hook(lambda *_: None),
                     lambda: layer.register_full_backward_pre_hook(lambda *_: None)):
        handle = register()
        assert folded_network(model) is model
        handle.remove()
    assert folded_network(model) is not model


def test_a_model_with_dropout_switched_on_samples_as_before():
    """Monte Carlo dropout: eval mode with the dropout modules in training mode gives a different answer each pass."""
    model, preprocessor = _model_with_trained_looking_norms(), MRIPreprocessor(size=SIZE)
    prepared = [preprocessor.prepare(scan) for scan in _scans(2)]
    dropouts = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts
    for module in dropouts:
        module.p = 0.5
        module.train()
    first = torch_proba(model, preprocessor, prepared, batch_size=2, mirror=False)
    second = torch_proba(model, preprocessor, prepared, batch_size=2, mirror=False)
    assert not np.allclose(first, second)
