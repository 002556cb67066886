"""Recipes read from the models' own configs (``read_preprocess_config``, the handler's
``preprocess_config=``, ``--preprocess_config``) against the libraries' own transforms: timm's
``create_transform(**resolve_data_config(...))`` and transformers' ``AutoImageProcessor``, on the
real photos, with randomly initialised architectures and configs written here (no download).

What the photos show:

- timm (three recipes: bicubic with crop_pct 0.875, bicubic with 0.95, squash): the same tensors,
  bit for bit.
- transformers, PIL backend: ViT's tensors bit for bit, and ConvNeXt's from a shortest edge of
  384 on (a squash). ConvNeXt's below it (shorter side 256, crop 224) and BiT's (shortest_edge
  256, crop_size 224) are bit for bit where the crop's offset is the same; transformers' center
  crop starts at ``(h - 224) // 2`` where torchvision's (and ours) starts at
  ``round((h - 224) / 2)``, so on 4 of the 11 photos (an odd margin: 383 - 224 on a 640x427
  photo) ours is transformers' tensor moved by one column, equal on the other 223 columns.
  Top-1 of the pretrained demo model is the same on every photo (softmax within 0.09).
- transformers, torchvision backend (AutoImageProcessor's default): its tensor resize differs from
  Pillow's by at most one 8-bit level; top-1 is the same on every photo.
"""

from __future__ import annotations

import io
import json
import math
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from apache_beam.io.localfilesystem import LocalFileSystem
from PIL import Image

import beam_ml_flink as bmf
from beam_ml_flink.beam import ImageClassifierHandler
from conftest import DEMO_MEAN, DEMO_MODEL, DEMO_STD, IMAGES, TINY_MODEL, levels, reference

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")

# Three timm recipes (their built-in pretrained_cfg; creating the model downloads nothing):
# (architecture, interpolation, crop_pct, crop_mode) as timm resolves them.
TIMM_RECIPES = [
    ("mobilenetv3_small_100.lamb_in1k", "bicubic", 0.875, "center"),
    ("resnet18.a1_in1k", "bicubic", 0.95, "center"),
    ("convnext_tiny.fb_in22k_ft_in1k_384", "bicubic", 1.0, "squash"),
]
# The preprocessor_config.json of google/vit-base-patch16-224 and facebook/convnext-tiny-224,
# as transformers writes them.
VIT_CONFIG = {
    "image_processor_type": "ViTImageProcessor",
    "do_resize": True,
    "size": {"height": 224, "width": 224},
    "resample": 2,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
}
CONVNEXT_CONFIG = {
    "image_processor_type": "ConvNextImageProcessor",
    "do_resize": True,
    "size": {"shortest_edge": 224},
    "crop_pct": 0.875,
    "resample": 3,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
}

# A BiT-style processor: the shorter side, then a center crop of crop_size.
BIT_CONFIG = {
    "image_processor_type": "BitImageProcessor",
    "do_resize": True,
    "size": {"shortest_edge": 256},
    "resample": 3,
    "do_center_crop": True,
    "crop_size": {"height": 224, "width": 224},
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
}


def write_json(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(json.dumps(data))
    return path


def pil(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def hf_processor(config: dict[str, Any], folder: Path, backend: str | None) -> Any:
    write_json(folder / "preprocessor_config.json", config)
    kwargs = {} if backend is None else {"backend": backend}
    return transformers.AutoImageProcessor.from_pretrained(str(folder), **kwargs)


def hf_tensors(processor: Any, photos: dict[str, bytes]) -> np.ndarray:
    images = [pil(data) for data in photos.values()]
    return processor(images, return_tensors="np")["pixel_values"]


@pytest.mark.parametrize(("arch", "interpolation", "crop_pct", "crop_mode"), TIMM_RECIPES)
def test_timm_configs_give_timm_s_own_tensors(
    photos: dict[str, bytes],
    tmp_path: Path,
    arch: str,
    interpolation: str,
    crop_pct: float,
    crop_mode: str,
) -> None:
    from timm.data import create_transform, resolve_data_config
    from timm.models._hub import save_config_for_hf

    model = timm.create_model(arch, pretrained=False)
    data_config = resolve_data_config(model=model)
    assert (data_config["interpolation"], data_config["crop_pct"], data_config["crop_mode"]) == (
        interpolation,
        crop_pct,
        crop_mode,
    )
    # The config.json timm writes beside the weights on the hub.
    save_config_for_hf(model, str(tmp_path / "config.json"))
    assert "pretrained_cfg" in json.loads((tmp_path / "config.json").read_text())
    recipe = bmf.read_preprocess_config(tmp_path / "config.json")
    transform = create_transform(**data_config)
    for name, data in photos.items():
        expected = transform(pil(data)).numpy()
        (got,) = bmf.preprocess([data], **recipe)
        np.testing.assert_array_equal(got, expected, err_msg=name)


def test_a_bare_pretrained_cfg_reads_as_its_config_json(tmp_path: Path) -> None:
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg("resnet18.a1_in1k").to_dict()
    bare = write_json(tmp_path / "pretrained_cfg.json", cfg)
    nested = write_json(
        tmp_path / "config.json", {"architecture": "resnet18", "pretrained_cfg": cfg}
    )
    assert bmf.read_preprocess_config(bare) == bmf.read_preprocess_config(nested)
    assert bmf.read_preprocess_config(cfg) == bmf.read_preprocess_config(bare)


@pytest.mark.parametrize(
    "size", [{"height": 224, "width": 224}, 224], ids=["size-dict", "size-int-legacy"]
)
def test_vit_config_gives_the_pil_processor_s_tensors(
    photos: dict[str, bytes], tmp_path: Path, size: Any
) -> None:
    config = {**VIT_CONFIG, "size": size}
    processor = hf_processor(config, tmp_path, "pil")
    assert type(processor).__name__ == "ViTImageProcessorPil"
    recipe = bmf.read_preprocess_config(tmp_path / "preprocessor_config.json")
    got = bmf.preprocess(list(photos.values()), **recipe)
    np.testing.assert_array_equal(got, hf_tensors(processor, photos))


def crop_offsets(data: bytes, shorter: int, crop: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """(top, left) of transformers' center crop and of torchvision's, after the shorter side
    became ``shorter`` (both size the longer side as int(shorter * long / short))."""
    width, height = pil(data).size
    if width <= height:
        size = (int(shorter * height / width), shorter)
    else:
        size = (shorter, int(shorter * width / height))
    hf = tuple((side - crop) // 2 for side in size)
    tv = tuple(int(round((side - crop) / 2.0)) for side in size)
    return (hf[0], hf[1]), (tv[0], tv[1])


@pytest.mark.parametrize(
    ("config", "processor_name"),
    [(CONVNEXT_CONFIG, "ConvNextImageProcessorPil"), (BIT_CONFIG, "BitImageProcessorPil")],
    ids=["convnext-crop_pct", "bit-shortest_edge-crop_size"],
)
def test_shorter_side_and_crop_give_the_pil_processor_s_tensors_up_to_its_crop_offset(
    photos: dict[str, bytes],
    tmp_path: Path,
    config: dict[str, Any],
    processor_name: str,
    record_property: Any,
) -> None:
    processor = hf_processor(config, tmp_path, "pil")
    assert type(processor).__name__ == processor_name
    recipe = bmf.read_preprocess_config(tmp_path / "preprocessor_config.json")
    assert recipe["crop"] == 224 and recipe["interpolation"] == "bicubic"
    # Both resize the shorter side to 256: ConvNeXt's int(224 / 0.875), BiT's shortest_edge.
    expected = hf_tensors(processor, photos)
    got = bmf.preprocess(list(photos.values()), **recipe)
    shifted = []
    for i, (name, data) in enumerate(photos.items()):
        hf, tv = crop_offsets(data, 256, 224)
        dy, dx = tv[0] - hf[0], tv[1] - hf[1]
        assert abs(dy) + abs(dx) <= 1, name
        if (dy, dx) == (0, 0):
            np.testing.assert_array_equal(got[i], expected[i], err_msg=name)
            continue
        shifted.append(name)
        # Ours starts one row or column later: the same pixels, moved by one.
        h, w = got.shape[2:]
        np.testing.assert_array_equal(
            got[i][:, : h - dy, : w - dx], expected[i][:, dy:, dx:], err_msg=name
        )
        assert not np.array_equal(got[i], expected[i]), name
    record_property("photos_with_a_one_pixel_crop_shift", len(shifted))
    assert len(shifted) == 4, shifted


def test_convnext_from_384_on_squashes_as_the_pil_processor_does(
    photos: dict[str, bytes], tmp_path: Path
) -> None:
    processor = hf_processor({**CONVNEXT_CONFIG, "size": {"shortest_edge": 384}}, tmp_path, "pil")
    recipe = bmf.read_preprocess_config(tmp_path / "preprocessor_config.json")
    assert recipe["resize"] == (384, 384)
    got = bmf.preprocess(list(photos.values()), **recipe)
    np.testing.assert_array_equal(got, hf_tensors(processor, photos))


@pytest.mark.parametrize("backend", ["pil", None], ids=["pil", "torchvision-default"])
def test_convnext_config_gives_the_processor_s_top1(
    photos: dict[str, bytes], tmp_path: Path, backend: str | None, record_property: Any
) -> None:
    """The pretrained demo model under a ConvNeXt processor's recipe (with the demo model's own
    normalization): the same top-1 on every photo from transformers' tensors and from ours."""
    config = {**CONVNEXT_CONFIG, "image_mean": list(DEMO_MEAN), "image_std": list(DEMO_STD)}
    processor = hf_processor(config, tmp_path, backend)
    recipe = bmf.read_preprocess_config(tmp_path / "preprocessor_config.json")
    ours = bmf.ImageClassifier(DEMO_MODEL, **recipe).logits(list(photos.values()))
    model = torch.jit.load(str(DEMO_MODEL)).eval()
    with torch.no_grad():
        theirs = model(torch.from_numpy(hf_tensors(processor, photos))).numpy()
    probabilities = torch.softmax(torch.from_numpy(ours), 1) - torch.softmax(
        torch.from_numpy(theirs), 1
    )
    record_property("max_softmax_difference", float(probabilities.abs().max()))
    assert ours.argmax(1).tolist() == theirs.argmax(1).tolist()
    assert float(probabilities.abs().max()) < 0.09


def test_vit_config_and_the_torchvision_backend_differ_by_a_level_at_most(
    photos: dict[str, bytes], tmp_path: Path, record_property: Any
) -> None:
    processor = hf_processor(VIT_CONFIG, tmp_path, None)
    assert type(processor).__name__ == "ViTImageProcessor"  # the torchvision backend
    recipe = bmf.read_preprocess_config(tmp_path / "preprocessor_config.json")
    got = bmf.preprocess(list(photos.values()), **recipe)
    diff = levels(got - hf_tensors(processor, photos), std=recipe["std"])
    record_property("max_levels", float(diff.max()))
    # Its antialiased tensor resize rounds some pixels to the next 8-bit level.
    assert diff.max() <= 1.001, diff.max()
    model = torch.jit.load(str(DEMO_MODEL)).eval()
    ours = bmf.ImageClassifier(DEMO_MODEL, **recipe).logits(list(photos.values()))
    with torch.no_grad():
        theirs = model(torch.from_numpy(hf_tensors(processor, photos))).numpy()
    assert ours.argmax(1).tolist() == theirs.argmax(1).tolist()


@pytest.mark.parametrize(
    "changes",
    [
        {"do_rescale": False, "image_mean": [127.5, 127.5, 127.5], "image_std": [64.0, 64, 64]},
        {"do_normalize": False},
        {"rescale_factor": 1 / 127.5, "image_mean": [1.0, 1.0, 1.0], "image_std": [1.0, 1, 1]},
    ],
    ids=["no-rescale", "no-normalize", "rescale-to-0-2"],
)
def test_rescale_and_normalize_variants_are_honoured(
    photos: dict[str, bytes], tmp_path: Path, changes: dict[str, Any]
) -> None:
    processor = hf_processor({**VIT_CONFIG, **changes}, tmp_path, "pil")
    recipe = bmf.read_preprocess_config(tmp_path / "preprocessor_config.json")
    some = {name: photos[name] for name in ("china.jpg", "chelsea.png")}
    expected = hf_tensors(processor, some)
    got = bmf.preprocess(list(some.values()), **recipe)
    # The same arithmetic in another order: float rounding apart, the same values.
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * max(scale, 1.0))


BAD_CONFIGS = [
    ({"pretrained_cfg": {"crop_mode": "border"}}, "crop_mode"),
    ({"pretrained_cfg": {"crop_mode": "squash", "crop_pct": 0.9}}, "crop_pct"),
    ({"pretrained_cfg": {"input_size": [3, 224, 192]}}, "input_size"),
    ({"pretrained_cfg": {"input_size": [1, 224, 224]}}, "input_size"),
    ({"pretrained_cfg": {"mean": [0.5], "std": [0.5]}}, "mean"),
    ({"pretrained_cfg": {"std": [0.5, 0.5, 0.5, 0.5]}}, "std"),
    ({"pretrained_cfg": {"interpolation": "random"}}, "interpolation"),
    ({"pretrained_cfg": {"crop_pct": 1.5}}, "crop_pct"),
    ({**VIT_CONFIG, "image_mean": [0.5, 0.5]}, "image_mean"),
    ({**VIT_CONFIG, "resample": 7}, "resample"),
    ({**VIT_CONFIG, "do_resize": False}, "do_resize"),
    ({**VIT_CONFIG, "do_pad": True}, "do_pad"),
    ({**VIT_CONFIG, "size": {"shortest_edge": 224, "longest_edge": 1333}}, "size"),
    ({**VIT_CONFIG, "image_processor_type": "CLIPImageProcessor", "size": 224}, "size"),
    ({**VIT_CONFIG, "size": {"shortest_edge": 256}}, "do_center_crop"),
    (
        {**VIT_CONFIG, "do_center_crop": True, "crop_size": {"height": 200, "width": 200}},
        "crop_size",
    ),
    (
        {
            **VIT_CONFIG,
            "size": {"shortest_edge": 256},
            "do_center_crop": True,
            "crop_size": {"height": 224, "width": 192},
        },
        "crop_size",
    ),
    ({**VIT_CONFIG, "crop_pct": 0.9}, "crop_pct"),
    ({k: v for k, v in VIT_CONFIG.items() if k != "resample"}, "resample"),
    ({k: v for k, v in CONVNEXT_CONFIG.items() if k != "crop_pct"}, "crop_pct"),
    ({**VIT_CONFIG, "rescale_factor": 0}, "rescale_factor"),
]


@pytest.mark.parametrize(("config", "field"), BAD_CONFIGS)
def test_what_cannot_be_honoured_is_an_error_naming_the_field(
    tmp_path: Path, config: dict[str, Any], field: str
) -> None:
    path = write_json(tmp_path / "preprocessor_config.json", config)
    with pytest.raises(ValueError) as raised:
        bmf.read_preprocess_config(path)
    message = str(raised.value)
    assert f"{field} " in message and str(path) in message, message


class ElsewhereFileSystem(LocalFileSystem):
    """A Beam filesystem of its own scheme (elsewhere://PATH reads the local PATH): a URI that
    only Beam's FileSystems can open, as s3:// and gs:// are."""

    @classmethod
    def scheme(cls) -> str:
        return "elsewhere"

    def _path_open(self, path: str, *args: Any) -> Any:
        return super()._path_open(path.removeprefix("elsewhere://"), *args)


def test_a_uri_is_read_through_beam_s_filesystems(tmp_path: Path) -> None:
    cfg = {"crop_pct": 0.95, "interpolation": "bilinear"}
    path = write_json(tmp_path / "config.json", {"pretrained_cfg": cfg})
    assert bmf.read_preprocess_config(f"elsewhere://{path}") == bmf.read_preprocess_config(cfg)
    assert bmf.read_preprocess_config(f"file://{path}") == bmf.read_preprocess_config(cfg)


@pytest.mark.parametrize(
    ("text", "phrase"),
    [("{not json", "is not JSON"), ("[1, 2]", "not an object"), ('{"hello": 1}', "neither")],
)
def test_files_that_are_not_configs_say_so(tmp_path: Path, text: str, phrase: str) -> None:
    path = tmp_path / "config.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=phrase):
        bmf.read_preprocess_config(path)
    with pytest.raises(FileNotFoundError):
        bmf.read_preprocess_config(tmp_path / "missing.json")


def tiny_logits(data: bytes, **recipe: Any) -> np.ndarray:
    model = torch.jit.load(str(TINY_MODEL)).eval()
    with torch.no_grad():
        return model(reference(data, **recipe).unsqueeze(0))[0].numpy()


def test_the_classifier_takes_a_config_and_its_arguments_win(
    photos: dict[str, bytes], tmp_path: Path
) -> None:
    config = write_json(
        tmp_path / "config.json",
        {"pretrained_cfg": {"crop_pct": 0.95, "interpolation": "bicubic", "mean": [0.5] * 3}},
    )
    data = photos["china.jpg"]
    from_file = bmf.ImageClassifier(TINY_MODEL, preprocess_config=config, optimize=False)
    (got,) = from_file.logits([data])
    expected = tiny_logits(
        data, resize=math.floor(224 / 0.95), interpolation="bicubic", mean=(0.5,) * 3
    )
    np.testing.assert_allclose(got, expected, atol=1e-4)
    # A mapping does as well as a file; what is given explicitly wins, the rest is the file's.
    overridden = bmf.ImageClassifier(
        TINY_MODEL,
        preprocess_config=json.loads(config.read_text()),
        resize=256,
        interpolation="bilinear",
        optimize=False,
    )
    (got,) = overridden.logits([data])
    expected = tiny_logits(data, resize=256, interpolation="bilinear", mean=(0.5,) * 3)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    with pytest.raises(ValueError, match="crop_mode"):
        bmf.ImageClassifier(
            TINY_MODEL, preprocess_config={"pretrained_cfg": {"crop_mode": "border"}}
        )
    with pytest.raises(FileNotFoundError):
        bmf.ImageClassifier(TINY_MODEL, preprocess_config=tmp_path / "missing.json")


def test_the_handler_reads_the_file_once_and_its_arguments_win(
    photos: dict[str, bytes], tmp_path: Path
) -> None:
    config = write_json(
        tmp_path / "config.json",
        {"pretrained_cfg": {"crop_pct": 0.95, "interpolation": "bicubic", "mean": [0.5] * 3}},
    )
    from_file = ImageClassifierHandler(str(TINY_MODEL), preprocess_config=str(config))
    overridden = ImageClassifierHandler(
        str(TINY_MODEL), preprocess_config=str(config), interpolation="bilinear", resize=256
    )
    config.unlink()  # the workers never read it
    data = photos["china.jpg"]
    imagenet_std = (0.229, 0.224, 0.225)
    (got,) = pickle.loads(pickle.dumps(from_file)).load_model().logits([data])
    expected = tiny_logits(
        data, resize=math.floor(224 / 0.95), interpolation="bicubic", mean=(0.5,) * 3
    )
    np.testing.assert_allclose(got, expected, atol=1e-4)
    (got,) = pickle.loads(pickle.dumps(overridden)).load_model().logits([data])
    expected = tiny_logits(data, resize=256, interpolation="bilinear", mean=(0.5,) * 3)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert overridden._std == imagenet_std


def test_the_cli_reads_the_file_and_its_flags_win(photos: dict[str, bytes], tmp_path: Path) -> None:
    names = ["chelsea.png", "china.jpg"]
    config = write_json(
        tmp_path / "config.json",
        {"pretrained_cfg": {"crop_pct": 0.95, "interpolation": "bicubic", "mean": [0.1] * 3}},
    )
    out = tmp_path / "out" / "results"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "beam_ml_flink",
            f"--input={IMAGES}/ch*",
            f"--output={out}",
            f"--model_path={DEMO_MODEL}",
            f"--preprocess_config={config}",
            "--mean=" + ",".join(map(str, DEMO_MEAN)),
            "--std=" + ",".join(map(str, DEMO_STD)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    records = [
        json.loads(line)
        for f in sorted(out.parent.glob("results-*.jsonl"))
        for line in f.read_text().splitlines()
    ]
    got = {Path(r["image"]).name: r["top_k"][0] for r in records}
    assert sorted(got) == names
    model = torch.jit.load(str(DEMO_MODEL)).eval()
    for name in names:
        # The file's resize rule and filter, the flags' normalization.
        batch = reference(
            photos[name],
            resize=math.floor(224 / 0.95),
            interpolation="bicubic",
            mean=DEMO_MEAN,
            std=DEMO_STD,
        ).unsqueeze(0)
        with torch.no_grad():
            probabilities = torch.softmax(model(batch), 1)[0]
        assert got[name]["index"] == int(probabilities.argmax())
        assert got[name]["score"] == pytest.approx(float(probabilities.max()), abs=5e-4)


def test_the_cli_reads_the_recipe_beside_the_model(
    photos: dict[str, bytes], tmp_path: Path
) -> None:
    """A model with NAME.preprocess.json beside it (as `python -m beam_ml_flink.compile` writes
    it) is preprocessed by that recipe when no preprocessing flag is given: bicubic, timm's
    crop_pct 0.95, mean = std = 0.5 here, which the answers show against torch's."""
    model_path = tmp_path / "demo.pt"
    model_path.write_bytes(DEMO_MODEL.read_bytes())
    write_json(
        tmp_path / "demo.preprocess.json",
        {"crop_pct": 0.95, "interpolation": "bicubic", "mean": DEMO_MEAN, "std": DEMO_STD},
    )
    out = tmp_path / "out" / "results"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "beam_ml_flink",
            f"--input={IMAGES}/ch*",
            f"--output={out}",
            f"--model_path={model_path}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"the recipe beside the model: {tmp_path / 'demo.preprocess.json'}" in run.stderr
    records = [
        json.loads(line)
        for f in sorted(out.parent.glob("results-*.jsonl"))
        for line in f.read_text().splitlines()
    ]
    got = {Path(r["image"]).name: r["top_k"][0] for r in records}
    assert sorted(got) == ["chelsea.png", "china.jpg"]
    model = torch.jit.load(str(DEMO_MODEL)).eval()
    for name, top1 in got.items():
        batch = reference(
            photos[name],
            resize=math.floor(224 / 0.95),
            interpolation="bicubic",
            mean=DEMO_MEAN,
            std=DEMO_STD,
        ).unsqueeze(0)
        with torch.no_grad():
            probabilities = torch.softmax(model(batch), 1)[0]
        assert top1["index"] == int(probabilities.argmax())
        assert top1["score"] == pytest.approx(float(probabilities.max()), abs=5e-4)
