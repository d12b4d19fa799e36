"""Shard builds: same bytes every time, any worker count or range split, crash-safe, resumable, verifiable."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from click.testing import CliRunner

from builder.build import deep_check
from builder.cli import cli
from builder.sample import generate_sample
from builder.strategy import load_strategy
from manifests.schema import load_manifest, verify_dir
from manifests.shardio import read_samples

STRATEGY = "lognormal-molecules"


def run(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def shards_cmd(out: Path, *extra: str, count: int = 24, size: int = 6, fmt: str = "tar"):
    return run("shards", "--strategy", STRATEGY, "--count", count, "--shard-size", size, "--format", fmt,
               "--seed", 5, "--out", out, *extra)


def digest(d: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(d.glob("shard-*"))} | {"manifest": (d / "manifest.json").read_bytes()}


@pytest.mark.parametrize("fmt", ["tar", "hdf5"])
def test_same_bytes_twice_and_across_worker_counts(tmp_path, fmt):
    assert shards_cmd(tmp_path / "a", fmt=fmt).exit_code == 0
    assert shards_cmd(tmp_path / "b", "--workers", "2", fmt=fmt).exit_code == 0
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    m, d = load_manifest(tmp_path / "a")
    assert m.count == 24 and len(m.shards) == 4 and verify_dir(m, d) == []


def test_sample_is_independent_of_shard_size(tmp_path):
    shards_cmd(tmp_path / "a", size=6)
    shards_cmd(tmp_path / "b", size=5)
    recs = {}
    for name in ("a", "b"):
        m, d = load_manifest(tmp_path / name)
        recs[name] = {r["__key__"]: r for e in m.shards for r in read_samples(d / e.file)}
    assert recs["a"].keys() == recs["b"].keys()
    for k in recs["a"]:
        assert recs["a"][k]["amplitude"].tobytes() == recs["b"][k]["amplitude"].tobytes()


@pytest.mark.parametrize("compress", ["none", "gz"])
def test_range_builds_and_finalize_equal_one_build(tmp_path, compress):
    shards_cmd(tmp_path / "one", "--compress", compress)
    for rng in ("2:4", "0:2"):  # out of order, as cluster tasks finish
        res = shards_cmd(tmp_path / "many", "--shards", rng, "--compress", compress)
        assert res.exit_code == 0 and "manifest.part-" in res.output
    assert not (tmp_path / "many" / "manifest.json").exists()
    assert run("finalize", tmp_path / "many", "--workers", "3").exit_code == 0
    assert digest(tmp_path / "one") == digest(tmp_path / "many")
    res = run("verify", tmp_path / "many", "--deep", "6")
    assert res.exit_code == 0 and "6 samples regenerated identically" in res.output


def test_threaded_hashing_names_the_same_problems_in_the_same_order(tmp_path):
    """finalize/verify hash shards in threads: any thread count gives the one-thread answer, shard by shard."""
    out = tmp_path / "h"
    shards_cmd(out, count=36, size=3)
    m, _ = load_manifest(out)
    assert verify_dir(m, out, workers=4) == []
    (out / "shard-000002.tar").unlink()
    with open(out / "shard-000005.tar", "r+b") as fh:  # same size, other bytes
        fh.seek(600)
        fh.write(b"\x00\xff")
    with open(out / "shard-000009.tar", "ab") as fh:  # other size
        fh.write(b"\x00")
    (out / "shard-000099.tar").write_bytes(b"stray")
    one = verify_dir(m, out, workers=1)
    assert [p.split(":")[0] for p in one] == ["shard-000002.tar", "shard-000005.tar", "shard-000009.tar",
                                              "shard-000099.tar"]
    assert all(verify_dir(m, out, workers=w) == one for w in (2, 3, 8))


def test_finalize_names_missing_shards(tmp_path):
    shards_cmd(tmp_path / "p", "--shards", "0:2")
    res = run("finalize", tmp_path / "p")
    assert res.exit_code == 2 and "2:4" in res.output


@pytest.mark.parametrize("compress, ext", [("none", "tar"), ("gz", "tar.gz")])
def test_resume_rebuilds_only_what_is_bad(tmp_path, compress, ext):
    out = tmp_path / "r"
    shards_cmd(out, "--compress", compress)
    reference = digest(out)
    (out / "manifest.json").unlink()
    (out / f"shard-000001.{ext}").unlink()
    with open(out / f"shard-000002.{ext}", "r+b") as fh:  # corrupt a kept shard: it must be rebuilt
        fh.seek(700)
        fh.write(b"\x00\xff")
    (out / f".shard-000003.{ext}.partial-999").write_bytes(b"half a shard")  # debris of a killed writer
    mtime0 = (out / f"shard-000000.{ext}").stat().st_mtime_ns
    res = shards_cmd(out, "--compress", compress)
    assert res.exit_code == 0 and "(2 shards built, 2 kept)" in res.output
    assert digest(out) == reference
    assert (out / f"shard-000000.{ext}").stat().st_mtime_ns == mtime0  # a good shard is kept, not rewritten
    assert not list(out.glob(".*.partial-*"))


@pytest.mark.slow
def test_killed_build_leaves_no_partial_file_and_resumes(tmp_path):
    out = tmp_path / "k"
    cmd = [sys.executable, "-m", "builder.cli", "shards", "--strategy", STRATEGY, "--count", "600",
           "--shard-size", "20", "--seed", "5", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline:
        if out.exists() and len(list((out / ".entries").glob("*.json"))) >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists()
    finals = sorted(out.glob("shard-*.tar"))
    assert 3 <= len(finals) < 30
    for f in finals:  # whatever lies under a final name is a whole shard
        assert len(read_samples(f)) == 20
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    subprocess.run([*cmd[:-1], str(tmp_path / "clean")], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    assert digest(out) == digest(tmp_path / "clean")
    assert not list(out.glob(".*.partial-*"))


def test_verify_catches_flipped_byte_truncation_missing_and_extra(tmp_path):
    out = tmp_path / "v"
    shards_cmd(out)
    assert run("verify", out, "--deep", "4").exit_code == 0
    data = bytearray((out / "shard-000000.tar").read_bytes())
    data[1000] ^= 0x01
    (out / "shard-000000.tar").write_bytes(bytes(data))
    with open(out / "shard-000001.tar", "r+b") as fh:
        fh.truncate(1024)
    (out / "shard-000002.tar").unlink()
    (out / "shard-000009.tar").write_bytes(b"")
    res = run("verify", out)
    assert res.exit_code == 1
    for name in ("shard-000000.tar", "shard-000001.tar", "shard-000002.tar", "shard-000009.tar"):
        assert name in res.output


def test_deep_verify_regenerates_bit_for_bit(tmp_path):
    out = tmp_path / "d"
    shards_cmd(out, fmt="hdf5")
    assert deep_check(out, 24).problems == []
    m, d = load_manifest(out)
    rec = read_samples(d / m.shards[0].file)[0]
    fresh = generate_sample(load_strategy(STRATEGY), 5, 0)
    assert rec["amplitude"].tobytes() == fresh["amplitude"].tobytes()


def test_webdataset_streams_the_shards(tmp_path):
    out = tmp_path / "w"
    shards_cmd(out)
    m, d = load_manifest(out)
    urls = [str(d / e.file) for e in m.shards]
    samples = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode())
    assert [s["__key__"] for s in samples] == [f"{i:012d}" for i in range(24)]
    s = samples[3]
    assert s["amplitude.npy"].shape == (1205,) and s["amplitude.npy"].dtype == np.float32
    assert s["frac.npy"].shape == (len(s["z.npy"]), 3) and s["cell.npy"].dtype == np.float64
    assert s["meta.json"]["strategy"] == STRATEGY


def test_structures_only_shards(tmp_path):
    out = tmp_path / "s"
    assert shards_cmd(out, "--structures-only").exit_code == 0
    m, d = load_manifest(out)
    assert m.reflections is None and "amplitude" not in m.schema
    rec = read_samples(d / m.shards[0].file)[0]
    assert "amplitude" not in rec and "frac" in rec


BAD = [
    (["--strategy", "no-such-strategy"], "unknown strategy"),
    (["--count", "0"], "--count"),
    (["--shard-size", "0"], "--shard-size"),
    (["--shards", "3:1"], "--shards"),
]


@pytest.mark.parametrize("args, message", BAD)
def test_bad_input_exits_2_with_one_line(tmp_path, args, message):
    base = {"--strategy": STRATEGY, "--count": "10", "--shard-size": "5", "--out": str(tmp_path / "x")}
    for k, v in zip(args[::2], args[1::2]):
        base[k] = v
    res = run("shards", *[x for kv in base.items() for x in kv])
    assert res.exit_code == 2
    assert message in res.output and len(res.output.strip().splitlines()) == 1
    assert not list((tmp_path / "x").glob("shard-*")) if (tmp_path / "x").exists() else True


@pytest.mark.parametrize("toml, message", [
    ("name = 'x'\n[cell\n", "malformed TOML"),
    ("name = 'x'\ncolour = 'blue'\n", "unknown key(s) colour"),
    ("name = 'x'\n[cell]\na_min = 12.0\n[fill]\nfiller='random-equal'\n", "a_min"),
    ("name = 'x'\n[cell]\nsampler='uniform-volume'\nv_min=2000.0\nv_max=3000.0\n[fill]\nfiller='random-equal'\n",
     "cannot be realised"),
    ("name = 'x'\n[fill]\nfiller='random-equal'\nsparkle=1\n", "unknown key(s) sparkle"),
    ("name = 'x'\n[fill]\nfiller='random'\n[priors]\nstats='nope'\n", "not found"),
])
def test_bad_strategy_files(tmp_path, toml, message):
    path = tmp_path / "s.toml"
    path.write_text(toml)
    res = run("shards", "--strategy", path, "--count", "4", "--out", tmp_path / "o")
    assert res.exit_code == 2 and message in res.output


def test_other_configuration_is_never_overwritten(tmp_path):
    out = tmp_path / "c"
    shards_cmd(out)
    before = digest(out)
    res = run("shards", "--strategy", STRATEGY, "--count", "24", "--shard-size", "6", "--seed", "6", "--out", out)
    assert res.exit_code == 2 and "another configuration" in res.output and "root_seed" in res.output
    assert digest(out) == before


def test_strategies_lists_the_nine_paper_strategies():
    res = run("strategies")
    names = [line.split()[0] for line in res.output.strip().splitlines()]
    assert sorted(names) == sorted(f"{c}-{f}" for c in ("lognormal", "uniform-volume", "uniform-edges")
                                   for f in ("molecules", "random", "random-equal"))


def test_inspect(tmp_path):
    out = tmp_path / "i"
    shards_cmd(out)
    res = run("inspect", out)
    assert res.exit_code == 0 and "24 samples in 4 tar shards" in res.output
    res = run("inspect", out, "--key", "7")
    assert res.exit_code == 0 and "key 000000000007" in res.output
    res = run("inspect", out / "shard-000001.tar", "--key", "7")
    assert res.exit_code == 0 and "key 000000000007" in res.output


# ----------------------------------------------------------------------------- messages (issue 13 §2, §6)

def test_verify_deep_says_how_many_samples_were_regenerated(tmp_path):
    out = tmp_path / "v"
    shards_cmd(out)
    res = run("verify", out, "--deep", "100000")
    assert res.exit_code == 0
    assert "24 samples regenerated identically (of 100000 asked; the dataset has 24)" in res.output
    assert "100000 samples regenerated" not in res.output
    assert "4 samples regenerated identically" in run("verify", out, "--deep", "4").output


@pytest.mark.parametrize("fmt, compress", [("tar", "none"), ("tar", "gz"), ("hdf5", "none")])
def test_inspect_on_a_truncated_shard_prints_one_line(tmp_path, fmt, compress):
    out = tmp_path / "t"
    shards_cmd(out, "--compress", compress, fmt=fmt)
    shard = sorted(out.glob("shard-000000.*"))[0]
    with open(shard, "r+b") as fh:
        fh.truncate(shard.stat().st_size // 2)
    for target in (shard, out):
        res = run("inspect", target)
        assert res.exit_code == 2 and "Traceback" not in res.output
        (line,) = res.output.strip().splitlines()[-1:]
        assert line.startswith("error:") and f"{shard.name}: unreadable shard" in line
    assert "shard-000000" in run("verify", out).output


def test_truncated_manifest_advice_depends_on_whether_the_build_was_split(tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    shards_cmd(whole)
    shards_cmd(split, "--shards", "0:2")
    shards_cmd(split, "--shards", "2:4")
    assert run("finalize", split).exit_code == 0
    for d in (whole, split):
        text = (d / "manifest.json").read_text()
        (d / "manifest.json").write_text(text[: len(text) // 2])
    res = run("verify", whole)
    assert res.exit_code == 2 and "finalize" not in res.output and "rerun the `phaseforge-build shards`" in res.output
    res = run("verify", split)
    assert res.exit_code == 2 and f"phaseforge-build finalize {split}" in res.output
    assert shards_cmd(whole).exit_code == 0 and run("verify", whole).exit_code == 0  # the advice works


@pytest.mark.parametrize("count, size, message", [
    ("1e12", "1000", "makes 1,000,000,000 shards; a manifest lists at most 1,000,000: use --shard-size ≥"),
    ("1000000000000", "1000", "makes 1,000,000,000 shards; a manifest lists at most 1,000,000: use --shard-size ≥"),
    ("1e9", "1e9", "a shard is held in memory while it is written"),
    ("1000000000000", "1000000", "the shards need ~"),
])
def test_counts_that_cannot_fit_are_refused_at_once(tmp_path, monkeypatch, count, size, message):
    import builder.capacity as capacity
    monkeypatch.setattr(capacity, "available_memory", lambda: 64 * 10**9)  # the same bound on every machine
    start = time.perf_counter()
    res = run("shards", "--strategy", STRATEGY, "--count", count, "--shard-size", size, "--out", tmp_path / "x")
    assert time.perf_counter() - start < 20  # refused, not hanging
    assert res.exit_code == 2 and message in res.output and len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()
    if "memory" in message:
        assert "use --shard-size ≤ " in res.output  # the bound, measured: ~4 million samples of ~12 kB


def test_progress_counts_samples(tmp_path):
    res = shards_cmd(tmp_path / "p")
    assert "24/24 [" in res.output and "sample/s" in res.output
