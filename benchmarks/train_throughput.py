"""Training throughput: rdiunet's resident-tensor batches against a plain DataLoader, on CPU.

Both loops train the same model with the same batch size, Adam and BCE on the same synthetic
images; only the data path differs:

- rdiunet: the split is one uint8 tensor; a batch is one index operation and a cast
  (rdiunet.data.dataset.batches), as `rdiunet train` does;
- plain: a torch Dataset returning one float32 numpy image/mask pair per index, batched by a
  default DataLoader (shuffle, default collate, no worker processes).

Reported per configuration: images/s over whole epochs, the time to produce one batch, and the
share of each step spent waiting for data (time to produce the batch / time of the whole step).

    python benchmarks/train_throughput.py [--epochs 3] [--threads 2]
"""

import argparse
import platform
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from rdiunet.data.dataset import Split, batches
from rdiunet.models import build

CONFIGS = {
    # name: (model, options, image side, batch size, images)
    "demo size: tiny RDIU-Net, 64 px": (
        "rdiunet",
        {"widths": (8, 16, 32, 64), "dense_blocks": 2, "growth": 16},
        64,
        8,
        256,
    ),
    "tiny U-Net, 64 px": ("unet", {"widths": (8, 16, 32, 64, 128)}, 64, 8, 256),
    "paper size: RDIU-Net, 128 px": ("rdiunet", {}, 128, 16, 64),
}


class NumpyPairs(Dataset):
    def __init__(self, images: np.ndarray, masks: np.ndarray):
        self.images, self.masks = images, masks

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        image = self.images[index][None].astype(np.float32) / 255
        mask = self.masks[index][None].astype(np.float32)
        return image, mask


def run_epochs(model, optimizer, make_batches, epochs: int):
    data_s = step_s = 0.0
    images = steps = 0
    for epoch in range(epochs):
        iterator = iter(make_batches(epoch))
        while True:
            start = time.perf_counter()
            try:
                x, y = next(iterator)
            except StopIteration:
                break
            fetched = time.perf_counter()
            loss = F.binary_cross_entropy_with_logits(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            done = time.perf_counter()
            data_s += fetched - start
            step_s += done - start
            images += len(x)
            steps += 1
    return images / step_s, data_s / step_s, 1000 * data_s / steps


def measure(name, spec, epochs):
    model_name, options, side, batch_size, count = spec
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (count, side, side), dtype=np.uint8)
    masks = (rng.random((count, side, side)) > 0.5).astype(np.uint8)
    results = {}
    for label in ("plain", "rdiunet"):
        torch.manual_seed(0)
        model = build(model_name, **options).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        if label == "rdiunet":
            split = Split(
                torch.from_numpy(images).unsqueeze(1), torch.from_numpy(masks).unsqueeze(1), ("",) * count
            )

            def make(epoch, split=split):
                return batches(split, batch_size, True, torch.Generator().manual_seed(epoch))
        else:
            loader = DataLoader(NumpyPairs(images, masks), batch_size=batch_size, shuffle=True)

            def make(epoch, loader=loader):
                return loader

        run_epochs(model, optimizer, make, 1)  # warm-up
        results[label] = run_epochs(model, optimizer, make, epochs)
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# {platform.machine()}, torch {torch.__version__}, {args.threads} threads, {args.epochs} epochs")
    print("| configuration | loop | images/s | data ms/batch | data share of step | speed-up |")
    print("|---|---|---|---|---|---|")
    for name, spec in CONFIGS.items():
        results = measure(name, spec, args.epochs)
        baseline = results["plain"][0]
        for label, (rate, share, data_ms) in results.items():
            print(f"| {name} | {label} | {rate:.0f} | {data_ms:.2f} | {share:.1%} | {rate / baseline:.2f}x |")


if __name__ == "__main__":
    main()
