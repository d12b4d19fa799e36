"""Validation during training: loss and phase agreement r on a fixed held-out set, from a zero and a random start.

`phase_r_torch` is the batched torch form of the metric that `evaluation.metrics.phase_r` computes in numpy
(DESIGN.md "Metrics"): r = max over the 8 P2₁/c origin shifts t of Σ|F|² cos(φ_pred − φ_true + 2π h·t) / Σ|F|²
over the observed reflections; a structure is solved at r ≥ SOLVED_R. The two agree to 1e-6 (tested).

Every validation recycles `val_cycles` times from zero phases (PhAI's own start) and from random signs (the paper's,
§2; one fixed draw per validation sample), and reports loss, mean r and f(r ≥ 0.8) for each start and for both
together (the headline values and the plateau schedule use both). The random-sign baseline is r of those random
starts themselves: the chance level of r.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from builder.reflections import phai_hkl
from builder.symmetry import SOLVED_R
from training.data import prepare_batch
from training.loss import origin_shift_signs, phai_loss
from training.model import logits_to_phase_deg, recycle, to_grid
from training.schedule import validation_starts_deg

__all__ = ["phase_r_torch", "validate", "random_sign_baseline", "START_KINDS"]

START_KINDS = ("zero", "random")


def phase_r_torch(pred_rad: torch.Tensor, true_rad: torch.Tensor, amplitude: torch.Tensor, observed: torch.Tensor,
                  signs: torch.Tensor) -> torch.Tensor:
    """r = max over the 8 origin shifts of sum |F|^2 cos(dphi + 2 pi h.t) / sum |F|^2 over observed reflections.

    Args:
        pred_rad, true_rad, amplitude: (B, N); observed: (B, N) bool (absences already excluded);
        signs: (8, N) (-1)^(h.s) from `training.loss.origin_shift_signs`.

    Returns:
        (B,) float32; 0 for a sample with nothing observed.
    """
    w = (amplitude.float() ** 2) * observed                                # (B, N)
    c = torch.cos(pred_rad.float() - true_rad.float()) * w                 # (B, N)
    num = c @ signs.to(c.device).T                                         # (B, 8)
    return num.amax(dim=1) / w.sum(dim=1).clamp_min(torch.finfo(torch.float32).tiny)


def _starts(kind: str, seed: int, first: int, b: int, hkl: np.ndarray, device) -> torch.Tensor | None:
    if kind == "zero":
        return None
    deg = torch.from_numpy(validation_starts_deg(seed, first, b, len(hkl))).to(device)
    return to_grid(deg, hkl)


@torch.no_grad()
def validate(fwd, batches: Sequence[dict], prior: torch.Tensor, device: torch.device, cycles: int,
             autocast: Callable, seed: int = 0) -> dict:
    """Loss (last cycle), mean r and f(r >= SOLVED_R) per recycling cycle, from zero and from random phases.

    Args:
        fwd: the network (a PhAINet, or a torch.compile / DDP wrapper of one).
        batches: `training.data.validation_batches`; prior: the loss prior; cycles: recycling passes.
        autocast: a context-manager factory for the forward passes (bf16 on CUDA, or contextlib.nullcontext).
        seed: root seed of the random starts.

    Returns:
        loss, mean_r, f_solved (both starts together), n, and per start kind K: loss_K, mean_r_K, f_solved_K,
        mean_r_by_cycle_K; mean_r_by_cycle (both starts).
    """
    hkl = phai_hkl(10)
    signs = origin_shift_signs(hkl).to(device)
    out: dict = {}
    for kind in START_KINDS:
        loss_sum, n, r_sum, solved = 0.0, 0, np.zeros(cycles), np.zeros(cycles)
        for raw in batches:
            b = prepare_batch(raw, prior, device)
            with autocast():
                logits = recycle(fwd, b.grid, cycles, _starts(kind, seed, n, len(b.phase), hkl, device))
            for c, lg in enumerate(logits):
                r = phase_r_torch(torch.deg2rad(logits_to_phase_deg(lg.float())), b.phase, b.amplitude, b.observed,
                                  signs)
                r_sum[c] += float(r.sum())
                solved[c] += float((r >= SOLVED_R).sum())
            loss_sum += float(phai_loss(logits[-1].float(), b.phase, b.weight, hkl)) * len(b.phase)
            n += len(b.phase)
        out.update({f"loss_{kind}": loss_sum / n, f"mean_r_{kind}": float(r_sum[-1] / n),
                    f"f_solved_{kind}": float(solved[-1] / n), f"mean_r_by_cycle_{kind}": (r_sum / n).round(6).tolist()})
    both = {k: float(np.mean([out[f"{k}_{s}"] for s in START_KINDS])) for k in ("loss", "mean_r", "f_solved")}
    by_cycle = np.mean([out[f"mean_r_by_cycle_{s}"] for s in START_KINDS], axis=0).round(6).tolist()
    return {**both, "mean_r_by_cycle": by_cycle, "n": n, **out}


def random_sign_baseline(batches: Sequence[dict], prior: torch.Tensor, seed: int) -> dict:
    """Mean r and f(r >= SOLVED_R) of the validation's random starts themselves (the chance level of r)."""
    hkl = phai_hkl(10)
    signs = origin_shift_signs(hkl)
    rs, first = [], 0
    for raw in batches:
        b = prepare_batch(raw, prior, "cpu")
        start = torch.from_numpy(validation_starts_deg(seed, first, len(b.phase), len(hkl)))
        rs.append(phase_r_torch(torch.deg2rad(start), b.phase, b.amplitude, b.observed, signs))
        first += len(b.phase)
    r = torch.cat(rs)
    return {"mean_r": float(r.mean()), "f_solved": float((r >= SOLVED_R).float().mean())}
