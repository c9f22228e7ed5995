"""What ``import tumor_classifier`` and ``tumor-classifier --help`` load: no heavy library.

Each check runs in a fresh interpreter, since this test process has imported everything.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

import tumor_classifier

#: Libraries that only some commands or methods need (about 9 s together on two CPU cores).
HEAVY = ("torch", "transformers", "sklearn", "scipy", "pandas", "captum", "datasets", "matplotlib",
         "gradio", "onnx", "onnxruntime", "nibabel", "pydicom", "imagehash", "huggingface_hub")
_LOADED = f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"


def _loaded_after(code: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", f"import sys\n{code}\n{_LOADED}"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return eval(done.stdout.strip().splitlines()[-1])  # noqa: S307 - our own print of a list of names


def test_import_tumor_classifier_loads_no_heavy_library():
    assert _loaded_after("import tumor_classifier") == []


def test_cli_help_loads_no_heavy_library():
    code = "from tumor_classifier.cli import main\ntry:\n    main(['predict', '--help'])\nexcept SystemExit:\n    pass"
    assert _loaded_after(code) == []


def test_the_errors_load_no_heavy_library_until_not_fitted_error_is_asked_for():
    assert _loaded_after("from tumor_classifier import TumorClassifierError, InvalidImageError") == []
    assert "sklearn" in _loaded_after("from tumor_classifier import NotFittedError")


@pytest.mark.parametrize("name", tumor_classifier.__all__)
def test_every_public_name_imports(name):
    namespace: dict = {}
    exec(f"from tumor_classifier import {name}", namespace)  # noqa: S102 - the statement users write
    assert namespace[name] is getattr(tumor_classifier, name)


def test_not_fitted_error_is_one_class_and_also_scikit_learns():
    import pickle

    from sklearn.exceptions import NotFittedError as SklearnNotFittedError

    from tumor_classifier import NotFittedError, exceptions

    assert exceptions.NotFittedError is NotFittedError and issubclass(NotFittedError, SklearnNotFittedError)
    assert type(pickle.loads(pickle.dumps(NotFittedError("x")))) is NotFittedError
    with pytest.raises(AttributeError):
        tumor_classifier.no_such_name  # noqa: B018
