"""Where a short job's start-up goes: ours against the PyTorch DataLoader script of bench/peers/,
each step in fresh processes, medians of --repeats, after `make bench-peers` made the package.

    .venv/bin/python bench/bench_startup.py --package PACKAGE.pt2 --image data/images/astronaut.png
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

STEPS = {
    "the interpreter": ("whole", "pass"),
    "import torch": ("whole", "import torch"),
    "the DataLoader script's imports (torch, torchvision, PIL)": (
        "whole",
        "import torch, torchvision; from torchvision import transforms; "
        "from torch.utils.data import DataLoader; from PIL import Image",
    ),
    "ours' imports (apache_beam, beam_ml_flink)": (
        "whole",
        "import apache_beam; from beam_ml_flink.beam import ImageClassifierHandler; "
        "from beam_ml_flink.pipeline import ClassifyImages",
    ),
    "torch: import torch._inductor": (
        "timed",
        "import time, torch\ns = time.perf_counter()\nimport torch._inductor\n"
        "print(time.perf_counter() - s)",
    ),
    "torch: aoti_load_package (torch._inductor imported)": (
        "timed",
        "import time, torch, torch._inductor\ns = time.perf_counter()\n"
        "torch._inductor.aoti_load_package({package!r})\nprint(time.perf_counter() - s)",
    ),
    "ours: ImageClassifierHandler.load_model": (
        "timed",
        "import time\nfrom beam_ml_flink.beam import ImageClassifierHandler\n"
        "h = ImageClassifierHandler({package!r}, top_k=1, mean=(0.5,) * 3, std=(0.5,) * 3)\n"
        "s = time.perf_counter()\nh.load_model()\nprint(time.perf_counter() - s)",
    ),
    "ours: the first classify of 8 images after loading": (
        "timed",
        "import time\nfrom beam_ml_flink.beam import ImageClassifierHandler\n"
        "h = ImageClassifierHandler({package!r}, top_k=1, mean=(0.5,) * 3, std=(0.5,) * 3)\n"
        "m = h.load_model()\ndata = open({image!r}, 'rb').read()\n"
        "s = time.perf_counter()\nm.classify([data] * 8)\nprint(time.perf_counter() - s)",
    ),
    "Beam's DirectRunner: one element through a Map": (
        "timed",
        "import time, apache_beam as beam\ns = time.perf_counter()\n"
        "with beam.Pipeline(runner='DirectRunner') as p:\n"
        "    p | beam.Create([1]) | beam.Map(lambda x: x)\nprint(time.perf_counter() - s)",
    ),
}


def seconds(kind: str, code: str) -> float:
    start = time.perf_counter()
    run = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    if kind == "whole":
        return time.perf_counter() - start
    return float(run.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", required=True, help="an AOTInductor package (.pt2)")
    parser.add_argument("--image", required=True, help="an image file")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    runs: dict[str, list[float]] = {name: [] for name in STEPS}
    for _ in range(args.repeats):
        for name, (kind, code) in STEPS.items():
            runs[name].append(seconds(kind, code.format(package=args.package, image=args.image)))
    print("| step | seconds, median | range |\n|---|---:|---|")
    for name, values in runs.items():
        print(f"| {name} | {statistics.median(values):.2f} | {min(values):.2f}-{max(values):.2f} |")


if __name__ == "__main__":
    main()
