"""Type stubs and documentation of the native module `beam_ml_flink._core`."""

from collections.abc import Iterable, Mapping, Sequence
from os import PathLike
from typing import Any, final

import numpy as np
import numpy.typing as npt

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "INTERPOLATIONS",
    "Classification",
    "DecodeError",
    "Error",
    "ImageClassifier",
    "InferenceError",
    "ModelLoadError",
    "__version__",
    "cuda_device_count",
    "preprocess",
]

__version__: str
DEFAULT_MAX_PIXELS: int
"""Pillow's decompression-bomb threshold: images with more pixels are refused from the header."""
INTERPOLATIONS: tuple[str, ...]
"""The resize filters ``interpolation=`` takes: Pillow's, named as torchvision's
``InterpolationMode``: 'nearest', 'box', 'bilinear', 'hamming', 'bicubic', 'lanczos'."""

_Image = bytes | bytearray | memoryview
_Resize = int | tuple[int, int]
_Triple = Sequence[float]

class Error(Exception):
    """Base class of beam-ml-flink's errors."""

class DecodeError(Error):
    """An image could not be decoded or preprocessed."""

class ModelLoadError(Error):
    """A model file could not be loaded as a TorchScript image classifier."""

class InferenceError(Error):
    """The model's forward pass failed."""

def preprocess(
    images: Iterable[_Image],
    *,
    resize: _Resize | None = None,
    crop: int = 224,
    mean: _Triple = (0.485, 0.456, 0.406),
    std: _Triple = (0.229, 0.224, 0.225),
    max_pixels: int = ...,
    draft: bool = False,
    interpolation: str = "bilinear",
    crop_pct: float | None = None,
) -> npt.NDArray[np.float32]:
    """Decodes and preprocesses encoded images into one float32 array [N, 3, H, W].

    The arithmetic is torchvision's on PIL images: ``Resize(resize, interpolation)`` (Pillow's
    resize with that filter, antialiased when shrinking), ``CenterCrop(crop)``, ``ToTensor()``,
    ``Normalize(mean, std)``; the pixels are Pillow's, bit for bit, with every filter.

    Args:
        images: Encoded images (JPEG, PNG, WebP, GIF, BMP, TIFF) as bytes, bytearray or memoryview.
        resize: The shorter side after resizing, followed by a center crop; or (height, width)
            to resize to exactly, with no crop. None: 256, or what ``crop_pct`` sets.
        crop: Side of the square center crop; ignored when ``resize`` is a pair.
        mean: Per-channel mean subtracted after scaling to [0, 1].
        std: Per-channel standard deviation divided by.
        max_pixels: Images whose header announces more pixels are refused before decoding.
        draft: Decode a JPEG at a reduced DCT scale (1/2, 1/4 or 1/8, like PIL's ``draft()``)
            when it still leaves at least twice the resize target, so the antialiased resize does
            the last step. Much faster on camera-size photos, with answers close to a full
            decode; False always decodes at full size, exactly as the PIL recipe does.
        interpolation: The resize filter, one of :data:`INTERPOLATIONS` (any case):
            Pillow's ``Image.Resampling`` member of that name, as torchvision's
            ``InterpolationMode`` passes it to ``Image.resize``.
        crop_pct: timm's recipe instead of ``resize``: the shorter side becomes
            ``floor(crop / crop_pct)``, then the center crop of ``crop`` (0.875 gives
            ``Resize(256)`` for a crop of 224). Above 0 and at most 1.

    Returns:
        A C-contiguous float32 array of shape [N, 3, H, W].

    Raises:
        DecodeError: An image could not be decoded; the message names its index.
        ValueError: An option is out of range, an unknown ``interpolation``, or both
            ``resize`` and ``crop_pct``.
        TypeError: ``images`` is not a sequence of bytes-like objects.
    """

def cuda_device_count() -> int:
    """Number of CUDA devices the installed libtorch can use (0 without a GPU, its driver, or a
    torch built with CUDA)."""

@final
class Classification:
    """What became of one image passed to ``ImageClassifier.classify``.

    Made by ``classify``; constructible, comparable and picklable so that results travel between
    Beam workers.

    Args:
        top_k: (class index, label or None, probability), most probable first.
        error: Why the image failed; ``top_k`` must then be empty.

    Raises:
        ValueError: Both ``top_k`` and ``error`` were given.
    """

    def __new__(
        cls,
        top_k: Sequence[tuple[int, str | None, float]] = ...,
        error: str | None = None,
    ) -> Classification: ...
    def __reduce__(
        self,
    ) -> tuple[type[Classification], tuple[list[tuple[int, str | None, float]], str | None]]: ...
    @property
    def ok(self) -> bool:
        """True when the image was classified."""
    @property
    def top_k(self) -> list[tuple[int, str | None, float]]:
        """(class index, label or None, probability), most probable first; empty on failure."""
    @property
    def error(self) -> str | None:
        """Why the image failed, or None."""

@final
class ImageClassifier:
    """A TorchScript image classifier with its preprocessing.

    Immutable after loading: one instance may be used by many threads at once, and every call
    releases the GIL while it decodes, preprocesses and runs the model.

    Args:
        model_path: A TorchScript file saved by ``torch.jit.save``, or an AOTInductor package
            (``.pt2``) made by ``torch._inductor.aoti_compile_and_package`` (e.g. by
            ``python -m beam_ml_flink.compile``), returning [N, classes] logits; which one is
            read from the content. A package must have been compiled with this torch, for this
            device and for vector instructions this CPU has; it takes any batch size when its
            batch dimension is dynamic, and otherwise gets its passes padded and split to fit.
        device: 'cpu', 'cuda' or 'cuda:N'. On CUDA each forward pass's images are copied into
            pinned memory and on to the GPU without blocking; the CUDA libraries are those of the
            installed torch (PyPI's Linux wheels carry them), and an NVIDIA driver is needed.
        resize: As in :func:`preprocess`.
        crop: As in :func:`preprocess`.
        mean: As in :func:`preprocess`.
        std: As in :func:`preprocess`.
        labels: Class names, or a path to a text file with one name per line.
        max_pixels: As in :func:`preprocess`.
        draft: As in :func:`preprocess`.
        optimize: Freeze the model and apply libtorch's inference optimizations, as
            ``torch.jit.optimize_for_inference(torch.jit.freeze(model))`` does (conv-bn folding,
            oneDNN kernels on the CPU): the same answers up to float rounding, often several
            times faster. ``False`` runs the model as saved. A package is already optimized.
        forward_batch_size: The most images one forward pass takes. A larger batch is decoded
            and preprocessed at once, then runs as several forward passes, with the same
            answers up to float rounding. None: on the CPU, 4 or 8, whichever of the two the
            first passes run faster per image on this machine (small passes keep the
            activations in the caches; see :attr:`forward_batch_size`); the whole batch on
            CUDA.
        precision: What the model computes in: 'fp32' (as saved), 'fp16' or 'bf16'. The
            model's parameters are cast before it is frozen, each batch after it reaches the
            device; logits come back as float32. Half precisions are for GPUs (fp16's tensor
            cores, bf16 from Ampere on); the CPU runs them too, usually slower than fp32.
            A package computes in what it was compiled in and takes only 'fp32' here.
        interpolation: As in :func:`preprocess`.
        crop_pct: As in :func:`preprocess`.
        preprocess_config: The model's own recipe: a timm ``config.json`` / ``pretrained_cfg``
            or a Hugging Face ``preprocessor_config.json`` (a path, a Beam URI or a mapping),
            read by :func:`beam_ml_flink.read_preprocess_config`. The preprocessing arguments
            given explicitly win over it; those not given come from it instead of the
            defaults above.

    Raises:
        FileNotFoundError: The model, labels or preprocessing config file does not exist.
        ModelLoadError: The file is neither TorchScript nor a package this machine can run, does
            not accept the preprocessed size, does not return [N, classes], or has a different
            number of classes than labels.
        ValueError: An option is out of range, a field of ``preprocess_config`` asks for what
            the recipe cannot do (the message names the file and the field), or CUDA was asked
            for and is not available (the message says whether the installed torch lacks CUDA
            or the machine a GPU).
    """

    def __new__(
        cls,
        model_path: str | PathLike[str],
        *,
        device: str = "cpu",
        resize: _Resize | None = None,
        crop: int = 224,
        mean: _Triple = (0.485, 0.456, 0.406),
        std: _Triple = (0.229, 0.224, 0.225),
        labels: Sequence[str] | str | PathLike[str] | None = None,
        max_pixels: int = ...,
        draft: bool = False,
        optimize: bool = True,
        forward_batch_size: int | None = None,
        precision: str = "fp32",
        interpolation: str = "bilinear",
        crop_pct: float | None = None,
        preprocess_config: str | PathLike[str] | Mapping[str, Any] | None = None,
    ) -> ImageClassifier: ...
    def logits(self, images: Iterable[_Image]) -> npt.NDArray[np.float32]:
        """Logits [N, num_classes] of every image.

        Raises:
            DecodeError: An image could not be decoded; the message names its index.
            InferenceError: The forward pass failed.
        """
    def embed(
        self, images: Iterable[_Image], normalize: bool = False
    ) -> tuple[npt.NDArray[np.float32], list[str | None]]:
        """The model's output vector of every image, for models that return features (or the
        logits of a classifier), as one [N, dim] array made in a single copy, and per image None
        or the reason it failed.

        A bad image, or a failed forward pass, gives a row of NaN and its reason; this method
        does not raise for bad input. ``normalize`` divides each row by its L2 norm, as
        ``torch.nn.functional.normalize`` does (cosine similarity is then a dot product).
        """
    def classify(self, images: Iterable[_Image], top_k: int = 5) -> list[Classification]:
        """Softmax top-k of every image, in input order.

        A bad image, or a failed forward pass, becomes a failed Classification with the reason;
        this method does not raise for bad input.
        """
    @property
    def device(self) -> str:
        """The device the model runs on, as 'cpu' or 'cuda:N'."""
    @property
    def precision(self) -> str:
        """What the model computes in: 'fp32', 'fp16' or 'bf16'."""
    @property
    def model_format(self) -> str:
        """What the model file is: 'torchscript' or 'aoti' (an AOTInductor package)."""
    @property
    def model_path(self) -> str:
        """The model file."""
    @property
    def forward_batch_size(self) -> int | None:
        """The most images one forward pass takes: the size given, or on the CPU the one chosen
        from the first passes (each of 4 and 8 run twice untimed, then three times timed);
        None for the whole batch (CUDA's default), or while the first passes are still being
        timed."""
    @property
    def num_classes(self) -> int:
        """Number of classes the model returns."""
    @property
    def labels(self) -> list[str] | None:
        """Class names, or None."""
    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) of the model input."""
