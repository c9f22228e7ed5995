"""In-process stand-in for the Hugging Face Hub, for offline tests of real Hub code paths.

The real Hub is unreachable from the test machines, yet the project pushes models with
``model.push_to_hub`` / ``HfApi.upload_folder`` and loads them with ``from_pretrained`` /
``snapshot_download``. This module serves the small part of the Hub HTTP API that
``huggingface_hub`` 2.x (checked against 2.4.0) and ``transformers`` 5.x call for those
flows, from a FastAPI app run by uvicorn in a background thread on ``127.0.0.1``.

Served endpoints (``{kind}`` is ``models``, ``datasets`` or ``spaces``; a repo id is always
``namespace/name``):

* ``GET  /api/whoami-v2``: the fake user (``tester``, member of the ``org`` organisation).
* ``POST /api/repos/create`` and ``DELETE /api/repos/delete``: 409 when the repo already exists
  (``create_repo(exist_ok=True)`` relies on it). A new repo gets an initial commit holding a
  ``.gitattributes``, like on the real Hub.
* ``GET  /api/{kind}/{ns}/{name}`` and ``.../revision/{rev}``: repo info (``sha``,
  ``siblings``, with ``size`` / ``blobId`` when ``?blobs=true``).
* ``GET  /api/{kind}/{ns}/{name}/tree/{rev}[/{path}]`` (``?recursive=``): used by
  ``snapshot_download`` and ``list_repo_tree`` / ``list_repo_files``.
* ``POST /api/{kind}/{ns}/{name}/paths-info/{rev}``: form-encoded ``paths``.
* ``POST /api/{kind}/{ns}/{name}/preupload/{rev}``: every file is ``"regular"`` (never LFS
  or Xet), so contents travel base64-encoded inside the commit, even with ``hf_xet``
  installed; the existing blob oid is returned so unchanged files are skipped.
* ``POST /api/{kind}/{ns}/{name}/commit/{branch}``: NDJSON ``header`` / ``file`` /
  ``deletedFile`` / ``deletedFolder`` lines; honours ``parentCommit`` (412 when stale).
* ``POST /api/{kind}/{ns}/{name}/branch/{branch}`` and ``GET .../refs``.
* ``POST /api/validate-yaml``: accepts every README (``create_commit`` calls it).
* ``GET`` / ``HEAD`` ``/{ns}/{name}/resolve/{rev}/{path}``, and the same under
  ``/datasets/`` and ``/spaces/``: the file, with ``ETag`` (git blob oid),
  ``X-Repo-Commit``, ``Content-Length`` and single ``Range`` support.

Errors carry the ``X-Error-Code`` header and ``{"error": ...}`` body that
``huggingface_hub.utils.hf_raise_for_status`` maps onto ``RepositoryNotFoundError``
(``RepoNotFound``), ``RevisionNotFoundError`` (``RevisionNotFound``) and
``RemoteEntryNotFoundError`` (``EntryNotFound``). Writes need an ``Authorization: Bearer``
header (any token is accepted); reads do not. Pull requests (``create_pr=True``), LFS and
Xet uploads, and revisions containing ``/`` are not supported.

Pointing ``huggingface_hub`` and ``transformers`` at the server
----------------------------------------------------------------
``huggingface_hub.constants`` reads ``HF_ENDPOINT``, ``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE``
once, at import time, so setting the environment variables is not enough inside a test
process that has already imported it. :func:`point_hub_at` applies this recipe through
pytest's ``monkeypatch`` (so everything is undone after the test)::

    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", base_url)
    monkeypatch.setattr(huggingface_hub.constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        base_url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(huggingface_hub.constants, "HF_URL_HOSTS",
                        huggingface_hub.constants.HF_URL_HOSTS | {"127.0.0.1"})
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", cache_dir)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_XET_CACHE", cache_dir + "-xet")
    # The module-level HfApi behind huggingface_hub.create_repo, upload_folder, whoami, ...
    # froze constants.ENDPOINT when it was built at import time:
    monkeypatch.setattr(huggingface_hub.hf_api.api, "endpoint", base_url)
    # transformers builds one shared HfApi lazily (transformers.utils.hub.hf_api()) and keeps
    # it; reset it so it is rebuilt with the patched endpoint, and restored afterwards:
    monkeypatch.setattr(transformers.utils.hub, "_hf_api", None)
    # Environment, read at call time (token) or by subprocesses (the rest):
    monkeypatch.setenv("HF_TOKEN", "hf_stand_in_token")   # get_token() reads it on each call
    monkeypatch.setenv("HF_ENDPOINT", base_url)
    monkeypatch.setenv("HF_HUB_CACHE", cache_dir)
    monkeypatch.setenv("HF_XET_CACHE", cache_dir + "-xet")  # hf_xet logs, read by hf_xet itself
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.delenv("HF_HUB_OFFLINE"); monkeypatch.delenv("TRANSFORMERS_OFFLINE")

``transformers`` itself keeps no copy of the endpoint, the cache folder or the offline flag:
``cached_file`` / ``from_pretrained`` read ``huggingface_hub.constants`` at call time, and
``push_to_hub`` goes through ``transformers.utils.hub.hf_api()``. In a fresh process (a
subprocess or a script), setting ``HF_ENDPOINT``, ``HF_HUB_CACHE`` and ``HF_TOKEN`` (plus
``HF_XET_CACHE`` to keep hf_xet logs out of ``$HOME``) and unsetting ``HF_HUB_OFFLINE`` /
``TRANSFORMERS_OFFLINE`` *before* importing ``huggingface_hub`` is enough (checked with a
subprocess calling ``create_repo`` / ``upload_file`` / ``hf_hub_download`` / ``whoami``).
An ``HfApi(endpoint=base_url)`` instance, or the ``endpoint=`` argument of
``hf_hub_download`` / ``snapshot_download``, also works without any patching.

Typical use::

    with running_hub_server(tmp_path / "hub") as hub:
        point_hub_at(monkeypatch, hub.base_url, tmp_path / "cache")
        model.push_to_hub("org/tiny")
        AutoModelForImageClassification.from_pretrained("org/tiny")
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import json
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

DEFAULT_USER = "tester"
"""Name of the fake user that owns the token; repos created without a namespace go here."""

DEFAULT_ORGS = ("org",)
"""Organisations the fake user belongs to (only reported by ``whoami``; any namespace works)."""

DEFAULT_TOKEN = "hf_stand_in_token"
"""Dummy token that :func:`point_hub_at` exports as ``HF_TOKEN``."""

REPO_KINDS = {"models": "model", "datasets": "dataset", "spaces": "space"}
"""URL segment of the ``/api/{kind}/...`` routes -> ``repo_type`` as huggingface_hub names it."""

URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
"""Web/resolve URL prefix of each repo type, as in ``huggingface_hub.constants``."""

INITIAL_GITATTRIBUTES = (
    b"*.bin filter=lfs diff=lfs merge=lfs -text\n"
    b"*.pt filter=lfs diff=lfs merge=lfs -text\n"
    b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
)
"""Content of the ``.gitattributes`` file of a repo's initial commit (real Hub behaviour)."""


def git_blob_oid(content: bytes) -> str:
    """Returns the git blob id of ``content`` (what ``git hash-object`` prints).

    The Hub uses it as the ``oid`` / ``ETag`` of regular (non-LFS) files, and
    ``huggingface_hub`` compares it with the local file to skip unchanged uploads.

    Args:
        content: File bytes.

    Returns:
        40 lowercase hex digits.
    """
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def _now_iso() -> str:
    """Returns the current UTC time in the ``2024-01-31T12:00:00.000Z`` format of the Hub."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + "000Z"


# --------------------------------------------------------------------------------------- state


@dataclass
class Commit:
    """One commit of a stand-in repo.

    Attributes:
        oid: 40-hex commit id.
        files: Full tree of the commit: path in repo -> git blob oid.
        title: Commit summary.
        description: Commit description.
        parent: Parent commit id, ``None`` for the initial commit.
        date: Creation time, Hub format.
    """

    oid: str
    files: dict[str, str]
    title: str
    description: str = ""
    parent: str | None = None
    date: str = field(default_factory=_now_iso)


@dataclass
class Repo:
    """A stand-in repo: its commits and branches.

    Attributes:
        repo_type: ``"model"``, ``"dataset"`` or ``"space"``.
        repo_id: ``namespace/name``.
        private: Visibility flag, reported back but not enforced.
        created_at: Creation time, Hub format.
        commits: Commit id -> commit.
        branches: Branch name -> head commit id.
    """

    repo_type: str
    repo_id: str
    private: bool = False
    created_at: str = field(default_factory=_now_iso)
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit | None:
        """Resolves a branch name, a full commit id or a unique 7+ hex prefix to a commit.

        Args:
            revision: Revision as given in the URL.

        Returns:
            The commit, or ``None`` when the revision is unknown.
        """
        if revision in self.branches:
            return self.commits[self.branches[revision]]
        if revision in self.commits:
            return self.commits[revision]
        if len(revision) >= 7 and all(c in "0123456789abcdef" for c in revision):
            matches = [oid for oid in self.commits if oid.startswith(revision)]
            if len(matches) == 1:
                return self.commits[matches[0]]
        return None


class HubState:
    """Repos and blobs of the stand-in Hub, plus a log of the requests it served.

    Blobs are content-addressed by git blob oid and kept in memory, or as files under
    ``storage_dir / "blobs"`` when a folder is given.

    Args:
        storage_dir: Optional folder for blob contents; created if missing.
        user: Name of the fake user.
        orgs: Organisations reported by ``whoami``.
    """

    def __init__(
        self,
        storage_dir: str | Path | None = None,
        *,
        user: str = DEFAULT_USER,
        orgs: tuple[str, ...] = DEFAULT_ORGS,
    ) -> None:
        self.user = user
        self.orgs = tuple(orgs)
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.RLock()
        self._blob_dir = Path(storage_dir) / "blobs" if storage_dir is not None else None
        if self._blob_dir is not None:
            self._blob_dir.mkdir(parents=True, exist_ok=True)
        self._memory_blobs: dict[str, bytes] = {}
        self._commit_counter = 0

    # blobs -----------------------------------------------------------------------------

    def put_blob(self, content: bytes) -> str:
        """Stores ``content`` and returns its git blob oid."""
        oid = git_blob_oid(content)
        if self._blob_dir is None:
            self._memory_blobs[oid] = content
        else:
            path = self._blob_dir / oid
            if not path.exists():
                path.write_bytes(content)
        return oid

    def get_blob(self, oid: str) -> bytes:
        """Returns the content of blob ``oid``."""
        if self._blob_dir is None:
            return self._memory_blobs[oid]
        return (self._blob_dir / oid).read_bytes()

    def blob_size(self, oid: str) -> int:
        """Returns the size in bytes of blob ``oid``."""
        if self._blob_dir is None:
            return len(self._memory_blobs[oid])
        return (self._blob_dir / oid).stat().st_size

    # repos and commits -------------------------------------------------------------------

    def get_repo(self, repo_type: str, repo_id: str) -> Repo | None:
        """Returns the repo, or ``None`` when it does not exist."""
        return self.repos.get((repo_type, repo_id))

    def create_repo(self, repo_type: str, repo_id: str, *, private: bool = False) -> Repo:
        """Creates a repo with an initial commit holding ``.gitattributes`` on ``main``.

        Args:
            repo_type: ``"model"``, ``"dataset"`` or ``"space"``.
            repo_id: ``namespace/name``.
            private: Visibility flag.

        Returns:
            The new repo.
        """
        repo = Repo(repo_type=repo_type, repo_id=repo_id, private=private)
        self.repos[(repo_type, repo_id)] = repo
        files = {".gitattributes": self.put_blob(INITIAL_GITATTRIBUTES)}
        self.add_commit(repo, "main", files, title="initial commit", parent=None)
        return repo

    def add_commit(
        self,
        repo: Repo,
        branch: str,
        files: dict[str, str],
        *,
        title: str,
        description: str = "",
        parent: str | None,
    ) -> Commit:
        """Records a commit with the full tree ``files`` and moves ``branch`` to it.

        Args:
            repo: Target repo.
            branch: Branch to advance (created if missing).
            files: Complete tree of the new commit, path -> blob oid.
            title: Commit summary.
            description: Commit description.
            parent: Parent commit id.

        Returns:
            The new commit, whose id is a fresh 40-hex sha1.
        """
        self._commit_counter += 1
        seed = json.dumps(
            [repo.repo_type, repo.repo_id, parent, sorted(files.items()), title, time.time_ns(),
             self._commit_counter]
        )
        oid = hashlib.sha1(seed.encode()).hexdigest()
        commit = Commit(oid=oid, files=dict(files), title=title, description=description, parent=parent)
        repo.commits[oid] = commit
        repo.branches[branch] = oid
        return commit


# --------------------------------------------------------------------------------------- errors


class HubError(Exception):
    """An error answered the way the Hub does, so huggingface_hub raises the matching class.

    Args:
        status: HTTP status code.
        message: Human-readable message (``{"error": ...}`` body and ``X-Error-Message``).
        code: ``X-Error-Code`` header value, e.g. ``RepoNotFound``, ``RevisionNotFound``,
            ``EntryNotFound``; ``None`` for none.
        headers: Extra response headers (e.g. ``X-Repo-Commit``).
    """

    def __init__(
        self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}

    def to_response(self, head_only: bool = False) -> Response:
        """Builds the HTTP response (without a body for ``HEAD`` requests)."""
        headers = {"X-Error-Message": self.message, **self.headers}
        if self.code is not None:
            headers["X-Error-Code"] = self.code
        if head_only:
            return Response(status_code=self.status, headers=headers)
        return JSONResponse({"error": self.message}, status_code=self.status, headers=headers)


def _repo_not_found(repo_type: str, repo_id: str) -> HubError:
    return HubError(404, f"Repository not found: {repo_type} {repo_id}", "RepoNotFound")


# --------------------------------------------------------------------------------------- app


def create_hub_app(state: HubState) -> FastAPI:
    """Builds the FastAPI app serving the stand-in Hub API over ``state``.

    Args:
        state: Repos, blobs and request log shared with the caller.

    Returns:
        The app (run it with uvicorn, see :class:`HubServer`).
    """
    app = FastAPI(title="Hugging Face Hub stand-in", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(HubError)
    async def _hub_error_handler(request: Request, exc: HubError) -> Response:
        return exc.to_response(head_only=request.method == "HEAD")

    @app.middleware("http")
    async def _log_requests(request: Request, call_next: Callable) -> Response:
        with state.lock:
            state.requests.append((request.method, request.url.path))
        return await call_next(request)

    def base_url(request: Request) -> str:
        return str(request.base_url).rstrip("/")

    def require_token(request: Request) -> None:
        auth = request.headers.get("authorization", "")
        if not auth.lower().startswith("bearer ") or not auth[7:].strip():
            raise HubError(401, "Invalid credentials in Authorization header")

    def repo_type_of(kind: str) -> str:
        if kind not in REPO_KINDS:
            raise HubError(404, f"Unknown repo kind {kind!r}")
        return REPO_KINDS[kind]

    def find_repo(repo_type: str, namespace: str, name: str) -> Repo:
        repo = state.get_repo(repo_type, f"{namespace}/{name}")
        if repo is None:
            raise _repo_not_found(repo_type, f"{namespace}/{name}")
        return repo

    def find_commit(repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    def repo_url(request: Request, repo: Repo) -> str:
        return f"{base_url(request)}/{URL_PREFIXES[repo.repo_type]}{repo.repo_id}"

    # ---- user and repos -------------------------------------------------------------------

    @app.get("/api/stand-in/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/api/whoami-v2")
    async def whoami(request: Request) -> dict:
        require_token(request)
        return {
            "type": "user",
            "id": "0" * 24,
            "name": state.user,
            "fullname": "Stand-in Tester",
            "email": f"{state.user}@example.invalid",
            "emailVerified": True,
            "isPro": False,
            "orgs": [
                {"type": "org", "name": org, "fullname": org, "roleInOrg": "admin"} for org in state.orgs
            ],
            "auth": {"type": "access_token", "accessToken": {"displayName": "stand-in", "role": "write"}},
        }

    @app.post("/api/validate-yaml")
    async def validate_yaml() -> dict:
        return {"errors": [], "warnings": []}

    @app.post("/api/repos/create")
    async def create_repo(request: Request) -> Response:
        require_token(request)
        payload = await request.json()
        repo_type = payload.get("type") or "model"
        if repo_type not in URL_PREFIXES:
            raise HubError(400, f"Unsupported repo type {repo_type!r}")
        repo_id = f"{payload.get('organization') or state.user}/{payload['name']}"
        with state.lock:
            existing = state.get_repo(repo_type, repo_id)
            if existing is not None:
                message = f"You already created this {repo_type} repo"
                return JSONResponse(
                    {"error": message, "url": repo_url(request, existing)},
                    status_code=409,
                    headers={"X-Error-Message": message},
                )
            private = bool(payload.get("private")) or payload.get("visibility") == "private"
            repo = state.create_repo(repo_type, repo_id, private=private)
        return JSONResponse({"url": repo_url(request, repo), "name": repo_id, "id": repo_id})

    @app.delete("/api/repos/delete")
    async def delete_repo(request: Request) -> dict:
        require_token(request)
        payload = await request.json()
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or state.user}/{payload['name']}"
        with state.lock:
            if state.repos.pop((repo_type, repo_id), None) is None:
                raise _repo_not_found(repo_type, repo_id)
        return {}

    # ---- repo info, tree, paths-info, refs ------------------------------------------------

    def repo_info(request: Request, kind: str, namespace: str, name: str, revision: str) -> dict:
        repo_type = repo_type_of(kind)
        blobs = request.query_params.get("blobs", "").lower() in ("1", "true")
        with state.lock:
            repo = find_repo(repo_type, namespace, name)
            commit = find_commit(repo, revision)
            siblings = []
            for path, oid in sorted(commit.files.items()):
                sibling: dict[str, Any] = {"rfilename": path}
                if blobs:
                    sibling.update(size=state.blob_size(oid), blobId=oid)
                siblings.append(sibling)
            used_storage = sum(state.blob_size(oid) for oid in set(commit.files.values()))
        info: dict[str, Any] = {
            "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "author": namespace,
            "sha": commit.oid,
            "lastModified": commit.date,
            "createdAt": repo.created_at,
            "private": repo.private,
            "disabled": False,
            "gated": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
            "usedStorage": used_storage,
        }
        if repo_type == "model":
            info["modelId"] = repo.repo_id
        return info

    @app.get("/api/{kind}/{namespace}/{name}")
    async def info_main(request: Request, kind: str, namespace: str, name: str) -> dict:
        return repo_info(request, kind, namespace, name, "main")

    @app.get("/api/{kind}/{namespace}/{name}/revision/{revision}")
    async def info_revision(request: Request, kind: str, namespace: str, name: str, revision: str) -> dict:
        return repo_info(request, kind, namespace, name, revision)

    def entry(commit: Commit, path: str, *, is_dir: bool) -> dict:
        if is_dir:
            inside = sorted((p, o) for p, o in commit.files.items() if p.startswith(path + "/"))
            tree_oid = hashlib.sha1(json.dumps(inside).encode()).hexdigest()
            return {"type": "directory", "oid": tree_oid, "size": 0, "path": path}
        oid = commit.files[path]
        return {"type": "file", "oid": oid, "size": state.blob_size(oid), "path": path}

    def directories(commit: Commit) -> set[str]:
        dirs = set()
        for path in commit.files:
            parts = path.split("/")[:-1]
            dirs.update("/".join(parts[: i + 1]) for i in range(len(parts)))
        return dirs

    def tree(request: Request, kind: str, namespace: str, name: str, revision: str, path: str) -> list[dict]:
        repo_type = repo_type_of(kind)
        recursive = request.query_params.get("recursive", "").lower() in ("1", "true")
        path = path.strip("/")
        with state.lock:
            commit = find_commit(find_repo(repo_type, namespace, name), revision)
            dirs = directories(commit)
            if path and path not in dirs:
                raise HubError(404, f"Path {path!r} is not a folder at {revision}", "EntryNotFound",
                               {"X-Repo-Commit": commit.oid})
            prefix = f"{path}/" if path else ""
            results = []
            for candidate in sorted(dirs | set(commit.files)):
                if not candidate.startswith(prefix):
                    continue
                if not recursive and "/" in candidate[len(prefix):]:
                    continue
                results.append(entry(commit, candidate, is_dir=candidate in dirs))
        return results

    @app.get("/api/{kind}/{namespace}/{name}/tree/{revision}")
    async def tree_root(request: Request, kind: str, namespace: str, name: str, revision: str) -> list[dict]:
        return tree(request, kind, namespace, name, revision, "")

    @app.get("/api/{kind}/{namespace}/{name}/tree/{revision}/{path:path}")
    async def tree_path(
        request: Request, kind: str, namespace: str, name: str, revision: str, path: str
    ) -> list[dict]:
        return tree(request, kind, namespace, name, revision, path)

    @app.post("/api/{kind}/{namespace}/{name}/paths-info/{revision}")
    async def paths_info(request: Request, kind: str, namespace: str, name: str, revision: str) -> list[dict]:
        repo_type = repo_type_of(kind)
        body = (await request.body()).decode()
        if request.headers.get("content-type", "").startswith("application/json"):
            paths = json.loads(body or "{}").get("paths", [])
        else:
            paths = parse_qs(body).get("paths", [])
        with state.lock:
            commit = find_commit(find_repo(repo_type, namespace, name), revision)
            dirs = directories(commit)
            return [
                entry(commit, path.strip("/"), is_dir=path.strip("/") in dirs)
                for path in paths
                if path.strip("/") in commit.files or path.strip("/") in dirs
            ]

    @app.get("/api/{kind}/{namespace}/{name}/refs")
    async def refs(kind: str, namespace: str, name: str) -> dict:
        with state.lock:
            repo = find_repo(repo_type_of(kind), namespace, name)
            branches = [
                {"name": branch, "ref": f"refs/heads/{branch}", "targetCommit": oid}
                for branch, oid in sorted(repo.branches.items())
            ]
        return {"branches": branches, "tags": [], "converts": []}

    @app.post("/api/{kind}/{namespace}/{name}/branch/{branch}")
    async def create_branch(request: Request, kind: str, namespace: str, name: str, branch: str) -> dict:
        require_token(request)
        body = await request.body()
        starting_point = (json.loads(body) if body else {}).get("startingPoint") or "main"
        with state.lock:
            repo = find_repo(repo_type_of(kind), namespace, name)
            if branch in repo.branches:
                raise HubError(409, f"Reference already exists: refs/heads/{branch}")
            repo.branches[branch] = find_commit(repo, starting_point).oid
        return {}

    # ---- uploads --------------------------------------------------------------------------

    @app.post("/api/{kind}/{namespace}/{name}/preupload/{revision}")
    async def preupload(request: Request, kind: str, namespace: str, name: str, revision: str) -> dict:
        require_token(request)
        payload = await request.json()
        with state.lock:
            repo = find_repo(repo_type_of(kind), namespace, name)
            commit = repo.resolve(revision)  # may be a branch that the commit will create later
            current = commit.files if commit is not None else {}
            files = [
                {"path": item["path"], "uploadMode": "regular", "shouldIgnore": False,
                 "oid": current.get(item["path"])}
                for item in payload.get("files", [])
            ]
        return {"files": files, "commitOid": commit.oid if commit is not None else None}

    @app.post("/api/{kind}/{namespace}/{name}/commit/{revision}")
    async def commit(request: Request, kind: str, namespace: str, name: str, revision: str) -> dict:
        require_token(request)
        if request.query_params.get("create_pr") in ("1", "true"):
            raise HubError(501, "Pull requests are not supported by the Hub stand-in")
        lines = [json.loads(line) for line in (await request.body()).decode().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "The first NDJSON line of a commit must be its header")
        header = lines[0]["value"]
        with state.lock:
            repo = find_repo(repo_type_of(kind), namespace, name)
            if revision not in repo.branches:
                if repo.resolve(revision) is not None:
                    raise HubError(400, f"Cannot commit to {revision!r}: not a branch")
                raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            head = repo.commits[repo.branches[revision]]
            parent_commit = header.get("parentCommit")
            if parent_commit and not head.oid.startswith(parent_commit):
                raise HubError(
                    412, f"A commit has happened since {parent_commit}. Please refresh and try again."
                )
            files = dict(head.files)
            for line in lines[1:]:
                key, value = line.get("key"), line.get("value", {})
                path = str(value.get("path", "")).strip("/")
                if key == "file":
                    if value.get("encoding", "base64") == "base64":
                        content = base64.b64decode(value["content"])
                    else:
                        content = str(value["content"]).encode()
                    files[path] = state.put_blob(content)
                elif key == "deletedFile":
                    if files.pop(path, None) is None:
                        raise HubError(404, f"File not found: {path}", "EntryNotFound")
                elif key == "deletedFolder":
                    inside = [p for p in files if p.startswith(path + "/")]
                    if not inside:
                        raise HubError(404, f"Folder not found: {path}", "EntryNotFound")
                    for p in inside:
                        del files[p]
                else:
                    raise HubError(400, f"Commit operation {key!r} is not supported by the Hub stand-in")
            new = state.add_commit(
                repo,
                revision,
                files,
                title=header.get("summary", ""),
                description=header.get("description", ""),
                parent=head.oid,
            )
        return {
            "success": True,
            "commitOid": new.oid,
            "commitUrl": f"{repo_url(request, repo)}/commit/{new.oid}",
            "pullRequestUrl": None,
        }

    # ---- downloads ------------------------------------------------------------------------

    def resolve_file(request: Request, repo_type: str, namespace: str, name: str, revision: str,
                     path: str) -> Response:
        with state.lock:
            commit = find_commit(find_repo(repo_type, namespace, name), revision)
            oid = commit.files.get(path)
            if oid is None:
                raise HubError(
                    404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": commit.oid}
                )
            content = state.get_blob(oid)
        headers = {
            "ETag": f'"{oid}"',
            "X-Repo-Commit": commit.oid,
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
            "Content-Length": str(len(content)),
        }
        if request.method == "HEAD":
            return Response(status_code=200, headers=headers)
        range_header = request.headers.get("range", "")
        if range_header.startswith("bytes=") and "," not in range_header:
            start_text, _, end_text = range_header[6:].partition("-")
            if start_text:
                start = int(start_text)
                end = min(int(end_text), len(content) - 1) if end_text else len(content) - 1
            else:  # suffix range: last N bytes
                start, end = max(len(content) - int(end_text), 0), len(content) - 1
            if start >= len(content):
                return Response(status_code=416, headers={"Content-Range": f"bytes */{len(content)}"})
            headers.update({"Content-Range": f"bytes {start}-{end}/{len(content)}",
                            "Content-Length": str(end - start + 1)})
            return Response(content=content[start : end + 1], status_code=206, headers=headers)
        return Response(content=content, status_code=200, headers=headers)

    for prefix, repo_type in (("/datasets", "dataset"), ("/spaces", "space"), ("", "model")):

        def make_endpoint(repo_type: str = repo_type) -> Callable:
            async def endpoint(
                request: Request, namespace: str, name: str, revision: str, path: str
            ) -> Response:
                return resolve_file(request, repo_type, namespace, name, revision, path)

            return endpoint

        app.add_api_route(
            prefix + "/{namespace}/{name}/resolve/{revision}/{path:path}",
            make_endpoint(),
            methods=["GET", "HEAD"],
            name=f"resolve_{repo_type}",
        )

    return app


# --------------------------------------------------------------------------------------- server


class HubServer:
    """Runs the stand-in Hub with uvicorn in a daemon thread on ``127.0.0.1`` (free port).

    Args:
        storage_dir: Optional folder for blob contents (memory otherwise).
        user: Name of the fake user.
        orgs: Organisations reported by ``whoami``.

    Attributes:
        state: The :class:`HubState` served (repos, blobs, request log).
        base_url: ``http://127.0.0.1:<port>`` once started.
    """

    def __init__(
        self,
        storage_dir: str | Path | None = None,
        *,
        user: str = DEFAULT_USER,
        orgs: tuple[str, ...] = DEFAULT_ORGS,
    ) -> None:
        self.state = HubState(storage_dir, user=user, orgs=orgs)
        self.app = create_hub_app(self.state)
        self.base_url = ""
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    def start(self, timeout: float = 15.0) -> str:
        """Starts serving and waits until the server answers HTTP requests.

        Args:
            timeout: Seconds to wait for the server to answer.

        Returns:
            The base URL, e.g. ``http://127.0.0.1:43817`` (no trailing slash).

        Raises:
            RuntimeError: When the server is already started or does not come up in time.
        """
        if self._server is not None:
            raise RuntimeError("The Hub stand-in is already started")
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", 0))
        port = self._socket.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{port}"
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            loop="asyncio",
            http="h11",
            ws="none",
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, name="hub-stand-in", daemon=True
        )
        self._thread.start()
        self._wait_until_ready(timeout)
        return self.base_url

    def _wait_until_ready(self, timeout: float) -> None:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            assert self._thread is not None
            if not self._thread.is_alive():
                break
            try:
                with opener.open(f"{self.base_url}/api/stand-in/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError) as error:
                last_error = error
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"The Hub stand-in did not come up on {self.base_url}: {last_error!r}")

    def stop(self, timeout: float = 10.0) -> None:
        """Stops the server and waits for its thread; safe to call twice.

        Args:
            timeout: Seconds to wait for the server thread to finish.
        """
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():  # pragma: no cover - only when a request hangs
                print("warning: the Hub stand-in thread did not stop in time", file=sys.stderr)
        if self._socket is not None:
            self._socket.close()
        self._server = self._thread = self._socket = None

    def __enter__(self) -> HubServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_hub_server(
    storage_dir: str | Path | None = None, **kwargs: Any
) -> tuple[str, Callable[[], None]]:
    """Starts a stand-in Hub and returns its URL and a function that stops it.

    Args:
        storage_dir: Optional folder for blob contents (e.g. pytest's ``tmp_path``).
        **kwargs: Passed to :class:`HubServer` (``user``, ``orgs``).

    Returns:
        ``(base_url, stop)``: the ``http://127.0.0.1:<port>`` URL and a no-argument stop function.
    """
    server = HubServer(storage_dir, **kwargs)
    return server.start(), server.stop


@contextlib.contextmanager
def running_hub_server(storage_dir: str | Path | None = None, **kwargs: Any) -> Iterator[HubServer]:
    """Context manager around :class:`HubServer`: started on entry, stopped on exit.

    Args:
        storage_dir: Optional folder for blob contents.
        **kwargs: Passed to :class:`HubServer` (``user``, ``orgs``).

    Yields:
        The started server (``.base_url``, ``.state``).
    """
    server = HubServer(storage_dir, **kwargs)
    server.start()
    try:
        yield server
    finally:
        server.stop()


# --------------------------------------------------------------------------------------- client side


def point_hub_at(
    monkeypatch: Any,
    base_url: str,
    cache_dir: str | Path,
    *,
    token: str = DEFAULT_TOKEN,
    disable_xet: bool = False,
) -> None:
    """Points huggingface_hub (and transformers) of this process at ``base_url`` for one test.

    Applies the recipe of the module docstring through ``monkeypatch``, so it is undone when
    the test ends: endpoint constants, the module-level ``HfApi``, transformers' shared
    ``HfApi``, a fresh Hub cache, a dummy ``HF_TOKEN``, offline mode off, telemetry off.
    ``HF_XET_CACHE`` is set to ``<cache_dir>-xet`` so that ``hf_xet`` (which ``upload_folder``
    starts even though the stand-in never asks for Xet uploads) keeps its logs out of ``$HOME``.

    Args:
        monkeypatch: pytest's ``monkeypatch`` fixture.
        base_url: Stand-in URL, e.g. from :func:`start_hub_server`.
        cache_dir: Folder to use as ``HF_HUB_CACHE`` (created if missing).
        token: Token exported as ``HF_TOKEN``.
        disable_xet: Also set ``HF_HUB_DISABLE_XET`` so that huggingface_hub takes its
            non-Xet code paths (``upload_folder`` then makes one plain ``create_commit``).
    """
    import importlib.util
    from urllib.parse import urlsplit

    import huggingface_hub.constants as constants
    import huggingface_hub.hf_api as hf_api_module

    base_url = base_url.rstrip("/")
    cache_dir = str(cache_dir)
    Path(cache_dir).mkdir(parents=True, exist_ok=True)

    monkeypatch.setattr(constants, "ENDPOINT", base_url)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", base_url + "/{repo_id}/resolve/{revision}/{filename}"
    )
    host = urlsplit(base_url).hostname
    if host:
        monkeypatch.setattr(constants, "HF_URL_HOSTS", constants.HF_URL_HOSTS | {host})
    monkeypatch.setattr(constants, "HF_HUB_CACHE", cache_dir)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(constants, "HF_XET_CACHE", f"{cache_dir}-xet")
    if disable_xet:
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(hf_api_module.api, "endpoint", base_url)

    # transformers caches one HfApi (with the endpoint of its first use) for push_to_hub & co.
    # Import it now, so the instance it builds during the test is discarded afterwards.
    if importlib.util.find_spec("transformers") is not None:
        import transformers.utils.hub as transformers_hub

        monkeypatch.setattr(transformers_hub, "_hf_api", None, raising=False)

    monkeypatch.setenv("HF_ENDPOINT", base_url)
    monkeypatch.setenv("HF_HUB_CACHE", cache_dir)
    monkeypatch.setenv("HF_TOKEN", token)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_XET_CACHE", f"{cache_dir}-xet")
    if disable_xet:
        monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
