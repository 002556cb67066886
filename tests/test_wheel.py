"""What `make wheel` leaves in dist/: a manylinux wheel, as `auditwheel show` sees it, whose only
libraries outside the policy are libtorch's (from the `torch` dependency), and an sdist that
builds against the same torch. `make test-install` installs both in a fresh venv."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

import pytest

from conftest import ROOT

DIST = ROOT / "dist"
MANYLINUX = "manylinux_2_34_x86_64"


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
