"""Compiles a model into an AOTInductor package (``.pt2``) that beam_ml_flink runs in Rust.

``python -m beam_ml_flink.compile`` takes what users have (a torchvision model name, a timm
architecture or a transformers model's folder, each with weights from a ``.safetensors`` file or a
state dict; an ``ExportedProgram`` saved by ``torch.export.save``; or ``module:factory`` returning
an ``nn.Module``), exports it with ``torch.export`` with a dynamic batch dimension, optionally
quantizes it to int8 (torchao's PT2E flow with the X86 Inductor quantizer, calibrated on images
preprocessed by :func:`beam_ml_flink.preprocess`, the tensors inference will see), and compiles it
with AOTInductor with freezing. A package runs only with the torch that compiled it, on the device
and CPU vector instructions it was compiled for: compile it on the machine kind that runs it.
With ``--output`` a folder, the package's name carries a hash of everything that went into it
(model bytes, options, torch version, CPU instructions), and an existing one is reused.
A timm or transformers model's preprocessing config (timm's ``pretrained_cfg``, the folder's
``preprocessor_config.json``) is written beside the package as ``NAME.preprocess.json``, where the
handler and the command find it.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import glob
import hashlib
import importlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from beam_ml_flink.arguments import ArgumentParser, positive_int, resize, triple
from beam_ml_flink.recipes import (
    PreprocessRecipe,
    read_preprocess_config,
    recipe_beside,
    with_explicit,
)

if TYPE_CHECKING:
    import torch

#: Calibration images per int8 package unless told otherwise.
DEFAULT_CALIBRATION_COUNT = 64
#: Images per calibration forward pass.
CALIBRATION_BATCH = 8
#: How packages are made; part of a cached package's name hash, so that a change remakes them.
RECIPE = "export and compile under no_grad, freezing, dynamic batch from 1"


#: Calibration preprocessing of a model without a recipe: torchvision's ImageNet eval transform.
CALIBRATION_RECIPE = PreprocessRecipe(
    resize=256,
    crop=224,
    crop_pct=None,
    interpolation="bilinear",
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
)


class CompileError(Exception):
    """The model could not be loaded, exported, quantized or compiled; the message says why."""


@dataclass
class Source:
    """What is compiled: the model (an nn.Module or an ExportedProgram), the bytes that identify
    it, its name stem, and the preprocessing config it came with (timm's or Hugging Face's)."""

    model: Any
    identity: bytes
    stem: str
    preprocess_config: Mapping[str, Any] | None = None


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


def load_source(args: argparse.Namespace) -> Source:
    """The model to compile, from whichever of the source flags was given."""
    import torch

    if args.exported_program:
        path = Path(args.exported_program)
        if not path.is_file():
            raise CompileError(f"--exported_program {path} does not exist")
        try:
            program = torch.export.load(str(path))
        except Exception as e:
            raise CompileError(
                f"{path} is not an ExportedProgram saved by torch.export.save: {first_line(e)}"
            ) from e
        return Source(program, path.read_bytes(), path.stem)
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
        return Source(model, source + _tensor_bytes(model.state_dict()), attr)
    if args.timm:
        return load_timm(args)
    if args.hf:
        return load_hugging_face(args)
    from torchvision import models

    classifiers = models.list_models(module=models)
    if args.model_name not in classifiers:
        raise CompileError(
            f"unknown torchvision model {args.model_name!r}; choose one of: "
            f"{', '.join(classifiers)}"
        )
    torch.manual_seed(args.seed)
    model = models.get_model(args.model_name, weights=None)
    data = f"random seed {args.seed}".encode()
    if not args.model_state_dict_path:
        random_weights("no --model_state_dict_path", args.seed)
    else:
        path = Path(args.model_state_dict_path)
        load_weights(model, read_weights(path), path, f"torchvision's {args.model_name}")
        data = path.read_bytes()
    return Source(model, args.model_name.encode() + data, args.model_name)


def load_timm(args: argparse.Namespace) -> Source:
    """A timm architecture (``timm.create_model(name, pretrained=False)``) with the weights of
    ``--model_state_dict_path`` (their classifier's rows set ``num_classes``; weights without
    the classifier give a model that returns pooled features), or random ones from ``--seed``.
    Its ``pretrained_cfg`` is the preprocessing config."""
    import torch

    try:
        import timm
    except ImportError as e:
        raise CompileError("--timm needs timm: pip install timm") from e
    name = args.timm
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise CompileError(
            f"unknown timm model {name!r}; {hint}timm.list_models('PATTERN*') lists timm's "
            "architectures (a pretrained tag as in resnet18.a1_in1k picks its preprocessing)"
        )
    torch.manual_seed(args.seed)
    model = timm.create_model(name, pretrained=False)
    pretrained_cfg: dict[str, Any] = dict(getattr(model, "pretrained_cfg", {}))
    identity = f"timm {timm.__version__} {name} random seed {args.seed}".encode()
    if not args.model_state_dict_path:
        random_weights("no --model_state_dict_path", args.seed)
    else:
        path = Path(args.model_state_dict_path)
        weights = read_weights(path)
        classifier = pretrained_cfg.get("classifier")
        head = f"{classifier}.weight" if isinstance(classifier, str) else None
        classes = int(weights[head].shape[0]) if head and head in weights else 0
        if head and classes != getattr(model, "num_classes", None):
            model = timm.create_model(name, pretrained=False, num_classes=classes)
        load_weights(model, weights, path, f"timm's {name}")
        identity = f"timm {timm.__version__} {name}".encode() + path.read_bytes()
    output = args.output_name or "logits"
    if output not in TIMM_OUTPUTS:
        raise CompileError(
            f"timm's {name} has no output {output!r}; --output_name takes "
            f"{' or '.join(TIMM_OUTPUTS)} with --timm"
        )
    if output == "pre_logits":
        model, identity = timm_pre_logits(model).eval(), identity + b" pre_logits"
    return Source(model, identity, name, pretrained_cfg)


# What a timm package may return: the classifier's logits, or the pooled features the classifier
# takes (timm's forward_head(..., pre_logits=True)): the model's embeddings.
TIMM_OUTPUTS = ("logits", "pre_logits")


def timm_pre_logits(model: Any) -> Any:
    """A timm model wrapped to return its pre-logits features, as
    ``model.forward_head(model.forward_features(x), pre_logits=True)``."""
    import torch

    class PreLogits(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.model = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            features = self.model.forward_features(x)
            pooled: torch.Tensor = self.model.forward_head(features, pre_logits=True)
            return pooled

    return PreLogits(model)


def load_hugging_face(args: argparse.Namespace) -> Source:
    """A transformers model from a folder's ``config.json``: an image classifier (its
    ``architectures`` name a ``...ForImageClassification``, or it names none and its type has
    one) returning logits, otherwise the vision model (``AutoModel``) returning its pooled
    output. Weights from ``--model_state_dict_path`` or the folder's ``model.safetensors``,
    else random from ``--seed``; the folder's ``preprocessor_config.json`` is the preprocessing
    config."""
    import torch

    folder = Path(args.hf)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise CompileError(
            f"--hf {folder} has no config.json; give the folder of a transformers model (its "
            "config.json, model.safetensors for its weights and preprocessor_config.json for its "
            "preprocessing, as save_pretrained writes them)"
        )
    try:
        import transformers
    except ImportError as e:
        raise CompileError("--hf needs transformers: pip install transformers") from e
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

    try:
        config = transformers.AutoConfig.from_pretrained(str(folder))
    except Exception as e:
        raise CompileError(f"transformers cannot read {config_file}: {first_line(e)}") from e
    architectures = list(getattr(config, "architectures", None) or [])
    classifier = any(a.endswith("ForImageClassification") for a in architectures) or (
        not architectures and config.model_type in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES
    )
    auto = transformers.AutoModelForImageClassification if classifier else transformers.AutoModel
    # What transformers says while loading (progress bars, load reports) would hide ours.
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    identity = config_file.read_bytes()
    # save_pretrained's weights, one file or shards with their index; or the older .bin ones.
    shards = sorted(folder.glob("model*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    with tempfile.TemporaryDirectory() as scratch:
        weights_folder = weights_named = folder
        if args.model_state_dict_path:
            path = Path(args.model_state_dict_path)
            weights = read_weights(path)
            from safetensors.torch import save_file

            # Through transformers' own loading, which renames a checkpoint's keys to the
            # model's; it reads a folder.
            weights_folder, weights_named = Path(scratch), path
            shutil.copy(config_file, weights_folder / "config.json")
            save_file(
                {k: v.contiguous() for k, v in weights.items()},
                str(weights_folder / "model.safetensors"),
            )
            shards = [path]
        torch.manual_seed(args.seed)
        if shards:
            model = hugging_face_weights(auto, weights_folder, config, weights_named, config_file)
            identity += b"".join(shard.read_bytes() for shard in shards)
        else:
            try:
                model = auto.from_config(config)
            except Exception as e:
                raise CompileError(
                    f"{config_file} describes a {config.model_type!r} model, which transformers' "
                    f"{auto.__name__} cannot make: {first_line(e)}; give an image classification "
                    "or vision model"
                ) from e
            identity += f"random seed {args.seed}".encode()
            random_weights(f"{folder} has no model.safetensors", args.seed)
    preprocessor = folder / "preprocessor_config.json"
    preprocess_config = None
    if preprocessor.is_file():
        identity += preprocessor.read_bytes()
        preprocess_config = json.loads(preprocessor.read_text())
    field = args.output_name or ("logits" if classifier else "pooler_output")
    module = _tensor_output(model, field, config_file)
    identity += f" output {field}".encode()
    return Source(module, identity, folder.resolve().name, preprocess_config)


def hugging_face_weights(
    auto: Any, folder: Path, config: Any, weights: Path, config_file: Path
) -> Any:
    """``auto.from_pretrained(folder)``, or a CompileError naming the first tensor of the
    weights that does not fit (of another shape, missing from them, or not in the model)."""
    try:
        model, info = auto.from_pretrained(
            str(folder), config=config, output_loading_info=True, ignore_mismatched_sizes=True
        )
    except Exception as e:
        raise CompileError(
            f"transformers could not load the weights {weights}: {first_line(e)}"
        ) from e
    problems = [
        f"{key!r} is {tuple(theirs)} in the file and {tuple(ours)} in the architecture"
        for key, theirs, ours in sorted(info["mismatched_keys"])
    ]
    problems += [f"{key!r} is missing from the file" for key in sorted(info["missing_keys"])]
    problems += [
        f"the file's {key!r} is not in the architecture" for key in sorted(info["unexpected_keys"])
    ]
    if problems:
        raise CompileError(
            f"the weights {weights} do not fit the {type(model).__name__} of {config_file}: "
            f"{problems[0]} ({len(problems)} tensors do not fit); give the weights of this "
            "architecture"
        )
    return model


def _tensor_output(model: Any, field: str, config_file: Path) -> Any:
    """``model`` wrapped to take one image tensor and return the tensor ``field`` of its
    output (``logits`` of a classifier, ``pooler_output`` of a vision model)."""
    import torch

    class TensorOutput(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.model = inner

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor | None:
            output: torch.Tensor | None = getattr(
                self.model(pixel_values=pixel_values), field, None
            )
            return output

    module = TensorOutput(model).eval()
    size = getattr(model.config, "image_size", 224)
    side = size if isinstance(size, int) else 224
    with torch.no_grad():
        try:
            output = module(torch.zeros(1, 3, side, side))
        except Exception as e:
            raise CompileError(
                f"the model of {config_file} does not run on a [1, 3, {side}, {side}] image: "
                f"{first_line(e)}"
            ) from e
    if output is None:
        raise CompileError(
            f"the {type(model).__name__} of {config_file} has no output {field!r}; its "
            f"output has {', '.join(_output_fields(module, side))}: give one of those of shape "
            "[batch, features] to --output_name"
        )
    if not isinstance(output, torch.Tensor) or output.dim() != 2:
        shape = list(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise CompileError(
            f"the model of {config_file} has no {field} of shape [batch, features] to return "
            f"(it is {shape}; a vision model without a pooler?); give a model with a "
            "classification head or a pooler, another --output_name, or compile your own "
            "wrapper with --factory"
        )
    return module


def _output_fields(module: Any, side: int) -> list[str]:
    """The fields of a transformers model's output, with their shapes."""
    import torch

    with torch.no_grad():
        output = module.model(pixel_values=torch.zeros(1, 3, side, side))
    return [
        f"{name} {list(value.shape)}" if isinstance(value, torch.Tensor) else name
        for name, value in output.items()
    ]


def random_weights(why: str, seed: int) -> None:
    print(f"note: {why}: the model's weights are random (--seed {seed})", file=sys.stderr)


def _tensor_bytes(state: Mapping[str, Any]) -> bytes:
    return b"".join(t.detach().cpu().numpy().tobytes() for t in state.values())


def read_weights(path: Path) -> dict[str, Any]:
    """The tensors of a ``.safetensors`` file or of a state dict saved by ``torch.save``."""
    import torch

    if not path.is_file():
        raise CompileError(f"--model_state_dict_path {path} does not exist")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as e:
            raise CompileError(
                f"{path} needs safetensors: pip install safetensors (or beam-ml-flink[compile])"
            ) from e

        try:
            return load_file(str(path))
        except Exception as e:
            raise CompileError(f"{path} is not a safetensors file: {first_line(e)}") from e
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CompileError(
            f"{path} is neither a .safetensors file nor a state dict saved by torch.save: "
            f"{first_line(e)}"
        ) from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CompileError(
            f"{path} holds a {type(state).__name__} that is not a state dict (names to tensors); "
            "save model.state_dict(), or the tensors with safetensors.torch.save_file"
        )
    return state


def load_weights(model: Any, weights: Mapping[str, Any], path: Path, what: str) -> None:
    """``weights`` into ``model``, or a CompileError naming the first tensor that does not fit
    (missing from the file, of another shape, or not in the architecture)."""
    expected = model.state_dict()
    problem = None
    for key, tensor in expected.items():
        if key not in weights:
            problem = f"{key!r} {tuple(tensor.shape)} is missing from the file"
        elif tuple(weights[key].shape) != tuple(tensor.shape):
            problem = (
                f"{key!r} is {tuple(weights[key].shape)} in the file and "
                f"{tuple(tensor.shape)} in the architecture"
            )
        if problem:
            break
    else:
        extra = [key for key in weights if key not in expected]
        if extra:
            problem = f"the file's {extra[0]!r} is not in the architecture"
    if problem is None:
        try:
            model.load_state_dict(dict(weights), strict=True)
        except Exception as e:
            problem = first_line(e)
    if problem:
        raise CompileError(
            f"the weights {path} do not fit {what}: {problem} ({len(expected)} tensors expected, "
            f"{len(weights)} in the file); give the weights of this architecture"
        )


def package_path(args: argparse.Namespace, source: Source, calibration: list[str]) -> Path:
    """``--output`` itself, or in a folder ``--output`` a name with the hash of every input."""
    output = Path(args.output)
    if output.suffix == ".pt2":
        return output
    key = hashlib.sha256(source.identity)
    settings = (
        RECIPE,
        args.input_size,
        args.int8,
        CALIBRATION_RECIPE["resize"] if args.resize is None else args.resize,
        CALIBRATION_RECIPE["crop"] if args.crop is None else args.crop,
        args.mean,
        args.std,
        args.calibration_count,
        machine_kind(args.device),
    )
    key.update(repr(settings).encode())
    for path in calibration:
        key.update(Path(path).read_bytes() if Path(path).is_file() else path.encode())
    stem = (args.name or source.stem).replace(".", "-").replace("/", "-")
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
    source.add_argument(
        "--timm",
        metavar="NAME",
        help="A timm architecture, e.g. resnet50.a1_in1k; its pretrained_cfg is the recipe.",
    )
    source.add_argument(
        "--hf",
        metavar="CONFIG_DIR",
        help="A transformers image classification or vision model's folder: config.json, and "
        "model.safetensors and preprocessor_config.json where there are.",
    )
    parser.add_argument(
        "--model_state_dict_path",
        help="With --model_name, --timm or --hf: the weights, a .safetensors file or a "
        "torch.save(model.state_dict()) file; without (and no model.safetensors), random.",
    )
    parser.add_argument("--seed", type=int, default=0, help="Random weights' seed (no state dict).")
    parser.add_argument(
        "--output_name",
        metavar="NAME",
        help="What the package returns, for models with several outputs: with --timm, logits "
        "(the default) or pre_logits (the pooled features the classifier takes: embeddings); "
        "with --hf, a field of the model's output of shape [batch, features] (by default "
        "logits of a classifier, pooler_output of a vision model; e.g. image_embeds).",
    )
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
        help="Image height,width (or one side); by default the recipe's size, else 224.",
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--int8", action="store_true", help="Quantize to int8 first (CPU).")
    parser.add_argument(
        "--calibration", help="--int8: a folder, list or glob of images to calibrate on."
    )
    parser.add_argument("--calibration_count", type=positive_int, default=DEFAULT_CALIBRATION_COUNT)
    preprocessing = (
        "--int8: calibration images are preprocessed as the classifier will (the model's "
        "recipe, else torchvision's ImageNet one; a flag given wins)"
    )
    parser.add_argument("--resize", type=resize, help=f"{preprocessing}; 256 without a recipe.")
    parser.add_argument("--crop", type=positive_int, help=f"{preprocessing}; 224 without.")
    parser.add_argument("--mean", type=triple, help=f"{preprocessing}.")
    parser.add_argument("--std", type=triple, help=f"{preprocessing}.")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # torch's own deprecation notices about its internals, not about the model.
    warnings.filterwarnings("ignore", category=FutureWarning)
    if args.model_state_dict_path and not (args.model_name or args.timm or args.hf):
        parser.error("--model_state_dict_path goes with --model_name, --timm or --hf")
    if args.output_name and not (args.timm or args.hf):
        parser.error(
            "--output_name picks an output of a --timm or --hf model; a --model_name or "
            "--factory model returns its one tensor (wrap it to return another)"
        )
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
    """The package ``args`` ask for: reused from an --output folder, or compiled; with the
    model's preprocessing recipe written beside it."""
    source = load_source(args)
    recipe = usable_recipe(source)
    if args.input_size is None:
        args.input_size = recipe_size(recipe) if recipe else (224, 224)
    output = package_path(args, source, calibration[: args.calibration_count])
    if output.exists() and output.suffix == ".pt2" and Path(args.output) != output:
        print(f"reusing {output} (same model, options and machine kind)", file=sys.stderr)
        write_recipe(output, source.preprocess_config if recipe else None)
        return output
    started = time.perf_counter()
    import torch

    model = source.model
    if isinstance(model, torch.export.ExportedProgram):
        program = reexport(model, args)
    else:
        if args.device != "cpu":
            model = model.to(args.device)
        program = export(model, args.input_size, args.device)
    if args.int8:
        import beam_ml_flink as bmf

        calibration_recipe = with_explicit(
            recipe or CALIBRATION_RECIPE,
            resize=args.resize,
            crop=args.crop,
            mean=args.mean,
            std=args.std,
        )

        def preprocess(images: list[bytes]) -> Any:
            return bmf.preprocess(images, **calibration_recipe)

        batches = calibration_batches(calibration, args.calibration_count, preprocess)
        program = quantize_int8(program, batches, args.input_size)
    compile_package(program, output)
    write_recipe(output, source.preprocess_config if recipe else None)
    seconds = time.perf_counter() - started
    size = output.stat().st_size / 1e6
    print(
        f"compiled {output} in {seconds:.0f} s ({size:.1f} MB, {machine_kind(args.device)})",
        file=sys.stderr,
    )
    return output


def usable_recipe(source: Source) -> PreprocessRecipe | None:
    """The recipe of the model's preprocessing config, or None (with a warning when the config
    asks for what the recipe cannot do: the package is then made without one)."""
    if source.preprocess_config is None:
        return None
    try:
        return read_preprocess_config(source.preprocess_config)
    except ValueError as e:
        print(
            f"warning: the preprocessing config of {source.stem} cannot be used ({e}); no "
            "recipe is written beside the package: give the classifier its preprocessing flags",
            file=sys.stderr,
        )
        return None


def recipe_size(recipe: PreprocessRecipe) -> tuple[int, int]:
    """The (height, width) of the tensors the recipe makes."""
    resize = recipe["resize"]
    if isinstance(resize, tuple):
        return resize
    return (recipe["crop"], recipe["crop"])


def write_recipe(package: Path, config: Mapping[str, Any] | None) -> None:
    """The preprocessing config, as it came, beside the package (``NAME.preprocess.json``);
    without one, a recipe left there by an earlier package of that name is removed."""
    path = Path(recipe_beside(str(package)))
    if config is None:
        path.unlink(missing_ok=True)
        return
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text(json.dumps(config, indent=2, default=str) + "\n")
    os.replace(partial, path)
    print(f"wrote the preprocessing recipe {path} beside the package", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
