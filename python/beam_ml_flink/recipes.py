"""Preprocessing recipes read from where the models keep them: a timm ``pretrained_cfg`` (or a
timm hub ``config.json``, where it sits under ``"pretrained_cfg"``) or a Hugging Face
``preprocessor_config.json``.

Either becomes one :class:`PreprocessRecipe`: the keyword arguments of
:func:`beam_ml_flink.preprocess` and :class:`beam_ml_flink.ImageClassifier` that give the
library's own eval transform. A field that asks for something the recipe cannot do is an error
that names the file and the field, never ignored.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from typing import Any, TypedDict

from beam_ml_flink._core import INTERPOLATIONS

# timm's defaults when a pretrained_cfg leaves a field out (timm.data.resolve_data_config).
_TIMM_DEFAULTS: dict[str, Any] = {
    "input_size": (3, 224, 224),
    "interpolation": "bicubic",
    "crop_pct": 0.875,
    "crop_mode": "center",
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
}
# The fields that tell a timm pretrained_cfg from a Hugging Face preprocessor_config.json.
_TIMM_FIELDS = {"input_size", "crop_pct", "crop_mode", "mean", "std", "interpolation"}
_HF_FIELDS = {
    "image_processor_type",
    "feature_extractor_type",
    "image_mean",
    "image_std",
    "do_resize",
    "do_normalize",
    "do_rescale",
    "size",
    "crop_size",
    "resample",
}
#: What the recipe file beside a model is named: the model's name with this in place of its
#: extension (see recipe_beside).
RECIPE_SUFFIX = ".preprocess.json"
# A URI's scheme, as Beam's FileSystems.get_scheme finds it.
_SCHEME = re.compile(r"([a-zA-Z][-a-zA-Z0-9+.]*)://")
# Pillow's Image.Resampling values, which a preprocessor_config.json's "resample" holds.
_PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
# Hugging Face processors whose ``crop_pct`` is ConvNeXt's: below a shortest edge of 384 the
# shorter side becomes int(shortest_edge / crop_pct), then the center crop of shortest_edge;
# from 384 on, the image is resized to shortest_edge x shortest_edge with no crop.
_CONVNEXT_FAMILIES = {"ConvNext", "ConvNextV2"}
_CONVNEXT_WARP_FROM = 384
# What a bare integer ``size`` means, by processor family (transformers' default_to_square).
_SQUARE_FAMILIES = {"ViT", "DeiT", "Beit", "Swin", "Swinv2"}


class PreprocessRecipe(TypedDict):
    """The keyword arguments of :func:`beam_ml_flink.preprocess` and
    :class:`beam_ml_flink.ImageClassifier` that a config file describes."""

    resize: int | tuple[int, int] | None
    crop: int
    crop_pct: float | None
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def read_preprocess_config(config: str | os.PathLike[str] | Mapping[str, Any]) -> PreprocessRecipe:
    """The preprocessing recipe of a timm or Hugging Face config.

    Use it as keyword arguments: ``ImageClassifier(model, **recipe)``,
    ``preprocess(images, **recipe)``; an argument given after it wins.

    Args:
        config: A path, or a URI of any Beam filesystem (``s3://``, ``gs://``), of a timm
            ``config.json`` (its ``pretrained_cfg``), a bare timm ``pretrained_cfg`` as JSON, or
            a Hugging Face ``preprocessor_config.json``; or such a config as a mapping (e.g.
            ``timm.models.get_pretrained_cfg(name).to_dict()``).

            timm: ``input_size``, ``interpolation``, ``crop_pct``, ``crop_mode`` ('center';
            'squash' with ``crop_pct`` 1.0), ``mean``, ``std``, with timm's defaults for those
            left out, as ``timm.data.resolve_data_config`` reads them (``input_size``, not
            ``test_input_size``). Hugging Face: ``size``, ``do_center_crop``, ``crop_size``,
            ``resample`` (Pillow's filter numbers), ``do_rescale``, ``rescale_factor``,
            ``do_normalize``, ``image_mean``, ``image_std``, and ConvNeXt's ``crop_pct``.

    Returns:
        ``resize``, ``crop``, ``crop_pct``, ``interpolation``, ``mean`` and ``std``.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: The file is not such a config, or a field asks for what the recipe cannot
            do (a crop mode it does not have, a non-square crop, other than three channels);
            the message names the file and the field.
    """
    source, data = _load(config)
    if "pretrained_cfg" in data and isinstance(data["pretrained_cfg"], Mapping):
        return _from_timm(data["pretrained_cfg"], source)
    keys = set(data)
    if keys & _HF_FIELDS:
        return _from_hugging_face(data, source)
    if keys & _TIMM_FIELDS:
        return _from_timm(data, source)
    raise ValueError(
        f"{source} is neither a timm config (input_size, crop_pct, mean, std, ...; in a "
        "config.json under pretrained_cfg) nor a Hugging Face preprocessor_config.json (size, "
        "image_mean, image_std, ...); give the model's own preprocessing config"
    )


def with_explicit(
    recipe: PreprocessRecipe,
    *,
    resize: int | tuple[int, int] | None = None,
    crop: int | None = None,
    crop_pct: float | None = None,
    interpolation: str | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> PreprocessRecipe:
    """``recipe`` with the values given explicitly (not None) in their place. ``resize`` and
    ``crop_pct`` are two ways to say how large the image becomes before the crop: the one given
    explicitly replaces the recipe's either way."""
    merged = PreprocessRecipe(**recipe)
    if resize is not None:
        merged["resize"] = resize
        merged["crop_pct"] = crop_pct
    elif crop_pct is not None:
        merged["resize"] = None
        merged["crop_pct"] = crop_pct
    if crop is not None:
        merged["crop"] = crop
    if interpolation is not None:
        merged["interpolation"] = interpolation
    if mean is not None:
        merged["mean"] = _triple(mean, "mean", "the values given")
    if std is not None:
        merged["std"] = _triple(std, "std", "the values given")
    return merged


def recipe_beside(model_path: str) -> str:
    """Where a model's recipe sits: its path with the extension replaced by
    ``.preprocess.json`` (``models/resnet50.pt2`` -> ``models/resnet50.preprocess.json``; a
    name without an extension gets it appended). ``python -m beam_ml_flink.compile`` writes the
    preprocessing config of a timm or Hugging Face model there."""
    head, slash, name = model_path.rpartition("/")
    stem = name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name
    return f"{head}{slash}{stem}{RECIPE_SUFFIX}"


def find_recipe_beside(model_path: str) -> str | None:
    """The recipe file beside ``model_path`` (see :func:`recipe_beside`) when there is one: a
    local file, or an object of a Beam filesystem beside a remote model."""
    candidate = recipe_beside(model_path)
    scheme = _SCHEME.match(candidate)
    if scheme is None or scheme.group(1) == "file":
        return candidate if os.path.isfile(candidate.removeprefix("file://")) else None
    from apache_beam.io.filesystems import FileSystems

    try:
        return candidate if FileSystems.exists(candidate) else None
    except Exception:  # noqa: BLE001 - a filesystem that cannot say: the model's load will
        return None


def _load(config: str | os.PathLike[str] | Mapping[str, Any]) -> tuple[str, Mapping[str, Any]]:
    if isinstance(config, Mapping):
        return "the config", config
    path = os.fspath(config)
    scheme = _SCHEME.match(path)
    if scheme is None or scheme.group(1) == "file":
        local = path.removeprefix("file://")
        if not os.path.isfile(local):
            raise FileNotFoundError(
                f"the preprocessing config {path} is not a file; give the model's config.json "
                "(timm) or preprocessor_config.json (Hugging Face)"
            )
        with open(local, "rb") as f:
            text = f.read()
    else:
        # Beam is imported only for a URI: reading a local file stays light.
        from apache_beam.io.filesystems import FileSystems

        with FileSystems.open(path) as f:
            text = f.read()
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(
            f"the preprocessing config {path} is not JSON ({e}); give the model's "
            "config.json or preprocessor_config.json"
        ) from None
    if not isinstance(data, dict):
        raise ValueError(
            f"the preprocessing config {path} holds a JSON {type(data).__name__}, not an object; "
            "give the model's config.json or preprocessor_config.json"
        )
    return f"the preprocessing config {path}", data


def _from_timm(cfg: Mapping[str, Any], source: str) -> PreprocessRecipe:
    def get(field: str) -> Any:
        value = cfg.get(field)
        # resolve_data_config takes a missing, None or empty field as its default.
        return _TIMM_DEFAULTS[field] if value is None or value == "" else value

    input_size = get("input_size")
    if not isinstance(input_size, (list, tuple)) or len(input_size) != 3:
        raise ValueError(
            f"{source}: input_size must be [channels, height, width], got {input_size!r}"
        )
    channels, height, width = (_positive_int(v, "input_size", source) for v in input_size)
    if channels != 3:
        raise ValueError(
            f"{source}: input_size has {channels} channels; only RGB (3) images are preprocessed"
        )
    interpolation = _interpolation(get("interpolation"), "interpolation", source)
    crop_pct = _crop_pct(get("crop_pct"), "crop_pct", source)
    crop_mode = get("crop_mode")
    mean = _triple(get("mean"), "mean", source)
    std = _triple(get("std"), "std", source)
    if crop_mode == "squash":
        # timm: Resize((floor(h / crop_pct), floor(w / crop_pct))), then CenterCrop((h, w)).
        if crop_pct != 1.0:
            raise ValueError(
                f"{source}: crop_mode 'squash' with crop_pct {crop_pct} squashes to a larger "
                "size and then crops, which this recipe cannot do (it squashes with no crop); "
                "only crop_mode 'squash' with crop_pct 1.0, or crop_mode 'center', is read"
            )
        return PreprocessRecipe(
            resize=(height, width),
            crop=min(height, width),
            crop_pct=None,
            interpolation=interpolation,
            mean=mean,
            std=std,
        )
    if crop_mode != "center":
        what = "pads the image to keep all of it" if crop_mode == "border" else "is not timm's"
        raise ValueError(
            f"{source}: crop_mode {crop_mode!r} {what}, which this recipe cannot do; it "
            "reads crop_mode 'center', and 'squash' with crop_pct 1.0"
        )
    if height != width:
        raise ValueError(
            f"{source}: input_size {height}x{width} is not square; crop_mode 'center' is read "
            "for a square input_size only"
        )
    return PreprocessRecipe(
        resize=None,
        crop=height,
        crop_pct=crop_pct,
        interpolation=interpolation,
        mean=mean,
        std=std,
    )


def _from_hugging_face(cfg: Mapping[str, Any], source: str) -> PreprocessRecipe:
    family = _family(cfg)

    def flag(field: str, default: bool) -> bool:
        value = cfg.get(field, default)
        if not isinstance(value, bool):
            raise ValueError(f"{source}: {field} must be true or false, got {value!r}")
        return value

    def required(field: str) -> Any:
        if cfg.get(field) is None:
            raise ValueError(
                f"{source}: {field} is missing; the processor's own default is not known here, "
                f"so write {field} into the file"
            )
        return cfg[field]

    if not flag("do_resize", True):
        raise ValueError(
            f"{source}: do_resize is false; images of every size would need to reach the model "
            "as they are, and this recipe always resizes"
        )
    if cfg.get("do_pad"):
        raise ValueError(f"{source}: do_pad is true; this recipe does not pad images")
    interpolation = _resample(required("resample"), source)
    size = _size(required("size"), family, source)
    do_center_crop = flag("do_center_crop", False)
    crop_size = None
    if do_center_crop:
        crop_size = _square(required("crop_size"), "crop_size", source)

    resize: int | tuple[int, int] | None
    crop_pct: float | None = None
    if family in _CONVNEXT_FAMILIES and "shortest_edge" in size:
        edge = size["shortest_edge"]
        if edge < _CONVNEXT_WARP_FROM:
            crop_pct = _crop_pct(required("crop_pct"), "crop_pct", source)
            resize, crop = None, edge
        else:
            resize, crop = (edge, edge), edge
        if do_center_crop:
            raise ValueError(
                f"{source}: do_center_crop is true on a ConvNeXt processor, whose resize already "
                "crops (crop_pct); this recipe crops once"
            )
    elif "crop_pct" in cfg and cfg["crop_pct"] is not None:
        raise ValueError(
            f"{source}: crop_pct is read for ConvNeXt's processors only (its meaning differs "
            f"between processors); this one is {family or 'not named'}"
        )
    elif "shortest_edge" in size:
        if crop_size is None:
            raise ValueError(
                f"{source}: size is a shortest_edge with do_center_crop false, which leaves "
                "images of different shapes; this recipe needs a center crop (do_center_crop "
                "and crop_size) after a shortest_edge"
            )
        resize, crop = size["shortest_edge"], crop_size
    else:
        height, width = size["height"], size["width"]
        if crop_size is not None and (crop_size, crop_size) != (height, width):
            raise ValueError(
                f"{source}: size {height}x{width} followed by a center crop of crop_size "
                f"{crop_size} squashes and then crops, which this recipe cannot do; it squashes "
                "to size with no crop, or resizes the shorter side (size: shortest_edge) and "
                "crops"
            )
        resize, crop = (height, width), min(height, width)

    mean, std = _normalization(cfg, source, flag, required)
    return PreprocessRecipe(
        resize=resize,
        crop=crop,
        crop_pct=crop_pct,
        interpolation=interpolation,
        mean=mean,
        std=std,
    )


def _normalization(
    cfg: Mapping[str, Any], source: str, flag: Any, required: Any
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """mean and std of a Normalize after the core's /255 that give Hugging Face's
    ``(pixel * rescale_factor - image_mean) / image_std``: both divided by
    ``255 * rescale_factor`` (1 with the usual 1/255; without a rescale the factor is 1)."""
    factor = 1.0
    if flag("do_rescale", True):
        rescale_factor = cfg.get("rescale_factor", 1 / 255)
        if (
            isinstance(rescale_factor, bool)
            or not isinstance(rescale_factor, (int, float))
            or not rescale_factor > 0
            or not math.isfinite(rescale_factor)
        ):
            raise ValueError(
                f"{source}: rescale_factor must be a positive number, got {rescale_factor!r}"
            )
        factor = float(rescale_factor)
    scale = 1.0 if math.isclose(255.0 * factor, 1.0, rel_tol=1e-12) else 255.0 * factor
    if flag("do_normalize", True):
        mean = _triple(required("image_mean"), "image_mean", source)
        std = _triple(required("image_std"), "image_std", source)
    else:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    if scale == 1.0:
        return mean, std
    return (
        (mean[0] / scale, mean[1] / scale, mean[2] / scale),
        (std[0] / scale, std[1] / scale, std[2] / scale),
    )


def _family(cfg: Mapping[str, Any]) -> str:
    """The model family of a processor's type: 'ConvNext' of 'ConvNextImageProcessorFast'."""
    name = cfg.get("image_processor_type") or cfg.get("feature_extractor_type") or ""
    name = str(name)
    for suffix in ("Pil", "Fast", "ImageProcessor", "FeatureExtractor"):
        name = name.removesuffix(suffix)
    return name


def _size(value: Any, family: str, source: str) -> dict[str, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        # An integer is the older spelling, read as transformers' get_size_dict reads it for
        # this processor: the shortest edge for ConvNeXt, a square for ViT and its kind.
        side = _positive_int(value, "size", source)
        if family in _CONVNEXT_FAMILIES:
            return {"shortest_edge": side}
        if family in _SQUARE_FAMILIES:
            return {"height": side, "width": side}
        raise ValueError(
            f"{source}: size is the integer {value}, which means the shortest edge for some "
            'processors and a square for others; write it as {"shortest_edge": N} or '
            '{"height": N, "width": N}'
        )
    if isinstance(value, Mapping):
        keys = {k for k, v in value.items() if v is not None}
        if keys == {"shortest_edge"}:
            return {"shortest_edge": _positive_int(value["shortest_edge"], "size", source)}
        if keys == {"height", "width"}:
            return {k: _positive_int(value[k], "size", source) for k in ("height", "width")}
    raise ValueError(
        f'{source}: size {value!r} is not read; it must be {{"shortest_edge": N}} or '
        '{"height": H, "width": W} (longest_edge and max sizes keep images of different '
        "shapes, which this recipe does not)"
    )


def _square(value: Any, field: str, source: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return _positive_int(value, field, source)
    if isinstance(value, Mapping) and set(value) >= {"height", "width"}:
        height = _positive_int(value["height"], field, source)
        width = _positive_int(value["width"], field, source)
        if height == width:
            return height
        raise ValueError(
            f"{source}: {field} {height}x{width} is not square; the center crop is square"
        )
    raise ValueError(f'{source}: {field} must be {{"height": N, "width": N}}, got {value!r}')


def _resample(value: Any, source: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and value in _PIL_RESAMPLE:
        return _PIL_RESAMPLE[value]
    if isinstance(value, str):
        return _interpolation(value, "resample", source)
    raise ValueError(
        f"{source}: resample {value!r} is not one of Pillow's filters (0 nearest, 1 lanczos, "
        "2 bilinear, 3 bicubic, 4 box, 5 hamming)"
    )


def _interpolation(value: Any, field: str, source: str) -> str:
    name = str(value).strip().lower()
    if name in INTERPOLATIONS:
        return name
    raise ValueError(
        f"{source}: {field} {value!r} is not a filter this recipe has; it takes "
        f"{', '.join(INTERPOLATIONS)}"
    )


def _crop_pct(value: Any, field: str, source: str) -> float:
    if (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and 0 < value <= 1
        and math.isfinite(value)
    ):
        return float(value)
    raise ValueError(f"{source}: {field} must be above 0 and at most 1, got {value!r}")


def _triple(value: Any, field: str, source: str) -> tuple[float, float, float]:
    if isinstance(value, (list, tuple)) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
    ):
        if len(value) == 3:
            return (float(value[0]), float(value[1]), float(value[2]))
        raise ValueError(
            f"{source}: {field} has {len(value)} values; only RGB images are preprocessed, "
            "so it needs three, one per channel"
        )
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        raise ValueError(
            f"{source}: {field} is the single number {value}; write it once per channel, as "
            "three numbers"
        )
    raise ValueError(f"{source}: {field} must be three numbers, one per channel, got {value!r}")


def _positive_int(value: Any, field: str, source: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    raise ValueError(f"{source}: {field} must hold positive integers, got {value!r}")


__all__ = [
    "RECIPE_SUFFIX",
    "PreprocessRecipe",
    "find_recipe_beside",
    "read_preprocess_config",
    "recipe_beside",
    "with_explicit",
]
