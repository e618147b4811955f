import hashlib
import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from rdiunet.data import sources, synthetic
from rdiunet.data.sources.nerve import kaggle_rle
from rdiunet.data.synthetic import synthesize
from rdiunet.errors import UserError


def digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def decode(payload: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(payload))
    image.load()
    return image


@pytest.mark.parametrize("dataset", ["nerve", "jsrt", "isic"])
def test_same_seed_gives_byte_identical_archives(tmp_path, dataset):
    synthesize(dataset, tmp_path / "a", n=6, seed=3)
    synthesize(dataset, tmp_path / "b", n=6, seed=3)
    synthesize(dataset, tmp_path / "c", n=6, seed=4)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert digest(tmp_path / "a") != digest(tmp_path / "c")


def test_nerve_is_a_competition_zip_of_tif_pairs_with_rle_table(synthetic_raw):
    outer = zipfile.ZipFile(synthetic_raw["nerve"] / "ultrasound-nerve-segmentation.zip")
    assert set(outer.namelist()) == {"train.zip", "train_masks.csv"}
    train = zipfile.ZipFile(io.BytesIO(outer.read("train.zip")))
    names = train.namelist()
    images = [n for n in names if not n.endswith("_mask.tif")]
    assert len(images) == 40 and len(names) == 80
    subjects = {n.split("/")[-1].split("_")[0] for n in images}
    assert len(subjects) >= 3
    rows = outer.read("train_masks.csv").decode().splitlines()
    assert rows[0] == "subject,img,pixels" and len(rows) == 41
    empty = 0
    for row in rows[1:4] + rows[-3:]:
        subject, number, rle = row.split(",")
        image = decode(train.read(f"train/{subject}_{number}.tif"))
        mask = np.asarray(decode(train.read(f"train/{subject}_{number}_mask.tif")))
        assert image.size == (580, 420) and image.mode == "L"
        assert set(np.unique(mask)) <= {0, 255}
        assert rle == kaggle_rle(mask > 0)
        empty += mask.max() == 0
    all_rles = [row.split(",")[2] for row in rows[1:]]
    assert 0 < sum(r == "" for r in all_rles) < 40  # some frames show no nerve


def test_kaggle_rle_counts_down_columns_from_one():
    mask = np.zeros((3, 2), dtype=bool)
    mask[1:, 0] = True  # pixels 2 and 3 (first column)
    mask[0, 1] = True  # pixel 4 (top of the second column)
    assert kaggle_rle(mask) == "2 3"
    mask[1, 1] = False
    mask[2, 1] = True
    assert kaggle_rle(mask) == "2 3 6 1"


def test_jsrt_layout_matches_segmentation01(synthetic_raw):
    archive = zipfile.ZipFile(synthetic_raw["jsrt"] / "Segmentation01.zip")
    names = archive.namelist()
    for part in ("train", "test"):
        orgs = [n for n in names if f"/{part}/org/" in n]
        labels = [n for n in names if f"/{part}/label/" in n]
        assert len(orgs) == len(labels) > 0
    assert len([n for n in names if "/test/org/" in n]) == round(30 * 48 / 247)
    image = decode(archive.read(names[0]))
    assert image.size == (256, 256) and image.format == "PNG"


def test_isic_has_rgb_jpegs_of_varying_size_and_png_masks(synthetic_raw):
    inputs = zipfile.ZipFile(synthetic_raw["isic"] / "ISIC2018_Task1-2_Training_Input.zip")
    truth = zipfile.ZipFile(synthetic_raw["isic"] / "ISIC2018_Task1_Training_GroundTruth.zip")
    sizes = set()
    for name in inputs.namelist()[:6]:
        image = decode(inputs.read(name))
        stem = name.rsplit("/", 1)[1][: -len(".jpg")]
        mask = decode(truth.read(f"ISIC2018_Task1_Training_GroundTruth/{stem}_segmentation.png"))
        assert image.format == "JPEG" and image.mode == "RGB"
        assert mask.size == image.size
        assert set(np.unique(np.asarray(mask))) == {0, 255}
        sizes.add(image.size)
    assert len(sizes) > 1


def test_lesion_is_darker_than_skin(synthetic_raw):
    # The learnable signal: pigment inside the mask, skin outside.
    inputs = zipfile.ZipFile(synthetic_raw["isic"] / "ISIC2018_Task1-2_Training_Input.zip")
    truth = zipfile.ZipFile(synthetic_raw["isic"] / "ISIC2018_Task1_Training_GroundTruth.zip")
    name = inputs.namelist()[0]
    image = np.asarray(decode(inputs.read(name)).convert("L"), dtype=float)
    mask = np.asarray(decode(truth.read(truth.namelist()[0]))) > 0
    assert image[mask].mean() < image[~mask].mean() - 40


def test_marker_says_synthetic(synthetic_raw):
    assert (synthetic_raw["jsrt"] / synthetic.MARKER).exists()


def test_too_few_images_is_refused(tmp_path):
    with pytest.raises(ValueError, match="at least 3"):
        synthesize("jsrt", tmp_path, n=2)


def test_sources_register_themselves_by_module_name():
    assert sources.names() == ["isic", "jsrt", "nerve"]
    for name in sources.names():
        source = sources.get(name)
        assert source.name == name and source.size % 16 == 0 and source.synthetic_n >= 3
    assert sources.get("nerve").keep_empty is False  # the paper's nerve images all show a nerve
    assert [name for name in sources.names() if sources.get(name).official_splits] == ["isic"]
    with pytest.raises(UserError, match="unknown dataset 'brain'; known datasets: isic, jsrt, nerve"):
        sources.get("brain")
