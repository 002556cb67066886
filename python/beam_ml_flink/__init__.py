"""beam-ml-flink: image classification for Apache Beam with a Rust hot path.

Decoding, preprocessing (torchvision's Resize/CenterCrop/Normalize arithmetic) and batched
TorchScript inference run in Rust, one call per batch with the GIL released.
"""

from beam_ml_flink._core import (
    DEFAULT_MAX_PIXELS,
    Classification,
    DecodeError,
    Error,
    ImageClassifier,
    InferenceError,
    ModelLoadError,
    __version__,
    cuda_device_count,
    preprocess,
)
from beam_ml_flink.recipes import PreprocessRecipe, read_preprocess_config

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "Classification",
    "DecodeError",
    "Error",
    "ImageClassifier",
    "InferenceError",
    "ModelLoadError",
    "PreprocessRecipe",
    "__version__",
    "cuda_device_count",
    "preprocess",
    "read_preprocess_config",
]
