"""Ours against what else people use to classify images in bulk, each a whole process.

Run by `make bench-peers` (also a step of `make bench`). On the same images (the 256 photos of
`make bench`, repeated to each size), the same model and the same threads, rounds alternate the
contenders, each written the way its own docs show it (bench/peers/, one file each):

- stock Beam: PIL + torchvision in a Beam Map, then Beam's PytorchModelHandlerTensor (the stock
  path of bench_pipeline.py);
- DataLoader: a plain PyTorch script, a DataLoader with one worker process per core running PIL +
  torchvision, the model in the main process;
- Ray Data: read_images, the torchvision transform in a map, the model in an actor pool
  (map_batches), on a local Ray;
- Daft: native download, decode and resize (Daft has no shorter-side resize: it squashes to
  224x224), the model in a class UDF, on Daft's local runner;
- ours: `python -m beam_ml_flink`'s pipeline (ImageClassifierHandler in RunInference) on the
  DirectRunner, with the recipe's resize, and with the squash resize to set beside Daft.

Two treatments of the model: as saved (TorchScript: what each peer's docs do; ours optimizes it
for inference by default), and one optimized model for every contender, the AOTInductor package
(.pt2), which separates the runtime from the pipeline. A package runs in forward passes of the
size ours chooses for it on this machine (4 or 8 images, whichever its first passes run faster):
the bench asks ours' classifier first and gives that size to every peer.

Per contender: whole-process images/s at each size (from the process's start to its exit: start-up
counts for small jobs), steady images/s (what each image beyond the smallest size costs: the
images between the smallest and the largest size over the difference of their whole-process
medians), peak memory (the sum of the proportional set size, PSS, of the contender's process and
every process it starts, sampled every second), and on the pretrained EfficientNet-Lite0 the
top-1 agreement with the PIL + torchvision recipe computed here (for squash contenders also with
PIL's squash resize), which measures how far a resize that is not Pillow's drifts.

Writes bench/results/peers.md and peers.png and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench_pipeline import (
    MODELS,
    PACKAGES,
    ROOT,
    WORK,
    cpu_model,
    make_inputs,
    make_models,
    make_packages,
)

PEERS = ROOT / "bench" / "peers"
PEER_PACKAGES = ROOT / "build" / "peers-packages"
RESULTS = ROOT / "bench" / "results"
LISTS = ROOT / "build" / "peers"
BATCH = 32
# name: (script, resize, needs the peers' packages)
CONTENDERS = {
    "stock Beam": ("stock.py", "recipe", False),
    "DataLoader": ("dataloader.py", "recipe", False),
    "Ray Data": ("ray_data.py", "recipe", True),
    "ours": ("ours.py", "recipe", False),
    "Daft": ("daft_udf.py", "squash", True),
    "ours squash": ("ours.py", "squash", False),
}
TREATMENTS = ("as saved", "package")
# The peers' own telemetry and progress bars off: nothing outside is reached, nothing is drawn.
QUIET = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "DO_NOT_TRACK": "1",
    "DAFT_ANALYTICS_ENABLED": "0",
    "DAFT_PROGRESS_BAR": "0",
}


# --- memory of a process tree ----------------------------------------------------------------


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                # The parent is the 2nd field after the command, which may hold spaces.
                stat = (entry / "stat").read_text()
                parent = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            tree.setdefault(parent, []).append(int(entry.name))
    return tree


def _descendants(root: int) -> list[int]:
    tree, found, todo = _children(), [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(tree.get(pid, []))
    return found


def _started(pid: int) -> str:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat)."""
    try:
        return (Path(f"/proc/{pid}") / "stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _pss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class TreeMemory(threading.Thread):
    """Samples the summed PSS of a process and its descendants until stop(); remembers every
    descendant it saw, so that what a contender leaves running can be ended."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak_mb = pid, 0.0
        self.seen: dict[int, str] = {}  # pid: its start time, so that a reused pid is left alone
        self._done = threading.Event()

    def run(self) -> None:
        # Once a second: a scan of /proc takes tens of milliseconds of a core that the contender
        # would otherwise have.
        while not self._done.wait(1.0):
            pids = _descendants(self.pid)
            self.seen.update((p, _started(p)) for p in pids if p not in self.seen)
            self.peak_mb = max(self.peak_mb, sum(_pss_mb(p) for p in pids))

    def stop(self) -> None:
        self._done.set()
        self.join()


# --- one run ---------------------------------------------------------------------------------


def ours_pass_size(model: str, mean, std, photos: list[str]) -> int:
    """The forward pass size ours chooses for `model` on this machine, from its first calls of
    32 photos."""
    import beam_ml_flink as bmf

    classifier = bmf.ImageClassifier(model, mean=mean, std=std)
    images = [Path(p).read_bytes() for p in photos[:32]]
    for _ in range(8):
        if classifier.forward_batch_size is not None:
            return classifier.forward_batch_size
        classifier.classify(images, top_k=1)
    raise RuntimeError(f"ours chose no forward pass size for {model} in 8 calls of 32 images")


def run_contender(
    contender: str, model: str, mean, std, paths_file: Path, threads: int, pass_size: int
) -> dict:
    script, resize, peer = CONTENDERS[contender]
    env = {**os.environ, **QUIET}
    if peer:
        if not (PEER_PACKAGES / "ray").is_dir() or not (PEER_PACKAGES / "daft").is_dir():
            raise SystemExit(
                f"{contender} needs the peers' packages in {PEER_PACKAGES}: install them with "
                f"`{sys.executable} -m pip install --target {PEER_PACKAGES} -r "
                "bench/requirements-peers.txt` (make bench-peers does)"
            )
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(PEER_PACKAGES), env.get("PYTHONPATH")])
        )
    command = [
        sys.executable,
        str(PEERS / script),
        "--images",
        str(paths_file),
        "--model",
        model,
        "--mean",
        ",".join(map(str, mean)),
        "--std",
        ",".join(map(str, std)),
        "--threads",
        str(threads),
        "--batch",
        str(BATCH),
        "--pass_size",
        str(pass_size),
        "--resize",
        resize,
    ]
    err_path = LISTS / "contender.err"
    with open(err_path, "w") as err:
        start = time.perf_counter()
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, env=env, cwd=ROOT)
        memory = TreeMemory(child.pid)
        memory.start()
        out, _ = child.communicate()
        seconds = time.perf_counter() - start
        memory.stop()
    memory.seen.pop(child.pid, None)
    _end_leftovers(memory.seen)
    if child.returncode != 0:
        raise RuntimeError(
            f"{contender} failed (exit {child.returncode}) on {paths_file}:\n"
            f"{err_path.read_text()[-3000:]}"
        )
    result = json.loads(out.decode().strip().splitlines()[-1])
    result["whole_seconds"] = seconds
    result["peak_mb"] = memory.peak_mb
    return result


def _end_leftovers(seen: dict[int, str]) -> None:
    """Ends what a contender started and left running (a local Ray's daemons, say), by pid, when
    that pid is still the process seen (the same start time)."""
    for pid, started in seen.items():
        if started and _started(pid) == started:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


# --- the agreement reference -----------------------------------------------------------------


def pil_reference(model: str, mean, std, paths: list[str]) -> dict[str, dict[str, int]]:
    """Top-1 of each photo by the PIL + torchvision recipe and by PIL's squash resize to 224x224,
    the model as saved."""
    import torch
    from PIL import Image
    from torchvision import transforms

    module = torch.jit.load(model).eval()
    recipes = {
        "recipe": [transforms.Resize(256), transforms.CenterCrop(224)],
        "squash": [transforms.Resize((224, 224))],
    }
    answers: dict[str, dict[str, int]] = {}
    for name, steps in recipes.items():
        recipe = transforms.Compose(
            [*steps, transforms.ToTensor(), transforms.Normalize(mean, std)]
        )
        answers[name] = {}
        for i in range(0, len(paths), BATCH):
            part = paths[i : i + BATCH]
            batch = torch.stack([recipe(Image.open(p).convert("RGB")) for p in part])
            with torch.inference_mode():
                answers[name].update(zip(part, module(batch).argmax(1).tolist(), strict=True))
    return answers


# --- the parent ------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # One run per contender and size by default: at 4096 images a run is minutes long, and the
    # whole bench about an hour on 2 cores.
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--sizes", default="256,4096", help="comma-separated image counts")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--treatments", default=",".join(TREATMENTS))
    parser.add_argument("--contenders", default=",".join(CONTENDERS))
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="default: the cores")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where peers.md goes")
    args = parser.parse_args()

    WORK.mkdir(parents=True, exist_ok=True)
    LISTS.mkdir(parents=True, exist_ok=True)
    make_models()
    photos = make_inputs()["256 photos 640x427"]
    treatments = args.treatments.split(",")
    models = args.models.split(",")
    if "package" in treatments:
        make_packages(photos, models, kinds=("fp32",))
    sizes = sorted(int(s) for s in args.sizes.split(","))
    lists = {}
    for size in sizes:
        lists[size] = LISTS / f"{size}.txt"
        lists[size].write_text("".join(f"{photos[i % len(photos)]}\n" for i in range(size)))
    contenders = args.contenders.split(",")

    rows = []
    pass_sizes: dict[str, int] = {}
    for model_name in models:
        script_model, mean, std = MODELS[model_name]
        reference = None
        if model_name == "efficientnet_lite0":
            used = sorted({photos[i % len(photos)] for i in range(max(sizes))})
            reference = pil_reference(str(script_model), mean, std, used)
        for treatment in treatments:
            model = str(script_model if treatment == "as saved" else PACKAGES[model_name]["fp32"])
            pass_size = 8
            if treatment == "package":
                pass_size = ours_pass_size(model, mean, std, photos)
                pass_sizes[model_name] = pass_size
                print(f"{model_name} package: passes of {pass_size}", file=sys.stderr, flush=True)
            runs: dict[str, dict[int, list[dict]]] = {c: {s: [] for s in sizes} for c in contenders}
            for round_ in range(args.repeats):
                order = contenders if round_ % 2 == 0 else contenders[::-1]
                for size in sizes:
                    for contender in order:
                        result = run_contender(
                            contender, model, mean, std, lists[size], args.threads, pass_size
                        )
                        runs[contender][size].append(result)
                        print(
                            f"{model_name} {treatment} {size} {contender}: "
                            f"{size / result['whole_seconds']:.1f} images/s whole process, "
                            f"steady in-process {result['steady_rate'] or 0:.1f}, "
                            f"{result['peak_mb']:.0f} MB",
                            file=sys.stderr,
                            flush=True,
                        )
            rows.extend(summarize(model_name, treatment, sizes, runs, reference))
    write_results(rows, sizes, pass_sizes, args)


def summarize(model, treatment, sizes, runs, reference) -> list[dict]:
    rows = []
    for contender, by_size in runs.items():
        seconds = {s: statistics.median(r["whole_seconds"] for r in by_size[s]) for s in sizes}
        small, large = sizes[0], sizes[-1]
        if large > small and seconds[large] > seconds[small]:
            steady = (large - small) / (seconds[large] - seconds[small])
        else:  # one size: the contender's own in-process figure
            rates = [r["steady_rate"] for r in by_size[large] if r["steady_rate"]]
            steady = statistics.median(rates) if rates else None
        agreement = {}
        if reference:
            top1 = by_size[large][0]["top1"]
            resize = CONTENDERS[contender][1]
            for name in dict.fromkeys(["recipe", resize]):
                same = sum(top1[p] == c for p, c in reference[name].items())
                agreement[name] = (same, len(reference[name]))
        rows.append(
            {
                "model": model,
                "treatment": treatment,
                "contender": contender,
                "resize": CONTENDERS[contender][1],
                "steady": steady,
                "whole": {s: s / seconds[s] for s in sizes},
                "peak_mb": max(r["peak_mb"] for s in sizes for r in by_size[s]),
                "agreement": agreement,
            }
        )
    # Ours against each contender, at the same resize: whole process at the largest size, steady.
    for row in rows:
        ours = next(
            (r for r in rows if r["contender"].startswith("ours") and r["resize"] == row["resize"]),
            None,
        )
        row["ours_whole"] = ours["whole"][sizes[-1]] / row["whole"][sizes[-1]] if ours else None
        row["ours_steady"] = (
            ours["steady"] / row["steady"] if ours and ours["steady"] and row["steady"] else None
        )
    return rows


def write_results(rows: list[dict], sizes: list[int], pass_sizes: dict[str, int], args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def rate(value):
        return f"{value:.1f}" if value else ""

    def times(value):
        return f"{value:.2f}x" if value else ""

    def agree(row, name):
        if name not in row["agreement"]:
            return ""
        same, total = row["agreement"][name]
        return f"{same}/{total}"

    large = sizes[-1]
    runs = (
        f"medians of {args.repeats} runs per contender and size, the contenders alternating"
        if args.repeats > 1
        else "one run per contender and size, the contenders one after the other"
    )
    lines = [
        f"Machine: {os.cpu_count()} cores, {cpu_model()}; Python {sys.version.split()[0]}; "
        f"{args.threads} intra-op threads for every model. Each contender a whole process "
        f"(bench/peers/), batch {BATCH}, the 256 photos of 640x427 repeated to each size; "
        f"{runs}. "
        + "".join(
            f"{name}'s package in passes of {size} (ours' choice here) for every contender. "
            for name, size in pass_sizes.items()
        )
        + "Whole process: images over the seconds from the process's start to its exit. Steady: "
        "the images between the smallest and the largest size over the difference of their "
        "whole-process seconds. Peak memory: the summed PSS of the contender's processes. "
        "Top-1 agreement (EfficientNet-Lite0) with the PIL + torchvision recipe computed by the "
        "bench, and for squash contenders with PIL's squash to 224x224. ours / it: ours (at the "
        f"same resize) over the contender, whole process at {large} images and steady.",
        "",
        "| model | model as | contender | resize | steady images/s | "
        + " | ".join(f"whole process images/s, {s} images" for s in sizes)
        + " | peak memory MB | top-1 = PIL recipe | top-1 = PIL squash "
        f"| ours / it, whole {large} | ours / it, steady |",
        "|---|---|---|---|---:|" + "---:|" * len(sizes) + "---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['model']} | {row['treatment']} | {row['contender']} | {row['resize']} | "
            f"{rate(row['steady'])} | "
            + " | ".join(rate(row["whole"][s]) for s in sizes)
            + f" | {row['peak_mb']:.0f} | {agree(row, 'recipe')} | {agree(row, 'squash')} | "
            f"{times(row['ours_whole'])} | {times(row['ours_steady'])} |"
        )
    table = "\n".join(lines) + "\n"
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "peers.md").write_text(table)
    print(table)

    panels = list(dict.fromkeys((r["model"], r["treatment"]) for r in rows))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4), squeeze=False)
    for ax, (model, treatment) in zip(axes[0], panels, strict=True):
        chosen = [r for r in rows if (r["model"], r["treatment"]) == (model, treatment)]
        names = [r["contender"] for r in chosen]
        ax.barh(
            names,
            [r["whole"][large] for r in chosen],
            color=["#2a7" if n.startswith("ours") else "#999" for n in names],
        )
        ax.invert_yaxis()
        ax.set_title(f"{model}, model {treatment}\n{large} images, whole process", fontsize=9)
        ax.set_xlabel("images/s (median)" if args.repeats > 1 else "images/s")
    fig.tight_layout()
    fig.savefig(args.results / "peers.png", dpi=110)


if __name__ == "__main__":
    main()
