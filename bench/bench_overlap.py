"""Does overlapping one part's decoding with another part's forward pass pay on this machine?

Run by `make bench-overlap` after `make bench` (which makes the photos and the packages). One
classifier, the 256 photos in parts of 32 (Beam's batch), three ways, alternating, in one run:

- in turn: one part after another, each decoded and preprocessed (rayon, every core) and then run
  through the model (libtorch's threads, every core): what ours does in a Beam bundle;
- overlapped: two threads take parts in turn, so that one part's decoding runs while the other's
  forward pass does (the call releases the GIL);
- overlapped, forward on one thread each: the same, with libtorch's intra-op threads at 1, so
  that the two stages split the cores instead of contending for them.

Writes bench/results/overlap.md and prints it.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "build" / "bench"
RESULTS = ROOT / "bench" / "results"
PACKAGES = Path.home() / ".cache" / "beam_ml_flink" / "packages"
PART = 32
WAYS = ("in turn", "overlapped", "overlapped, forward on one thread each")


def run_way(way: str, model: str, recipe: str) -> float:
    """images/s of one way, in a child process (libtorch's thread count is set once)."""
    child = subprocess.run(
        [sys.executable, __file__, "--child", way, model, recipe],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(child.stdout.strip().splitlines()[-1])


def child(way: str, model: str, recipe: str) -> None:
    import torch

    import beam_ml_flink as bmf

    if way == WAYS[2]:
        torch.set_num_threads(1)
    photos = sorted((WORK / "photos").glob("*.jpg"))
    data = [p.read_bytes() for p in photos]
    parts = [data[i : i + PART] for i in range(0, len(data), PART)]
    # The demo EfficientNet-Lite0 takes mean = std = 0.5; the others ImageNet's (the default).
    norm = {"mean": (0.5,) * 3, "std": (0.5,) * 3} if recipe == "half" else {}
    classifier = bmf.ImageClassifier(model, **norm)
    classifier.classify(parts[0][:8], top_k=1)  # warm up
    start = time.perf_counter()
    if way == WAYS[0]:
        for part in parts:
            classifier.classify(part, top_k=1)
    else:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda part: classifier.classify(part, top_k=1), parts))
    print(len(data) / (time.perf_counter() - start))


def newest(pattern: str) -> Path | None:
    """The newest package in the cache that `make bench` compiled."""
    found = sorted(PACKAGES.glob(pattern), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    if not (WORK / "photos" / "255.jpg").exists():
        sys.exit("run `make bench` first: it makes the photos and the packages")
    models = {
        "mobilenet_v2 TorchScript": (WORK / "mobilenet_v2.pt", "imagenet"),
        "mobilenet_v2 fp32 package": (newest("mobilenet_v2-fp32-*.pt2"), "imagenet"),
        "mobilenet_v2 int8 package": (newest("mobilenet_v2-int8-*.pt2"), "imagenet"),
        "efficientnet_lite0 fp32 package": (newest("efficientnet_lite0-fp32-*.pt2"), "half"),
    }
    lines = [
        f"256 photos 640x427 in parts of {PART}; images/s, median of {args.repeats} runs, the "
        "ways alternating.",
        "",
        "| model | " + " | ".join(WAYS) + " |",
        "|---|" + "---:|" * len(WAYS),
    ]
    for name, (model, recipe) in models.items():
        if model is None:
            continue
        rates: dict[str, list[float]] = {way: [] for way in WAYS}
        for round_ in range(args.repeats):
            for way in WAYS if round_ % 2 == 0 else WAYS[::-1]:
                rates[way].append(run_way(way, str(model), recipe))
                print(f"{name} {way}: {rates[way][-1]:.1f} images/s", file=sys.stderr)
        medians = [statistics.median(rates[way]) for way in WAYS]
        lines.append(f"| {name} | " + " | ".join(f"{m:.1f}" for m in medians) + " |")
    table = "\n".join(lines) + "\n"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "overlap.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
