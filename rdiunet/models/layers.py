"""Layers shared by both models."""

from torch import nn

NORMS = ("batch", "none")


def conv_bn_relu(
    in_channels: int, out_channels: int, kernel_size: int = 3, norm: str = "batch"
) -> nn.Sequential:
    """Conv -> BatchNorm -> ReLU, 'same' padding; with norm "none", Conv (with its bias) -> ReLU."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    batch = norm == "batch"
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=not batch)
    layers = [conv, nn.BatchNorm2d(out_channels)] if batch else [conv]
    return nn.Sequential(*layers, nn.ReLU(inplace=True))


def up_conv(in_channels: int, out_channels: int) -> nn.ConvTranspose2d:
    """Learned 2x upsampling, as in the original U-Net."""
    return nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)


def check_input_size(height: int, width: int, levels: int) -> None:
    """Each of `levels` poolings halves the side; the decoder needs the sizes to line up again."""
    multiple = 2**levels
    if height % multiple or width % multiple:
        raise ValueError(f"input side must be divisible by {multiple}, got {height}x{width}")
