"""Sharded datasets in: WebDataset tar shards and Parquet files of image bytes (img2dataset's
layout), each shard read as its own split through Beam's FileSystems, a sample at a time.

Every sample comes out exactly once: as (key, image bytes) to classify, or as (key, reason) when it
cannot be (no image member, a null image). A shard that is damaged part way (a truncated file, a
corrupt tar header) still gives the samples before the damage, then one failure keyed by the shard
that says where reading stopped.
"""

from __future__ import annotations

import glob
import json
import os
import tarfile
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.typehints.decorators import no_annotations
from braceexpand import braceexpand

from beam_ml_flink.parquet_reader import open_parquet
from beam_ml_flink.pipeline import FAILURES, MAX_FILE_BYTES

INPUT_FORMATS = ("auto", "list", "webdataset", "parquet")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
PARQUET_SUFFIXES = (".parquet",)
# Members whose extension (after the key's first dot) is one of these are a sample's image.
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")
# Members carried along with a sample into its prediction.
METADATA_EXTENSIONS = ("json", "txt", "cls")
PARQUET_BATCH_ROWS = 64


class Sample:
    """A sample's key: its id (``shard/key``) and the metadata members carried along with it.
    ``str()`` is the id, which is what the outputs and failure reasons name."""

    __slots__ = ("id", "metadata")

    def __init__(self, id: str, metadata: dict[str, Any] | None = None) -> None:
        self.id = id
        self.metadata = metadata or None

    def __str__(self) -> str:
        return self.id

    def __repr__(self) -> str:
        return f"Sample({self.id!r}, {self.metadata!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sample) and (self.id, self.metadata) == (other.id, other.metadata)

    def __hash__(self) -> int:
        return hash(self.id)

    def __reduce__(self) -> tuple[type, tuple[str, dict[str, Any] | None]]:
        return Sample, (self.id, self.metadata)


def shard_format(path: str) -> str | None:
    """ "webdataset" or "parquet" when the path's suffix names a shard format, else None."""
    name = path.lower()
    if name.endswith(TAR_SUFFIXES):
        return "webdataset"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    return None


def shard_name(path: str) -> str:
    """The shard's part of a sample id: its file name without the format's suffix."""
    name = path.rstrip("/").rsplit("/", 1)[-1]
    for suffix in (*TAR_SUFFIXES, *PARQUET_SUFFIXES):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def expand_patterns(input: str) -> list[str]:
    """The patterns of an --input with brace ranges and lists (``{00000..00009}``, ``{a,b}``), as
    WebDataset writes them; each may still be a glob."""
    return list(dict.fromkeys(braceexpand(input)))


def _key_and_extension(name: str) -> tuple[str, str]:
    """WebDataset's convention: the key is the member's path up to the first dot of its file
    name; the extension is the rest, lower-cased."""
    folder, _, base = name.rpartition("/")
    stem, dot, extension = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), (extension.lower() if dot else "")


def _metadata_value(extension: str, data: bytes) -> Any:
    text = data.decode("utf-8", errors="replace")
    if extension == "json":
        try:
            return json.loads(text)
        except ValueError:
            return text
    return text.strip()


class _TarSample:
    def __init__(self, key: str) -> None:
        self.key = key
        self.image: bytes | None = None
        self.too_large: str | None = None
        self.extensions: list[str] = []
        self.metadata: dict[str, Any] = {}


class _Tail:
    """A file read forward only that remembers the last bytes read, so that the tar header at
    which tarfile's iteration stopped can be looked at after it has been read."""

    KEEP = 4 * tarfile.RECORDSIZE

    def __init__(self, f: Any) -> None:
        self._f = f
        self._kept = b""
        self._kept_from = 0  # the offset of self._kept[0] in the file
        self._offset = 0

    def read(self, size: int = -1) -> bytes:
        data: bytes = self._f.read(size)
        self._offset += len(data)
        self._kept = (self._kept + data)[-self.KEEP :]
        self._kept_from = self._offset - len(self._kept)
        return data

    def block(self, offset: int) -> bytes:
        """Up to one tar block at `offset`, as far as it was read and is still kept."""
        start = offset - self._kept_from
        if start < 0:
            return b"?"  # no longer kept: not a clean end
        return self._kept[start : start + tarfile.BLOCKSIZE]


class ReadShard(beam.DoFn):
    """A shard's path in; ``(Sample, image bytes)`` out for each sample, and ``(key, reason)``
    failures (tagged ``failures``) for the samples that cannot be classified and for damage."""

    def __init__(
        self,
        input_format: str,
        image_column: str = "jpg",
        id_column: str | None = "key",
        max_bytes: int = MAX_FILE_BYTES,
    ) -> None:
        self._format = input_format
        self._image_column = image_column
        self._id_column = id_column
        self._max_bytes = max_bytes

    def process(self, path: str) -> Iterator[Any]:
        shard = shard_name(path)
        fmt = self._format if self._format in ("webdataset", "parquet") else shard_format(path)
        if fmt is None:
            yield pvalue.TaggedOutput(
                FAILURES,
                (
                    path,
                    f"{path}: not a shard (.tar, .tar.gz, .tgz or .parquet); give "
                    "--input_format webdataset or parquet to read it as one",
                ),
            )
            return
        read = self._read_tar if fmt == "webdataset" else self._read_parquet
        try:
            yield from read(path, shard)
        except FileNotFoundError:
            yield pvalue.TaggedOutput(FAILURES, (path, f"{path}: no such shard; check the path"))

    # WebDataset tar shards

    def _read_tar(self, path: str, shard: str) -> Iterator[Any]:
        count = 0
        pending: _TarSample | None = None
        try:
            # FileSystems decompresses .gz itself; "r|" reads the tar as a stream, a member at a
            # time, so a shard never sits whole in memory.
            with FileSystems.open(path) as f:
                tail = _Tail(f)
                tar = tarfile.open(fileobj=tail, mode="r|")  # type: ignore[call-overload]
                for member in tar:
                    if not member.isfile():
                        continue
                    key, extension = _key_and_extension(member.name)
                    if pending is not None and key != pending.key:
                        yield from self._sample_out(shard, pending)
                        count += 1
                        pending = None
                    if pending is None:
                        pending = _TarSample(key)
                    pending.extensions.append(extension)
                    self._take_member(pending, extension, member, tar)
                # tarfile ends its iteration quietly at a header it cannot parse, or at the end
                # of a truncated file: only two zero blocks end a tar.
                end = tail.block(tar.offset)
                if end != bytes(tarfile.BLOCKSIZE):
                    what = "cut off" if len(end) < tarfile.BLOCKSIZE else "not a tar header"
                    raise tarfile.ReadError(f"at byte {tar.offset}: {what}")
        except (tarfile.TarError, EOFError, OSError, ValueError) as e:
            if isinstance(e, FileNotFoundError):
                raise
            if pending is not None and pending.image is not None:
                yield from self._sample_out(shard, pending)
                count += 1
                pending = None
            lost = f"; the sample {shard}/{pending.key} it was reading is lost" if pending else ""
            yield pvalue.TaggedOutput(
                FAILURES,
                (
                    path,
                    f"{path}: the tar shard is damaged after {count} samples ({_reason(e)}){lost}; "
                    "the samples after the damage could not be read: re-create the shard",
                ),
            )
            return
        if pending is not None:
            yield from self._sample_out(shard, pending)

    def _take_member(
        self, sample: _TarSample, extension: str, member: tarfile.TarInfo, tar: tarfile.TarFile
    ) -> None:
        is_image = extension in IMAGE_EXTENSIONS
        if not is_image and extension not in METADATA_EXTENSIONS:
            return  # other members (segmentation masks, embeddings) are skipped unread
        if is_image and sample.image is not None:
            return  # the first image member is the sample's image
        if member.size > self._max_bytes:
            if is_image:
                sample.too_large = (
                    f"its .{extension} member is {member.size} bytes, larger than "
                    f"{self._max_bytes}; refused before decoding"
                )
            return
        extracted = tar.extractfile(member)
        assert extracted is not None
        data = extracted.read()
        if len(data) != member.size:
            raise EOFError(f"{member.name} ends after {len(data)} of its {member.size} bytes")
        if is_image:
            sample.image = data
        else:
            sample.metadata[extension] = _metadata_value(extension, data)

    def _sample_out(self, shard: str, sample: _TarSample) -> Iterator[Any]:
        key = Sample(f"{shard}/{sample.key}", sample.metadata)
        if sample.image is not None:
            yield key, sample.image
        elif sample.too_large:
            yield pvalue.TaggedOutput(FAILURES, (key, f"{key}: {sample.too_large}"))
        else:
            members = ", ".join(f".{e}" for e in sample.extensions if e) or "none"
            wanted = ", ".join(f".{e}" for e in IMAGE_EXTENSIONS)
            yield pvalue.TaggedOutput(
                FAILURES,
                (
                    key,
                    f"{key}: the sample has no image member (its members: {members}); a sample "
                    f"needs one of {wanted}",
                ),
            )

    # Parquet files of image bytes

    def _read_parquet(self, path: str, shard: str) -> Iterator[Any]:
        import pyarrow as pa

        count = 0
        try:
            with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
                parquet = open_parquet(f)
                names = parquet.schema_arrow.names
                if self._image_column not in names:
                    yield pvalue.TaggedOutput(
                        FAILURES,
                        (
                            path,
                            f"{path}: no image column {self._image_column!r} (its columns: "
                            f"{', '.join(names)}); give --image_column",
                        ),
                    )
                    return
                image_type = parquet.schema_arrow.field(self._image_column).type
                if not (pa.types.is_binary(image_type) or pa.types.is_large_binary(image_type)):
                    yield pvalue.TaggedOutput(
                        FAILURES,
                        (
                            path,
                            f"{path}: the column {self._image_column!r} holds {image_type}, not "
                            "image bytes; give --image_column the column of encoded images",
                        ),
                    )
                    return
                id_column = self._id_column if self._id_column in names else None
                columns = [self._image_column] + ([id_column] if id_column else [])
                for batch in parquet.iter_batches(
                    batch_size=PARQUET_BATCH_ROWS, columns=columns, use_threads=False
                ):
                    images = batch.column(self._image_column).to_pylist()
                    ids = batch.column(id_column).to_pylist() if id_column else [None] * len(images)
                    for image, id in zip(images, ids, strict=True):
                        key = Sample(f"{shard}/{id if id is not None else f'row{count}'}")
                        count += 1
                        if image is None:
                            yield pvalue.TaggedOutput(
                                FAILURES, (key, f"{key}: its {self._image_column!r} is null")
                            )
                        elif len(image) > self._max_bytes:
                            yield pvalue.TaggedOutput(
                                FAILURES,
                                (key, f"{key}: larger than {self._max_bytes} bytes; refused"),
                            )
                        else:
                            yield key, image
        except (pa.ArrowException, OSError, ValueError) as e:
            if isinstance(e, FileNotFoundError):
                raise
            yield pvalue.TaggedOutput(
                FAILURES,
                (
                    path,
                    f"{path}: the Parquet shard is damaged after {count} rows ({_reason(e)}); the "
                    "rows after the damage could not be read: re-create the shard",
                ),
            )


def _reason(error: BaseException) -> str:
    return str(error) or type(error).__name__


class ReadShards(beam.PTransform):
    """Shard patterns (brace ranges, globs) in; out ``images``, ``(Sample, bytes)``, spread over the
    workers, and ``failures``, ``(key, reason)``. Each shard is matched once, even where several
    patterns match it, and read whole by one worker."""

    def __init__(
        self,
        input: str,
        input_format: str = "auto",
        image_column: str = "jpg",
        id_column: str | None = "key",
        max_bytes: int = MAX_FILE_BYTES,
    ) -> None:
        super().__init__()
        self._patterns = [
            os.path.join(p, "*") if os.path.isdir(p) else p for p in expand_patterns(input)
        ]
        self._read = ReadShard(input_format, image_column, id_column, max_bytes)

    @no_annotations  # a tuple of PCollections, which Beam would warn about as a type hint
    def expand(self, pipeline: pvalue.PBegin) -> tuple[beam.PCollection, beam.PCollection]:
        read = (
            pipeline
            | "ShardPatterns" >> beam.Create(self._patterns)
            | "MatchShards" >> fileio.MatchAll()
            | "ShardPaths" >> beam.Map(lambda metadata: metadata.path)
            | "EachShardOnce" >> beam.Distinct()
            | "ReadShard" >> beam.ParDo(self._read).with_outputs(FAILURES, main="images")
        )
        # One shard's samples are spread over the workers that classify them.
        images = read.images | "SpreadSamples" >> beam.Reshuffle()
        return images, read[FAILURES]


def is_sharded(input: str, input_format: str = "auto") -> bool:
    """Whether --input (with --input_format) names shards rather than images or a list of them:
    by its suffix, or for a local glob or folder without one, by the files it matches."""
    if input_format in ("webdataset", "parquet"):
        return True
    if input_format == "list":
        return False
    patterns = expand_patterns(input)
    if any(shard_format(p) for p in patterns):
        return True
    if FileSystems.get_scheme(input) not in (None, "file"):
        return False
    matched = [
        path
        for p in patterns
        for path in glob.glob(os.path.join(p, "*") if os.path.isdir(p) else p)
        if set("*?[") & set(p) or os.path.isdir(p)
    ]
    return bool(matched) and all(shard_format(path) for path in matched)


def local_shard_paths(input: str) -> tuple[list[str], list[str]]:
    """For a local --input: the shard files its patterns match, and the patterns that match
    nothing."""
    found: list[str] = []
    missing: list[str] = []
    for pattern in expand_patterns(input):
        if os.path.isdir(pattern):
            pattern = os.path.join(pattern, "*")
        matched = sorted(glob.glob(pattern)) if set("*?[") & set(pattern) else None
        if matched is None:
            matched = [pattern] if os.path.isfile(pattern) else []
        if matched:
            found.extend(matched)
        else:
            missing.append(pattern)
    return list(dict.fromkeys(found)), missing
