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
