"""Properties of the Python entry points, searched by hypothesis: any bytes are an answer or a
DecodeError (never a crash), any image PIL writes losslessly preprocesses as the recipe does, and
`classify` keeps one result per input whatever is damaged.

`make test` runs the default profile; `make fuzz` runs HYPOTHESIS_PROFILE=fuzz (many more examples).
"""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from PIL import Image

import beam_ml_flink as bmf
from conftest import IMAGES, TINY_MODEL, reference

# `make test` searches the same examples every run (no flaky discoveries in CI); `make fuzz` does
# not.
settings.register_profile(
    "default",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    max_examples=60,
    derandomize=True,
)
settings.register_profile(
    "fuzz", deadline=None, suppress_health_check=list(HealthCheck), max_examples=2_000
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

SEEDS = [p.read_bytes() for p in sorted(IMAGES.iterdir())][:4]
LOSSLESS = ["PNG", "BMP", "TIFF"]
MODES = ["RGB", "L", "RGBA", "P", "LA"]
UNSUPPORTED_TIFF = ["P", "LA"]  # palette and gray + alpha: the `tiff` decoder refuses them
CLASSIFIER = bmf.ImageClassifier(TINY_MODEL, resize=32, crop=32)


@st.composite
def pil_images(draw) -> Image.Image:
    width = draw(st.integers(1, 48))
    height = draw(st.integers(1, 48))
    seed = draw(st.integers(0, 2**32 - 1))
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGB")
    mode = draw(st.sampled_from(MODES))
    return image.quantize(16) if mode == "P" else image.convert(mode)


@st.composite
def damaged(draw) -> bytes:
    """A real photo's bytes, cut short, with bytes overwritten, or both."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    for _ in range(draw(st.integers(0, 8))):
        if data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


def encode(image: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt)
    return out.getvalue()


@given(st.binary(max_size=4096) | damaged())
def test_any_bytes_are_an_array_or_a_decode_error(data: bytes) -> None:
    try:
        batch = bmf.preprocess([data], resize=32, crop=24)
    except bmf.DecodeError as e:
        assert str(e).startswith("image 0: "), e
        return
    assert batch.shape == (1, 3, 24, 24) and np.isfinite(batch).all()


@given(pil_images(), st.sampled_from(LOSSLESS), st.integers(8, 64))
# Found by the search: the crop box of Resize(59) + CenterCrop(59) once rounded past a 31x31
# image.
@example(Image.new("RGB", (31, 31), "gray"), "PNG", 59)
def test_lossless_images_preprocess_as_the_recipe(image: Image.Image, fmt: str, side: int) -> None:
    assume(not (fmt == "BMP" and image.mode == "LA"))  # PIL cannot write it
    assume(not (fmt == "TIFF" and image.mode in UNSUPPORTED_TIFF))  # the decoder lacks them
    data = encode(image, fmt)
    ours = bmf.preprocess([data], resize=side, crop=side)[0]
    expected = reference(data, resize=side, crop=side).numpy()
    np.testing.assert_array_equal(ours, expected)


@given(st.lists(st.binary(max_size=512) | damaged() | st.sampled_from(SEEDS), max_size=6))
def test_classify_keeps_one_result_per_input(images: list[bytes]) -> None:
    results = CLASSIFIER.classify(images, top_k=2)
    assert len(results) == len(images)
    for data, result in zip(images, results, strict=True):
        if result.ok:
            assert result.error is None and len(result.top_k) == 2
            probabilities = [p for *_, p in result.top_k]
            assert probabilities == sorted(probabilities, reverse=True)
        else:
            assert result.error and not result.top_k, (data[:16], result)


@given(st.integers(1, 300), st.integers(1, 300))
def test_resize_and_crop_give_the_shape_or_a_value_error(resize: int, crop: int) -> None:
    if crop > resize:
        with pytest.raises(ValueError, match="crop"):
            bmf.preprocess([SEEDS[0]], resize=resize, crop=crop)
        return
    assert bmf.preprocess([SEEDS[0]], resize=resize, crop=crop).shape == (1, 3, crop, crop)


@pytest.mark.parametrize("mode", UNSUPPORTED_TIFF)
def test_tiffs_the_decoder_lacks_are_refused_as_unsupported_not_corrupt(mode: str) -> None:
    """Found by the search above: the TIFF decoder has no palette nor gray + alpha support; the
    reason says so, and what to do."""
    image = Image.new("RGB", (4, 4), "red")
    data = encode(image.quantize(4) if mode == "P" else image.convert(mode), "TIFF")
    with pytest.raises(bmf.DecodeError, match="uses a feature the decoder does not support") as e:
        bmf.preprocess([data])
    assert "truncated" not in str(e.value) and "convert it to PNG or JPEG" in str(e.value)
