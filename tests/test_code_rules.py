"""Rules the code base keeps, read from the source (each has let a defect through before).

* A test module sets ``pytestmark`` once: a second assignment replaces the first, and a
  ``skipif`` in it was silently lost that way (test_browser.py).
* Test modules do not import each other (shared helpers live in conftest.py or a helper
  module that pytest does not collect).
* The library writes no environment variable: only entry points do (space/app.py, the
  CLI's ``serve``), so importing ``tumor_classifier.app`` changes nothing process-wide.
* Argument errors are ``ValueError`` too, so ``except ValueError`` catches them.
* The app package imports one way: uploads -> volume_uploads -> analysis -> volume_analysis
  -> ui, rest -> server -> __init__,
  and none of its modules grows past about 450 lines.
* Imports flow one way below preprocessing: the decoder (decoding and its parts) imports
  only the exceptions, the augmentation nothing of the package; preprocessing re-exports what moved out of it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tumor_classifier import InvalidArgumentError, TumorClassifierError

ROOT = Path(__file__).resolve().parents[1]
TESTS = sorted(ROOT.glob("tests/test_*.py"))
PACKAGE = sorted((ROOT / "tumor_classifier").rglob("*.py"))


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


@pytest.mark.parametrize("path", TESTS, ids=lambda p: p.name)
def test_pytestmark_is_set_once(path):
    assigned = [
        node.lineno
        for node in _tree(path).body
        if isinstance(node, (ast.Assign, ast.AnnAssign))
        for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
        if isinstance(target, ast.Name) and target.id == "pytestmark"
    ]
    assert len(assigned) <= 1, f"{path.name} sets pytestmark on lines {assigned}; the last one wins, put the marks in one list"


@pytest.mark.parametrize("path", TESTS, ids=lambda p: p.name)
def test_test_modules_do_not_import_each_other(path):
    imported = set()
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
    assert not {name for name in imported if name.startswith("test_")}, f"{path.name} imports a test module"


def _environment_writes(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, enclosing function) of every ``os.environ[...] = ``, ``os.environ.update/setdefault/pop``, ``os.putenv``."""
    writes = []

    def is_environ(node: ast.AST) -> bool:
        return isinstance(node, ast.Attribute) and node.attr == "environ" and isinstance(node.value, ast.Name) and node.value.id == "os"

    def visit(node: ast.AST, function: str) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            function = node.name
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.Delete)):
            targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
            if any(isinstance(t, ast.Subscript) and is_environ(t.value) for t in targets):
                writes.append((node.lineno, function))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            if (is_environ(owner) and node.func.attr in {"update", "setdefault", "pop", "clear", "__setitem__"}) or (
                isinstance(owner, ast.Name) and owner.id == "os" and node.func.attr in {"putenv", "unsetenv"}
            ):
                writes.append((node.lineno, function))
        for child in ast.iter_child_nodes(node):
            visit(child, function)

    visit(tree, "<module>")
    return writes


def test_the_library_writes_no_environment_variable():
    allowed = {("cli.py", "_serve")}  # the entry point of `tumor-classifier serve`
    found = [
        f"{path.relative_to(ROOT)}:{line} in {function}"
        for path in PACKAGE
        for line, function in _environment_writes(_tree(path))
        if (path.name, function) not in allowed
    ]
    assert not found, f"environment written by library code: {found}"
    assert _environment_writes(_tree(ROOT / "tumor_classifier" / "cli.py")), "serve must switch analytics off itself"


def test_the_environment_check_sees_a_write():
    assert _environment_writes(ast.parse("import os\nos.environ['X'] = '1'\nos.environ.setdefault('Y', '2')")) == [(2, "<module>"), (3, "<module>")]


def test_argument_errors_are_value_errors():
    assert issubclass(InvalidArgumentError, ValueError) and issubclass(InvalidArgumentError, TumorClassifierError)
    from tumor_classifier.app import normalize_method

    with pytest.raises(ValueError, match="Unknown heatmap method 'sobel'"):
        normalize_method("sobel")


def test_no_bare_base_class_for_argument_errors_in_checked_modules():
    """The modules converted so far raise InvalidArgumentError, not the bare base class, for bad arguments."""
    checked = sorted((ROOT / "tumor_classifier" / "app").glob("*.py")) + [ROOT / "tumor_classifier" / "models.py"]
    assert len(checked) > 1
    for path in checked:
        name = path.relative_to(ROOT / "tumor_classifier")
        bare = [
            node.lineno
            for node in ast.walk(_tree(path))
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call)
            and isinstance(node.exc.func, ast.Name) and node.exc.func.id == "TumorClassifierError"
            and "did not start" not in ast.unparse(node.exc)
        ]
        assert not bare, f"{name} raises the bare TumorClassifierError on lines {bare}"


def _package_imports(name: str) -> set[str]:
    """The package modules ``tumor_classifier/<name>.py`` imports, at any depth of its code."""
    found = set()
    for node in ast.walk(_tree(ROOT / "tumor_classifier" / f"{name}.py")):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found.update([node.module.split(".")[0]] if node.module else [alias.name for alias in node.names])
    return found


def test_the_decoder_and_the_augmentation_sit_below_preprocessing():
    decoder = {"decoding", "encoded_images", "grey_levels"}  # decoding and the parts it re-exports
    for name in decoder:
        assert _package_imports(name) <= decoder | {"exceptions"}, f"{name} imports {_package_imports(name)}"
    assert _package_imports("encoded_images") == {"exceptions"}
    assert _package_imports("augmentation") == set()
    assert {"decoding", "augmentation"} <= _package_imports("preprocessing")


def test_names_that_left_preprocessing_still_import_from_it():
    from tumor_classifier import augmentation, decoding, preprocessing

    moved = [
        (decoding, ["ACCEPTED_FORMATS_TEXT", "ACCEPTED_INPUTS", "DECODED_FORMATS", "MAX_DECODED_SIDE", "MAX_FILE_BYTES",
                    "MAX_IMAGE_SIDE", "MIN_IMAGE_SIDE", "load_image", "read_header"]),
        (augmentation, ["AugmentationConfig", "BatchAugmenter", "head_mask", "HEAD_MASK_THRESHOLD", "HEAD_MASK_OPENING",
                        "HEAD_MASK_CLOSING", "HEAD_MASK_GRID"]),
    ]
    for home, names in moved:
        for name in names:
            assert getattr(preprocessing, name) is getattr(home, name), f"preprocessing.{name} is not {home.__name__}.{name}"


def test_the_attributions_package_imports_only_downward():
    """Its modules import, of the package, only modules that import nothing of it back; inside it, no circles."""
    package = ROOT / "tumor_classifier" / "attributions"
    allowed_outside = {"exceptions", "locking", "augmentation", "visualization", "folding"}
    inside: dict[str, set[str]] = {}
    for path in sorted(package.glob("*.py")):
        outside, siblings = set(), set()
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.ImportFrom) and node.level == 2:
                outside.add(node.module.split(".")[0])
            elif isinstance(node, ast.ImportFrom) and node.level == 1:
                siblings.add(node.module.split(".")[0])
        assert outside <= allowed_outside, f"attributions/{path.name} imports {sorted(outside - allowed_outside)}"
        inside[path.stem] = siblings
    assert "visualization" not in _package_imports("visualization") and "attributions" not in _package_imports("visualization")
    order: list[str] = []
    while len(order) < len(inside):  # a topological order exists only without circles
        ready = [name for name, needs in inside.items() if name not in order and needs <= set(order)]
        assert ready, f"circular imports among {sorted(set(inside) - set(order))}"
        order.extend(sorted(ready))
    assert order[-1] == "__init__"


def test_the_app_package_imports_one_way_and_stays_small():
    """uploads -> volume_uploads -> analysis -> volume_analysis -> ui, rest (rest_docs) -> server -> __init__:
    each module imports only those before it."""
    package = ROOT / "tumor_classifier" / "app"
    reading = {"uploads", "volume_uploads", "analysis", "volume_analysis"}
    allowed = {
        "uploads": set(),
        "volume_uploads": {"uploads"},
        "rest_docs": set(),
        "analysis": {"uploads"},
        "volume_analysis": {"uploads", "volume_uploads", "analysis"},
        "ui": reading,
        "rest": reading | {"rest_docs"},
        "server": reading | {"ui", "rest"},
        "__init__": reading | {"ui", "rest", "server"},
    }
    modules = sorted(package.glob("*.py"))
    assert {path.stem for path in modules} == set(allowed), "a new app module: place it in this order"
    for path in modules:
        siblings = {
            node.module.split(".")[0]
            for node in ast.walk(_tree(path))
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module
        }
        assert siblings <= allowed[path.stem], f"app/{path.name} imports {sorted(siblings - allowed[path.stem])}"
        lines = len(path.read_text().splitlines())
        assert lines <= 450, f"app/{path.name} has {lines} lines; split it by concern"


def test_the_package_modules_import_one_way():
    """No circles among the top-level modules, counting imports inside functions and under TYPE_CHECKING."""
    modules = {path.stem for path in (ROOT / "tumor_classifier").glob("*.py")} - {"__init__"}
    needs = {name: (_package_imports(name) & modules) - {name} for name in modules}
    order: list[str] = []
    while len(order) < len(modules):  # a topological order exists only without circles
        ready = [name for name in modules if name not in order and needs[name] <= set(order)]
        assert ready, f"circular imports among {sorted(modules - set(order))}"
        order.extend(sorted(ready))
