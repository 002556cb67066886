"""AOTInductor packages (.pt2) in the Rust runtime, and the compile command that makes them.

Expected values come from torch itself: its own package loader (``aoti_load_package``) and the
eager module the package was compiled from, on the same tensors.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

import beam_ml_flink as bmf
from conftest import DEMO_MEAN, DEMO_MODEL, DEMO_STD, IMAGENET_LABELS, IMAGES, MODELS, ROOT

sys.path.insert(0, str(ROOT / "data"))
import make_demo  # noqa: E402

DEMO_PACKAGE = MODELS / "efficientnet_lite0.pt2"
DEMO_PACKAGE_INT8 = MODELS / "efficientnet_lite0_int8.pt2"
SIZE = 64  # the tiny model's input side in these tests: small, so compiling is quick
# The package and torch's loader run the same compiled kernels; eager torch differs by rounding.
EAGER_ATOL = 1e-4


def photos() -> list[bytes]:
    return [p.read_bytes() for p in sorted(IMAGES.iterdir())]


def tiny_tensors(images: list[bytes]) -> np.ndarray:
    return bmf.preprocess(images, resize=SIZE, crop=SIZE)


def run_compile(*args: str) -> subprocess.CompletedProcess[str]:
    """`python -m beam_ml_flink.compile ARGS`, as a user runs it (data/ importable, for
    make_demo's factories)."""
    return subprocess.run(
        [sys.executable, "-m", "beam_ml_flink.compile", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "data")},
        timeout=600,
    )


def compile_tiny(output: Path, *extra: str) -> Path:
    """The compile command on the tiny model; returns the package path."""
    run = run_compile(
        "--factory", "make_demo:tiny", "--input_size", str(SIZE), "--output", str(output), *extra
    )
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    path = Path(run.stdout.strip())
    assert path.is_file(), run.stdout
    return path


@pytest.fixture(scope="module")
def package_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("packages")


@pytest.fixture(scope="module")
def tiny_package(package_dir: Path) -> Path:
    return compile_tiny(package_dir)


@pytest.fixture(scope="module")
def static_package(package_dir: Path) -> Path:
    """The tiny model exported with a static batch of 4 (no dynamic_shapes), compiled by torch."""
    example = torch.zeros(4, 3, SIZE, SIZE)
    program = torch.export.export(make_demo.tiny(), (example,))
    path = package_dir / "static-batch-4.pt2"
    torch._inductor.aoti_compile_and_package(program, package_path=str(path))
    return path


def demo_packages() -> tuple[Path, Path]:
    missing = [p for p in (DEMO_PACKAGE, DEMO_PACKAGE_INT8) if not p.exists()]
    if missing:
        pytest.fail(f"missing {missing}: run `make models` (make test does)")
    return DEMO_PACKAGE, DEMO_PACKAGE_INT8


def test_package_logits_equal_torch_loader_and_eager(tiny_package: Path) -> None:
    images = photos()
    tensors = tiny_tensors(images)
    torch_loader = torch._inductor.aoti_load_package(str(tiny_package))
    eager = make_demo.tiny()
    for forward_batch_size in (1, 3, None):
        classifier = bmf.ImageClassifier(
            tiny_package, resize=SIZE, crop=SIZE, forward_batch_size=forward_batch_size
        )
        assert classifier.model_format == "aoti"
        ours = classifier.logits(images)
        with torch.no_grad():
            theirs = torch_loader(torch.from_numpy(tensors)).numpy()
            expected = eager(torch.from_numpy(tensors)).numpy()
        # Same compiled kernels as torch's own loader: bit for bit, whatever the batching.
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)
        np.testing.assert_allclose(ours, expected, rtol=0, atol=EAGER_ATOL)
    # A batch of one: the package takes it as it is (our packages have no lower bound of 2).
    one = bmf.ImageClassifier(tiny_package, resize=SIZE, crop=SIZE).logits(images[:1])
    np.testing.assert_allclose(one, expected[:1], rtol=0, atol=EAGER_ATOL)


def test_static_batch_package_is_padded_not_crashed(static_package: Path) -> None:
    # Run on another batch size, this package would read out of bounds (SIGSEGV): the runtime
    # turns on the package's input checks, learns its batch size and pads the passes.
    images = photos()
    expected = make_demo.tiny()(torch.from_numpy(tiny_tensors(images))).detach().numpy()
    for forward_batch_size in (1, 3, 8, None):
        classifier = bmf.ImageClassifier(
            static_package, resize=SIZE, crop=SIZE, forward_batch_size=forward_batch_size
        )
        ours = classifier.logits(images)
        np.testing.assert_allclose(ours, expected, rtol=0, atol=EAGER_ATOL)
        results = classifier.classify(images[:5], top_k=1)
        assert [r.top_k[0][0] for r in results] == list(expected[:5].argmax(1))


def test_wrong_input_size_is_an_error_not_a_crash(tiny_package: Path) -> None:
    # The tiny model pools, so only the package's static input check stands between a wrong
    # size and its kernels.
    with pytest.raises(bmf.ModelLoadError, match=r"unmatched dim value at 2, expected: 64"):
        bmf.ImageClassifier(tiny_package, resize=SIZE + 8, crop=SIZE + 8)


def test_torchscript_named_pt2_loads_as_torchscript(tmp_path: Path) -> None:
    renamed = tmp_path / "model.pt2"
    renamed.write_bytes((MODELS / "tiny.pt").read_bytes())
    classifier = bmf.ImageClassifier(renamed, resize=SIZE, crop=SIZE)
    assert classifier.model_format == "torchscript"
    expected = bmf.ImageClassifier(MODELS / "tiny.pt", resize=SIZE, crop=SIZE).logits(photos())
    np.testing.assert_array_equal(classifier.logits(photos()), expected)


def test_corrupt_package_is_a_clear_error(tiny_package: Path, tmp_path: Path) -> None:
    data = tiny_package.read_bytes()
    truncated = tmp_path / "truncated.pt2"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(bmf.ModelLoadError, match=r"truncated\.pt2.*nor as an AOTInductor package"):
        bmf.ImageClassifier(truncated, resize=SIZE, crop=SIZE)
    # A zip whose compiled model library is garbage.
    broken = tmp_path / "broken.pt2"
    rewrite(tiny_package, broken, lambda name, body: b"\0" * 64 if name.endswith(".so") else body)
    with pytest.raises(bmf.ModelLoadError, match=r"cannot load the compiled model.*compile"):
        bmf.ImageClassifier(broken, resize=SIZE, crop=SIZE)


def test_exported_program_and_state_dict_say_what_to_do(tmp_path: Path) -> None:
    model = make_demo.tiny()
    exported = tmp_path / "exported.pt2"
    torch.export.save(torch.export.export(model, (torch.zeros(2, 3, SIZE, SIZE),)), exported)
    with pytest.raises(bmf.ModelLoadError, match=r"ExportedProgram.*beam_ml_flink\.compile"):
        bmf.ImageClassifier(exported)
    state = tmp_path / "weights.pt"
    torch.save(model.state_dict(), state)
    with pytest.raises(bmf.ModelLoadError, match=r"torch\.save archive"):
        bmf.ImageClassifier(state)


def absent_isa() -> str:
    """A vector instruction set inductor names that this CPU lacks."""
    flags = Path("/proc/cpuinfo").read_text().split()
    for isa, flag in (("AMX_TILE", "amx_tile"), ("AVX512_VNNI", "avx512_vnni")):
        if flag not in flags:
            return isa
    return "ASIMD"  # ARM's: never on x86


def rewrite(source: Path, target: Path, change) -> None:
    """A copy of the zip ``source`` with each entry's bytes passed through ``change``."""
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w") as zout:
        for item in zin.infolist():
            zout.writestr(item, change(item.filename, zin.read(item.filename)))


def with_metadata(source: Path, target: Path, key: str, value: str) -> None:
    import json

    def change(name: str, body: bytes) -> bytes:
        if not name.endswith("wrapper_metadata.json"):
            return body
        metadata = json.loads(body)
        metadata[key] = value
        return json.dumps(metadata).encode()

    rewrite(source, target, change)


def test_package_for_missing_cpu_instructions_is_refused(tiny_package: Path, tmp_path: Path):
    isa = absent_isa()
    foreign = tmp_path / "foreign.pt2"
    with_metadata(tiny_package, foreign, "AOTI_CPU_ISA", f"AVX2 {isa}")
    with pytest.raises(bmf.ModelLoadError) as raised:
        bmf.ImageClassifier(foreign, resize=SIZE, crop=SIZE)
    message = str(raised.value)
    assert f"CPU instructions this CPU lacks ({isa})" in message
    assert "compile the package again on this machine kind" in message
    cuda = tmp_path / "cuda.pt2"
    with_metadata(tiny_package, cuda, "AOTI_DEVICE_KEY", "cuda")
    with pytest.raises(bmf.ModelLoadError, match=r"compiled for the cuda.*device='cuda'"):
        bmf.ImageClassifier(cuda, resize=SIZE, crop=SIZE)


def test_package_refuses_half_precision(tiny_package: Path) -> None:
    with pytest.raises(bmf.ModelLoadError, match=r"precision it was compiled in.*fp32"):
        bmf.ImageClassifier(tiny_package, resize=SIZE, crop=SIZE, precision="fp16")


@pytest.mark.slow
def test_compile_reuses_a_package_by_content(tiny_package: Path, package_dir: Path) -> None:
    assert tiny_package.name.startswith("tiny-fp32-")
    run = run_compile(
        "--factory", "make_demo:tiny", "--input_size", str(SIZE), "--output", str(package_dir)
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == str(tiny_package)
    assert "reusing" in run.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--factory", "make_demo:tiny", "--int8"], "--int8 needs --calibration"),
        (["--model_name", "no_such_net"], "unknown torchvision model 'no_such_net'"),
        (["--factory", "make_demo"], "--factory takes module:function"),
        (["--exported_program", "/nonexistent.pt2"], "--exported_program /nonexistent.pt2 does"),
        (["--factory", "make_demo:tiny", "--input_size", "0"], "--input_size takes a side"),
    ],
)
@pytest.mark.slow
def test_compile_bad_command_lines(args: list[str], message: str, tmp_path: Path) -> None:
    run = run_compile("--output", str(tmp_path), *args)
    assert run.returncode == 2
    assert "Traceback" not in run.stderr
    assert message in run.stderr


@pytest.mark.slow
def test_compile_static_exported_program(tmp_path: Path) -> None:
    # Saved with its batch fixed at 4: compiled as saved, with a warning; the runtime pads.
    exported = tmp_path / "static.pt2"
    static = torch.export.export(make_demo.tiny(), (torch.zeros(4, 3, SIZE, SIZE),))
    torch.export.save(static, exported)
    run = run_compile(
        "--exported_program",
        str(exported),
        "--input_size",
        str(SIZE),
        "--output",
        str(tmp_path / "static-aoti.pt2"),
    )
    assert run.returncode == 0, run.stderr
    assert "warning: compiling the ExportedProgram as saved" in run.stderr
    images = photos()
    ours = bmf.ImageClassifier(run.stdout.strip(), resize=SIZE, crop=SIZE).logits(images)
    expected = make_demo.tiny()(torch.from_numpy(tiny_tensors(images))).detach().numpy()
    np.testing.assert_allclose(ours, expected, rtol=0, atol=EAGER_ATOL)


@pytest.mark.slow
def test_compile_int8_from_exported_program(tmp_path: Path) -> None:
    exported = tmp_path / "tiny-exported.pt2"
    batch = torch.export.Dim("batch")
    dynamic = torch.export.export(
        make_demo.tiny(), (torch.zeros(4, 3, SIZE, SIZE),), dynamic_shapes=({0: batch},)
    )
    torch.export.save(dynamic, exported)
    run = run_compile(
        "--exported_program",
        str(exported),
        "--input_size",
        str(SIZE),
        "--output",
        str(tmp_path / "out"),
        "--int8",
        "--calibration",
        str(IMAGES),
        "--resize",
        str(SIZE),
        "--crop",
        str(SIZE),
    )
    assert run.returncode == 0, run.stderr
    package = Path(run.stdout.strip())
    assert package.name.startswith("tiny-exported-int8-")
    images = photos()
    ours = bmf.ImageClassifier(package, resize=SIZE, crop=SIZE).logits(images)
    # Every batch size runs, and int8 stays near fp32.
    expected = make_demo.tiny()(torch.from_numpy(tiny_tensors(images))).detach().numpy()
    assert ours.shape == expected.shape
    assert np.abs(ours - expected).max() < 0.1 * np.abs(expected).max()


def crops(count: int) -> list[bytes]:
    """Real photos, cropped, scaled and flipped: the evaluation set of the int8 check."""
    import io

    rng = random.Random(1)
    sources = [Image.open(p).convert("RGB") for p in sorted(IMAGES.iterdir())]
    out = []
    for i in range(count):
        image = sources[i % len(sources)]
        scale = rng.uniform(0.6, 0.9)
        w, h = round(image.width * scale), round(image.height * scale)
        left, top = rng.randint(0, image.width - w), rng.randint(0, image.height - h)
        image = image.crop((left, top, left + w, top + h))
        if i % 2:
            image = ImageOps.mirror(image)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


@pytest.mark.slow
def test_demo_packages_agree_with_torchscript_and_int8_with_fp32() -> None:
    fp32, int8 = demo_packages()
    images = crops(96)
    recipe = dict(mean=DEMO_MEAN, std=DEMO_STD, labels=IMAGENET_LABELS)
    torchscript = bmf.ImageClassifier(DEMO_MODEL, **recipe).logits(images)
    package = bmf.ImageClassifier(fp32, **recipe)
    logits = package.logits(images)
    # torch's own loader on the same tensors: the same numbers.
    tensors = torch.from_numpy(bmf.preprocess(images, mean=DEMO_MEAN, std=DEMO_STD))
    loader = torch._inductor.aoti_load_package(str(fp32))
    with torch.no_grad():
        theirs = torch.cat([loader(part) for part in tensors.split(8)]).numpy()
    np.testing.assert_allclose(logits, theirs, rtol=0, atol=1e-5)
    assert (logits.argmax(1) == torchscript.argmax(1)).all()
    quantized = bmf.ImageClassifier(int8, **recipe).logits(images)
    agreement = (quantized.argmax(1) == logits.argmax(1)).mean()
    print(f"int8 top-1 agreement with fp32 on {len(images)} photos: {agreement:.1%}")
    assert agreement >= 0.9


@pytest.mark.slow
def test_cli_classifies_with_a_package_as_with_torchscript(tmp_path: Path) -> None:
    fp32, _ = demo_packages()
    norm = ["--mean=0.5,0.5,0.5", "--std=0.5,0.5,0.5", f"--labels={IMAGENET_LABELS}"]
    run = subprocess.run(
        [sys.executable, "-m", "beam_ml_flink", f"--input={IMAGES}", f"--model_path={fp32}"]
        + [f"--output={tmp_path / 'out' / 'r'}", "--runner=DirectRunner", *norm],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    import json

    rows = [
        json.loads(line)
        for f in sorted((tmp_path / "out").glob("r-*.jsonl"))
        for line in f.read_text().splitlines()
    ]
    paths = sorted(IMAGES.iterdir())
    reference = bmf.ImageClassifier(DEMO_MODEL, mean=DEMO_MEAN, std=DEMO_STD)
    expected = reference.logits([p.read_bytes() for p in paths]).argmax(1)
    assert {r["image"]: r["top_k"][0]["index"] for r in rows} == {
        str(p): int(i) for p, i in zip(paths, expected, strict=True)
    }
    assert {r["model"] for r in rows} == {str(fp32)}


def test_threads_share_one_package(tiny_package: Path, static_package: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    images = photos()
    for package in (tiny_package, static_package):
        classifier = bmf.ImageClassifier(package, resize=SIZE, crop=SIZE, forward_batch_size=3)
        expected = classifier.logits(images)
        batches = [images[i % 5 :] for i in range(40)]
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(classifier.logits, batches))
        for batch_images, logits in zip(batches, results, strict=True):
            start = len(images) - len(batch_images)
            # Other batch compositions may take other kernel paths: equal up to rounding.
            np.testing.assert_allclose(logits, expected[start:], rtol=0, atol=1e-5)


def test_a_package_runs_without_importing_torch(tiny_package: Path) -> None:
    # The package's code links libtorch.so by name; a worker need not have imported torch.
    code = (
        "import sys, beam_ml_flink as bmf\n"
        f"c = bmf.ImageClassifier({str(tiny_package)!r}, resize={SIZE}, crop={SIZE})\n"
        f"print(c.logits([open({str(IMAGES / 'coffee.png')!r}, 'rb').read()]).shape)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip() == "(1, 10)"
