"""What `make wheel` leaves in dist/: a manylinux_2_31 wheel, as `auditwheel show` sees it, whose
only libraries outside the policy are libtorch's (from the `torch` dependency), whose extension
links on Debian bullseye (glibc 2.31) itself, and an sdist that builds against the same torch.
`make test-install` installs both in a fresh venv."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT

DIST = ROOT / "dist"
MANYLINUX = "manylinux_2_31_x86_64"
# The image `make wheel` builds the wheel in (make container-wheel-builder).
BUILDER_IMAGE = "localhost/beam-ml-flink/wheel-builder:bullseye"


def one(pattern: str) -> Path:
    found = sorted(DIST.glob(pattern))
    if len(found) != 1:
        pytest.fail(f"expected one {pattern} in {DIST}, found {found}; run `make wheel`")
    return found[0]


def test_the_wheel_is_manylinux_with_libtorch_left_to_torch() -> None:
    wheel = one("beam_ml_flink-*.whl")
    assert wheel.name.endswith(f"-cp311-abi3-{MANYLINUX}.whl")
    show = subprocess.run(
        [Path(sys.executable).parent / "auditwheel", "show", "--json", str(wheel)],
        capture_output=True,
        text=True,
        # Without torch's folder on the search path: the libraries the wheel itself needs.
        env={"PATH": "/usr/bin:/bin"},
        check=True,
    )
    report = json.loads(show.stdout)
    # The symbol versions it needs allow exactly the tag it carries...
    assert report["sym_tag"] == MANYLINUX
    # ...and the only libraries outside that policy are torch's own, installed by `torch`.
    assert report["policy_upgrades"][MANYLINUX]["libs_to_eliminate"] == [
        "libc10.so",
        "libtorch_cpu.so",
    ]
    assert not report["unsupported_isa"]


def test_the_sdist_builds_against_the_pinned_torch() -> None:
    sdist = one("beam_ml_flink-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
        config = archive.extractfile(f"{sdist.name.removesuffix('.tar.gz')}/.cargo/config.toml")
        assert config is not None
        assert 'LIBTORCH_USE_PYTORCH = "1"' in config.read().decode()
    assert {"pyproject.toml", "Cargo.toml", "Cargo.lock", "src/lib.rs", "build.rs"} <= names
    assert "python/beam_ml_flink/__init__.py" in names
    pinned = re.search(r"^torch==(\S+)$", (ROOT / "requirements.txt").read_text(), re.M)
    assert pinned is not None
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert f"torch=={pinned[1]}" in pyproject["build-system"]["requires"]
    assert f"torch=={pinned[1]}" in pyproject["project"]["dependencies"]


def test_the_extension_links_on_debian_bullseye(tmp_path: Path) -> None:
    """The wheel's extension, loaded by the dynamic linker of Debian bullseye (glibc 2.31, GCC
    10's libstdc++) beside the installed torch: every symbol it needs is found, glibc's,
    libstdc++'s and libtorch's, except the CPython API's, which the interpreter provides."""
    with zipfile.ZipFile(one("beam_ml_flink-*.whl")) as wheel:
        wheel.extract("beam_ml_flink/_core.abi3.so", tmp_path)
    # torch's libraries find the NVIDIA ones they name through their rpath, in site-packages.
    site = sysconfig.get_path("purelib")
    env = {**os.environ}
    env.setdefault("CONTAINERS_CONF", str(ROOT / "data" / "container" / "containers.conf"))
    # Where podman runs as root, `make wheel` keeps the builder image in the project's own store.
    storage = ROOT / "build" / "container-engine" / "storage.conf"
    if os.getuid() == 0 and storage.exists():
        env.setdefault("CONTAINERS_STORAGE_CONF", str(storage))
    run = [
        "podman", "run", "--rm", "--network", "none",
        "--volume", f"{tmp_path}:/wheel:ro", "--volume", f"{site}:{site}:ro",
        "--env", f"LD_LIBRARY_PATH={site}/torch/lib", BUILDER_IMAGE,
    ]  # fmt: skip
    glibc = subprocess.run(
        [*run, "ldd", "--version"], capture_output=True, text=True, env=env, check=False
    )
    if glibc.returncode != 0:
        pytest.fail(f"podman cannot run {BUILDER_IMAGE}: {glibc.stderr.strip()}; run `make wheel`")
    assert glibc.stdout.splitlines()[0].endswith(" 2.31")
    linked = subprocess.run(
        [*run, "ldd", "-r", "/wheel/beam_ml_flink/_core.abi3.so"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    lines = (linked.stdout + linked.stderr).splitlines()
    assert any(line.strip().startswith("libc.so.6 => /lib/") for line in lines), lines
    assert any(line.strip().startswith(f"libtorch_cpu.so => {site}/") for line in lines), lines
    missing = [line for line in lines if "not found" in line]
    assert not missing, missing
    undefined = re.findall(r"undefined symbol: (\S+)", "\n".join(lines))
    assert undefined, "ldd -r lists the CPython symbols that only an interpreter provides"
    assert [name for name in undefined if not name.startswith(("Py", "_Py"))] == []
