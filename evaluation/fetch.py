"""Download the CIFs of a test set from the COD (or a mirror) and check them against the manifest's sha256.

The committed COD test sets already ship their CIFs (`manifests/testsets/cod-p21c.tar.xz`); this is for
getting the same files as loose `<id>.cif` files, or for larger test sets built elsewhere. The COD revises
entries now and then, so a current download can differ from the bytes a manifest was built from: such files
are reported as mismatches and are not written.

A server is data, never trusted: each file has an overall deadline (a server that trickles bytes cannot hold a
download past it) and a size cap, test-set ids must be COD ids (7 digits) so that a manifest cannot name a path,
and every file is written inside the output folder under a temporary name first.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from evaluation.testset import load_testset
from manifests.schema import sha256_file

__all__ = ["COD_BASE_URL", "COD_ID", "MAX_BYTES", "FetchError", "FetchReport", "fetch_testset"]

COD_BASE_URL = "https://www.crystallography.net/cod/"
COD_ID = re.compile(r"^[0-9]{7}$")  # COD ids are 7 digits (1000000–9999999)
MAX_BYTES = 64 * 1024 * 1024  # a COD CIF is kilobytes; one with reflections a few megabytes
_CHUNK = 1 << 16
_STALL_MAX = 10.0  # s: no single read waits longer than this (nor than a quarter of the deadline)


class FetchError(RuntimeError):
    """The server could not be reached (connection refused, DNS failure)."""


class _Failed(Exception):
    """One file could not be downloaded (HTTP status, deadline, size cap); the others go on."""


@dataclasses.dataclass
class FetchReport:
    """What `fetch_testset` did, per structure id."""

    downloaded: list[str] = dataclasses.field(default_factory=list)
    present: list[str] = dataclasses.field(default_factory=list)  # already there with the right hash
    mismatched: list[dict[str, str]] = dataclasses.field(default_factory=list)  # id, expected, got
    failed: list[dict[str, str]] = dataclasses.field(default_factory=list)  # id, error

    @property
    def ok(self) -> bool:
        """Every file of the test set is now in place with the right hash."""
        return not self.mismatched and not self.failed


def _download(url: str, deadline: float, max_bytes: int) -> bytes:
    """The body of `url`, read within `deadline` seconds in all and at most `max_bytes` long.

    Reads return as soon as any bytes arrive (`read1`) and each waits at most min(deadline/4, 10 s), so the
    whole download ends by about 1.25 × deadline however the server paces its bytes."""
    start = time.monotonic()
    stall = min(max(deadline / 4, 0.05), _STALL_MAX)
    req = urllib.request.Request(url, headers={"User-Agent": "phaseforge-fetch"})
    try:
        with urllib.request.urlopen(req, timeout=stall) as resp:  # noqa: S310 (http(s) URLs from the caller)
            length = resp.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > max_bytes:
                raise _Failed(f"{url} is {int(length)} bytes, over the cap of {max_bytes} (raise --max-bytes)")
            buf = bytearray()
            while chunk := resp.read1(_CHUNK):
                buf += chunk
                if len(buf) > max_bytes:
                    raise _Failed(f"{url} sent more than {max_bytes} bytes (raise --max-bytes)")
                if time.monotonic() - start > deadline:
                    raise _Failed(f"{url} took longer than the {deadline:g} s deadline (raise --timeout)")
            return bytes(buf)
    except urllib.error.HTTPError as exc:  # the server answered: record and go on
        raise _Failed(f"HTTP {exc.code} for {url}") from None
    except TimeoutError:
        raise _Failed(f"{url} stalled for more than {stall:g} s (deadline {deadline:g} s; raise --timeout)") from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError):
            raise _Failed(f"{url}: no answer within {stall:g} s (raise --timeout)") from None
        raise FetchError(f"cannot download {url}: {exc.reason} (network unreachable or server down?)") from exc
    except ConnectionError as exc:
        raise FetchError(f"cannot download {url}: {exc} (network unreachable or server down?)") from exc


def _write_inside(out: Path, name: str, data: bytes) -> None:
    """Write out/name atomically: a fresh temporary file in `out` (O_EXCL, so no link is followed), then a rename."""
    if Path(name).name != name or name in ("", ".", ".."):
        raise ValueError(f"{name!r} would be written outside {out}")
    target = out / name
    fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _entries(ts: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(id, sha256) of every entry; every id must be a COD id, checked before anything is fetched."""
    entries = ts.get("entries") if isinstance(ts, Mapping) else None
    if not isinstance(entries, list) or not all(isinstance(e, Mapping) for e in entries):
        raise ValueError("the test set has no list of entries ({id, sha256} objects)")
    out = []
    for entry in entries:
        cid, want = str(entry.get("id", "")), str(entry.get("sha256", ""))
        if not COD_ID.match(cid):
            raise ValueError(f"test-set id {cid!r} is not a COD id (7 digits); fetch downloads COD entries only")
        if not re.fullmatch(r"[0-9a-f]{64}", want):
            raise ValueError(f"test-set entry {cid} has no sha256 (64 hex digits)")
        out.append((cid, want))
    return out


def fetch_testset(testset_json: str | os.PathLike | Mapping[str, Any], out_dir: str | os.PathLike,
                  base_url: str = COD_BASE_URL, timeout: float = 60.0, max_bytes: int = MAX_BYTES) -> FetchReport:
    """Download `{base_url}{id}.cif` for every entry of a test set into `out_dir`.

    Files already in `out_dir` with the right sha256 are skipped; each download is checked against the manifest
    and written atomically (a temporary name in `out_dir`, then a rename), so an interrupted run leaves no
    partial `.cif`.

    Args:
        testset_json: a manifest dict, a JSON path, or a shipped test-set name ("cod-p21c-small").
        out_dir: the folder to fill (created if needed).
        base_url: where `<id>.cif` files live; a trailing "/" is added if missing.
        timeout: overall seconds per file (not per socket read).
        max_bytes: size cap per file.

    Returns:
        A report: downloaded, present, mismatched (not written) and failed (HTTP errors, deadline, size) ids.

    Raises:
        ValueError: an id that is not a COD id, an entry without sha256, or bad timeout / max_bytes.
        FetchError: the server cannot be reached at all (connection or DNS failure).
    """
    if not timeout > 0 or not max_bytes >= 1:
        raise ValueError(f"need timeout > 0 and max_bytes >= 1, got {timeout} and {max_bytes}")
    entries = _entries(load_testset(testset_json))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base = base_url if base_url.endswith("/") else base_url + "/"
    report = FetchReport()
    for cid, want in entries:
        target = out / f"{cid}.cif"
        if target.is_file() and sha256_file(target) == want:
            report.present.append(cid)
            continue
        try:
            data = _download(f"{base}{cid}.cif", timeout, max_bytes)
        except _Failed as exc:
            report.failed.append({"id": cid, "error": str(exc)})
            continue
        got = hashlib.sha256(data).hexdigest()
        if got != want:
            report.mismatched.append({"id": cid, "expected": want, "got": got})
            continue
        _write_inside(out, target.name, data)
        report.downloaded.append(cid)
    return report
