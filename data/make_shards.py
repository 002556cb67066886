"""Shards of the sample photos and of the hostile corpus, and what must become of each sample.

WebDataset tar shards (a sample's members share a key: ``key.jpg`` plus ``key.json`` and
``key.txt``), Parquet files in img2dataset's layout (``key``, ``jpg``, ``caption``), and damaged
shards: a tar cut inside a member, a tar whose header is overwritten, a file that is no tar, a
Parquet file cut in half, a sample with no image. Run directly it writes them into a folder
(default build/shards) and prints what it wrote.
"""

from __future__ import annotations

import argparse
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from make_hostile import make_corpus

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "data" / "images"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")


@dataclass
class Shards:
    """What was written: the expected outcome of every sample, by id (SHARD/KEY)."""

    folder: Path
    # id -> the image bytes it must be classified from
    images: dict[str, bytes] = field(default_factory=dict)
    # id -> the metadata carried along with it
    metadata: dict[str, dict] = field(default_factory=dict)
    # id (a sample's, or a damaged shard's path) -> a phrase its failure reason contains
    failures: dict[str, str] = field(default_factory=dict)


def tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    """A tar archive of (name, data) members in this order, as WebDataset writers make them."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def photos() -> list[tuple[str, bytes]]:
    """The sample photos: (file name, bytes)."""
    return [(p.name, p.read_bytes()) for p in sorted(IMAGES.iterdir())]


def _sample(n: int, name: str, data: bytes) -> tuple[str, list[tuple[str, bytes]], dict]:
    key = f"{n:06d}"
    metadata = {"json": {"source": name, "n": n}, "txt": f"photo {name}"}
    extension = Path(name).suffix.lstrip(".").lower()
    members = [
        (f"{key}.{extension}", data),
        (f"{key}.json", json.dumps(metadata["json"]).encode()),
        (f"{key}.txt", metadata["txt"].encode()),
    ]
    return key, members, metadata


def make_webdataset(folder: Path, samples: int, shards: int, out: Shards) -> None:
    """`samples` photos (the sample photos over and over) in `shards` tar shards,
    photos-00000.tar ..."""
    sources = photos()
    per_shard = -(-samples // shards)
    for s in range(shards):
        members: list[tuple[str, bytes]] = []
        for n in range(s * per_shard, min(samples, (s + 1) * per_shard)):
            name, data = sources[n % len(sources)]
            key, sample, metadata = _sample(n, name, data)
            members += sample
            out.images[f"photos-{s:05d}/{key}"] = data
            out.metadata[f"photos-{s:05d}/{key}"] = metadata
        (folder / f"photos-{s:05d}.tar").write_bytes(tar_bytes(members))


def make_parquet(folder: Path, samples: int, shards: int, out: Shards) -> None:
    """`samples` photos in `shards` Parquet files of img2dataset's layout and names, 00000.parquet
    ..., in row groups of 16; the last file has a row with a null image."""
    sources = photos()
    per_shard = -(-samples // shards)
    for s in range(shards):
        keys, images, captions = [], [], []
        for n in range(s * per_shard, min(samples, (s + 1) * per_shard)):
            name, data = sources[n % len(sources)]
            keys.append(f"{n:06d}")
            images.append(data)
            captions.append(f"photo {name}")
            out.images[f"{s:05d}/{n:06d}"] = data
        if s == shards - 1:
            keys.append("null-image")
            images.append(None)
            captions.append("no image")
            out.failures[f"{s:05d}/null-image"] = "'jpg' is null"
        table = pa.table({"key": keys, "jpg": pa.array(images, pa.binary()), "caption": captions})
        pq.write_table(table, folder / f"{s:05d}.parquet", row_group_size=16)


def make_hostile_shard(folder: Path, out: Shards) -> None:
    """hostile.tar: every case of the hostile corpus as a sample, and a sample with no image."""
    corpus = make_corpus(folder / "hostile-files")
    members: list[tuple[str, bytes]] = []
    # The cases that are files (not the missing path, the folder): a shard holds bytes.
    for i, case in enumerate(c for c in corpus if c.path.is_file()):
        key = f"case{i:03d}"
        suffix = case.path.suffix.lower()
        extension = suffix.lstrip(".") if suffix in IMAGE_SUFFIXES else "jpg"
        data = case.path.read_bytes()
        members.append((f"{key}.{extension}", data))
        if case.fails:
            out.failures[f"hostile/{key}"] = case.phrase or ""
        else:
            out.images[f"hostile/{key}"] = data
    members.append(("no-image.json", b'{"caption": "a sample whose image is missing"}'))
    out.failures["hostile/no-image"] = "the sample has no image member"
    (folder / "hostile.tar").write_bytes(tar_bytes(members))


def make_damaged(folder: Path, out: Shards) -> None:
    """Shards damaged part way, and the samples before the damage that must still come out."""
    sources = photos()
    members: list[tuple[str, bytes]] = []
    keys = []
    for n in range(4):
        name, data = sources[n % len(sources)]
        key, sample, _ = _sample(n, name, data)
        members += sample
        keys.append((key, data))
    whole = tar_bytes(members)
    # Cut inside the third sample's image: the first two samples are classified.
    third_image = whole.index(keys[2][1][:64])
    cut = folder / "damaged-cut.tar"
    cut.write_bytes(whole[: third_image + len(keys[2][1]) // 2])
    for key, data in keys[:2]:
        out.images[f"damaged-cut/{key}"] = data
    out.failures[str(cut)] = "the tar shard is damaged after 2 samples"
    # The third sample's header overwritten: the first two samples are classified.
    header = bytearray(whole)
    at = whole.index(f"{keys[2][0]}.".encode())
    header[at : at + 512] = b"\xff" * 512
    bad_header = folder / "damaged-header.tar"
    bad_header.write_bytes(bytes(header))
    for key, data in keys[:2]:
        out.images[f"damaged-header/{key}"] = data
    out.failures[str(bad_header)] = "the tar shard is damaged after 2 samples"
    not_tar = folder / "not-a-tar.tar"
    not_tar.write_bytes(b"this is a text file, not a tar archive\n" * 40)
    out.failures[str(not_tar)] = "the tar shard is damaged after 0 samples"
    # A Parquet file cut in half has lost its footer: nothing in it can be read.
    table = pa.table({"key": ["a", "b"], "jpg": pa.array([sources[0][1], sources[1][1]])})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    cut_parquet = folder / "damaged-cut.parquet"
    cut_parquet.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    out.failures[str(cut_parquet)] = "the Parquet shard is damaged after 0 rows"


def make_shards(folder: Path, samples: int = 48, shards: int = 3) -> Shards:
    """Every kind of shard into `folder`; returns what must become of each sample."""
    folder.mkdir(parents=True, exist_ok=True)
    out = Shards(folder)
    webdataset = folder / "webdataset"
    parquet = folder / "parquet"
    damaged = folder / "damaged"
    for sub in (webdataset, parquet, damaged):
        sub.mkdir(exist_ok=True)
    make_webdataset(webdataset, samples, shards, out)
    make_hostile_shard(webdataset, out)
    make_parquet(parquet, samples, shards, out)
    make_damaged(damaged, out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", type=Path, default=ROOT / "build" / "shards")
    parser.add_argument("--samples", type=int, default=48, help="photos per shard format")
    parser.add_argument("--shards", type=int, default=3, help="shards per format")
    args = parser.parse_args()
    out = make_shards(args.folder, args.samples, args.shards)
    for path in sorted(args.folder.rglob("*")):
        if path.is_file() and "hostile-files" not in path.parts:
            print(f"{path}  {path.stat().st_size} bytes")
    print(f"{len(out.images)} samples to classify, {len(out.failures)} failures expected")


if __name__ == "__main__":
    main()
