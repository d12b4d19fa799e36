"""The PhAI training loss (Larsen et al. 2024): origin-invariant weighted cross-entropy over 0/pi phases.

P2_1/c has 8 equivalent origins, the inversion centres t = s/2 with s in {0,1}^3. Moving the origin by t
adds 360 deg * h.t to each phase, i.e. flips the 0/pi class of reflections with odd h.s. The loss is the
weighted cross-entropy against each of the 8 shifted targets, the minimum over the 8 per sample, then the
batch mean.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from builder.symmetry import P21C_ORIGIN_SHIFTS, origin_shift_parity

__all__ = ["origin_shift_signs", "phase_targets", "weighted_ce_per_shift", "phai_loss"]


def _hkl_tensor(hkl: np.ndarray | torch.Tensor) -> torch.Tensor:
    h = hkl.detach().long() if isinstance(hkl, torch.Tensor) else torch.from_numpy(np.array(hkl, np.int64))
    if h.dim() != 2 or h.shape[1] != 3:
        raise ValueError(f"hkl must have shape (N, 3), got {tuple(h.shape)}")
    return h


def origin_shift_signs(hkl: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Signs (-1)^(h.s) of the 8 P2_1/c origin shifts t = s/2 (rows: `builder.symmetry.P21C_ORIGIN_SHIFTS`).

    Args:
        hkl: (N, 3) integer Miller indices.

    Returns:
        (8, N) float32 tensor of +1 / -1 (on hkl's device if it is a tensor); -1 marks a class flip.
    """
    h = _hkl_tensor(hkl)
    parity = origin_shift_parity(h.cpu().numpy(), P21C_ORIGIN_SHIFTS)  # (8, N)
    return torch.from_numpy(1.0 - 2.0 * parity).to(device=h.device, dtype=torch.float32)


def phase_targets(phase_rad: torch.Tensor) -> torch.Tensor:
    """Class targets of PhAI (Larsen et al. 2024): phase 0 -> class 1, phase pi -> class 0.

    A phase counts as 0 when cos(phase) > 0 (nearer to 0 than to pi), so -pi, pi and 3pi all give class 0.

    Args:
        phase_rad: (B, N) phases in radians.

    Returns:
        (B, N) int64 classes.

    Raises:
        ValueError: non-floating input.
    """
    if not phase_rad.is_floating_point():
        raise ValueError(f"phase_rad must be a floating tensor in radians, got {phase_rad.dtype}")
    return (torch.cos(phase_rad) > 0).long()


def weighted_ce_per_shift(logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor,
                          signs: torch.Tensor) -> torch.Tensor:
    """Weighted mean cross-entropy for each origin-shifted target (PhAI, Larsen et al. 2024).

    For shift j, the target class of reflection i is flipped where ``signs[j, i] < 0``. The per-reflection
    CE is averaged with the weights, sum_i w_i CE_i / sum_i w_i (as in the published training code), so
    with a single nonzero weight it is that reflection's CE. A sample whose weights are all zero gets 0.

    Args:
        logits: (B, 2, N) raw logits (any float dtype; computed in float32).
        targets: (B, N) int64 classes for the unshifted origin.
        weight: (N,) or (B, N) non-negative weights.
        signs: (S, N) +1 / -1 from `origin_shift_signs`.

    Returns:
        (B, S) float32 loss per sample and shift.

    Raises:
        ValueError: inconsistent shapes.
    """
    if logits.dim() != 3 or logits.shape[1] != 2:
        raise ValueError(f"logits must have shape (B, 2, N), got {tuple(logits.shape)}")
    b, _, n = logits.shape
    if tuple(targets.shape) != (b, n):
        raise ValueError(f"targets must have shape ({b}, {n}), got {tuple(targets.shape)}")
    if tuple(weight.shape) not in ((n,), (b, n)):
        raise ValueError(f"weight must have shape ({n},) or ({b}, {n}), got {tuple(weight.shape)}")
    if signs.dim() != 2 or signs.shape[1] != n:
        raise ValueError(f"signs must have shape (S, {n}), got {tuple(signs.shape)}")
    logp = F.log_softmax(logits.float(), dim=1)                   # (B, 2, N)
    t = targets.long().unsqueeze(1)                               # (B, 1, N)
    ce_same = -logp.gather(1, t).squeeze(1)                       # (B, N) CE for the target class
    ce_flip = -logp.gather(1, 1 - t).squeeze(1)                   # (B, N) CE for the other class
    flip = (signs.to(logits.device) < 0).unsqueeze(0)             # (1, S, N)
    ce = torch.where(flip, ce_flip.unsqueeze(1), ce_same.unsqueeze(1))  # (B, S, N)
    w = weight.to(device=logits.device, dtype=torch.float32).expand(b, n).unsqueeze(1)  # (B, 1, N)
    norm = w.sum(dim=2).clamp_min(torch.finfo(torch.float32).tiny)  # (B, 1)
    return (ce * w).sum(dim=2) / norm                             # (B, S)


def phai_loss(logits: torch.Tensor, phase_rad: torch.Tensor, weight: torch.Tensor,
              hkl: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Origin-invariant PhAI loss (Larsen et al. 2024): batch mean of min over 8 origin shifts of weighted CE.

    The caller builds ``weight`` as (per-reflection prior) x (not systematically absent), e.g. the
    published mean-|F| prior times ``~systematic_absences("P 1 21/c 1", hkl)``. All N reflections count,
    including ones masked out of the input, so the network also learns to extend phases.

    Args:
        logits: (B, 2, N) network output (class 1 = 0 deg, class 0 = 180 deg).
        phase_rad: (B, N) true phases in radians (0 or pi).
        weight: (N,) or (B, N) non-negative weights.
        hkl: (N, 3) Miller indices of the N reflections.

    Returns:
        Scalar float32 loss.
    """
    signs = origin_shift_signs(hkl)                              # (8, N)
    per_shift = weighted_ce_per_shift(logits, phase_targets(phase_rad), weight, signs)  # (B, 8)
    return per_shift.min(dim=1).values.mean()
