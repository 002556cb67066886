"""A plain PyTorch script: a DataLoader whose worker processes decode and preprocess with PIL and
torchvision, feeding the model in the main process.

Written as PyTorch's docs show it: a map-style `Dataset` and `DataLoader(batch_size,
num_workers)` (https://docs.pytorch.org/docs/stable/data.html), the torchvision classification
recipe `Resize(256)`, `CenterCrop(224)`, `ToTensor()`, `Normalize(mean, std)`
(https://docs.pytorch.org/vision/stable/models.html), the model under `torch.inference_mode()`.
Workers = cores; each worker runs torch on one thread (the DataLoader's default), the model on
--threads.
"""

from __future__ import annotations

import os
import time

START = time.perf_counter()

from common import load_model, parse_args, report, steady_rate  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402
from torchvision import transforms  # noqa: E402


class Images(Dataset):
    def __init__(self, paths, transform):
        self.paths = paths
        self.transform = transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        with Image.open(self.paths[index]) as image:
            return index, self.transform(image.convert("RGB"))


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    size = (224, 224) if args.resize == "squash" else 256
    steps = [transforms.Resize(size)]
    if args.resize == "recipe":
        steps.append(transforms.CenterCrop(224))
    transform = transforms.Compose(
        [*steps, transforms.ToTensor(), transforms.Normalize(args.mean, args.std)]
    )
    model = load_model(args.model, args.threads, args.pass_size)
    loader = DataLoader(
        Images(args.paths, transform),
        batch_size=args.batch,
        num_workers=os.cpu_count(),
    )
    answers, times = {}, []
    for indices, batch in loader:
        top1 = model(batch)
        now = time.time()
        for index, cls in zip(indices.tolist(), top1, strict=True):
            answers[args.paths[index]] = cls
            times.append(now)
    report(args.paths, START, answers, steady_rate(times))


if __name__ == "__main__":
    main()
