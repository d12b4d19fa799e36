"""One-line errors for the three CLIs: name the problem and the way out, exit 2 for bad input."""
from __future__ import annotations

import functools
import sys

import click

__all__ = ["fail", "one_line", "bad_input_exits"]


def one_line(message: object) -> str:
    """The message as one line; for an error re-raised from a DataLoader worker, the original error's text."""
    text = str(message)
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()] or ["unknown error"]
    if "Original Traceback" not in text:
        return " ".join(lines)
    line = lines[-1]
    head = line.split(": ", 1)[0]
    if ": " in line and " " not in head and head.endswith("Error"):
        line = line.split(": ", 1)[1]
    return line


def fail(message: object, code: int = 2) -> None:
    click.echo(f"error: {one_line(message)}", err=True)
    sys.exit(code)


def bad_input_exits(fn):
    """Turn a ValueError raised by the command into `error: …` on stderr and exit code 2."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ValueError as exc:
            fail(exc)
    return wrapper
