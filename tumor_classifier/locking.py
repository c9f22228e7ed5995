"""One re-entrant lock per model, for code that must not run two passes through one model at once.

Weakly keyed: a model that is garbage collected takes its lock with it. Used by
:mod:`tumor_classifier.attributions` (the attribution state and hooks) and
:mod:`tumor_classifier.classifier` (the model's forward and backward passes), each with
its own registry.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any


class PerObjectLocks:
    """``locks(obj)`` is the one :class:`threading.RLock` of ``obj`` in this registry."""

    def __init__(self) -> None:
        self._locks: "weakref.WeakKeyDictionary[Any, threading.RLock]" = weakref.WeakKeyDictionary()
        self._guard = threading.Lock()

    def __call__(self, obj: Any) -> threading.RLock:
        with self._guard:
            lock = self._locks.get(obj)
            if lock is None:
                lock = self._locks[obj] = threading.RLock()
            return lock
