"""Structure factors in torch, batched, for structures-only shards on a GPU (the numpy twin: builder/sf.py).

F(h) = sum_j occ_j f0_j(s) exp(-8 pi^2 U_j s^2) sum_g exp(2 pi i h.(R_g x_j + t_g)),  s^2 = (sin theta / lambda)^2,
IT92 form factors from gemmi's tables (builder.elements.it92_table), neutral atoms, no anomalous terms. With the
inversion at the origin (P2_1/c) F is real: each pair {g, -g} gives 2 cos(2 pi h.(R_g x + t_g)). The phase
argument is formed and reduced mod 1 in float64, the trigonometry is float32, as in builder/sf.py.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch

from builder.elements import it92_table
from builder.sf import PHASE_ZERO_BELOW
from builder.symmetry import space_group_ops

__all__ = ["structure_factors_torch", "stol2_torch"]


def stol2_torch(cell: torch.Tensor, hkl: torch.Tensor) -> torch.Tensor:
    """(sin theta / lambda)^2 = h^T G* h / 4 for cells (B, 6) [a, b, c, alpha, beta, gamma] -> (B, H) float64."""
    a, b, c = cell[:, 0], cell[:, 1], cell[:, 2]
    ca, cb, cg = (torch.cos(torch.deg2rad(cell[:, i])) for i in (3, 4, 5))
    g = torch.stack([
        torch.stack([a * a, a * b * cg, a * c * cb], -1),
        torch.stack([a * b * cg, b * b, b * c * ca], -1),
        torch.stack([a * c * cb, b * c * ca, c * c], -1)], -2)            # (B, 3, 3) metric tensor
    gs = torch.linalg.inv(g)                                                # (B, 3, 3) reciprocal metric
    h = hkl.to(cell.dtype)
    return 0.25 * torch.einsum("hi,bij,hj->bh", h, gs, h)


@functools.lru_cache(maxsize=8)
def _ops(space_group: str) -> tuple[np.ndarray, np.ndarray, bool]:
    ops = space_group_ops(space_group)
    sel = ops.half if ops.inversion_at_origin else np.arange(ops.n)
    return ops.rot[sel], ops.tran[sel], bool(ops.inversion_at_origin)


def structure_factors_torch(cell: torch.Tensor, frac: torch.Tensor, z: torch.Tensor, occ: torch.Tensor,
                            uiso: torch.Tensor, hkl: np.ndarray | torch.Tensor,
                            space_group: str = "P 1 21/c 1") -> tuple[torch.Tensor, torch.Tensor]:
    """|F| and phases (radians) of a batch of zero-padded asymmetric units.

    Args:
        cell: (B, 6); frac: (B, M, 3); z: (B, M) atomic numbers, 0 = padding; occ, uiso: (B, M).
        hkl: (H, 3) Miller indices.
        space_group: any symbol gemmi knows.

    Returns:
        (amplitude, phase), each (B, H) float32; phases in [0, 2 pi), exactly 0 / pi for centric F,
        and 0 where |F| <= 0.01 e (as builder/sf.py).
    """
    dev = frac.device
    h = torch.as_tensor(np.array(hkl, dtype=np.float64), device=dev)          # (H, 3)
    s2 = stol2_torch(cell.to(dev, torch.float64), h)                              # (B, H)
    a_t, b_t, c_t = (torch.as_tensor(np.array(t), device=dev) for t in it92_table())
    z = z.long()
    zs, inv = torch.unique(z, return_inverse=True)                               # elements in the batch
    s2f = s2.float()
    f0 = (a_t[zs].float()[None, :, :, None]                                        # (1, E, 4, 1)
          * torch.exp(-b_t[zs].float()[None, :, :, None] * s2f[:, None, None, :])).sum(2) \
        + c_t[zs].float()[None, :, None]                                           # (B, E, H)
    f0 = torch.gather(f0, 1, inv[:, :, None].expand(-1, -1, s2.shape[1]))         # (B, M, H)
    w = f0 * torch.exp(-8.0 * math.pi ** 2 * uiso.float()[:, :, None] * s2f[:, None, :])
    w = w * occ.float()[:, :, None] * (z > 0)[:, :, None]                         # (B, M, H)
    rot, tran, real = _ops(space_group)
    hr = torch.einsum("hi,mij->mhj", h, torch.as_tensor(rot, device=dev))         # (m, H, 3) h.R_g
    ht = h @ torch.as_tensor(tran, device=dev).T                                   # (H, m) h.t_g
    arg = torch.einsum("bnj,mhj->bnmh", frac.to(torch.float64), hr) + ht.T[None, None]  # (B, M, m, H) cycles
    arg = ((arg - torch.floor(arg)) * (2 * math.pi)).float()
    re = (torch.cos(arg).sum(2) * w).sum(1, dtype=torch.float64)                  # (B, H)
    if real:
        f_re, f_im = 2.0 * re, torch.zeros_like(re)
    else:
        f_re, f_im = re, (torch.sin(arg).sum(2) * w).sum(1, dtype=torch.float64)
    amp = torch.sqrt(f_re ** 2 + f_im ** 2)
    if real:
        phase = torch.where(f_re < 0, math.pi, 0.0)
    else:
        phase = torch.remainder(torch.atan2(f_im, f_re), 2 * math.pi)
    phase = torch.where(amp <= PHASE_ZERO_BELOW, 0.0, phase)
    return amp.float(), phase.to(torch.float32)
