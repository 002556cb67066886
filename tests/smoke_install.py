"""Run by `make test-install` in a fresh venv holding only the wheel and what it pulls in:
the extension must find libtorch by itself (no `import torch` first, no LD_LIBRARY_PATH)."""

import sys
from pathlib import Path

import beam_ml_flink as bmf

data = Path(sys.argv[1])
assert "torch" not in sys.modules, "beam_ml_flink must not need `import torch`"
classifier = bmf.ImageClassifier(data / "models" / "tiny.pt")
photo = (data / "images" / "chelsea.png").read_bytes()
(result,) = classifier.classify([photo], top_k=3)
assert result.ok and len(result.top_k) == 3, result
assert bmf.preprocess([photo]).shape == (1, 3, 224, 224)
print(f"installed wheel works: {result}")

# The [beam] extra: a Beam pipeline with the handler in RunInference, on the DirectRunner.
import apache_beam as beam  # noqa: E402
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference  # noqa: E402
from apache_beam.testing.util import assert_that, equal_to  # noqa: E402

from beam_ml_flink.beam import ImageClassifierHandler  # noqa: E402

names = ["chelsea.png", "coffee.png"]
handler = ImageClassifierHandler(str(data / "models" / "tiny.pt"), top_k=1)
expected = [
    (name, r.top_k[0][0])
    for name, r in zip(
        names,
        classifier.classify([(data / "images" / name).read_bytes() for name in names], top_k=1),
        strict=True,
    )
]
with beam.Pipeline() as pipeline:
    top1 = (
        pipeline
        | beam.Create([(name, (data / "images" / name).read_bytes()) for name in names])
        | RunInference(KeyedModelHandler(handler))
        | beam.MapTuple(lambda name, result: (name, result.inference.top_k[0][0]))
    )
    assert_that(top1, equal_to(expected))
print("installed wheel runs in a Beam pipeline")
