"""Shared, seeded fixtures: real MRI slices shipped in tests/data, tiny models, a fitted classifier.

The environment is set before anything imports huggingface_hub or gradio: no Hub
traffic (offline, telemetry and analytics off) and every cache in a temporary folder,
so the tests write nothing outside it.
"""

import os
import tempfile
from pathlib import Path

_CACHE_ROOT = Path(tempfile.mkdtemp(prefix="tumor-classifier-tests-"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HOME", str(_CACHE_ROOT / "hf-home"))
os.environ.setdefault("HF_HUB_CACHE", str(_CACHE_ROOT / "hf-hub"))
os.environ.setdefault("HF_DATASETS_CACHE", str(_CACHE_ROOT / "hf-datasets"))
os.environ.setdefault("TUMOR_CLASSIFIER_CACHE", str(_CACHE_ROOT / "pixels"))
os.environ.setdefault("MPLCONFIGDIR", str(_CACHE_ROOT / "matplotlib"))

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

pytest_plugins = ["conftest_hub"]

DATA_DIR = Path(__file__).parent / "data" / "brain-tumor-mri"
CLASSES = ("glioma", "meningioma", "notumor", "pituitary")
#: A from-scratch ConvNeXt small enough to train in seconds on two cores.
TINY_CONVNEXT = {"hidden_sizes": [16, 32, 48, 64], "depths": [1, 1, 1, 1]}


def efficientnet_with_trained_looking_norms(image_size: int, seed: int = 0):
    """A from-scratch EfficientNet-Lite0 in eval mode whose batch norms hold non-trivial statistics and
    affines, so that folding them into the convolutions (``folded_copy``) is a real change."""
    from tumor_classifier.models import create_model

    model = create_model("efficientnet_lite0", image_size=image_size, from_scratch=True).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                for tensor, low, high in ((module.running_mean, -0.5, 0.5), (module.running_var, 0.5, 2.0),
                                          (module.weight, 0.5, 1.5), (module.bias, -0.2, 0.2)):
                    tensor.copy_(low + (high - low) * torch.rand(tensor.shape, generator=generator))
    return model


def pytest_sessionfinish(session, exitstatus):
    import shutil

    shutil.rmtree(_CACHE_ROOT, ignore_errors=True)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shipped Kaggle-layout folder: 8 Training and 3 Testing slices per class."""
    return DATA_DIR


def _split_images(split: str) -> tuple[list[Path], list[str]]:
    paths = sorted((DATA_DIR / split).glob("*/*.jpg"))
    return paths, [p.parent.name for p in paths]


@pytest.fixture(scope="session")
def train_images() -> tuple[list[Path], list[str]]:
    """Paths and class names of the 32 shipped Training slices."""
    return _split_images("Training")


@pytest.fixture(scope="session")
def test_images() -> tuple[list[Path], list[str]]:
    """Paths and class names of the 12 shipped Testing slices."""
    return _split_images("Testing")


@pytest.fixture(scope="session")
def fitted_classifier(train_images):
    """A tiny ConvNeXt TumorClassifier fitted on the shipped Training slices (seeded)."""
    from tumor_classifier import TumorClassifier

    torch.manual_seed(0)
    paths, labels = train_images
    clf = TumorClassifier(
        "convnext",
        from_scratch=True,
        image_size=64,
        epochs=30,
        batch_size=8,
        learning_rate=1e-3,
        augment=False,  # 24 images: augmentation would keep the tiny net from fitting them
        validation_size=0.25,
        random_state=0,
        config_overrides=TINY_CONVNEXT,
    )
    # One thread: this tiny net fits in seconds, while two threads next to other work
    # on a two-core machine wait on each other for minutes.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return clf.fit(paths, labels)
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module of tiny-model tests: on a loaded two-core machine
    two threads wait on each other and are far slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def confident_classifier(fitted_classifier):
    """The fitted classifier with the uncertainty threshold at 0, so verdicts name a class.

    (Fitted on 24 slices, the tiny model's top probability is low: with the default
    threshold every verdict would be "Uncertain".) A shallow copy: same model, own params.
    """
    import copy

    clf = copy.copy(fitted_classifier)
    clf.set_params(uncertainty_threshold=0.0)
    return clf


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A model folder with a seeded random-weight 32-pixel ConvNeXt: fast plumbing tests that
    load by path (CLI, subprocesses); it checks no accuracy."""
    from tumor_classifier.models import create_model
    from tumor_classifier.preprocessing import MRIPreprocessor

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-model")
    create_model("convnext", class_names=list(CLASSES), from_scratch=True, image_size=32, config_overrides=TINY_CONVNEXT).save_pretrained(folder)
    MRIPreprocessor(size=32).save_pretrained(folder)
    return folder
