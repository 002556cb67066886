"""Compiles a model into an AOTInductor package (``.pt2``) that beam_ml_flink runs in Rust.

``python -m beam_ml_flink.compile`` takes what users have (a torchvision model name with a state
dict, an ``ExportedProgram`` saved by ``torch.export.save``, or ``module:factory`` returning an
``nn.Module``), exports it with ``torch.export`` with a dynamic batch dimension, optionally
quantizes it to int8 (torchao's PT2E flow with the X86 Inductor quantizer, calibrated on images
preprocessed by :func:`beam_ml_flink.preprocess`, the tensors inference will see), and compiles it
with AOTInductor with freezing. A package runs only with the torch that compiled it, on the device
and CPU vector instructions it was compiled for: compile it on the machine kind that runs it.
With ``--output`` a folder, the package's name carries a hash of everything that went into it
(model bytes, options, torch version, CPU instructions), and an existing one is reused.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import hashlib
import importlib
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from beam_ml_flink.arguments import ArgumentParser, positive_int, resize, triple

if TYPE_CHECKING:
    import torch

#: Calibration images per int8 package unless told otherwise.
DEFAULT_CALIBRATION_COUNT = 64
#: Images per calibration forward pass.
CALIBRATION_BATCH = 8
#: How packages are made; part of a cached package's name hash, so that a change remakes them.
RECIPE = "export and compile under no_grad, freezing, dynamic batch from 1"


class CompileError(Exception):
    """The model could not be loaded, exported, quantized or compiled; the message says why."""


def machine_kind(device: str) -> str:
    """What a package is bound to: torch's version, the processor and its vector instructions."""
    import torch
    from torch._inductor import cpu_vec_isa

    isa = str(cpu_vec_isa.pick_vec_isa()) if device == "cpu" else "cuda"
    return f"torch {torch.__version__}, {platform.machine()}, {isa}"


def export(
    module: torch.nn.Module, input_size: tuple[int, int], device: str = "cpu"
) -> torch.export.ExportedProgram:
    """``module`` exported with a dynamic batch dimension (any size from 1) for 3xHxW images."""
    import torch

    example = torch.zeros(2, 3, *input_size, device=device)
    batch = torch.export.Dim("batch", min=1)
    if not isinstance(module, torch.fx.GraphModule):  # an exported graph is in eval mode already
        module = module.eval()
    try:
        # Under no_grad, as inference runs: otherwise the graph keeps autograd's view of the
        # weights and inductor cannot fold them (an int8 model then runs at fp32's speed).
        with torch.no_grad():
            return torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
    except Exception as e:  # torch raises many kinds; all mean the same to a user here
        raise CompileError(
            f"torch.export could not export the model for [batch, 3, {input_size[0]}, "
            f"{input_size[1]}] inputs: {first_line(e)}; check the input size, and that the "
            "model's forward takes one image tensor"
        ) from e


def reexport(
    saved: torch.export.ExportedProgram, args: argparse.Namespace
) -> torch.export.ExportedProgram:
    """A saved ExportedProgram exported again with a dynamic batch dimension; as saved when its
    graph is specialized to its batch size (fp32 only: the runtime pads and splits batches)."""
    try:
        return export(saved.module(), args.input_size, args.device)
    except CompileError as e:
        if args.int8:
            raise CompileError(
                f"{e}; --int8 needs a batch dimension that can be dynamic: save the program "
                "with torch.export.export(..., dynamic_shapes=({0: Dim('batch')},))"
            ) from None
        if args.device != "cpu":
            raise CompileError(f"{e}; --device cuda needs a dynamic batch dimension") from None
        print(
            f"warning: compiling the ExportedProgram as saved, with its static input shape ({e}); "
            "the package takes only that batch size and the runtime pads and splits batches "
            "to it: export with a dynamic batch dimension for any size",
            file=sys.stderr,
        )
        return saved


def quantize_int8(
    program: torch.export.ExportedProgram,
    calibration: Sequence[Any],
    input_size: tuple[int, int],
) -> torch.export.ExportedProgram:
    """The exported model quantized to int8 by torchao's PT2E flow with the X86 Inductor
    quantizer (static, per-channel weights), calibrated on ``calibration`` (float32 arrays
    ``[n, 3, H, W]``), then exported again with its dynamic batch dimension."""
    import torch

    try:
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    except ImportError as e:
        raise CompileError(
            "--int8 needs torchao: pip install torchao (or beam-ml-flink[compile])"
        ) from e
    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(program.module(), quantizer)
    with torch.no_grad():
        for batch in calibration:
            prepared(torch.from_numpy(batch))
    converted = convert_pt2e(prepared)
    example = torch.zeros(2, 3, *input_size)
    batch_dim = torch.export.Dim("batch", min=1)
    with torch.no_grad():
        return torch.export.export(converted, (example,), dynamic_shapes=({0: batch_dim},))


def compile_package(program: torch.export.ExportedProgram, output: Path) -> Path:
    """``program`` compiled by AOTInductor with freezing into the package ``output``.

    The package checks no lower bound on its batch dimension, so batches of one run as they are
    (export's default bound is 2).
    """
    import torch

    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f".{output.stem}.{os.getpid()}.partial.pt2")
    settings = {"freezing": True, "aot_inductor.check_lowerbound": False}
    try:
        with torch.no_grad(), torch._inductor.config.patch(settings):
            torch._inductor.aoti_compile_and_package(program, package_path=str(partial))
    except Exception as e:
        partial.unlink(missing_ok=True)
        raise CompileError(f"AOTInductor could not compile the model: {first_line(e)}") from e
    os.replace(partial, output)
    return output


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def image_paths(spec: str) -> list[str]:
    """The images of a folder, a list file (one path per line, relative to the list) or a glob."""
    path = Path(spec)
    if path.is_dir():
        return sorted(str(p) for p in path.iterdir() if p.is_file())
    if path.is_file():
        lines = [line.strip() for line in path.read_text().splitlines()]
        return [str(path.parent / line) for line in lines if line and not line.startswith("#")]
    return sorted(glob.glob(spec))


def calibration_batches(
    images: Sequence[str],
    count: int,
    preprocess: Callable[[list[bytes]], Any],
) -> list[Any]:
    """Up to ``count`` images preprocessed as inference will, in batches; undecodable ones are
    skipped. Raises CompileError when none decodes."""
    import beam_ml_flink as bmf

    tensors: list[Any] = []
    for path in images:
        if len(tensors) == count:
            break
        try:
            tensors.append(preprocess([Path(path).read_bytes()]))
        except (OSError, bmf.DecodeError):
            continue
    if not tensors:
        raise CompileError(
            f"no calibration image could be read among {len(images)} path(s); give "
            "--calibration a folder, a list or a glob of images like those to be classified"
        )
    import numpy as np

    stacked = np.concatenate(tensors)
    return [stacked[i : i + CALIBRATION_BATCH] for i in range(0, len(stacked), CALIBRATION_BATCH)]


def load_source(args: argparse.Namespace) -> tuple[Any, bytes]:
    """The model to compile (an nn.Module or an ExportedProgram) and the bytes that identify it."""
    import torch

    if args.exported_program:
        path = Path(args.exported_program)
        if not path.is_file():
            raise CompileError(f"--exported_program {path} does not exist")
        try:
            return torch.export.load(str(path)), path.read_bytes()
        except Exception as e:
            raise CompileError(
                f"{path} is not an ExportedProgram saved by torch.export.save: {first_line(e)}"
            ) from e
    if args.factory:
        module_name, _, attr = args.factory.partition(":")
        if not module_name or not attr:
            raise CompileError(f"--factory takes module:function, got {args.factory!r}")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as e:
            raise CompileError(f"cannot import --factory {args.factory}: {first_line(e)}") from e
        model = factory()
        if not isinstance(model, torch.nn.Module):
            raise CompileError(
                f"--factory {args.factory} returned {type(model).__name__}, not a torch.nn.Module"
            )
        source = f"{args.factory}:{sum(p.numel() for p in model.parameters())}".encode()
        return model, source + b"".join(
            t.detach().cpu().numpy().tobytes() for t in model.state_dict().values()
        )
    from torchvision import models

    classifiers = models.list_models(module=models)
    if args.model_name not in classifiers:
        raise CompileError(
            f"unknown torchvision model {args.model_name!r}; choose one of: "
            f"{', '.join(classifiers)}"
        )
    if args.model_state_dict_path:
        path = Path(args.model_state_dict_path)
        if not path.is_file():
            raise CompileError(f"--model_state_dict_path {path} does not exist")
        data = path.read_bytes()
        model = models.get_model(args.model_name, weights=None)
        try:
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        except Exception as e:
            raise CompileError(
                f"the state dict {path} does not fit torchvision's {args.model_name}: "
                f"{first_line(e)}"
            ) from e
    else:
        torch.manual_seed(args.seed)
        model = models.get_model(args.model_name, weights=None)
        data = f"random seed {args.seed}".encode()
    return model, args.model_name.encode() + data


def package_path(args: argparse.Namespace, source: bytes, calibration: list[str]) -> Path:
    """``--output`` itself, or in a folder ``--output`` a name with the hash of every input."""
    output = Path(args.output)
    if output.suffix == ".pt2":
        return output
    key = hashlib.sha256(source)
    settings = (
        RECIPE,
        args.input_size,
        args.int8,
        args.resize,
        args.crop,
        args.mean,
        args.std,
        args.calibration_count,
        machine_kind(args.device),
    )
    key.update(repr(settings).encode())
    for path in calibration:
        key.update(Path(path).read_bytes() if Path(path).is_file() else path.encode())
    if args.name:
        stem = args.name
    elif args.factory:
        stem = args.factory.partition(":")[2]
    else:
        stem = Path(args.exported_program or args.model_name).stem
    stem = stem.replace(".", "-")
    kind = "int8" if args.int8 else "fp32"
    return output / f"{stem}-{kind}-{key.hexdigest()[:16]}.pt2"


def input_size(text: str) -> tuple[int, int]:
    """``224`` or ``224,224`` as (height, width)."""
    try:
        sides = tuple(int(v) for v in text.split(","))
    except ValueError:
        sides = ()
    if len(sides) == 1:
        sides = sides * 2
    if len(sides) != 2 or min(sides) < 1:
        raise argparse.ArgumentTypeError(
            f"--input_size takes a side (224) or height,width (224,224), got {text!r}"
        )
    return sides


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m beam_ml_flink.compile",
        description=(
            "Compile a model into an AOTInductor package (.pt2) with a dynamic batch dimension, "
            "fp32 or int8, for this machine kind. Prints the package's path."
        ),
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model_name", help="A torchvision classification model, e.g. resnet50.")
    source.add_argument("--exported_program", help="A file saved by torch.export.save.")
    source.add_argument(
        "--factory", metavar="MODULE:FUNCTION", help="A function returning a torch.nn.Module."
    )
    parser.add_argument(
        "--model_state_dict_path",
        help="With --model_name: its weights (torch.save(model.state_dict())); without, random.",
    )
    parser.add_argument("--seed", type=int, default=0, help="Random weights' seed (no state dict).")
    parser.add_argument(
        "--output",
        required=True,
        help="The package (a .pt2 path), or a folder where it is named by a content hash and "
        "reused when it exists.",
    )
    parser.add_argument("--name", help="The package's name stem in an --output folder.")
    parser.add_argument(
        "--input_size",
        type=input_size,
        default=(224, 224),
        help="Image height,width (or one side).",
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--int8", action="store_true", help="Quantize to int8 first (CPU).")
    parser.add_argument(
        "--calibration", help="--int8: a folder, list or glob of images to calibrate on."
    )
    parser.add_argument("--calibration_count", type=positive_int, default=DEFAULT_CALIBRATION_COUNT)
    preprocessing = "--int8: calibration images are preprocessed as the classifier will"
    parser.add_argument("--resize", type=resize, default=256, help=f"{preprocessing}.")
    parser.add_argument("--crop", type=positive_int, default=224, help=f"{preprocessing}.")
    parser.add_argument("--mean", type=triple, help=f"{preprocessing} (ImageNet's by default).")
    parser.add_argument("--std", type=triple, help=f"{preprocessing} (ImageNet's by default).")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # torch's own deprecation notices about its internals, not about the model.
    warnings.filterwarnings("ignore", category=FutureWarning)
    if args.model_state_dict_path and not args.model_name:
        parser.error("--model_state_dict_path goes with --model_name")
    if args.int8 and not args.calibration:
        parser.error("--int8 needs --calibration: a folder, list or glob of images")
    if args.int8 and args.device != "cpu":
        parser.error("--int8 makes CPU packages (the X86 Inductor quantizer); drop --device cuda")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda needs a GPU and a torch with CUDA; this machine has none")
    calibration = image_paths(args.calibration) if args.int8 else []
    if args.int8 and not calibration:
        parser.error(f"--calibration {args.calibration} names no files")
    try:
        # stdout carries the package's path alone: whatever the model's code prints goes to stderr.
        with contextlib.redirect_stdout(sys.stderr):
            output = build(args, calibration)
    except CompileError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(output)
    return 0


def build(args: argparse.Namespace, calibration: list[str]) -> Path:
    """The package ``args`` ask for: reused from an --output folder, or compiled."""
    model, source = load_source(args)
    output = package_path(args, source, calibration[: args.calibration_count])
    if output.exists() and output.suffix == ".pt2" and Path(args.output) != output:
        print(f"reusing {output} (same model, options and machine kind)", file=sys.stderr)
        return output
    started = time.perf_counter()
    import torch

    if isinstance(model, torch.export.ExportedProgram):
        program = reexport(model, args)
    else:
        if args.device != "cpu":
            model = model.to(args.device)
        program = export(model, args.input_size, args.device)
    if args.int8:
        import beam_ml_flink as bmf

        norm = {k: v for k, v in (("mean", args.mean), ("std", args.std)) if v is not None}

        def preprocess(images: list[bytes]) -> Any:
            return bmf.preprocess(images, resize=args.resize, crop=args.crop, **norm)

        batches = calibration_batches(calibration, args.calibration_count, preprocess)
        program = quantize_int8(program, batches, args.input_size)
    compile_package(program, output)
    seconds = time.perf_counter() - started
    size = output.stat().st_size / 1e6
    print(
        f"compiled {output} in {seconds:.0f} s ({size:.1f} MB, {machine_kind(args.device)})",
        file=sys.stderr,
    )
    return output


if __name__ == "__main__":
    sys.exit(main())
