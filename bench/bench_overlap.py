"""Does overlapping one pass's decoding with another pass's forward pay on this machine?

Run by `make bench-overlap` after `make bench` (which makes the photos and the packages). One
classifier, the 256 photos three times over in parts of 32 (Beam's batch), each part in forward
passes of 8, three ways, alternating, in one run:

- in turn (`schedule='in_turn'`): every image of the part decoded and preprocessed (rayon, every
  core), then the passes (libtorch's threads, every core);
- overlapped (`schedule='overlapped'`): each pass runs while the next pass's images are decoded;
- auto (`schedule='auto'`, what ours does unless told): the first part in turn, the next ones
  timed both ways, alternating, then the faster kept; its rate includes those trials.

Writes bench/results/overlap.md and prints it.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "build" / "bench"
RESULTS = ROOT / "bench" / "results"
PACKAGES = Path.home() / ".cache" / "beam_ml_flink" / "packages"
PART = 32
WAYS = ("in turn", "overlapped", "auto")
SCHEDULES = {"in turn": "in_turn", "overlapped": "overlapped", "auto": "auto"}
ROUNDS = 3  # the photos this many times over


def run_way(way: str, model: str, recipe: str) -> tuple[float, str]:
    """images/s of one way and the schedule it ended on, in a child process (a fresh
    classifier, libtorch's threads as at start-up)."""
    child = subprocess.run(
        [sys.executable, __file__, "--child", way, model, recipe],
        capture_output=True,
        text=True,
        check=True,
    )
    rate, schedule = child.stdout.strip().splitlines()[-1].split(" ", 1)
    return float(rate), schedule


def child(way: str, model: str, recipe: str) -> None:
    import beam_ml_flink as bmf

    photos = sorted((WORK / "photos").glob("*.jpg"))
    data = [p.read_bytes() for p in photos]
    parts = [data[i : i + PART] for i in range(0, len(data), PART)] * ROUNDS
    # The demo EfficientNet-Lite0 takes mean = std = 0.5; the others ImageNet's (the default).
    norm = {"mean": (0.5,) * 3, "std": (0.5,) * 3} if recipe == "half" else {}
    classifier = bmf.ImageClassifier(model, schedule=SCHEDULES[way], **norm)
    classifier.classify(parts[0][:8], top_k=1)  # warm up: one pass, not one of auto's trials
    start = time.perf_counter()
    for part in parts:
        classifier.classify(part, top_k=1)
    print(sum(map(len, parts)) / (time.perf_counter() - start), classifier.schedule)


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
        f"256 photos 640x427, {ROUNDS} times over, in parts of {PART}, forward passes of 8; "
        f"images/s, median of {args.repeats} runs, the ways alternating; what auto chose in "
        "each run.",
        "",
        "| model | " + " | ".join(WAYS) + " | auto chose |",
        "|---|" + "---:|" * len(WAYS) + "---|",
    ]
    for name, (model, recipe) in models.items():
        if model is None:
            continue
        rates: dict[str, list[float]] = {way: [] for way in WAYS}
        chosen = []
        for round_ in range(args.repeats):
            for way in WAYS if round_ % 2 == 0 else WAYS[::-1]:
                rate, schedule = run_way(way, str(model), recipe)
                rates[way].append(rate)
                if way == "auto":
                    chosen.append(schedule)
                print(f"{name} {way}: {rate:.1f} images/s ({schedule})", file=sys.stderr)
        medians = [statistics.median(rates[way]) for way in WAYS]
        lines.append(
            f"| {name} | " + " | ".join(f"{m:.1f}" for m in medians) + f" | {', '.join(chosen)} |"
        )
    table = "\n".join(lines) + "\n"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "overlap.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
