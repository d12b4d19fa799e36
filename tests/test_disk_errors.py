"""Disks and filesystems (issue 13 §5): a full disk, a read-only or unwritable --out, or an --out below a file
give one line naming the path and the errno's meaning, exit 2, no temporary files, and a rerun after the cause
is fixed resumes to the bytes of an undisturbed build. Real tmpfs mounts where the test runs as root (skipped
otherwise); the same paths simulated with monkeypatch everywhere."""
from __future__ import annotations

import errno
import io
import os
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

import builder.build as build_module
import manifests.shardio as shardio
from builder.cli import cli
from manifests.schema import load_manifest, verify_dir

STRATEGY = "lognormal-molecules"


def shards_cmd(out: Path, *extra: str, count: int = 18, size: int = 6):
    args = ["shards", "--strategy", STRATEGY, "--count", str(count), "--shard-size", str(size), "--seed", "2",
            "--out", str(out), *extra]
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def digest(d: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(d.glob("shard-*"))} | {"manifest": (d / "manifest.json").read_bytes()}


def error_lines(output: str) -> list[str]:
    return [ln for ln in output.splitlines() if ln.startswith("error:")]


def debris(d: Path) -> list[Path]:
    return list(d.rglob("*.partial-*")) if d.exists() else []


@pytest.fixture()
def tmpfs(tmp_path):
    """A small tmpfs mounted on tmp_path/mnt, unmounted afterwards (root only)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root and mount(8) for a real tmpfs")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def remount(mnt: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(mnt)], check=True)


@pytest.mark.parametrize("extra", [(), ("--workers", "2")])
def test_no_space_mid_build_simulated(tmp_path, monkeypatch, extra):
    real = shardio.write_tar

    def full_disk(fileobj, samples):
        samples = list(samples)
        if samples[0]["__key__"] == f"{12:012d}":  # shard 2: half written, then the disk is full
            fileobj.write(b"\0" * 10240)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fileobj, samples)
    monkeypatch.setattr(shardio, "write_tar", full_disk)
    out = tmp_path / "full"
    res = shards_cmd(out, *extra)
    assert res.exit_code == 2
    lines = error_lines(res.output)
    assert len(lines) == 1 and "Traceback" not in res.output
    assert str(out / "shard-000002.tar") in lines[0] and "no space left on the device (ENOSPC)" in lines[0]
    assert debris(out) == [] and not (out / "manifest.json").exists()
    monkeypatch.undo()
    assert shards_cmd(out, *extra).exit_code == 0
    assert shards_cmd(tmp_path / "clean").exit_code == 0
    assert digest(out) == digest(tmp_path / "clean")


@pytest.mark.parametrize("fmt, compression", [("tar", "none"), ("tar", "gz"), ("hdf5", "none")])
def test_full_tmpfs_then_freed_resumes_to_the_same_bytes(tmp_path, tmpfs, monkeypatch, fmt, compression):
    remount(tmpfs, "size=300k")  # the build needs ~330 kB (tar), ~210 kB (HDF5), ~110 kB (tar.gz)
    monkeypatch.setattr(build_module, "check_capacity", lambda *a, **k: None)  # reach the real ENOSPC
    out, extra = tmpfs / "data", ("--format", fmt, "--compress", compression)
    count = 60 if compression == "gz" else 18 if fmt == "tar" else 30
    res = shards_cmd(out, *extra, count=count)
    assert res.exit_code == 2, res.output
    lines = error_lines(res.output)
    assert len(lines) == 1 and "no space left on the device (ENOSPC)" in lines[0] and str(out) in lines[0]
    assert debris(out) == []
    remount(tmpfs, "size=2m")
    monkeypatch.undo()
    assert shards_cmd(out, *extra, count=count).exit_code == 0
    assert shards_cmd(tmp_path / "clean", *extra, count=count).exit_code == 0
    assert digest(out) == digest(tmp_path / "clean")
    m, d = load_manifest(out)
    assert verify_dir(m, d) == []


def test_the_capacity_check_refuses_a_build_that_cannot_fit(tmpfs):
    res = shards_cmd(tmpfs / "data", count=60)
    assert res.exit_code == 2
    (line,) = error_lines(res.output)
    assert "the shards need ~" in line and "is free there" in line
    assert not (tmpfs / "data").exists()


def test_read_only_out(tmpfs):
    remount(tmpfs, "ro")
    res = shards_cmd(tmpfs / "data")
    assert res.exit_code == 2
    (line,) = error_lines(res.output)
    assert str(tmpfs / "data") in line and "read-only file system (EROFS)" in line


def test_permission_denied_simulated(tmp_path, monkeypatch):
    real = shardio.write_tar

    def denied(fileobj, samples):
        if isinstance(fileobj, io.BytesIO):  # the size probe, in memory
            return real(fileobj, samples)
        raise PermissionError(errno.EACCES, "Permission denied")
    monkeypatch.setattr(shardio, "write_tar", denied)
    res = shards_cmd(tmp_path / "p")
    assert res.exit_code == 2
    (line,) = error_lines(res.output)
    assert "shard-000000.tar" in line and "permission denied (EACCES)" in line
    assert debris(tmp_path / "p") == []


def test_out_below_a_file_in_all_three_clis(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    res = shards_cmd(blocker / "data")
    assert res.exit_code == 2
    (line,) = error_lines(res.output)
    assert str(blocker / "data") in line and "not a directory (ENOTDIR)" in line
    from evaluation.cli import cli as eval_cli
    res = CliRunner().invoke(eval_cli, ["fetch", "--testset", "cod-p21c-small", "--out", str(blocker / "cifs"),
                                        "--base-url", "http://127.0.0.1:9/"], catch_exceptions=False)
    assert res.exit_code == 2 and "not a directory (ENOTDIR)" in res.output
    from training.cli import main as train_main
    assert shards_cmd(tmp_path / "train", count=8, size=4).exit_code == 0
    with pytest.raises(SystemExit) as exit_info:
        train_main(["fit", "--train", str(tmp_path / "train"), "--val", str(tmp_path / "train"), "--preset", "tiny",
                    "--steps", "1", "--workers", "0", "--val-samples", "4", "--out", str(blocker / "run")])
    assert exit_info.value.code == 2
