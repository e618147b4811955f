import math

import numpy as np
import pytest
import torch

from rdiunet.metrics import confusion, convergence, dice, hd95, iou, soft_dice, stability


def masks(*rows_of_images):
    return torch.tensor(rows_of_images, dtype=torch.bool)


# Two 2x4 images. Image 0: prediction equals ground truth (4 px). Image 1: ground truth 4 px,
# prediction finds 2 of them and adds 1 false positive.
TRUTH = masks([[1, 1, 0, 0], [1, 1, 0, 0]], [[1, 1, 1, 1], [0, 0, 0, 0]])
PRED = masks([[1, 1, 0, 0], [1, 1, 0, 0]], [[1, 1, 0, 0], [0, 0, 0, 1]])


def test_confusion_counts_per_image():
    assert confusion(PRED, TRUTH).tolist() == [[4, 0, 0, 4], [2, 1, 2, 3]]


def test_dice_and_iou_per_image_and_pooled():
    # image 1: dice = 2*2 / (2*2 + 1 + 2) = 4/7, iou = 2 / (2 + 1 + 2) = 2/5
    assert dice(PRED, TRUTH, "image") == pytest.approx((1 + 4 / 7) / 2)
    assert iou(PRED, TRUTH, "image") == pytest.approx((1 + 2 / 5) / 2)
    # pooled: tp 6, fp 1, fn 2
    assert dice(PRED, TRUTH, "dataset") == pytest.approx(12 / 15)
    assert iou(PRED, TRUTH, "dataset") == pytest.approx(6 / 9)


def test_empty_ground_truth_policy():
    empty = masks([[0, 0], [0, 0]])
    one = masks([[0, 1], [0, 0]])
    assert dice(empty, empty) == 1.0 and iou(empty, empty) == 1.0  # nothing to find, nothing found
    assert dice(one, empty) == 0.0 and iou(one, empty) == 0.0  # a false positive on an empty image
    assert dice(empty, one) == 0.0  # a missed object


def test_unknown_reduction():
    with pytest.raises(ValueError, match="reduction"):
        dice(PRED, TRUTH, "pixel")


def test_hd95_of_single_pixels_is_their_distance():
    a, b = np.zeros((8, 8), bool), np.zeros((8, 8), bool)
    a[1, 1], b[4, 5] = True, True
    assert hd95(a, b) == pytest.approx(5.0)
    assert hd95(b, a) == pytest.approx(5.0)


def test_hd95_pools_both_directions():
    # Ground truth: one pixel; prediction: that pixel plus a far one. From the prediction's
    # surface the distances are {0, 6}; from the truth's, {0}: pooled {0, 0, 6}.
    truth, pred = np.zeros((10, 10), bool), np.zeros((10, 10), bool)
    truth[2, 2] = pred[2, 2] = True
    pred[2, 8] = True
    assert hd95(pred, truth) == pytest.approx(np.percentile([0, 0, 6], 95))


def test_hd95_identical_masks_is_zero_and_one_empty_mask_is_the_diagonal():
    square = np.zeros((16, 32), bool)
    square[4:12, 4:12] = True
    empty = np.zeros_like(square)
    assert hd95(square, square) == 0.0
    # A model that predicts nothing scores the worst distance there is, not a gap in the median.
    assert hd95(empty, square) == hd95(square, empty) == pytest.approx(math.hypot(16, 32))
    assert hd95(empty, empty) == 0.0


def test_hd95_shifted_square():
    a = np.zeros((32, 32), bool)
    a[8:16, 8:16] = True
    b = np.roll(a, 3, axis=1)
    # Every surface point is at most 3 px from the other surface; most of them exactly 3 (vertical
    # edges) or 0 (top and bottom rows overlap): the 95th percentile is 3.
    assert hd95(a, b) == pytest.approx(3.0)


def test_stability_counts_drops_of_more_than_the_threshold():
    # The paper: drops of "more than" 0.05. 0.85 -> 0.80 and 0.75 -> 0.70 are drops of exactly
    # 0.05 (which floating point puts a hair on either side): not counted; 0.90 -> 0.60 and
    # 0.70 -> 0.64 are.
    assert stability([0.5, 0.85, 0.8, 0.75, 0.7, 0.64, 0.9, 0.6], drop=0.05) == 2
    assert stability([0.5, 0.6, 0.7], drop=0.05) == 0
    assert stability([0.9], drop=0.05) == 0
    assert stability([0.9, 0.85], drop=0.1) == 0
    assert stability([0.9, 0.79], drop=0.1) == 1


def test_convergence_is_the_first_epoch_that_reaches_the_threshold():
    assert convergence([0.5, 0.69, 0.7, 0.9], 0.7) == 3  # reaching 0.7 is enough
    assert convergence([0.5, 0.7 - 1e-12, 0.9], 0.7) == 2  # a floating-point hair below still reaches it
    assert convergence([0.95, 0.2], 0.9) == 1
    assert convergence([0.5, 0.6], 0.7) is None


def test_numpy_arrays_and_torch_tensors_score_alike():
    for reduction in ("image", "dataset"):
        assert dice(PRED.numpy(), TRUTH.numpy(), reduction) == dice(PRED, TRUTH, reduction)
        assert iou(PRED.numpy().astype(np.uint8), TRUTH.numpy(), reduction) == iou(PRED, TRUTH, reduction)
    square = np.zeros((9, 9), bool)
    square[2:6, 2:6] = True
    shifted = np.roll(square, 2, axis=1)
    assert hd95(torch.from_numpy(square), torch.from_numpy(shifted)) == hd95(square, shifted) == 2.0


def test_soft_dice_is_kerass_dice_coef_by_hand():
    logits = torch.tensor([[[[0.0, 2.0], [-1.0, 3.0]]], [[[1.0, -2.0], [0.5, 0.0]]]])
    masks = torch.tensor([[[[0.0, 1.0], [0.0, 1.0]]], [[[1.0, 0.0], [1.0, 0.0]]]])
    p = [1 / (1 + math.exp(-v)) for v in (0.0, 2.0, -1.0, 3.0, 1.0, -2.0, 0.5, 0.0)]
    t = [0, 1, 0, 1, 1, 0, 1, 0]
    intersection = sum(pi * ti for pi, ti in zip(p, t, strict=True))
    expected = (2 * intersection + 1) / (sum(p) + sum(t) + 1)  # pooled over the batch, smoothing 1
    assert float(soft_dice(logits, masks)) == pytest.approx(expected, rel=1e-6)
    # Soft Dice stays below the hard one until the probabilities saturate.
    assert float(soft_dice(logits, masks)) < dice(logits > 0, masks.bool(), "dataset")
    assert float(soft_dice(100 * (2 * masks - 1), masks)) == pytest.approx(1.0, abs=1e-6)
