"""Embeddings out: the model's output vector per image (the features of a model that returns
features, e.g. a classifier with its head taken off), through the same sources, runners and
failure outputs as classification.

    images | RunInference(KeyedModelHandler(ImageEmbedderHandler("features.pt", normalize=True)))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from beam_ml_flink._core import ImageClassifier
from beam_ml_flink.beam import ImageClassifierHandler
from beam_ml_flink.parquet_reader import read_parquet

# What a run writes per image: its top classes, or its output vector.
OUTPUT_KINDS = ("classes", "embeddings")


class Embedding:
    """An image's output vector (a row of its batch's array, not a copy), or why it has none."""

    __slots__ = ("vector", "error")

    def __init__(self, vector: npt.NDArray[np.float32] | None, error: str | None = None) -> None:
        self.vector = vector
        self.error = error

    @property
    def ok(self) -> bool:
        """Whether the image has its vector."""
        return self.error is None

    def __repr__(self) -> str:
        if self.vector is None:
            return f"Embedding(error={self.error!r})"
        return f"Embedding({self.vector.shape[0]} values)"

    def __reduce__(self) -> tuple[Any, ...]:
        return Embedding, (self.vector, self.error)


class ImageEmbedderHandler(ImageClassifierHandler):
    """:class:`beam_ml_flink.beam.ImageClassifierHandler` whose results are
    :class:`Embedding`s: each image's model output, one ``embed`` call into Rust per batch,
    L2-normalised with ``normalize`` (cosine similarity is then a dot product). Every other
    argument is the classifier handler's; ``labels`` and ``top_k`` do not apply."""

    def __init__(self, model_path: str, *, normalize: bool = False, **kwargs: Any) -> None:
        super().__init__(model_path, **kwargs)
        self._normalize = normalize

    def _infer(self, model: ImageClassifier, batch: Sequence[bytes]) -> Sequence[Embedding]:
        vectors, errors = model.embed(batch, self._normalize)
        return [
            Embedding(None, error) if error is not None else Embedding(vectors[i])
            for i, error in enumerate(errors)
        ]


def embedding_record(image: Any, embedding: Embedding, model: str | None) -> dict[str, Any]:
    """One row of Parquet embeddings (:func:`embedding_schema`), or one JSON line's fields."""
    assert embedding.vector is not None
    return {"image": str(image), "embedding": embedding.vector.tolist(), "model": model}


def embedding_schema() -> Any:
    """The typed columns of Parquet embeddings: the vector as list<float32>."""
    import pyarrow as pa

    return pa.schema(
        [
            ("image", pa.string()),
            ("embedding", pa.list_(pa.float32())),
            ("model", pa.string()),
            ("metadata", pa.string()),
        ]
    )


def write_npy_shards(output: str) -> list[str]:
    """The layout clip-retrieval reads, from the Parquet shards a batch job wrote under the
    ``output`` prefix: for shard ``i`` (in name order), ``OUTPUT_img_emb/img_emb_i.npy`` (the
    vectors, float32 [n, dim]) and ``OUTPUT_metadata/metadata_i.parquet`` (``image``, ``model``,
    ``metadata``), row for row. Read and written through Beam's filesystems (local or a store).
    Returns the files written."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    from apache_beam.io.filesystems import FileSystems

    pattern = f"{output}-*-of-*.parquet"
    shards = sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)
    written = []
    for i, shard in enumerate(shards):
        with FileSystems.open(shard) as f:
            table = read_parquet(f)
        column = table.column("embedding").combine_chunks()
        dim = len(column[0]) if len(column) else 0
        vectors = np.asarray(column.flatten(), dtype=np.float32).reshape(len(column), dim)
        vectors_path = f"{output}_img_emb/img_emb_{i}.npy"
        buffer = io.BytesIO()
        np.save(buffer, vectors)
        with FileSystems.create(vectors_path) as f:
            f.write(buffer.getvalue())
        metadata_path = f"{output}_metadata/metadata_{i}.parquet"
        buffer = io.BytesIO()
        pq.write_table(
            pa.table({n: table.column(n) for n in ("image", "model", "metadata")}), buffer
        )
        with FileSystems.create(metadata_path) as f:
            f.write(buffer.getvalue())
        written += [vectors_path, metadata_path]
    return written
