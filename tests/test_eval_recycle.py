"""Recycling inference (evaluation.recycle): checkpoint formats, the scan, per-cycle phases, run picks."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from builder.reflections import hkl_hash, phai_hkl
from evaluation.recycle import ScanConfig, ScanInput, ScanResult, parse_cycles, pick_runs, scan, start_phases
from training.checkpoint import config_from_state_dict, load_model
from training.model import PhAINet, seeded_model, config_dict, logits_to_phase_deg, paper, recycle, tiny, to_grid

KEYS = Path(__file__).parent / "data" / "phai-state-dict-keys.txt"
HKL = phai_hkl()


@pytest.fixture(scope="module")
def tiny_model() -> PhAINet:
    return seeded_model(tiny(), 0).eval()


def _inputs(n: int, seed: int = 0) -> list[ScanInput]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        obs = rng.random(len(HKL)) < 0.8
        out.append(ScanInput(f"s{i}", rng.gamma(1.0, 10.0, len(HKL)), obs))
    return out


def test_parse_cycles():
    assert parse_cycles("1..10") == tuple(range(1, 11))
    assert parse_cycles("5,1,3") == (1, 3, 5)
    assert parse_cycles("4") == (4,)
    for bad in ("x", "0..3", "", "3..1"):
        with pytest.raises(ValueError):
            parse_cycles(bad)


def test_scan_config_rejects_bad_values():
    for kw in ({"cycles": ()}, {"cycles": (2, 1)}, {"random_starts": -1}, {"fom": "nope"}, {"batch_size": 0},
               {"zero_start": False, "random_starts": 0}):
        with pytest.raises(ValueError):
            ScanConfig(**kw)
    assert ScanConfig(random_starts=2).start_names == ("zero", "random-1", "random-2")


def test_config_from_published_key_list():
    """The published layout (shapes only, meta tensors) reads back as the paper preset."""
    sd = {}
    for line in KEYS.read_text().splitlines():
        if line.strip():
            name, shape = line.split(" ", 1)
            dims = tuple(int(v) for v in shape.strip("()").split(",") if v.strip())
            sd[name] = torch.empty(dims, device="meta")
    assert config_from_state_dict(sd) == paper()
    assert config_from_state_dict({f"module.{k}": v for k, v in sd.items()}) == paper()  # DDP prefix


def test_config_from_state_dict_rejects_other_dicts():
    with pytest.raises(ValueError, match="not a PhAI state_dict"):
        config_from_state_dict({"weight": torch.zeros(3)})


def test_trainer_and_bare_checkpoints_load_the_same(tmp_path: Path, tiny_model: PhAINet):
    trainer = tmp_path / "ckpt.pt"
    bare = tmp_path / "bare.pt"
    # the keys training.train writes (a subset: optimizer and loader state do not matter here)
    torch.save({"format": "phaseforge-checkpoint-1", "model": tiny_model.state_dict(),
                "config": {"model": config_dict(tiny()), "train": {"steps": 7}}, "train_state": {"step": 7},
                "prior": torch.ones(1205), "hkl_sha256": hkl_hash(HKL)}, trainer)
    torch.save(tiny_model.state_dict(), bare)
    a, b = load_model(trainer), load_model(bare)
    assert a.config == b.config == tiny()
    assert a.info["format"] == "trainer" and a.info["step"] == 7 and b.info["format"] == "bare"
    assert a.info["checkpoint_format"] == "phaseforge-checkpoint-1"
    assert len(a.info["sha256"]) == 64 and a.info["config"] == config_dict(tiny())
    for k, v in tiny_model.state_dict().items():
        assert torch.equal(a.model.state_dict()[k], v) and torch.equal(b.model.state_dict()[k], v)
    assert not a.model.training


def test_checkpoint_errors(tmp_path: Path, tiny_model: PhAINet):
    wrong = tmp_path / "wrong.pt"
    torch.save({"model": tiny_model.state_dict(),
                "config": {"model": config_dict(dataclasses.replace(tiny(), dim=128))}}, wrong)
    with pytest.raises(ValueError, match="does not match"):
        load_model(wrong)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        load_model(junk)
    with pytest.raises(ValueError, match="does not exist"):
        load_model(tmp_path / "missing.pt")
    moved = tmp_path / "moved.pt"
    torch.save({"model": tiny_model.state_dict(), "hkl_sha256": "0" * 64}, moved)
    with pytest.raises(ValueError, match="another reflection list"):
        load_model(moved)
    other = tmp_path / "other.pt"
    torch.save({"model": {"w": torch.zeros(2)}}, other)
    with pytest.raises(ValueError, match="not a PhAI state_dict"):
        load_model(other)


def test_start_phases_depend_only_on_seed_and_id():
    cfg = ScanConfig(random_starts=3, seed=5)
    a = start_phases("1000003", 1205, cfg)
    assert a.shape == (4, 1205) and a.dtype == np.float32
    assert np.all(a[0] == 0) and set(np.unique(a[1:])) == {0.0, -180.0}
    assert np.array_equal(a, start_phases("1000003", 1205, cfg))
    assert not np.array_equal(a, start_phases("1000004", 1205, cfg))
    assert not np.array_equal(a, start_phases("1000003", 1205, dataclasses.replace(cfg, seed=6)))


def test_scan_gives_phases_per_cycle_as_plain_recycling(tiny_model: PhAINet):
    """Run n of the scan = n passes of training.model.recycle from the same start."""
    cfg = ScanConfig(cycles=(1, 2, 3), random_starts=1, batch_size=3)
    x = _inputs(2)
    results = list(scan(tiny_model, HKL, x, cfg))
    assert [r.id for r in results] == ["s0", "s1"]
    for inp, res in zip(x, results):
        assert res.phase_deg.shape == (2, 3, 1205)
        assert res.confidence.shape == res.consistency.shape == (2, 3)
        assert np.all((res.confidence >= 0.5 - 1e-6) & (res.confidence <= 1 + 1e-6))
        assert np.all((res.consistency >= -1e-6) & (res.consistency <= 1 + 1e-6))
        amp = np.where(inp.observed, inp.amp, 0.0)
        amp = torch.from_numpy((amp / amp.max()).astype(np.float32))[None]
        for s, start in enumerate(start_phases(inp.id, 1205, cfg)):
            with torch.inference_mode():
                logits = recycle(tiny_model, to_grid(amp, HKL), 3, to_grid(torch.from_numpy(start)[None], HKL))
            for c in range(3):
                assert np.array_equal(res.phase_deg[s, c], logits_to_phase_deg(logits[c])[0].numpy())
        # consistency of run c = agreement of pass c+1 with pass c (c < 3), |F|²-weighted over observed
        w = np.where(inp.observed, inp.amp, 0.0) ** 2
        same = res.phase_deg[:, 1] == res.phase_deg[:, 0]
        np.testing.assert_allclose(res.consistency[:, 0], (same * w).sum(1) / w.sum(), atol=1e-5)


def test_scan_does_not_depend_on_batch_size(tiny_model: PhAINet):
    x = _inputs(3, seed=1)
    a = list(scan(tiny_model, HKL, x, ScanConfig(cycles=(1, 2), random_starts=1, batch_size=1)))
    b = list(scan(tiny_model, HKL, x, ScanConfig(cycles=(1, 2), random_starts=1, batch_size=64)))
    for ra, rb in zip(a, b):
        assert np.array_equal(ra.phase_deg, rb.phase_deg)
        np.testing.assert_allclose(ra.confidence, rb.confidence, atol=1e-5)


def test_scan_rejects_wrong_lengths(tiny_model: PhAINet):
    with pytest.raises(ValueError, match="shape"):
        list(scan(tiny_model, HKL, [ScanInput("x", np.ones(10), np.ones(10, bool))], ScanConfig()))


def test_pick_runs_orders_ties():
    conf = np.array([[0.7, 0.9], [0.9, 0.8]])
    cons = np.array([[1.0, 0.5], [1.0, 1.0]])
    res = ScanResult("x", np.zeros((2, 2, 3), np.float32), conf, cons)
    r = np.array([[0.2, 0.9], [0.9, 0.1]])
    picks = pick_runs(res, r)
    assert picks["best"] == (0, 1)  # first maximum: zero start before random-1
    assert picks["confidence"] == (0, 1)
    assert picks["consistency"] == (1, 0)  # fixed points (0,0), (1,0), (1,1); highest confidence wins
