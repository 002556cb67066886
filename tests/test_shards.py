"""Sharded datasets in (WebDataset tar shards, Parquet files of image bytes) and Parquet out: every
sample exactly once, a prediction matching torch's own or a failure with its reason, the samples
before a shard's damage still classified."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam import pvalue
from make_shards import Shards, make_shards, tar_bytes
from test_cli import classify, demo_args, read_jsonl

from beam_ml_flink.shards import ReadShard, Sample, expand_patterns, is_sharded
from conftest import DEMO_MEAN, DEMO_MODEL, DEMO_STD, torch_top1


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Shards:
    return make_shards(tmp_path_factory.mktemp("shards"), samples=24, shards=3)


def read(path: Path, **options) -> tuple[dict[str, tuple[Sample, bytes]], dict[str, str]]:
    """What ReadShard makes of one shard: samples by id, failures by key."""
    samples: dict[str, tuple[Sample, bytes]] = {}
    failures: dict[str, str] = {}
    for out in ReadShard(options.pop("input_format", "auto"), **options).process(str(path)):
        if isinstance(out, pvalue.TaggedOutput):
            key, reason = out.value
            assert str(key) not in failures, key
            failures[str(key)] = reason
        else:
            key, data = out
            assert str(key) not in samples, key
            samples[str(key)] = (key, data)
    return samples, failures


def test_a_tar_shard_gives_each_sample_with_its_metadata(shards: Shards) -> None:
    samples, failures = read(shards.folder / "webdataset" / "photos-00001.tar")
    assert failures == {}
    expected = {i: b for i, b in shards.images.items() if i.startswith("photos-00001/")}
    assert len(expected) == 8
    assert {i: data for i, (_, data) in samples.items()} == expected
    for i, (key, _) in samples.items():
        assert key.metadata == shards.metadata[i]


def test_a_gzipped_tar_shard_reads_the_same(shards: Shards, tmp_path: Path) -> None:
    plain = shards.folder / "webdataset" / "photos-00000.tar"
    packed = tmp_path / "photos-00000.tar.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    assert read(packed) == read(plain)


def test_the_hostile_shard_gives_every_sample_once(shards: Shards) -> None:
    samples, failures = read(shards.folder / "webdataset" / "hostile.tar")
    expected_images = {i: b for i, b in shards.images.items() if i.startswith("hostile/")}
    expected_failures = {i: p for i, p in shards.failures.items() if i.startswith("hostile/")}
    # Hostile bytes are classified later; reading fails only the sample with no image.
    assert failures.keys() == {"hostile/no-image"}
    assert "no image member (its members: .json)" in failures["hostile/no-image"]
    assert samples.keys() | failures.keys() == expected_images.keys() | expected_failures.keys()


@pytest.mark.parametrize(
    "name, kept",
    [("damaged-cut.tar", 2), ("damaged-header.tar", 2), ("not-a-tar.tar", 0)],
)
def test_a_damaged_tar_shard_keeps_the_samples_before_the_damage(
    shards: Shards, name: str, kept: int
) -> None:
    path = shards.folder / "damaged" / name
    samples, failures = read(path)
    stem = name.removesuffix(".tar")
    expected = {i: b for i, b in shards.images.items() if i.startswith(f"{stem}/")}
    assert len(expected) == kept
    assert {i: data for i, (_, data) in samples.items()} == expected
    assert failures.keys() == {str(path)}
    assert shards.failures[str(path)] in failures[str(path)]
    assert "re-create the shard" in failures[str(path)]


def test_a_parquet_shard_gives_each_row_and_a_null_image_fails(shards: Shards) -> None:
    samples, failures = read(shards.folder / "parquet" / "00002.parquet")
    expected = {i: b for i, b in shards.images.items() if i.startswith("00002/")}
    assert {i: data for i, (_, data) in samples.items()} == expected
    assert failures == {"00002/null-image": "00002/null-image: its 'jpg' is null"}


def test_parquet_columns_are_configurable_and_checked(tmp_path: Path, shards: Shards) -> None:
    photo = next(iter(shards.images.values()))
    path = tmp_path / "renamed.parquet"
    pq.write_table(pa.table({"image": pa.array([photo, photo], pa.binary())}), path)
    samples, failures = read(path, image_column="image", id_column="key")
    assert failures == {} and list(samples) == ["renamed/row0", "renamed/row1"]
    samples, failures = read(path)
    assert samples == {}
    assert "no image column 'jpg' (its columns: image); give --image_column" in failures[str(path)]
    text = tmp_path / "text.parquet"
    pq.write_table(pa.table({"jpg": ["not bytes"]}), text)
    assert "holds string, not image bytes" in read(text)[1][str(text)]


def test_a_cut_parquet_shard_is_one_failure(shards: Shards) -> None:
    path = shards.folder / "damaged" / "damaged-cut.parquet"
    assert read(path) == ({}, {str(path): read(path)[1][str(path)]})
    assert shards.failures[str(path)] in read(path)[1][str(path)]


def test_sample_keys_follow_webdataset(tmp_path: Path, shards: Shards) -> None:
    photo = next(iter(shards.images.values()))
    path = tmp_path / "keys.tar"
    members = [
        ("a/b/x1.jpg", photo),
        ("a/b/x1.cls", b"7\n"),
        ("a/b/x1.seg.png", b"not read"),  # another member of x1, not its image
        ("x2.JPEG", photo),
        ("x2.json", b"{not json"),
    ]
    path.write_bytes(tar_bytes(members))
    samples, failures = read(path)
    assert failures == {}
    assert samples["keys/a/b/x1"][0].metadata == {"cls": "7"}
    assert samples["keys/a/b/x1"][1] == photo
    assert samples["keys/x2"][0].metadata == {"json": "{not json"}


def test_brace_ranges_and_format_detection(shards: Shards) -> None:
    assert expand_patterns("s/{00000..00002}.tar") == ["s/00000.tar", "s/00001.tar", "s/00002.tar"]
    assert expand_patterns("s/{a,b}/*.tar") == ["s/a/*.tar", "s/b/*.tar"]
    assert is_sharded("gs://bucket/shards/{00000..00009}.tar")
    assert is_sharded(str(shards.folder / "parquet"))  # a folder of Parquet files
    assert is_sharded(str(shards.folder / "damaged" / "*"))
    assert not is_sharded(str(shards.folder / "webdataset" / "*"), "list")
    assert not is_sharded("images.txt")


# End to end: the command on the DirectRunner.


def _reference_top1(shards: Shards, ids: set[str]) -> dict[str, int]:
    distinct = {data: None for i, data in shards.images.items() if i in ids}
    top1 = torch_top1(
        {str(n): data for n, data in enumerate(distinct)}, DEMO_MODEL, mean=DEMO_MEAN, std=DEMO_STD
    )
    by_bytes = {data: top1[str(n)] for n, data in enumerate(distinct)}
    return {i: by_bytes[shards.images[i]] for i in ids}


@pytest.mark.slow
def test_every_shard_sample_once_on_the_direct_runner(shards: Shards, tmp_path: Path) -> None:
    folder = shards.folder
    input = f"{folder}/{{webdataset/photos-{{00000..00002}}.tar,parquet/*.parquet,damaged/*}}"
    run = classify(*demo_args(input, tmp_path / "out" / "r"), "--output_format=parquet")
    assert run.returncode == 0, run.stderr[-3000:]
    predictions = pq.read_table(sorted((tmp_path / "out").glob("r-*.parquet"))).to_pylist()
    failures = pq.read_table(sorted((tmp_path / "out").glob("r_failures-*.parquet"))).to_pylist()
    seen = [r["image"] for r in predictions + failures]
    assert len(seen) == len(set(seen)), "a sample came out twice"
    expected_ids = {i for i in shards.images if not i.startswith("hostile/")} | {
        i for i in shards.failures if not i.startswith("hostile/")
    }
    assert set(seen) == expected_ids
    got = {r["image"]: r for r in predictions}
    assert {i: r["top_indices"][0] for i, r in got.items()} == _reference_top1(shards, set(got))
    for image, reason in ((r["image"], r["error"]) for r in failures):
        assert shards.failures[image] in reason
    # The metadata of a tar sample is carried along, as JSON.
    assert (
        json.loads(got["photos-00000/000003"]["metadata"]) == shards.metadata["photos-00000/000003"]
    )
    # DuckDB reads the typed columns as they are.
    files = str(tmp_path / "out" / "r-*.parquet")
    rows = duckdb.sql(
        f"select count(*), min(len(top_indices)), max(top_scores[1]) <= 1 from '{files}'"
    ).fetchall()
    assert rows == [(len(predictions), 5, True)]


@pytest.mark.slow
def test_the_hostile_shard_on_the_direct_runner(shards: Shards, tmp_path: Path) -> None:
    run = classify(*demo_args(shards.folder / "webdataset" / "hostile.tar", tmp_path / "r"))
    assert run.returncode == 0, run.stderr[-3000:]
    predictions = read_jsonl(sorted(tmp_path.glob("r-*.jsonl")))
    failures = read_jsonl(sorted(tmp_path.glob("r_failures-*.jsonl")))
    expected_failures = {i: p for i, p in shards.failures.items() if i.startswith("hostile/")}
    assert {r["image"] for r in predictions} == {
        i for i in shards.images if i.startswith("hostile/")
    }
    assert {r["image"] for r in failures} == expected_failures.keys()
    for record in failures:
        assert expected_failures[record["image"]] in record["error"], record


@pytest.mark.slow
@pytest.mark.parametrize(
    "input, extra, message",
    [
        ("webdataset/photos-{00000..00004}.tar", [], "2 of its shards or patterns match no file"),
        ("webdataset/photos-{00000..00002}.tar", ["--streaming"], "names shards, which are read"),
    ],
)
def test_shard_usage_errors_are_one_sentence(
    shards: Shards, tmp_path: Path, input: str, extra: list[str], message: str
) -> None:
    run = classify(*demo_args(f"{shards.folder}/{input}", tmp_path / "r"), *extra)
    assert run.returncode == 2
    assert message in run.stderr and "Traceback" not in run.stderr
