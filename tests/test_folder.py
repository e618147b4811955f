"""A folder dataset: a researcher's own image files and masks, prepared where they are."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_one_line_error, run_cli
from PIL import Image

from rdiunet.configuration import check_config
from rdiunet.data.folder import FolderSpec, folder_pairs
from rdiunet.data.prepare import prepare
from rdiunet.errors import UserError


def write_pairs(
    root: Path, subjects: int = 6, frames: int = 3, image_format: str = "PNG", mask_name="{stem}.png"
):
    """Images P<k>_<j> of a square on noise, each with a 0/255 mask of the square."""
    rng = np.random.default_rng(0)
    suffix = {"PNG": ".png", "JPEG": ".jpg", "TIFF": ".tif"}[image_format]
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for subject in range(subjects):
        for frame in range(frames):
            stem = f"P{subject:02d}_{frame:03d}"
            mask = np.zeros((40, 48), np.uint8)
            top, left = rng.integers(2, 20, 2)
            mask[top : top + 16, left : left + 20] = 255
            image = (rng.integers(0, 60, (40, 48)) + mask * 0.6).astype(np.uint8)
            rgb = np.stack([image, image, image], axis=-1)  # colour files become grayscale
            Image.fromarray(rgb).save(root / "images" / f"{stem}{suffix}", image_format)
            Image.fromarray(mask).save(root / "masks" / mask_name.format(stem=stem, name=f"{stem}{suffix}"))
    return root


def spec(root: Path, **changes) -> FolderSpec:
    fields = {"images": str(root / "images" / "*"), "masks": str(root / "masks" / "{stem}.png")}
    fields["subject"] = r"^(P\d+)_"
    return FolderSpec(**{**fields, **changes})


def test_pairs_carry_subjects_from_the_file_names(tmp_path):
    pairs = folder_pairs(spec(write_pairs(tmp_path)))
    assert len(pairs) == 18
    assert {p.group for p in pairs} == {f"P{k:02d}" for k in range(6)}
    assert pairs[0].id == "P00_000.png" and pairs[0].image.archive is None
    # Without a subject pattern, each image is its own subject.
    assert len({p.group for p in folder_pairs(spec(tmp_path, subject=None))}) == 18


@pytest.mark.parametrize("image_format", ["PNG", "JPEG", "TIFF"])
def test_a_folder_is_prepared_like_a_source_with_every_file_in_its_provenance(tmp_path, image_format):
    root = write_pairs(tmp_path / "data", image_format=image_format)
    summary = prepare("folder", tmp_path / "unused", tmp_path / "mine.npz", size=32, folder=spec(root))
    with np.load(tmp_path / "mine.npz") as data:
        assert data["images"].shape == (18, 32, 32) and set(np.unique(data["masks"])) == {0, 1}
        split, groups = data["split"], data["groups"]
    # Whole subjects per split.
    for subject in set(groups.tolist()):
        assert len(set(split[groups == subject].tolist())) == 1
    assert summary["synthetic"] is False and summary["groups"]["test"] >= 1
    assert len(summary["files"]) == 36
    for entry in summary["files"]:
        assert entry["sha256"] == hashlib.sha256(Path(entry["path"]).read_bytes()).hexdigest()
    (whole,) = summary["raw"]
    listing = "".join(
        f"{f['sha256']}  {f['path']}\n" for f in sorted(summary["files"], key=lambda f: f["path"])
    )
    assert whole["sha256"] == hashlib.sha256(listing.encode()).hexdigest()
    assert summary["folder"]["subject"] == r"^(P\d+)_"


def test_one_changed_file_changes_the_digest(tmp_path):
    root = write_pairs(tmp_path / "data")
    before = prepare("folder", tmp_path, tmp_path / "a.npz", size=16, folder=spec(root))["raw"][0]["sha256"]
    mask = root / "masks" / "P03_001.png"
    pixels = np.asarray(Image.open(mask)).copy()
    pixels[0, 0] = 255
    Image.fromarray(pixels).save(mask)
    after = prepare("folder", tmp_path, tmp_path / "b.npz", size=16, folder=spec(root))["raw"][0]["sha256"]
    assert before != after


def test_masks_beside_their_images_are_not_taken_for_images(tmp_path):
    root = write_pairs(tmp_path, frames=2, mask_name="../images/{stem}_mask.png")
    pairs = folder_pairs(spec(root, masks=str(root / "images" / "{stem}_mask.png")))
    assert len(pairs) == 12 and not any("_mask" in p.id for p in pairs)


@pytest.mark.parametrize(
    "change,message",
    [
        ({"masks": "{stem}_m.png"}, "has no mask: expected"),
        ({"images": "nowhere/*.png"}, "no image file"),
        ({"masks": "masks/all.png"}, "must name each image's mask with {name}"),
        ({"subject": "^(Q\\d+)_"}, "does not match the subject pattern"),
        ({"subject": "(P"}, "is not a regular expression"),
    ],
)
def test_a_folder_that_cannot_work_is_one_line_and_writes_nothing(tmp_path, change, message):
    root = write_pairs(tmp_path / "data", subjects=2, frames=2)
    paths = {key: str(root / value) if key in ("images", "masks") else value for key, value in change.items()}
    arguments = spec(root, **paths)
    result = run_cli(
        "prepare", "--dataset", "folder", "--images", arguments.images, "--masks", arguments.masks,
        *(["--subject", arguments.subject] if arguments.subject else []),
        "--size", "16", "--out", tmp_path / "out" / "mine.npz",
    )  # fmt: skip
    assert_one_line_error(result, message)
    assert not (tmp_path / "out" / "mine.npz").exists() and not (tmp_path / "out" / "mine.json").exists()


def test_the_command_line_keeps_folder_and_source_arguments_apart(tmp_path):
    assert_one_line_error(
        run_cli("prepare", "--dataset", "folder", "--size", "16", "--out", tmp_path / "x.npz"),
        "--dataset folder needs --images GLOB and --masks PATTERN",
    )
    assert_one_line_error(
        run_cli(
            "prepare",
            "--dataset",
            "jsrt",
            "--raw",
            tmp_path,
            "--images",
            "x/*.png",
            "--out",
            tmp_path / "x.npz",
        ),
        "--images, --masks and --subject are for folder",
    )
    with pytest.raises(UserError, match="needs --size"):
        prepare("folder", tmp_path, tmp_path / "x.npz", folder=spec(tmp_path))


MINE = {"source": "folder", "images": "/d/*.png", "masks": "/d/m/{name}", "size": 32, "threshold": 0.8}


@pytest.mark.parametrize(
    "entry,message",
    [
        ({k: v for k, v in MINE.items() if k != "masks"}, "'masks' is required"),
        ({**MINE, "masks": "/d/m/same.png"}, "datasets.mine.masks"),
        (
            {"source": "nerve", "images": "/d/*.png"},
            "datasets.mine: images, masks and subject belong to a folder",
        ),
    ],
)
def test_the_configuration_checks_a_folder_entry(entry, message):
    config = {
        "datasets": {"mine": {"epochs": 2, "batch_size": 2, **entry}},
        "models": {"unet": {}},
        "seeds": [0],
    }
    with pytest.raises(UserError, match=message):
        check_config(json.loads(json.dumps(config)))
    assert check_config({**config, "datasets": {"mine": {"epochs": 2, "batch_size": 2, **MINE}}})
