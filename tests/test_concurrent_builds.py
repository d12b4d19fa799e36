"""Two writers on one directory (issue 13 §1), with real processes: a build of another configuration is refused
with one line, builds of the same configuration share the shards and end with the bytes of one build, and only
dead writers' debris is removed."""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import builder.build as build_module
from builder.build import build, make_header
from builder.strategy import load_strategy
from manifests.locks import Claim
from manifests.schema import host_name, load_manifest, partial_name, verify_dir

CTX = mp.get_context("fork")
STRATEGY = "lognormal-molecules"
ROOT = Path(__file__).resolve().parent.parent


def header(seed: int = 5, count: int = 36, size: int = 3):
    return make_header(load_strategy(STRATEGY), count, size, "tar", seed)


def digest(d: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(d.glob("shard-*"))} | {"manifest": (d / "manifest.json").read_bytes()}


def slow_shards(monkeypatch, seconds: float = 0.05) -> None:
    """Make each shard take a while, so that two builds started together really overlap (inherited by fork)."""
    original = build_module.build_shard

    def slow(*args, **kwargs):
        time.sleep(seconds)
        return original(*args, **kwargs)
    monkeypatch.setattr(build_module, "build_shard", slow)


def _build_in_child(out: Path, seed: int, barrier, results) -> None:
    barrier.wait(timeout=30)
    try:
        r = build(out, header(seed), progress=False)
        results.put(("ok", seed, r.built, r.kept, r.waited))
    except ValueError as exc:
        results.put(("refused", seed, str(exc)))


def run_two(out: Path, seeds: tuple[int, int]) -> list[tuple]:
    barrier, results = CTX.Barrier(2), CTX.Queue()
    procs = [CTX.Process(target=_build_in_child, args=(out, s, barrier, results)) for s in seeds]
    for p in procs:
        p.start()
    got = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    return got


def test_same_configuration_from_two_processes_at_once_equals_one_build(tmp_path, monkeypatch):
    slow_shards(monkeypatch)
    got = run_two(tmp_path / "shared", (5, 5))
    monkeypatch.undo()
    assert [g[0] for g in got] == ["ok", "ok"]
    built = [g[2] for g in got]
    assert sum(built) == 12, got       # every shard written exactly once
    assert min(built) >= 1, got        # and both processes wrote some: they shared the work
    build(tmp_path / "single", header(5), progress=False)
    assert digest(tmp_path / "shared") == digest(tmp_path / "single")
    assert not list((tmp_path / "shared").rglob("*.partial-*"))


def test_other_configuration_started_at_the_same_time_is_refused(tmp_path, monkeypatch):
    slow_shards(monkeypatch)
    got = run_two(tmp_path / "race", (5, 6))
    monkeypatch.undo()
    assert sorted(g[0] for g in got) == ["ok", "refused"], got
    won = next(g for g in got if g[0] == "ok")[1]
    refusal = next(g for g in got if g[0] == "refused")[2]
    assert "another configuration" in refusal and "root_seed" in refusal
    m, d = load_manifest(tmp_path / "race")
    assert m.root_seed == won and verify_dir(m, d) == []
    build(tmp_path / "single", header(won), progress=False)
    assert digest(tmp_path / "race") == digest(tmp_path / "single")


def test_cli_refuses_another_configuration_with_one_line(tmp_path):
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "builder.cli", "shards", "--strategy", STRATEGY, "--count", "24",
           "--shard-size", "6", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([*cmd, "--seed", s], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for s in ("5", "6")]
    outs = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    assert sorted(rc for rc, _, _ in outs) == [0, 2], outs
    _, _, err = next(o for o in outs if o[0] == 2)
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "another configuration" in lines[0] and "Traceback" not in err
    m, d = load_manifest(out)
    assert verify_dir(m, d) == []


def _hold_claim(out: Path, name: str, ready) -> None:
    claim = Claim(out, name)
    assert claim.try_acquire()
    partial_name(out / name).write_bytes(b"half a shard")  # what a writer killed mid-shard leaves
    ready.set()
    time.sleep(120)


def holder(out: Path, name: str):
    ready = CTX.Event()
    p = CTX.Process(target=_hold_claim, args=(out, name, ready))
    p.start()
    assert ready.wait(30)
    return p, out / f".{name}.partial-{host_name()}-{p.pid}"


def test_a_killed_writers_shard_is_taken_over(tmp_path):
    out, h = tmp_path / "t", header(count=12, size=3)
    out.mkdir()
    proc, debris = holder(out, h.shard_name(2))
    killer = threading.Timer(1.0, os.kill, (proc.pid, signal.SIGKILL))
    killer.start()
    r = build(out, h, progress=False)  # builds 0, 1, 3, waits for 2 until its writer dies, then builds it
    proc.join()
    assert (r.built, r.kept, r.waited) == (4, 0, 0)
    assert not debris.exists()
    build(tmp_path / "single", h, progress=False)
    assert digest(out) == digest(tmp_path / "single")


def test_only_dead_writers_debris_is_removed(tmp_path):
    out, h = tmp_path / "d", header(count=12, size=3)
    build(out, h, progress=False)
    proc, live = holder(out, h.shard_name(1))
    dead_pid = CTX.Process(target=int)
    dead_pid.start()
    dead_pid.join()
    dead = out / f".manifest.json.partial-{host_name()}-{dead_pid.pid}"
    elsewhere = out / ".manifest.json.partial-some_other_node-1"
    dead.write_text("{")
    elsewhere.write_text("{")
    r = build(out, h, progress=False)
    assert r.kept == 4 and live.exists()  # its writer still holds shard 1: untouched
    assert not dead.exists() and elsewhere.exists()  # a dead pid here goes; another host's file may be live
    proc.kill()
    proc.join()
    build(out, h, progress=False)
    assert not live.exists()


@pytest.mark.parametrize("busy", [True, False])
def test_claims_exclude_each_other_across_processes(tmp_path, busy):
    if busy:
        proc, _ = holder(tmp_path, "x")
    c = Claim(tmp_path, "x")
    assert c.try_acquire() is not busy
    if busy:
        assert "pid" in c.holder() and not c.acquire(timeout=0.3)
        proc.kill()
        proc.join()
        assert c.acquire(timeout=10)
    c.release()
