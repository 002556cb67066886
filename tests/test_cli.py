"""``python -m beam_ml_flink`` end to end on the DirectRunner and the PrismRunner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import beam_ml_flink as bmf
from conftest import (
    DEMO_MEAN,
    DEMO_MODEL,
    DEMO_STD,
    IMAGENET_LABELS,
    IMAGES,
    ROOT,
    TINY_MODEL,
    torch_top1,
)

pytestmark = pytest.mark.slow

PRISM = Path(os.environ.get("PRISM_LOCATION", ROOT / "build" / "bin" / "prism"))


def classify(
    *args: str, cwd: Path | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "beam_ml_flink", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )


def demo_args(input: Path | str, output: Path) -> list[str]:
    return [
        f"--input={input}",
        f"--output={output}",
        f"--model_path={DEMO_MODEL}",
        f"--labels={IMAGENET_LABELS}",
        "--mean=" + ",".join(map(str, DEMO_MEAN)),
        "--std=" + ",".join(map(str, DEMO_STD)),
        "--batch_size=4",
    ]


def read_jsonl(files: list[Path]) -> list[dict]:
    return [json.loads(line) for f in files for line in f.read_text().splitlines()]


def image_list(tmp_path: Path, names: list[str]) -> Path:
    listing = tmp_path / "images.txt"
    listing.write_text("# photos and bad files\n\n" + "\n".join(names) + "\n")
    return listing


@pytest.mark.parametrize("runner", ["DirectRunner", "PrismRunner"])
def test_every_input_once_with_reference_top1_or_a_reason(
    runner: str, tmp_path: Path, demo_top1: dict[str, int], bad_files: dict[Path, str]
) -> None:
    inputs = [str(IMAGES / n) for n in demo_top1] + [str(p) for p in bad_files]
    extra = [f"--prism_location={PRISM}"] if runner == "PrismRunner" else []
    if runner == "PrismRunner" and not PRISM.exists():
        pytest.fail(f"no Prism binary at {PRISM}; `make prism` builds it")

    run = classify(
        *demo_args(image_list(tmp_path, inputs), tmp_path / "out" / "results"),
        f"--runner={runner}",
        *extra,
    )
    assert run.returncode == 0, run.stderr[-3000:]

    predictions = read_jsonl(sorted((tmp_path / "out").glob("results-*.jsonl")))
    failures = read_jsonl(sorted((tmp_path / "out").glob("results_failures-*.jsonl")))
    seen = [r["image"] for r in predictions + failures]
    assert sorted(seen) == sorted(inputs)
    labels = IMAGENET_LABELS.read_text().splitlines()
    assert {r["image"]: r["top_k"][0]["index"] for r in predictions} == {
        str(IMAGES / n): i for n, i in demo_top1.items()
    }
    for record in predictions:
        assert len(record["top_k"]) == 5
        for best in record["top_k"]:
            assert best["label"] == labels[best["index"]]
        scores = [t["score"] for t in record["top_k"]]
        assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0001
    for record in failures:
        assert bad_files[Path(record["image"])] in record["error"], record


def test_glob_input_and_summary(tmp_path: Path, demo_top1: dict[str, int]) -> None:
    run = classify(
        *demo_args(IMAGES / "*.jpg", tmp_path / "results"),
        "--top_k=1",
        "--show=3",
    )
    assert run.returncode == 0, run.stderr[-3000:]
    predictions = read_jsonl(sorted(tmp_path.glob("results-*.jsonl")))
    jpegs = {str(IMAGES / n): i for n, i in demo_top1.items() if n.endswith(".jpg")}
    assert {r["image"]: r["top_k"][0]["index"] for r in predictions} == jpegs
    assert all(len(r["top_k"]) == 1 for r in predictions)
    assert f"{len(jpegs)} images classified, 0 failed" in run.stderr
    table = run.stdout.splitlines()
    assert table[1].split() == ["image", "top-1", "score"]
    assert len([line for line in table if line.startswith(str(IMAGES))]) == 3
    assert str(tmp_path / "results-00000-of-00001.jsonl") in run.stdout


def test_original_pipeline_flags_and_csv_output(tmp_path: Path, photos: dict[str, bytes]) -> None:
    from torchvision import models

    torch.manual_seed(0)
    model = models.mobilenet_v2(num_classes=1000).eval()
    state_dict = tmp_path / "mobilenet_v2.pth"
    torch.save(model.state_dict(), state_dict)
    traced = tmp_path / "reference.pt"
    torch.jit.save(torch.jit.trace(model, torch.zeros(1, 3, 224, 224)), traced)
    names = ["china.jpg", "coffee.png", "rocket.jpg"]
    expected = torch_top1({n: photos[n] for n in names}, traced, resize=(224, 224))

    output = tmp_path / "beam_test_out.txt"
    run = classify(
        f"--input={image_list(tmp_path, names)}",
        f"--output={output}",
        f"--model_state_dict_path={state_dict}",
        "--model_name=mobilenet_v2",
        f"--images_dir={IMAGES}",
        "--device=CPU",
        "--output_format=csv",
        "--runner=DirectRunner",
    )
    assert run.returncode == 0, run.stderr[-3000:]
    lines = sorted(output.read_text().splitlines())
    assert lines == sorted(f"{IMAGES / n},{i}" for n, i in expected.items())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model_path=/no/such/model.pt"], "the model /no/such/model.pt does not exist"),
        ([], "--model_path (TorchScript or an AOTInductor package) is required"),
        (["--model_state_dict_path=x.pth"], "--model_state_dict_path needs --model_name"),
        ([f"--model_path={DEMO_MODEL}", "--resize=2x2"], "--resize takes a positive shorter side"),
        ([f"--model_path={DEMO_MODEL}", "--mean=1,2"], "expected three comma-separated numbers"),
        ([f"--model_path={DEMO_MODEL}", "--precision=int8"], "--precision: invalid choice"),
        (
            [f"--model_path={DEMO_MODEL}", "--output_kind=embeddings", "--top_k=3"],
            "--top_k names classes, and --output_kind embeddings writes the model's vectors",
        ),
        (
            [f"--model_path={DEMO_MODEL}", "--output_kind=embeddings", f"--labels={DEMO_MODEL}"],
            "drop --labels or --output_kind embeddings",
        ),
    ],
)
def test_usage_errors_are_clear(tmp_path: Path, args: list[str], message: str) -> None:
    run = classify("--input=images.txt", f"--output={tmp_path / 'out'}", *args)
    assert run.returncode == 2
    assert message in run.stderr


@pytest.mark.skipif(bmf.cuda_device_count() > 0, reason="this machine has a GPU")
def test_a_gpu_that_is_not_there_stops_the_command_before_the_pipeline(tmp_path: Path) -> None:
    output = tmp_path / "out" / "results"
    run = classify(*demo_args(IMAGES, output), "--device=GPU", "--runner=DirectRunner")
    assert run.returncode == 2, run.stderr[-3000:]
    assert "device 'cuda:0' was asked for" in run.stderr and "use device='cpu'" in run.stderr
    assert not output.parent.exists()


def test_missing_input_is_a_usage_error(tmp_path: Path) -> None:
    run = classify(f"--output={tmp_path / 'out'}", f"--model_path={DEMO_MODEL}")
    assert run.returncode == 2
    assert "--input (images) or --input_topic (Kafka messages) is required" in run.stderr


def test_importing_the_options_leaves_other_pipelines_options_alone() -> None:
    from apache_beam.options.pipeline_options import PipelineOptions

    from beam_ml_flink.options import ImageClassificationOptions

    options = PipelineOptions(["--runner=DirectRunner"])
    assert options.get_all_options()["runner"] == "DirectRunner"
    assert options.view_as(ImageClassificationOptions).input is None


def test_a_missing_input_is_a_usage_error_without_a_traceback(tmp_path: Path) -> None:
    for input, sentence in (
        (tmp_path / "nonexistent.txt", "nonexistent.txt does not exist; give a list of images"),
        (tmp_path / "*.jpg", "no file matches this pattern"),
    ):
        run = classify(*demo_args(input, tmp_path / "out" / "r"))
        assert run.returncode == 2, run.stderr[-2000:]
        assert sentence in run.stderr
        assert "Traceback" not in run.stderr


def test_an_unwritable_output_is_a_usage_error_naming_it(tmp_path: Path) -> None:
    run = classify(*demo_args(IMAGES, Path("/proc/nope/r")))
    assert run.returncode == 2, run.stderr[-2000:]
    assert "--output /proc/nope/r: the folder /proc/nope cannot be written" in run.stderr
    assert "Traceback" not in run.stderr


def test_an_empty_list_runs_and_says_it_named_no_images(tmp_path: Path) -> None:
    listing = tmp_path / "empty.txt"
    listing.write_text("# nothing yet\n\n")
    run = classify(*demo_args(listing, tmp_path / "out" / "r"), "--runner=DirectRunner")
    assert run.returncode == 0, run.stderr[-2000:]
    assert f"the input list {listing} names no images" in run.stderr


@pytest.mark.parametrize("resize", ["0", "0,224", "-5", "224,-1"])
def test_a_bad_resize_is_shown_as_typed(resize: str, tmp_path: Path) -> None:
    run = classify(*demo_args(IMAGES, tmp_path / "out" / "r"), f"--resize={resize}")
    assert run.returncode == 2, run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    assert (
        f"--resize takes a positive shorter side (256) or height,width (224,224), got '{resize}'"
        in (run.stderr)
    )


@pytest.mark.parametrize("resize, shown", [(0, "got 0"), ((0, 224), "got 0,224")])
def test_a_bad_resize_in_the_api_is_shown_as_typed(resize, shown: str) -> None:
    # The Rust core's own check: its message shows the value, not Rust's Debug form.
    with pytest.raises(ValueError) as raised:
        bmf.preprocess([(IMAGES / "coffee.png").read_bytes()], resize=resize)
    message = str(raised.value)
    assert (
        f"resize must be a positive size or a (height, width) pair of positive sizes, {shown}"
        in (message)
    )
    assert "ShorterSide" not in message and "Exact" not in message


@pytest.mark.parametrize(
    ("flag", "shown"), [("--std=0,1,1", "got 0 in 0,1,1"), ("--mean=nan,1,1", "got NaN in NaN,1,1")]
)
def test_bad_normalization_is_shown_as_typed(flag: str, shown: str, tmp_path: Path) -> None:
    run = classify(*demo_args(IMAGES, tmp_path / "out" / "r"), flag)
    assert run.returncode == 2, run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    assert shown in run.stderr
    assert "[" not in run.stderr.splitlines()[-1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--labels=/"], "cannot read labels file /: Is a directory"),
        (["--labels=/no/such/labels.txt"], "the labels file /no/such/labels.txt does not exist"),
        (["--device=tpu"], "device must be 'cpu', 'cuda' or 'cuda:N', got 'tpu'"),
        (["--images_dir=/no/such/folder"], "--images_dir /no/such/folder is not a folder"),
        (["--crop=abc"], "argument --crop: expected a positive integer, got 'abc'"),
        (["--top_k=0"], "argument --top_k: expected a positive integer, got '0'"),
        (["--batch_size=-1"], "argument --batch_size: expected a positive integer, got '-1'"),
        (["--forward_batch_size=x"], "argument --forward_batch_size: expected a positive integer"),
        (["--poll_interval=0"], "argument --poll_interval: expected a positive number of seconds"),
        (["--window_size=soon"], "argument --window_size: expected a positive number of seconds"),
        (["--output_format=xml"], "argument --output_format: invalid choice: 'xml'"),
        (["--message_format=png"], "argument --message_format: invalid choice: 'png'"),
        (["--show=all"], "argument --show: invalid int value: 'all'"),
        (["--checkpointing_interval=often"], "argument --checkpointing_interval: invalid int"),
        (["--crop=100000"], "crop must be between 1 and resize (256), got 100000"),
    ],
)
def test_every_flag_given_a_wrong_value_is_one_sentence(
    args: list[str], message: str, tmp_path: Path
) -> None:
    run = classify(*demo_args(IMAGES, tmp_path / "out" / "r"), *args)
    assert run.returncode == 2, run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    assert message in run.stderr


@pytest.fixture(scope="module")
def mobilenet_state_dict(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from torchvision import models

    path = tmp_path_factory.mktemp("state") / "mobilenet_v2.pth"
    torch.save(models.mobilenet_v2().state_dict(), path)
    return path


def test_bad_state_dicts_stop_the_command_with_a_sentence(
    tmp_path: Path, mobilenet_state_dict: Path
) -> None:
    cases = [
        (["--model_state_dict_path=/tmp", "--model_name=mobilenet_v2"], "/tmp is a directory"),
        (
            [f"--model_state_dict_path={IMAGES / 'coffee.png'}", "--model_name=mobilenet_v2"],
            "torch.load cannot read the state dict",
        ),
        (
            [f"--model_state_dict_path={mobilenet_state_dict}", "--model_name=resnet18"],
            "does not fit torchvision's resnet18",
        ),
        (
            [f"--model_state_dict_path={mobilenet_state_dict}", "--model_name=no_such_net"],
            "unknown torchvision model 'no_such_net'",
        ),
    ]
    for args, message in cases:
        run = classify(f"--input={IMAGES}", f"--output={tmp_path / 'out' / 'r'}", *args)
        assert run.returncode == 2, run.stderr[-2000:]
        assert "Traceback" not in run.stderr
        assert message in run.stderr


def test_library_notices_only_with_verbose(tmp_path: Path) -> None:
    args = demo_args(IMAGES, tmp_path / "out" / "r")
    quiet = classify(*args, "--runner=DirectRunner")
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert "apitools" not in quiet.stderr
    assert not [line for line in quiet.stderr.splitlines() if "apache_beam" in line]
    assert "INFO beam_ml_flink: finished in" in quiet.stderr
    # Run again over its own output, with --verbose: Beam's own messages are shown.
    verbose = classify(*args, "--runner=DirectRunner", "--verbose")
    assert verbose.returncode == 0, verbose.stderr[-2000:]
    assert "apitools not found" in verbose.stderr
    assert "INFO apache_beam" in verbose.stderr


def test_a_model_watch_on_a_missing_folder_is_a_usage_error(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    run = classify(
        *demo_args(inbox, tmp_path / "out" / "r"),
        "--streaming",
        "--runner=PrismRunner",
        "--watch_models=/no/such/folder/*.pt",
    )
    assert run.returncode == 2, run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    assert "--watch_models /no/such/folder/*.pt: the folder /no/such/folder does not exist" in (
        run.stderr
    )


HELP_POINTER = "Run 'python -m beam_ml_flink --help' for the flags."


def assert_usage_error(run: subprocess.CompletedProcess[str], sentence: str) -> None:
    """A usage error: exit 2, the error and a pointer to --help, no usage text, no traceback."""
    assert run.returncode == 2, run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    assert "usage:" not in run.stderr
    lines = run.stderr.strip().splitlines()
    assert lines[-2].startswith("python -m beam_ml_flink: error: "), run.stderr
    assert sentence in lines[-2]
    assert lines[-1] == HELP_POINTER


def test_a_bad_value_is_the_error_and_a_pointer_to_help(tmp_path: Path) -> None:
    run = classify(*demo_args(IMAGES, tmp_path / "out" / "r"), "--batch_size", "0")
    assert_usage_error(run, "argument --batch_size: expected a positive integer, got '0'")
    assert len(run.stderr.strip().splitlines()) == 2


def test_a_missing_flag_is_the_error_and_a_pointer_to_help(tmp_path: Path) -> None:
    run = classify(f"--output={tmp_path / 'out'}", f"--model_path={TINY_MODEL}")
    assert_usage_error(run, "--input (images) or --input_topic (Kafka messages) is required")


@pytest.mark.parametrize("runner", ["Foo", "apache_beam.runners.Foo"])
def test_an_unknown_runner_is_a_usage_error_naming_the_runners(runner: str, tmp_path: Path) -> None:
    run = classify(*demo_args(IMAGES, tmp_path / "out" / "r"), "--runner", runner)
    assert_usage_error(
        run,
        f"--runner {runner} is not a runner this command runs on: use DirectRunner (the "
        "default), PrismRunner, FlinkRunner or PortableRunner (DataflowRunner for Pub/Sub input)",
    )
    assert not (tmp_path / "out").exists()


def test_help_groups_the_flags_by_topic() -> None:
    from beam_ml_flink.options import FLAG_GROUPS

    run = classify("--help")
    assert run.returncode == 0, run.stderr[-2000:]
    headings = [line[:-1] for line in run.stdout.splitlines() if line and line[0] != " "]
    topics = [h for h in headings if h in FLAG_GROUPS]
    assert topics == list(FLAG_GROUPS)
    assert list(FLAG_GROUPS)[:7] == [
        "input",
        "model",
        "preprocessing",
        "output",
        "streaming",
        "Kafka and Pub/Sub",
        "Flink",
    ]

    # Each topic lists its own flags, and no flag is left ungrouped.
    for title, flags in {
        "input": ["--input ", "--input_format", "--images_dir"],
        "model": ["--model_path", "--labels", "--batch_size", "--device"],
        "preprocessing": ["--resize", "--crop", "--mean", "--draft"],
        "output": ["--output ", "--output_format", "--top_k", "--show"],
        "streaming": ["--poll_interval", "--window_size", "--watch_models"],
        "Kafka and Pub/Sub": ["--input_topic", "--bootstrap_servers", "--output_topic"],
        "Flink": ["--checkpointing_interval", "--max_bundle_time_mills"],
        "the run": ["--progress_interval", "--fail_on_error", "--verbose"],
    }.items():
        text = run.stdout.split(f"\n{title}:\n", 1)[1].split("\n\n")
        # The group's description, then its flags.
        flags_text = text[1] if not text[0].lstrip().startswith("-") else text[0]
        for flag in flags:
            assert f"  {flag}" in flags_text, (title, flag)
    ungrouped = run.stdout.split("\noptions:\n", 1)[1].split("\n\n", 1)[0]
    assert ungrouped.split() == ["-h,", "--help", "show", "this", "help", "message", "and", "exit"]


@pytest.mark.parametrize("command", ["services", "compile", "messages"])
def test_the_other_commands_give_usage_errors_the_same_way(command: str) -> None:
    prog = f"python -m beam_ml_flink.{command}"
    run = subprocess.run(
        [sys.executable, "-m", f"beam_ml_flink.{command}", "--no_such_flag"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2, run.stderr[-2000:]
    assert "Traceback" not in run.stderr and "usage:" not in run.stderr
    lines = run.stderr.strip().splitlines()
    assert lines[-2].startswith(f"{prog}: error: ")
    assert lines[-1] == f"Run '{prog} --help' for the flags."


def test_beam_still_parses_every_flag_of_the_options() -> None:
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

    from beam_ml_flink.options import FlinkStreamingOptions, ImageClassificationOptions

    argv = [
        "--input=a.txt",
        "--batch_size=3",
        "--fail_on_error",
        "--checkpointing_interval=500",
        "--runner=FlinkRunner",
        "--flink_master=localhost:8081",
    ]
    options = PipelineOptions(argv)
    mine = options.view_as(ImageClassificationOptions)
    assert (mine.input, mine.batch_size, mine.fail_on_error) == ("a.txt", 3, True)
    assert options.view_as(FlinkStreamingOptions).checkpointing_interval == 500
    assert options.view_as(StandardOptions).runner == "FlinkRunner"
    assert options.get_all_options()["flink_master"] == "localhost:8081"


def test_a_kafka_job_gets_short_bundles_and_checkpoints_unless_told(tmp_path: Path) -> None:
    from beam_ml_flink.__main__ import parse
    from beam_ml_flink.options import FlinkStreamingOptions

    kafka = [
        "--input_topic=images",
        "--output_topic=answers",
        "--bootstrap_servers=localhost:9092",
        f"--model_path={DEMO_MODEL}",
        "--runner=FlinkRunner",
    ]
    for given, bundle_ms, checkpoint_ms in (
        ([], 100, 10_000),
        (["--max_bundle_time_mills=1000", "--checkpointing_interval=500"], 1000, 500),
    ):
        _, options = parse([*kafka, *given])
        flink = options.view_as(FlinkStreamingOptions)
        assert (flink.max_bundle_time_mills, flink.checkpointing_interval) == (
            bundle_ms,
            checkpoint_ms,
        )
    # A file job keeps Beam's default.
    _, options = parse(
        [f"--input={IMAGES}", f"--output={tmp_path / 'o'}", f"--model_path={DEMO_MODEL}"]
    )
    assert options.view_as(FlinkStreamingOptions).max_bundle_time_mills is None


def test_a_folder_watch_on_flink_finishes_its_bundles_before_each_checkpoint(
    tmp_path: Path,
) -> None:
    """A watch starts from one element; buffered in a checkpoint, the watch would never start."""
    from beam_ml_flink.__main__ import parse
    from beam_ml_flink.options import FlinkStreamingOptions

    watch = [
        f"--input={IMAGES}",
        f"--output={tmp_path / 'o'}",
        f"--model_path={DEMO_MODEL}",
        "--streaming",
        "--checkpointing_interval=2000",
    ]
    for runner, given, expected in (
        ("FlinkRunner", [], True),
        ("PortableRunner", [], True),
        ("FlinkRunner", ["--finish_bundle_before_checkpointing=false"], False),
        ("PrismRunner", [], None),
    ):
        _, options = parse([*watch, f"--runner={runner}", *given])
        flink = options.view_as(FlinkStreamingOptions)
        assert flink.finish_bundle_before_checkpointing is expected, (runner, given)


def _mixed_list(tmp_path: Path) -> tuple[Path, dict[str, int]]:
    """A list of one photo and of inputs that fail before inference, with how many of each
    kind it holds."""
    folder = tmp_path / "a_folder"
    folder.mkdir()
    text = tmp_path / "notes.jpg"
    text.write_text("not an image\n")
    names = [IMAGES / "china.jpg", folder, tmp_path / "missing.jpg", text]
    return image_list(tmp_path, [str(n) for n in names]), {"photos": 1, "read": 2, "decode": 1}


def test_the_summary_counts_every_input_and_points_at_the_failures(tmp_path: Path) -> None:
    listing, kinds = _mixed_list(tmp_path)
    output = tmp_path / "out" / "r"
    run = classify(
        f"--input={listing}", f"--output={output}", f"--model_path={TINY_MODEL}", "--batch_size=4"
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    failed = kinds["read"] + kinds["decode"]
    assert (
        f"{kinds['photos']} images classified, {failed} failed ({kinds['read']} could not be "
        f"read, {kinds['decode']} could not be decoded)"
    ) in run.stderr
    assert f"the reasons are in {output}_failures-*.jsonl" in run.stderr
    assert len(read_jsonl(sorted(output.parent.glob("r_failures-*.jsonl")))) == failed


def test_fail_on_error_exits_1_when_an_input_failed(tmp_path: Path) -> None:
    listing, kinds = _mixed_list(tmp_path)
    run = classify(
        f"--input={listing}",
        f"--output={tmp_path / 'out' / 'r'}",
        f"--model_path={TINY_MODEL}",
        "--fail_on_error",
    )
    assert run.returncode == 1, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    failed = kinds["read"] + kinds["decode"]
    assert f"--fail_on_error: {failed} inputs failed; exit status 1" in run.stderr


def test_a_list_read_as_parquet_says_every_input_failed(tmp_path: Path) -> None:
    listing = image_list(tmp_path, [str(IMAGES / "china.jpg")])
    output = tmp_path / "out" / "r"
    run = classify(
        f"--input={listing}",
        "--input_format=parquet",
        f"--output={output}",
        f"--model_path={TINY_MODEL}",
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    assert (
        "every input failed (1 could not be read); no image was classified; the reasons are in "
        f"{output}_failures-*.jsonl"
    ) in run.stderr
    (failure,) = read_jsonl(sorted(output.parent.glob("r_failures-*.jsonl")))
    assert failure["image"] == str(listing)


class _FailsOnImages(torch.nn.Module):
    """A classifier whose forward fails on any input but the blank one the loader tries."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool(x.abs().sum() > 0):
            raise RuntimeError("this model refuses every real image")
        return torch.zeros(x.shape[0], 10)


def test_inference_failures_are_counted_apart(tmp_path: Path) -> None:
    model = tmp_path / "fails.pt"
    torch.jit.save(torch.jit.script(_FailsOnImages()), str(model))
    listing, kinds = _mixed_list(tmp_path)
    run = classify(
        f"--input={listing}", f"--output={tmp_path / 'out' / 'r'}", f"--model_path={model}"
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    assert (
        f"every input failed ({kinds['read']} could not be read, {kinds['decode']} could not be "
        f"decoded, {kinds['photos']} failed in inference); no image was classified"
    ) in run.stderr
