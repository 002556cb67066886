"""Which forward pass size is fastest on this machine, and does the CPU default find it?

Run by `make bench-pass-size`. Per model (MobileNetV2 and EfficientNet-Lite0, TorchScript and the
AOTInductor package), `classify` on the 256 photos of `make bench` twice over, in calls of 32
(Beam's batch), with forward passes of 2, 4, 8 and 16 images and with the default (the size chosen
from the first passes, which pays for its trials inside the timed run); a fresh classifier for each
run, the sizes alternating, median of --repeats rounds. Also the size the default chose in each
run and whether every size gives the top-1 of passes of 8.

Writes bench/results/pass-size.md and prints it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

from bench_pipeline import (
    MODELS,
    PACKAGES,
    RESULTS,
    cpu_model,
    make_inputs,
    make_models,
    make_packages,
)

PART = 32
SIZES: tuple[int | None, ...] = (None, 2, 4, 8, 16)


def run(
    model: str, mean, std, size: int | None, parts: list[list[bytes]]
) -> tuple[float, int, list]:
    """images/s of one classifier over the parts, the size it ran, the top-1 of the first part."""
    import beam_ml_flink as bmf

    classifier = bmf.ImageClassifier(model, mean=mean, std=std, forward_batch_size=size)
    start = time.perf_counter()
    top1 = [r.top_k[0][0] for r in classifier.classify(parts[0], top_k=1)]
    for part in parts[1:]:
        classifier.classify(part, top_k=1)
    rate = sum(map(len, parts)) / (time.perf_counter() - start)
    return rate, classifier.forward_batch_size, top1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default=",".join(MODELS))
    args = parser.parse_args()

    make_models()
    photos = make_inputs()["256 photos 640x427"]
    models = args.models.split(",")
    make_packages(photos, models, kinds=("fp32",))
    data = [Path(p).read_bytes() for p in photos]
    parts = [data[i : i + PART] for i in range(0, len(data), PART)] * 2

    lines = [
        f"Machine: {cpu_model()}. `classify`, {sum(map(len, parts))} images (the 256 photos of "
        f"640x427 twice) in calls of {PART}; images/s, median of {args.repeats} rounds, the sizes "
        "alternating, a fresh classifier each run (the default's trials are inside its run). "
        "Top-1: the images of the first call whose top-1 is that of passes of 8.",
        "",
        "| model | default: images/s | default chose | "
        + " | ".join(f"passes of {s}: images/s" for s in SIZES[1:])
        + " | top-1 = passes of 8 |",
        "|---|---:|---|" + "---:|" * len(SIZES[1:]) + "---:|",
    ]
    for name in models:
        script, mean, std = MODELS[name]
        for kind, model in (("TorchScript", script), ("package", PACKAGES[name]["fp32"])):
            rates: dict = {s: [] for s in SIZES}
            chosen: Counter = Counter()
            top1: dict = {}
            for round_ in range(args.repeats):
                for size in SIZES if round_ % 2 == 0 else SIZES[::-1]:
                    rate, ran, top1[size] = run(str(model), mean, std, size, parts)
                    rates[size].append(rate)
                    if size is None:
                        chosen[ran] += 1
                    print(
                        f"{name} {kind} {size or 'default'}: {rate:.1f} images/s", file=sys.stderr
                    )
            agree = min(sum(a == b for a, b in zip(top1[s], top1[8], strict=True)) for s in SIZES)
            lines.append(
                f"| {name} {kind} | {statistics.median(rates[None]):.1f} | "
                + ", ".join(f"{n} ({c}x)" if n else f"none yet ({c}x)" for n, c in chosen.items())
                + " | "
                + " | ".join(f"{statistics.median(rates[s]):.1f}" for s in SIZES[1:])
                + f" | {agree}/{PART} |"
            )
    table = "\n".join(lines) + "\n"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "pass-size.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
