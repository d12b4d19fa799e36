"""Validation during training (training/validation.py) and the start phases of training (training/schedule.py)."""
from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from builder.reflections import phai_hkl, systematic_absences
from evaluation.metrics import phase_r_batch
from tests.test_data import build_set
from training.data import DataConfig, open_source, prepare_batch, validation_batches
from training.loss import origin_shift_signs
from training.model import logits_to_phase_deg, recycle, seeded_model, tiny, to_grid
from training.schedule import INITS, start_phases_deg, validation_starts_deg
from training.validation import phase_r_torch, random_sign_baseline, validate

HKL = phai_hkl(10)
ABSENT = systematic_absences("P 1 21/c 1", HKL)
SIGNS = origin_shift_signs(HKL)


def test_phase_r_torch_hand_cases():
    gen = torch.Generator().manual_seed(0)
    true = torch.randint(0, 2, (3, 1205), generator=gen).float() * torch.pi
    amp = torch.rand(3, 1205, generator=gen)
    obs = torch.from_numpy(~ABSENT).expand(3, -1)
    assert torch.allclose(phase_r_torch(true, true, amp, obs, SIGNS), torch.ones(3))               # identical
    shifted = true + torch.pi * (SIGNS[5] < 0)                                                    # origin shift
    assert torch.allclose(phase_r_torch(shifted, true, amp, obs, SIGNS), torch.ones(3), atol=1e-6)
    one_wrong = true.clone()
    i = int(torch.argmax(amp[0] * obs[0]))
    one_wrong[0, i] += torch.pi
    w = amp[0] ** 2 * obs[0]
    want = 1 - 2 * w[i] / w.sum()
    assert torch.isclose(phase_r_torch(one_wrong, true, amp, obs, SIGNS)[0], want, atol=1e-5)
    rand = torch.randint(0, 2, (3, 1205), generator=gen).float() * torch.pi
    assert float(phase_r_torch(rand, true, amp, obs, SIGNS).max()) < 0.5                          # random signs


@pytest.mark.parametrize("centric", [True, False])
def test_torch_r_agrees_with_numpy_r(centric):
    """The trainer's r (torch, float32) and the evaluation's r (numpy, float64): two paths, one metric."""
    rng = np.random.default_rng(11)
    b, n = 32, len(HKL)
    amp = rng.gamma(1.0, 10.0, (b, n))
    true = np.pi * rng.integers(0, 2, (b, n)) if centric else rng.uniform(-np.pi, np.pi, (b, n))
    wrong = rng.random((b, n)) < rng.uniform(0.0, 0.6, (b, 1))  # from nearly solved to random
    pred = true + np.pi * wrong + rng.normal(0.0, 0.2, (b, n)) + np.pi * (HKL @ np.array([1, 0, 1]) % 2)
    obs = (rng.random((b, n)) < 0.8) & ~ABSENT
    r_np = phase_r_batch(amp, pred, true, HKL, obs)[0]
    r_t = phase_r_torch(*(torch.from_numpy(x).float() for x in (pred, true, amp)), torch.from_numpy(obs), SIGNS)
    np.testing.assert_allclose(r_t.numpy(), r_np, rtol=0, atol=1e-6)
    assert r_np.min() < 0.3 < 0.8 < r_np.max()  # the inputs span the range that matters


def test_start_phases_are_seeded_per_step_and_sample():
    assert start_phases_deg("zero", 0, 5, range(4), 1205) is None
    a = start_phases_deg("random", 0, 5, range(64), 1205)
    assert a.shape == (64, 1205) and set(np.unique(a)) == {0.0, -180.0}
    assert abs(float((a < 0).mean()) - 0.5) < 0.01
    assert np.array_equal(a, start_phases_deg("random", 0, 5, range(64), 1205))
    assert np.array_equal(a[10:20], start_phases_deg("random", 0, 5, range(10, 20), 1205))  # per sample, not batch
    assert not np.array_equal(a, start_phases_deg("random", 0, 6, range(64), 1205))
    assert not np.array_equal(a, start_phases_deg("random", 1, 5, range(64), 1205))
    m = start_phases_deg("mixed", 0, 5, range(400), 1205)
    zero = ~m.any(axis=1)
    assert 0.4 < zero.mean() < 0.6  # p = 1/2
    r = start_phases_deg("random", 0, 5, range(400), 1205)
    assert np.array_equal(m[~zero], r[~zero])  # a mixed sample that starts random starts as under "random"
    assert set(INITS) == {"zero", "random", "mixed"}
    with pytest.raises(ValueError, match="init"):
        start_phases_deg("ones", 0, 0, range(2), 10)


@pytest.fixture(scope="module")
def val_batches(tmp_path_factory):
    src = open_source(build_set(tmp_path_factory.mktemp("val") / "val", count=12, shard_size=6, seed=21))
    return validation_batches(src, DataConfig(batch_size=5), 12)  # batches of 5, 5, 2


def test_validate_reports_a_zero_and_a_random_start(val_batches):
    net = seeded_model(tiny(), 3).eval()
    prior = torch.ones(1205)
    res = validate(net, val_batches, prior, torch.device("cpu"), 2, contextlib.nullcontext, seed=4)
    assert res["n"] == 12
    for kind in ("zero", "random"):
        assert len(res[f"mean_r_by_cycle_{kind}"]) == 2 and res[f"mean_r_by_cycle_{kind}"][-1] == pytest.approx(
            res[f"mean_r_{kind}"], abs=1e-6)
    assert res["mean_r"] == pytest.approx((res["mean_r_zero"] + res["mean_r_random"]) / 2)
    assert res["loss"] == pytest.approx((res["loss_zero"] + res["loss_random"]) / 2)
    # by hand: the random starts are one fixed draw per validation sample; r by the evaluation's numpy metric
    rs, first = [], 0
    for raw in val_batches:
        b = prepare_batch(raw, prior)
        start = to_grid(torch.from_numpy(validation_starts_deg(4, first, len(b.phase), 1205)), HKL)
        with torch.no_grad():
            pred = logits_to_phase_deg(recycle(net, b.grid, 2, start)[-1])
        rs.append(phase_r_batch(b.amplitude.numpy(), np.deg2rad(pred.numpy()), b.phase.numpy(), HKL,
                                b.observed.numpy())[0])
        first += len(b.phase)
    assert res["mean_r_random"] == pytest.approx(float(np.concatenate(rs).mean()), abs=1e-5)
    assert res["mean_r_random"] != res["mean_r_zero"]
    again = validate(net, val_batches, prior, torch.device("cpu"), 2, contextlib.nullcontext, seed=4)
    assert again == res


def test_random_sign_baseline_is_r_of_the_random_starts(val_batches):
    prior = torch.ones(1205)
    base = random_sign_baseline(val_batches, prior, 4)
    rs = []
    for i, raw in enumerate(val_batches):
        b = prepare_batch(raw, prior)
        start = np.deg2rad(validation_starts_deg(4, 5 * i, len(b.phase), 1205))
        rs.append(phase_r_batch(b.amplitude.numpy(), start, b.phase.numpy(), HKL, b.observed.numpy())[0])
    assert base["mean_r"] == pytest.approx(float(np.concatenate(rs).mean()), abs=1e-6)
    assert abs(base["mean_r"]) < 0.35 and base["f_solved"] == 0.0
