"""fetch_testset against a local http.server on 127.0.0.1 (never the internet)."""
from __future__ import annotations

import functools
import hashlib
import http.server
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from evaluation.fetch import FetchError, fetch_testset

CIF_DIR = Path(__file__).parent / "data" / "cif"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (signature of the base class)
        pass


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[str]:
    root = tmp_path / "served"
    shutil.copytree(CIF_DIR, root)
    handler = functools.partial(_QuietHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def _sha(cid: str) -> str:
    return hashlib.sha256((CIF_DIR / f"{cid}.cif").read_bytes()).hexdigest()


def _testset() -> dict:
    return {"entries": [
        {"id": "9004097", "sha256": _sha("9004097")},
        {"id": "2101932", "sha256": _sha("2101932")},
        {"id": "1209222", "sha256": "f" * 64},  # the server's copy differs from the manifest
        {"id": "7654321", "sha256": "0" * 64},  # not on the server
    ]}


def test_fetch_downloads_checks_and_skips(server: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    rep = fetch_testset(_testset(), out, base_url=server, timeout=10)
    assert rep.downloaded == ["9004097", "2101932"] and rep.present == []
    assert [m["id"] for m in rep.mismatched] == ["1209222"] and rep.mismatched[0]["got"] == _sha("1209222")
    assert [f["id"] for f in rep.failed] == ["7654321"] and "404" in rep.failed[0]["error"]
    assert not rep.ok
    assert sorted(p.name for p in out.iterdir()) == ["2101932.cif", "9004097.cif"]  # no temp files, no bad file
    assert (out / "9004097.cif").read_bytes() == (CIF_DIR / "9004097.cif").read_bytes()

    again = fetch_testset(_testset(), out, base_url=server.rstrip("/"), timeout=10)
    assert again.present == ["9004097", "2101932"] and again.downloaded == []


def test_fetch_replaces_a_corrupt_local_file(server: str, tmp_path: Path) -> None:
    (tmp_path / "9004097.cif").write_bytes(b"truncated")
    ts = {"entries": [{"id": "9004097", "sha256": _sha("9004097")}]}
    rep = fetch_testset(ts, tmp_path, base_url=server, timeout=10)
    assert rep.ok and rep.downloaded == ["9004097"]
    assert (tmp_path / "9004097.cif").read_bytes() == (CIF_DIR / "9004097.cif").read_bytes()


def test_fetch_network_failure_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ts = {"entries": [{"id": "9004097", "sha256": _sha("9004097")}]}
    with pytest.raises(FetchError, match="cannot download http://127.0.0.1"):
        fetch_testset(ts, tmp_path, base_url=f"http://127.0.0.1:{port}/", timeout=5)
    assert list(tmp_path.iterdir()) == []
