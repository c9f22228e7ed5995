"""Loading MRI folders through datasets, splits, labels, and the duplicate check."""

import io
import shutil

import numpy as np
import pytest
from PIL import Image

from tumor_classifier import CLASS_NAMES, InvalidDatasetError, describe_folder, find_duplicates, load_mri_dataset
from tumor_classifier.cli import main as cli_main
from tumor_classifier.data import canonical_class_name


def test_kaggle_layout_gives_three_stratified_splits(data_dir):
    data = load_mri_dataset(data_dir, validation_size=0.25, seed=1)
    assert set(data) == {"train", "validation", "test"}
    assert data["train"].features["label"].names == list(CLASS_NAMES)
    assert len(data["train"]) + len(data["validation"]) == 32
    assert len(data["test"]) == 12
    # Stratified: two validation images of each class.
    assert np.bincount(data["validation"]["label"], minlength=4).tolist() == [2, 2, 2, 2]
    # Seeded: the same seed carves the same validation images, another seed others.
    again = load_mri_dataset(data_dir, validation_size=0.25, seed=1)
    other = load_mri_dataset(data_dir, validation_size=0.25, seed=2)
    assert again["validation"]["path"] == data["validation"]["path"]
    assert other["validation"]["path"] != data["validation"]["path"]
    # Labels come from the folder names.
    for path, label in zip(data["test"]["path"], data["test"]["label"]):
        assert f"/{CLASS_NAMES[label]}/" in path
    assert data["test"][0]["image"].size == (224, 224)


def test_fit_carves_its_calibration_images_with_the_data_loaders_splitter(data_dir):
    """carve_indices is the loader's validation carving: the same seed picks the same images."""
    from tumor_classifier.data import ANY_TUMOR, carve_indices, list_image_files

    data = load_mri_dataset(data_dir, validation_size=0.25, seed=1)
    files = sorted(list(data["train"]["path"]) + list(data["validation"]["path"]))
    # The loader carved from Training in list order; redo it from the labels alone.
    training = [(path, CLASS_NAMES.index(label)) for path, label in list_image_files(data_dir / "Training")]
    kept, carved = carve_indices([label for _, label in training], 0.25, seed=1)
    assert sorted(training[i][0] for i in carved) == sorted(list(data["validation"]["path"]))
    assert sorted(training[i][0] for i in np.concatenate([kept, carved])) == files
    # Any labels, "type unknown" (-1) among them: stratified, at least one of each carved.
    labels = np.array([0] * 6 + [1] * 6 + [ANY_TUMOR] * 4)
    kept, carved = carve_indices(labels, 0.25, seed=0)
    assert set(labels[carved]) == {0, 1, ANY_TUMOR} and set(labels[kept]) == {0, 1, ANY_TUMOR}
    assert sorted(np.concatenate([kept, carved]).tolist()) == list(range(16))
    with pytest.raises(InvalidDatasetError, match="Too few images"):
        carve_indices([0, 1, 1], 0.5, seed=0)


def test_binary_view_is_one_argument_away(data_dir):
    data = load_mri_dataset(data_dir, binary=True)
    assert data["test"].features["label"].names == ["notumor", "tumor"]
    for path, label in zip(data["test"]["path"], data["test"]["label"]):
        assert (label == 0) == ("/notumor/" in path)


def test_lowercase_splits_aliases_and_plain_image_folder(tmp_path, data_dir):
    lower = tmp_path / "lower"
    for split, target in (("Training", "train"), ("Testing", "test")):
        for class_dir in (data_dir / split).iterdir():
            alias = {"glioma": "glioma_tumor", "notumor": "no_tumor"}.get(class_dir.name, class_dir.name)
            shutil.copytree(class_dir, lower / target / alias)
    data = load_mri_dataset(lower)
    assert len(data["test"]) == 12 and data["test"].features["label"].names == list(CLASS_NAMES)
    plain = load_mri_dataset(lower / "train", validation_size=0.125, test_size=0.25)
    assert len(plain["train"]) + len(plain["validation"]) + len(plain["test"]) == 32
    assert len(plain["test"]) == 8


def test_bad_sources_get_clear_errors(tmp_path):
    with pytest.raises(InvalidDatasetError, match="not a folder"):
        load_mri_dataset(tmp_path / "missing" / "folder")
    (tmp_path / "weird" / "Training" / "cats").mkdir(parents=True)
    with pytest.raises(InvalidDatasetError, match="Unknown class folder"):
        load_mri_dataset(tmp_path / "weird")
    (tmp_path / "empty" / "Training" / "glioma").mkdir(parents=True)
    with pytest.raises(InvalidDatasetError, match="No images found"):
        load_mri_dataset(tmp_path / "empty")
    # A Hub id goes to the Hub; offline, that fails with our error, not a deep traceback.
    with pytest.raises(InvalidDatasetError, match="Hugging Face Hub"):
        load_mri_dataset("no-such-org/no-such-dataset")
    assert canonical_class_name("Pituitary_Tumor") == "pituitary"


def _jpeg(array: np.ndarray, quality: int = 90, mode: str = "L") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).convert(mode).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def test_planted_duplicates_are_found_and_distinct_images_are_not(train_images, test_images):
    references = [p.read_bytes() for p in train_images[0]]
    queries = [p.read_bytes() for p in test_images[0]]
    planted_exact = references[3]
    source = np.asarray(Image.open(io.BytesIO(references[10])).convert("L"))
    planted_near = _jpeg(source, quality=60, mode="RGB")  # re-encoded, other storage mode
    base = find_duplicates(references, queries)
    report = find_duplicates(references, queries + [planted_exact, planted_near])
    n = len(queries)
    assert report.exact == base.exact + [(n, 3)]
    assert report.nearest[n] == 3 and report.distances[n] == 0
    assert report.nearest[n + 1] == 10 and report.distances[n + 1] <= report.threshold
    assert report.near_duplicate_queries == base.near_duplicate_queries + [n, n + 1]
    # Distinct images are not flagged: a synthetic disc, and most real Testing slices
    # (two of the shipped ones do have a near twin in Training: the data set leaks).
    yy, xx = np.mgrid[:224, :224]
    disc = (((yy - 100) ** 2 + (xx - 120) ** 2) < 60**2).astype(np.uint8) * 180
    assert find_duplicates(references, [disc]).clean_queries == [0]
    assert len(base.clean_queries) >= n - 3


def test_drop_test_duplicates_removes_planted_copy(tmp_path, data_dir):
    copy = tmp_path / "mri"
    shutil.copytree(data_dir, copy)
    planted = next((copy / "Training" / "glioma").glob("*.jpg"))
    shutil.copy(planted, copy / "Testing" / "glioma" / "planted.jpg")
    assert len(load_mri_dataset(copy)["test"]) == 13
    natural = len(find_duplicates(list(data_dir.glob("Training/*/*.jpg")), list(data_dir.glob("Testing/*/*.jpg"))).near_duplicate_queries)
    kept = load_mri_dataset(copy, drop_test_duplicates=True)["test"]
    assert len(kept) == 13 - 1 - natural
    assert not any(p.endswith("planted.jpg") for p in kept["path"])


def test_data_report_command_prints_counts_modes_and_duplicates(tmp_path, data_dir, capsys):
    copy = tmp_path / "mri"
    shutil.copytree(data_dir, copy)
    shutil.copy(next((copy / "Training" / "pituitary").glob("*.jpg")), copy / "Testing" / "pituitary" / "dup.jpg")
    report = describe_folder(copy)
    assert report.class_counts["train"] == {"glioma": 8, "meningioma": 8, "notumor": 8, "pituitary": 8}
    assert report.duplicates.summary()["byte_identical"] == 1
    assert cli_main(["data-report", str(copy)]) == 0
    out = capsys.readouterr().out
    assert "train: 32 images" in out and "test: 13 images" in out
    assert "byte-identical:              1" in out
    assert "storage modes:" in out
    # The duplicate counts stand in one column, under one another.
    counts = out[out.index("test images with a duplicate"):].splitlines()[1:5]
    assert len({len(line) - len(line.split()[-1]) for line in counts}) == 1, counts


def test_binary_training_takes_tumour_and_healthy_folders(tmp_path, data_dir):
    """A user's own tumour / no-tumour set, in the names such sets use (Br35H: yes / no)."""
    for tumour, healthy in (("tumour", "healthy"), ("Tumor", "normal"), ("yes", "no")):
        root = tmp_path / f"{tumour}-{healthy}"
        shutil.copytree(data_dir / "Training" / "glioma", root / tumour)
        shutil.copytree(data_dir / "Training" / "notumor", root / healthy)
        data = load_mri_dataset(root, binary=True, validation_size=0.25, test_size=0.25)
        assert data["train"].features["label"].names == ["notumor", "tumor"]
        for split in data.values():
            for path, label in zip(split["path"], split["label"]):
                assert (label == 1) == (f"/{tumour}/" in path), path
    # Without binary the folder names say no tumour type: the error says what to do.
    with pytest.raises(InvalidDatasetError, match="'tumour'.*binary"):
        load_mri_dataset(tmp_path / "tumour-healthy")


def test_a_training_run_refuses_a_class_without_training_images(tmp_path, data_dir):
    """The model would get a pituitary output that no image ever trained."""
    from tumor_classifier.preprocessing import MRIPreprocessor
    from tumor_classifier.training_arguments import DataArguments
    from tumor_classifier.training_data import load_splits

    root = tmp_path / "own"
    shutil.copytree(data_dir, root, ignore=lambda folder, names: [n for n in names if n == "pituitary" and folder.endswith("Training")])
    (root / "Training" / "pituitary").mkdir()  # present but empty
    with pytest.raises(InvalidDatasetError, match=r"no training image of the class pituitary.*Training/pituitary"):
        load_splits(DataArguments(data_dir=str(root), pixel_cache_dir=None), MRIPreprocessor(size=32))


def test_an_empty_source_is_refused_not_read_as_the_working_directory(tmp_path, data_dir, monkeypatch):
    monkeypatch.chdir(data_dir / "Training")  # a folder that would load
    for source in ("", "  "):
        with pytest.raises(InvalidDatasetError, match="empty"):
            load_mri_dataset(source)


def test_a_corrupt_training_image_is_named_with_what_to_do(tmp_path, data_dir):
    from tumor_classifier.preprocessing import MRIPreprocessor
    from tumor_classifier.training_arguments import DataArguments
    from tumor_classifier.training_data import load_splits

    root = tmp_path / "own"
    shutil.copytree(data_dir, root)
    whole = sorted((root / "Training" / "notumor").glob("*.jpg"))[0].read_bytes()
    (root / "Training" / "notumor" / "truncated.jpg").write_bytes(whole[: len(whole) // 3])
    with pytest.raises(InvalidDatasetError, match=r"truncated\.jpg.*corrupt.*remove or replace it.*data-report") as caught:
        load_splits(DataArguments(data_dir=str(root), validation_size=0.25, pixel_cache_dir=None), MRIPreprocessor(size=32))
    assert "numpy array" not in str(caught.value)  # the accepted inputs of predict say nothing here


def test_a_stratified_group_split_keeps_groups_whole_and_every_class_on_both_sides():
    from tumor_classifier.duplicates import stratified_group_split

    # Class 0: groups 0 (3 images), 1, 2, 3; class 1: groups 4, 5 (2 images), 6; group 7 holds
    # a class-1 image first and a class-0 copy: it belongs to class 1 and moves whole.
    labels = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 0])
    groups = np.array([0, 0, 0, 1, 2, 3, 4, 5, 5, 6, 7, 7])
    for seed in range(20):
        first, second = stratified_group_split(labels, groups, 0.3, seed)
        assert sorted(np.concatenate([first, second]).tolist()) == list(range(12))
        assert not set(groups[first]) & set(groups[second])  # no group straddles
        assert set(labels[first]) == set(labels[second]) == {0, 1}
    with pytest.raises(InvalidDatasetError, match="single group"):
        stratified_group_split(np.array([0, 0, 1, 1]), np.array([0, 0, 1, 2]), 0.5, 0)


def test_a_validation_split_by_group_holds_no_copy_of_a_training_image(tmp_path, data_dir):
    folder = tmp_path / "data"
    for path in sorted((data_dir / "Training").glob("*/*.jpg")):
        (folder / "train" / path.parent.name).mkdir(parents=True, exist_ok=True)
        image = Image.open(path).convert("L")
        image.save(folder / "train" / path.parent.name / path.name)
        image.resize((200, 200)).save(folder / "train" / path.parent.name / f"{path.stem}-200.jpg", quality=92)
    by_file = load_mri_dataset(folder, validation_size=0.25, test_size=0.15, seed=0)
    by_group = load_mri_dataset(folder, validation_size=0.25, test_size=0.15, seed=0, validation_by="group")
    for data, copies in ((by_file, True), (by_group, False)):
        paths = lambda split: [str(p) for p in data[split]["path"]]  # noqa: E731
        report = find_duplicates(paths("train"), paths("validation"))
        assert (len(report.clean_queries) < len(data["validation"])) == copies
        assert set(data["validation"]["label"]) == set(range(4))
    assert by_group["test"]["path"] == by_file["test"]["path"]  # the test carving is unchanged
    with pytest.raises(InvalidDatasetError, match="validation_by must be one of file, group"):
        load_mri_dataset(folder, validation_by="patient")
