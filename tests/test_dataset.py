import numpy as np
import pytest
import torch

from rdiunet.data.dataset import batches, load_prepared
from rdiunet.errors import UserError


def write_npz(path, n=10, size=16, **overrides):
    rng = np.random.default_rng(0)
    arrays = {
        "images": rng.integers(0, 256, (n, size, size), dtype=np.uint8),
        "masks": (rng.random((n, size, size)) > 0.5).astype(np.uint8),
        "ids": np.array([f"img{i}" for i in range(n)]),
        "groups": np.array([f"g{i // 2}" for i in range(n)]),
        "split": np.array([0] * (n - 4) + [1, 1, 2, 2], dtype=np.int8),
    }
    arrays.update(overrides)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)
    return arrays


def test_splits_hold_their_images_masks_and_ids(tmp_path):
    arrays = write_npz(tmp_path / "d.npz")
    data = load_prepared(tmp_path / "d.npz")
    assert [len(data[s]) for s in ("train", "val", "test")] == [6, 2, 2]
    assert data["val"].ids == ("img6", "img7")
    assert data["train"].images.shape == (6, 1, 16, 16) and data["train"].images.dtype == torch.uint8
    assert torch.equal(data["test"].masks[1, 0], torch.from_numpy(arrays["masks"][9]))


def test_batches_cover_every_image_once_scaled_to_unit_range(tmp_path):
    write_npz(tmp_path / "d.npz", n=23)
    train = load_prepared(tmp_path / "d.npz")["train"]
    seen = []
    for images, masks in batches(
        train, batch_size=5, shuffle=True, generator=torch.Generator().manual_seed(0)
    ):
        assert images.dtype == masks.dtype == torch.float32
        assert images.min() >= 0 and images.max() <= 1 and set(masks.unique().tolist()) <= {0.0, 1.0}
        seen.append(images)
    stacked = torch.cat(seen)
    assert [len(b) for b in seen] == [5, 5, 5, 4]
    # Each image appears exactly once: compare sorted per-image sums with the split's.
    expected = (train.images.float() / 255).sum(dim=(1, 2, 3)).sort().values
    torch.testing.assert_close(stacked.sum(dim=(1, 2, 3)).sort().values, expected)


def test_shuffle_is_seeded_and_unshuffled_is_in_order(tmp_path):
    write_npz(tmp_path / "d.npz", n=24)
    train = load_prepared(tmp_path / "d.npz")["train"]

    def order(seed):
        return torch.cat([x for x, _ in batches(train, 4, True, torch.Generator().manual_seed(seed))])

    assert torch.equal(order(1), order(1))
    assert not torch.equal(order(1), order(2))
    in_order = torch.cat([x for x, _ in batches(train, 4)])
    assert torch.equal(in_order, train.images.float() / 255)


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"masks": None}, "lacks the array 'masks'"),
        ({"images": np.zeros((10, 16, 16), dtype=np.float32)}, "'images' is float32"),
        ({"masks": np.full((10, 16, 16), 255, dtype=np.uint8)}, "masks must be 0/1"),
        ({"split": np.zeros(9, dtype=np.int8)}, "shapes do not agree"),
    ],
)
def test_malformed_npz_is_a_clear_error(tmp_path, overrides, message):
    write_npz(tmp_path / "d.npz", **overrides)
    with pytest.raises(UserError, match=message):
        load_prepared(tmp_path / "d.npz")


def test_missing_or_unreadable_file(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_prepared(tmp_path / "nope.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip at all")
    with pytest.raises(UserError, match="not a readable .npz"):
        load_prepared(tmp_path / "bad.npz")
