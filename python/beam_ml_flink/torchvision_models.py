"""torchvision state dicts (the original dataflow-ml-starter flags) turned into TorchScript.

The Rust core runs TorchScript or AOTInductor packages, not state dicts: a
``--model_state_dict_path`` + ``--model_name`` pair is built with torchvision and traced once per
worker, then cached by content (``python -m beam_ml_flink.compile --model_name ...
--model_state_dict_path ...`` makes a package of it instead, ahead of time).
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile

NUM_CLASSES = 1000


def trace_state_dict(model_name: str, state_dict_path: str, input_size: tuple[int, int]) -> str:
    """Builds torchvision's ``model_name``, loads ``state_dict_path`` and saves it traced.

    Args:
        model_name: A torchvision classification model (``torchvision.models.list_models``).
        state_dict_path: A state dict saved with ``torch.save(model.state_dict(), ...)``, local or
            on any Beam filesystem.
        input_size: (height, width) of the preprocessed images the trace is made with.

    Returns:
        The path of the TorchScript file, in the temporary directory.

    Raises:
        ValueError: torchvision has no such model, or the state dict does not fit it.
        FileNotFoundError: The state dict does not exist.
    """
    import torch
    from apache_beam.io.filesystems import FileSystems

    try:
        from torchvision import models
    except ImportError as e:
        raise ImportError(
            "--model_name needs torchvision to build the model: pip install torchvision"
        ) from e

    classifiers = models.list_models(module=models)
    if model_name not in classifiers:
        raise ValueError(
            f"unknown torchvision model {model_name!r}; choose one of: {', '.join(classifiers)}"
        )
    if not FileSystems.exists(state_dict_path):
        raise FileNotFoundError(f"model state dict {state_dict_path} does not exist")
    with FileSystems.open(state_dict_path) as f:
        data = f.read()
    key = hashlib.sha256(data + f"{model_name}{input_size}{torch.__version__}".encode())
    traced = os.path.join(
        tempfile.gettempdir(), "beam_ml_flink", f"{model_name}-{key.hexdigest()[:16]}.pt"
    )
    if os.path.exists(traced):
        return traced

    model = models.get_model(model_name, weights=None, num_classes=NUM_CLASSES)
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load raises pickle, zip and runtime errors alike
        raise ValueError(
            f"torch.load cannot read the state dict {state_dict_path} "
            f"({str(e).strip().splitlines()[0]}); save it with "
            "torch.save(model.state_dict(), path)"
        ) from e
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise ValueError(
            f"the state dict {state_dict_path} does not fit torchvision's {model_name}: {e}"
        ) from e
    model.eval()
    with torch.no_grad():
        module = torch.jit.trace(model, torch.zeros(1, 3, *input_size))
    os.makedirs(os.path.dirname(traced), exist_ok=True)
    partial = f"{traced}.{os.getpid()}.partial"
    torch.jit.save(module, partial)
    os.replace(partial, traced)
    return traced
