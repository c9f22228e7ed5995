"""`predict DIR --recursive --output`: the walk, the rows, resuming after a kill, two processes under torchrun.

A random-weight tiny model folder (conftest's ``tiny_model_dir``) stands in for a trained
model: these tests check the plumbing (what is listed, written, skipped, merged), not accuracy.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tumor_classifier.archive import SLICE, VOLUME, find_inputs, shard
from tumor_classifier.archive_output import parts_folder
from tumor_classifier.cli import main

from volume_files import phantom, write_dicom_series, write_nifti

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def archive(tmp_path_factory, data_dir):
    """Six real slices in nested folders, a NIfTI, a DICOM series folder, two unreadable files, a note."""
    root = tmp_path_factory.mktemp("archive")
    for source, target in [("Testing/glioma", "glioma"), ("Testing/notumor", "nested/notumor")]:
        (root / target).mkdir(parents=True)
        for image in sorted((data_dir / source).glob("*.jpg")):
            (root / target / image.name).write_bytes(image.read_bytes())
    write_nifti(root / "head.nii.gz", phantom())
    write_dicom_series(root / "nested" / "series", phantom())
    (root / "bad.png").write_bytes(b"not a png at all")
    (root / "broken.nii").write_bytes(b"\x00" * 40)
    (root / "notes.txt").write_text("not an image")
    return root


def _run(archive, output, model, *extra):
    return main(["predict", str(archive), "--recursive", "--output", str(output), "--model", str(model), *extra])


def _rows(path: Path) -> list[dict]:
    """The output's rows with typed values, whatever the format (CSV gives strings)."""
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    import csv

    def typed(key, value):
        if value == "":
            return None
        if key in ("slices", "key_slice"):
            return int(value)
        if key == "looks_like_mri":
            return value == "True"
        return float(value) if key == "tumor_probability" or key.startswith("p_") else value

    return [{k: typed(k, v) for k, v in row.items()} for row in csv.DictReader(path.open())]


def _assert_same_rows(rows, expected):
    assert [r["path"] for r in rows] == [r["path"] for r in expected]
    for row, want in zip(rows, expected):
        for key, value in want.items():
            if isinstance(value, float):  # batches of other sizes round differently in the last bits
                assert math.isclose(row[key], value, abs_tol=1e-5), (row["path"], key, row[key], value)
            else:
                assert row[key] == value, (row["path"], key, row[key], value)


def test_the_walk_lists_slices_and_volumes_once_in_a_fixed_order(archive):
    items = find_inputs([archive])
    names = {os.path.relpath(i.path, archive): i.kind for i in items}
    assert names == {
        "bad.png": SLICE, "broken.nii": VOLUME, "head.nii.gz": VOLUME, "nested/series": VOLUME,
        **{f"glioma/{p.name}": SLICE for p in (archive / "glioma").iterdir()},
        **{f"nested/notumor/{p.name}": SLICE for p in (archive / "nested" / "notumor").iterdir()},
    }  # fmt: skip  (the 20 DICOM files are one series; the note is not listed)
    assert find_inputs([archive]) == items
    assert {os.path.relpath(i.path, archive) for i in find_inputs([archive], recursive=False)} == {"bad.png", "broken.nii", "head.nii.gz"}
    assert all("glioma" not in i.path for i in find_inputs([archive], exclude=[archive / "glioma"]))
    shares = [shard(items, rank, 3) for rank in range(3)]
    assert sorted(sum(shares, []), key=items.index) == items and len({i.path for s in shares for i in s}) == len(items)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_one_row_per_file_and_unreadable_files_do_not_stop_the_run(archive, tiny_model_dir, tmp_path, capsys, suffix):
    output = tmp_path / f"results{suffix}"
    assert _run(archive, output, tiny_model_dir) == 1  # every row written, and the two unreadable files fail the run
    rows = {os.path.relpath(r["path"], archive): r for r in _rows(output)}
    assert len(rows) == 10 and not parts_folder(output).exists()
    assert "InvalidImageError" in rows["bad.png"]["error"] and rows["bad.png"]["label"] is None
    assert "InvalidVolumeError" in rows["broken.nii"]["error"]
    for name in ("head.nii.gz", "nested/series"):
        assert rows[name]["kind"] == VOLUME and rows[name]["error"] is None
        assert rows[name]["slices"] > 1 and 0 <= rows[name]["key_slice"] < 20
    for row in rows.values():
        if row["kind"] == SLICE and row["error"] is None:
            assert row["slices"] == 1 and row["key_slice"] is None
            assert math.isclose(sum(row[f"p_{c}"] for c in ("glioma", "meningioma", "notumor", "pituitary")), 1, abs_tol=1e-4)
            assert math.isclose(row["tumor_probability"], 1 - row["p_notumor"], abs_tol=1e-5)
    printed = capsys.readouterr()
    assert "10 rows (10 files found) written to" in printed.out
    assert f"error: 10 files, 2 errors (see the error column of {output})" in printed.err.splitlines()


def test_an_archive_read_without_error_exits_0(archive, tiny_model_dir, tmp_path, capsys):
    output = tmp_path / "results.csv"
    assert main(["predict", str(archive / "glioma"), str(archive / "head.nii.gz"), "--output", str(output), "--model", str(tiny_model_dir)]) == 0
    assert len(_rows(output)) == 4 and all(row["error"] is None for row in _rows(output))
    assert "error" not in capsys.readouterr().err


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_killed_run_resumes_where_it_stopped_and_ends_like_a_clean_run(archive, tiny_model_dir, tmp_path, capsys, suffix):
    clean = tmp_path / f"clean{suffix}"
    _run(archive, clean, tiny_model_dir)
    expected = _rows(clean)
    # What a kill leaves: a part holding the first rows written, one of them marked so that
    # recomputing it would show, plus a torn write (a half line, a half-renamed part).
    output = tmp_path / f"resumed{suffix}"
    parts = parts_folder(output)
    parts.mkdir()
    before = [dict(row) for row in expected[:5]]
    before[2]["label"] = "written-before-the-kill"
    if suffix == ".csv":
        text = clean.read_text().splitlines(keepends=True)
        lines = text[:1] + text[1:6]
        lines[3] = lines[3].replace(f",{expected[2]['label']},", ",written-before-the-kill,", 1)
        (parts / "rank0.csv").write_text("".join(lines) + text[6][:25])
    else:
        import pyarrow as pa

        pq.write_table(pa.Table.from_pylist(before, schema=pq.read_schema(clean)), parts / "rank0-000000.parquet")
        (parts / "rank0-000001.parquet.tmp").write_bytes(b"PAR1 torn")
    capsys.readouterr()
    # The two unreadable files were among the rows before the kill: their error rows are
    # resumed, not retried, and still fail the run.
    assert _run(archive, output, tiny_model_dir) == 1
    assert "5 files predicted (0 unreadable), 5 already done" in capsys.readouterr().out
    rows = _rows(output)
    assert rows[2]["label"] == "written-before-the-kill"  # skipped, not predicted again
    rows[2]["label"] = expected[2]["label"]
    _assert_same_rows(rows, expected)
    assert not parts.exists()
    # Once complete, a rerun predicts nothing and leaves the output as it is (exit status 1 still).
    assert _run(archive, output, tiny_model_dir) == 1
    printed = capsys.readouterr()
    assert "0 files predicted (0 unreadable), 10 already done" in printed.out and "10 files, 2 errors" in printed.err
    assert len(_rows(output)) == 10


def test_two_processes_under_torchrun_give_the_single_process_output(archive, tiny_model_dir, tmp_path):
    single = tmp_path / "single.parquet"
    assert _run(archive, single, tiny_model_dir) == 1
    output = tmp_path / "two.parquet"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "tumor_classifier.cli", "predict", str(archive), "--recursive", "--output", str(output), "--model", str(tiny_model_dir),
    ]  # fmt: skip
    completed = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    # Process 0 merged and then failed the run for the two unreadable files (process 1 exits 0).
    assert completed.returncode == 1, completed.stderr[-3000:]
    assert f"error: 10 files, 2 errors (see the error column of {output})" in completed.stderr
    # Each process predicted its half (every other file of the walk).
    assert "rank 0 of 2: 5 files predicted" in completed.stdout and "rank 1 of 2: 5 files predicted" in completed.stdout
    assert "10 rows (10 files found) written to" in completed.stdout
    _assert_same_rows(pq.read_table(output).to_pylist(), pq.read_table(single).to_pylist())


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--recursive"], "give --output results.parquet"),
        (["--output", "results.txt"], "must end in .parquet, .csv or .jsonl"),
        # It was taken and ignored: every series of a folder gets its own row.
        (["--output", "results.csv", "--series-uid", "1.2.3"], "each DICOM series gets its own row"),
    ],
)
def test_archive_arguments_are_checked_before_any_work(archive, tmp_path, capsys, monkeypatch, extra, message):
    monkeypatch.chdir(tmp_path)  # a relative --output that were not refused lands here
    assert main(["predict", str(archive), *extra]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("results.csv", None, "is a folder, not a results file"),
        ("results.csv", "patient,score\n1,2\n", "not a results file of this command"),
        ("results.jsonl", "garbage, not JSON\n", "not a results file of this command"),
        ("results.parquet", "not Parquet", "not a results file of this command"),
        ("notes.txt/results.csv", "my notes", "is a file, not a folder"),
    ],
    ids=["a folder", "someone else's CSV", "not JSON lines", "not Parquet", "below a file"],
)
def test_an_output_that_is_not_ours_is_refused_before_any_work_and_left_alone(archive, tmp_path, capsys, name, content, message):
    output = tmp_path / name
    taken = tmp_path / name.split("/")[0]  # what is there already: a folder or a file
    if content is None:
        taken.mkdir()
    else:
        taken.write_text(content)
    # No --model: the refusal comes before any model is loaded.
    assert main(["predict", str(archive), "--recursive", "--output", str(output)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert content is None or taken.read_text() == content  # left as it was
    assert not parts_folder(output).exists()


def test_ctrl_c_keeps_the_rows_predicted_so_far_and_says_how_to_resume(data_dir, tiny_model_dir, tmp_path):
    import re
    import signal

    scans = tmp_path / "scans"
    scans.mkdir()
    image = sorted((data_dir / "Testing" / "glioma").glob("*.jpg"))[0].read_bytes()
    for index in range(600):  # enough that the run is still going when Ctrl-C comes
        (scans / f"{index:04d}.jpg").write_bytes(image)
    output = tmp_path / "results.csv"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "tumor_classifier.cli", "predict", str(scans), "--output", str(output), "--model", str(tiny_model_dir)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        bar = ""
        while not re.search(r" [1-9][0-9]*/600", bar):  # the bar has moved: one batch at least is predicted
            character = process.stderr.read(1)
            assert character, "the run ended before Ctrl-C came"
            bar = (bar + character)[-200:]
        process.send_signal(signal.SIGINT)  # what Ctrl-C sends
        out, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "run the same command again to resume" in err
    kept = (parts_folder(output) / "rank0.csv").read_text().splitlines()
    assert 32 <= len(kept) - 1 < 600  # the batches predicted before Ctrl-C, header aside


def test_the_walk_follows_linked_folders_once_and_lists_broken_volume_links(archive, tmp_path):
    """A folder reached through a symbolic link (an archive arranged with links to the store) was
    skipped without a word, and so was a NIfTI link whose target is gone."""
    root = tmp_path / "linked"
    root.mkdir()
    (root / "store").symlink_to(archive / "nested", target_is_directory=True)
    (root / "loop").symlink_to(root, target_is_directory=True)  # followed once, not forever
    (root / "gone.nii.gz").symlink_to(tmp_path / "missing.nii.gz")
    names = {os.path.relpath(i.path, root): i.kind for i in find_inputs([root])}
    assert names == {
        "gone.nii.gz": VOLUME, "store/series": VOLUME,
        **{f"store/notumor/{p.name}": SLICE for p in (archive / "nested" / "notumor").iterdir()},
    }  # fmt: skip


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_folder_holding_several_dicom_series_gets_a_row_per_series(tiny_model_dir, tmp_path, capsys, suffix):
    """A study exported flat (every series' files in one folder) got one error row telling the
    user to pass --series-uid, which an archive run does not take: none of its series was read."""
    study = tmp_path / "archive" / "study"
    mr_a, mr_b, ct = "1.2.3.1", "1.2.3.2", "1.2.3.3"
    for uid, modality in ((mr_a, "MR"), (mr_b, "MR"), (ct, "CT")):
        write_dicom_series(study, phantom(), series_uid=uid, modality=modality, names=[f"{uid}-{i}.dcm" for i in range(phantom().shape[2])])
    write_dicom_series(tmp_path / "archive" / "single", phantom(), series_uid="1.2.3.9")
    output = tmp_path / f"results{suffix}"
    assert _run(tmp_path / "archive", output, tiny_model_dir) == 1  # the CT series is refused
    rows = [(os.path.relpath(r["path"], tmp_path / "archive"), r["series_uid"], r["error"], r["slices"]) for r in _rows(output)]
    assert [row[:2] for row in rows] == [("single", "1.2.3.9"), ("study", mr_a), ("study", mr_b), ("study", ct)]
    assert rows[1][2] is None and rows[1][3] > 1 and rows[2][2] is None and "not MRI" in rows[3][2]
    assert "4 rows (2 files found)" in capsys.readouterr().out
    assert _run(tmp_path / "archive", output, tiny_model_dir) == 1  # resumed: nothing predicted again, no row lost
    assert "0 files predicted (0 unreadable), 2 already done" in capsys.readouterr().out
    assert [(os.path.relpath(r["path"], tmp_path / "archive"), r["series_uid"]) for r in _rows(output)] == [row[:2] for row in rows]


def test_a_zip_in_an_archive_gets_a_row_saying_to_unzip_it(tiny_model_dir, tmp_path, capsys):
    """Zipped series were left out of the walk without a word: an archive of them gave no row."""
    import zipfile

    _, paths = write_dicom_series(tmp_path / "series", phantom())
    (tmp_path / "archive").mkdir()
    with zipfile.ZipFile(tmp_path / "archive" / "study.zip", "w") as bundle:
        for path in paths:
            bundle.write(path, path.name)
    output = tmp_path / "results.jsonl"
    assert _run(tmp_path / "archive", output, tiny_model_dir) == 1
    [row] = _rows(output)
    assert row["kind"] == VOLUME and "study.zip is a zip archive" in row["error"] and "unzip it" in row["error"]


def test_time_point_chooses_in_4d_series_and_leaves_3d_volumes_as_they_are(tiny_model_dir, tmp_path):
    """--time-point used to make every 3-D volume of the archive an error row ("time_point
    was given but ... is 3-D")."""
    import numpy as np

    root = tmp_path / "mixed"
    root.mkdir()
    volume = phantom()
    write_nifti(root / "structural.nii.gz", volume)
    write_nifti(root / "series.nii.gz", np.stack([volume, volume[::-1], volume], axis=-1))
    output = tmp_path / "rows.jsonl"
    assert _run(root, output, tiny_model_dir, "--time-point", "1") == 0
    rows = {Path(r["path"]).name: r for r in _rows(output)}
    assert rows["structural.nii.gz"]["error"] is None and rows["series.nii.gz"]["error"] is None
    # Without --time-point the 4-D series is an error row that names its time points.
    assert _run(root, tmp_path / "plain.jsonl", tiny_model_dir) == 1
    plain = {Path(r["path"]).name: r for r in _rows(tmp_path / "plain.jsonl")}
    assert plain["structural.nii.gz"]["error"] is None and "3 time points" in plain["series.nii.gz"]["error"]
