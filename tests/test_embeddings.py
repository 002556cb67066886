"""Embeddings out of the Python API: `ImageClassifier.embed` gives the model's output vector per
image in one [N, dim] array, as torch computes it on the PIL + torchvision recipe's tensors, with
bad images in place as NaN rows and reasons. The pretrained EfficientNet-Lite0's pooled features
(the model without its classifier) find each photo's own crop among all the others."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_cli import PRISM, classify, read_jsonl

import beam_ml_flink as bmf
from conftest import DEMO_MEAN, DEMO_MODEL, DEMO_STD, IMAGES, encode, reference


def test_embeddings_are_the_model_outputs_with_bad_images_in_place(
    photos: dict[str, bytes],
) -> None:
    classifier = bmf.ImageClassifier(DEMO_MODEL, mean=DEMO_MEAN, std=DEMO_STD)
    images = [*photos.values(), b"not an image", b""]
    vectors, errors = classifier.embed(images)
    assert vectors.shape == (len(images), 1000) and vectors.dtype == np.float32
    model = torch.jit.load(str(DEMO_MODEL)).eval()
    batch = torch.stack([reference(d, mean=DEMO_MEAN, std=DEMO_STD) for d in photos.values()])
    with torch.no_grad():
        expected = model(batch)
    n = len(photos)
    # The model frozen and optimized for inference: float32 noise only (as for the logits).
    np.testing.assert_allclose(vectors[:n], expected.numpy(), atol=1e-4, rtol=0)
    assert errors[:n] == [None] * n
    assert np.isnan(vectors[n:]).all()
    assert errors[n] is not None and "unsupported or unrecognised image format" in errors[n]
    assert errors[n + 1] is not None and "empty" in errors[n + 1]
    normalized, _ = classifier.embed(images, normalize=True)
    torch_normalized = torch.nn.functional.normalize(expected, dim=1).numpy()
    np.testing.assert_allclose(normalized[:n], torch_normalized, atol=1e-6, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(normalized[:n], axis=1), 1.0, atol=1e-6)
    empty, none = classifier.embed([])
    assert empty.shape == (0, 1000) and none == []


def crop_of(data: bytes) -> bytes:
    """Another picture of the same scene: 80% of the photo, off centre, mirrored, as JPEG."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    width, height = image.size
    box = (width // 10, height // 20, width // 10 + width * 4 // 5, height // 20 + height * 4 // 5)
    return encode(image.crop(box).transpose(Image.Transpose.FLIP_LEFT_RIGHT), "JPEG", quality=90)


def test_each_photo_s_nearest_neighbour_is_its_own_crop(
    features_model: Path, photos: dict[str, bytes]
) -> None:
    """Cosine similarity of the L2-normalised pooled features: over the photos and a crop of
    each, every image's nearest other image is its twin, which noise vectors would not give."""
    classifier = bmf.ImageClassifier(features_model, mean=DEMO_MEAN, std=DEMO_STD)
    assert classifier.num_classes == 1280
    names = list(photos)
    images = list(photos.values()) + [crop_of(d) for d in photos.values()]
    vectors, errors = classifier.embed(images, normalize=True)
    assert errors == [None] * len(images)
    similarity = vectors @ vectors.T
    np.fill_diagonal(similarity, -np.inf)
    nearest = similarity.argmax(1)
    n = len(names)
    twins = [(i + n) % (2 * n) for i in range(2 * n)]
    wrong = {names[i % n]: names[int(j) % n] for i, j in enumerate(nearest) if j != twins[i]}
    assert wrong == {}


def torch_features(model_path: Path, photos: dict[str, bytes]) -> dict[str, np.ndarray]:
    """torch's L2-normalised output of the model on the PIL + torchvision recipe's tensors."""
    model = torch.jit.load(str(model_path)).eval()
    batch = torch.stack([reference(d, mean=DEMO_MEAN, std=DEMO_STD) for d in photos.values()])
    with torch.no_grad():
        vectors = torch.nn.functional.normalize(model(batch), dim=1).numpy()
    return dict(zip(photos, vectors, strict=True))


def embeddings_args(listing: Path, out: Path, model: Path, output_format: str) -> list[str]:
    """The command's flags for the normalised features of `model` (the demo's normalization)."""
    return [
        f"--input={listing}",
        f"--output={out}",
        f"--model_path={model}",
        "--mean=" + ",".join(map(str, DEMO_MEAN)),
        "--std=" + ",".join(map(str, DEMO_STD)),
        "--batch_size=4",
        "--output_kind=embeddings",
        "--normalize_embeddings",
        f"--output_format={output_format}",
    ]


@pytest.mark.slow
@pytest.mark.parametrize("output_format", ["parquet", "json"])
def test_the_command_writes_every_image_s_vector_or_its_failure(
    output_format: str, features_model: Path, photos: dict[str, bytes], tmp_path: Path
) -> None:
    """`--output_kind embeddings` on the DirectRunner: a row per photo holding torch's
    normalised features, the corrupt and empty files in the failures output, nothing else."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    bad = {tmp_path / "corrupt.jpg": b"\xff\xd8 not a jpeg", tmp_path / "empty.png": b""}
    for path, data in bad.items():
        path.write_bytes(data)
    listing = tmp_path / "images.txt"
    listing.write_text("\n".join([*(str(IMAGES / n) for n in photos), *map(str, bad)]) + "\n")
    out = tmp_path / "out" / "vectors"
    run = classify(
        *embeddings_args(listing, out, features_model, output_format), "--runner=DirectRunner"
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    expected = torch_features(features_model, photos)
    if output_format == "parquet":
        files = sorted(out.parent.glob("vectors-*.parquet"))
        rows = [r for f in files for r in pq.read_table(f).to_pylist()]
        failed = sorted(out.parent.glob("vectors_failures-*.parquet"))
        failures = [r for f in failed for r in pq.read_table(f).to_pylist()]
        schema = pq.read_schema(files[0])
        assert schema.field("embedding").type.value_type == pa.float32()
        # And clip-retrieval's layout: each shard's vectors as .npy, its images beside them.
        stacked = []
        for i, shard in enumerate(files):
            table = pq.read_table(shard).to_pylist()
            vectors = np.load(out.parent / "vectors_img_emb" / f"img_emb_{i}.npy")
            meta = pq.read_table(out.parent / "vectors_metadata" / f"metadata_{i}.parquet")
            assert vectors.dtype == np.float32 and vectors.shape == (len(table), 1280)
            assert meta.column("image").to_pylist() == [r["image"] for r in table]
            np.testing.assert_array_equal(vectors, [r["embedding"] for r in table])
            stacked.append(vectors)
        assert sum(len(v) for v in stacked) == len(photos)
    else:
        rows = read_jsonl(sorted(out.parent.glob("vectors-*.jsonl")))
        failures = read_jsonl(sorted(out.parent.glob("vectors_failures-*.jsonl")))
    got = {Path(r["image"]).name: np.asarray(r["embedding"], dtype=np.float32) for r in rows}
    assert sorted(got) == sorted(expected)
    for name, vector in got.items():
        # JSON carries each float32 as its shortest decimal: read back, the same float32.
        np.testing.assert_allclose(vector, expected[name], atol=1e-5, rtol=0, err_msg=name)
    assert sorted(Path(f["image"]).name for f in failures) == ["corrupt.jpg", "empty.png"]
    assert "2 failed" in run.stderr


@pytest.mark.slow
def test_a_stream_of_embeddings_leaves_the_npy_layout_of_its_windows(
    features_model: Path, photos: dict[str, bytes], tmp_path: Path
) -> None:
    """A watched folder on Prism, Parquet embeddings per window: when the stream stops, each
    window's vectors as .npy beside its images, torch's normalised features."""
    import pyarrow.parquet as pq

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    names = sorted(photos)[:3]
    for name in names:
        (inbox / name).write_bytes(photos[name])
    out = tmp_path / "out" / "vectors"
    run = classify(
        *embeddings_args(inbox, out, features_model, "parquet"),
        "--runner=PrismRunner",
        f"--prism_location={PRISM}",
        "--streaming",
        "--poll_interval=1",
        "--window_size=2",
        "--stop_after=20",
    )
    assert run.returncode == 0, run.stderr[-3000:]
    windows = sorted(out.parent.glob("vectors-*.parquet"))
    assert windows and all("-[" in w.name for w in windows), windows
    expected = torch_features(features_model, {n: photos[n] for n in names})
    got = {}
    for i, window in enumerate(windows):
        table = pq.read_table(window).to_pylist()
        vectors = np.load(out.parent / "vectors_img_emb" / f"img_emb_{i}.npy")
        meta = pq.read_table(out.parent / "vectors_metadata" / f"metadata_{i}.parquet")
        assert meta.column("image").to_pylist() == [r["image"] for r in table]
        got |= dict(zip((Path(r["image"]).name for r in table), vectors, strict=True))
    assert sorted(got) == names
    for name, vector in got.items():
        np.testing.assert_allclose(vector, expected[name], atol=1e-5, rtol=0, err_msg=name)
