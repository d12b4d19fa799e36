"""Manifests and shards over HTTP (issue 10.2): a real server on 127.0.0.1 in a thread that drops connections,
corrupts and hides shards; refused URLs and shard names; a lost shard is an error, never a short epoch."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from builder.build import build, make_header
from manifests import urls
from manifests.schema import ManifestError, ShardError
from manifests.shardio import read_samples
from tests.http_server import FaultyServer
from tests.test_data import CFG, build_set, one_thread, same_batches, strategy, take  # noqa: F401 (fixture)
from training.data import Loader, open_source, open_sources, read_shard

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("www")
    build_set(root / "tar", count=16, shard_size=4)
    build_set(root / "hdf5", count=16, shard_size=4, fmt="hdf5")
    build(root / "gz", make_header(strategy(), 16, 4, "tar", 3, True, "gz"), workers=1, progress=False)
    (root / "page.html").write_text("<html><body>not a manifest</body></html>")
    (root / "notes.json").write_text('{"title": "a JSON file, not a manifest"}')
    (root / "binary").mkdir()
    (root / "binary" / "manifest.json").write_bytes(bytes(range(256)))
    with FaultyServer(root) as srv:
        yield srv


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch, served):
    monkeypatch.setattr(urls, "BACKOFF_S", 0.01)
    served.faults.clear()
    served.hits.clear()


@pytest.mark.parametrize("name", ["tar", "gz", "hdf5"])
def test_batches_over_http_equal_the_local_ones(served, name):
    local = served.root / name
    src = open_source(f"{served.url}/{name}")   # the directory's URL; .../manifest.json works too
    assert src.manifest == f"{served.url}/{name}/manifest.json" and src.directory == f"{served.url}/{name}"
    assert src.describe()["manifest_sha256"] == open_source(local).describe()["manifest_sha256"]
    a = take(Loader([src], CFG), 8)
    b = take(Loader(open_sources([local]), CFG), 8)
    assert same_batches(a, b)
    assert served.hits[f"/{name}/shard-000000{'.tar.gz' if name == 'gz' else '.h5' if name == 'hdf5' else '.tar'}"]


def test_worker_processes_stream_over_http_too(served):
    a = take(Loader(open_sources([f"{served.url}/tar/manifest.json"]), CFG, workers=2), 8)
    b = take(Loader(open_sources([served.root / "tar"]), CFG, workers=0), 8)
    assert same_batches(a, b)


def test_a_dropped_connection_is_retried_and_the_bytes_still_checked(served):
    src = open_source(f"{served.url}/tar")
    served.faults["/tar/shard-000001.tar"] = "drop-once"
    recs = read_shard(src, 1, "sha256")
    assert served.hits["/tar/shard-000001.tar"] == 2
    local = read_samples(served.root / "tar" / "shard-000001.tar")
    assert [r["__key__"] for r in recs] == [r["__key__"] for r in local]
    assert all(np.array_equal(r["amplitude"], s["amplitude"]) for r, s in zip(recs, local))


def test_a_connection_that_keeps_dropping_fails_naming_the_url(served):
    src = open_source(f"{served.url}/gz")
    served.faults["/gz/shard-000002.tar.gz"] = "drop"
    with pytest.raises(ShardError) as exc:
        read_shard(src, 2)
    msg = str(exc.value)
    assert f"{served.url}/gz/shard-000002.tar.gz" in msg and f"after {urls.ATTEMPTS} attempts" in msg
    assert "\n" not in msg and served.hits["/gz/shard-000002.tar.gz"] == urls.ATTEMPTS


def test_a_server_error_is_retried_and_a_missing_shard_is_not(served):
    src = open_source(f"{served.url}/hdf5")
    served.faults["/hdf5/shard-000003.h5"] = "error"
    with pytest.raises(ShardError, match=f"after {urls.ATTEMPTS} attempts"):
        read_shard(src, 3)
    served.faults["/hdf5/shard-000003.h5"] = "missing"
    served.hits.clear()
    with pytest.raises(ShardError, match="not found"):
        read_shard(src, 3)
    assert served.hits["/hdf5/shard-000003.h5"] == 1


@pytest.mark.parametrize("verify,why", [("sha256", "sha256 differs"), ("none", "unreadable shard")])
def test_a_corrupt_shard_is_named(served, verify, why):
    src = open_source(f"{served.url}/gz", verify=verify)
    served.faults["/gz/shard-000001.tar.gz"] = "corrupt"
    with pytest.raises(ShardError, match=why) as exc:
        read_shard(src, 1, verify)
    assert f"{served.url}/gz/shard-000001.tar.gz" in str(exc.value)


def test_an_epoch_that_loses_a_shard_is_an_error_not_a_short_epoch(served):
    """A shard that disappears after training started stops the loader (in a worker process too)."""
    src = open_source(f"{served.url}/tar")
    served.faults["/tar/shard-000002.tar"] = "missing"
    for workers in (0, 1):
        it = iter(Loader([src], CFG, workers=workers))
        with pytest.raises(ShardError, match="shard-000002.tar"):
            for _ in range(3 * 16 // CFG.batch_size):  # three epochs: every shard is read
                next(it)
        it.close()


def test_bad_manifest_urls_are_refused_with_one_line(served, tmp_path):
    closed = f"http://127.0.0.1:{_closed_port()}/data"
    cases = {
        "pipe:curl -s http://x/manifest.json": "pipe:",
        f"{served.url}/page.html": "a URL names a manifest's .json file or its directory",
        f"{served.url}/notes.json": "not a phaseforge manifest",
        f"{served.url}/binary": "not a phaseforge manifest (not JSON",
        f"{served.url}/nothing/manifest.json": "not found",
        closed: f"after {urls.ATTEMPTS} attempts",
        f"simplecache::{served.url}/tar": "chained",
        f"{served.url}/tar/manifest.json?sig=1": "query string",
        "nosuchscheme://host/data": "unknown URL scheme",
    }
    missing = _scheme_without_backend()
    if missing:
        cases[f"{missing}://bucket/data"] = "needs"
    for url, why in cases.items():
        with pytest.raises(ManifestError) as exc:
            open_source(url)
        assert why in str(exc.value) and "\n" not in str(exc.value), (url, str(exc.value))


@pytest.mark.parametrize("name", ["../tar/shard-000000.tar", "pipe:cat shard-000000.tar", "/etc/passwd",
                                  "http://127.0.0.2/shard-000000.tar", "shard-000000.tar; rm -rf x",
                                  "shard-000001.tar"])
def test_shard_names_from_a_manifest_are_data_never_paths_or_commands(served, tmp_path, name):
    doc = json.loads((served.root / "tar" / "manifest.json").read_text())
    doc["shards"][0]["file"] = name
    evil = served.root / "evil"
    evil.mkdir(exist_ok=True)
    (evil / "manifest.json").write_text(json.dumps(doc))
    for where in (f"{served.url}/evil", evil):
        with pytest.raises(ManifestError, match="not a shard name this build writes"):
            open_source(where)
    shutil.rmtree(evil)


def _closed_port() -> int:
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _scheme_without_backend() -> str | None:
    """A scheme fsspec knows whose backend is not installed here (s3, gs, ...), if any."""
    import fsspec
    for scheme in ("s3", "gs", "abfs", "hf"):
        try:
            fsspec.get_filesystem_class(scheme)
        except ImportError:
            return scheme
    return None


@pytest.mark.slow
def test_fit_refuses_bad_sources_before_training(served, tmp_path):
    """Through `python -m training fit` (issue 10.5): one line, exit 2, and the run directory is never made."""
    from builder.build import write_on_the_fly
    otf = tmp_path / "otf"
    write_on_the_fly(otf, make_header(strategy(), 16, 4, "tar", 3))
    doc = json.loads((otf / "manifest.json").read_text())
    doc["strategy_id"] = "0123456789abcdef"   # what a manifest of another code version looks like here
    (otf / "manifest.json").write_text(json.dumps(doc))
    cases = {
        "unreachable": (f"http://127.0.0.1:{_closed_port()}/data", "unreachable or cut off"),
        "not a manifest": (f"{served.url}/notes.json", "not a phaseforge manifest"),
        "not regenerable": (str(otf), "cannot be regenerated here"),
    }
    missing = _scheme_without_backend()
    if missing:
        cases["no backend"] = (f"{missing}://bucket/data", "which is not installed")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    procs = {name: subprocess.Popen(
        [sys.executable, "-m", "training", "fit", "--train", url, "--val", str(served.root / "tar"),
         "--preset", "tiny", "--out", str(tmp_path / name.replace(" ", "-")), "--steps", "2", "--workers", "0",
         "--device", "cpu", "--no-progress"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True) for name, (url, _) in cases.items()}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 2, (name, err)
        assert err.startswith("error: ") and err.count("\n") == 1 and cases[name][1] in err, (name, err)
        assert out == "" and not (tmp_path / name.replace(" ", "-")).exists(), name


def test_verify_and_inspect_take_urls(served):
    from click.testing import CliRunner

    from builder.cli import cli as build_cli
    run = CliRunner().invoke
    res = run(build_cli, ["verify", f"{served.url}/gz", "--deep", "3"])
    assert res.exit_code == 0 and "4 shards, 16 samples, 3 samples regenerated identically" in res.output
    local = run(build_cli, ["inspect", str(served.root / "gz"), "--key", "9"]).output
    remote = run(build_cli, ["inspect", f"{served.url}/gz/manifest.json", "--key", "9"]).output
    assert remote.split("\n", 1)[1] == local.split("\n", 1)[1] and remote.startswith(served.url)
    served.faults["/gz/shard-000003.tar.gz"] = "corrupt"
    res = run(build_cli, ["verify", f"{served.url}/gz"])
    assert res.exit_code == 1 and "shard-000003.tar.gz: corrupt (sha256 differs" in res.output
