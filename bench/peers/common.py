"""What every contender of `make bench-peers` shares: its command line, the model as given, and the
JSON line it prints.

Each contender is a whole process: `python bench/peers/X.py --images LIST --model M ...`. It reads
the image paths from LIST (one per line), classifies them its own way, and prints one JSON line:
the images, its own seconds, its steady rate and the top-1 class of each image (for the agreement
check). The model is used as given: TorchScript as saved (`torch.jit.load`), or an AOTInductor
package (`.pt2`, `torch._inductor.aoti_load_package`) run in passes of --pass_size images: the size
ours chose on this machine for that package, which bench_peers.py measures and gives every
contender (a package may bound its batch: EfficientNet-Lite0's takes at most 15).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--images", required=True, help="a text file with one image path a line")
    parser.add_argument("--model", required=True, help="TorchScript (.pt) or a package (.pt2)")
    parser.add_argument("--mean", default="0.485,0.456,0.406")
    parser.add_argument("--std", default="0.229,0.224,0.225")
    parser.add_argument("--threads", type=int, required=True, help="intra-op threads of the model")
    parser.add_argument("--batch", type=int, default=32, help="images per model call")
    parser.add_argument(
        "--pass_size", type=int, default=8, help="images per forward pass of a package"
    )
    parser.add_argument(
        "--resize",
        choices=("recipe", "squash"),
        default="recipe",
        help="recipe: shorter side 256, center crop 224; squash: 224x224, no crop",
    )
    args = parser.parse_args()
    args.paths = Path(args.images).read_text().split()
    args.mean = tuple(float(v) for v in args.mean.split(","))
    args.std = tuple(float(v) for v in args.std.split(","))
    return args


def load_model(path: str, threads: int, pass_size: int) -> Callable:
    """The model as given, as a function from a float NCHW batch to top-1 indices; a package
    runs in passes of `pass_size` images."""
    import torch

    torch.set_num_threads(threads)
    if path.endswith(".pt2"):
        package = torch._inductor.aoti_load_package(path)

        def forward(batch):
            with torch.inference_mode():
                logits = torch.cat([package(part) for part in batch.split(pass_size)])
            return logits.argmax(1).tolist()

        return forward
    module = torch.jit.load(path).eval()

    def forward(batch):
        with torch.inference_mode():
            return module(batch).argmax(1).tolist()

    return forward


def steady_rate(answer_times: Sequence[float]) -> float | None:
    """Images/s between the answer that completes the first 10% and the last answer: the rate once
    the contender is started and its pipeline full. None when the answers came all at once."""
    times = sorted(answer_times)
    first = len(times) // 10
    span = times[-1] - times[first]
    return (len(times) - 1 - first) / span if span > 0 else None


def report(
    paths: Sequence[str], started: float, answers: dict[str, int], steady: float | None
) -> None:
    """Prints the contender's JSON line; `started` is time.perf_counter() at the script's start,
    `steady` its steady images/s (see steady_rate)."""
    missing = set(paths) - set(answers)
    if missing:
        raise SystemExit(f"{len(missing)} images have no answer, e.g. {sorted(missing)[0]}")
    print(
        json.dumps(
            {
                "images": len(paths),
                "seconds": time.perf_counter() - started,
                "steady_rate": steady,
                "top1": answers,
            }
        ),
        flush=True,
    )
