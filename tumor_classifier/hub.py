"""Uploading a model folder to the Hugging Face Hub, and resolving where a model lives."""

from __future__ import annotations

from pathlib import Path

from .ensemble import ENSEMBLE_CONFIG_NAME, is_ensemble_folder
from .exceptions import ModelLoadError

#: Files of a model folder that are never uploaded (Trainer checkpoints, optimizer state).
IGNORE_PATTERNS = ["checkpoint-*", "checkpoint-*/**", "run-*", "run-*/**", "*.bin", "*.pt", "*.pth", "runs/**", "*.tmp*"]


def is_model_folder(path: str | Path) -> bool:
    """A saved single model (``config.json``) or ensemble (``ensemble.json``)."""
    return (Path(path) / "config.json").is_file() or is_ensemble_folder(path)


def push_folder_to_hub(
    folder: str | Path,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool | None = None,
    commit_message: str = "Upload tumor-classifier model",
) -> str:
    """Creates ``repo_id`` if needed and uploads a saved model folder in one commit.

    Only safetensors weights, configs, metrics, plots and the model card travel;
    checkpoints and pickled files are left out.

    Returns:
        The URL of the commit.
    """
    from huggingface_hub import HfApi

    folder = Path(folder)
    if not is_model_folder(folder):
        raise ModelLoadError(
            f"{folder} is not a saved model folder (no config.json nor {ENSEMBLE_CONFIG_NAME}); save_pretrained it first."
        )
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    info = api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        commit_message=commit_message,
        ignore_patterns=IGNORE_PATTERNS,
        repo_type="model",
    )
    return str(getattr(info, "commit_url", info))
