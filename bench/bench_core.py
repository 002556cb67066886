"""Preprocessing and classify speed of the Rust core against the usual Python recipes.

Run by `make bench-core`. Per-image times are medians over repeated runs of a whole image set,
on one core (torch and rayon limited to one thread) and on all cores; the markdown table goes to
stdout and to bench/results/core.md. On the 640x427 photos, `preprocess` is also timed with each
of Pillow's other filters (`interpolation=`), beside the PIL recipe with bicubic.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "data" / "images"
MODEL = ROOT / "data" / "models" / "efficientnet_lite0.pt"
MEAN = STD = (0.5, 0.5, 0.5)
PHOTOS = ["china.jpg", "flower.jpg", "rocket.jpg"]  # real 640x427 JPEGs
PHOTOS_SET = "640x427 JPEG"
# Pillow's filters other than bilinear (the default, timed in every set).
OTHER_FILTERS = ["nearest", "box", "hamming", "bicubic", "lanczos"]


def image_sets() -> dict[str, list[bytes]]:
    from PIL import Image

    photos = [(IMAGES / n).read_bytes() for n in PHOTOS] * 11  # 33 images
    big = []
    for name in PHOTOS:
        out = io.BytesIO()
        image = Image.open(IMAGES / name).convert("RGB")
        image.resize((4032, 3024), Image.Resampling.BICUBIC).save(out, "JPEG", quality=90)
        big.append(out.getvalue())
    return {PHOTOS_SET: photos, "4032x3024 JPEG": big * 2}


def median_ms_per_image(run, images: list[bytes], repeats: int) -> float:
    run(images[:2])  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(images)
        times.append((time.perf_counter() - start) / len(images) * 1000)
    return statistics.median(times)


def preprocess_contenders(set_name: str) -> dict:
    import torch
    from PIL import Image
    from torchvision import transforms
    from torchvision.io import decode_jpeg
    from torchvision.transforms import v2

    import beam_ml_flink as bmf

    recipe = transforms.Compose(
        [
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize(MEAN, STD),
        ]
    )

    def pil_recipe(images):
        return torch.stack([recipe(Image.open(io.BytesIO(b)).convert("RGB")) for b in images])

    bicubic_recipe = transforms.Compose(
        [
            transforms.Resize(256, interpolation=transforms.InterpolationMode.BICUBIC),
            *recipe.transforms[1:],
        ]
    )

    def pil_bicubic(images):
        return torch.stack(
            [bicubic_recipe(Image.open(io.BytesIO(b)).convert("RGB")) for b in images]
        )

    def pil_draft(images):
        out = []
        for b in images:
            image = Image.open(io.BytesIO(b))
            image.draft("RGB", (512, 512))
            out.append(recipe(image.convert("RGB")))
        return torch.stack(out)

    tensor_recipe = v2.Compose(
        [
            v2.Resize(256, antialias=True),
            v2.CenterCrop(224),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(MEAN, STD),
        ]
    )

    def torchvision_io(images):
        return torch.stack(
            [
                tensor_recipe(decode_jpeg(torch.frombuffer(bytearray(b), dtype=torch.uint8)))
                for b in images
            ]
        )

    contenders = {
        "PIL + torchvision (the recipe)": pil_recipe,
        "PIL with draft() + torchvision": pil_draft,
        "torchvision.io + v2 transforms": torchvision_io,
        "beam-ml-flink preprocess, draft=True": lambda images: bmf.preprocess(
            images, mean=MEAN, std=STD, draft=True
        ),
        "beam-ml-flink preprocess": lambda images: bmf.preprocess(images, mean=MEAN, std=STD),
    }
    if set_name == PHOTOS_SET:
        contenders["PIL + torchvision, bicubic"] = pil_bicubic
        for name in OTHER_FILTERS:
            contenders[f"beam-ml-flink preprocess, {name}"] = lambda images, name=name: (
                bmf.preprocess(images, mean=MEAN, std=STD, interpolation=name)
            )
    return contenders


def measure_preprocess(repeats: int) -> dict:
    import torch

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", os.cpu_count())))
    results = {}
    for set_name, images in image_sets().items():
        for name, run in preprocess_contenders(set_name).items():
            results[f"{set_name}|{name}"] = median_ms_per_image(run, images, repeats)
    return results


def measure_classify(repeats: int) -> dict:
    """ms per batch of 32 photos: the bare forward and its variants, and `classify`."""
    import torch
    from bench_pipeline import MODELS, make_models

    import beam_ml_flink as bmf

    make_models()
    images = ([(IMAGES / n).read_bytes() for n in PHOTOS] * 11)[:32]
    cores = torch.get_num_threads()
    out = {}
    for model_name, (path, mean, std) in MODELS.items():
        batch = torch.from_numpy(bmf.preprocess(images, mean=mean, std=std))
        saved = torch.jit.load(str(path)).eval()
        optimized = torch.jit.optimize_for_inference(torch.jit.freeze(saved))
        channels_last = batch.contiguous(memory_format=torch.channels_last)
        classifier = bmf.ImageClassifier(path, mean=mean, std=std, forward_batch_size=8)
        one_pass = bmf.ImageClassifier(path, mean=mean, std=std, forward_batch_size=32)
        variants = {
            "bare forward, as saved": _forward(saved, [batch], cores),
            "bare forward, optimized": _forward(optimized, [batch], cores),
            "bare forward, optimized, channels_last input": _forward(
                optimized, [channels_last], cores
            ),
            "bare forward, optimized, 1 intra-op thread": _forward(optimized, [batch], 1),
            "bare forward, optimized, 4 passes of 8": _forward(optimized, batch.split(8), cores),
            "`classify`, one forward pass of 32": one_pass.classify,
            "`classify`, passes of 8": classifier.classify,
        }
        for name, run in variants.items():
            out[f"{model_name}|{name}"] = median_ms_per_image(run, images, repeats) * len(images)
    return out


def _forward(module, tensors, threads: int):
    import torch

    def run(_):
        cores = torch.get_num_threads()
        torch.set_num_threads(threads)
        with torch.no_grad():
            for tensor in tensors:
                module(tensor)
        torch.set_num_threads(cores)

    return run


def child(kind: str, threads: int, repeats: int) -> dict:
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads), BENCH_THREADS=str(threads))
    command = [sys.executable, __file__, "--child", kind, "--repeats", str(repeats)]
    output = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--child", choices=["preprocess", "classify"])
    parser.add_argument(
        "--preprocess-only",
        action="store_true",
        help="Time preprocessing on one core alone, print its table, write nothing.",
    )
    args = parser.parse_args()
    if args.child == "preprocess":
        print(json.dumps(measure_preprocess(args.repeats)))
        return
    if args.preprocess_only:
        one = child("preprocess", 1, args.repeats)
        print("| images | preprocessing | ms per image, 1 core |\n|---|---|---:|")
        for key, ms in one.items():
            print("| {} | {} | {:.2f} |".format(*key.split("|"), ms))
        return
    if args.child == "classify":
        print(json.dumps(measure_classify(args.repeats)))
        return

    cores = os.cpu_count() or 1
    one = child("preprocess", 1, args.repeats)
    every = child("preprocess", cores, args.repeats)
    lines = [
        f"Machine: {cores} cores, {cpu_model()}. Median of {args.repeats} runs, ms per image.",
        "",
        "| images | preprocessing | 1 core | recipe / this (1 core) | all cores |",
        "|---|---|---:|---:|---:|",
    ]
    for key, ms in one.items():
        set_name, name = key.split("|")
        recipe = one[f"{set_name}|PIL + torchvision (the recipe)"]
        lines.append(f"| {set_name} | {name} | {ms:.2f} | {recipe / ms:.1f}x | {every[key]:.2f} |")
    batch = child("classify", cores, args.repeats)
    lines += [
        "",
        f"Batch of 32 photos (640x427 JPEG), all {cores} cores, ms per batch; the optimized "
        "model is torch.jit.optimize_for_inference(torch.jit.freeze(model)), what `classify` runs; "
        "`classify` decodes, preprocesses, runs the model and takes the top 5.",
        "",
        "| model | run | ms per batch | images/s | over optimized forward |",
        "|---|---|---:|---:|---:|",
    ]
    for key, ms in batch.items():
        model_name, name = key.split("|")
        base = batch[f"{model_name}|bare forward, optimized"]
        lines.append(
            f"| {model_name} | {name} | {ms:.0f} | {32000 / ms:.1f} | {ms / base - 1:+.0%} |"
        )
    table = "\n".join(lines)
    print(table)
    (ROOT / "bench" / "results").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / "results" / "core.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
