"""Where a manifest and its shards live: a local path, or a URL (http, https, or any fsspec scheme: s3://, gs://
when its backend is installed), read as data and never as code.

A URL names the manifest file (`.../manifest.json`) or its directory; shard names resolve relative to it. Refused
with one line: `pipe:` (webdataset's shell-command "URL"), chained fsspec URLs (`a::b`), query strings and
fragments (relative names could not resolve), unknown schemes, and schemes whose fsspec backend is not
installed (the message names the package). Reading goes through fsspec (one GET per file, bytes in memory, so
sha256 checks need no local copy); a dropped connection, a timeout or a 5xx answer is retried with bounded
exponential back-off, then fails naming the URL. Why fsspec and not webdataset's `gopen`: gopen fetches
http(s) by running `curl` in a shell and s3/gs through `pipe:` commands, which files from outside must not
choose; fsspec is already installed with torch, and its http backend needs only aiohttp.
"""
from __future__ import annotations

import errno
import hashlib
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import fsspec

from manifests.schema import MANIFEST_NAME, Manifest, ManifestError, load_manifest

__all__ = ["ATTEMPTS", "BACKOFF_S", "BACKOFF_MAX_S", "TIMEOUT_S", "Located", "is_url", "check_url", "join",
           "read_url", "url_size", "open_manifest"]

ATTEMPTS = 5          # tries per file: 4 retries after the first failure
BACKOFF_S = 0.25      # wait before the first retry, doubled each time ...
BACKOFF_MAX_S = 4.0   # ... up to this: at most 0.25 + 0.5 + 1 + 2 = 3.75 s of waiting per file
TIMEOUT_S = 60        # connect and per-read timeout of an http(s) request (a stalled server is a failure)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_EXTRAS = {"s3": "s3fs (pip install 'phaseforge[s3]')", "gs": "gcsfs (pip install 'phaseforge[gcs]')",
           "gcs": "gcsfs (pip install 'phaseforge[gcs]')", "http": "aiohttp", "https": "aiohttp"}


def is_url(location: str | Path) -> bool:
    """Anything with `://` (or webdataset's `pipe:`) is a URL, to be checked; everything else a local path."""
    return isinstance(location, str) and ("://" in location or location.startswith("pipe:"))


def check_url(url: str) -> str:
    """The URL's scheme, once the URL is one phaseforge reads (ManifestError otherwise)."""
    if url.startswith("pipe:"):
        raise ManifestError(f"{url[:80]}: `pipe:` URLs run shell commands, and phaseforge reads manifests and "
                            "shards as data only: give an http(s)://, s3://, gs:// URL or a local path")
    if "::" in url:
        raise ManifestError(f"{url}: chained fsspec URLs are not accepted; give one http(s)://, s3:// or gs:// URL")
    if "?" in url or "#" in url:
        raise ManifestError(f"{url}: a query string or fragment cannot carry over to the shard names, which resolve "
                            "relative to the manifest's URL; give the plain URL")
    match = _SCHEME.match(url)
    if match is None:
        raise ManifestError(f"{url}: not a URL phaseforge reads; give http(s)://, s3://, gs:// or a local path")
    scheme = match[1].lower()
    try:
        fsspec.get_filesystem_class(scheme)
    except ValueError:
        raise ManifestError(f"{url}: unknown URL scheme {scheme}://; give http(s)://, s3://, gs:// (any scheme "
                            "with an installed fsspec backend) or a local path") from None
    except ImportError:
        need = _EXTRAS.get(scheme, "its fsspec backend")
        raise ManifestError(f"{url}: reading {scheme}:// URLs needs {need}, which is not installed") from None
    return scheme


def join(base: str, name: str) -> str:
    """A shard's location: its (already checked) name beside the manifest, for a directory or a URL prefix."""
    return f"{base.rstrip('/')}/{name}" if is_url(base) else str(Path(base) / name)


async def _http_client(**kwargs):
    """An aiohttp session without keep-alive: one GET per whole file makes pooling worth little, and a pooled
    socket that a forked loader worker inherited was seen to stall a later request until the read timeout."""
    import aiohttp
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True), **kwargs)


def _filesystem(scheme: str):
    if scheme in ("http", "https"):
        import aiohttp  # fsspec's http backend is built on it (and imports it only for http URLs)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=TIMEOUT_S, sock_read=TIMEOUT_S)
        return fsspec.filesystem(scheme, client_kwargs={"timeout": timeout}, get_client=_http_client)
    return fsspec.filesystem(scheme)


def _transient(exc: BaseException) -> bool:
    """A failure worth retrying: the connection (refused, reset, dropped mid-body), a timeout, HTTP 5xx/408/429."""
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    status = getattr(exc, "status", None)
    if isinstance(status, int):
        return status >= 500 or status in (408, 429)
    return isinstance(exc, (OSError, TimeoutError)) or type(exc).__module__.startswith("aiohttp")


def _give_up_unless_transient(exc: Exception, url: str, what: str, attempt: int) -> None:
    """Raise OSError naming the URL for a permanent failure or the last attempt; return to retry."""
    if isinstance(exc, FileNotFoundError):
        raise FileNotFoundError(errno.ENOENT, f"{what} not found there", url) from None
    if isinstance(exc, PermissionError):
        raise PermissionError(errno.EACCES, f"{what}: access denied", url) from None
    if not _transient(exc):
        raise OSError(errno.EIO, f"{what} unreadable ({type(exc).__name__}: {exc})", url) from None
    if attempt == ATTEMPTS - 1:
        text = " ".join(str(exc).split())[:160]
        raise OSError(errno.ECONNRESET, f"{what} unreachable or cut off after {ATTEMPTS} attempts "
                                        f"(last: {type(exc).__name__}: {text})", url) from None


def _retrying(url: str, what: str, call):
    """call(fs, url), retried with bounded back-off; OSError naming the URL when it keeps failing."""
    fs = _filesystem(check_url(url))
    attempt = 0
    while True:
        try:
            return call(fs, url)
        except Exception as exc:  # noqa: BLE001 - classified: permanent ones are raised at once
            _give_up_unless_transient(exc, url, what, attempt)
        time.sleep(min(BACKOFF_MAX_S, BACKOFF_S * 2 ** attempt))
        attempt += 1


def read_url(url: str, what: str = "file") -> bytes:
    """All bytes at `url` (one request; retried whole on a dropped connection)."""
    return _retrying(url, what, lambda fs, u: fs.cat_file(u))


def url_size(url: str, what: str = "file") -> int:
    return int(_retrying(url, what, lambda fs, u: fs.size(u)))


@dataclass(frozen=True)
class Located:
    """A manifest and where it came from: `location` is its resolved path or URL, `base` where its shards are."""

    manifest: Manifest
    location: str
    base: str
    sha256: str   # of the manifest file's bytes (what a checkpoint compares on resume)

    @property
    def remote(self) -> bool:
        return is_url(self.location)

    def shard(self, name: str) -> str:
        return join(self.base, name)


def open_manifest(location: str | Path) -> Located:
    """Read and check the manifest at a local path (file or directory) or a URL; ManifestError names it."""
    text = str(location)
    if not is_url(text):
        m, directory = load_manifest(location)
        path = (directory / MANIFEST_NAME).resolve() if Path(location).is_dir() else Path(location).resolve()
        return Located(m, str(path), str(directory.resolve()), hashlib.sha256(path.read_bytes()).hexdigest())
    check_url(text)
    url = text if text.rsplit("/", 1)[-1].endswith(".json") else f"{text.rstrip('/')}/{MANIFEST_NAME}"
    try:
        data = read_url(url, "manifest")
    except OSError as exc:
        hint = (" (a URL names a manifest's .json file or its directory)"
                if isinstance(exc, FileNotFoundError) and url != text else "")
        raise ManifestError(f"{url}: {exc.strerror}{hint}; check the URL and that the server is up") from None
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise ManifestError(f"{url} is not a phaseforge manifest (not JSON: {data[:40]!r}...)") from None
    return Located(Manifest.from_dict(doc, url), url, url.rsplit("/", 1)[0], hashlib.sha256(data).hexdigest())
