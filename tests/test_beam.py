"""The Beam ModelHandler and the ClassifyImages transform, against the torch reference."""

from __future__ import annotations

import pickle
import time
from pathlib import Path

import apache_beam as beam
import numpy as np
import pytest
import torch
from apache_beam.ml.inference.base import PredictionResult
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

import beam_ml_flink as bmf
from beam_ml_flink.beam import ImageClassifierHandler
from beam_ml_flink.pipeline import ClassifyImages, Prediction, failure_json, prediction_json
from conftest import (
    DEMO_MEAN,
    DEMO_MODEL,
    DEMO_STD,
    IMAGENET_LABELS,
    IMAGES,
    reference,
    torch_top1,
)


def demo_handler(**options) -> ImageClassifierHandler:
    return ImageClassifierHandler(
        str(DEMO_MODEL), mean=DEMO_MEAN, std=DEMO_STD, labels=str(IMAGENET_LABELS), **options
    )


def test_handler_is_picklable_config_and_batches_as_asked() -> None:
    handler = demo_handler(min_batch_size=4, max_batch_size=16, model_copies=2)
    clone = pickle.loads(pickle.dumps(handler))
    assert clone.batch_elements_kwargs() == {"min_batch_size": 4, "max_batch_size": 16}
    assert clone.share_model_across_processes() and clone.model_copies() == 2
    assert not demo_handler().share_model_across_processes()
    assert demo_handler(large_model=True).share_model_across_processes()
    assert demo_handler().model_copies() == 1
    assert clone.get_metrics_namespace() == "BeamML_BeamMLFlink"
    assert clone.get_num_bytes([b"abc", b"de"]) == 5


def test_handler_options_are_checked() -> None:
    with pytest.raises(ValueError, match="top_k must be at least 1"):
        demo_handler(top_k=0)
    assert demo_handler(device="GPU")._device == "cuda"
    assert demo_handler(device="CPU")._device == "cpu"


def test_the_precision_reaches_the_model() -> None:
    handler = pickle.loads(pickle.dumps(demo_handler(precision="bf16")))
    assert handler.load_model().precision == "bf16"
    assert demo_handler().load_model().precision == "fp32"


def test_run_inference_is_one_result_per_image_in_order(
    photos: dict[str, bytes], demo_top1: dict[str, int]
) -> None:
    handler = demo_handler(top_k=3)
    model = handler.load_model()
    assert model.device == "cpu" and model.num_classes == 1000
    batch = [*photos.values(), b"", b"\x00garbage"]
    results = list(handler.run_inference(batch, model))
    assert len(results) == len(batch)
    for data, result in zip(batch, results, strict=True):
        assert isinstance(result, PredictionResult)
        assert result.example is data and result.model_id == str(DEMO_MODEL)
    for name, result in zip(photos, results, strict=False):
        assert result.inference.ok and len(result.inference.top_k) == 3
        assert result.inference.top_k[0][0] == demo_top1[name], name
    assert "empty" in results[-2].inference.error
    assert "unrecognised image format" in results[-1].inference.error


def test_update_model_path_is_the_model_beam_loads_next(
    photos: dict[str, bytes], tmp_path: Path
) -> None:
    # What RunInference does when its model_metadata_pcoll side input names a new model.
    tiny = tmp_path / "tiny.pt"
    torch.jit.save(_three_classes(), str(tiny))
    handler = ImageClassifierHandler(str(DEMO_MODEL), mean=DEMO_MEAN, std=DEMO_STD)
    handler.update_model_path(str(tiny))
    model = handler.load_model()
    assert str(model.model_path) == str(tiny) and model.num_classes == 3
    result = next(iter(handler.run_inference([photos["china.jpg"]], model)))
    assert result.model_id == str(tiny) and result.inference.ok


def _three_classes() -> torch.jit.ScriptModule:
    class ThreeClasses(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean(dim=(2, 3))

    return torch.jit.script(ThreeClasses())


def test_a_watched_model_takes_over_and_a_bad_one_is_ignored(
    photos: dict[str, bytes], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "old.pt").write_bytes(b"there before the handler: not a new model")
    handler = ImageClassifierHandler(
        str(DEMO_MODEL),
        mean=DEMO_MEAN,
        std=DEMO_STD,
        watch_models=str(models / "*.pt"),
        poll_interval=0.01,
    )
    handler = pickle.loads(pickle.dumps(handler))
    model = handler.load_model()
    image = [photos["china.jpg"]]
    first = next(iter(handler.run_inference(image, model)))
    assert first.model_id == str(DEMO_MODEL) and first.inference.ok

    torch.jit.save(_three_classes(), str(models / "new.pt"))
    time.sleep(0.05)
    second = next(iter(handler.run_inference(image, model)))
    assert second.model_id == str(models / "new.pt")
    expected = reference(photos["china.jpg"], mean=DEMO_MEAN, std=DEMO_STD).mean(dim=(1, 2))
    assert second.inference.top_k[0][0] == int(expected.argmax())

    time.sleep(0.05)
    (models / "newer.pt").write_bytes(b"half a model")
    time.sleep(0.05)
    with caplog.at_level("ERROR"):
        third = next(iter(handler.run_inference(image, model)))
    assert third.model_id == str(models / "new.pt") and third.inference.ok
    assert "the new model" in caplog.text and "newer.pt could not be loaded" in caplog.text


def test_classification_pickles_and_compares() -> None:
    ok = bmf.Classification([(281, "tabby", 0.5), (282, None, 0.25)])
    failed = bmf.Classification(error="the image is empty")
    for value in (ok, failed):
        assert pickle.loads(pickle.dumps(value)) == value
    assert ok.ok and not failed.ok and failed.top_k == [] and ok.error is None
    assert ok != failed
    with pytest.raises(ValueError, match="either top_k or an error"):
        bmf.Classification([(1, None, 1.0)], error="both")


def test_pipeline_gives_reference_top1_and_every_failure(
    demo_top1: dict[str, int], bad_files: dict[Path, str]
) -> None:
    uris = [str(IMAGES / name) for name in demo_top1] + [str(p) for p in bad_files]
    expected_top1 = [(str(IMAGES / name), index) for name, index in demo_top1.items()]

    def has_reasons(failures: list[tuple[str, str]]) -> None:
        assert sorted(uri for uri, _ in failures) == sorted(str(p) for p in bad_files)
        for uri, reason in failures:
            assert reason.startswith(uri + ": ")
            assert bad_files[Path(uri)] in reason, reason

    with test_pipeline.TestPipeline() as p:
        classified = (
            p | beam.Create(uris) | ClassifyImages(demo_handler(min_batch_size=4, max_batch_size=4))
        )
        top1 = classified.predictions | beam.Map(lambda p: (p.image, p.classification.top_k[0][0]))
        assert_that(top1, equal_to(expected_top1), label="top-1 is the reference")
        assert_that(classified.failures, has_reasons, label="failures have reasons")


def test_output_lines() -> None:
    classification = bmf.Classification([(281, "tabby", 0.8312345678), (285, None, 0.1)])
    assert prediction_json(Prediction("a.jpg", classification, "m.pt")) == (
        '{"image": "a.jpg", "top_k": [{"index": 281, "label": "tabby", "score": 0.831235}, '
        '{"index": 285, "label": null, "score": 0.1}], "model": "m.pt"}'
    )
    assert failure_json(("b.jpg", "b.jpg: why")) == '{"image": "b.jpg", "error": "b.jpg: why"}'


def test_torchvision_state_dict_is_traced_and_matches_torch(
    tmp_path: Path, photos: dict[str, bytes]
) -> None:
    from torchvision import models

    torch.manual_seed(0)
    model = models.mobilenet_v2(num_classes=1000).eval()
    state_dict = tmp_path / "mobilenet_v2.pth"
    torch.save(model.state_dict(), state_dict)
    traced = tmp_path / "reference.pt"
    torch.jit.save(torch.jit.trace(model, torch.zeros(1, 3, 224, 224)), traced)
    expected = torch_top1(photos, traced, resize=(224, 224))

    handler = ImageClassifierHandler(str(state_dict), model_name="mobilenet_v2", resize=(224, 224))
    classifier = handler.load_model()
    results = handler.run_inference(list(photos.values()), classifier)
    assert [r.inference.top_k[0][0] for r in results] == list(expected.values())
    # An untrained network's logits are tiny: compare them relative to their spread.
    batch = torch.stack([reference(data, resize=(224, 224)) for data in photos.values()])
    with torch.no_grad():
        torch_logits = model(batch).numpy()
    ours = classifier.logits(list(photos.values()))
    assert np.abs(ours - torch_logits).max() < 0.05 * torch_logits.std()

    with pytest.raises(ValueError, match="unknown torchvision model 'mobilenet_v9'"):
        ImageClassifierHandler(str(state_dict), model_name="mobilenet_v9").load_model()
    with pytest.raises(ValueError, match="does not fit torchvision's resnet18"):
        ImageClassifierHandler(str(state_dict), model_name="resnet18").load_model()


def test_model_shared_across_processes_gives_the_same_answers(
    demo_top1: dict[str, int],
) -> None:
    # model_copies puts the model in one server process behind a proxy (Beam's
    # multi_process_shared): the classifier's results must survive pickling across it.
    expected = [(str(IMAGES / name), index) for name, index in demo_top1.items()]
    with test_pipeline.TestPipeline() as p:
        classified = (
            p
            | beam.Create([uri for uri, _ in expected])
            | ClassifyImages(demo_handler(model_copies=1))
        )
        top1 = classified.predictions | beam.Map(lambda p: (p.image, p.classification.top_k[0][0]))
        assert_that(top1, equal_to(expected))
