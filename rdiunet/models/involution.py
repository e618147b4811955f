"""Involution (Li et al., "Involution: Inverting the Inherence of Convolution", CVPR 2021).

A convolution shares one kernel across space and varies it across channels; involution does the
opposite. Each output pixel gets its own K x K kernel, generated from that pixel's own features,
and the kernel is shared by every channel in a group of `group_channels` contiguous channels:

    kernel = Conv1x1(C/r -> K*K*G)( ReLU( BN( Conv1x1(C -> C/r)( AvgPool_s(x) ) ) ) )
    out[b, c, i, j] = sum over u, v of
        kernel[b, group(c), (u, v), i, j] * x[b, c, s*i + u - K//2, s*j + v - K//2]

`involve` evaluates the sum by accumulating K*K shifted products, so memory stays at a few
output-sized tensors. `involve_unfold` is the textbook formulation through `F.unfold`, which
materialises a K*K times larger tensor; it is kept as the reference the fast path is tested and
benchmarked against.
"""

import torch
import torch.nn.functional as F
from torch import nn


def output_size(size: int, stride: int) -> int:
    """Spatial size after an involution with padding K//2 (odd K), as for a 'same' convolution."""
    return (size - 1) // stride + 1


def involve(x: torch.Tensor, kernel: torch.Tensor, kernel_size: int, stride: int = 1) -> torch.Tensor:
    """Apply per-pixel kernels (B, G, K*K, Ho, Wo) to x (B, C, H, W) by summing shifted products."""
    b, c, h, w = x.shape
    groups = kernel.shape[1]
    ho, wo = output_size(h, stride), output_size(w, stride)
    if kernel_size == 1:
        # A 1x1 involution is a per-pixel, per-group scale: no neighbourhood to gather.
        centre = x[:, :, ::stride, ::stride].reshape(b, groups, c // groups, ho, wo)
        return (centre * kernel[:, :, :1]).reshape(b, c, ho, wo)
    pad = kernel_size // 2
    padded = F.pad(x, (pad, pad, pad, pad)).reshape(b, groups, c // groups, h + 2 * pad, w + 2 * pad)
    out = None
    for offset in range(kernel_size * kernel_size):
        du, dv = divmod(offset, kernel_size)
        window = padded[
            ..., du : du + stride * (ho - 1) + 1 : stride, dv : dv + stride * (wo - 1) + 1 : stride
        ]
        term = window * kernel[:, :, offset : offset + 1]
        out = term if out is None else out + term
    return out.reshape(b, c, ho, wo)


def involve_unfold(x: torch.Tensor, kernel: torch.Tensor, kernel_size: int, stride: int = 1) -> torch.Tensor:
    """Reference: the same sum through `F.unfold` (memory K*K times the input)."""
    b, c, h, w = x.shape
    groups = kernel.shape[1]
    ho, wo = output_size(h, stride), output_size(w, stride)
    patches = F.unfold(x, kernel_size, padding=kernel_size // 2, stride=stride)
    patches = patches.reshape(b, groups, c // groups, kernel_size * kernel_size, ho, wo)
    return (patches * kernel.unsqueeze(2)).sum(dim=3).reshape(b, c, ho, wo)


class Involution(nn.Module):
    """Involution over `channels` channels in groups of `group_channels`, K x K, stride s."""

    def __init__(
        self,
        channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        group_channels: int = 16,
        reduction: int = 4,
    ):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
        if channels % group_channels:
            raise ValueError(f"channels ({channels}) must be a multiple of group_channels ({group_channels})")
        self.kernel_size = kernel_size
        self.stride = stride
        self.groups = channels // group_channels
        hidden = max(channels // reduction, 1)
        self.pool = nn.AvgPool2d(stride, stride, ceil_mode=True) if stride > 1 else nn.Identity()
        self.reduce = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
        )
        self.span = nn.Conv2d(hidden, kernel_size * kernel_size * self.groups, 1)

    def kernel(self, x: torch.Tensor) -> torch.Tensor:
        """The generated kernels, shape (B, G, K*K, H_out, W_out)."""
        weights = self.span(self.reduce(self.pool(x)))
        b, _, ho, wo = weights.shape
        return weights.reshape(b, self.groups, self.kernel_size * self.kernel_size, ho, wo)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return involve(x, self.kernel(x), self.kernel_size, self.stride)
