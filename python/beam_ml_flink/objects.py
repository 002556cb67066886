"""`python -m beam_ml_flink.objects`: runs a job the way it runs on a cluster whose machines share
nothing. It puts the local inputs, the model (with the recipe beside it) and the labels into an
object store, runs the job's command on their URIs with its output in the store too, then gets the
output objects back into local files, so that a script can check them.

    python -m beam_ml_flink.objects --store s3://BUCKET/run --input images.txt \\
        --model model.pt2 [--labels labels.txt] --output build/out/results -- \\
        python -m beam_ml_flink --runner PortableRunner ...

The job's command gets ``--input``, ``--model_path``, ``--labels`` and ``--output`` as object
URIs. ``--input`` is a list file, a folder or a glob of local files: a list becomes a list object
of the files' URIs (a listed file that does not exist here is listed under its would-be URI, so
that the job reports it as a failure), a folder its prefix, a glob the same glob in the store.
The store is reached through Beam's filesystems (s3:// with boto3's usual environment, gs://).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from beam_ml_flink.arguments import ArgumentParser
from beam_ml_flink.messages import image_paths
from beam_ml_flink.recipes import find_recipe_beside
from beam_ml_flink.stores import s3_client

_CHUNK = 8 << 20


def object_key(path: str) -> str:
    """Where a local file goes under a run's prefix: its path relative to this folder when it is
    below it, else its absolute path without the leading slash."""
    absolute = Path(path).absolute()
    try:
        return absolute.relative_to(Path.cwd()).as_posix()
    except ValueError:
        return absolute.as_posix().lstrip("/")


def put(path: str | os.PathLike[str], uri: str) -> None:
    """Copies the local file `path` to the object `uri`."""
    if FileSystems.get_scheme(uri) == "s3" and os.path.getsize(path) == 0:
        # Beam's S3 uploader is a multipart upload, which cannot make an empty object.
        bucket, key = uri.removeprefix("s3://").split("/", 1)
        s3_client(PipelineOptions([])).put_object(Bucket=bucket, Key=key, Body=b"")
        return
    with open(path, "rb") as source, FileSystems.create(uri) as target:
        while chunk := source.read(_CHUNK):
            target.write(chunk)


def get(uri: str, path: str | os.PathLike[str]) -> None:
    """Copies the object `uri` to the local file `path`."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with FileSystems.open(uri) as source, open(path, "wb") as target:
        while chunk := source.read(_CHUNK):
            target.write(chunk)


def put_input(input: str, prefix: str) -> tuple[str, int]:
    """Puts the images of `input` (a list file, a folder or a glob) under `prefix`/inputs; returns
    what the job's --input takes and how many files were put."""
    inputs = f"{prefix}/inputs"
    paths = image_paths(input)
    present = [path for path in paths if os.path.isfile(path)]
    for path in present:
        put(path, f"{inputs}/{object_key(path)}")
    put_count = len(present)
    if os.path.isdir(input):
        return f"{inputs}/{object_key(input)}/", put_count
    if set("*?[") & set(input):
        return f"{inputs}/{object_key(input)}", put_count
    listed = "".join(f"{inputs}/{object_key(p)}\n" for p in paths)
    with FileSystems.create(f"{prefix}/inputs.txt") as target:
        target.write(listed.encode())
    return f"{prefix}/inputs.txt", put_count


def put_model(model: str, prefix: str) -> str:
    """Puts the model, and the recipe beside it if it has one, under `prefix`/models."""
    uri = f"{prefix}/models/{Path(model).name}"
    put(model, uri)
    recipe = find_recipe_beside(model)
    if recipe is not None:
        put(recipe, f"{prefix}/models/{Path(recipe).name}")
    return uri


def get_output(prefix: str, output: str) -> list[Path]:
    """Gets every object whose name starts with the URI `prefix` into local files: the same names
    with `prefix` replaced by the local `output` prefix."""
    matched = FileSystems.match([f"{prefix}*"])[0].metadata_list
    got = []
    for metadata in sorted(matched, key=lambda m: m.path):
        local = Path(output + metadata.path[len(prefix) :])
        get(metadata.path, local)
        got.append(local)
    return got


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(
        prog="python -m beam_ml_flink.objects",
        description="Put a job's inputs, model and labels into an object store, run the job on "
        "their URIs with its output in the store, and get the output back into local files.",
    )
    parser.add_argument(
        "--store",
        required=True,
        metavar="URI",
        help="The run's prefix in the object store, such as s3://BUCKET/run.",
    )
    parser.add_argument("--input", required=True, help="A list file, folder or glob of images.")
    parser.add_argument("--model", required=True, help="The model file to put into the store.")
    parser.add_argument("--labels", help="The labels file to put into the store.")
    parser.add_argument(
        "--output",
        required=True,
        help="Local prefix of the output files; the job writes under the same name in the store.",
    )
    parser.add_argument("job", nargs=argparse.REMAINDER, help="-- the job's command")
    args = parser.parse_args(argv)
    job = args.job[1:] if args.job[:1] == ["--"] else args.job
    if not job:
        parser.error("give the job's command after --")
    prefix = args.store.rstrip("/")
    if FileSystems.get_scheme(prefix) in (None, "file"):
        parser.error(f"--store must be an object store URI such as s3://BUCKET/run; got {prefix}")
    FileSystems.set_options(PipelineOptions([]))

    try:
        input_uri, count = put_input(args.input, prefix)
        model_uri = put_model(args.model, prefix)
        labels = ["--labels", f"{prefix}/models/{Path(args.labels).name}"] if args.labels else []
        if args.labels:
            put(args.labels, labels[1])
    except (OSError, ValueError) as e:
        print(f"error: could not put the job's files into {prefix}: {e}", file=sys.stderr)
        return 1
    output_uri = f"{prefix}/output/{Path(args.output).name}"
    what = "the model and the labels" if args.labels else "the model"
    print(f"put {count} input files and {what} under {prefix}", file=sys.stderr)
    code = subprocess.run(
        [*job, "--input", input_uri, "--model_path", model_uri, *labels, "--output", output_uri]
    ).returncode
    try:
        got = get_output(output_uri, args.output)
    except (OSError, ValueError) as e:
        print(f"error: could not get the output {output_uri}*: {e}", file=sys.stderr)
        return code or 1
    print(
        f"got {len(got)} output files from {output_uri}* into {args.output}*",
        file=sys.stderr,
    )
    return code


if __name__ == "__main__":
    sys.exit(main())
