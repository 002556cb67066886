"""Shared fixtures: the generated demo data, real photos, and the PIL + torchvision reference."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from make_hostile import Case, make_corpus
from PIL import Image, ImageOps
from torchvision import transforms

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"
MODELS = DATA / "models"
IMAGES = DATA / "images"
TINY_MODEL = MODELS / "tiny.pt"
DEMO_MODEL = MODELS / "efficientnet_lite0.pt"
IMAGENET_LABELS = MODELS / "imagenet_labels.txt"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The pretrained EfficientNet-Lite0 expects mean = std = 0.5.
DEMO_MEAN = DEMO_STD = (0.5, 0.5, 0.5)


def pytest_configure(config: pytest.Config) -> None:
    missing = [p for p in (TINY_MODEL, DEMO_MODEL, IMAGENET_LABELS, IMAGES) if not p.exists()]
    if missing:
        raise pytest.UsageError(f"missing demo data {missing}; run `make init` first")


def reference(
    data: bytes,
    *,
    resize: int | tuple[int, int] = 256,
    crop: int = 224,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    exif_transpose: bool = False,
    interpolation: str = "bilinear",
) -> torch.Tensor:
    """The usual PyTorch recipe: PIL decode, Resize (with torchvision's ``InterpolationMode``
    of that name), CenterCrop, ToTensor, Normalize."""
    image = Image.open(io.BytesIO(data))
    if exif_transpose:
        image = ImageOps.exif_transpose(image)
    steps = [transforms.Resize(resize, interpolation=transforms.InterpolationMode(interpolation))]
    if isinstance(resize, int):
        steps.append(transforms.CenterCrop(crop))
    steps += [transforms.ToTensor(), transforms.Normalize(mean, std)]
    return transforms.Compose(steps)(image.convert("RGB"))


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def levels(difference: np.ndarray, std=IMAGENET_STD) -> np.ndarray:
    """A difference of normalized values expressed in 8-bit pixel levels, per channel."""
    return np.abs(difference) * np.asarray(std, dtype=np.float32).reshape(3, 1, 1) * 255.0


@pytest.fixture(scope="session")
def photos() -> dict[str, bytes]:
    """The real photographs under data/images/, by file name."""
    return {p.name: p.read_bytes() for p in sorted(IMAGES.iterdir())}


@pytest.fixture(scope="session")
def photo() -> Image.Image:
    """One real RGB photograph (scikit-learn's china.jpg, 640x427)."""
    return Image.open(IMAGES / "china.jpg").convert("RGB")


def torch_top1(images: dict[str, bytes], model_path: Path | str, **recipe) -> dict[str, int]:
    """The top-1 class of each image by the PIL + torchvision recipe and torch's own forward."""
    model = torch.jit.load(str(model_path)).eval()
    batch = torch.stack([reference(data, **recipe) for data in images.values()])
    with torch.no_grad():
        indices = model(batch).argmax(1).tolist()
    return dict(zip(images, indices, strict=True))


@pytest.fixture(scope="session")
def demo_top1(photos: dict[str, bytes]) -> dict[str, int]:
    """The demo model's reference top-1 class of each photo, by file name."""
    return torch_top1(photos, DEMO_MODEL, mean=DEMO_MEAN, std=DEMO_STD)


@pytest.fixture(scope="session")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> list[Case]:
    """The hostile and odd inputs of data/make_hostile.py, with what must become of each."""
    return make_corpus(tmp_path_factory.mktemp("hostile"))


@pytest.fixture(scope="session")
def bad_files(hostile: list[Case]) -> dict[Path, str]:
    """Inputs that cannot be classified, each with a phrase its failure reason must contain."""
    return {case.path: case.phrase for case in hostile if case.phrase is not None}


class _Flipped(torch.nn.Module):
    """A model whose answers differ from the demo model's: its logits in reverse class order."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).flip(1)


@pytest.fixture(scope="session")
def flipped_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("flipped") / "flipped.pt"
    torch.jit.save(torch.jit.script(_Flipped(torch.jit.load(str(DEMO_MODEL)))), str(path))
    return path


@pytest.fixture(scope="session")
def features_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pretrained EfficientNet-Lite0 with its classifier taken off: its 1280 pooled
    features, traced to TorchScript."""
    from make_demo import efficientnet_lite0, trace

    model = efficientnet_lite0()
    model._fc = torch.nn.Identity()
    path = tmp_path_factory.mktemp("features") / "efficientnet_lite0_features.pt"
    trace(model, path)
    return path
