"""A real HTTP/1.1 server on 127.0.0.1 in a thread, serving a directory, that misbehaves on request.

`faults` maps a request path to what goes wrong: "drop-once" (send half the body, then cut the connection, the
first time only), "drop" (every time), "corrupt" (one byte flipped, same length), "missing" (404), "error" (500).
`hits` counts the GET requests per path.
"""
from __future__ import annotations

import collections
import http.server
import socket
import threading
from pathlib import Path


class FaultyServer:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.faults: dict[str, str] = {}
        self.hits: collections.Counter = collections.Counter()
        self._lock = threading.Lock()
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def __enter__(self) -> "FaultyServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _fault(self, path: str, count: bool) -> str | None:
        with self._lock:
            if count:
                self.hits[path] += 1
            fault = self.faults.get(path)
            if fault == "drop-once" and count:
                self.faults[path] = "served"
            return None if fault == "served" else fault

    def _handler(self):
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _serve(self, body: bool) -> None:
                fault = server._fault(self.path, count=body)
                f = server.root / self.path.lstrip("/")
                if fault == "missing" or ".." in self.path or not f.is_file():
                    self.send_error(404)
                    return
                if fault == "error":
                    self.send_error(500)
                    return
                data = bytearray(f.read_bytes())
                if fault == "corrupt":
                    data[len(data) // 2] ^= 0xFF
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if not body:
                    return
                if fault in ("drop", "drop-once"):
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._serve(body=True)

            def do_HEAD(self) -> None:
                self._serve(body=False)

        return Handler
