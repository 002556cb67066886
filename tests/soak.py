"""Memory under load: resident memory while `classify` runs over many real photos, and the peak of
one batch of camera-size JPEGs. `make soak` prints the figures; tests/test_soak.py checks them.

    python tests/soak.py soak [--images 20000] [--batch 32]
    python tests/soak.py camera [--count 64]

Each prints one JSON object. Run each in a fresh process: the camera figure is the process's peak.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "data" / "images"
TINY_MODEL = ROOT / "data" / "models" / "tiny.pt"
WARM_UP = 2000


def rss_mb() -> float:
    """Resident memory now."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def reset_peak_rss() -> None:
    """Sets the peak to the current resident memory (Linux 4.0+)."""
    Path("/proc/self/clear_refs").write_text("5")


def soak(images: int, batch: int) -> dict:
    """RSS every 1,000 images while `images` photos go through classify in batches of `batch`."""
    import beam_ml_flink as bmf

    classifier = bmf.ImageClassifier(TINY_MODEL)
    photos = [p.read_bytes() for p in sorted(IMAGES.iterdir())]
    samples = []
    failed = 0
    started = time.perf_counter()
    for done in range(0, images, batch):
        data = [photos[(done + i) % len(photos)] for i in range(min(batch, images - done))]
        failed += sum(not r.ok for r in classifier.classify(data, top_k=5))
        if (done + batch) // 1000 > done // 1000:
            samples.append((done + batch, round(rss_mb(), 1)))
    after_warm_up = next(rss for n, rss in samples if n >= WARM_UP)
    return {
        "images": images,
        "failed": failed,
        "seconds": round(time.perf_counter() - started, 1),
        "rss_mb": samples,
        "rss_after_warm_up_mb": after_warm_up,
        "rss_end_mb": samples[-1][1],
        "growth": round(samples[-1][1] / after_warm_up - 1, 4),
    }


def camera(count: int) -> dict:
    """Peak RSS of one classify call over `count` distinct 4032x3024 JPEGs."""
    from PIL import Image

    import beam_ml_flink as bmf

    classifier = bmf.ImageClassifier(TINY_MODEL)
    sources = []
    for path in sorted(IMAGES.iterdir())[:4]:
        out = io.BytesIO()
        Image.open(path).convert("RGB").resize((4032, 3024)).save(out, "JPEG", quality=90)
        sources.append(out.getvalue())
    # A buffer of its own for each image, as files read from storage would have.
    data = [bytearray(sources[i % len(sources)]) for i in range(count)]
    classifier.classify(data[:2])  # the model's own first-call allocations
    before = rss_mb()
    reset_peak_rss()
    results = classifier.classify(data)
    return {
        "images": count,
        "classified": sum(r.ok for r in results),
        "input_mb": round(sum(map(len, data)) / 2**20, 1),
        "rss_before_mb": round(before, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "batch_peak_mb": round(peak_rss_mb() - before, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("soak")
    run.add_argument("--images", type=int, default=20_000)
    run.add_argument("--batch", type=int, default=32)
    cam = commands.add_parser("camera")
    cam.add_argument("--count", type=int, default=64)
    args = parser.parse_args()
    if args.command == "soak":
        print(json.dumps(soak(args.images, args.batch)))
    else:
        print(json.dumps(camera(args.count)))


if __name__ == "__main__":
    main()
