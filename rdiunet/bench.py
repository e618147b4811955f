"""Cost of a model: parameters and FLOPs."""

import copy

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, size: int, in_channels: int = 1) -> int:
    """Forward FLOPs for one `size` x `size` image, counted by torch's FlopCounterMode.

    Convolutions and matrix products count 2 FLOPs per multiply-add; element-wise work (BN, ReLU,
    the involution's per-pixel products) is not counted, as in most published FLOP tables. A copy
    of the model runs on the meta device: shapes only, no arithmetic, so any size is cheap and the
    original keeps its weights and train/eval mode.
    """
    shape_only = copy.deepcopy(model).to("meta").eval()
    image = torch.empty(1, in_channels, size, size, device="meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        shape_only(image)
    return counter.get_total_flops()
