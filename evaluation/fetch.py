"""Download the CIFs of a test set from the COD (or a mirror) and check them against the manifest's sha256.

The committed COD test sets already ship their CIFs (`manifests/testsets/cod-p21c.tar.xz`); this is for
getting the same files as loose `<id>.cif` files, or for larger test sets built elsewhere. The COD revises
entries now and then, so a current download can differ from the bytes a manifest was built from: such files
are reported as mismatches and are not written.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from evaluation.testset import load_testset
from manifests.schema import sha256_file

__all__ = ["FetchError", "FetchReport", "fetch_testset"]

COD_BASE_URL = "https://www.crystallography.net/cod/"


class FetchError(RuntimeError):
    """The server could not be reached (connection refused, DNS failure, timeout)."""


@dataclasses.dataclass
class FetchReport:
    """What `fetch_testset` did, per structure id."""

    downloaded: list[str] = dataclasses.field(default_factory=list)
    present: list[str] = dataclasses.field(default_factory=list)  # already there with the right hash
    mismatched: list[dict[str, str]] = dataclasses.field(default_factory=list)  # id, expected, got
    failed: list[dict[str, str]] = dataclasses.field(default_factory=list)  # id, error (HTTP status)

    @property
    def ok(self) -> bool:
        """Every file of the test set is now in place with the right hash."""
        return not self.mismatched and not self.failed


def _download(url: str, timeout: float) -> bytes:
    req = urllib.request.Request(url, headers={"User-Agent": "phaseforge-fetch"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 (http(s) URLs from the caller)
        return resp.read()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def fetch_testset(testset_json: str | os.PathLike | Mapping[str, Any], out_dir: str | os.PathLike,
                  base_url: str = COD_BASE_URL, timeout: float = 60.0) -> FetchReport:
    """Download `{base_url}{id}.cif` for every entry of a test set into `out_dir`.

    Files already in `out_dir` with the right sha256 are skipped; each download is checked against the manifest
    and written atomically (a temporary name, then a rename), so an interrupted run leaves no partial `.cif`.

    Args:
        testset_json: a manifest dict, a JSON path, or a shipped test-set name ("cod-p21c-small").
        out_dir: the folder to fill (created if needed).
        base_url: where `<id>.cif` files live; a trailing "/" is added if missing.
        timeout: seconds per request.

    Returns:
        A report: downloaded, present, mismatched (not written) and failed (HTTP errors such as 404) ids.

    Raises:
        FetchError: the server cannot be reached at all (connection, DNS or timeout failure).
    """
    ts = load_testset(testset_json)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base = base_url if base_url.endswith("/") else base_url + "/"
    report = FetchReport()
    for entry in ts["entries"]:
        cid, want = str(entry["id"]), entry["sha256"]
        target = out / f"{cid}.cif"
        if target.is_file() and sha256_file(target) == want:
            report.present.append(cid)
            continue
        url = f"{base}{cid}.cif"
        try:
            data = _download(url, timeout)
        except urllib.error.HTTPError as exc:  # the server answered: record and go on
            report.failed.append({"id": cid, "error": f"HTTP {exc.code} for {url}"})
            continue
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            reason = getattr(exc, "reason", exc)
            raise FetchError(f"cannot download {url}: {reason} (network unreachable or server down?)") from exc
        got = hashlib.sha256(data).hexdigest()
        if got != want:
            report.mismatched.append({"id": cid, "expected": want, "got": got})
            continue
        _write_atomic(target, data)
        report.downloaded.append(cid)
    return report
