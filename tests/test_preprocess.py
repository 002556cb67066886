"""bmf.preprocess against the PIL + torchvision recipe, on real photos in every format and mode,
with every resize filter."""

from __future__ import annotations

import math
import os
import pickle

import numpy as np
import pytest
from PIL import Image

import beam_ml_flink as bmf
from conftest import DEMO_MEAN, DEMO_MODEL, DEMO_STD, IMAGES, encode, levels, reference

PHOTO_NAMES = sorted(p.name for p in IMAGES.iterdir())
# Pillow's filters by torchvision's InterpolationMode names; bilinear, the default, is what the
# tests without an interpolation check.
FILTERS = ["nearest", "box", "bilinear", "hamming", "bicubic", "lanczos"]
OTHER_FILTERS = [f for f in FILTERS if f != "bilinear"]


def ours(data: bytes, **options) -> np.ndarray:
    (out,) = bmf.preprocess([data], **options)
    return out


def level_diff(data: bytes, **options) -> np.ndarray:
    ref = reference(data, **{k: v for k, v in options.items() if k != "draft"}).numpy()
    got = ours(data, **options)
    assert got.shape == ref.shape and got.dtype == np.float32
    return levels(got - ref)


@pytest.mark.parametrize("name", PHOTO_NAMES)
@pytest.mark.parametrize("resize", [256, (224, 224)], ids=["resize256-crop224", "resize224x224"])
def test_photos_match_the_recipe(name: str, resize, record_property) -> None:
    data = (IMAGES / name).read_bytes()
    diff = level_diff(data, resize=resize, draft=False)
    record_property("max_levels", float(diff.max()))
    record_property("mean_levels", float(diff.mean()))
    # The same decoder (libjpeg-turbo for JPEG) and Pillow's own resampling arithmetic: the
    # recipe's tensor exactly.
    assert diff.max() == 0, diff.max()


@pytest.mark.parametrize("interpolation", OTHER_FILTERS)
@pytest.mark.parametrize("name", PHOTO_NAMES)
@pytest.mark.parametrize("resize", [256, (224, 224)], ids=["resize256-crop224", "resize224x224"])
def test_photos_match_the_recipe_with_every_filter(name: str, resize, interpolation: str) -> None:
    data = (IMAGES / name).read_bytes()
    diff = level_diff(data, resize=resize, interpolation=interpolation, draft=False)
    assert diff.max() == 0, diff.max()


@pytest.mark.parametrize("interpolation", FILTERS)
@pytest.mark.parametrize(
    ("size", "resize"),
    [((120, 80), 256), ((57, 61), (300, 500)), ((640, 427), (427, 641))],
    ids=["up-resize256", "up-exact", "up-one-column"],
)
def test_upscaling_matches_the_recipe_with_every_filter(
    photo: Image.Image, size, resize, interpolation: str
) -> None:
    # Upscaling: the kernels at their own width, no widening; and a one-column stretch.
    data = encode(photo.resize(size), "PNG")
    assert level_diff(data, resize=resize, interpolation=interpolation, draft=False).max() == 0


def test_the_filters_are_pillow_s_by_torchvision_s_names() -> None:
    assert bmf._core.INTERPOLATIONS == tuple(FILTERS)
    from torchvision.transforms import InterpolationMode

    assert all(InterpolationMode(name) for name in FILTERS)


def test_interpolation_is_read_in_any_case(photos: dict[str, bytes]) -> None:
    data = photos["china.jpg"]
    np.testing.assert_array_equal(
        ours(data, interpolation="BICUBIC"), ours(data, interpolation="bicubic")
    )
    # The default is bilinear, and the filters do differ on a photo.
    results = [ours(data, interpolation=f) for f in FILTERS]
    np.testing.assert_array_equal(ours(data), results[FILTERS.index("bilinear")])
    for i, a in enumerate(results):
        for b in results[i + 1 :]:
            assert not np.array_equal(a, b)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize(
    ("crop", "crop_pct"), [(224, 0.875), (224, 0.9), (224, 0.95), (224, 1.0), (288, 0.95)]
)
def test_crop_pct_is_timm_s_recipe(
    photos: dict[str, bytes], crop: int, crop_pct: float, interpolation: str
) -> None:
    # timm's transforms_factory: Resize(math.floor(img_size / crop_pct), interpolation) and
    # CenterCrop(img_size).
    scale_size = math.floor(crop / crop_pct)
    for name in ("china.jpg", "chelsea.png"):
        data = photos[name]
        expected = reference(data, resize=scale_size, crop=crop, interpolation=interpolation)
        got = ours(data, crop=crop, crop_pct=crop_pct, interpolation=interpolation)
        np.testing.assert_array_equal(got, expected.numpy())


def test_the_cli_s_interpolation_and_crop_pct_reach_the_model(
    photos: dict[str, bytes], tmp_path
) -> None:
    """The handler the CLI builds, pickled as Beam ships it, feeds the model the bicubic,
    crop_pct recipe's tensor: its logits are the model's own on the reference tensor, and not
    those of the bilinear recipe."""
    import torch

    from beam_ml_flink.__main__ import handler_for, parse

    recipe = ["--mean=" + ",".join(map(str, DEMO_MEAN)), "--std=" + ",".join(map(str, DEMO_STD))]
    common = [f"--input={IMAGES}", f"--output={tmp_path / 'out'}", f"--model_path={DEMO_MODEL}"]
    args, _ = parse([*common, *recipe, "--interpolation", "bicubic", "--crop_pct", "0.9"])
    handler = pickle.loads(pickle.dumps(handler_for(args)))
    data = photos["china.jpg"]
    (got,) = handler.load_model().logits([data])

    model = torch.jit.load(str(DEMO_MODEL)).eval()

    def torch_logits(**recipe) -> np.ndarray:
        batch = reference(data, mean=DEMO_MEAN, std=DEMO_STD, **recipe).unsqueeze(0)
        with torch.no_grad():
            return model(batch)[0].numpy()

    bicubic = torch_logits(resize=math.floor(224 / 0.9), interpolation="bicubic")
    bilinear = torch_logits(resize=math.floor(224 / 0.9))
    # The optimized model's float rounding differs from eager's by far less than the recipes do.
    np.testing.assert_allclose(got, bicubic, atol=2e-3)
    assert np.abs(got - bilinear).max() > 10 * np.abs(got - bicubic).max()
    args, _ = parse(common)
    assert handler_for(args)._interpolation == "bilinear"


def test_batch_is_the_stack_of_single_images(photos: dict[str, bytes]) -> None:
    batch = bmf.preprocess(list(photos.values()))
    assert batch.shape == (len(photos), 3, 224, 224)
    assert batch.flags["C_CONTIGUOUS"]
    for i, data in enumerate(photos.values()):
        np.testing.assert_array_equal(batch[i], ours(data))


def test_custom_size_mean_and_std(photo: Image.Image) -> None:
    data = encode(photo, "PNG")
    options = dict(resize=160, crop=128, mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.4))
    got = ours(data, **options)
    ref = reference(data, **options).numpy()
    assert got.shape == (3, 128, 128)
    np.testing.assert_array_equal(got, ref)


def _variants(photo: Image.Image) -> dict[str, bytes]:
    """Encoded forms of one photo."""
    small = photo.resize((320, 214))
    rgba = small.copy()
    rgba.putalpha(200)
    palette = small.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    palette.info["transparency"] = 3
    gray = small.convert("L")
    return {
        "webp-lossless": encode(small, "WEBP", lossless=True),
        "webp-lossy": encode(small, "WEBP", quality=90),
        "gif": encode(palette, "GIF"),
        "bmp": encode(small, "BMP"),
        "tiff": encode(small, "TIFF"),
        "png-rgba": encode(rgba, "PNG"),
        "png-palette-transparency": encode(palette, "PNG"),
        "png-gray": encode(gray, "PNG"),
        "png-gray-alpha": encode(gray.convert("LA"), "PNG"),
        "jpeg-gray": encode(gray, "JPEG", quality=95),
        "jpeg-progressive": encode(small, "JPEG", quality=95, progressive=True),
        "jpeg-cmyk": encode(small.convert("CMYK"), "JPEG", quality=95),
        "tiny-1x1": encode(Image.new("RGB", (1, 1), (200, 30, 90)), "PNG"),
        "thin-10000x10": encode(Image.new("RGB", (10000, 10), (10, 250, 128)), "PNG"),
    }


@pytest.mark.parametrize("interpolation", FILTERS)
@pytest.mark.parametrize(
    "variant",
    [
        "webp-lossless", "webp-lossy", "gif", "bmp", "tiff", "png-rgba",
        "png-palette-transparency", "png-gray", "png-gray-alpha", "jpeg-gray",
        "jpeg-progressive", "jpeg-cmyk", "tiny-1x1", "thin-10000x10",
    ],
)  # fmt: skip
def test_formats_and_modes_match_the_recipe(
    photo: Image.Image, variant: str, interpolation: str
) -> None:
    # Lossy formats too: WebP, JPEG and the resampling all compute what Pillow computes.
    data = _variants(photo)[variant]
    assert level_diff(data, interpolation=interpolation, draft=False).max() == 0


@pytest.mark.parametrize("interpolation", FILTERS)
@pytest.mark.parametrize(
    ("size", "resize"),
    [((2, 416), (379, 186)), ((3, 700), 256), ((5, 501), (224, 224)), ((2, 300), (320, 9))],
    ids=["tall-shrinking", "tall-growing-resize256", "just-over-100x-shrinking", "tall-growing"],
)
def test_very_tall_images_resize_in_pillow_s_order(
    photo: Image.Image, size, resize, interpolation: str
) -> None:
    # Pillow shrinks an image over 100 times taller than wide in height first: other rounding.
    data = encode(photo.resize(size), "PNG")
    options = dict(resize=resize, interpolation=interpolation)
    np.testing.assert_array_equal(ours(data, **options), reference(data, **options).numpy())


def _png16(rgb: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG (colour type 2, bit depth 16), which PIL cannot write."""
    import struct
    import zlib

    height, width, _ = rgb.shape
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in rgb)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def test_sixteen_bit_png_becomes_eight_bit(photo: Image.Image) -> None:
    rgb8 = np.asarray(photo.resize((300, 200)))
    wide = _png16(rgb8.astype(np.uint16) * 257)
    # v * 257 in 16 bits is v in 8 bits, whichever way a decoder narrows it.
    np.testing.assert_array_equal(ours(wide), ours(encode(Image.fromarray(rgb8), "PNG")))
    np.testing.assert_array_equal(ours(wide), reference(wide).numpy())


@pytest.mark.parametrize("orientation", [2, 3, 4, 5, 6, 7, 8])
def test_exif_orientation_is_applied(photo: Image.Image, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(photo.resize((300, 200)), "PNG", exif=exif)
    ref = reference(data, exif_transpose=True).numpy()
    np.testing.assert_array_equal(ours(data), ref)


def test_exif_orientation_in_jpeg(photo: Image.Image) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(photo, "JPEG", quality=95, exif=exif)
    ref = reference(data, exif_transpose=True).numpy()
    np.testing.assert_array_equal(ours(data), ref)
    assert levels(ours(data, draft=True) - ref).mean() < 1.0


def test_draft_decoding_of_camera_size_jpeg(photo: Image.Image, record_property) -> None:
    data = encode(photo.resize((4032, 3024), Image.Resampling.BICUBIC), "JPEG", quality=90)
    full = level_diff(data, draft=False)
    reduced = level_diff(data, draft=True)
    record_property("full_mean_levels", float(full.mean()))
    record_property("draft_mean_levels", float(reduced.mean()))
    assert full.max() == 0
    # A quarter-scale decode (1008x756) before the same antialiased resize stays close.
    assert reduced.mean() < 2.0 and reduced.max() < 40


def test_bytes_like_inputs_agree(photos: dict[str, bytes]) -> None:
    data = photos["chelsea.png"]
    expected = ours(data)
    for form in (bytearray(data), memoryview(data)):
        np.testing.assert_array_equal(ours(form), expected)


BAD_INPUTS = {
    "empty": (b"", "empty"),
    "random": (os.urandom(4096), "unsupported or unrecognised image format"),
    "text": (b"this is not an image\n", "first bytes: 74 68 69 73"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_names_its_index(photos: dict[str, bytes], case: str) -> None:
    data, words = BAD_INPUTS[case]
    with pytest.raises(bmf.DecodeError, match=rf"^image 1: .*{words}"):
        bmf.preprocess([photos["chelsea.png"], data])


@pytest.mark.parametrize("name", ["china.jpg", "coffee.png"])
def test_truncated_images_are_decode_errors(photos: dict[str, bytes], name: str) -> None:
    data = photos[name]
    with pytest.raises(bmf.DecodeError, match="truncated or corrupt"):
        bmf.preprocess([data[: len(data) // 3]])


def test_header_claiming_huge_size_is_refused_before_decoding() -> None:
    # A well-formed PNG announcing 100000x100000 pixels, with a few bytes of image data.
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    data = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 3001))
        + chunk(b"IEND", b"")
    )
    with pytest.raises(bmf.DecodeError, match=r"100000x100000 .*above the limit of 178956970"):
        bmf.preprocess([data])
    with pytest.raises(bmf.DecodeError, match="above the limit of 1000"):
        bmf.preprocess([encode(Image.new("RGB", (50, 50)), "PNG")], max_pixels=1000)


def test_invalid_options_are_value_errors(photos: dict[str, bytes]) -> None:
    data = [photos["chelsea.png"]]
    with pytest.raises(ValueError, match=r"crop must be between 1 and resize \(200\), got 224"):
        bmf.preprocess(data, resize=200)
    with pytest.raises(ValueError, match="std values must be finite and non-zero"):
        bmf.preprocess(data, std=(0.2, 0.0, 0.2))
    choices = "'nearest', 'box', 'bilinear', 'hamming', 'bicubic' or 'lanczos'"
    with pytest.raises(ValueError, match=f"^interpolation must be {choices}, got 'cubic'$"):
        bmf.preprocess(data, interpolation="cubic")
    for crop_pct in (0.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="^crop_pct must be above 0 and at most 1"):
            bmf.preprocess(data, crop_pct=crop_pct)
    with pytest.raises(ValueError, match="^give resize or crop_pct, not both"):
        bmf.preprocess(data, resize=256, crop_pct=0.875)
    with pytest.raises(TypeError, match="not a single bytes"):
        bmf.preprocess(photos["chelsea.png"])
    with pytest.raises(TypeError, match=r"images\[0\] must be bytes"):
        bmf.preprocess(["a string"])
