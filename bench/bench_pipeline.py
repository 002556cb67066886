"""The Beam pipeline, side by side: the stock PyTorch path, ours, and the bare model.

Run by `make bench`. On the same images, the same TorchScript model and the same threads, in one
run, rounds alternate the contenders so that machine noise hits all of them:

- stock: PIL + torchvision preprocessing in a Beam Map, then Beam's own
  PytorchModelHandlerTensor(torch_script_model_path=...) in RunInference (batch 32);
- stock optimized: the same, its model loaded through torch.jit.optimize_for_inference(freeze());
- ours: ImageClassifierHandler in RunInference (bytes in, one Rust call per batch; the model
  optimized for inference, its default), and ours unoptimized (optimize=False);
- limit: the bare model forward on ready tensors of batch 32, as saved, and limit optimized;
  and the optimized forward in passes of 8 images (one of the two sizes ours chooses from on the
  CPU; see bench_pass_size.py);
- on request (--contenders): ours fp16 and ours bf16, the model in half precision;
- embeddings: each image's L2-normalised model output instead of its class, the stock path
  (its Map, then Beam's handler, then torch.nn.functional.normalize of each output) against
  ours (ImageEmbedderHandler(normalize=True): one embed call per batch); their agreement is the
  argmax of the vectors;
- AOTInductor packages (python -m beam_ml_flink.compile, made once per machine kind): ours with
  the fp32 package and with the int8 package, the stock Beam PyTorch path whose model is the
  loaded fp32 package (torch._inductor.aoti_load_package, run in passes of 8: a package may
  bound its batch size), and the bare package forward in passes of 8.

Each row's top-1 agreement and speed ratio are counted against the stock path (TorchScript,
fp32), an embeddings row's against the stock embeddings.

With --device cuda every contender's model runs on the GPU (Beam's handler with device="GPU";
the limits copy each ready batch to the GPU inside the clock), and the results go to
pipeline-cuda.md.

Every contender runs in a child process, so that its peak RSS is its own. Writes
bench/results/pipeline.md and pipeline.png and prints the table.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
WORK = ROOT / "build" / "bench"
IMAGES = ROOT / "data" / "images"
BATCH = 32
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MODELS = {
    # name: (file, mean, std)
    "mobilenet_v2": (WORK / "mobilenet_v2.pt", IMAGENET_MEAN, IMAGENET_STD),
    "efficientnet_lite0": (
        ROOT / "data" / "models" / "efficientnet_lite0.pt",
        (0.5,) * 3,
        (0.5,) * 3,
    ),
}
# AOTInductor packages of each model: {name: {"fp32": path, "int8": path}}, made by make_models.
PACKAGES: dict[str, dict[str, Path]] = {}
PACKAGE_CONTENDERS = {
    "stock package": "fp32",
    "ours package": "fp32",
    "ours int8": "int8",
    "limit package (passes of 8)": "fp32",
}
CONTENDERS = [
    "stock",
    "stock optimized",
    "ours",
    "ours unoptimized",
    "limit",
    "limit optimized",
    "limit optimized (passes of 8)",
    *PACKAGE_CONTENDERS,
    "stock embeddings",
    "ours embeddings",
]


def make_inputs() -> dict[str, list[str]]:
    """256 photos of 640x427 (crops of the real sample photos, flipped and shifted, as JPEG) and
    32 camera-size 4032x3024 JPEGs (the photos upscaled), written once under build/bench."""
    from PIL import Image, ImageOps

    sets = {"256 photos 640x427": WORK / "photos", "32 photos 4032x3024": WORK / "camera"}
    sources = [Image.open(p).convert("RGB") for p in sorted(IMAGES.iterdir())]
    rng = random.Random(0)
    if not (sets["256 photos 640x427"] / "255.jpg").exists():
        sets["256 photos 640x427"].mkdir(parents=True, exist_ok=True)
        for i in range(256):
            image = sources[i % len(sources)]
            scale = max(640 / image.width, 427 / image.height) * rng.uniform(1.0, 1.4)
            image = image.resize((round(image.width * scale), round(image.height * scale)))
            left = rng.randint(0, image.width - 640)
            top = rng.randint(0, image.height - 427)
            image = image.crop((left, top, left + 640, top + 427))
            if i % 2:
                image = ImageOps.mirror(image)
            image.save(sets["256 photos 640x427"] / f"{i}.jpg", quality=90)
    if not (sets["32 photos 4032x3024"] / "31.jpg").exists():
        sets["32 photos 4032x3024"].mkdir(parents=True, exist_ok=True)
        for i in range(32):
            image = sources[i % len(sources)].resize((4032, 3024), Image.Resampling.BICUBIC)
            image.save(sets["32 photos 4032x3024"] / f"{i}.jpg", quality=90)
    return {name: sorted(str(p) for p in folder.glob("*.jpg")) for name, folder in sets.items()}


def make_models() -> None:
    """The traced torchvision mobilenet_v2 with random weights (seed 0)."""
    path = MODELS["mobilenet_v2"][0]
    if path.exists():
        return
    import torch
    from torchvision import models

    torch.manual_seed(0)
    model = models.mobilenet_v2().eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(torch.jit.trace(model, torch.zeros(1, 3, 224, 224)), str(path))


def make_packages(
    calibration: list[str], models: Sequence[str] = tuple(MODELS), kinds=("fp32", "int8")
) -> None:
    """fp32 and int8 packages of each model (or of those named), compiled by
    beam_ml_flink.compile into the package cache (reused when the model, options, torch and CPU
    are the same); int8 is calibrated on 64 of the photos with the model's own preprocessing."""
    cache = Path.home() / ".cache" / "beam_ml_flink" / "packages"
    listing = WORK / "calibration.txt"
    listing.write_text("".join(f"{p}\n" for p in calibration[:64]))
    sources = {
        # The same random weights (seed 0) as the traced mobilenet_v2.pt.
        "mobilenet_v2": ["--model_name", "mobilenet_v2", "--seed", "0"],
        "efficientnet_lite0": ["--factory", "make_demo:efficientnet_lite0"],
    }
    for name in models:
        source = sources[name]
        _, mean, std = MODELS[name]
        PACKAGES[name] = {}
        for kind in kinds:
            extra = ["--int8", "--calibration", str(listing)] if kind == "int8" else []
            norm = ["--mean", ",".join(map(str, mean)), "--std", ",".join(map(str, std))]
            made = subprocess.run(
                [sys.executable, "-m", "beam_ml_flink.compile", *source, "--name", name]
                + ["--output", str(cache), *norm, *extra],
                capture_output=True,
                text=True,
                env={**os.environ, "PYTHONPATH": str(ROOT / "data")},
            )
            if made.returncode != 0:
                raise RuntimeError(f"compiling {name} {kind} failed:\n{made.stderr[-3000:]}")
            PACKAGES[name][kind] = Path(made.stdout.strip())


# --- what a child process runs ---------------------------------------------------------------


def stock_pipeline(
    paths: list[str],
    model: str,
    mean,
    std,
    optimize: bool,
    runner: str,
    device: str,
    embed: bool = False,
    passes_of: int = 8,
) -> dict:
    """Beam's stock path; a package runs in passes of `passes_of` images."""
    import apache_beam as beam
    import torch
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
    from apache_beam.ml.inference.pytorch_inference import PytorchModelHandlerTensor
    from PIL import Image
    from torchvision import transforms

    recipe = transforms.Compose(
        [
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )

    def preprocess(path: str):
        with FileSystems.open(path) as f:
            return path, recipe(Image.open(io.BytesIO(f.read())).convert("RGB"))

    class OptimizedHandler(PytorchModelHandlerTensor):
        def load_model(self):
            loaded = super().load_model()
            return torch.jit.optimize_for_inference(torch.jit.freeze(loaded))

    class PackageHandler(PytorchModelHandlerTensor):
        """Beam's handler with the loaded AOTInductor package as its model."""

        def load_model(self):
            return torch._inductor.aoti_load_package(model)

    def in_passes(batch, package, device, inference_args, model_id=None):
        from apache_beam.ml.inference import utils

        tensors = torch.stack(batch).to(device)
        with torch.no_grad():
            logits = torch.cat([package(part) for part in tensors.split(passes_of)])
        return utils._convert_to_result(batch, logits, model_id)

    kwargs = {}
    if model.endswith(".pt2"):
        handler_class = PackageHandler
        kwargs = {"state_dict_path": model, "model_class": torch.nn.Identity}
        kwargs["inference_fn"] = in_passes
    else:
        handler_class = OptimizedHandler if optimize else PytorchModelHandlerTensor
        kwargs = {"torch_script_model_path": model}
    handler = handler_class(
        device="GPU" if device == "cuda" else "CPU",
        min_batch_size=BATCH,
        max_batch_size=BATCH,
        **kwargs,
    )

    def answer(kv):
        output = kv[1].inference
        if embed:  # the vector a job would write: normalised, on the CPU, as numpy
            vector = torch.nn.functional.normalize(output, dim=0).cpu().numpy()
            return kv[0], int(vector.argmax())
        return kv[0], int(output.argmax())

    def build(p):
        uris = p | beam.Create(paths)
        return uris, (
            uris
            | beam.Map(preprocess)
            | RunInference(KeyedModelHandler(handler))
            | beam.Map(answer)
        )

    return _run(runner, build)


def ours_pipeline(
    paths: list[str],
    model: str,
    mean,
    std,
    optimize: bool,
    runner: str,
    device: str,
    precision: str = "fp32",
    resize: int | tuple[int, int] = 256,
    embed: bool = False,
) -> dict:
    import apache_beam as beam

    from beam_ml_flink.beam import ImageClassifierHandler
    from beam_ml_flink.embeddings import ImageEmbedderHandler
    from beam_ml_flink.pipeline import ClassifyImages

    kind = {"normalize": True} if embed else {"top_k": 1}
    handler = (ImageEmbedderHandler if embed else ImageClassifierHandler)(
        model,
        mean=mean,
        std=std,
        **kind,
        optimize=optimize,
        device=device,
        precision=precision,
        resize=resize,
        min_batch_size=BATCH,
        max_batch_size=BATCH,
    )

    def build(p):
        uris = p | beam.Create(paths)
        return uris, (
            (uris | ClassifyImages(handler)).predictions
            | beam.Map(
                lambda kv: (kv[0], int(kv[1].vector.argmax()) if embed else kv[1].top_k[0][0])
            )
        )

    return _run(runner, build)


def _run(runner: str, build) -> dict:
    """Runs the pipeline `build(p, paths)` makes; times the whole run and its steady part.

    The steady part runs from the first image entering the fused stage (after the pipeline, the
    workers and the model have started) to the last answer: what a long job spends per image.
    """
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    out = WORK / f"top1-{os.getpid()}"
    start = time.perf_counter()
    options = PipelineOptions([f"--runner={runner}", *_runner_args(runner)])
    with beam.Pipeline(options=options) as p:
        paths, answers = build(p)
        started = paths | "Started" >> beam.Map(lambda _: ["started", time.time()])
        done = answers | "Done" >> beam.Map(lambda kv: [*kv, time.time()])
        _ = (
            (started, done)
            | beam.Flatten()
            | beam.Map(json.dumps)
            | beam.io.WriteToText(str(out), shard_name_template="")
        )
    seconds = time.perf_counter() - start
    rows = [json.loads(line) for line in Path(out).read_text().splitlines()]
    Path(out).unlink()
    first = min(row[1] for row in rows if row[0] == "started")
    answers = [row for row in rows if row[0] != "started"]
    return {
        "seconds": seconds,
        "steady_seconds": max(t for _, _, t in answers) - first,
        "top1": {path: top1 for path, top1, _ in answers},
    }


def _runner_args(runner: str) -> list[str]:
    if runner == "FlinkRunner":
        return [
            "--flink_version=1.19",
            f"--flink_job_server_jar={os.environ['FLINK_JOB_SERVER_JAR']}",
            "--environment_type=LOOPBACK",
        ]
    return []


def bare_forward(
    paths: list[str],
    model: str,
    mean,
    std,
    optimize: bool,
    runner: str,
    device: str,
    passes_of: int = BATCH,
) -> dict:
    import torch

    import beam_ml_flink as bmf

    if model.endswith(".pt2"):
        module = torch._inductor.aoti_load_package(model)
    else:
        module = torch.jit.load(model, map_location=device).eval()
        if optimize:
            module = torch.jit.optimize_for_inference(torch.jit.freeze(module))
    # Ready tensors: the images preprocessed before the clock starts.
    batches = []
    for i in range(0, len(paths), BATCH):
        data = [Path(p).read_bytes() for p in paths[i : i + BATCH]]
        batches.append(torch.from_numpy(bmf.preprocess(data, mean=mean, std=std)))
    with torch.no_grad():
        module(batches[0][:2].to(device))
        start = time.perf_counter()
        top1 = {}
        for i, batch in enumerate(batches):
            batch = batch.to(device)
            logits = torch.cat([module(part) for part in batch.split(passes_of)])
            for j, index in enumerate(logits.argmax(1).tolist()):
                top1[paths[i * BATCH + j]] = index
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "steady_seconds": seconds, "top1": top1}


CHILD = {
    "stock": (stock_pipeline, False),
    "stock optimized": (stock_pipeline, True),
    "ours": (ours_pipeline, True),
    "ours unoptimized": (ours_pipeline, False),
    "ours fp16": (partial(ours_pipeline, precision="fp16"), True),
    "ours bf16": (partial(ours_pipeline, precision="bf16"), True),
    "limit": (bare_forward, False),
    "limit optimized": (bare_forward, True),
    "limit optimized (passes of 8)": (partial(bare_forward, passes_of=8), True),
    "stock package": (stock_pipeline, True),
    "ours package": (ours_pipeline, True),
    "ours int8": (ours_pipeline, True),
    "limit package (passes of 8)": (partial(bare_forward, passes_of=8), True),
    "stock embeddings": (partial(stock_pipeline, embed=True), False),
    "ours embeddings": (partial(ours_pipeline, embed=True), True),
}


def child_main(spec: str) -> None:
    job = json.loads(spec)
    run, optimize = CHILD[job["contender"]]
    paths = job["paths"]
    result = run(
        paths,
        job["model"],
        tuple(job["mean"]),
        tuple(job["std"]),
        optimize,
        job["runner"],
        job["device"],
    )
    result["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(result))


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited from the
    parent across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


# --- the parent ------------------------------------------------------------------------------


def run_child(job: dict) -> dict:
    """Runs one contender in a fresh process: its time, its answers and its peak RSS."""
    out_path = WORK / f"child-{os.getpid()}.json"
    err_path = WORK / f"child-{os.getpid()}.err"
    with open(out_path, "w") as out, open(err_path, "w") as err:
        child = subprocess.run(
            [sys.executable, __file__, "--child", json.dumps(job)], stdout=out, stderr=err
        )
    if child.returncode != 0:
        raise RuntimeError(f"{job['contender']} failed:\n{err_path.read_text()[-3000:]}")
    return json.loads(out_path.read_text().strip().splitlines()[-1])


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--runners", default="DirectRunner", help="comma-separated Beam runners")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--contenders", default=",".join(CONTENDERS))
    parser.add_argument("--sets", help="comma-separated image sets (default: all)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = parser.parse_args()
    if args.child:
        child_main(args.child)
        return

    WORK.mkdir(parents=True, exist_ok=True)
    make_models()
    inputs = make_inputs()
    contenders = args.contenders.split(",")
    if any(c in PACKAGE_CONTENDERS for c in contenders):
        make_packages(inputs["256 photos 640x427"])
    rows = []
    for runner in args.runners.split(","):
        for model_name in args.models.split(","):
            model, mean, std = MODELS[model_name]
            for set_name, paths in inputs.items():
                if args.sets and set_name not in args.sets.split(","):
                    continue
                results: dict[str, list[dict]] = {c: [] for c in contenders}
                for round_ in range(args.repeats):
                    order = contenders if round_ % 2 == 0 else contenders[::-1]
                    for contender in order:
                        if contender.startswith("limit") and runner != "DirectRunner":
                            continue
                        if contender in PACKAGE_CONTENDERS:
                            model = PACKAGES[model_name][PACKAGE_CONTENDERS[contender]]
                        else:
                            model = MODELS[model_name][0]
                        job = {
                            "contender": contender,
                            "paths": paths,
                            "model": str(model),
                            "mean": mean,
                            "std": std,
                            "runner": runner,
                            "device": args.device,
                        }
                        result = run_child(job)
                        results[contender].append(result)
                        print(
                            f"{runner} {model_name} {set_name} {contender}: "
                            f"{len(paths) / result['steady_seconds']:.1f} images/s steady, "
                            f"{len(paths) / result['seconds']:.1f} whole run, "
                            f"{result['peak_rss_mb']:.0f} MB",
                            file=sys.stderr,
                            flush=True,
                        )
                rows.append(summarize(runner, model_name, set_name, len(paths), results))
    write_results(rows, args.repeats, args.device)


def baseline(contender: str) -> str:
    """The stock contender a row is set against: the stock embeddings for an embeddings row."""
    return "stock embeddings" if contender.endswith("embeddings") else "stock"


def summarize(runner: str, model: str, images: str, count: int, results: dict) -> dict:
    rates = {
        c: sorted(count / r["steady_seconds"] for r in runs) for c, runs in results.items() if runs
    }
    whole = {
        c: statistics.median(count / r["seconds"] for r in runs)
        for c, runs in results.items()
        if runs
    }
    rss = {c: max(r["peak_rss_mb"] for r in runs) for c, runs in results.items() if runs}
    agree = {}
    for contender, runs in results.items():
        stock = results.get(baseline(contender))
        if runs and stock and contender != baseline(contender):
            top1 = runs[0]["top1"]
            agree[contender] = sum(top1[k] == v for k, v in stock[0]["top1"].items())
    return {
        "runner": runner,
        "model": model,
        "images": images,
        "count": count,
        "rates": {c: (statistics.median(r), r[0], r[-1]) for c, r in rates.items()},
        "whole": whole,
        "rss": rss,
        "top1_agree": agree,
    }


def write_results(rows: list[dict], repeats: int, device: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gpu = f"; models on {gpu_name()}" if device == "cuda" else ""
    lines = [
        f"Machine: {os.cpu_count()} cores, {cpu_model()}{gpu}; "
        f"Python {platform.python_version()}. "
        f"Batch {BATCH}; images/s as median (min-max) of {repeats} runs per contender, the "
        "contenders alternating. images/s counts the steady part of a run, from the first image "
        "entering the pipeline's fused stage (pipeline, workers and model started) to the last "
        "answer, which is what a long job gets; whole run adds the pipeline's start and the "
        "model's load. The limits are the bare model's forward on ready tensors. Peak RSS of "
        "each contender's process.",
        "",
        "| runner | model | images | contender | images/s | vs stock | vs limit "
        "| whole run images/s | peak RSS MB | top-1 = stock's |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    # The bare forward does not depend on the runner: each runner's rows use the one measured.
    limits = {
        (r["model"], r["images"]): r["rates"]["limit"][0] for r in rows if "limit" in r["rates"]
    }
    for row in rows:
        limit = limits.get((row["model"], row["images"]))
        for contender, (median, low, high) in row["rates"].items():
            stock = row["rates"].get(baseline(contender), (None,))[0]
            vs_stock = f"{median / stock:.2f}x" if stock else ""
            vs_limit = f"{median / limit:.0%}" if limit else ""
            agree = row["top1_agree"].get(contender)
            agreement = "" if agree is None else f"{agree}/{row['count']}"
            lines.append(
                f"| {row['runner']} | {row['model']} | {row['images']} | {contender} | "
                f"{median:.1f} ({low:.1f}-{high:.1f}) | {vs_stock} | {vs_limit} | "
                f"{row['whole'][contender]:.1f} | {row['rss'][contender]:.0f} | {agreement} |"
            )
    table = "\n".join(lines) + "\n"
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "pipeline" if device == "cpu" else f"pipeline-{device}"
    (RESULTS / f"{name}.md").write_text(table)
    print(table)

    fig, axes = plt.subplots(1, len(rows), figsize=(4.5 * len(rows), 4), squeeze=False)
    for ax, row in zip(axes[0], rows, strict=True):
        names = list(row["rates"])
        medians = [row["rates"][n][0] for n in names]
        ax.barh(
            names,
            medians,
            color=["#999" if n.startswith(("stock", "limit")) else "#2a7" for n in names],
        )
        ax.invert_yaxis()
        ax.set_title(f"{row['runner']}\n{row['model']}, {row['images']}", fontsize=9)
        ax.set_xlabel("images/s (median)")
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}.png", dpi=110)


if __name__ == "__main__":
    main()
