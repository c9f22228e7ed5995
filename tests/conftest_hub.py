"""Pytest fixtures around the in-process Hugging Face Hub stand-in (see ``hub_server.py``).

pytest does not load this file by itself. Use the fixtures from a test module with::

    from conftest_hub import hub_env, hub_server  # noqa: F401  (pytest fixtures)

or load them for the whole suite from ``tests/conftest.py`` with
``pytest_plugins = ["conftest_hub"]``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hub_server import HubServer, point_hub_at, running_hub_server


@dataclass
class HubEnv:
    """A running stand-in Hub that huggingface_hub / transformers of this process point at.

    Attributes:
        server: The running server (``.base_url``, ``.state`` with repos and request log).
        cache_dir: The fresh ``HF_HUB_CACHE`` in use.
        monkeypatch: The test's ``monkeypatch``, used to switch caches.
    """

    server: HubServer
    cache_dir: Path
    monkeypatch: pytest.MonkeyPatch

    @property
    def base_url(self) -> str:
        """URL of the stand-in, e.g. ``http://127.0.0.1:43817``."""
        return self.server.base_url

    def use_fresh_cache(self, cache_dir: Path) -> Path:
        """Points ``HF_HUB_CACHE`` at another (empty) folder, e.g. before re-downloading.

        Args:
            cache_dir: New cache folder (created if missing).

        Returns:
            ``cache_dir``.
        """
        point_hub_at(self.monkeypatch, self.base_url, cache_dir)
        self.cache_dir = cache_dir
        return cache_dir


@pytest.fixture
def hub_server(tmp_path: Path) -> Iterator[HubServer]:
    """A stand-in Hub on 127.0.0.1 for one test, storing blobs under ``tmp_path``."""
    with running_hub_server(tmp_path / "hub-storage") as server:
        yield server


@pytest.fixture
def hub_env(hub_server: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> HubEnv:
    """The stand-in Hub, with huggingface_hub / transformers pointed at it and a fresh cache."""
    cache_dir = tmp_path / "hf-cache"
    point_hub_at(monkeypatch, hub_server.base_url, cache_dir)
    return HubEnv(server=hub_server, cache_dir=cache_dir, monkeypatch=monkeypatch)
