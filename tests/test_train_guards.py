"""The trainer under hostile use (issue 13): two writers, paths spelled otherwise, torn logs, divergence, full disks."""
from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.test_train import ROOT, config, data, one_thread, run_cli, train_losses  # noqa: F401 (fixtures)
from training import checkpoint, rundir
from training.checkpoint import CheckpointError, training_checkpoint
from training.config import TrainConfig
from training.rundir import OWNER_NAME, RunLock, RunLockedError
from training.train import TrainingDiverged, fit


def _cmd(data, out: Path, steps: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "training", "fit", "--train", str(data["train"]), "--val", str(data["val"]),
            "--preset", "tiny", "--out", str(out), "--steps", str(steps), "--batch-size", "8", "--val-every",
            "1000000", "--val-samples", "8", "--ckpt-every", "1000000", "--workers", "0", "--streams", "2",
            "--device", "cpu", "--no-progress", *extra]


# ----------------------------------------------------------------------------- two writers

@pytest.mark.slow
def test_a_second_fit_on_the_same_out_is_refused_naming_the_holder(data, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    first = subprocess.Popen(_cmd(data, out, 10**7), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (out / "metrics.jsonl").exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert first.poll() is None, first.communicate()[1][-3000:]
        owner = json.loads((out / OWNER_NAME).read_text())
        assert owner["pid"] == first.pid and owner["host"] == socket.gethostname()
        second = subprocess.run(_cmd(data, out, 4), cwd=ROOT, env=env, capture_output=True, text=True,
                                timeout=120)
        assert second.returncode == 2
        assert second.stderr.count("\n") == 1 and second.stderr.startswith("error: ")
        assert f"in use by pid {first.pid} on host {socket.gethostname()}" in second.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=120)
    assert first.returncode == 128 + signal.SIGTERM, err[-3000:]  # the holder checkpointed and stopped normally
    assert not (out / OWNER_NAME).exists()
    assert training_checkpoint(out / "last.pt")["train_state"]["step"] > 0


def test_a_stale_lock_record_is_replaced_with_a_note(data, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / OWNER_NAME).write_text(json.dumps({"host": "node7", "pid": 4242, "started": 0}))
    notes = []
    fit(config(data, steps=2), out, progress=False, log=notes.append)
    assert any("stale lock of pid 4242 on host node7" in n for n in notes), notes
    assert not (out / OWNER_NAME).exists()


def test_without_flock_the_record_is_the_lock(tmp_path, monkeypatch):
    """Filesystems without flock: a live holder is refused, a dead one on this host is taken over."""
    def no_flock(self, *a, **k):
        raise NotImplementedError("FileSystem does not appear to support flock")
    monkeypatch.setattr(rundir.filelock.FileLock, "acquire", no_flock)
    notes = []
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        host = socket.gethostname()
        (tmp_path / OWNER_NAME).write_text(json.dumps({"host": host, "pid": live.pid, "started": 0}))
        with pytest.raises(RunLockedError, match=f"in use by pid {live.pid} on host {host}"):
            RunLock(tmp_path, notes.append).__enter__()
        (tmp_path / OWNER_NAME).write_text(json.dumps({"host": "elsewhere", "pid": live.pid, "started": 0}))
        with pytest.raises(RunLockedError, match="if that process is gone, remove"):
            RunLock(tmp_path, notes.append).__enter__()
        (tmp_path / OWNER_NAME).write_text(json.dumps({"host": host, "pid": dead.pid, "started": 0}))
        with RunLock(tmp_path, notes.append):
            assert json.loads((tmp_path / OWNER_NAME).read_text())["pid"] == os.getpid()
        assert not (tmp_path / OWNER_NAME).exists() and any("stale lock" in n for n in notes)
    finally:
        live.kill()
        live.wait()


# ----------------------------------------------------------------------------- resume identifies data

def test_resume_accepts_any_spelling_of_the_same_manifest(data, tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    (work / "sets").mkdir(parents=True)
    for name in ("train", "val"):
        (work / "sets" / name).symlink_to(data[name])
    monkeypatch.chdir(work)
    run = ["--out", "run", "--preset", "tiny", "--batch-size", "8", "--val-samples", "8", "--val-every", "100",
           "--workers", "0", "--streams", "2", "--device", "cpu", "--no-progress"]
    code, _, err = run_cli(["fit", "--train", "sets/train", "--val", "sets/val", "--steps", "2", *run], capsys)
    assert code == 0, err
    saved = training_checkpoint(work / "run" / "last.pt")["config"]["train"]
    assert saved["train"] == [str((data["train"] / "manifest.json").resolve())]  # resolved, not as typed
    spellings = [["--train", "./sets/train"], ["--train", str(work / "sets" / "train")],
                 ["--train", "sets/train/manifest.json", "--val", "./sets/val/manifest.json"], []]
    for step, spelled in enumerate(spellings, start=3):
        code, _, err = run_cli(["fit", *spelled, "--steps", str(step), "--resume", *run], capsys)
        assert code == 0, (spelled, err)
    monkeypatch.chdir(tmp_path)  # another working directory: the stored locations still find the data
    code, out, err = run_cli(["fit", "--out", str(work / "run"), "--steps", "7", "--resume", "--no-progress"], capsys)
    assert code == 0 and "to step 7" in out, err
    code, _, err = run_cli(["fit", "--train", str(data["other"]), "--out", str(work / "run"), "--steps", "8",
                            "--resume"], capsys)
    assert code == 2 and "training manifests are not the checkpoint's" in err


def test_a_torn_last_metrics_line_is_cut_with_a_note(data, tmp_path):
    out = tmp_path / "run"
    fit(config(data, steps=4), out, progress=False)
    with open(out / "metrics.jsonl", "a") as fh:
        fh.write('{"kind": "train", "loss": 0.69, "st')  # the crash came mid-write
    notes = []
    fit(config(data, steps=6), out, resume=True, progress=False, log=notes.append)
    assert any("torn last line" in n and "metrics.jsonl" in n for n in notes), notes
    assert list(train_losses(out)) == list(range(1, 7))
    (out / "metrics.jsonl").write_text('{"kind": "train", "step": 1}\nnot json\n{"kind": "train", "step": 2}\n')
    with pytest.raises(ValueError, match="metrics.jsonl: line 2 is not JSON"):
        fit(config(data, steps=8), out, resume=True, progress=False)


# ----------------------------------------------------------------------------- impossible values, divergence

def test_non_finite_loss_stops_with_exit_2_and_keeps_the_last_checkpoint(data, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["fit", "--train", str(data["train"]), "--val", str(data["val"]), "--preset", "tiny", "--out", str(out),
            "--batch-size", "8", "--val-samples", "8", "--val-every", "1", "--ckpt-every", "1", "--log-every", "1",
            "--workers", "0", "--streams", "2", "--device", "cpu", "--no-progress", "--lr", "1e30",
            "--steps", "50"]
    code, stdout, err = run_cli(args, capsys)
    assert code == 2 and err.count("\n") == 1 and "non-finite training loss" in err, err
    ck = training_checkpoint(out / "last.pt")
    step = ck["train_state"]["step"]
    assert f"(step {step}) is the last good checkpoint" in err and f"at step {step + 1}" in err
    assert all(torch.isfinite(v).all() for v in ck["model"].values())
    assert max(train_losses(out)) <= step  # nothing logged for the step that was not applied


def test_val_equal_to_train_warns(data, tmp_path, capsys):
    code, _, err = run_cli(["fit", "--train", str(data["train"]), "--val", f"{data['train']}/manifest.json",
                            "--preset", "tiny", "--out", str(tmp_path / "run"), "--steps", "1", "--batch-size", "8",
                            "--val-samples", "8", "--workers", "0", "--streams", "2", "--device", "cpu",
                            "--no-progress"], capsys)
    assert code == 0 and "warning: --val" in err and "same data as --train" in err


def test_full_disk_at_a_checkpoint_names_the_path_and_a_rerun_resumes_exactly(data, tmp_path, monkeypatch, capsys):
    full = tmp_path / "full"
    fit(config(data, steps=8), full, progress=False)
    out = tmp_path / "run"
    real_save, calls = torch.save, []

    def save(obj, f, *a, **k):  # the checkpoints of step 4 (best.pt, last.pt) fit; at step 8 the disk is full
        calls.append(f)
        if len(calls) <= 2:
            return real_save(obj, f, *a, **k)
        f.write(b"\0" * 4096)  # save_checkpoint hands torch.save its open temporary file
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f.name)

    monkeypatch.setattr(checkpoint.torch, "save", save)
    with pytest.raises(CheckpointError, match=r"cannot write checkpoint .*(best|last)\.pt: no space left on the device \(ENOSPC\)"):
        fit(config(data, steps=8), out, progress=False)
    assert not list(out.glob(".*partial*")) and training_checkpoint(out / "last.pt")["train_state"]["step"] == 4
    monkeypatch.setattr(checkpoint.torch, "save", real_save)  # space freed
    fit(config(data, steps=8), out, resume=True, progress=False)
    assert train_losses(out) == train_losses(full)


def test_init_is_recorded_and_old_checkpoints_resume_from_zero(data, tmp_path, capsys):
    out = tmp_path / "run"
    fit(config(data, steps=2, init="mixed"), out, progress=False)
    ck = training_checkpoint(out / "last.pt")
    assert ck["config"]["train"]["init"] == "mixed"
    assert TrainConfig.from_dict(ck["config"]["train"]).init == "mixed"
    with pytest.raises(ValueError, match="init"):
        TrainConfig(preset="tiny", init="ones")
    # a checkpoint written before TrainConfig held DataConfig: flat settings, no init (it trained from zero)
    old = tmp_path / "old"
    fit(config(data, steps=2, init="zero"), old, progress=False)
    ck = training_checkpoint(old / "last.pt")
    flat = {k: v for k, v in ck["config"]["train"].items() if k not in ("data", "init")}
    flat.update({k: v for k, v in ck["config"]["train"]["data"].items() if k != "max_index"})
    ck["config"]["train"] = flat
    torch.save(ck, old / "last.pt")
    assert TrainConfig.from_dict(flat).init == "zero"
    code, stdout, err = run_cli(["fit", "--out", str(old), "--steps", "3", "--resume", "--no-progress"], capsys)
    assert code == 0 and "zero init" in stdout, err
