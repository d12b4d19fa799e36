"""The trainer (training/train.py) and its CLI (training/cli.py): learning, exact resume, DDP, bad input."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import threading
from pathlib import Path

import pytest
import torch

from tests.test_data import build_set
from training.cli import main
from training.checkpoint import training_checkpoint as load_checkpoint
from training.config import DATA_FIELDS, RESUMABLE, TrainConfig
from training.schedule import LRSchedule, n_cycles_at
from training.train import fit

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("train-data")
    return {"train": build_set(root / "train", count=64, shard_size=8),
            "val": build_set(root / "val", count=16, shard_size=8, seed=99, fmt="hdf5"),
            "other": build_set(root / "other", count=16, shard_size=8, seed=7, name="other-molecules")}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def config(data, **kw) -> TrainConfig:
    base = dict(preset="tiny", train=(str(data["train"]),), val=str(data["val"]), steps=8, batch_size=8,
                val_every=4, val_samples=16, ckpt_every=4, log_every=1, workers=0, streams=2, prior_samples=64,
                device="cpu")
    return TrainConfig.from_flat(**{**base, **kw})


def train_losses(out: Path) -> dict[int, float]:
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in recs if r["kind"] == "train"}


def tree_digest(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- learning and resume

def test_loss_decreases_and_beats_random_signs(data, tmp_path):
    s = fit(config(data, steps=60, val_every=60, ckpt_every=60, lr=2e-3), tmp_path / "run", progress=False)
    losses = train_losses(tmp_path / "run")
    first = sum(losses[i] for i in range(1, 11)) / 10
    last = sum(losses[i] for i in range(51, 61)) / 10
    assert last < first - 0.02, (first, last)
    assert s["last_val"]["mean_r"] > s["random_signs"]["mean_r"]
    assert (tmp_path / "run" / "best.pt").is_file() and (tmp_path / "run" / "last.pt").is_file()


def test_resume_continues_exactly(data, tmp_path):
    fit(config(data, steps=8), tmp_path / "full", progress=False)
    fit(config(data, steps=4), tmp_path / "split", progress=False)
    ck = load_checkpoint(tmp_path / "split" / "last.pt")
    assert {"model", "optimizer", "lr_scheduler", "train_state", "dataloader", "config", "rng", "code_version",
            "prior", "hkl_sha256"} <= set(ck)
    assert ck["train_state"]["step"] == 4 and ck["config"]["model"]["filters"] == 8
    fit(config(data, steps=8), tmp_path / "split", resume=True, progress=False)
    full, split = train_losses(tmp_path / "full"), train_losses(tmp_path / "split")
    assert list(full) == list(range(1, 9)) and full == split  # bit-identical losses, steps 1..8
    a, b = (load_checkpoint(tmp_path / d / "last.pt") for d in ("full", "split"))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_sigterm_writes_a_checkpoint_and_resumes(data, tmp_path):
    out = tmp_path / "run"
    timer = threading.Timer(2.0, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        s = fit(config(data, steps=100_000, val_every=100_000, ckpt_every=100_000), out, progress=False)
    finally:
        timer.cancel()
    assert s["stopped_by_signal"] == signal.SIGTERM
    ck = load_checkpoint(out / "last.pt")
    assert ck["train_state"]["step"] == s["steps"] > 0
    s2 = fit(config(data, steps=s["steps"] + 2, val_every=100_000, ckpt_every=100_000), out, resume=True,
             progress=False)
    assert s2["steps"] == s["steps"] + 2 and s2["stopped_by_signal"] is None


def test_structures_only_manifests_train(data, tmp_path):
    s_only = build_set(tmp_path / "s_only", count=16, shard_size=8, reflections=False)
    s = fit(config(data, train=(str(s_only),), steps=2, val_every=2, ckpt_every=2), tmp_path / "run",
            progress=False)
    assert s["steps"] == 2 and load_checkpoint(tmp_path / "run" / "last.pt")["config"]["data"]["sf"] == "loader"


def test_lr_schedule_plateau_and_steps():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1.0)
    sched = LRSchedule(opt, TrainConfig(preset="tiny", patience=2))
    assert opt.param_groups[0]["lr"] == 5e-4
    for loss in (1.0, 0.9, 0.95, 0.95):  # two validations without a new best -> first drop
        sched.on_validation(loss)
    assert opt.param_groups[0]["lr"] == 5e-5
    for _ in range(10):
        sched.on_validation(1.0)
    assert opt.param_groups[0]["lr"] == 1e-5  # the last level stays
    sched = LRSchedule(opt, TrainConfig(preset="tiny", schedule="steps:10,20"))
    lrs = []
    for step in (0, 9, 10, 19, 20, 99):
        sched.at_step(step)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs == [5e-4, 5e-4, 5e-5, 5e-5, 1e-5, 1e-5]
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(preset="tiny", schedule="steps:10")


def test_recycling_count_is_seeded_and_uniform():
    ns = [n_cycles_at(0, s, 3) for s in range(600)]
    assert ns == [n_cycles_at(0, s, 3) for s in range(600)]
    assert {n: ns.count(n) for n in (1, 2, 3)} == pytest.approx({1: 200, 2: 200, 3: 200}, abs=50)


# ----------------------------------------------------------------------------- DDP on CPU: tests/test_multinode.py


# ----------------------------------------------------------------------------- CLI bad input

def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(args)
    cap = capsys.readouterr()
    return e.value.code, cap.out, cap.err


def test_cli_trains_and_refuses_bad_input(data, tmp_path, capsys):
    out = tmp_path / "run"
    common = ["--train", str(data["train"]), "--val", str(data["val"]), "--out", str(out), "--batch-size", "8",
              "--val-samples", "8", "--workers", "0", "--device", "cpu", "--no-progress"]
    code, stdout, _ = run_cli(["fit", *common, "--preset", "tiny", "--steps", "2", "--val-every", "2"], capsys)
    assert code == 0 and "trained tiny to step 2" in stdout and "random-sign baseline" in stdout
    before = tree_digest(out)

    odd = tmp_path / "odd"
    odd.mkdir()
    m = json.loads((data["other"] / "manifest.json").read_text())
    m["reflections"]["hkl_sha256"] = "0" * 64
    for f in data["other"].glob("shard-*"):
        (odd / f.name).write_bytes(f.read_bytes())
    (odd / "manifest.json").write_text(json.dumps(m))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text("{not json")
    fresh = tmp_path / "fresh"
    cases = {
        "unknown preset": ["fit", *common[:4], "--out", str(fresh), "--preset", "huge"],
        "missing manifest": ["fit", "--train", str(tmp_path / "nope"), "--val", str(data["val"]), "--out", str(fresh)],
        "corrupt manifest": ["fit", "--train", str(broken), "--val", str(data["val"]), "--out", str(fresh)],
        "reflection sets": ["fit", "--train", str(data["train"]), "--train", str(odd), "--val", str(data["val"]),
                            "--out", str(fresh), "--preset", "tiny"],
        "existing run": ["fit", *common, "--preset", "tiny", "--steps", "4"],
        "incompatible resume": ["fit", *common, "--preset", "tiny", "--steps", "4", "--lr", "1e-3", "--resume"],
        "other preset on resume": ["fit", "--out", str(out), "--preset", "small", "--steps", "4", "--resume"],
        "resume without checkpoint": ["fit", "--out", str(fresh), "--resume"],
        "bad option value": ["fit", "--out", str(fresh), "--steps", "many"],
        "infinite lr": ["fit", *common[:4], "--out", str(fresh), "--preset", "tiny", "--lr", "inf"],
        "unknown device": ["fit", *common[:4], "--out", str(fresh), "--preset", "tiny", "--device", "tpu"],
        "unknown init": ["fit", *common[:4], "--out", str(fresh), "--preset", "tiny", "--init", "ones"],
        "out below a file": ["fit", *common[:4], "--out", str(out / "config.json" / "run"), "--preset", "tiny",
                             "--batch-size", "8", "--val-samples", "8", "--workers", "0", "--device", "cpu"],
        "one weight per manifest": ["fit", "--train", str(data["train"]), "--weight", "1", "--weight", "2",
                                  "--val", str(data["val"]), "--out", str(fresh), "--preset", "tiny"],
    }
    for name, args in cases.items():
        code, stdout, err = run_cli(args, capsys)
        assert code == 2, (name, err)
        assert err.startswith("error: ") and err.count("\n") == 1, (name, err)
    assert not fresh.exists()
    assert tree_digest(out) == before  # nothing overwritten

    code, stdout, _ = run_cli(["fit", "--out", str(out), "--steps", "3", "--resume"], capsys)
    assert code == 0 and "trained tiny to step 3 (1 this run" in stdout


def test_resumable_settings_are_train_config_fields():
    names = {f.name for f in dataclasses.fields(TrainConfig)} | set(DATA_FIELDS)
    assert set(RESUMABLE) <= names
