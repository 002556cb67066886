"""Daft's recipe, local: native download, decode and resize (Rust), the model in a class UDF.

Written as Daft's docs show it: "Working with Images" (https://docs.daft.ai/en/stable/modalities/images/):
`download()` then `decode_image()` and `resize(image, w, h)`, all native; "User-Defined
Functions" (https://docs.daft.ai/en/stable/custom-code/cls/): a `@daft.cls` class that loads the
model once in `__init__`, and a `@daft.method.batch` that stacks the batch's images into one
tensor and runs the model under `torch.inference_mode()`. Daft has no shorter-side resize, so
its recipe squashes the image to 224x224 (no crop): compare it with the squash rows of the others.
One instance of the class, its torch on --threads intra-op threads.
"""

from __future__ import annotations

import time

START = time.perf_counter()

import daft  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import load_model, parse_args, report, steady_rate  # noqa: E402
from daft import DataType, col  # noqa: E402
from daft.functions import decode_image, download, resize  # noqa: E402

ANSWER = DataType.struct({"top1": DataType.int64(), "answered": DataType.float64()})


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    if args.resize != "squash":
        raise SystemExit("Daft resizes to a width and a height only: --resize squash")
    mean = torch.tensor(args.mean).view(1, 3, 1, 1)
    std = torch.tensor(args.std).view(1, 3, 1, 1)

    @daft.cls(max_concurrency=1)
    class Classifier:
        def __init__(self, model_path: str, threads: int, pass_size: int):
            self.model = load_model(model_path, threads, pass_size)

        @daft.method.batch(return_dtype=ANSWER, unnest=True, batch_size=args.batch)
        def __call__(self, images: daft.Series):
            pixels = torch.from_numpy(np.stack(images.to_pylist()))
            batch = (pixels.permute(0, 3, 1, 2).float() / 255 - mean) / std
            top1 = self.model(batch.contiguous())
            now = time.time()
            return [{"top1": c, "answered": now} for c in top1]

    df = daft.from_pydict({"path": args.paths})
    df = df.with_column("image", resize(decode_image(download(col("path"))), 224, 224))
    df = df.select(col("path"), Classifier(args.model, args.threads, args.pass_size)(col("image")))
    rows = df.to_pydict()
    answers = dict(zip(rows["path"], rows["top1"], strict=True))
    report(args.paths, START, answers, steady_rate(rows["answered"]))


if __name__ == "__main__":
    main()
