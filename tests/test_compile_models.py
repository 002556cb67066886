"""Packages compiled from the formats models come in: a timm architecture, a transformers model's
folder, weights in a ``.safetensors`` file; and the preprocessing recipe written beside them.

Expected values come from the libraries themselves: timm's and transformers' eager forward, on
the photos preprocessed by their own transforms (timm's ``create_transform``, transformers'
``AutoImageProcessor`` with the PIL backend), while the package runs on this package's
preprocessing by the recipe the handler found beside it.
"""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
import transformers
from apache_beam.io.localfilesystem import LocalFileSystem
from PIL import Image
from safetensors.torch import save_file

import beam_ml_flink as bmf
from beam_ml_flink.beam import ImageClassifierHandler
from beam_ml_flink.compile import main as compile_main
from beam_ml_flink.recipes import find_recipe_beside, recipe_beside
from conftest import DEMO_MODEL, IMAGENET_LABELS, IMAGES

# Packages against the libraries' eager forward on the 11 photos, measured: the pretrained
# EfficientNet-Lite0 (logits up to 11.4) differs by 1.1e-5 at most, the tiny ViT (up to 0.27)
# by 7.5e-8, the ConvNeXt pooled output (up to 2.1) by 8.2e-7: compiled kernels round otherwise.
ATOL = 1e-4
TIMM_ARCH = "mobilenetv3_small_050.lamb_in1k"


def assert_close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0)


def photos() -> list[bytes]:
    return [p.read_bytes() for p in sorted(IMAGES.iterdir())]


def pil(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def run_compile(*args: str) -> subprocess.CompletedProcess[str]:
    """`python -m beam_ml_flink.compile ARGS`, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "beam_ml_flink.compile", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )


def compiled(*args: str) -> Path:
    run = run_compile(*args)
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    package = Path(run.stdout.strip())
    assert package.is_file(), run.stdout
    return package


def timm_eager_logits(model: torch.nn.Module, images: list[bytes]) -> torch.Tensor:
    """timm's eager forward on the photos as timm's own eval transform makes them."""
    from timm.data import create_transform, resolve_data_config

    transform = create_transform(**resolve_data_config(model=model))
    batch = torch.stack([transform(pil(data)) for data in images])
    with torch.no_grad():
        return model.eval()(batch)


def recipe_of(handler: ImageClassifierHandler) -> dict[str, Any]:
    """The preprocessing the handler will give its classifier."""
    return {
        "resize": handler._resize,
        "crop": handler._crop,
        "crop_pct": handler._crop_pct,
        "interpolation": handler._interpolation,
        "mean": handler._mean,
        "std": handler._std,
    }


def handler_logits(package: Path, images: list[bytes]) -> torch.Tensor:
    """The package's logits as the handler runs it, with the recipe it found beside it."""
    model = ImageClassifierHandler(str(package)).load_model()
    return torch.from_numpy(model.logits(images))


def tiny_vit(folder: Path, seed: int) -> Any:
    """A randomly initialised ViT image classifier (hidden size 32, 2 layers, 224 / 16 patches),
    saved with save_pretrained (config.json, model.safetensors) and ViT's image processor."""
    config = transformers.ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=224,
        patch_size=16,
        num_labels=10,
    )
    torch.manual_seed(seed)
    model = transformers.ViTForImageClassification(config).eval()
    model.save_pretrained(folder)
    transformers.ViTImageProcessor().save_pretrained(folder)
    return model


@pytest.mark.slow
def test_timm_package_from_safetensors_runs_as_timm_by_its_recipe(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The demo's pretrained EfficientNet-Lite0 is timm's tf_efficientnet_lite0, its tensors in
    # the same order under other names: renamed, saved as .safetensors and compiled with timm's
    # architecture, it answers as timm's eager forward with those weights, and as the demo model.
    demo = torch.jit.load(str(DEMO_MODEL)).eval()
    architecture = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    names = list(architecture.state_dict())
    weights = dict(zip(names, demo.state_dict().values(), strict=True))
    architecture.load_state_dict(weights)
    path = tmp_path / "efficientnet_lite0.safetensors"
    save_file({k: v.contiguous() for k, v in weights.items()}, str(path))
    package = compiled(
        "--timm",
        "tf_efficientnet_lite0",
        "--model_state_dict_path",
        str(path),
        "--output",
        str(tmp_path),
    )
    assert package.name.startswith("tf_efficientnet_lite0-fp32-")

    # Beside it, timm's pretrained_cfg as it is; the handler finds it, says so, and reads it as
    # read_preprocess_config reads timm's config.
    recipe_file = package.with_suffix("").with_suffix(".preprocess.json")
    cfg = architecture.pretrained_cfg
    assert json.loads(recipe_file.read_text()) == json.loads(json.dumps(cfg))
    expected = bmf.read_preprocess_config(cfg)
    assert (expected["interpolation"], expected["crop_pct"], expected["mean"]) == (
        "bicubic",
        0.875,
        (0.5, 0.5, 0.5),
    )
    with caplog.at_level(logging.INFO, logger="beam_ml_flink.beam"):
        handler = ImageClassifierHandler(str(package))
    assert f"recipe beside the model: {recipe_file}" in caplog.text
    assert recipe_of(handler) == expected
    # Arguments given win over it.
    given = ImageClassifierHandler(str(package), crop=160, interpolation="bilinear")
    assert recipe_of(given) == {**expected, "crop": 160, "interpolation": "bilinear"}

    images = photos()
    ours = handler_logits(package, images)
    assert_close(ours, timm_eager_logits(architecture, images))
    with torch.no_grad():
        theirs = demo(torch.from_numpy(bmf.preprocess(images, **expected)))
    assert_close(ours, theirs)
    labels = IMAGENET_LABELS.read_text().splitlines()
    assert [labels[i] for i in ours.argmax(1)] == [labels[i] for i in theirs.argmax(1)]


def test_timm_random_weights_come_from_the_seed(tmp_path: Path) -> None:
    from beam_ml_flink.compile import build_parser, load_timm

    args = build_parser().parse_args(
        ["--timm", TIMM_ARCH, "--seed", "3", "--output", str(tmp_path)]
    )
    torch.manual_seed(3)
    expected = timm.create_model(TIMM_ARCH, pretrained=False).state_dict()
    got = load_timm(args).model.state_dict()
    assert list(got) == list(expected)
    for key, tensor in expected.items():
        torch.testing.assert_close(got[key], tensor, atol=0, rtol=0)


def test_timm_classes_come_from_the_weights(tmp_path: Path) -> None:
    # A classifier of 7 classes in a .safetensors file: timm's architecture is made with 7.
    from beam_ml_flink.compile import build_parser, load_timm

    torch.manual_seed(11)
    trained = timm.create_model(TIMM_ARCH, pretrained=False, num_classes=7).eval()
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, str(path))
    args = build_parser().parse_args(
        ["--timm", TIMM_ARCH, "--model_state_dict_path", str(path), "--output", str(tmp_path)]
    )
    source = load_timm(args)
    assert source.model.num_classes == 7
    batch = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(source.model.eval()(batch), trained(batch), atol=0, rtol=0)
    # Weights without the classifier: the model returns its pooled features.
    headless = {k: v for k, v in trained.state_dict().items() if not k.startswith("classifier.")}
    save_file({k: v.contiguous() for k, v in headless.items()}, str(path))
    assert load_timm(args).model.num_classes == 0


@pytest.mark.slow
def test_timm_pre_logits_are_the_features_its_classifier_takes(tmp_path: Path) -> None:
    # --output_name pre_logits: the package returns what timm's forward_head gives with
    # pre_logits=True (the pooled features), the embeddings of a model trained as a classifier.
    package = compiled(
        "--timm", TIMM_ARCH, "--seed", "2", "--output_name", "pre_logits", "--output", str(tmp_path)
    )
    torch.manual_seed(2)
    model = timm.create_model(TIMM_ARCH, pretrained=False).eval()
    from timm.data import create_transform, resolve_data_config

    images = photos()
    transform = create_transform(**resolve_data_config(model=model))
    batch = torch.stack([transform(pil(data)) for data in images])
    with torch.no_grad():
        theirs = model.forward_head(model.forward_features(batch), pre_logits=True)
    # MobileNetV3's head widens the pooled features (num_features) to head_hidden_size.
    assert theirs.shape == (len(images), model.head_hidden_size)
    recipe_file = package.with_suffix("").with_suffix(".preprocess.json")
    classifier = bmf.ImageClassifier(package, preprocess_config=recipe_file)
    vectors, errors = classifier.embed(images)
    assert errors == [None] * len(images)
    assert_close(torch.from_numpy(vectors), theirs)


@pytest.mark.slow
def test_hugging_face_folder_runs_as_transformers(tmp_path: Path) -> None:
    folder = tmp_path / "tiny-vit"
    model = tiny_vit(folder, seed=5)
    # The weights come from the folder's model.safetensors, not from --seed.
    package = compiled("--hf", str(folder), "--seed", "0", "--output", str(tmp_path / "out"))
    assert package.name.startswith("tiny-vit-fp32-")
    recipe_file = package.with_suffix("").with_suffix(".preprocess.json")
    source_config = folder / "preprocessor_config.json"
    assert json.loads(recipe_file.read_text()) == json.loads(source_config.read_text())
    handler = ImageClassifierHandler(str(package))
    expected = bmf.read_preprocess_config(source_config)
    assert (handler._resize, handler._crop, handler._interpolation, handler._mean) == (
        expected["resize"],
        expected["crop"],
        expected["interpolation"],
        expected["mean"],
    )

    images = photos()
    processor = transformers.AutoImageProcessor.from_pretrained(str(folder), backend="pil")
    pixels = processor([pil(d) for d in images], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        theirs = model(pixel_values=pixels).logits
    ours = handler_logits(package, images)
    assert ours.shape == (len(images), 10)
    assert_close(ours, theirs)


@pytest.mark.slow
def test_hugging_face_vision_model_returns_its_pooled_output(tmp_path: Path) -> None:
    # A ConvNeXt backbone without a classification head (architectures: ConvNextModel) and
    # without a preprocessor config: the package returns the pooled features, with no recipe.
    folder = tmp_path / "convnext"
    config = transformers.ConvNextConfig(
        num_channels=3, num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], image_size=64
    )
    config.architectures = ["ConvNextModel"]
    config.save_pretrained(folder)
    stale = tmp_path / "convnext.preprocess.json"
    stale.write_text("{}")
    package = compiled(
        "--hf",
        str(folder),
        "--seed",
        "4",
        "--input_size",
        "64",
        "--output",
        str(tmp_path / "convnext.pt2"),
    )
    assert not stale.exists()  # a recipe of an earlier package of that name is not kept
    torch.manual_seed(4)
    model = transformers.AutoModel.from_config(config).eval()
    images = photos()
    tensors = bmf.preprocess(images, resize=72, crop=64)
    with torch.no_grad():
        theirs = model(pixel_values=torch.from_numpy(tensors)).pooler_output
    ours = bmf.ImageClassifier(package, resize=72, crop=64).logits(images)
    assert ours.shape == (len(images), 16)
    assert_close(torch.from_numpy(ours), theirs)


def test_output_name_is_for_timm_and_hugging_face_models(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from beam_ml_flink.compile import build_parser, load_timm

    # Its package is another package than the logits' (its name is a hash of the identity).
    identities = {
        load_timm(
            build_parser().parse_args(["--timm", TIMM_ARCH, *given, "--output", "x"])
        ).identity
        for given in ([], ["--output_name", "logits"], ["--output_name", "pre_logits"])
    }
    assert len(identities) == 2
    with pytest.raises(SystemExit) as exit:
        compile_main(["--model_name", "resnet18", "--output_name", "x", "--output", str(tmp_path)])
    assert exit.value.code == 2
    assert "--output_name picks an output of a --timm or --hf model" in capsys.readouterr().err


def test_the_recipe_beside_a_model_is_found_by_its_name(tmp_path: Path) -> None:
    assert recipe_beside("models/resnet50.pt2") == "models/resnet50.preprocess.json"
    assert recipe_beside("s3://b/m.v2.pt2") == "s3://b/m.v2.preprocess.json"
    model = tmp_path / "model.pt2"
    assert find_recipe_beside(str(model)) is None
    (tmp_path / "model.preprocess.json").write_text("{}")
    assert find_recipe_beside(str(model)) == str(tmp_path / "model.preprocess.json")


class BesideFileSystem(LocalFileSystem):
    """A Beam filesystem of its own scheme (beside://PATH is the local PATH): a model URI that
    only Beam's FileSystems can look beside, as with s3:// and gs://."""

    @classmethod
    def scheme(cls) -> str:
        return "beside"

    def exists(self, path: str) -> bool:
        return super().exists(path.removeprefix("beside://"))

    def _path_open(self, path: str, *args: Any) -> Any:
        return super()._path_open(path.removeprefix("beside://"), *args)


def test_the_recipe_beside_a_remote_model_is_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = {"input_size": [3, 256, 256], "crop_pct": 0.95, "interpolation": "bilinear"}
    (tmp_path / "model.preprocess.json").write_text(json.dumps(cfg))
    with caplog.at_level(logging.INFO, logger="beam_ml_flink.beam"):
        handler = ImageClassifierHandler(f"beside://{tmp_path}/model.pt2")
    assert f"beside://{tmp_path}/model.preprocess.json" in caplog.text
    assert recipe_of(handler) == bmf.read_preprocess_config(cfg)
    # Without one beside it (or with preprocess_config= given), the defaults.
    (tmp_path / "model.preprocess.json").unlink()
    assert recipe_of(ImageClassifierHandler(f"beside://{tmp_path}/model.pt2"))["crop"] == 224


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--timm", "resnet18x"],
            "unknown timm model 'resnet18x'; did you mean resnet18",
        ),
        (["--hf", "{tmp}"], "has no config.json; give the folder of a transformers model"),
        (
            ["--timm", "resnet18", "--model_state_dict_path", "{weights}"],
            "do not fit timm's resnet18: 'conv1.weight' is (16, 3, 3, 3) in the file and "
            "(64, 3, 7, 7) in the architecture",
        ),
        (
            ["--model_name", "resnet18", "--model_state_dict_path", "{weights}"],
            "do not fit torchvision's resnet18: 'conv1.weight' is (16, 3, 3, 3)",
        ),
        (
            ["--hf", "{tmp}/vit", "--model_state_dict_path", "{weights}"],
            "do not fit the ViTForImageClassification of {tmp}/vit/config.json: "
            "'classifier.bias' is missing from the file",
        ),
        (
            ["--timm", "resnet18", "--model_state_dict_path", "{tmp}/missing.safetensors"],
            "--model_state_dict_path {tmp}/missing.safetensors does not exist",
        ),
        (
            ["--timm", "resnet18", "--output_name", "features"],
            "timm's resnet18 has no output 'features'; --output_name takes logits or pre_logits",
        ),
        (
            ["--hf", "{tmp}/vit", "--output_name", "pooler_output"],
            "the ViTForImageClassification of {tmp}/vit/config.json has no output "
            "'pooler_output'; its output has logits [1, 2]",
        ),
    ],
)
def test_compile_errors_are_sentences(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = tmp_path / "other.safetensors"
    # Another architecture's weights that share its first key's name.
    save_file({"conv1.weight": torch.zeros(16, 3, 3, 3)}, str(weights))
    config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2)
    config.architectures = ["ViTForImageClassification"]
    config.save_pretrained(tmp_path / "vit")
    filled = [a.format(tmp=tmp_path, weights=weights) for a in args]
    # The command's main in this process (no model is compiled), its global settings undone:
    # the warnings it filters and transformers' verbosity.
    verbosity = transformers.utils.logging.get_verbosity()
    try:
        with warnings.catch_warnings():
            code = compile_main([*filled, "--output", str(tmp_path / "out")])
    finally:
        transformers.utils.logging.set_verbosity(verbosity)
        transformers.utils.logging.enable_progress_bar()
    stderr = capsys.readouterr().err
    assert code == 2, stderr
    assert message.format(tmp=tmp_path) in stderr
