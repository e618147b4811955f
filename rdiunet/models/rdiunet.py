"""RDIU-Net (Kurosawa, Elibol, Chong, ICCAS 2023): a U-Net whose levels pair one 3x3 convolution
with a Residual Involution Block, and whose bottom is a stack of densely connected blocks.

    input -> [level: conv3x3, RIB] -> pool -> ... -> [dense bottom: (conv3x3, RIB) x N]
          -> [up2x, concat skip, conv3x3, RIB] ... -> 1x1 -> logit

    RIB(x) = x + Dropout(ReLU(BN(Conv1x1(ReLU(BN(Involution1x1(x)))))))

No code was published; the paper fixes the block structure and the parameter count (5.9M) but not
widths, dense block count and growth, dropout rate or upsampling. The defaults below were chosen to
land on 5.9M with the same encoder/decoder shape as the U-Net baseline (docs/models.md).
"""

import torch
from torch import nn

from .involution import Involution
from .layers import check_input_size, conv_bn_relu, up_conv
from .registry import register


class ResidualInvolutionBlock(nn.Module):
    """x + Dropout(Conv1x1(InvolutionKxK(x))), each layer followed by BN and ReLU (K = 1 in the paper)."""

    def __init__(self, channels: int, dropout: float, kernel_size: int = 1, group_channels: int = 16):
        super().__init__()
        self.body = nn.Sequential(
            Involution(channels, kernel_size=kernel_size, group_channels=min(group_channels, channels)),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            conv_bn_relu(channels, channels, kernel_size=1),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def conv_rib(in_channels: int, out_channels: int, dropout: float, kernel_size: int = 1) -> nn.Sequential:
    """The unit every RDIU-Net stage is built of: Conv3x3 (BN, ReLU) then a RIB."""
    return nn.Sequential(
        conv_bn_relu(in_channels, out_channels),
        ResidualInvolutionBlock(out_channels, dropout, kernel_size),
    )


class DenseBottom(nn.Module):
    """N (conv3x3, RIB) blocks; each block sees the concatenation of the input and all earlier
    outputs (DenseNet style), and the bottom returns that full concatenation."""

    def __init__(self, in_channels: int, blocks: int, growth: int, dropout: float, kernel_size: int = 1):
        super().__init__()
        self.blocks = nn.ModuleList(
            conv_rib(in_channels + k * growth, growth, dropout, kernel_size) for k in range(blocks)
        )
        self.out_channels = in_channels + blocks * growth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for block in self.blocks:
            features.append(block(torch.cat(features, dim=1)))
        return torch.cat(features, dim=1)


@register("rdiunet")
class RDIUNet(nn.Module):
    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        widths: tuple[int, ...] = (32, 64, 128, 256),
        dense_blocks: int = 6,
        growth: int = 96,
        dropout: float = 0.1,
        involution_kernel: int = 1,
    ):
        super().__init__()
        widths = tuple(widths)
        if involution_kernel < 1 or involution_kernel % 2 == 0:
            raise ValueError(f"involution_kernel must be odd and positive, got {involution_kernel}")
        self.levels = len(widths)
        k = involution_kernel
        # Contracting path: (conv3x3, RIB) per resolution, each followed by 2x2 max pooling.
        inputs = (in_channels, *widths[:-1])
        self.encoder = nn.ModuleList(conv_rib(i, o, dropout, k) for i, o in zip(inputs, widths, strict=True))
        self.pool = nn.MaxPool2d(2)
        # Bottom: densely connected (conv3x3, RIB) blocks at the coarsest resolution.
        self.bottom = DenseBottom(widths[-1], dense_blocks, growth, dropout, k)
        # Expanding path mirrors U-Net: upsample, concatenate the skip, (conv3x3, RIB).
        ups_in = (self.bottom.out_channels, *reversed(widths[1:]))
        self.up = nn.ModuleList(up_conv(i, o) for i, o in zip(ups_in, reversed(widths), strict=True))
        self.decoder = nn.ModuleList(conv_rib(2 * w, w, dropout, k) for w in reversed(widths))
        self.head = nn.Conv2d(widths[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(x.shape[-2], x.shape[-1], self.levels)
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottom(x)
        for up, stage in zip(self.up, self.decoder, strict=True):
            x = stage(torch.cat([skips.pop(), up(x)], dim=1))
        return self.head(x)
