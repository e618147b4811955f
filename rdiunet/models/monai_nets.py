"""MONAI's U-Nets as field-standard baselines (optional: `pip install 'rdiunet-bench[monai]'`).

MONAI is imported inside each builder, so the rest of the suite runs without it; `rdiunet info`
lists these models as needing it. Both are 2-D, one input channel, one output logit map, with
MONAI's own defaults: UNet with residual units (Kerfoot et al. 2018) and BasicUNet.
"""

from .registry import register


@register("monai_unet", requires=("monai",))
def monai_unet(
    in_channels: int = 1,
    out_channels: int = 1,
    channels: tuple[int, ...] = (16, 32, 64, 128, 256),
    strides: tuple[int, ...] = (2, 2, 2, 2),
    num_res_units: int = 2,
    dropout: float = 0.0,
):
    from monai.networks.nets import UNet

    return UNet(
        spatial_dims=2,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=tuple(channels),
        strides=tuple(strides),
        num_res_units=num_res_units,
        dropout=dropout,
    )


@register("monai_basic_unet", requires=("monai",))
def monai_basic_unet(
    in_channels: int = 1,
    out_channels: int = 1,
    features: tuple[int, ...] = (32, 32, 64, 128, 256, 32),
    dropout: float = 0.0,
):
    from monai.networks.nets import BasicUNet

    return BasicUNet(
        spatial_dims=2,
        in_channels=in_channels,
        out_channels=out_channels,
        features=tuple(features),
        dropout=dropout,
    )
