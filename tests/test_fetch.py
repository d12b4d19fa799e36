"""fetch_testset against a local http.server on 127.0.0.1 (never the internet)."""
from __future__ import annotations

import functools
import hashlib
import http.server
import shutil
import socket
import threading
import time
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
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
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


# ----------------------------------------------------------------------------- servers that misbehave


class _Hostile(http.server.BaseHTTPRequestHandler):
    """GET /<mode>/<id>.cif: trickle (one byte every 0.2 s), endless (no length, never ends), stall (headers,
    then nothing), huge (a Content-Length over any cap), big (200 kB of a real body)."""

    stop: threading.Event
    hits: list[str]
    big: bytes = b""

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.hits.append(self.path)
        mode = self.path.strip("/").split("/")[0]
        self.send_response(200)
        if mode == "huge":
            self.send_header("Content-Length", str(10**12))
        if mode == "big":
            self.send_header("Content-Length", str(len(self.big)))
        self.end_headers()
        try:
            if mode == "big":
                self.wfile.write(self.big)
                return
            while not self.stop.is_set():
                if mode == "trickle":
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    self.stop.wait(0.2)
                elif mode in ("endless", "huge"):
                    self.wfile.write(b"y" * 65536)
                else:  # stall
                    self.stop.wait(0.1)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up, as it should


@pytest.fixture()
def hostile() -> Iterator[tuple[str, list[str]]]:
    stop, hits = threading.Event(), []
    handler = type("H", (_Hostile,), {"stop": stop, "hits": hits, "big": b"z" * 200_000})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/", hits
    finally:
        stop.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def _one(cid: str = "1234567", data: bytes | None = None) -> dict:
    return {"entries": [{"id": cid, "sha256": hashlib.sha256(data).hexdigest() if data else "0" * 64}]}


@pytest.mark.parametrize("mode, message", [("trickle", "deadline"), ("stall", "stalled")])
def test_a_slow_server_cannot_hold_a_download_past_the_deadline(hostile, tmp_path: Path, mode, message) -> None:
    url, _ = hostile
    t0 = time.monotonic()
    rep = fetch_testset(_one(), tmp_path, base_url=url + mode, timeout=1.0)
    assert time.monotonic() - t0 < 1.25 * 1.0 + 1.0  # the deadline (+ one read's wait), not forever
    assert [f["id"] for f in rep.failed] == ["1234567"] and message in rep.failed[0]["error"]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("mode, message", [("endless", "more than 100000 bytes"), ("huge", "over the cap")])
def test_an_endless_or_oversized_body_is_cut_at_the_cap(hostile, tmp_path: Path, mode, message) -> None:
    url, _ = hostile
    rep = fetch_testset(_one(), tmp_path, base_url=url + mode, timeout=20.0, max_bytes=100_000)
    assert message in rep.failed[0]["error"] and "--max-bytes" in rep.failed[0]["error"]
    assert list(tmp_path.iterdir()) == []


def test_the_cap_can_be_raised(hostile, tmp_path: Path) -> None:
    url, _ = hostile
    ts = _one(data=b"z" * 200_000)
    assert not fetch_testset(ts, tmp_path, base_url=url + "big", max_bytes=100_000).ok
    rep = fetch_testset(ts, tmp_path, base_url=url + "big", max_bytes=300_000)
    assert rep.ok and (tmp_path / "1234567.cif").stat().st_size == 200_000


@pytest.mark.parametrize("cid", ["../x", "../../etc/passwd", "/tmp/x", "123456", "12345678", "1234567.cif", ""])
def test_ids_that_are_not_cod_ids_are_refused_before_anything_is_fetched(hostile, tmp_path: Path, cid) -> None:
    url, hits = hostile
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="not a COD id"):
        fetch_testset(_one(cid), out, base_url=url + "big")
    assert hits == [] and list(tmp_path.iterdir()) == []


def test_writes_stay_inside_out_even_through_a_planted_link(server: str, tmp_path: Path) -> None:
    """A symlink planted at OUT/<id>.cif is replaced, not written through."""
    out, victim = tmp_path / "out", tmp_path / "victim.txt"
    out.mkdir()
    victim.write_text("keep")
    (out / "9004097.cif").symlink_to(victim)
    rep = fetch_testset({"entries": [{"id": "9004097", "sha256": _sha("9004097")}]}, out, base_url=server)
    assert rep.downloaded == ["9004097"] and victim.read_text() == "keep"
    assert not (out / "9004097.cif").is_symlink()
    assert sorted(p.name for p in out.iterdir()) == ["9004097.cif"]
