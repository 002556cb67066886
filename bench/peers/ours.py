"""Ours: beam_ml_flink's ImageClassifierHandler in RunInference on the DirectRunner, as `make
bench` runs it (bench/bench_pipeline.py's ours_pipeline): bytes in, one Rust call per batch of
32, the model optimized for inference (its default; a package runs as it is), forward passes of
the size it chooses on this machine (4 or 8).
--resize squash resizes to 224x224 with Pillow's arithmetic and no crop, as Daft's recipe does.
The model runs on libtorch's default intra-op threads (one per core, as --threads)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

START = time.perf_counter()

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_pipeline import ours_pipeline  # noqa: E402
from common import parse_args, report  # noqa: E402


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    resize = (224, 224) if args.resize == "squash" else 256
    result = ours_pipeline(
        args.paths, args.model, args.mean, args.std, True, "DirectRunner", "cpu", resize=resize
    )
    report(args.paths, START, result["top1"], len(args.paths) / result["steady_seconds"])


if __name__ == "__main__":
    main()
