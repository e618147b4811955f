import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_one_line_error, run_cli
from PIL import Image

from rdiunet.data.prepare import assign_splits, load_pair, prepare
from rdiunet.data.source import Member, Pair
from rdiunet.data.synthetic import synthesize
from rdiunet.errors import UserError


@pytest.fixture(scope="module")
def prepared(synthetic_raw, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared")
    summaries = {d: prepare(d, synthetic_raw[d], out / f"{d}.npz", workers=2) for d in synthetic_raw}
    return out, summaries


def arrays(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files}


@pytest.mark.parametrize("dataset,size", [("nerve", 128), ("jsrt", 256), ("isic", 128)])
def test_prepared_arrays_meet_the_data_contract(prepared, dataset, size):
    out, summaries = prepared
    data = arrays(out / f"{dataset}.npz")
    n = len(data["ids"])
    assert data["images"].shape == data["masks"].shape == (n, size, size)
    assert data["images"].dtype == data["masks"].dtype == np.uint8
    assert set(np.unique(data["masks"])) <= {0, 1}
    assert data["split"].dtype == np.int8 and set(np.unique(data["split"])) == {0, 1, 2}
    assert len(set(data["ids"].tolist())) == n
    summary = json.loads((out / f"{dataset}.json").read_text())
    assert summary == summaries[dataset]
    assert summary["synthetic"] is True
    assert summary["image_size"] == [size, size]
    assert sum(summary["counts"].values()) == n == summary["images"]
    for code, name in enumerate(("train", "val", "test")):
        assert summary["counts"][name] == int((data["split"] == code).sum())


def test_raw_checksums_are_recorded(prepared, synthetic_raw):
    _, summaries = prepared
    for entry in summaries["isic"]["raw"]:
        path = synthetic_raw["isic"] / entry["name"]
        assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_nerve_drops_empty_masks_and_keeps_subjects_in_one_split(prepared, synthetic_raw):
    out, summaries = prepared
    data = arrays(out / "nerve.npz")
    assert data["masks"].reshape(len(data["masks"]), -1).max(axis=1).min() == 1
    assert summaries["nerve"]["dropped_empty"] > 0
    rles = zipfile.ZipFile(synthetic_raw["nerve"] / "ultrasound-nerve-segmentation.zip").read(
        "train_masks.csv"
    )
    non_empty = sum(1 for row in rles.decode().splitlines()[1:] if row.split(",")[2])
    assert len(data["ids"]) == non_empty
    splits_of_subject = {}
    for group, split in zip(data["groups"].tolist(), data["split"].tolist(), strict=True):
        splits_of_subject.setdefault(group, set()).add(split)
    assert all(len(s) == 1 for s in splits_of_subject.values())
    assert all(
        i.split("_")[0] == g for i, g in zip(data["ids"].tolist(), data["groups"].tolist(), strict=True)
    )


def test_nerve_keep_empty(synthetic_raw, tmp_path):
    summary = prepare("nerve", synthetic_raw["nerve"], tmp_path / "n.npz", keep_empty=True, workers=1)
    assert summary["images"] == 40 and summary["dropped_empty"] == 0
    assert sum(summary["empty_masks"].values()) > 0


def test_jsrt_keeps_the_official_test_set_and_carves_val_from_train(prepared):
    out, summaries = prepared
    data = arrays(out / "jsrt.npz")
    test_ids = data["ids"][data["split"] == 2].tolist()
    assert test_ids and all(i.startswith("test/") for i in test_ids)
    assert len(test_ids) == round(30 * 48 / 247)
    assert all(i.startswith("train/") for i in data["ids"][data["split"] < 2].tolist())
    assert summaries["jsrt"]["counts"]["val"] >= 1


def test_isic_uses_a_seeded_split_or_the_official_sets(prepared, tmp_path):
    _, summaries = prepared
    assert summaries["isic"]["counts"] == {"train": 24, "val": 3, "test": 3}
    synthesize("isic", tmp_path / "raw", n=10, seed=1, official_splits=True)
    summary = prepare("isic", tmp_path / "raw", tmp_path / "isic.npz", workers=1)
    assert summary["counts"] == {"train": 10, "val": 2, "test": 2}
    assert summary["split"]["official"] == ["test", "val"]


def test_grayscale_area_resize_and_nearest_masks(synthetic_raw, tmp_path):
    # The decoded image equals a plain full decode + grayscale + box resize, up to JPEG scaling.
    archive = synthetic_raw["isic"] / "ISIC2018_Task1-2_Training_Input.zip"
    truth = synthetic_raw["isic"] / "ISIC2018_Task1_Training_GroundTruth.zip"
    pair = Pair(
        "ISIC_0000000",
        "ISIC_0000000",
        Member(archive, "ISIC2018_Task1-2_Training_Input/ISIC_0000000.jpg"),
        Member(truth, "ISIC2018_Task1_Training_GroundTruth/ISIC_0000000_segmentation.png"),
    )
    image, mask = load_pair(pair, 128)
    full = Image.open(io.BytesIO(zipfile.ZipFile(archive).read(pair.image.name)))
    reference = np.asarray(full.convert("L").resize((128, 128), Image.Resampling.BOX), dtype=float)
    assert image.shape == (128, 128) and np.abs(image - reference).mean() < 3
    full_mask = Image.open(io.BytesIO(zipfile.ZipFile(truth).read(pair.mask.name)))
    expected = np.asarray(full_mask.resize((128, 128), Image.Resampling.NEAREST)) > 127
    assert np.array_equal(mask.astype(bool), expected)


def test_parallel_and_serial_decoding_agree(synthetic_raw, tmp_path):
    prepare("jsrt", synthetic_raw["jsrt"], tmp_path / "one.npz", workers=1)
    prepare("jsrt", synthetic_raw["jsrt"], tmp_path / "two.npz", workers=2)
    one, two = arrays(tmp_path / "one.npz"), arrays(tmp_path / "two.npz")
    assert all(np.array_equal(one[k], two[k]) for k in one)


def test_size_override(synthetic_raw, tmp_path):
    summary = prepare("jsrt", synthetic_raw["jsrt"], tmp_path / "j.npz", size=64, workers=1)
    assert summary["image_size"] == [64, 64]
    assert arrays(tmp_path / "j.npz")["images"].shape[1:] == (64, 64)


def test_split_by_group_never_straddles_and_follows_fractions():
    groups = [f"s{i // 5}" for i in range(100)]  # 20 groups of 5
    split = assign_splits(groups, [None] * 100, (0.7, 0.15, 0.15), seed=0)
    by_group = {}
    for g, s in zip(groups, split.tolist(), strict=True):
        by_group.setdefault(g, set()).add(s)
    assert all(len(s) == 1 for s in by_group.values())
    assert np.bincount(split, minlength=3).tolist() == [70, 15, 15]
    assert not np.array_equal(split, assign_splits(groups, [None] * 100, (0.7, 0.15, 0.15), seed=1))


def test_too_few_groups_for_the_splits_is_an_error():
    with pytest.raises(UserError, match="2 groups cannot fill"):
        assign_splits(["a", "a", "b"], [None] * 3, (0.8, 0.1, 0.1), seed=0)


# --- subject-wise k-fold cross-validation ---------------------------------------------------------


def split_groups(data) -> dict[str, set[str]]:
    return {name: set(split.groups) for name, split in data.splits.items()}


@pytest.mark.parametrize("folds", [3, 5])
def test_folds_never_leak_a_subject_and_k_seeds_test_every_subject_once(synthetic_raw, tmp_path, folds):
    from rdiunet.data.dataset import open_prepared

    out = tmp_path / "nerve_cv.npz"
    summary = prepare("nerve", synthetic_raw["nerve"], out, size=32, workers=1, folds=folds)
    assert summary["folds"]["k"] == folds and summary["folds"]["by"] == "subject"
    subjects = set(arrays(out)["groups"].tolist())
    assert sum(summary["folds"]["subjects"]) == len(subjects)
    tested = []
    for seed in range(folds):  # k consecutive seeds
        data = open_prepared(out, seed)
        groups = split_groups(data)
        assert not groups["train"] & groups["val"] and not groups["train"] & groups["test"]
        assert not groups["val"] & groups["test"]
        assert data.fold == {"k": folds, "test": seed % folds, "val": (seed + 1) % folds}
        assert len(data.splits["train"]) > 0
        tested += list(groups["test"])
    assert sorted(tested) == sorted(subjects)  # every subject once
    # Seed k repeats seed 0's split, with other initial weights.
    assert open_prepared(out, folds).splits["test"].ids == open_prepared(out, 0).splits["test"].ids
    # Whole subjects, dealt largest first to the emptiest fold: the folds hold about as many images.
    sizes = np.unique(arrays(out)["groups"], return_counts=True)[1]
    assert max(summary["folds"]["images"]) - min(summary["folds"]["images"]) <= sizes.max()


def test_a_source_without_subjects_is_cross_validated_by_image_and_says_so(synthetic_raw, tmp_path):
    summary = prepare("jsrt", synthetic_raw["jsrt"], tmp_path / "j.npz", size=32, workers=1, folds=3)
    assert summary["folds"]["by"] == "image (the source names no subjects: each image is its own)"
    # Cross-validation tests every image: the official test set is dealt to the folds too.
    assert sum(summary["folds"]["images"]) == summary["images"]


def test_a_cross_validated_dataset_needs_a_seed_and_enough_subjects_and_folds(synthetic_raw, tmp_path):
    from rdiunet.data.dataset import load_prepared

    out = tmp_path / "n.npz"
    prepare("nerve", synthetic_raw["nerve"], out, size=32, workers=1, folds=3)
    with pytest.raises(UserError, match="cross-validated in 3 folds: a training seed picks the split"):
        load_prepared(out)
    with pytest.raises(UserError, match="--folds must be an integer of at least 3"):
        prepare("nerve", synthetic_raw["nerve"], tmp_path / "x.npz", size=32, workers=1, folds=2)
    with pytest.raises(UserError, match="subjects cannot fill 500 folds"):
        prepare("nerve", synthetic_raw["nerve"], tmp_path / "y.npz", size=32, workers=1, folds=500)


def test_seeds_that_leave_a_fold_untested_are_a_configuration_error():
    from rdiunet.readings import ConfigError, resolve

    config = {
        "datasets": {"nerve": {"threshold": 0.7}, "nerve_cv": {"source": "nerve", "folds": 3}},
        "models": {"unet": {}, "rdiunet": {}},
        "seeds": [0, 1],
    }
    with pytest.raises(
        ConfigError, match=r"nerve_cv: its seeds \[0, 1\] leave fold\(s\) \[2\] of 3 untested"
    ):
        resolve(config)
    config["datasets"]["nerve_cv"]["seeds"] = [3, 4, 5]  # any three consecutive seeds cover the folds
    assert resolve(config).datasets["nerve_cv"]["seeds"] == [3, 4, 5]


# --- bad input through the command line: one line, non-zero exit, nothing written --------------


def rezip(source: Path, target: Path, edit) -> Path:
    """Copy a zip member by member; `edit(name, payload)` returns a list of (name, payload)."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for name in src.namelist():
            for new_name, payload in edit(name, src.read(name)):
                dst.writestr(new_name, payload)
    return target


def hostile_raw(tmp_path: Path, source: Path, edit, keep: tuple[Path, ...] = ()) -> Path:
    """A raw folder holding `source` rewritten by `edit`, plus untouched copies of `keep`."""
    raw = tmp_path / "raw"
    raw.mkdir()
    rezip(source, raw / source.name, edit)
    for path in keep:
        (raw / path.name).write_bytes(path.read_bytes())
    return raw


def prepare_cli(dataset, raw, out, *extra):
    result = run_cli("prepare", "--dataset", dataset, "--raw", raw, "--out", out, "--workers", "1", *extra)
    leftovers = [p.name for p in Path(out).parent.iterdir()] if Path(out).parent.exists() else []
    return result, leftovers


def test_cli_prepares_a_dataset(synthetic_raw, tmp_path):
    result, files = prepare_cli("jsrt", synthetic_raw["jsrt"], tmp_path / "out" / "jsrt.npz")
    assert result.returncode == 0, result.stderr
    assert sorted(files) == ["jsrt.json", "jsrt.npz"]


def test_truncated_archive(synthetic_raw, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    data = (synthetic_raw["jsrt"] / "Segmentation01.zip").read_bytes()
    (raw / "Segmentation01.zip").write_bytes(data[: len(data) // 3])
    result, files = prepare_cli("jsrt", raw, tmp_path / "out" / "jsrt.npz")
    assert_one_line_error(result, "corrupt or truncated", "Segmentation01.zip")
    assert files == []


def test_image_without_mask_is_named(synthetic_raw, tmp_path):
    raw = hostile_raw(
        tmp_path,
        synthetic_raw["jsrt"] / "Segmentation01.zip",
        lambda name, payload: [] if name.endswith("train/label/003.png") else [(name, payload)],
    )
    result, files = prepare_cli("jsrt", raw, tmp_path / "out" / "jsrt.npz")
    assert_one_line_error(result, "train/org/003.png", "has no mask")
    assert files == []


def test_mask_of_another_size(synthetic_raw, tmp_path):
    def shrink(name, payload):
        if name.endswith("train/label/002.png"):
            buffer = io.BytesIO()
            Image.open(io.BytesIO(payload)).resize((200, 256)).save(buffer, "PNG")
            payload = buffer.getvalue()
        return [(name, payload)]

    raw = hostile_raw(tmp_path, synthetic_raw["jsrt"] / "Segmentation01.zip", shrink)
    result, files = prepare_cli("jsrt", raw, tmp_path / "out" / "jsrt.npz")
    assert_one_line_error(result, "label/002.png is 200x256", "256x256")
    assert files == []


def test_undecodable_image(synthetic_raw, tmp_path):
    raw = hostile_raw(
        tmp_path,
        synthetic_raw["isic"] / "ISIC2018_Task1-2_Training_Input.zip",
        lambda name, payload: [(name, payload[:300] if name.endswith("0000004.jpg") else payload)],
        keep=(synthetic_raw["isic"] / "ISIC2018_Task1_Training_GroundTruth.zip",),
    )
    result, files = prepare_cli("isic", raw, tmp_path / "out" / "isic.npz")
    assert_one_line_error(result, "ISIC_0000004.jpg")
    assert files == []


def test_nerve_competition_zip_with_escaping_member(synthetic_raw, tmp_path):
    raw = hostile_raw(
        tmp_path,
        synthetic_raw["nerve"] / "ultrasound-nerve-segmentation.zip",
        lambda name, payload: [("../../train.zip" if name == "train.zip" else name, payload)],
    )
    result, files = prepare_cli("nerve", raw, tmp_path / "out" / "nerve.npz")
    assert_one_line_error(result, "outside the extraction folder")
    assert files == []
    assert not (tmp_path / "train.zip").exists()


@pytest.mark.parametrize(
    "dataset,expected",
    [
        ("nerve", "ultrasound-nerve-segmentation.zip"),
        ("jsrt", "Segmentation01.zip"),
        ("isic", "ISIC2018_Task1-2_Training_Input.zip"),
    ],
)
def test_empty_folder_says_what_was_expected(tmp_path, dataset, expected):
    (tmp_path / "raw").mkdir()
    result, _ = prepare_cli(dataset, tmp_path / "raw", tmp_path / "out" / "x.npz")
    assert_one_line_error(result, f"no {dataset} data", expected)


def test_wrong_archive_contents(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    with zipfile.ZipFile(raw / "Segmentation01.zip", "w") as z:
        z.writestr("readme.txt", "not the chest x-ray set")
    result, _ = prepare_cli("jsrt", raw, tmp_path / "out" / "x.npz")
    assert_one_line_error(result, "holds no", "Segmentation01.zip")


def test_unknown_dataset_and_bad_options(synthetic_raw, tmp_path):
    result = run_cli("prepare", "--dataset", "brain", "--raw", tmp_path, "--out", tmp_path / "x.npz")
    assert result.returncode != 0 and "invalid choice" in result.stderr
    result, _ = prepare_cli("jsrt", synthetic_raw["jsrt"], tmp_path / "o" / "x.npz", "--size", "100")
    assert_one_line_error(result, "multiple of 16")
    result, _ = prepare_cli("jsrt", synthetic_raw["jsrt"], tmp_path / "o" / "x.npz", "--split", "0.8,0.2")
    assert_one_line_error(result, "three finite fractions")
