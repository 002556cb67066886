"""Shared fixtures: the generated demo data, real photos, and the PIL + torchvision reference."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
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
) -> torch.Tensor:
    """The usual PyTorch recipe: PIL decode, Resize, CenterCrop, ToTensor, Normalize."""
    image = Image.open(io.BytesIO(data))
    if exif_transpose:
        image = ImageOps.exif_transpose(image)
    steps = [transforms.Resize(resize)]
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
