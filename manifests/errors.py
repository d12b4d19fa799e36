"""One-line errors for the three CLIs: name the problem and the way out, exit 2 for bad input.

Filesystem failures (a full disk, a read-only or unwritable directory, an output path below a file) are caught
at the same boundary: `os_error_line` names the path and what the errno means. Writers remove their
temporary files before the error reaches here, and every build resumes, so a rerun after the cause is fixed
continues to the same bytes.
"""
from __future__ import annotations

import errno
import functools
import os
import sys

import click

__all__ = ["fail", "one_line", "os_error_line", "bad_input_exits"]

# errno -> (what it means, what to do); anything else gets the system's own text
_OS_ADVICE = {
    errno.ENOSPC: ("no space left on the device", "free space and rerun the same command: finished work is kept"),
    errno.EDQUOT: ("disk quota exceeded", "free space or raise the quota, then rerun: finished work is kept"),
    errno.EROFS: ("read-only file system", "choose a writable --out"),
    errno.EACCES: ("permission denied", "choose a directory you can write, or fix its permissions"),
    errno.EPERM: ("operation not permitted", "choose a directory you can write, or fix its permissions"),
    errno.ENOTDIR: ("a part of the path is a file, not a directory", "choose another --out"),
    errno.EEXIST: ("exists and is in the way", "choose another path or move the file away"),
    errno.EISDIR: ("is a directory, a file was expected", "name a file"),
    errno.ENOENT: ("no such file or directory", "check the path"),
    errno.ENAMETOOLONG: ("file name too long", "choose a shorter path"),
    errno.EIO: ("input/output error from the device", "check the disk or the network filesystem, then rerun"),
}


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


def os_error_line(exc: OSError, where: object = None, advice: str | None = None) -> str:
    """`PATH: what the errno means (ENAME); what to do`, for an OSError from the filesystem.

    `where` names the file the user knows (e.g. the final name rather than its temporary twin); `advice`
    replaces the generic way out."""
    if where is None:
        where = exc.filename if exc.filename is not None else "(unnamed file)"
        if exc.filename2 is not None:
            where = f"{where} -> {exc.filename2}"
    code = exc.errno
    meaning, generic = _OS_ADVICE.get(code, (exc.strerror or str(exc) or type(exc).__name__, ""))
    advice = generic if advice is None else advice
    name = f" ({errno.errorcode[code]})" if code in errno.errorcode else ""
    if code is None and exc.strerror:
        meaning = exc.strerror
    return f"{where}: {meaning}{name}" + (f"; {advice}" if advice else "")


def fail(message: object, code: int = 2) -> None:
    click.echo(f"error: {one_line(message)}", err=True)
    sys.exit(code)


def bad_input_exits(fn):
    """Turn a ValueError (bad input) or an OSError (disk full, read-only, ...) raised by the command into
    `error: …` on stderr and exit code 2."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ValueError as exc:
            fail(exc)
        except BrokenPipeError:  # the reader went away (`| head`): nothing to report (Python docs, "SIGPIPE")
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(1)
        except OSError as exc:
            fail(os_error_line(exc))
    return wrapper
