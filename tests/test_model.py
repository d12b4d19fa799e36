"""PhAI network (training/model.py) and loss (training/loss.py): layout, shapes, recycling, loss cases."""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from builder.reflections import phai_hkl, systematic_absences
from builder.symmetry import P21C_ORIGIN_SHIFTS
from training.loss import origin_shift_signs, phai_loss, phase_targets, weighted_ce_per_shift
from training.model import (
    PRESETS, ModelConfig, PhAINet, config_dict, from_grid, hkl_grid_index, logits_to_phase_deg, paper,
    preset, recycle, seeded_model, tiny, to_grid,
)

KEYS_FILE = Path(__file__).parent / "data" / "phai-state-dict-keys.txt"
HKL = phai_hkl(10)
N = 1205


def _published_layout() -> list[tuple[str, tuple[int, ...]]]:
    """Parse lines like 'net_a.1.weight (96, 1, 3, 3, 3)' from the published PhAI_model.pth."""
    out = []
    for line in KEYS_FILE.read_text().splitlines():
        if not line.strip():
            continue
        m = re.fullmatch(r"(\S+) \(([\d, ]*)\)", line.strip())
        assert m, line
        out.append((m.group(1), tuple(int(x) for x in m.group(2).split(",") if x.strip())))
    return out


def _tiny_model(seed: int = 0) -> PhAINet:
    return seeded_model(tiny(), seed).eval()


def _grids(gen: torch.Generator, b: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    amp = torch.rand(b, N, generator=gen)
    amp = amp / amp.max(dim=1, keepdim=True).values
    ph = torch.where(torch.rand(b, N, generator=gen) < 0.5, 0.0, -180.0)
    return to_grid(amp, HKL), to_grid(ph, HKL)


# ----------------------------------------------------------------------------- config and layout

def test_paper_parameter_count():
    with torch.device("meta"):
        model = PhAINet(paper())
    assert sum(p.numel() for p in model.parameters()) == 42_443_882


def test_paper_state_dict_matches_published_layout_and_loads_strict():
    layout = _published_layout()
    assert len(layout) == 158
    model = PhAINet(paper())
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == layout
    gen = torch.Generator().manual_seed(1)
    sd = {k: torch.randn(shape, generator=gen) for k, shape in layout}
    result = model.load_state_dict(sd, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(model.net_output[3].weight, sd["net_output.3.weight"])


def test_presets_and_config_round_trip():
    assert set(PRESETS) == {"tiny", "small", "paper"}
    for name in PRESETS:
        cfg = preset(name)
        assert ModelConfig(**config_dict(cfg)) == cfg
    with pytest.raises(ValueError, match="tiny, small, paper"):
        preset("huge")
    with pytest.raises(ValueError):
        ModelConfig(kernel=4)
    with pytest.raises(ValueError):
        ModelConfig(reflections=1000)


# ----------------------------------------------------------------------------- forward and grid

def test_tiny_forward_shapes():
    model = _tiny_model()
    amp, ph = _grids(torch.Generator().manual_seed(0), b=3)
    assert amp.shape == (3, 21, 11, 11)
    with torch.no_grad():
        logits = model(amp, ph)
    assert logits.shape == (3, 2, N)
    assert torch.isfinite(logits).all()
    with pytest.raises(ValueError):
        model(amp[:, :20], ph[:, :20])


def test_grid_round_trip():
    idx = hkl_grid_index(HKL, 10)
    assert idx.shape == (N,) and idx.unique().numel() == N
    assert idx[0] == 0 and idx[-1] == 20 * 121  # (-10,0,0) -> [0,0,0]; (10,0,0) -> [20,0,0]
    values = torch.rand(2, N, generator=torch.Generator().manual_seed(2)) + 0.5  # all nonzero
    grid = to_grid(values, HKL)
    assert grid.shape == (2, 21, 11, 11)
    assert torch.equal(from_grid(grid, HKL), values)
    assert int((grid[0] != 0).sum()) == N
    assert grid[:, 10, 0, 0].eq(0).all()  # 000
    h, k, l = np.meshgrid(np.arange(-10, 11), np.arange(11), np.arange(11), indexing="ij")
    outside = torch.from_numpy(h**2 + k**2 + l**2 > 100)
    assert grid[:, outside].eq(0).all()
    with pytest.raises(ValueError):
        to_grid(values[:, :10], HKL)
    with pytest.raises(ValueError):
        hkl_grid_index(np.array([[11, 0, 0]]), 10)


def test_logits_to_phase_deg():
    logits = torch.tensor([[[0.0, 2.0], [1.0, -1.0]]])  # (1, 2, 2): refl 0 -> class 1, refl 1 -> class 0
    assert logits_to_phase_deg(logits).tolist() == [[0.0, -180.0]]


def test_recycle_feeds_back_argmax_phases():
    model = _tiny_model()
    amp, start = _grids(torch.Generator().manual_seed(3))
    seen: list[torch.Tensor] = []
    hook = model.register_forward_pre_hook(lambda mod, args: seen.append(args[1].clone()))
    try:
        out = recycle(model, amp, 3)
        out_start = recycle(model, amp, 1, init_phases_grid=start)
    finally:
        hook.remove()
    assert len(out) == 3 and all(o.shape == (2, 2, N) for o in out)
    assert seen[0].eq(0).all()
    assert torch.equal(seen[1], to_grid(logits_to_phase_deg(out[0]), HKL))
    assert torch.equal(seen[2], to_grid(logits_to_phase_deg(out[1]), HKL))
    assert torch.equal(seen[3], start) and len(out_start) == 1
    assert not out[0].requires_grad and out[-1].requires_grad
    with pytest.raises(ValueError):
        recycle(model, amp, 0)


def test_recycle_takes_ddp_and_compiled_wrappers(tmp_path):
    """The one recycling loop serves training (DDP, torch.compile) and inference: same logits as the bare model."""
    import torch.distributed as dist
    from training.model import unwrap

    model = _tiny_model()
    amp, start = _grids(torch.Generator().manual_seed(9))
    want = [o.detach() for o in recycle(model, amp, 3, init_phases_grid=start)]
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        # torch.compile only wraps until called (tracing one would cost ~7 s here): the loop needs just `unwrap`
        assert unwrap(ddp) is model and unwrap(torch.compile(ddp, backend="eager")) is model
        got = recycle(ddp, amp, 3, init_phases_grid=start)
        assert all(torch.allclose(g, e, atol=1e-5) for g, e in zip(got, want))
        assert got[-1].requires_grad and not got[0].requires_grad
        got[-1].sum().backward()  # gradients reach the parameters through DDP
        assert model.net_output[3].weight.grad is not None
    finally:
        dist.destroy_process_group()
    with pytest.raises(ValueError, match="not a PhAINet"):
        recycle(torch.nn.Linear(2, 2), amp, 1)


# ----------------------------------------------------------------------------- loss

def _weight() -> torch.Tensor:
    absent = systematic_absences("P 1 21/c 1", HKL)
    return torch.from_numpy(~absent).float()  # flat prior x not-absent


def _true_phases(seed: int, b: int = 2) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.where(torch.rand(b, N, generator=gen) < 0.5, 0.0, math.pi)


def _perfect_logits(phase_rad: torch.Tensor, margin: float = 5.0) -> torch.Tensor:
    cls = phase_targets(phase_rad)  # (B, N)
    return F.one_hot(cls, 2).permute(0, 2, 1).float() * margin  # (B, N, 2) -> (B, 2, N)


def test_signs_and_targets():
    signs = origin_shift_signs(HKL)
    assert signs.shape == (8, N) and signs[0].eq(1).all()
    assert P21C_ORIGIN_SHIFTS[4].tolist() == [1, 0, 0]
    odd_h = torch.from_numpy(HKL[:, 0] % 2 == 1)
    assert torch.equal(signs[4] < 0, odd_h)
    assert phase_targets(torch.tensor([[0.0, math.pi, -math.pi, 2 * math.pi]])).tolist() == [[1, 0, 0, 1]]


def test_loss_perfect_beats_flipped():
    phase = _true_phases(4)
    w = _weight()
    good = phai_loss(_perfect_logits(phase), phase, w, HKL)
    bad = phai_loss(_perfect_logits(phase + math.pi), phase, w, HKL)
    assert good < 0.01 < bad


def test_loss_origin_shift_invariant():
    phase = _true_phases(5)
    logits = torch.randn(2, 2, N, generator=torch.Generator().manual_seed(6))
    odd_h = torch.from_numpy(HKL[:, 0] % 2 == 1)
    shifted = torch.where(odd_h, phase + math.pi, phase)  # origin shift t = (1/2, 0, 0)
    w = _weight()
    assert torch.allclose(phai_loss(logits, phase, w, HKL), phai_loss(logits, shifted, w, HKL), rtol=0, atol=1e-6)
    # and the shifted target is seen as shift (1,0,0) of the original
    signs = origin_shift_signs(HKL)
    a = weighted_ce_per_shift(logits, phase_targets(phase), w, signs)
    b = weighted_ce_per_shift(logits, phase_targets(shifted), w, signs)
    assert torch.allclose(a[:, 4], b[:, 0])


@pytest.mark.parametrize("refl", [(2, 0, 4), (1, 2, 3)])
def test_loss_single_reflection_hand_computed(refl):
    i = int(np.flatnonzero((HKL == np.array(refl)).all(axis=1))[0])
    logits = torch.zeros(1, 2, N)
    logits[0, 0, i], logits[0, 1, i] = 0.3, 1.7  # favours class 1 (phase 0)
    phase = torch.zeros(1, N)
    phase[0, i] = math.pi  # true class 0
    w = torch.zeros(N)
    w[i] = 0.25
    ce_true = -(0.3 - math.log(math.exp(0.3) + math.exp(1.7)))
    ce_flip = -(1.7 - math.log(math.exp(0.3) + math.exp(1.7)))
    # (2,0,4) has even h.s for every shift: plain CE; (1,2,3) can be flipped by an origin shift.
    expected = ce_true if all(x % 2 == 0 for x in refl) else min(ce_true, ce_flip)
    assert phai_loss(logits, phase, w, HKL).item() == pytest.approx(expected, rel=1e-6)


def test_loss_batch_weights_and_zero_weight():
    phase = _true_phases(7, b=3)
    logits = torch.randn(3, 2, N, generator=torch.Generator().manual_seed(8))
    w = _weight()
    assert torch.equal(phai_loss(logits, phase, w, HKL), phai_loss(logits, phase, w.expand(3, N), HKL))
    assert phai_loss(logits, phase, torch.zeros(N), HKL).item() == 0.0
    with pytest.raises(ValueError):
        phai_loss(logits, phase, torch.ones(10), HKL)
