"""rdiunet-bench: reproduce RDIU-Net (ICCAS 2023)."""

__version__ = "0.1.0"
