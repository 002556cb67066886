"""Model faults: a model that cannot serve stops the command before the pipeline with its reason;
a forward pass that fails is a failure for the images of that pass; the interpreter lives on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from test_cli import classify, image_list, read_jsonl

import beam_ml_flink as bmf
from conftest import IMAGENET_LABELS, IMAGES, TINY_MODEL, encode

pytestmark = pytest.mark.slow


class RefusesWhite(torch.nn.Module):
    """Ten logits per image; raises when an image of the pass is (nearly) all white."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x.flatten(1).mean(1) > 2.0).any()):
            raise RuntimeError("this model refuses white images")
        return x.mean((2, 3)).repeat(1, 4)[:, :10]


@pytest.fixture(scope="module")
def faulty_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    models = {
        "not TorchScript": root / "state_dict.pt",
        "not a classifier": root / "flat.pt",
        "another input size": root / "fixed.pt",
        "refuses white": root / "refuses_white.pt",
    }
    torch.save(torch.nn.Linear(2, 2).state_dict(), models["not TorchScript"])
    flat = torch.jit.trace(torch.nn.Flatten(0), torch.zeros(1, 3, 8, 8))
    torch.jit.save(flat, str(models["not a classifier"]))
    linear = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 4))
    torch.jit.save(
        torch.jit.trace(linear, torch.zeros(1, 3, 32, 32)), str(models["another input size"])
    )
    torch.jit.save(torch.jit.script(RefusesWhite()), str(models["refuses white"]))
    return models


@pytest.mark.parametrize(
    ("model", "labels", "message"),
    [
        ("not TorchScript", None, "it is a torch.save archive (a state dict or a pickled module)"),
        ("not a classifier", None, "must return logits of shape [1, classes]"),
        ("another input size", None, "test forward on one 3x224x224 image failed"),
        ("labels", IMAGENET_LABELS, "returns 10 classes but the labels have 1000 names"),
    ],
)
def test_a_model_that_cannot_serve_stops_the_command_with_its_reason(
    faulty_models: dict[str, Path], tmp_path: Path, model: str, labels: Path | None, message: str
) -> None:
    path = TINY_MODEL if model == "labels" else faulty_models[model]
    run = classify(
        f"--input={image_list(tmp_path, [str(IMAGES / 'china.jpg')])}",
        f"--output={tmp_path / 'out' / 'results'}",
        f"--model_path={path}",
        *([f"--labels={labels}"] if labels else []),
    )
    assert run.returncode == 2, run.stderr[-3000:]
    assert message in run.stderr
    assert "Traceback" not in run.stderr, "the reason, not a traceback"
    assert not (tmp_path / "out").exists(), "the pipeline must not start"


def test_a_failed_forward_fails_the_images_of_that_pass_only(
    faulty_models: dict[str, Path],
) -> None:
    photo = (IMAGES / "china.jpg").read_bytes()
    white = encode(Image.new("RGB", (300, 300), "white"), "PNG")
    classifier = bmf.ImageClassifier(faulty_models["refuses white"], forward_batch_size=2)
    results = classifier.classify([photo, photo, white, photo, photo], top_k=1)
    assert [r.ok for r in results] == [True, True, False, False, True]
    for failed in results[2:4]:
        assert "inference failed on a batch of 2 image(s)" in failed.error
        assert "this model refuses white images" in failed.error
    with pytest.raises(bmf.InferenceError, match="refuses white images"):
        classifier.logits([white])
    # The classifier still serves afterwards.
    assert classifier.classify([photo], top_k=1)[0].ok


def test_a_failed_forward_in_the_pipeline_is_a_failure_record(
    faulty_models: dict[str, Path], tmp_path: Path
) -> None:
    white = tmp_path / "white.png"
    white.write_bytes(encode(Image.new("RGB", (300, 300), "white"), "PNG"))
    photos = [str(IMAGES / "china.jpg"), str(IMAGES / "flower.jpg")]
    run = classify(
        f"--input={image_list(tmp_path, [*photos, str(white)])}",
        f"--output={tmp_path / 'out' / 'results'}",
        f"--model_path={faulty_models['refuses white']}",
        "--batch_size=1",
    )
    assert run.returncode == 0, run.stderr[-3000:]
    predictions = read_jsonl(sorted((tmp_path / "out").glob("results-*.jsonl")))
    failures = read_jsonl(sorted((tmp_path / "out").glob("results_failures-*.jsonl")))
    assert sorted(r["image"] for r in predictions) == sorted(photos)
    assert [r["image"] for r in failures] == [str(white)]
    assert "this model refuses white images" in failures[0]["error"]


def test_no_panic_or_libtorch_error_kills_the_interpreter(faulty_models: dict[str, Path]) -> None:
    """Every fault above, in one child interpreter that must exit normally afterwards."""
    script = f"""
import beam_ml_flink as bmf
for path in {[str(p) for p in faulty_models.values()]!r}:
    try:
        c = bmf.ImageClassifier(path, forward_batch_size=1)
        c.classify([b"", b"\\xff\\xd8\\xff", open({str(IMAGES / "china.jpg")!r}, "rb").read()])
    except bmf.Error as e:
        print(type(e).__name__)
print("alive")
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split() == ["ModelLoadError"] * 3 + ["alive"]
