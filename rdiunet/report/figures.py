"""Figures: validation-Dice curves (Fig. 8), example predictions (Fig. 7), per-image Dice
distributions, and GPU power and energy (figure_kinds.FIGURE_KINDS lists them). Each is saved as
PNG (for the page) and SVG (for papers)."""

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch

from rdiunet.data.dataset import open_prepared
from rdiunet.fileio import atomic_path
from rdiunet.metrics import dice
from rdiunet.runfolder import RunFolder

from .collect import Collection, Study, collect, energy_withheld
from .figure_kinds import FIGURE_KINDS

EXAMPLES = 4
PALETTE = {"unet": "#1f77b4", "rdiunet": "#d62728", "unet_classic": "#17becf", "rdiunet_k3": "#ff7f0e"}
MORE = ("#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22")


def colour(model: str) -> str:
    """A fixed colour per label: the paper's models and readings their own, others from a cycle."""
    return PALETTE.get(model) or MORE[sum(map(ord, model)) % len(MORE)]


def save(figure, out: Path, stem: str) -> list[Path]:
    paths = []
    for suffix in ("png", "svg"):
        path = out / f"{stem}.{suffix}"
        with atomic_path(path) as tmp:
            figure.savefig(tmp, format=suffix, dpi=130, bbox_inches="tight")
        paths.append(path)
    plt.close(figure)
    return paths


def dice_curves(histories: pd.DataFrame, dataset: str, study: Study, out: Path) -> list[Path]:
    """The Table 2 curve per epoch (mean, +-1 SD band over seeds) and the Table 2 threshold."""
    figure, axes = plt.subplots(figsize=(6.4, 4))
    for model in study.models_of(dataset):
        curves = histories[(histories.dataset == dataset) & (histories.model == model)]
        by_epoch = curves.groupby("epoch")[study.curve]
        mean, sd = by_epoch.mean(), by_epoch.std().fillna(0)
        axes.plot(
            mean.index, mean, color=colour(model), label=f"{model} (mean of {curves.seed.nunique()} seeds)"
        )
        axes.fill_between(mean.index, mean - sd, mean + sd, color=colour(model), alpha=0.2, linewidth=0)
    threshold = study.threshold(dataset)
    axes.axhline(
        threshold, color="black", linestyle="--", linewidth=1, label=f"Table 2 threshold {threshold}"
    )
    axes.set(xlabel="epoch", ylabel=study.curve, title=f"{dataset}: {study.curve} per epoch", ylim=(0, 1.02))
    axes.legend(loc="lower right", fontsize=8)
    axes.grid(alpha=0.3)
    return save(figure, out, f"dice_curves_{dataset}")


def dice_distribution(per_image: pd.DataFrame, dataset: str, study: Study, out: Path) -> list[Path]:
    """Per-image test Dice of the headline checkpoint (averaged over seeds): a box per model with
    the images over it."""
    tested = per_image[(per_image.dataset == dataset) & (per_image.checkpoint == study.checkpoint)]
    images = tested.groupby(["model", "id"], as_index=False)["dice"].mean()
    order = study.models_of(dataset)
    figure, axes = plt.subplots(figsize=(4.8, 4))
    sns.boxplot(
        data=images, x="model", y="dice", order=order, ax=axes, color="white", showfliers=False, width=0.5
    )
    sns.stripplot(
        data=images,
        x="model",
        y="dice",
        order=order,
        ax=axes,
        hue="model",
        palette={m: colour(m) for m in order},
        size=3,
        alpha=0.6,
        jitter=0.2,
        legend=False,
    )
    axes.set(ylabel="test Dice per image (mean over seeds)", xlabel="", title=f"{dataset}: per-image Dice")
    axes.grid(axis="y", alpha=0.3)
    return save(figure, out, f"dice_distribution_{dataset}")


def predict(folder: RunFolder, images: torch.Tensor, checkpoint: str) -> np.ndarray:
    """Binary predictions of a run's checkpoint (on the CPU: a few images only)."""
    with torch.no_grad():
        return (folder.load_model(checkpoint)(images.float() / 255) > 0).numpy()[:, 0]


def first_valid_seed(collection: Collection, dataset: str, model: str) -> int | None:
    seeds = collection.runs[(collection.runs.dataset == dataset) & (collection.runs.model == model)].seed
    return int(seeds.min()) if len(seeds) else None


def examples(
    results: Path, data: Path, dataset: str, collection: Collection, study: Study, out: Path
) -> list[Path]:
    """The Fig. 7 analogue: fixed test images (evenly spaced in id order), their ground truth, and
    each model's prediction (its first valid seed) with its Dice. On a cross-validated dataset every
    model shows the first seed valid for all of them, so that no model is shown an image it was
    trained on (each seed tests another fold)."""
    models = study.models_of(dataset)
    seeds = {m: first_valid_seed(collection, dataset, m) for m in models}
    if study.folds_of(dataset):
        runs = collection.runs[collection.runs.dataset == dataset]
        common = set.intersection(*(set(runs[runs.model == m].seed) for m in models)) if len(runs) else set()
        seeds = dict.fromkeys(models, min(common)) if common else dict.fromkeys(models)
    shown_seed = next((seed for seed in seeds.values() if seed is not None), 0)
    test = open_prepared(data / f"{dataset}.npz", int(shown_seed)).splits["test"]
    order = np.argsort(test.ids)
    chosen = order[np.linspace(0, len(order) - 1, min(EXAMPLES, len(order))).round().astype(int)]
    images, masks = test.images[chosen], test.masks[chosen]
    predictions = {
        m: predict(RunFolder.of(results, dataset, m, seed), images, study.checkpoint)
        for m, seed in seeds.items()
        if seed is not None
    }
    columns = ["image", "ground truth", *(f"{m} (seed {seeds[m]})" for m in models)]
    figure, axes = plt.subplots(
        len(chosen), len(columns), figsize=(2.2 * len(columns), 2.2 * len(chosen)), squeeze=False
    )
    for row, index in enumerate(chosen):
        image, truth = images[row, 0].numpy(), masks[row, 0].numpy().astype(bool)
        axes[row, 0].imshow(image, cmap="gray")
        axes[row, 0].set_ylabel(test.ids[index], fontsize=7)
        axes[row, 1].imshow(truth, cmap="gray")
        for column, model in enumerate(models, start=2):
            if model not in predictions:
                axes[row, column].text(0.5, 0.5, "no valid run", ha="center", va="center", fontsize=8)
                continue
            pred = predictions[model][row].astype(bool)
            score = dice(pred[None], truth[None])
            overlay = np.stack([image / 255] * 3, axis=-1) * 0.7
            overlay[pred] = overlay[pred] * 0.4 + np.array([1.0, 0.2, 0.2]) * 0.6
            axes[row, column].imshow(overlay)
            axes[row, column].contour(truth, levels=[0.5], colors=["#2ca02c"], linewidths=0.8)
            axes[row, column].set_xlabel(f"Dice {score:.3f}", fontsize=7)
    for column, title in enumerate(columns):
        axes[0, column].set_title(title, fontsize=9)
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    figure.suptitle(f"{dataset}: test examples (red: prediction, green: ground truth outline)", fontsize=9)
    return save(figure, out, f"examples_{dataset}")


def gpu_power(results: Path, dataset: str, collection: Collection, study: Study, out: Path) -> list[Path]:
    """Power over training time per model (its first valid seed) and energy per run; where no run
    has NVML samples, a figure that says why (from the runs' own GPU records)."""
    traces, energies, reasons = {}, [], set()
    runs = collection.runs
    valid = runs[(runs.dataset == dataset) & (runs.checkpoint == study.checkpoint)]
    for model, seed in zip(valid.model, valid.seed, strict=True):
        folder = RunFolder.of(results, dataset, model, int(seed))
        samples = folder.read_gpu_samples()
        first = seed == first_valid_seed(collection, dataset, model)
        if first and not samples.empty and "power_w" in samples and samples.power_w.notna().any():
            traces[model] = samples.assign(minutes=(samples.time - samples.time.iloc[0]) / 60)
        gpu = folder.read_metrics().get("gpu") or {}
        if gpu.get("energy_j_total") is not None and not energy_withheld(gpu):  # a shared card: not its own
            energies.append({"model": model, "seed": seed, "energy_kj": gpu["energy_j_total"] / 1000})
        if not gpu.get("available", False):
            reasons.add(gpu.get("reason", "no GPU record"))
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for model, trace in traces.items():
        left.plot(trace.minutes, trace.power_w, color=colour(model), label=model, linewidth=0.8)
    left.set(
        xlabel="training time (min)", ylabel="GPU power (W)", title=f"{dataset}: power, first valid seed"
    )
    if traces:
        left.legend(fontsize=8)
    if energies:
        frame = pd.DataFrame(energies)
        sns.barplot(
            data=frame,
            x="model",
            y="energy_kj",
            hue="model",
            ax=right,
            errorbar="sd",
            palette={m: colour(m) for m in frame.model.unique()},
            legend=False,
        )
    right.set(ylabel="energy per training run (kJ)", xlabel="", title="energy per run (mean ± SD)")
    if not traces:
        why = "; ".join(sorted(reasons)) or "gpu.csv holds no power samples"
        for axis in (left, right):
            axis.text(
                0.5, 0.5, f"no NVML samples:\n{why}", ha="center", va="center", transform=axis.transAxes
            )
    return save(figure, out, f"gpu_power_{dataset}")


def all_figures(results: Path, data: Path, study: Study, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    sns.set_theme(style="whitegrid", context="paper")
    collection = collect(results, study, data)
    draw = {
        "dice_curves": lambda dataset: dice_curves(collection.histories, dataset, study, out),
        "examples": lambda dataset: examples(results, data, dataset, collection, study, out),
        "dice_distribution": lambda dataset: dice_distribution(collection.per_image, dataset, study, out),
        "gpu_power": lambda dataset: gpu_power(results, dataset, collection, study, out),
    }
    paths = []
    for dataset in study.datasets:
        for kind in FIGURE_KINDS:
            paths += draw[kind](dataset)
    return paths


def figures_command(results: Path, data: Path, config: dict, out: Path) -> None:
    """`rdiunet figures`: every kind of figure for every dataset."""
    for path in all_figures(results, data, Study.from_config(config), out):
        print(path)
