"""A corpus of hostile and odd inputs, and what must become of each.

Every case either classifies as the PIL + torchvision recipe does on its `reference` bytes, or
fails with a reason that contains `phrase`. Written from the real sample photos; run directly it
writes the corpus into a folder (default build/hostile) and prints one line per case.
"""

from __future__ import annotations

import argparse
import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
PHOTO = ROOT / "data" / "images" / "china.jpg"


@dataclass(frozen=True)
class Case:
    """One input of the corpus."""

    path: Path
    what: str
    # A failure: a phrase its reason contains. A classification: phrase is None.
    phrase: str | None = None
    # The bytes the recipe is run on for the expected answer (default: the file itself).
    reference: bytes | None = None
    # The expected answer applies the EXIF orientation first (PIL.ImageOps.exif_transpose).
    exif_transpose: bool = False

    @property
    def fails(self) -> bool:
        return self.phrase is not None


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(width: int, height: int, bit_depth: int, color_type: int, raw_rows: bytes) -> bytes:
    """A PNG written by hand: PIL cannot write 16-bit RGB, nor a header that lies."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(raw_rows))
        + _png_chunk(b"IEND", b"")
    )


def _png16(pixels: np.ndarray) -> bytes:
    """A 16-bit PNG of uint16 pixels, [H, W] (gray) or [H, W, 3] (RGB)."""
    color_type = 2 if pixels.ndim == 3 else 0
    rows = pixels.astype(">u2").reshape(pixels.shape[0], -1)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)
    return _png(pixels.shape[1], pixels.shape[0], 16, color_type, raw)


def make_corpus(folder: Path) -> list[Case]:
    """Writes the corpus into `folder` (a directory and a missing path included)."""
    folder.mkdir(parents=True, exist_ok=True)
    photo = Image.open(PHOTO).convert("RGB")
    jpeg = PHOTO.read_bytes()
    png = _encode(photo, "PNG")
    rng = np.random.default_rng(0)
    cases: list[tuple[bytes | None, Case]] = []

    def add(name: str, data: bytes | None, what: str, **expect) -> None:
        cases.append((data, Case(folder / name, what, **expect)))

    # Bad input: a failure each, with a reason.
    add("zero-bytes.jpg", b"", "zero bytes", phrase="the image is empty")
    add("random.jpg", rng.bytes(4096), "random bytes", phrase="unrecognised image format")
    text = b"a text file, not an image\n"
    add("notes.txt", text, "a text file", phrase="unrecognised image format")
    add(
        "truncated.jpg",
        jpeg[: len(jpeg) // 3],
        "a JPEG cut after a third",
        phrase="ends before the image is complete",
    )
    add("truncated.png", png[: len(png) // 2], "a PNG cut in half", phrase="truncated or corrupt")
    bomb_rows = zlib.compress(b"\x00" * 64)  # a few real bytes behind a lying header
    bomb = (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0))
        + _png_chunk(b"IDAT", bomb_rows)
        + _png_chunk(b"IEND", b"")
    )
    add("bomb.png", bomb, "a PNG header claiming 100000x100000", phrase="above the limit of")
    add("a-folder.jpg", None, "a directory", phrase="is a directory")
    add("missing.jpg", None, "a path that does not exist", phrase="no such file")

    # Odd but valid input: classified as the recipe classifies it.
    add("png-named.jpg", png, "a PNG under a .jpg name")
    add("cmyk.jpg", _encode(photo.convert("CMYK"), "JPEG", quality=95), "a CMYK JPEG")
    add("gray.jpg", _encode(photo.convert("L"), "JPEG", quality=95), "a grayscale JPEG")
    progressive = _encode(photo, "JPEG", quality=90, progressive=True)
    add("progressive.jpg", progressive, "a progressive JPEG")
    add("lossless.webp", _encode(photo, "WEBP", lossless=True), "a lossless WebP")
    add("photo.bmp", _encode(photo, "BMP"), "a BMP")
    add("photo.tiff", _encode(photo, "TIFF"), "a TIFF")
    pixels = np.asarray(photo).astype(np.uint16) * 257
    add("rgb16.png", _png16(pixels), "a 16-bit RGB PNG", reference=png)
    gray = photo.convert("L")
    add(
        "gray16.png",
        _png16(np.asarray(gray).astype(np.uint16) * 257),
        "a 16-bit grayscale PNG",
        reference=_encode(gray, "PNG"),
    )
    palette = photo.quantize(64)
    add(
        "palette-transparent.png",
        _encode(palette, "PNG", transparency=0),
        "a palette PNG with a transparent color",
    )
    frames = [photo.quantize(256), photo.rotate(90).quantize(256), photo.rotate(180).quantize(256)]
    add(
        "animated.gif",
        _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0),
        "an animated GIF (its first frame is classified)",
    )
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 clockwise to display
    add(
        "exif-rotated.jpg",
        _encode(photo.rotate(90, expand=True), "JPEG", quality=95, exif=exif),
        "a JPEG stored sideways with an EXIF orientation",
        exif_transpose=True,
    )
    add("one-pixel.png", _encode(photo.resize((1, 1)), "PNG"), "a 1x1 image")
    add("strip.png", _encode(photo.resize((10_000, 10)), "PNG"), "a 10000x10 image")

    for data, case in cases:
        if case.what == "a directory":
            case.path.mkdir(exist_ok=True)
        elif data is not None:
            case.path.write_bytes(data)
    return [case for _, case in cases]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", type=Path, default=ROOT / "build" / "hostile")
    args = parser.parse_args()
    for case in make_corpus(args.folder):
        outcome = f"fails: {case.phrase}" if case.fails else "classified"
        print(f"{case.path.name:26} {case.what:52} {outcome}")


if __name__ == "__main__":
    main()
