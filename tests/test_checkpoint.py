"""The one checkpoint reader and writer (training/checkpoint.py): data, never code; clear reasons; no partial files."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from training import checkpoint
from tests.test_disk_errors import tmpfs  # noqa: F401 (fixture)
from training.checkpoint import CheckpointError, load_model, read_checkpoint, save_checkpoint, training_checkpoint
from training.model import seeded_model, tiny


class _Payload:
    """Unpickling this runs `open(marker, "w")`: a stand-in for any code a hostile file could carry."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_checkpoint_carrying_code_is_refused_and_the_code_does_not_run(tmp_path: Path):
    net = seeded_model(tiny(), 0)
    evil, marker = tmp_path / "published.pt", tmp_path / "ran"
    torch.save({"model": net.state_dict(), "extra": _Payload(marker)}, evil)
    for load in (read_checkpoint, load_model, training_checkpoint):
        with pytest.raises(CheckpointError) as e:
            load(evil)
        msg = str(e.value)
        assert "\n" not in msg and "refused" in msg and "open" in msg and str(evil) in msg
        assert "weights_only" not in msg
    assert not marker.exists()
    # the payload is live: an unrestricted torch.load would have run it
    torch.load(evil, weights_only=False)
    assert marker.exists()


def test_empty_random_and_truncated_files_give_reasons(tmp_path: Path):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty \(0 bytes"):
        read_checkpoint(empty)
    good = tmp_path / "good.pt"
    torch.save({"a": torch.zeros(100)}, good)
    cases = {"random": np.random.default_rng(0).bytes(4096), "text": b"not a torch file",
             "truncated": good.read_bytes()[: good.stat().st_size // 2], "pickle-only": b"\x80\x02}q\x00."}
    for name, data in cases.items():
        p = tmp_path / f"{name}.pt"
        p.write_bytes(data)
        with pytest.raises(CheckpointError) as e:
            read_checkpoint(p)
        msg = str(e.value)
        assert msg.startswith(f"cannot read checkpoint {p}: ") and len(msg) > len(f"cannot read checkpoint {p}: ") + 10
        assert "\n" not in msg and "weights_only" not in msg and "weights only" not in msg.lower(), (name, msg)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "missing.pt")
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    with pytest.raises(CheckpointError, match="not a dict"):
        read_checkpoint(tensor)
    with pytest.raises(CheckpointError, match="cannot be resumed"):
        training_checkpoint(good)


def test_bare_published_layout_state_dict_loads(tmp_path: Path):
    """A bare state_dict, as published (OrderedDict of tensors, DDP prefix too), loads with weights_only."""
    net = seeded_model(tiny(), 1)
    p = tmp_path / "PhAI_model.pth"
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, p)
    loaded = load_model(p)
    assert loaded.info["format"] == "bare" and loaded.config == tiny()
    assert all(torch.equal(loaded.model.state_dict()[k], v) for k, v in net.state_dict().items())


def test_a_really_full_disk_is_a_one_line_error_and_leaves_nothing(tmpfs):
    """No fake: torch.save itself fills a 64 kB tmpfs (given a path it raised a RuntimeError without errno)."""
    path = tmpfs / "last.pt"
    with pytest.raises(CheckpointError, match=r"cannot write checkpoint .*last\.pt: no space left on the device"):
        save_checkpoint(path, {"format": "x", "a": torch.zeros(100_000)})
    assert list(tmpfs.iterdir()) == []


def _full_disk(monkeypatch, after_bytes: int = 1 << 16) -> None:
    """torch.save writes part of the file, then the disk is full (ENOSPC), as on a real full filesystem."""
    def save(obj, f, *a, **k):  # f: save_checkpoint's open temporary file
        f.write(b"\0" * after_bytes)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f.name)
    monkeypatch.setattr(checkpoint.torch, "save", save)


def test_full_disk_leaves_no_partial_file_and_names_the_path(tmp_path: Path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"format": "x", "a": torch.ones(3)})
    before = path.read_bytes()
    _full_disk(monkeypatch)
    with pytest.raises(CheckpointError) as e:
        save_checkpoint(path, {"format": "x", "a": torch.zeros(3)})
    msg = str(e.value)
    assert str(path) in msg and "no space left" in msg.lower() and "ENOSPC" in msg and "\n" not in msg
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no .partial-* left
    assert path.read_bytes() == before  # the previous checkpoint is intact
