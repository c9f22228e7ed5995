"""ONNX export and the onnxruntime backend: round trips against torch, the switch, the errors.

Real exports (torch.onnx dynamo exporter) of the tiny fitted ConvNeXt and of a
two-member ensemble, run by real onnxruntime sessions on the shipped MRI slices.
"""

import json
import shutil
import socket
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import requests

from tumor_classifier import MRIPreprocessor, TumorClassifier
from tumor_classifier.cli import main
from tumor_classifier.ensemble import build_ensemble
from tumor_classifier.exceptions import ExportError, MissingDependencyError, ModelLoadError
from tumor_classifier.onnx_backend import ONNX_CONFIG_NAME, ONNX_MODEL_NAME, OnnxClassifier
from tumor_classifier.onnx_export import INT8_MODEL_NAME, OPSET, cached_graph_dir, model_fingerprint

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def saved_model(fitted_classifier, tmp_path_factory):
    return fitted_classifier.save_pretrained(tmp_path_factory.mktemp("onnx") / "model")


@pytest.fixture(scope="module")
def model_with_graph(saved_model, test_images, tmp_path_factory):
    """A copy of the saved model that carries its own graph (and an int8 one), exported by the CLI."""
    folder = tmp_path_factory.mktemp("onnx") / "model-with-graph"
    shutil.copytree(saved_model, folder)
    command = ["export", "--format", "onnx", str(folder), str(folder), "--quantize", "--images", *map(str, test_images[0])]
    assert main(command) == 0
    return folder


def test_export_round_trip_single_model(model_with_graph, test_images):
    folder = model_with_graph
    torch_clf = TumorClassifier.from_pretrained(folder)
    config = json.loads((folder / ONNX_CONFIG_NAME).read_text())
    assert config["opset"] == OPSET and config["id2label"] == {str(i): c for i, c in enumerate(torch_clf.classes_)}
    assert config["verification"]["images"] == len(test_images[0])
    assert 0 <= config["verification"]["max_probability_difference"] <= TOLERANCE
    assert (folder / INT8_MODEL_NAME).is_file() and 0 <= config["int8"]["int8_identical_labels"] <= len(test_images[0])
    graph = OnnxClassifier.load(folder, threads=1)
    pixels = np.stack([torch_clf.preprocessor_.prepare_array(p) for p in test_images[0]])
    values = graph.normalize(pixels, torch_clf.preprocessor_.mean, torch_clf.preprocessor_.std)
    expected = torch_clf.predict_proba(test_images[0])
    for batch in (values[:1], values[:5], values):  # the batch axis is dynamic
        logits = graph.logits(batch)
        proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        np.testing.assert_allclose(proba, expected[: len(batch)], atol=TOLERANCE)


def test_an_ensemble_exports_as_one_graph_with_its_temperature(saved_model, test_images, tmp_path):
    folder = tmp_path / "ensemble"
    build_ensemble([saved_model, saved_model], temperature=0.5, output_dir=folder)
    ensemble = TumorClassifier.from_pretrained(folder)
    result = ensemble.export_onnx(folder, images=test_images[0])  # the ensemble folder carries its graph
    assert result.max_probability_difference <= TOLERANCE and "opset 20" in result.summary()
    config = json.loads((folder / ONNX_CONFIG_NAME).read_text())
    assert config["ensemble_members"] == 2 and config["ensemble_temperature"] == 0.5
    # The temperature is inside the graph: sharper than the single member, equal to torch's ensemble.
    onnx_ensemble = TumorClassifier.from_pretrained(folder, backend="onnx")
    assert "model_" not in vars(onnx_ensemble)
    np.testing.assert_allclose(onnx_ensemble.predict_proba(test_images[0]), ensemble.predict_proba(test_images[0]), atol=TOLERANCE)
    single = TumorClassifier.from_pretrained(saved_model).predict_proba(test_images[0])
    assert np.abs(onnx_ensemble.predict_proba(test_images[0]) - single).max() > 1e-3


def test_the_onnx_backend_predicts_as_torch_and_loads_torch_only_to_explain(model_with_graph, test_images):
    folder = model_with_graph
    paths = test_images[0]
    torch_clf = TumorClassifier.from_pretrained(folder)
    onnx_clf = TumorClassifier.from_pretrained(folder, backend="onnx")
    assert onnx_clf.backend_ == "onnx" and "model_" not in vars(onnx_clf)  # the folder's graph, no torch model
    np.testing.assert_allclose(onnx_clf.predict_proba(paths), torch_clf.predict_proba(paths), atol=TOLERANCE)
    np.testing.assert_array_equal(onnx_clf.predict(paths), torch_clf.predict(paths))
    np.testing.assert_allclose(onnx_clf.tumor_probability(paths), torch_clf.tumor_probability(paths), atol=TOLERANCE)
    onnx_clf.set_params(test_time_augmentation=True)
    torch_clf.set_params(test_time_augmentation=True)
    np.testing.assert_allclose(onnx_clf.predict_proba(paths), torch_clf.predict_proba(paths), atol=TOLERANCE)
    assert "model_" not in vars(onnx_clf)
    explanation = onnx_clf.explain(paths[0], method="gradcam")[0]  # gradients: the torch model, loaded now
    assert "model_" in vars(onnx_clf) and onnx_clf.attribution_method_ == torch_clf.attribution_method_
    assert explanation.label == torch_clf.explain(paths[0], method="gradcam")[0].label
    assert onnx_clf.predict_proba(paths).dtype == np.float32


def test_without_a_fresh_graph_in_the_folder_one_is_exported_to_the_cache(model_with_graph, test_images, tmp_path):
    folder = tmp_path / "changed"
    shutil.copytree(model_with_graph, folder)
    config = json.loads((folder / "config.json").read_text())
    config["note"] = "edited after the export"  # the folder's graph no longer describes this folder
    (folder / "config.json").write_text(json.dumps(config))
    fingerprint = model_fingerprint(folder, MRIPreprocessor.from_pretrained(folder))
    with pytest.warns(UserWarning, match="exported from other weights"):
        first = TumorClassifier.from_pretrained(folder, backend="onnx")
    assert first.onnx_model_.path.parent == cached_graph_dir(fingerprint)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        second = TumorClassifier.from_pretrained(folder, backend="onnx")
    assert "model_" not in vars(second)  # the cached graph was reused, no export, no torch model
    np.testing.assert_allclose(second.predict_proba(test_images[0]), first.predict_proba(test_images[0]), atol=1e-6)


def test_the_cli_predicts_with_either_backend(model_with_graph, test_images, capsys):
    folder = model_with_graph
    images = [str(p) for p in test_images[0][:3]]
    rows = {}
    for backend in ("torch", "onnx"):
        assert main(["predict", *images, "--model", str(folder), "--backend", backend, "--json"]) == 0
        rows[backend] = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [r["label"] for r in rows["onnx"]] == [r["label"] for r in rows["torch"]]
    for a, b in zip(rows["onnx"], rows["torch"]):
        assert max(abs(a["probabilities"][c] - b["probabilities"][c]) for c in a["probabilities"]) <= TOLERANCE


def test_an_export_above_the_tolerance_fails_and_leaves_nothing(saved_model, test_images, tmp_path):
    clf = TumorClassifier.from_pretrained(saved_model)
    with pytest.raises(ExportError, match="above the tolerance 0"):
        clf.export_onnx(tmp_path / "strict", images=test_images[0], tolerance=0.0)
    assert not (tmp_path / "strict").exists()  # not even the folder it would have written to


def test_without_onnxruntime_the_error_says_what_to_install(saved_model, monkeypatch, capsys):
    # A None entry makes `import onnxruntime` raise ImportError, as when it is not installed.
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(MissingDependencyError, match=r'pip install "tumor-classifier\[onnx\]"') as error:
        TumorClassifier.from_pretrained(saved_model, backend="onnx")
    assert isinstance(error.value, ImportError)
    assert main(["predict", "x.jpg", "--model", str(saved_model), "--backend", "onnx"]) == 2
    assert 'pip install "tumor-classifier[onnx]"' in capsys.readouterr().err
    with pytest.raises(MissingDependencyError, match="onnxruntime"):
        TumorClassifier.from_pretrained(saved_model).export_onnx(saved_model.parent / "never")


def test_an_unknown_backend_is_refused(saved_model):
    with pytest.raises(ValueError, match="Unknown backend 'tensorrt'; choose one of torch, onnx"):
        TumorClassifier.from_pretrained(saved_model, backend="tensorrt")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_serve_with_the_onnx_backend_answers_as_torch(model_with_graph, test_images):
    """`tumor-classifier serve --backend onnx` in its own process, asked over real HTTP."""
    folder, image = model_with_graph, test_images[0][0]
    port = _free_port()
    code = "import sys; from tumor_classifier.cli import main; sys.exit(main(sys.argv[1:]))"
    command = [sys.executable, "-c", code, "serve", "--model", str(folder), "--port", str(port), "--backend", "onnx"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline, answer = time.monotonic() + 300, None
        while answer is None and server.poll() is None and time.monotonic() < deadline:
            try:
                with open(image, "rb") as handle:
                    answer = requests.post(f"http://127.0.0.1:{port}/api/v1/predict", files={"file": (image.name, handle, "image/jpeg")}, timeout=60)
            except requests.ConnectionError:
                time.sleep(0.5)
        assert answer is not None, f"the server did not answer (exit code {server.poll()})"
        assert answer.status_code == 200, answer.text
    finally:
        server.terminate()
        out, err = server.communicate(timeout=60)
    assert "onnx backend, heatmaps in torch" in out, (out, err)
    body = answer.json()
    expected = TumorClassifier.from_pretrained(folder).verdicts([image])[0]
    assert body["class"] == expected.label
    assert max(abs(body["probabilities"][c] - p) for c, p in expected.probabilities.items()) <= TOLERANCE
    assert abs(body["mri_score"] - expected.mri_score) <= 1e-5 and body["not_brain_mri"] is (not expected.brain_mri)


def test_an_onnx_predict_imports_neither_transformers_nor_captum(model_with_graph, test_images):
    """The command in a fresh interpreter, with both graphs already in the (test) cache."""
    from tumor_classifier.mri_check import MRICheck

    MRICheck.load().prepare_engine("onnx")  # the check's graph, exported once per test session
    code = (
        "import sys; from tumor_classifier.cli import main\n"
        f"code = main(['predict', {str(test_images[0][0])!r}, '--model', {str(model_with_graph)!r}, '--backend', 'onnx', '--json'])\n"
        "print(code, sorted(m for m in ('transformers', 'captum', 'huggingface_hub', 'onnx', 'onnxscript') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "0 []", done.stdout
    assert json.loads(done.stdout.splitlines()[0])["label"] in TumorClassifier.from_pretrained(model_with_graph).classes_.tolist() + ["not_brain_mri"]


@pytest.fixture(scope="module")
def tiny_with_graph(tiny_model_dir, tmp_path_factory):
    """The random-weight 32 px model with its own graph, exported by the CLI."""
    folder = tmp_path_factory.mktemp("onnx") / "tiny-with-graph"
    shutil.copytree(tiny_model_dir, folder)
    assert main(["export", "--format", "onnx", str(folder), str(folder)]) == 0
    return folder


def test_an_exported_graph_folder_given_as_the_model_says_what_it_needs(tiny_with_graph, test_images, tmp_path, capsys):
    """`export MODEL OUT` writes a graph-only folder for other runtimes; given to --model it
    used to read as a folder missing its config.json, with no word of the graph in it."""
    graph_only = tmp_path / "exported"
    graph_only.mkdir()
    for name in (ONNX_MODEL_NAME, ONNX_CONFIG_NAME, "preprocessor_config.json"):
        shutil.copy(tiny_with_graph / name, graph_only / name)
    assert main(["predict", str(test_images[0][0]), "--model", str(graph_only), "--backend", "onnx"]) == 2
    error = capsys.readouterr().err
    assert f"{graph_only} holds an exported ONNX graph" in error and "model folder it was exported from" in error, error


@pytest.mark.parametrize("where", ["model folder", "cache", "its description"])
def test_a_damaged_graph_says_how_to_mend_it(where, tiny_with_graph, test_images, tmp_path, monkeypatch):
    folder = shutil.copytree(tiny_with_graph, tmp_path / "model")
    if where == "its description":
        graph = folder / ONNX_CONFIG_NAME
    elif where == "cache":
        monkeypatch.setenv("TUMOR_CLASSIFIER_CACHE", str(tmp_path / "cache"))
        (folder / ONNX_MODEL_NAME).unlink()
        TumorClassifier.from_pretrained(folder, backend="onnx")  # exports into the cache
        graph = cached_graph_dir(model_fingerprint(folder, MRIPreprocessor.from_pretrained(folder))) / ONNX_MODEL_NAME
    else:
        graph = folder / ONNX_MODEL_NAME
    data = graph.read_bytes()
    graph.write_bytes(data[: min(5000, len(data) // 2)])  # truncated
    with pytest.raises(ModelLoadError) as info:
        TumorClassifier.from_pretrained(folder, backend="onnx")
    message = str(info.value)
    assert str(graph) in message and "delete it" in message, message
    if where != "cache":
        assert f"tumor-classifier export --format onnx {folder} {folder}" in message, message


@pytest.mark.parametrize("bad", ["a file", "inside a file"])
def test_export_refuses_an_out_that_cannot_be_a_folder(bad, tiny_model_dir, tmp_path, capsys):
    blocker = tmp_path / "graph.txt"
    blocker.write_text("not a folder")
    out = blocker if bad == "a file" else blocker / "graph"
    assert main(["export", "--format", "onnx", str(tiny_model_dir), str(out)]) == 2
    error = capsys.readouterr().err
    assert str(out) in error and "folder" in error and "Traceback" not in error, error
    assert blocker.read_text() == "not a folder"


@pytest.mark.parametrize("tolerance", ["-1", "nan", "inf"])
def test_export_refuses_a_tolerance_that_no_graph_can_meet_or_every_graph_meets(tolerance, tiny_model_dir, tmp_path, capsys):
    """A negative or NaN tolerance used to export, then blame the exporter for a
    'mistranslated operation'; an infinite one accepted any graph."""
    out = tmp_path / "graph"
    assert main(["export", "--format", "onnx", str(tiny_model_dir), str(out), "--tolerance", tolerance]) == 2
    error = capsys.readouterr().err
    assert f"--tolerance {tolerance}" in error and "mistranslated" not in error, error
    assert not out.exists()


def test_export_prints_its_result_without_the_exporters_internal_warnings(tiny_model_dir, tmp_path):
    """torch's exporter logged 'torchvision is not installed. Skipping torchvision::nms' and a
    FutureWarning from copyreg, onnxruntime's quantizer a root-logger WARNING: noise for a
    user, who cannot act on any of it."""
    out = tmp_path / "graph"
    command = [sys.executable, "-m", "tumor_classifier.cli", "export", "--format", "onnx", str(tiny_model_dir), str(out), "--quantize"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "ONNX graph (opset 20) written to" in done.stdout and "int8 graph written to" in done.stdout
    for noise in ("torchvision", "FutureWarning", "WARNING:root", "Please consider to run pre-processing"):
        assert noise not in done.stderr, done.stderr
