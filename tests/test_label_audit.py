"""The label audit: reading an audit list, applying it, finding cross-class near duplicates."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tumor_classifier.data import CLASS_NAMES
from tumor_classifier.exceptions import InvalidDatasetError, TumorClassifierError
from tumor_classifier.label_audit import AuditEntry, apply_label_audit, read_label_audit
from tumor_classifier.label_suspects import find_cross_class_duplicates, find_near_duplicate_pairs, mirror_fingerprints

PROJECT = Path(__file__).resolve().parents[1]
HEADER = "file,action,new_label,reason\n"


def write_csv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "audit.csv"
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- reading


def test_read_label_audit_parses_good_rows(tmp_path):
    path = write_csv(
        tmp_path,
        HEADER
        + "Training/notumor/Tr-no_1440.jpg,exclude,,axial T2 with a large bright peripheral mass\n"
        + 'Training\\glioma\\Tr-gl_0001.jpg, Relabel ,Meningioma_Tumor,"dural-based, extra-axial mass"\n',
    )
    entries = read_label_audit(path)
    assert entries == [
        AuditEntry("Training/notumor/Tr-no_1440.jpg", "exclude", None, "axial T2 with a large bright peripheral mass"),
        AuditEntry("Training/glioma/Tr-gl_0001.jpg", "relabel", "meningioma", "dural-based, extra-axial mass"),
    ]
    with pytest.raises(AttributeError):  # frozen
        entries[0].action = "relabel"


def test_read_label_audit_ignores_extra_columns(tmp_path):
    path = write_csv(tmp_path, "file,action,new_label,reason,probability\nTraining/a/x.jpg,exclude,,seen,0.99\n")
    assert read_label_audit(path)[0].reason == "seen"


@pytest.mark.parametrize(
    "rows, expected",
    [
        ("Training/notumor/a.jpg,exclude,,ok\nTraining/notumor/b.jpg,delete,,wrong action\n", ["line 3", "delete", "exclude, relabel"]),
        ("Training/notumor/a.jpg,relabel,,no label\n", ["line 2", "needs a new_label"]),
        ("Training/notumor/a.jpg,relabel,astrocytoma,unknown class\n", ["line 2", "astrocytoma"]),
        ("Training/notumor/a.jpg,relabel,notumor,same class\n", ["line 2", "already gives"]),
        ("Training/notumor/a.jpg,exclude,glioma,label on exclude\n", ["line 2", "leave new_label empty"]),
        ("Training/notumor/a.jpg,exclude,,\n", ["line 2", "no reason"]),
        ("Training/notumor/a.jpg,exclude,,ok\nTraining/notumor/a.jpg,exclude,,twice\n", ["line 3", "already listed on line 2"]),
        ("/data/Training/notumor/a.jpg,exclude,,absolute\n", ["line 2", "relative to the data root"]),
        ("../Training/notumor/a.jpg,exclude,,outside\n", ["line 2", "relative to the data root"]),
        ("Training/notumor/a.jpg,exclude,,a reason, unquoted\n", ["line 2", "quote a reason"]),
    ],
)
def test_read_label_audit_names_file_and_line_of_a_bad_row(tmp_path, rows, expected):
    path = write_csv(tmp_path, HEADER + rows)
    with pytest.raises(InvalidDatasetError) as caught:
        read_label_audit(path)
    message = str(caught.value)
    assert str(path) in message
    for fragment in expected:
        assert fragment in message


def test_read_label_audit_missing_column(tmp_path):
    path = write_csv(tmp_path, "file,action,reason\nTraining/notumor/a.jpg,exclude,seen\n")
    with pytest.raises(InvalidDatasetError, match=r"line 1: the header lacks the column\(s\) new_label") as caught:
        read_label_audit(path)
    assert str(path) in str(caught.value)
    assert isinstance(caught.value, TumorClassifierError) and isinstance(caught.value, ValueError)


def test_read_label_audit_missing_file(tmp_path):
    with pytest.raises(InvalidDatasetError, match="No label audit file"):
        read_label_audit(tmp_path / "nowhere.csv")


# --------------------------------------------------------------------------- applying


@pytest.fixture
def fake_items(tmp_path):
    """Items of a data root that exists only as names: the audit never opens the files."""
    root = tmp_path / "data"
    names = [
        ("Training/glioma/g1.jpg", "glioma"),
        ("Training/notumor/n1.jpg", "notumor"),
        ("Training/notumor/n2.jpg", "notumor"),
        ("Training/pituitary/p1.jpg", "pituitary"),
    ]
    return root, [(str(root / name), label) for name, label in names]


def test_apply_label_audit_excludes_relabels_and_counts_unmatched(fake_items):
    root, items = fake_items
    entries = [
        AuditEntry("Training/notumor/n1.jpg", "exclude", None, "mass"),
        AuditEntry("Training/pituitary/p1.jpg", "relabel", "meningioma", "convexity mass"),
        AuditEntry("Training/glioma/renamed.jpg", "exclude", None, "gone"),
    ]
    kept, summary = apply_label_audit(items, entries, root)
    assert kept == [items[0], items[2], (items[3][0], "meningioma")]
    assert summary == {
        "kept": 3,
        "excluded": 1,
        "relabelled": 1,
        "unmatched": 1,
        "unmatched_files": ["Training/glioma/renamed.jpg"],
    }
    assert items[3][1] == "pituitary"  # the input is not changed


def test_apply_label_audit_matches_relative_item_paths(fake_items, monkeypatch):
    root, items = fake_items
    monkeypatch.chdir(root.parent)
    relative_items = [(str(Path(path).relative_to(root.parent)), label) for path, label in items]
    kept, summary = apply_label_audit(relative_items, [AuditEntry("Training/notumor/n2.jpg", "exclude", None, "x")], "data")
    assert summary["excluded"] == 1 and len(kept) == 3


def test_apply_label_audit_refuses_testing_entries(fake_items):
    root, items = fake_items
    entries = [
        AuditEntry("Training/notumor/n1.jpg", "exclude", None, "mass"),
        AuditEntry("Testing/notumor/Te-no_0287.jpg", "exclude", None, "mass"),
    ]
    with pytest.raises(InvalidDatasetError, match=r"Testing/notumor/Te-no_0287\.jpg.*allow_test=True"):
        apply_label_audit(items, entries, root)
    test_item = (str(root / "Testing/notumor/Te-no_0287.jpg"), "notumor")
    kept, summary = apply_label_audit(items + [test_item], entries, root, allow_test=True)
    assert test_item not in kept and summary["excluded"] == 2


# --------------------------------------------------------------------------- duplicates


def _slice_like(seed: int) -> np.ndarray:
    """A random, smooth, asymmetric 'slice': distinct seeds give unrelated pHashes."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(12, 12), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((128, 128), Image.Resampling.BICUBIC))


@pytest.fixture
def image_folder(tmp_path):
    pixels = {seed: _slice_like(seed) for seed in range(6)}

    def save(split: str, label: str, name: str, array: np.ndarray, mode: str = "L") -> tuple[str, str]:
        path = tmp_path / split / label / f"{name}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).convert(mode).save(path, quality=92)
        return str(path), label

    items = [
        save("Training", "glioma", "same-a", pixels[0]),
        save("Training", "meningioma", "same-b", pixels[0], mode="RGB"),  # same slice, another class and mode
        save("Training", "notumor", "flip-a", pixels[1]),
        save("Testing", "pituitary", "flip-b", pixels[1][:, ::-1]),  # left-right mirror copy
        save("Training", "glioma", "unrelated-1", pixels[2]),
        save("Training", "meningioma", "unrelated-2", pixels[3]),
        save("Training", "notumor", "unrelated-3", pixels[4]),
        save("Training", "notumor", "same-class-a", pixels[5]),
        save("Training", "notumor", "same-class-b", pixels[5]),  # a duplicate, but one label
    ]
    return items


def test_find_cross_class_duplicates_finds_copies_and_mirrors(image_folder):
    groups = find_cross_class_duplicates(image_folder)
    found = sorted(tuple(Path(p).stem for p in group.paths) for group in groups)
    assert found == [("flip-a", "flip-b"), ("same-a", "same-b")]
    by_name = {tuple(Path(p).stem for p in g.paths): g for g in groups}
    mirror = by_name[("flip-a", "flip-b")]
    assert mirror.labels == ("notumor", "pituitary") and mirror.indices == (2, 3)
    assert len(mirror.pairs) == 1 and mirror.pairs[0].mirrored and mirror.pairs[0].distance <= 4
    same = by_name[("same-a", "same-b")]
    assert not same.pairs[0].mirrored and same.class_counts == {"glioma": 1, "meningioma": 1}


def test_find_cross_class_duplicates_without_mirror_misses_the_flip(image_folder):
    groups = find_cross_class_duplicates(image_folder, mirror=False)
    assert [tuple(Path(p).stem for p in g.paths) for g in groups] == [("same-a", "same-b")]


def test_find_near_duplicate_pairs_ignores_labels(image_folder):
    pairs = find_near_duplicate_pairs(mirror_fingerprints([path for path, _ in image_folder]))
    assert [(p.first, p.second, p.mirrored) for p in pairs] == [(0, 1, False), (2, 3, True), (7, 8, False)]


def test_find_cross_class_duplicates_on_unrelated_images_is_empty(image_folder):
    unrelated = [item for item in image_folder if "unrelated" in item[0]]
    assert find_cross_class_duplicates(unrelated) == []
    assert find_cross_class_duplicates([]) == []


# --------------------------------------------------------------------------- committed lists


@pytest.mark.parametrize("name, split", [("label_audit.csv", "Training/"), ("label_audit_testing.csv", "Testing/")])
def test_committed_audit_lists_parse(name, split):
    path = PROJECT / "configs" / name
    entries = read_label_audit(path)
    assert entries, f"{path} lists no file"
    for entry in entries:
        assert entry.file.startswith(split), entry.file
        assert entry.file.split("/")[1] in CLASS_NAMES and entry.file.endswith(".jpg")
        assert len(entry.reason) >= 20, f"{entry.file}: say what was seen"
    files = [entry.file for entry in entries]
    assert files == sorted(files)


def test_the_loader_applies_the_audit_to_train_and_validation_only(tmp_path, data_dir):
    """train_hf.py's --label_audit path: the listed Training files are gone from train and
    validation, a relabelled one carries its new class, Testing is untouched."""
    from tumor_classifier.data import load_mri_dataset
    from tumor_classifier.label_audit import apply_label_audit_to_dataset, read_label_audit

    training = sorted((data_dir / "Training").glob("*/*.jpg"))
    excluded, relabelled = training[0], training[-1]  # a glioma, a pituitary
    audit = tmp_path / "audit.csv"
    audit.write_text(
        "file,action,new_label,reason\n"
        f"Training/{excluded.parent.name}/{excluded.name},exclude,,test row\n"
        f"Training/{relabelled.parent.name}/{relabelled.name},relabel,meningioma,test row\n"
    )
    entries = read_label_audit(audit)
    data = load_mri_dataset(data_dir, validation_size=0.25, seed=0)
    before = {name: len(data[name]) for name in data}
    audited = {name: apply_label_audit_to_dataset(data[name], entries, data_dir) for name in ("train", "validation")}
    assert sum(len(s) for s in audited.values()) == before["train"] + before["validation"] - 1
    paths = [p for s in audited.values() for p in s["path"]]
    assert str(excluded) not in paths
    for split in audited.values():
        names = split.features["label"].names
        for path, label in zip(split["path"], split["label"]):
            if path == str(relabelled):
                assert names[label] == "meningioma"
    binary = load_mri_dataset(data_dir, binary=True, validation_size=0.25, seed=0)
    relabelled_binary = apply_label_audit_to_dataset(binary["train"], entries, data_dir)
    assert set(relabelled_binary.features["label"].names) == {"notumor", "tumor"}


def test_the_audit_applies_to_a_binary_set_with_its_own_folder_names_and_subfolders(tmp_path, data_dir):
    """A tumour / healthy set whose tumour images sit in subfolders (one per patient, say)."""
    import shutil

    from tumor_classifier.data import load_mri_dataset
    from tumor_classifier.label_audit import apply_label_audit_to_dataset, read_label_audit

    root = tmp_path / "own"
    shutil.copytree(data_dir / "Training" / "glioma", root / "Training" / "tumour" / "patient-1")
    shutil.copytree(data_dir / "Training" / "notumor", root / "Training" / "healthy")
    shutil.copytree(data_dir / "Testing", root / "Testing", ignore=lambda folder, names: [n for n in names if n in ("meningioma", "pituitary")])
    tumour = sorted((root / "Training" / "tumour" / "patient-1").glob("*.jpg"))
    audit = tmp_path / "audit.csv"
    audit.write_text(
        "file,action,new_label,reason\n"
        f"Training/tumour/patient-1/{tumour[0].name},exclude,,test row\n"
        f"Training/tumour/patient-1/{tumour[1].name},relabel,notumor,test row\n"
    )
    data = load_mri_dataset(root, binary=True, validation_size=0.25, seed=0)
    entries = read_label_audit(audit)
    audited = {name: apply_label_audit_to_dataset(data[name], entries, root) for name in ("train", "validation")}
    labels = {p: split.features["label"].names[y] for split in audited.values() for p, y in zip(split["path"], split["label"])}
    assert str(tumour[0]) not in labels and labels[str(tumour[1])] == "notumor" and labels[str(tumour[2])] == "tumor"
    assert len(labels) == len(data["train"]) + len(data["validation"]) - 1


def test_read_label_audit_takes_excel_utf8_and_names_another_encoding(tmp_path):
    """Excel's "CSV UTF-8" starts with a byte order mark; a Latin-1 file is named, not a UnicodeDecodeError."""
    path = tmp_path / "audit.csv"
    path.write_bytes("\ufeff".encode() + (HEADER + "Training/glioma/a.jpg,exclude,,résumé of the mass\n").encode())
    (entry,) = read_label_audit(path)
    assert entry.file == "Training/glioma/a.jpg" and entry.reason == "résumé of the mass"
    path.write_bytes((HEADER + "Training/glioma/a.jpg,exclude,,résumé\n").encode("latin-1"))
    with pytest.raises(InvalidDatasetError, match="audit.csv.*not UTF-8.*save it as UTF-8"):
        read_label_audit(path)


def test_a_training_run_refuses_audit_rows_that_match_no_training_file(tmp_path, data_dir):
    """A typo in a listed path must not leave the image the reviewer meant to drop in training."""
    from tumor_classifier.preprocessing import MRIPreprocessor
    from tumor_classifier.training_arguments import DataArguments
    from tumor_classifier.training_data import load_splits

    listed = sorted((data_dir / "Training" / "glioma").glob("*.jpg"))[0]
    audit = tmp_path / "audit.csv"
    audit.write_text(
        HEADER
        + f"Training/glioma/{listed.name},exclude,,found\n"
        + "Training/glioma/Tr-gl_typo.jpg,exclude,,a typo\n"
        + "Training/notumor/Tr-no_9999.jpg,relabel,glioma,another copy of the data\n"
    )
    args = DataArguments(data_dir=str(data_dir), label_audit=str(audit), pixel_cache_dir=None)
    with pytest.raises(InvalidDatasetError, match=r"2 of the 3 rows.*Tr-gl_typo\.jpg, Training/notumor/Tr-no_9999\.jpg") as caught:
        load_splits(args, MRIPreprocessor(size=32))
    assert "audit.csv" in str(caught.value) and str(data_dir) in str(caught.value)


def test_a_training_run_reports_the_same_image_under_two_classes(tmp_path, data_dir, caplog):
    """The duplicate check compared test with train only; one slice filed as glioma and as
    notumor in the training folder went unreported."""
    import logging
    import shutil

    from tumor_classifier.data import load_mri_dataset
    from tumor_classifier.training_data import cross_class_duplicates

    root = tmp_path / "own"
    shutil.copytree(data_dir, root)
    copied = sorted((root / "Training" / "glioma").glob("*.jpg"))[0]
    shutil.copy(copied, root / "Training" / "notumor" / "copy-of-a-glioma.jpg")
    data = load_mri_dataset(root, validation_size=0.25, seed=0)
    with caplog.at_level(logging.WARNING, logger="tumor_classifier.training_data"):
        groups = cross_class_duplicates(data)
    assert len(groups) == 1
    assert sorted(groups[0]["labels"]) == ["glioma", "notumor"]
    assert sorted(Path(p).name for p in groups[0]["paths"]) == sorted([copied.name, "copy-of-a-glioma.jpg"])
    assert "1 group of near-duplicate training images" in caplog.text and "copy-of-a-glioma.jpg" in caplog.text
    assert "--label_audit" in caplog.text
    assert cross_class_duplicates(load_mri_dataset(data_dir, validation_size=0.25, seed=0)) == []
