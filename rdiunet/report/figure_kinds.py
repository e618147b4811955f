"""The report's figures: one per kind and dataset, saved as reports/figures/{kind}_{dataset}.png
and .svg. This list is the only one: `rdiunet figures` draws every kind, the HTML page shows every
kind, and the workflow (report.smk) declares every kind as an output for `snakemake --report`.
It imports nothing, so the workflow can read it without the package's dependencies."""

FIGURE_KINDS = {
    "dice_curves": (
        "The Table 2 curve per epoch (Fig. 8; the hard validation Dice unless configured otherwise): "
        "mean over seeds with a ±1 SD band; the dashed line is the Table 2 convergence threshold."
    ),
    "examples": (
        "Example test predictions (Fig. 7) of the tested checkpoint: image, ground truth, and each "
        "model's prediction (red) with the ground-truth outline (green) and the image's Dice."
    ),
    "dice_distribution": "Per-image test Dice, averaged over seeds: box per model with every image over it.",
    "gpu_power": (
        "GPU power during training (first seed) and energy per training run, from NVML; where no "
        "run was sampled on a GPU, the figure says why."
    ),
}
