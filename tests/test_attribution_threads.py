"""Threads sharing one model: compute_attributions must behave as if called one at a time.

``compute_attributions`` puts the model in eval mode, freezes its parameters and hooks its
layers for the length of a call, then restores the caller's flags. Without a per-model
lock, four threads interleave those saves and restores: a thread saves flags another
thread has just changed (eval, frozen) and "restores" them, so the model stays frozen in
eval mode for good; and a thread restoring train mode while another is mid-backward gives
that thread train-mode maps (drop path, batch statistics). These tests run real threads
on one small model and compare with single-threaded maps.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from transformers import ConvNextConfig, ConvNextForImageClassification, ResNetConfig, ResNetForImageClassification

from tumor_classifier.attributions import compute_attributions

SIZE = 32
THREADS = 4
CALLS = 5  # per thread


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    # Four Python threads each running torch ops: one intra-op thread each keeps a loaded
    # two-core machine from oversubscribing (the threads still run concurrently: torch
    # releases the GIL in its kernels).
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _convnext():
    # Drop path (stochastic depth) makes a train-mode forward random: a map computed while
    # another thread has put the model back in train mode differs from the eval-mode map.
    config = ConvNextConfig(num_channels=3, hidden_sizes=[8, 16, 16], depths=[1, 2, 1], num_stages=3,
                            num_labels=3, image_size=SIZE, drop_path_rate=0.5)
    return ConvNextForImageClassification(config)


def _resnet():
    # Batch norm in train mode normalises with the batch's statistics (and updates the
    # running ones): another way a wrongly restored mode changes the maps.
    return ResNetForImageClassification(
        ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16], depths=[1, 1, 1], num_labels=3)
    )


def _state(model):
    return (
        [(name, module.training) for name, module in model.named_modules()],
        [(name, param.requires_grad) for name, param in model.named_parameters()],
    )


def _jobs():
    """(method, pixel_values, target) per call: several methods and inputs, so calls differ."""
    generator = torch.Generator().manual_seed(0)
    methods = ["gradcam", "gradcam_fine", "hirescam", "smoothgrad", "integrated_gradients"]
    jobs = []
    for index in range(THREADS * CALLS):
        pixel_values = torch.randn(2, 3, SIZE, SIZE, generator=generator)
        jobs.append((methods[index % len(methods)], pixel_values, [index % 3, (index + 1) % 3]))
    return jobs


def _attribute(model, job):
    method, pixel_values, target = job
    # Small options keep the run short; head_only=False because noise is no head scan.
    return compute_attributions(model, pixel_values, target, method, n_steps=4, n_samples=3,
                                head_only=False, internal_batch_size=2)


def _run_threads(model, jobs):
    """Runs the jobs on THREADS threads (thread t takes jobs t, t + THREADS, ...), all released at once."""
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(THREADS)

    def work(first: int) -> None:
        try:
            barrier.wait()
            for index in range(first, len(jobs), THREADS):
                results[index] = _attribute(model, jobs[index])
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert not any(thread.is_alive() for thread in threads), "a thread did not finish (deadlock?)"
    assert not errors, errors
    return results


def _prepare(build, train: bool):
    torch.manual_seed(0)
    model = build()
    if train:
        model.train()  # every parameter trainable, train mode
    else:
        model.eval()
        stem = next(iter(model.base_model.children()))  # ConvNeXt's embeddings, ResNet's embedder
        for param in stem.parameters():  # a partly frozen model
            param.requires_grad_(False)
        model.classifier.train()  # one submodule in another mode than the rest
    return model


@pytest.mark.parametrize("train", [True, False], ids=["train-mode-all-trainable", "eval-mode-partly-frozen"])
@pytest.mark.parametrize("build", [_convnext, _resnet], ids=["convnext", "resnet"])
def test_threads_get_single_thread_maps_and_the_model_keeps_its_state(build, train):
    model = _prepare(build, train)
    before = _state(model)
    buffers = {name: value.clone() for name, value in model.named_buffers()}
    jobs = _jobs()
    expected = [_attribute(model, job) for job in jobs]
    assert _state(model) == before

    results = _run_threads(model, jobs)

    wrong = [index for index, maps in sorted(results.items()) if not np.allclose(maps, expected[index], atol=1e-5)]
    changed = [name for (name, flag), (_, old) in zip(_state(model)[0] + _state(model)[1], before[0] + before[1])
               if flag != old]
    # Every flag as it was (not "eval and frozen for good"), every map as a lone call's.
    assert not changed and not wrong, (
        f"{len(changed)} train/requires_grad flags changed (e.g. {changed[:3]}); "
        f"{len(wrong)} of {len(jobs)} calls gave maps that differ from single-thread maps"
    )
    assert _state(model) == before
    assert all(param.grad is None for param in model.parameters())
    assert not any(module._forward_hooks for module in model.modules())
    for name, value in model.named_buffers():  # no train-mode pass updated BN statistics
        torch.testing.assert_close(value, buffers[name], msg=name)


def test_a_concurrent_plain_forward_does_not_leak_into_a_gradcam_map():
    # predict() takes no lock; its forward passes run the hooked layers too, and their
    # activations must not be taken for those of the attribution in flight.
    model = _prepare(_convnext, train=False)
    model.classifier.eval()
    jobs = [("gradcam_fine", torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(i)), [0, 1])
            for i in range(8)]
    expected = [_attribute(model, job) for job in jobs]
    stop = threading.Event()

    def predict_forever() -> None:
        other = torch.randn(5, 3, SIZE, SIZE)  # another batch size: a leaked activation would not even fit
        with torch.no_grad():
            while not stop.is_set():
                model(other)

    runner = threading.Thread(target=predict_forever)
    runner.start()
    try:
        got = [_attribute(model, job) for job in jobs]
    finally:
        stop.set()
        runner.join(timeout=60)
    for maps, reference in zip(got, expected):
        np.testing.assert_allclose(maps, reference, atol=1e-5)


def test_smoothcam_on_the_shared_folded_copy_while_predict_runs_through_it():
    """smoothcam_contrast hooks the blocks of the folded copy that predict runs through
    (tumor_classifier.inference.torch_proba): threads explaining with it, beside a thread
    predicting in a loop, get single-thread maps, and no hook stays on the copy or the model."""
    from conftest import efficientnet_with_trained_looking_norms

    from tumor_classifier.folding import folded_network
    from tumor_classifier.inference import model_passes

    model = efficientnet_with_trained_looking_norms(64, seed=0).eval()
    generator = torch.Generator().manual_seed(1)
    jobs = [("smoothcam_contrast", torch.randn(2, 3, 64, 64, generator=generator), [index % 3, (index + 2) % 3])
            for index in range(THREADS * 2)]

    def smoothcam(job):
        _, pixel_values, target = job
        return compute_attributions(model, pixel_values, target, "smoothcam_contrast", versus=1, head_only=False)

    expected = [smoothcam(job) for job in jobs]
    copy = folded_network(model)
    assert copy is not model
    stop = threading.Event()

    def predict_forever() -> None:
        other = torch.randn(5, 3, 64, 64)  # another batch size: a leaked activation would not even fit
        while not stop.is_set():
            with model_passes(model), torch.inference_mode():
                folded_network(model)(pixel_values=other)

    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def work(first: int) -> None:
        try:
            for index in range(first, len(jobs), THREADS):
                results[index] = smoothcam(jobs[index])
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)

    runner = threading.Thread(target=predict_forever)
    workers = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
    runner.start()
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=600)
    finally:
        stop.set()
        runner.join(timeout=60)
    assert not errors, errors
    for index, reference in enumerate(expected):
        np.testing.assert_allclose(results[index], reference, atol=1e-5)
    assert folded_network(model) is copy  # the same copy throughout
    for network in (model, copy):
        assert not any(module._forward_hooks for module in network.modules())
