"""The Apache Beam ModelHandler: one Rust ``classify`` call per batch inside ``RunInference``.

Use it keyed by image URI so every result names its image::

    images | RunInference(KeyedModelHandler(ImageClassifierHandler("model.pt")))
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterable, Sequence
from typing import Any, Protocol, cast

from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from beam_ml_flink._core import ImageClassifier, ModelLoadError
from beam_ml_flink.counts import (
    CLASSIFIED,
    COUNTS,
    FAILED_DECODE,
    FAILED_INFERENCE,
    METRICS_NAMESPACE,
    failure_stage,
)
from beam_ml_flink.recipes import (
    PreprocessRecipe,
    find_recipe_beside,
    read_preprocess_config,
    with_explicit,
)
from beam_ml_flink.streaming import ModelWatch

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# torchvision's ImageNet recipe: Resize(256, bilinear), CenterCrop(224), ImageNet's Normalize.
DEFAULT_RECIPE = PreprocessRecipe(
    resize=None,
    crop=224,
    crop_pct=None,
    interpolation="bilinear",
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
)


class ImageClassifierHandler(ModelHandler[bytes, PredictionResult, ImageClassifier]):
    """Classifies encoded images with a TorchScript model or an AOTInductor package, decoding and
    preprocessing in Rust.

    Every image gives one ``PredictionResult`` whose ``inference`` is a
    :class:`beam_ml_flink.Classification`: its ``top_k`` when the image was classified, its
    ``error`` when it could not be (bad image, failed forward). Bad input never raises.

    Args:
        model_path: A TorchScript file (``torch.jit.save``) or an AOTInductor package (``.pt2``,
            see ``python -m beam_ml_flink.compile``) returning [N, classes] logits; or, with
            ``model_name``, a torchvision state dict. A path or a URI of any Beam filesystem
            (``s3://``, ``gs://``, where its extra is installed): a remote model is copied to a
            local file once, and again when the object changes.
        model_sha256: The SHA-256 of the ``model_path`` file (64 hex digits, as ``sha256sum``
            prints it). A model holds code that is run (a package holds a shared library), so a
            model fetched from a store can be pinned: the local copy is checked before any of it
            is loaded, and a file with another digest raises ``ModelLoadError`` naming both.
        device: 'cpu', 'cuda' or 'cuda:N' ('GPU' is accepted for 'cuda').
        resize: The shorter side after resizing (then a center crop of ``crop``), or
            (height, width) to resize to exactly with no crop; None: 256, or what ``crop_pct``
            sets.
        crop: Side of the square center crop (None: 224).
        interpolation: The resize filter: 'nearest', 'box', 'bilinear' (None: bilinear),
            'hamming', 'bicubic' or 'lanczos', Pillow's, bit for bit.
        crop_pct: timm's recipe instead of ``resize``: the shorter side becomes
            ``floor(crop / crop_pct)`` before the center crop (above 0, at most 1).
        mean: Per-channel mean of ``Normalize`` (None: ImageNet's).
        std: Per-channel standard deviation of ``Normalize`` (None: ImageNet's).
        preprocess_config: The model's own recipe instead of the defaults: a timm
            ``config.json`` (or ``pretrained_cfg``) or a Hugging Face
            ``preprocessor_config.json``, a path or a URI of any Beam filesystem, read once
            here (the workers never read it), as :func:`beam_ml_flink.read_preprocess_config`
            reads it. ``resize``, ``crop``, ``crop_pct``, ``interpolation``, ``mean`` and
            ``std`` given here win over the file's. None: the recipe beside the model when
            there is one, ``model_path`` with its extension replaced by ``.preprocess.json``
            (``resnet50.pt2`` -> ``resnet50.preprocess.json``, as
            ``python -m beam_ml_flink.compile`` writes it), read and logged at INFO; else
            torchvision's ImageNet recipe.
        labels: Class names, or a path to a text file with one name per line.
        top_k: How many classes each result keeps.
        model_name: A torchvision architecture (e.g. 'mobilenet_v2', 'resnet101') whose state dict
            ``model_path`` holds; it is traced once at load and then run by the Rust core.
        draft: Decode JPEGs much larger than needed at a reduced DCT scale (faster; answers may
            differ slightly from the PIL recipe).
        optimize: Run the model frozen and optimized for inference (the default); ``False``
            runs it as saved.
        forward_batch_size: The most images per forward pass; a larger Beam batch, once
            decoded, runs as several (None: on the CPU 4 or 8, whichever the first passes run
            faster on this machine; on CUDA the whole batch).
        precision: 'fp32' (as saved), 'fp16' or 'bf16': what the model computes in; the
            half precisions are for GPUs.
        watch_models: A folder or glob of model files: one added there after the handler was
            made replaces the model (polled every ``poll_interval`` seconds), on any runner;
            each prediction's ``model_id`` names the file that made it. Beam's own refresh
            (``update_model_path`` through ``RunInference(model_metadata_pcoll=...)``) also
            works where the runner refreshes triggered side inputs (Prism refuses them; the
            Flink job server here keeps their first value).
        poll_interval: Seconds between two listings of ``watch_models``.
        min_batch_size: Passed to Beam's ``BatchElements``.
        max_batch_size: Passed to Beam's ``BatchElements``.
        max_batch_duration_secs: Passed to Beam's ``BatchElements`` (streaming).
        large_model: Share one model between the processes of a worker.
        model_copies: Exactly this many models per worker, shared between its processes.
    """

    def __init__(
        self,
        model_path: str,
        *,
        device: str = "cpu",
        resize: int | tuple[int, int] | None = None,
        crop: int | None = None,
        interpolation: str | None = None,
        crop_pct: float | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        preprocess_config: str | os.PathLike[str] | None = None,
        labels: str | Sequence[str] | None = None,
        top_k: int = 5,
        model_name: str | None = None,
        model_sha256: str | None = None,
        draft: bool = False,
        optimize: bool = True,
        forward_batch_size: int | None = None,
        precision: str = "fp32",
        watch_models: str | None = None,
        poll_interval: float = 5.0,
        min_batch_size: int | None = None,
        max_batch_size: int | None = None,
        max_batch_duration_secs: int | None = None,
        large_model: bool = False,
        model_copies: int | None = None,
    ) -> None:
        super().__init__(
            min_batch_size=min_batch_size,
            max_batch_size=max_batch_size,
            max_batch_duration_secs=max_batch_duration_secs,
            large_model=large_model,
            model_copies=model_copies,
        )
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        self._model_path = str(model_path)
        self._device = normalize_device(device)
        if preprocess_config is None:
            preprocess_config = find_recipe_beside(self._model_path)
            if preprocess_config is not None:
                logger.info(
                    "preprocessing images by the recipe beside the model: %s "
                    "(preprocess_config= replaces it; preprocessing arguments given win over it)",
                    preprocess_config,
                )
        recipe = with_explicit(
            DEFAULT_RECIPE
            if preprocess_config is None
            else read_preprocess_config(preprocess_config),
            # A pair as given (the core checks it), a side, or None (256, or crop_pct's side).
            resize=(
                cast("tuple[int, int]", tuple(resize))
                if isinstance(resize, (tuple, list))
                else None
                if resize is None
                else int(resize)
            ),
            crop=None if crop is None else int(crop),
            crop_pct=None if crop_pct is None else float(crop_pct),
            interpolation=interpolation,
            mean=None if mean is None else tuple(float(m) for m in mean),
            std=None if std is None else tuple(float(s) for s in std),
        )
        self._resize = recipe["resize"]
        self._crop = recipe["crop"]
        self._interpolation = recipe["interpolation"]
        self._crop_pct = recipe["crop_pct"]
        self._mean = recipe["mean"]
        self._std = recipe["std"]
        self._labels = labels if labels is None or isinstance(labels, str) else list(labels)
        self._top_k = top_k
        self._model_name = model_name
        self._model_sha256 = _sha256_pin(model_sha256)
        self._draft = draft
        self._optimize = optimize
        self._forward_batch_size = forward_batch_size
        self._precision = precision
        self._watch_models = watch_models
        self._poll_interval = poll_interval
        # Models written after the pipeline was made are new; the ones already there are not.
        self._watch_since = time.time()
        self._model_watch: ModelWatch[ImageClassifier] | None = None
        self._metrics: _Metrics | None = None

    def __getstate__(self) -> dict[str, Any]:
        # What a worker made for itself (the watched model, the metrics) is not shipped.
        return {**self.__dict__, "_model_watch": None, "_metrics": None}

    def load_model(self) -> ImageClassifier:
        """Loads the model (tracing a torchvision state dict first when ``model_name`` is set),
        after checking its digest when ``model_sha256`` pins it."""
        return self._load(self._model_path, self._model_sha256)

    def _load(self, model_path: str, sha256: str | None = None) -> ImageClassifier:
        local = _local_copy(model_path)
        if sha256 is not None:
            check_sha256(local, sha256, model_path)
        if self._model_name is not None:
            from beam_ml_flink.torchvision_models import trace_state_dict

            # Traced from the checked copy where the model is pinned: what was checked is loaded.
            source = local if sha256 is not None else model_path
            local = trace_state_dict(self._model_name, source, self._input_size())
        return ImageClassifier(
            local,
            device=self._device,
            resize=self._resize,
            crop=self._crop,
            interpolation=self._interpolation,
            crop_pct=self._crop_pct,
            mean=self._mean,
            std=self._std,
            labels=_local_copy(self._labels) if isinstance(self._labels, str) else self._labels,
            draft=self._draft,
            optimize=self._optimize,
            forward_batch_size=self._forward_batch_size,
            precision=self._precision,
        )

    def run_inference(
        self,
        batch: Sequence[bytes],
        model: ImageClassifier,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[PredictionResult]:
        """Classifies the batch with one call into Rust; bad images become failed results."""
        if self._metrics is None:
            self._metrics = _Metrics(self.get_metrics_namespace())
        model_id = self._model_path
        if self._watch_models:
            if self._model_watch is None:
                self._model_watch = ModelWatch(
                    self._watch_models, self._poll_interval, self._watch_since, self._load
                )
            refreshed = self._model_watch.current()
            if refreshed is not None:
                model_id, model = refreshed
        started = time.perf_counter()
        results = self._infer(model, batch)
        self._metrics.update(results, time.perf_counter() - started)
        return [
            PredictionResult(image, result, model_id)
            for image, result in zip(batch, results, strict=True)
        ]

    def _infer(self, model: ImageClassifier, batch: Sequence[bytes]) -> Sequence[_Outcome]:
        """One call into Rust for the batch: what each image gives (its classes here)."""
        return model.classify(batch, self._top_k)

    def get_num_bytes(self, batch: Sequence[bytes]) -> int:
        """Encoded bytes in the batch."""
        return sum(len(image) for image in batch)

    def get_metrics_namespace(self) -> str:
        """Namespace of this handler's Beam metrics."""
        return METRICS_NAMESPACE

    def update_model_path(self, model_path: str | None = None) -> None:
        """Points the handler at a new model file (Beam's model refresh)."""
        if model_path:
            self._model_path = model_path

    def batch_elements_kwargs(self) -> dict[str, Any]:
        """Batching options for Beam's ``BatchElements``."""
        return self._batching_kwargs

    def share_model_across_processes(self) -> bool:
        """Whether one model serves every process of a worker."""
        return self._share_across_processes

    def model_copies(self) -> int:
        """How many models a worker loads when they are shared between processes."""
        return self._model_copies or 1

    def _input_size(self) -> tuple[int, int]:
        if isinstance(self._resize, tuple):
            return self._resize
        return (self._crop, self._crop)


def normalize_device(device: str) -> str:
    """Accepts Beam's 'CPU'/'GPU' spelling beside 'cpu', 'cuda' and 'cuda:N'."""
    device = device.strip().lower()
    return "cuda" if device == "gpu" else device


class _Outcome(Protocol):
    """What a handler gives per image: a Classification, or an Embedding."""

    @property
    def ok(self) -> bool: ...

    @property
    def error(self) -> str | None: ...


class _Metrics:
    """Beam metrics of the handler, beside RunInference's own."""

    def __init__(self, namespace: str) -> None:
        self.classified = Metrics.counter(namespace, CLASSIFIED)
        self.failed = Metrics.counter(namespace, "images_failed")
        self.failed_decode = Metrics.counter(namespace, FAILED_DECODE)
        self.failed_inference = Metrics.counter(namespace, FAILED_INFERENCE)
        self.batch_size = Metrics.distribution(namespace, "batch_size")
        self.batch_ms = Metrics.distribution(namespace, "batch_inference_ms")

    def update(self, results: Sequence[_Outcome], seconds: float) -> None:
        stages = [failure_stage(r.error or "") for r in results if not r.ok]
        failed = len(stages)
        self.classified.inc(len(results) - failed)
        self.failed.inc(failed)
        self.failed_inference.inc(stages.count(FAILED_INFERENCE))
        self.failed_decode.inc(failed - stages.count(FAILED_INFERENCE))
        COUNTS.add(len(results) - failed, failed)
        self.batch_size.update(len(results))
        self.batch_ms.update(round(seconds * 1000))


def _sha256_pin(value: str | None) -> str | None:
    if value is None:
        return None
    digest = value.strip().lower()
    if len(digest) != 64 or set(digest) - set("0123456789abcdef"):
        raise ValueError(
            f"model_sha256 must be a SHA-256 digest, 64 hexadecimal digits as sha256sum prints "
            f"them; got {value!r}"
        )
    return digest


def check_sha256(local: str, expected: str, model_path: str) -> None:
    """Raises ModelLoadError when the file ``local`` (the copy of ``model_path``) does not have the
    SHA-256 digest ``expected``; the file is then removed, never loaded."""
    import hashlib

    with open(local, "rb") as f:
        actual = hashlib.file_digest(f, "sha256").hexdigest()
    if actual == expected:
        return
    if local != model_path:
        # A copy that failed its check is not kept: the next load fetches the object again.
        with contextlib.suppress(OSError):
            os.remove(local)
    raise ModelLoadError(
        f"the model {model_path} is not the pinned one: expected sha256 {expected}, the file "
        f"has {actual}; it was not loaded. If the model was replaced on purpose, pin its new "
        "digest (sha256sum prints it); otherwise find out who changed it"
    )


def _local_copy(path: str) -> str:
    """A local path for ``path``, copying it from a remote filesystem (s3://, gs://, ...) once
    per version of the object (its size and modification time)."""
    from apache_beam.io.filesystems import FileSystems

    if FileSystems.get_scheme(path) in (None, "file"):
        return path
    import hashlib
    import tempfile

    try:
        found = FileSystems.match([path])[0].metadata_list
    except Exception:  # noqa: BLE001 - a missing object fails below, where it is opened
        found = []
    version = f"{found[0].size_in_bytes}:{found[0].last_updated_in_seconds}" if found else ""
    digest = hashlib.sha256(f"{path}\0{version}".encode()).hexdigest()[:16]
    local = os.path.join(tempfile.gettempdir(), "beam_ml_flink", digest, os.path.basename(path))
    if not os.path.exists(local):
        os.makedirs(os.path.dirname(local), exist_ok=True)
        partial = f"{local}.{os.getpid()}.partial"
        with FileSystems.open(path) as src, open(partial, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        os.replace(partial, local)
    return local


__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "ImageClassifierHandler", "normalize_device"]
