"""What the commands share in parsing their flags: the parser (usage errors as two lines) and
the parsers of values (argparse ``type=`` functions), whose errors name the value as typed."""

from __future__ import annotations

import argparse
from typing import NoReturn


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser with the usage errors of git and cargo: the error and a pointer to
    ``--help`` (two lines, exit 2), not the whole usage above the one line that matters."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\nRun '{self.prog} --help' for the flags.\n")


def resize(text: str) -> int | tuple[int, int]:
    parts = text.split(",")
    try:
        sides = [int(part) for part in parts]
    except ValueError:
        sides = []
    if len(sides) == 1 and sides[0] > 0:
        return sides[0]
    if len(sides) == 2 and min(sides) > 0:
        return (sides[0], sides[1])
    raise argparse.ArgumentTypeError(
        f"--resize takes a positive shorter side (256) or height,width (224,224), got {text!r}"
    )


def triple(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected three comma-separated numbers, got {text!r}")
    return values


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def seconds_or_zero(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds (0: off), got {text!r}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def sha256_digest(text: str) -> str:
    digest = text.strip().lower()
    if len(digest) != 64 or set(digest) - set("0123456789abcdef"):
        raise argparse.ArgumentTypeError(
            "expected a SHA-256 digest, 64 hexadecimal digits as sha256sum prints them, "
            f"got {text!r}"
        )
    return digest


def true_or_false(text: str) -> bool:
    value = text.strip().lower()
    if value not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return value == "true"
