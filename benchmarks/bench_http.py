"""Loader throughput over loopback HTTP beside local files: the same tar and tar.gz shards, read from the
directory and from `python -m http.server` on 127.0.0.1 (a separate process), sha256 checked either way.

Workers = 0 times the loader in this process: `samples_per_cpu_s` is the loader's per-core cost (the HTTP client
and its I/O thread included, the server's process not), steadier than wall time on a shared machine. Workers 1
and 2 give wall-clock samples/s per worker. Prints one JSON object.

    python -m benchmarks.bench_http --out benchmarks/results/http.json [--count 8000 --shard-size 1000]
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

try:
    from benchmarks.bench_loader import ensure, loader_parser, rate
    from benchmarks.common import emit
except ImportError:  # run as a script
    from bench_loader import ensure, loader_parser, rate  # type: ignore
    from common import emit  # type: ignore


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(root: Path) -> tuple[subprocess.Popen, str]:
    """`python -m http.server` on 127.0.0.1 serving `root`; returns (process, base URL) once it answers."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                             "--directory", str(root)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the loopback HTTP server did not start")


def main() -> None:
    ap = loader_parser(__doc__)
    ap.add_argument("--workers", default="0,1,2")
    ap.add_argument("--data", type=Path, default=Path("/tmp/phaseforge-bench-loader"))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    res = {"benchmark": "bench_http", "cores": len(os.sched_getaffinity(0)), "batch_size": args.batch_size,
           "streams": args.streams, "shard_size": args.shard_size, "server": "python -m http.server (HTTP/1.0)",
           "results": {}}
    sets = {"tar": ensure(args.data / "tar", "tar", args.count, args.shard_size),
            "tar_gz": ensure(args.data / "tar-gz", "tar", args.count, args.shard_size, compression="gz")}
    proc, url = serve(args.data)
    try:
        for name, path in sets.items():
            for where, loc in (("local", path), ("http", f"{url}/{path.name}")):  # alternated: same machine load
                res["results"][f"{name}_{where}"] = [
                    rate(loc, w, args.streams, args.shard_size, args.batch_size) for w in workers]
    finally:
        proc.terminate()
        proc.wait()
    for name in sets:
        a, b = res["results"][f"{name}_local"], res["results"][f"{name}_http"]
        res["results"][f"{name}_http_over_local"] = [round(y["samples_per_s"] / x["samples_per_s"], 3)
                                                     for x, y in zip(a, b)]
    emit(res, args.out)


if __name__ == "__main__":
    main()
