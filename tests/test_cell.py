"""Cell samplers (paper §3.2–3.4): distributions a crystallographer would check by eye."""
from __future__ import annotations

import dataclasses
import math

import gemmi
import numpy as np
import pytest
from scipy import stats

from builder.cell import CellConfig, edges_from_volume, sample_cell, sample_volume, skew_cell


def _cells(cfg: CellConfig, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.array([sample_cell(rng, cfg) for _ in range(n)])


def _volumes(cells: np.ndarray) -> np.ndarray:
    return np.array([gemmi.UnitCell(*c).volume for c in cells])


def test_lognormal_volume_matches_its_truncated_distribution():
    cfg = CellConfig(sampler="lognormal", mu=6.04, sigma=0.394)
    ln_v = np.log(_volumes(_cells(cfg, 20000)))
    # V is resampled (not clipped) into [a_min³, a_max³]: ln V is a normal truncated to [ln 64, ln 1000]
    a, b = (math.log(4.0**3) - 6.04) / 0.394, (math.log(10.0**3) - 6.04) / 0.394
    expected = stats.truncnorm(a, b, loc=6.04, scale=0.394)
    assert abs(ln_v.mean() - expected.mean()) < 4 * expected.std() / math.sqrt(len(ln_v))
    assert abs(ln_v.std() - expected.std()) < 0.01
    assert stats.kstest(ln_v, expected.cdf).pvalue > 1e-3
    assert ln_v.max() <= math.log(1000.0) + 1e-9  # never clipped to the bound: it is simply never exceeded


def test_uniform_volume_and_skew_keep_volume():
    cfg = CellConfig(sampler="uniform-volume", v_min=160.0, v_max=1000.0)
    v = _volumes(_cells(cfg, 5000))
    assert v.min() >= 160.0 - 1e-6 and v.max() <= 1000.0 + 1e-6
    assert stats.kstest(v, stats.uniform(160.0, 840.0).cdf).pvalue > 1e-3


def test_edges_from_volume_respect_bounds_and_ratio():
    cfg = CellConfig(sampler="lognormal")
    rng = np.random.default_rng(1)
    for _ in range(5000):
        v = sample_volume(rng, cfg)
        e = edges_from_volume(rng, v, cfg)
        assert np.isclose(e.prod(), v)
        assert np.all(np.diff(e) >= -1e-9), "ascending a1 ≤ a2 ≤ a3"
        assert e[0] >= 4.0 - 1e-9 and e[2] <= 10.0 + 1e-9
        assert e[1] / e[0] <= 1.8 + 1e-9 and e[2] / e[1] <= 1.8 + 1e-9


def test_monoclinic_beta_range_and_edges():
    cells = _cells(CellConfig(sampler="lognormal"), 5000)
    assert np.all(cells[:, 4] >= 90.0) and np.all(cells[:, 4] <= 125.0 + 1e-9)
    assert np.allclose(cells[:, [3, 5]], 90.0)
    assert cells[:, :3].max() <= 10.0 + 1e-9  # eq. 15's adjusted bound keeps the skewed c within a_max
    assert cells[:, :3].min() >= 4.0 - 1e-9


def test_adjusted_s3_bound_lowers_beta():
    """Fig. 3: without the adjusted bound β piles up towards β_max; with it, the distribution shifts down."""
    base = CellConfig(sampler="lognormal")
    adj, raw = _cells(base, 4000), _cells(dataclasses.replace(base, adjusted_s3=False), 4000)
    assert adj[:, 4].mean() < raw[:, 4].mean() - 1.5  # measured: 105.6° vs 108.6°
    assert raw[:, 2].max() > 10.0 >= adj[:, 2].max()  # without the bound c can leave [a_min, a_max]


def test_uniform_edges_are_independent_uniforms():
    cfg = CellConfig(sampler="uniform-edges", skew="none")
    cells = _cells(cfg, 4000)
    for k in range(3):
        assert stats.kstest(cells[:, k], stats.uniform(4.0, 6.0).cdf).pvalue > 1e-3


def test_triclinic_skew_keeps_volume():
    cfg = CellConfig(sampler="lognormal", skew="triclinic")
    rng = np.random.default_rng(5)
    for _ in range(200):
        e = edges_from_volume(rng, sample_volume(rng, cfg), cfg)
        cell = skew_cell(rng, e, cfg)
        assert np.isclose(gemmi.UnitCell(*cell).volume, e.prod())
        assert 90.0 <= cell[4] <= 125.0 + 1e-9 and 90.0 <= cell[5] <= 125.0 + 1e-9


@pytest.mark.parametrize("kwargs, message", [
    ({"a_min": 11.0}, "a_min"),
    ({"sampler": "uniform-volume", "v_min": 1500.0, "v_max": 2000.0}, "cannot be realised"),
    ({"sampler": "lognormal", "mu": 9.0, "sigma": 0.1}, "mass"),
    ({"sampler": "cubic"}, "unknown cell sampler"),
])
def test_impossible_parameters_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CellConfig(**kwargs).validate()
