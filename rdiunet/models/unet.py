"""U-Net (Ronneberger et al., 2015), the baseline of the RDIU-Net paper.

    input -> [level: conv3x3 x n] -> pool -> ... -> [bottom: conv3x3 x n] (dropout at the end
          of the contracting path) -> [up2x, concat skip, conv3x3 x n] ... -> 1x1 -> logit

The paper reports 15.6M parameters for its U-Net but no widths. No two-conv U-Net lands there
(31.0M at widths 64..1024, 7.8M at 32..512); one 3x3 conv per level at the classic widths
64..1024 does (15.3M), so that is the default here, with batch norm and no dropout. The paper also
calls its baseline "the original U-Net": `convs_per_level=2, norm="none", dropout=0.5` is that
textbook model (31.0M), with dropout on the two deepest stages as in the original's contracting
path (docs/models.md, "Readings").
"""

import torch
from torch import nn

from .layers import check_input_size, conv_bn_relu, up_conv
from .registry import register


def conv_stack(in_channels: int, out_channels: int, convs: int, norm: str) -> nn.Sequential:
    layers = [conv_bn_relu(in_channels, out_channels, norm=norm)]
    layers += [conv_bn_relu(out_channels, out_channels, norm=norm) for _ in range(convs - 1)]
    return nn.Sequential(*layers)


@register("unet")
class UNet(nn.Module):
    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        widths: tuple[int, ...] = (64, 128, 256, 512, 1024),
        convs_per_level: int = 1,
        norm: str = "batch",
        dropout: float = 0.0,
    ):
        super().__init__()
        widths = tuple(widths)
        if len(widths) < 2 or convs_per_level < 1:
            raise ValueError("a U-Net needs at least two widths and one convolution per level")
        self.levels = len(widths) - 1
        # Contracting path: one stack per resolution, the last one is the bottom.
        inputs = (in_channels, *widths[:-1])
        self.encoder = nn.ModuleList(
            conv_stack(i, o, convs_per_level, norm) for i, o in zip(inputs, widths, strict=True)
        )
        # The end of the contracting path: the deepest skip and the bottom.
        self.dropout = nn.Dropout(dropout)
        self.dropped = {self.levels - 1, self.levels}
        self.pool = nn.MaxPool2d(2)
        # Expanding path: upsample, concatenate the skip of the same resolution, convolve.
        self.up = nn.ModuleList(up_conv(widths[k + 1], widths[k]) for k in reversed(range(self.levels)))
        self.decoder = nn.ModuleList(
            conv_stack(2 * widths[k], widths[k], convs_per_level, norm) for k in reversed(range(self.levels))
        )
        self.head = nn.Conv2d(widths[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(x.shape[-2], x.shape[-1], self.levels)
        skips = []
        for k, stack in enumerate(self.encoder):
            x = stack(x)
            if k in self.dropped:
                x = self.dropout(x)
            if k < self.levels:
                skips.append(x)
                x = self.pool(x)
        for up, stack in zip(self.up, self.decoder, strict=True):
            x = stack(torch.cat([skips.pop(), up(x)], dim=1))
        return self.head(x)
