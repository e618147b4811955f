"""The paper's reported numbers and claims (Kurosawa, Elibol, Chong, ICCAS 2023).

Table 1: Dice, IoU and ms per image on an A100-SXM-40GB, parameters. Table 2: stability (epochs
whose validation Dice fell by 0.05 or more) and convergence (first epoch above a threshold).
"""

CITATION = (
    "Kurosawa, Elibol, Chong. RDIU-Net: Lightweight Medical Image Segmentation Network. "
    "2023 23rd International Conference on Control, Automation and Systems (ICCAS 2023)."
)

TABLE1 = {
    # (dataset, model): dice, iou, ms per image
    ("nerve", "unet"): {"dice": 0.702, "iou": 0.571, "ms": 32.8},
    ("nerve", "rdiunet"): {"dice": 0.712, "iou": 0.574, "ms": 22.8},
    ("jsrt", "unet"): {"dice": 0.958, "iou": 0.929, "ms": 106.8},
    ("jsrt", "rdiunet"): {"dice": 0.972, "iou": 0.935, "ms": 83.2},
    ("isic", "unet"): {"dice": 0.777, "iou": 0.675, "ms": 31.0},
    ("isic", "rdiunet"): {"dice": 0.801, "iou": 0.694, "ms": 22.8},
}
PARAMS = {"unet": 15.6e6, "rdiunet": 5.9e6}

TABLE2 = {
    ("nerve", "unet"): {"stability": 5, "convergence": 36},
    ("nerve", "rdiunet"): {"stability": 0, "convergence": 17},
    ("jsrt", "unet"): {"stability": 3, "convergence": 153},
    ("jsrt", "rdiunet"): {"stability": 0, "convergence": 34},
    ("isic", "unet"): {"stability": 15, "convergence": 36},
    ("isic", "rdiunet"): {"stability": 4, "convergence": 18},
}
THRESHOLDS = {"nerve": 0.7, "jsrt": 0.95, "isic": 0.75}
STABILITY_DROP = 0.05

HARDWARE = "NVIDIA A100-SXM-40GB"
BASELINE, PROPOSED = "unet", "rdiunet"
DATASETS = ("nerve", "jsrt", "isic")  # the sources of the paper's Tables 1 and 2

CLAIMS = {
    "accuracy": "RDIU-Net is more accurate than U-Net (Dice) on each dataset",
    "speed": "RDIU-Net is 20-30% faster per image than U-Net",
    "parameters": "RDIU-Net has 62% fewer parameters than U-Net (15.6M -> 5.9M)",
    "stability": "RDIU-Net trains more stably (fewer validation-Dice drops of 0.05 or more)",
    "convergence": "RDIU-Net converges in fewer epochs",
}


def table1(dataset: str, model: str) -> dict:
    """The paper's Table 1 cell: dice, iou, ms and params, where it reports them."""
    reported = dict(TABLE1.get((dataset, model), {}))
    if model in PARAMS:
        reported["params"] = PARAMS[model]
    return reported


def table2(dataset: str, model: str) -> dict:
    return TABLE2.get((dataset, model), {})
