"""Beam's stock PyTorch path, as `make bench` runs it (bench/bench_pipeline.py's stock_pipeline):
PIL + torchvision (`Resize(256)`, `CenterCrop(224)`, `ToTensor`, `Normalize`) in a Beam `Map`,
then Beam's `PytorchModelHandlerTensor` in `RunInference`, batch 32, on the DirectRunner; a
package (.pt2) is loaded by the handler's `load_model` and run in passes of --pass_size. The
model runs on torch's default intra-op threads (one per core, as --threads)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

START = time.perf_counter()

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_pipeline import stock_pipeline  # noqa: E402
from common import parse_args, report  # noqa: E402


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    if args.resize != "recipe":
        raise SystemExit("the stock path runs the recipe: --resize recipe")
    result = stock_pipeline(
        args.paths,
        args.model,
        args.mean,
        args.std,
        False,
        "DirectRunner",
        "cpu",
        passes_of=args.pass_size,
    )
    report(args.paths, START, result["top1"], len(args.paths) / result["steady_seconds"])


if __name__ == "__main__":
    main()
