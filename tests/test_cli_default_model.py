"""'default' names the shipped model wherever a command takes a model: predict, evaluate
and serve's --model, export's MODEL and ensemble's members (it was export's alone; the
others took it for a folder or Hub id and failed)."""

import json
import socket
import subprocess
import sys
from pathlib import Path

from tumor_classifier.cli import main

EXAMPLE = Path(__file__).resolve().parents[1] / "tumor_classifier" / "examples" / "glioma.jpg"


def test_predict_takes_default_for_the_shipped_model(capsys):
    assert main(["predict", str(EXAMPLE), "--json"]) == 0
    shipped = json.loads(capsys.readouterr().out)
    assert main(["predict", str(EXAMPLE), "--model", "default", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == shipped


def test_evaluate_takes_default_for_the_shipped_model(data_dir, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["evaluate", str(data_dir / "Testing"), "--model", "default", "--out", str(out)]) == 0, capsys.readouterr().err
    assert json.loads((out / "metrics.json").read_text())["test"]["n"] == 12


def test_ensemble_takes_default_for_the_shipped_model_folder(tmp_path, capsys):
    """The shipped model has the train_config.json a member needs: 'default' passes that
    check and the second member, a folder without one, is the one refused."""
    other = tmp_path / "not-a-member"
    other.mkdir()
    assert main(["ensemble", "default", str(other), "--out", str(tmp_path / "ensemble")]) == 2
    err = capsys.readouterr().err
    assert f"{other} has no train_config.json" in err and "default has no" not in err, err


def test_serve_takes_default_for_the_shipped_model(tmp_path):
    """On a port already taken the app cannot start, but the model is loaded first: its
    line is printed, and no 'is not a local folder' error."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "tumor_classifier.cli", "serve", "--model", "default", "--port", str(port)],
            capture_output=True, text=True, timeout=600, cwd=tmp_path,
        )
    assert "is not a local folder" not in done.stderr, done.stderr
    assert f"tumor-classifier app on http://127.0.0.1:{port}/" in done.stdout, done.stdout + done.stderr
