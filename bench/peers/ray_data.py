"""Ray Data's batch-inference recipe, local: read_images, the torchvision transform in a map, the
model in an actor pool through map_batches.

Written as Ray's docs show it: "Image Classification Batch Inference with PyTorch"
(https://docs.ray.io/en/latest/data/examples/pytorch_resnet_batch_prediction.html) and "End-to-end:
Offline Batch Inference" (https://docs.ray.io/en/latest/data/batch_inference.html):
`ray.data.read_images(paths, mode="RGB")` (decoded by PIL), a `map` applying
`transforms.Compose([ToTensor(), weights.transforms()])` (torchvision's classification preset:
`Resize(256)` on the tensor, antialiased, not Pillow's resize; `CenterCrop(224)`; `Normalize`),
then `map_batches(Model, batch_size, compute=ActorPoolStrategy(size))` with the model loaded once
per actor in `__init__` and run under `torch.inference_mode()`. One actor (a second would leave no
core for decoding on 2 cores), its torch on --threads intra-op threads (Ray starts workers with
OMP_NUM_THREADS=1). Ray fuses the map into the actor: the transform runs there, beside the model.
"""

from __future__ import annotations

import time

START = time.perf_counter()

import numpy as np  # noqa: E402
import ray  # noqa: E402
import torch  # noqa: E402
from common import load_model, parse_args, report, steady_rate  # noqa: E402
from torchvision import transforms  # noqa: E402
from torchvision.transforms._presets import ImageClassification  # noqa: E402


class Classifier:
    def __init__(self, model_path: str, threads: int, pass_size: int):
        self.model = load_model(model_path, threads, pass_size)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        top1 = self.model(torch.from_numpy(batch["transformed_image"]))
        return {
            "path": batch["path"],
            "top1": np.array(top1),
            "answered": np.full(len(top1), time.time()),
        }


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    if args.resize != "recipe":
        raise SystemExit(
            "Ray Data's recipe is torchvision's preset (shorter side, crop): use --resize recipe"
        )
    # What `weights.transforms()` returns for torchvision's classification models, with this
    # model's normalization.
    transform = transforms.Compose(
        [transforms.ToTensor(), ImageClassification(crop_size=224, mean=args.mean, std=args.std)]
    )

    def preprocess_image(row: dict) -> dict:
        return {"path": row["path"], "transformed_image": transform(row["image"]).numpy()}

    ray.data.DataContext.get_current().enable_progress_bars = False
    ds = ray.data.read_images(args.paths, mode="RGB", include_paths=True)
    predictions = ds.map(preprocess_image).map_batches(
        Classifier,
        fn_constructor_args=(args.model, args.threads, args.pass_size),
        batch_size=args.batch,
        compute=ray.data.ActorPoolStrategy(size=1),
    )
    rows = predictions.take_all()
    answers = {row["path"]: int(row["top1"]) for row in rows}
    report(args.paths, START, answers, steady_rate([row["answered"] for row in rows]))


if __name__ == "__main__":
    main()
