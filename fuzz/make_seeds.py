"""Seeds for the cargo fuzz target: small images of every supported format and mode, each behind
the byte that picks the recipe (see fuzz_targets/decode_preprocess.rs)."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image

FORMATS = {
    "JPEG": ["RGB", "L", "CMYK"],
    "PNG": ["RGB", "L", "RGBA", "P", "I;16"],
    "GIF": ["P"],
    "BMP": ["RGB", "L"],
    "TIFF": ["RGB", "L"],
    "WEBP": ["RGB", "RGBA"],
}


def main(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (24, 20, 3), dtype=np.uint8), "RGB")
    for fmt, modes in FORMATS.items():
        for mode in modes:
            image = photo.quantize(16) if mode == "P" else photo.convert(mode)
            out = io.BytesIO()
            image.save(out, fmt)
            for choice in range(4):
                name = f"{fmt.lower()}-{mode.replace(';', '')}-{choice}"
                (folder / name).write_bytes(bytes([choice]) + out.getvalue())


if __name__ == "__main__":
    main(Path(sys.argv[1]))
