"""Uploading a model folder to the Hugging Face Hub, and resolving where a model lives."""

from __future__ import annotations

from pathlib import Path

from .model_folder import ENSEMBLE_CONFIG_NAME, is_ensemble_folder
from .exceptions import HubUploadError, ModelLoadError

#: Files of a model folder that are never uploaded (Trainer checkpoints, optimizer state).
IGNORE_PATTERNS = ["checkpoint-*", "checkpoint-*/**", "run-*", "run-*/**", "*.bin", "*.pt", "*.pth", "runs/**", "*.tmp*"]


def is_model_folder(path: str | Path) -> bool:
    """A saved single model (``config.json``) or ensemble (``ensemble.json``)."""
    return (Path(path) / "config.json").is_file() or is_ensemble_folder(path)


def check_hub_reachable(timeout: float = 10.0) -> str:
    """Checks that huggingface_hub's endpoint answers, before anything is written or uploaded.

    The endpoint is huggingface_hub's (``https://huggingface.co``, or ``HF_ENDPOINT``);
    any HTTP answer counts as reachable, since only the network is checked here.

    Returns:
        The endpoint URL.

    Raises:
        HubUploadError: Offline mode (``HF_HUB_OFFLINE``) is on, or the endpoint cannot be
            reached (no network, DNS failure, nothing listening, timeout).
    """
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    endpoint = constants.ENDPOINT
    if constants.is_offline_mode():
        raise HubUploadError(
            f"Cannot upload to the Hugging Face Hub ({endpoint}): offline mode is on (HF_HUB_OFFLINE). "
            "Unset HF_HUB_OFFLINE to upload; nothing was written or uploaded."
        )
    try:
        get_session().head(endpoint, timeout=timeout, follow_redirects=False)
    except Exception as error:  # noqa: BLE001 - the HTTP library (httpx or httpx2) and its errors vary with huggingface_hub
        raise HubUploadError(
            f"Cannot reach the Hugging Face Hub at {endpoint} ({type(error).__name__}: {error}); nothing was "
            "written or uploaded. Check the network connection, or HF_ENDPOINT if you use a mirror."
        ) from error
    return endpoint


def push_folder_to_hub(
    folder: str | Path,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool | None = None,
    commit_message: str = "Upload tumor-classifier model",
) -> str:
    """Creates ``repo_id`` if needed and uploads a saved model folder in one commit.

    A ``repo_id`` without a namespace (``"my-model"``) is created, and uploaded to, under
    the token's user, as transformers' ``push_to_hub`` does.

    Only safetensors weights, configs, metrics, plots and the model card travel;
    checkpoints and pickled files are left out.

    Returns:
        The URL of the commit.

    Raises:
        ModelLoadError: ``folder`` is not a saved model folder.
        HubUploadError: The Hub cannot be reached (checked first, see
            :func:`check_hub_reachable`) or refused the repository or the upload.
    """
    from huggingface_hub import HfApi

    folder = Path(folder)
    if not is_model_folder(folder):
        raise ModelLoadError(
            f"{folder} is not a saved model folder (no config.json nor {ENSEMBLE_CONFIG_NAME}); save_pretrained it first."
        )
    endpoint = check_hub_reachable()
    api = HfApi(token=token)
    step = f"create the repository {repo_id}"
    try:
        # "my-model" without a namespace is created under the token's user: upload there.
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model").repo_id
        step = f"upload {folder} to {repo_id}"
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            commit_message=commit_message,
            ignore_patterns=IGNORE_PATTERNS,
            repo_type="model",
        )
    except Exception as error:  # noqa: BLE001 - HTTP, auth and validation errors of huggingface_hub and its HTTP library
        raise HubUploadError(
            f"Could not {step} on the Hugging Face Hub at {endpoint} ({type(error).__name__}: {error})."
        ) from error
    return str(getattr(info, "commit_url", info))
