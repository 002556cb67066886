"""ImageClassifier against torch itself: the same model run by torch.jit on the PIL recipe."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

import beam_ml_flink as bmf
from conftest import (
    DEMO_MEAN,
    DEMO_MODEL,
    DEMO_STD,
    IMAGENET_LABELS,
    IMAGES,
    TINY_MODEL,
    encode,
    reference,
)


@pytest.fixture(scope="module")
def demo() -> bmf.ImageClassifier:
    return bmf.ImageClassifier(
        DEMO_MODEL, mean=DEMO_MEAN, std=DEMO_STD, labels=IMAGENET_LABELS, draft=False
    )


@pytest.fixture(scope="module")
def torch_logits(photos: dict[str, bytes]) -> np.ndarray:
    model = torch.jit.load(str(DEMO_MODEL)).eval()
    batch = torch.stack([reference(d, mean=DEMO_MEAN, std=DEMO_STD) for d in photos.values()])
    with torch.no_grad():
        return model(batch).numpy()


def test_logits_match_torch_on_real_photos(
    demo: bmf.ImageClassifier, photos: dict[str, bytes], torch_logits: np.ndarray, record_property
) -> None:
    ours = demo.logits(list(photos.values()))
    assert ours.shape == (len(photos), 1000) and ours.dtype == np.float32
    np.testing.assert_array_equal(ours.argmax(1), torch_logits.argmax(1))
    worst = np.abs(ours - torch_logits).max(1)
    record_property("max_logit_diff", float(worst.max()))
    record_property("median_logit_diff", float(np.median(worst)))
    # The recipe's tensor exactly (test_preprocess); the model frozen and optimized for inference
    # rounds its sums differently from torch's run of the saved model: float32 noise only.
    assert worst.max() < 1e-4, dict(zip(photos, worst, strict=True))


def test_the_model_as_saved_gives_torch_s_logits_bit_for_bit(
    photos: dict[str, bytes], torch_logits: np.ndarray
) -> None:
    as_saved = bmf.ImageClassifier(DEMO_MODEL, mean=DEMO_MEAN, std=DEMO_STD, optimize=False)
    np.testing.assert_array_equal(as_saved.logits(list(photos.values())), torch_logits)


def test_classify_gives_torch_softmax_top_k(
    demo: bmf.ImageClassifier, photos: dict[str, bytes], torch_logits: np.ndarray
) -> None:
    results = demo.classify(list(photos.values()), top_k=5)
    labels = IMAGENET_LABELS.read_text().splitlines()
    probabilities = torch.softmax(torch.from_numpy(torch_logits), 1).numpy()
    for result, expected in zip(results, probabilities, strict=True):
        assert result.ok and result.error is None
        assert len(result.top_k) == 5
        index, label, probability = result.top_k[0]
        assert index == expected.argmax() and label == labels[index]
        assert abs(probability - expected[index]) < 0.02
        scores = [p for _, _, p in result.top_k]
        assert scores == sorted(scores, reverse=True)


def test_known_photos_get_their_class(demo: bmf.ImageClassifier, photos: dict[str, bytes]) -> None:
    names = ["coffee.png", "chelsea.png", "motorcycle_left.png"]
    tops = [r.top_k[0][1] for r in demo.classify([photos[n] for n in names], top_k=1)]
    assert tops[0] == "espresso"
    assert tops[1] in {"tabby", "tiger cat", "Egyptian cat"}
    assert tops[2] in {"moped", "motor scooter"}


def test_bad_images_fail_in_place_and_others_are_unchanged(
    demo: bmf.ImageClassifier, photos: dict[str, bytes]
) -> None:
    good = [photos["coffee.png"], photos["china.jpg"]]
    mixed = [b"", good[0], b"not an image", good[1], photos["china.jpg"][:5000]]
    results = demo.classify(mixed, top_k=3)
    assert [r.ok for r in results] == [False, True, False, True, False]
    assert "empty" in results[0].error
    assert "unsupported or unrecognised image format" in results[2].error
    assert "truncated or corrupt" in results[4].error
    alone = demo.classify(good, top_k=3)
    for got, expected in zip([results[1], results[3]], alone, strict=True):
        assert [c[0] for c in got.top_k] == [c[0] for c in expected.top_k]
        np.testing.assert_allclose(
            [c[2] for c in got.top_k], [c[2] for c in expected.top_k], rtol=1e-4
        )


def test_all_bad_batch_and_empty_batch(demo: bmf.ImageClassifier) -> None:
    assert [r.ok for r in demo.classify([b"", b"x"])] == [False, False]
    assert demo.classify([]) == []
    assert demo.logits([]).shape == (0, 1000)


def test_logits_raise_decode_error_naming_the_index(
    demo: bmf.ImageClassifier, photos: dict[str, bytes]
) -> None:
    with pytest.raises(bmf.DecodeError, match=r"^image 2: the image is empty"):
        demo.logits([photos["coffee.png"], photos["china.jpg"], b""])


def test_tiny_model_with_exact_resize_matches_torch(photos: dict[str, bytes]) -> None:
    classifier = bmf.ImageClassifier(TINY_MODEL, resize=(160, 200))
    assert classifier.input_size == (160, 200) and classifier.num_classes == 10
    data = [photos["astronaut.png"], photos["coffee.png"]]
    model = torch.jit.load(str(TINY_MODEL)).eval()
    with torch.no_grad():
        expected = model(torch.stack([reference(d, resize=(160, 200)) for d in data])).numpy()
    np.testing.assert_allclose(classifier.logits(data), expected, atol=2e-3)


def test_labels_from_a_list_or_a_file(tmp_path) -> None:
    names = [f"class {i}" for i in range(10)]
    from_list = bmf.ImageClassifier(TINY_MODEL, labels=names)
    path = tmp_path / "labels.txt"
    path.write_text("\n".join(names) + "\n")
    from_file = bmf.ImageClassifier(TINY_MODEL, labels=path)
    assert from_list.labels == from_file.labels == names
    image = encode(Image.new("RGB", (64, 64), (90, 160, 30)), "PNG")
    (result,) = from_file.classify([image], top_k=10)
    assert sorted(label for _, label, _ in result.top_k) == sorted(names)
    assert abs(sum(p for _, _, p in result.top_k) - 1.0) < 1e-5
    (unlabelled,) = bmf.ImageClassifier(TINY_MODEL).classify([image], top_k=2)
    assert [label for _, label, _ in unlabelled.top_k] == [None, None]


def test_model_errors_are_clear(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="model file not found: .*missing.pt"):
        bmf.ImageClassifier(tmp_path / "missing.pt")
    not_a_model = tmp_path / "model.pt"
    not_a_model.write_bytes(b"this is not TorchScript")
    with pytest.raises(
        bmf.ModelLoadError,
        match="cannot read it as TorchScript, nor as an AOTInductor package.*torch.jit.save",
    ):
        bmf.ImageClassifier(not_a_model)
    with pytest.raises(bmf.ModelLoadError, match="is a directory"):
        bmf.ImageClassifier(tmp_path)
    with pytest.raises(bmf.ModelLoadError, match="returns 10 classes but the labels have 3 names"):
        bmf.ImageClassifier(TINY_MODEL, labels=["a", "b", "c"])
    with pytest.raises(FileNotFoundError, match="labels file not found"):
        bmf.ImageClassifier(TINY_MODEL, labels=tmp_path / "nope.txt")


def test_model_that_is_not_a_classifier_fails_at_load(tmp_path) -> None:
    flat = tmp_path / "flat.pt"
    torch.jit.save(torch.jit.trace(torch.nn.Flatten(0), torch.zeros(1, 3, 8, 8)), str(flat))
    with pytest.raises(bmf.ModelLoadError, match=r"shape \[150528\].*\[1, classes\]"):
        bmf.ImageClassifier(flat)
    fixed = tmp_path / "fixed.pt"
    linear = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 4))
    torch.jit.save(torch.jit.trace(linear, torch.zeros(1, 3, 32, 32)), str(fixed))
    with pytest.raises(bmf.ModelLoadError, match="test forward on one 3x224x224 image failed"):
        bmf.ImageClassifier(fixed)
    assert bmf.ImageClassifier(fixed, resize=(32, 32)).num_classes == 4


def test_device_and_precision_options(photos: dict[str, bytes]) -> None:
    with pytest.raises(ValueError, match="device must be 'cpu', 'cuda' or 'cuda:N', got 'tpu'"):
        bmf.ImageClassifier(TINY_MODEL, device="tpu")
    with pytest.raises(ValueError, match="precision must be 'fp32', 'fp16' or 'bf16', got 'int8'"):
        bmf.ImageClassifier(TINY_MODEL, precision="int8")
    if bmf.cuda_device_count() == 0:
        with pytest.raises(ValueError, match="'cuda:0' was asked for, but .*use device='cpu'"):
            bmf.ImageClassifier(TINY_MODEL, device="cuda")
    classifier = bmf.ImageClassifier(TINY_MODEL, device="CPU")
    assert classifier.device == "cpu" and classifier.precision == "fp32"
    assert "ImageClassifier(" in repr(classifier) and "num_classes=10" in repr(classifier)


@pytest.fixture(scope="module")
def float32_logits(photos: dict[str, bytes]) -> np.ndarray:
    """torch's float32 logits on our preprocessed batch: the precision alone is compared."""
    batch = torch.from_numpy(bmf.preprocess(list(photos.values()), mean=DEMO_MEAN, std=DEMO_STD))
    with torch.no_grad():
        return torch.jit.load(str(DEMO_MODEL)).eval()(batch).numpy()


def assert_close_to_float32(
    ours: np.ndarray, expected: np.ndarray, tolerance: float, record_property
) -> None:
    worst = float(np.abs(ours - expected).max())
    record_property("max_logit_diff_from_float32", worst)
    # 16-bit arithmetic shows (float32 stays within 1e-5 of torch), within what 16 bits allow.
    assert 1e-3 < worst < tolerance
    # Where float32's top two are further apart than that, the top-1 is float32's.
    top_two = np.sort(expected, 1)[:, -2:]
    clear = top_two[:, 1] - top_two[:, 0] > tolerance
    assert clear.sum() >= 4
    np.testing.assert_array_equal(ours.argmax(1)[clear], expected.argmax(1)[clear])


# fp16 keeps 11 bits of mantissa, bf16 8: EfficientNet-Lite0's logits (up to about 15) move by
# up to 0.05 and 0.6 on the photos.
HALF_TOLERANCE = {"fp16": 0.1, "bf16": 1.0}


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_half_precision_stays_close_to_float32(
    precision: str, photos: dict[str, bytes], float32_logits: np.ndarray, record_property
) -> None:
    half = bmf.ImageClassifier(DEMO_MODEL, mean=DEMO_MEAN, std=DEMO_STD, precision=precision)
    assert half.precision == precision
    ours = half.logits(list(photos.values()))
    assert ours.dtype == np.float32
    assert_close_to_float32(ours, float32_logits, HALF_TOLERANCE[precision], record_property)


@pytest.mark.gpu
@pytest.mark.skipif(bmf.cuda_device_count() == 0, reason="needs a CUDA device")
def test_cuda_matches_cpu(photos: dict[str, bytes]) -> None:
    data = list(photos.values())
    cpu = bmf.ImageClassifier(DEMO_MODEL, mean=DEMO_MEAN, std=DEMO_STD)
    gpu = bmf.ImageClassifier(DEMO_MODEL, mean=DEMO_MEAN, std=DEMO_STD, device="cuda")
    assert gpu.device == "cuda:0"
    np.testing.assert_allclose(gpu.logits(data), cpu.logits(data), atol=1e-2)
    results = gpu.classify(data * 3, top_k=1)  # larger than one pass: pinned copies reused
    assert [r.top_k[0][0] for r in results] == list(cpu.logits(data).argmax(1)) * 3


@pytest.mark.gpu
@pytest.mark.skipif(bmf.cuda_device_count() == 0, reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_cuda_half_precision_stays_close_to_float32(
    precision: str, photos: dict[str, bytes], float32_logits: np.ndarray, record_property
) -> None:
    gpu = bmf.ImageClassifier(
        DEMO_MODEL, mean=DEMO_MEAN, std=DEMO_STD, device="cuda", precision=precision
    )
    ours = gpu.logits(list(photos.values()))
    assert_close_to_float32(ours, float32_logits, HALF_TOLERANCE[precision], record_property)


def test_photo_files_are_the_committed_recipe(photos: dict[str, bytes]) -> None:
    # The sample set holds JPEG and PNG photos and at least one grayscale image.
    modes = {Image.open(io.BytesIO(d)).mode for d in photos.values()}
    assert {"RGB", "L"} <= modes and len(photos) == len(list(IMAGES.iterdir()))


def test_the_optimized_model_answers_as_torch_optimizes_it(photos: dict[str, bytes]) -> None:
    """optimize=True (the default) is torch.jit.optimize_for_inference(torch.jit.freeze(...)):
    the same logits as torch's own optimized module, and as the model run as saved, up to float
    rounding."""
    data = list(photos.values())
    optimized = bmf.ImageClassifier(DEMO_MODEL, mean=DEMO_MEAN, std=DEMO_STD)
    as_saved = bmf.ImageClassifier(DEMO_MODEL, mean=DEMO_MEAN, std=DEMO_STD, optimize=False)
    inputs = torch.from_numpy(bmf.preprocess(data, mean=DEMO_MEAN, std=DEMO_STD))
    model = torch.jit.load(str(DEMO_MODEL)).eval()
    torch_optimized = torch.jit.optimize_for_inference(torch.jit.freeze(model))
    with torch.no_grad():
        expected = torch_optimized(inputs).numpy()
    ours = optimized.logits(data)
    assert ours.shape == (len(data), 1000)
    np.testing.assert_allclose(ours, expected, atol=1e-4)
    np.testing.assert_allclose(ours, as_saved.logits(data), atol=1e-4)
    assert (ours.argmax(1) == expected.argmax(1)).all()


def test_a_batch_run_in_parts_answers_as_one_forward(photos: dict[str, bytes]) -> None:
    """forward_batch_size splits a call into several forward passes (4 or 8 by default on the
    CPU): the answers are the one-pass ones, failures stay at their index."""
    data = [*photos.values(), b"not an image", *photos.values()]
    one_pass = bmf.ImageClassifier(
        DEMO_MODEL, mean=DEMO_MEAN, std=DEMO_STD, forward_batch_size=len(data)
    )
    expected = one_pass.classify(data, top_k=3)
    for size in (None, 1, 5):
        parts = bmf.ImageClassifier(
            DEMO_MODEL, mean=DEMO_MEAN, std=DEMO_STD, forward_batch_size=size
        )
        got = parts.classify(data, top_k=3)
        assert [r.ok for r in got] == [r.ok for r in expected]
        assert not got[len(photos)].ok
        assert got[len(photos)].error == expected[len(photos)].error
        for a, b in zip(got, expected, strict=True):
            assert [i for i, _, _ in a.top_k] == [i for i, _, _ in b.top_k]
            np.testing.assert_allclose(
                [p for *_, p in a.top_k], [p for *_, p in b.top_k], atol=1e-5
            )
    with pytest.raises(ValueError, match="at least 1"):
        bmf.ImageClassifier(DEMO_MODEL, forward_batch_size=0)


def test_the_cpu_pass_size_is_chosen_from_the_first_passes(photos: dict[str, bytes]) -> None:
    """Left to choose, a CPU classifier times its first passes of 4 and of 8 images (two of each
    untimed, then three timed, the first pass of a call never timed) and keeps the faster; a
    size given is kept as it is. The answers are those of a classifier given the chosen size."""
    data = list(photos.values()) * 4
    chooser = bmf.ImageClassifier(DEMO_MODEL, mean=DEMO_MEAN, std=DEMO_STD)
    assert chooser.forward_batch_size is None
    calls = 0
    while chooser.forward_batch_size is None:
        chooser.classify(data[:32], top_k=1)
        calls += 1
        # 10 timed passes of at most 8 images, 3 to 7 of them in each call of 32.
        assert calls <= 4, "no pass size chosen after 4 calls of 32 images"
    chosen = chooser.forward_batch_size
    assert chosen in (4, 8)
    given = bmf.ImageClassifier(DEMO_MODEL, mean=DEMO_MEAN, std=DEMO_STD, forward_batch_size=chosen)
    assert given.forward_batch_size == chosen
    np.testing.assert_allclose(chooser.logits(data), given.logits(data), rtol=0, atol=1e-5)
    fixed = bmf.ImageClassifier(DEMO_MODEL, mean=DEMO_MEAN, std=DEMO_STD, forward_batch_size=5)
    fixed.classify(data[:32], top_k=1)
    assert fixed.forward_batch_size == 5


def test_repr_reads_as_python(photos: dict[str, bytes]) -> None:
    """A Classification's repr shows its fields as Python writes them (quotes, None), the
    probabilities as the float32 they are: no Rust formatting (`Some(...)`)."""
    labelled = bmf.ImageClassifier(
        str(DEMO_MODEL), labels=str(IMAGENET_LABELS), mean=DEMO_MEAN, std=DEMO_STD
    )
    good, bad = labelled.classify([photos["coffee.png"], b"junk"], top_k=2)
    entries = ", ".join(f"({i}, {label!r}, {str(np.float32(p))})" for i, label, p in good.top_k)
    assert repr(good) == f"Classification(ok=True, top_k=[{entries}])"
    assert repr(bad) == f"Classification(ok=False, error={bad.error!r})"
    (unlabelled,) = bmf.ImageClassifier(str(DEMO_MODEL)).classify([photos["coffee.png"]], top_k=1)
    index, _, probability = unlabelled.top_k[0]
    assert (
        repr(unlabelled)
        == f"Classification(ok=True, top_k=[({index}, None, {str(np.float32(probability))})])"
    )
    assert "Some(" not in repr(good) + repr(bad)


def test_classifier_repr_quotes_its_path_as_python() -> None:
    classifier = bmf.ImageClassifier(str(DEMO_MODEL))
    assert repr(classifier).startswith(f"ImageClassifier(model_path={str(DEMO_MODEL)!r}, ")
