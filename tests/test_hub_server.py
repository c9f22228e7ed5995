"""Round trips through the in-process Hub stand-in with the real huggingface_hub and transformers.

No mocks: uploads and downloads go over HTTP to the FastAPI app of ``hub_server.py``, through
the same code paths that talk to huggingface.co in production.
"""

from __future__ import annotations

import json
import os
import shutil
import re
from pathlib import Path

import huggingface_hub
import pytest
from conftest_hub import HubEnv  # the fixtures come from conftest.py (pytest_plugins)
from hub_server import DEFAULT_TOKEN, HubServer, point_hub_at
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

COMMIT_OID = re.compile(r"[0-9a-f]{40}")


def _write_sample_folder(folder: Path) -> dict[str, bytes]:
    """Writes a text file and a binary file (in a subfolder) and returns path -> bytes."""
    files = {
        "notes.txt": "Glioma, méningiome, pituitary, no tumour.\nLine two.\n".encode(),
        "weights/blob.bin": bytes(range(256)) * 8 + os.urandom(4096),
    }
    for relative_path, content in files.items():
        path = folder / relative_path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return files


@pytest.mark.parametrize("repo_type", ["model", "dataset"])
def test_upload_folder_then_snapshot_download_gives_identical_bytes(
    hub_env: HubEnv, tmp_path: Path, repo_type: str
) -> None:
    repo_id = "org/files"
    files = _write_sample_folder(tmp_path / "upload")

    # Module-level helpers go through huggingface_hub.hf_api.api, built at import time.
    repo_url = huggingface_hub.create_repo(repo_id, repo_type=repo_type)
    assert repo_url.repo_id == repo_id
    assert repo_url.startswith(hub_env.base_url)
    assert huggingface_hub.create_repo(repo_id, repo_type=repo_type, exist_ok=True).repo_id == repo_id
    with pytest.raises(HfHubHTTPError) as conflict:
        huggingface_hub.create_repo(repo_id, repo_type=repo_type)
    assert conflict.value.response.status_code == 409

    commit = huggingface_hub.upload_folder(
        folder_path=tmp_path / "upload", repo_id=repo_id, repo_type=repo_type, commit_message="Add samples"
    )
    assert COMMIT_OID.fullmatch(commit.oid)
    assert HfApi().repo_info(repo_id, repo_type=repo_type).sha == commit.oid

    fresh_cache = tmp_path / "fresh-cache"
    snapshot = Path(snapshot_download(repo_id, repo_type=repo_type, cache_dir=fresh_cache))
    assert snapshot.is_relative_to(fresh_cache)
    assert snapshot.name == commit.oid
    downloaded = {p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file()}
    assert downloaded == set(files) | {".gitattributes"}
    for relative_path, content in files.items():
        assert (snapshot / relative_path).read_bytes() == content

    prefix = "" if repo_type == "model" else "datasets/"
    requests = hub_env.server.state.requests
    assert ("POST", f"/api/{repo_type}s/{repo_id}/commit/main") in requests
    assert ("GET", f"/{prefix}{repo_id}/resolve/{commit.oid}/weights/blob.bin") in requests


def test_push_to_hub_then_from_pretrained_gives_identical_logits(hub_env: HubEnv, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForImageClassification, ConvNextConfig, ConvNextForImageClassification

    torch.manual_seed(0)
    config = ConvNextConfig(
        num_channels=3, hidden_sizes=[8, 16, 16, 16], depths=[1, 1, 1, 1], num_labels=4, image_size=32
    )
    model = ConvNextForImageClassification(config).eval()
    commit = model.push_to_hub("org/tiny")

    pushed = hub_env.server.state.get_repo("model", "org/tiny")
    assert pushed is not None
    head = pushed.commits[pushed.branches["main"]]
    assert head.oid == commit.oid
    assert {"config.json", "model.safetensors", "README.md"} <= set(head.files)

    fresh_cache = hub_env.use_fresh_cache(tmp_path / "fresh-cache")
    loaded = AutoModelForImageClassification.from_pretrained("org/tiny").eval()
    assert isinstance(loaded, ConvNextForImageClassification)
    assert (fresh_cache / "models--org--tiny").is_dir()
    downloads = [path for method, path in hub_env.server.state.requests if method == "GET"]
    assert any(re.fullmatch(r"/org/tiny/resolve/[^/]+/model\.safetensors", path) for path in downloads)

    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model(images).logits, loaded(images).logits)


def test_unknown_repo_raises_repository_not_found(hub_env: HubEnv) -> None:
    with pytest.raises(RepositoryNotFoundError):
        HfApi().model_info("org/does-not-exist")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("org/does-not-exist", "config.json")
    assert ("HEAD", "/org/does-not-exist/resolve/main/config.json") in hub_env.server.state.requests


def test_unknown_file_and_revision_raise_matching_errors(hub_env: HubEnv) -> None:
    HfApi().create_repo("org/exists")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("org/exists", "missing.txt")
    with pytest.raises(RevisionNotFoundError):
        HfApi().model_info("org/exists", revision="no-such-branch")


def test_whoami_and_writes_need_a_token(hub_env: HubEnv) -> None:
    assert huggingface_hub.whoami()["name"] == hub_env.server.state.user
    with pytest.raises(HfHubHTTPError) as unauthorized:
        HfApi(token=False).create_repo("org/anonymous")
    assert unauthorized.value.response.status_code == 401
    assert hub_env.server.state.get_repo("model", "org/anonymous") is None


def test_point_hub_at_is_undone_after_the_test(hub_server: HubServer, tmp_path: Path) -> None:  # noqa: F811
    import huggingface_hub.constants as constants
    import transformers.utils.hub as transformers_hub

    saved = (constants.ENDPOINT, constants.HF_HUB_CACHE, huggingface_hub.hf_api.api.endpoint)
    saved_transformers_api = transformers_hub._hf_api
    with pytest.MonkeyPatch.context() as monkeypatch:
        point_hub_at(monkeypatch, hub_server.base_url, tmp_path / "cache")
        assert constants.ENDPOINT == hub_server.base_url
        assert transformers_hub.hf_api().endpoint == hub_server.base_url
        assert os.environ["HF_TOKEN"] == DEFAULT_TOKEN
    assert (constants.ENDPOINT, constants.HF_HUB_CACHE, huggingface_hub.hf_api.api.endpoint) == saved
    assert transformers_hub._hf_api is saved_transformers_api


def test_a_loaded_model_pushed_to_the_hub_carries_what_its_card_shows(hub_env: HubEnv, tmp_path: Path) -> None:
    """push_to_hub of a loaded model keeps the folder's model card; the plots and metrics
    that card shows travel with it, so the Hub page has no broken images."""
    import numpy as np

    from tumor_classifier import TumorClassifier
    from tumor_classifier.classifier import DEFAULT_MODEL_DIR

    shipped = TumorClassifier.from_pretrained()
    shipped.push_to_hub("org/shipped")

    files = set(HfApi().list_repo_files("org/shipped"))
    card = Path(hf_hub_download("org/shipped", "README.md", cache_dir=tmp_path / "peek")).read_text()
    assert card == (DEFAULT_MODEL_DIR / "README.md").read_text()
    shown = set(re.findall(r"\]\(([^)\s]+\.png)\)", card))
    assert shown, "the shipped card shows its plots"
    assert shown | {"metrics.json"} <= files, sorted(shown - files)

    hub_env.use_fresh_cache(tmp_path / "fresh-cache")
    loaded = TumorClassifier.from_pretrained("org/shipped")
    example = DEFAULT_MODEL_DIR.parent / "examples" / "glioma.jpg"
    np.testing.assert_allclose(loaded.predict_proba(example), shipped.predict_proba(example), atol=1e-6)


def test_a_model_that_cannot_be_found_gets_a_message_saying_what_was_wrong(
    hub_env: HubEnv, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A missing revision, repository, uncached id offline or local folder each get one line
    saying which of them it was, not "neither a local folder nor a Hub id" plus the Hub's
    multi-line HTTP text."""
    from tumor_classifier import ModelLoadError, TumorClassifier

    HfApi().create_repo("org/tiny")
    HfApi().upload_folder(folder_path=tiny_model_dir, repo_id="org/tiny")
    assert list(TumorClassifier.from_pretrained("org/tiny").classes_)[0] == "glioma"

    def message(source: str, **kwargs) -> str:
        with pytest.raises(ModelLoadError) as info:
            TumorClassifier.from_pretrained(source, **kwargs)
        text = str(info.value)
        assert "\n" not in text, text
        return text

    text = message("org/tiny", revision="no-such-branch")
    assert "revision 'no-such-branch'" in text and "'org/tiny'" in text and hub_env.base_url in text, text
    assert "neither" not in text, text
    text = message("org/no-such-model")
    assert "'org/no-such-model'" in text and "no model repository" in text and hub_env.base_url in text, text
    missing_folder = tmp_path / "no-such-folder"
    text = message(str(missing_folder))
    assert f"{missing_folder} does not exist" in text, text
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    text = message("org/never-downloaded")
    assert "HF_HUB_OFFLINE" in text and "not in the Hub cache" in text, text
    assert TumorClassifier.from_pretrained("org/tiny").classes_[0] == "glioma"  # cached: loads offline


def _datasets_use_the_stand_in(hub_env: HubEnv, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """datasets keeps its own copy of the endpoint and the offline switch (read at import)."""
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_ENDPOINT", hub_env.base_url)
    monkeypatch.setattr(datasets.config, "HUB_DATASETS_URL", hub_env.base_url + "/datasets/{repo_id}/resolve/{revision}/{path}")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets-cache")


def test_evaluate_refuses_a_hub_data_set_without_a_test_split(
    hub_env: HubEnv, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A Hub data set with a train split only: evaluate used to carve 15% of its training
    images and report them as the test split. Refused; the same data with a test split is
    evaluated on it. (The Kaggle layout, Training/ and Testing/, keeps its Testing split:
    tests/test_hub_kaggle_layout.py.)"""
    from tumor_classifier.cli import main

    _datasets_use_the_stand_in(hub_env, monkeypatch, tmp_path)
    train_only = tmp_path / "train-only"
    shutil.copytree(data_dir / "Training", train_only / "train")
    HfApi().create_repo("org/train-only", repo_type="dataset")
    HfApi().upload_folder(folder_path=train_only, repo_id="org/train-only", repo_type="dataset")
    out = tmp_path / "report"
    assert main(["evaluate", "org/train-only", "--out", str(out), "--no-dedup"]) == 2
    error = capsys.readouterr().err
    assert "'org/train-only' has no test split" in error and "its splits: train" in error, error
    assert not out.exists()

    lowercase = tmp_path / "lowercase"
    for split, name in (("Training", "train"), ("Testing", "test")):
        shutil.copytree(data_dir / split, lowercase / name)
    HfApi().create_repo("org/split-folders", repo_type="dataset")
    HfApi().upload_folder(folder_path=lowercase, repo_id="org/split-folders", repo_type="dataset")
    assert main(["evaluate", "org/split-folders", "--out", str(out), "--no-dedup"]) == 0
    assert json.loads((out / "metrics.json").read_text())["test"]["n"] == 12


def test_a_stale_graph_in_a_hub_repository_never_sends_the_user_into_the_hub_cache(
    hub_env: HubEnv, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A repository whose model.onnx was exported from other weights: the graph is passed
    over and a fresh one exported to the package's cache. The warning used to advise
    re-exporting into the Hub cache's snapshot folder (a path the user must never write);
    it names the repository instead, and nothing is written into the snapshot."""
    import torch

    from tumor_classifier import TumorClassifier
    from tumor_classifier.cli import main
    from tumor_classifier.models import create_model
    from tumor_classifier.preprocessing import MRIPreprocessor

    from tumor_classifier.mri_check import MRICheck

    # The MRI check's feature graph is loaded once per process: load it in the session's
    # cache first, or this test's cache would become its home for every later test.
    MRICheck.load()._backbone.graph()
    monkeypatch.setenv("TUMOR_CLASSIFIER_CACHE", str(tmp_path / "tc-cache"))
    exported = Path(shutil.copytree(tiny_model_dir, tmp_path / "exported"))
    assert main(["export", "--format", "onnx", str(exported), str(exported)]) == 0
    repo = tmp_path / "repo"
    torch.manual_seed(1)  # other weights than the graph's
    create_model("convnext", class_names=["glioma", "meningioma", "notumor", "pituitary"], from_scratch=True, image_size=32,
                 config_overrides={"hidden_sizes": [16, 32, 48, 64], "depths": [1, 1, 1, 1]}).save_pretrained(repo)
    MRIPreprocessor(size=32).save_pretrained(repo)
    for name in ("model.onnx", "onnx_config.json"):
        shutil.copy(exported / name, repo / name)
    HfApi().create_repo("org/stale-graph")
    HfApi().upload_folder(folder_path=repo, repo_id="org/stale-graph")

    with pytest.warns(UserWarning, match="org/stale-graph") as caught:
        clf = TumorClassifier.from_pretrained("org/stale-graph", backend="onnx")
    message = " ".join(str(w.message) for w in caught)
    assert str(hub_env.cache_dir) not in message, message
    snapshot = clf.model_folder_
    assert {p.name for p in snapshot.iterdir()} <= {p.name for p in repo.iterdir()}


def test_push_to_hub_without_a_namespace_lands_in_the_users_namespace(hub_env: HubEnv, tiny_model_dir: Path, tmp_path: Path) -> None:
    """push_to_hub("my-model"), as transformers' own push_to_hub allows: the Hub creates
    the repository under the token's user, and the upload must go there (it went to
    "my-model" and failed with a 404 after the repository was created)."""
    import numpy as np

    from tumor_classifier import TumorClassifier
    from tumor_classifier.classifier import DEFAULT_MODEL_DIR

    clf = TumorClassifier.from_pretrained(tiny_model_dir)
    url = clf.push_to_hub("my-model")
    user = hub_env.server.state.user
    assert f"/{user}/my-model/" in url, url
    hub_env.use_fresh_cache(tmp_path / "fresh-cache")
    example = DEFAULT_MODEL_DIR.parent / "examples" / "glioma.jpg"
    loaded = TumorClassifier.from_pretrained(f"{user}/my-model")
    np.testing.assert_allclose(loaded.predict_proba(example), clf.predict_proba(example), atol=1e-6)
