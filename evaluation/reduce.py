"""Data reduction of measured reflections: symmetry, merging, |F|, resolution, absences, the phasing frame.

Steps (each one's figures go into `Reduced.report`, and from there into solve.json):
  1. Cell and space group: from the file's symmetry operations when it has them (gemmi's
     `find_spacegroup_by_ops`), else from its symbol, else from --cell/--spacegroup; every source that is given
     must agree (same operations), or the input is refused.
  2. Merging in the input's own setting: gemmi (`Intensities.set_data`) maps every reflection to its
     reciprocal-space ASU under the Laue group (symmetry equivalents and Friedel mates, 2/m for space group 14);
     equivalents are averaged with weights 1/σ², σ(mean) = (Σ 1/σ²)^(−1/2); R_int = Σ|I − ⟨I⟩| / Σ I over
     reflections measured more than once (SHELX's definition). Reflections 0 0 0 are dropped.
  3. σ missing or ≤ 0 on every reflection: unit weights (and a warning); on some: those take the median σ of
     the rest (warning).
  4. Intensities to amplitudes: French–Wilson posterior means (`evaluation.french_wilson`; Wilson prior per
     resolution shell, centric/acentric from gemmi); without σ there is no likelihood, so |F| = √max(I, 0).
     Amplitude input (HKLF 3, F_meas) is merged as |F| and negative values are set to 0.
  5. Systematic absences of the group (gemmi), counted with I/σ > 3 as violations (P2₁/c: 0k0 with k odd, h0l
     with l odd) and warned about; absent reflections are never phased.
  6. Resolution and completeness: d range; completeness to the data's d_min and to the network's d_min
     (against gemmi's count of unique, not absent reflections).
  7. The phasing frame: space group 14 in any setting goes to P 1 21/c 1 by `builder.setting.standardise` (the
     rules of CIF ingestion): x' = M x + t, h' = h M⁻¹, φ(h) = φ'(h') − 2π h'·t; other groups stay as they are.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import gemmi
import numpy as np

from builder.reflections import d_spacing, stol2
from builder.setting import STANDARD_SETTING, standardise
from evaluation.french_wilson import french_wilson, shell_mean
from evaluation.reflections_io import Measured

__all__ = ["Frame", "Reduced", "resolve_crystal", "merge", "frame_for", "reduce_measured", "NETWORK_D_MIN",
           "ABSENCE_SIGMA"]

NETWORK_D_MIN = 1.0  # Å, the resolution of the network's training data (Acta A 2026)
ABSENCE_SIGMA = 3.0  # I/σ above which a systematically absent reflection counts as a violation


@dataclasses.dataclass(frozen=True)
class Frame:
    """Where phasing happens: x_frame = rot @ x_input + tran, in space group `name` with cell `cell6`."""

    name: str
    cell6: np.ndarray
    rot: np.ndarray  # (3, 3)
    tran: np.ndarray  # (3,)
    transform: str  # the operation as a triplet ("x,y,z" when the input is already the frame)

    def hkl_to_frame(self, hkl: np.ndarray) -> np.ndarray:
        """h' = h M⁻¹ (row vectors), so that h'·x' = h·x + h'·t."""
        new = np.asarray(hkl, dtype=np.float64) @ np.linalg.inv(self.rot)
        if not np.allclose(new, np.rint(new), atol=1e-6):
            raise ValueError(f"the setting change {self.transform} gives non-integer indices")
        return np.rint(new).astype(np.int64)

    def phase_to_input(self, hkl_frame: np.ndarray, phase: np.ndarray) -> np.ndarray:
        """φ(h) = φ'(h') − 2π h'·t, wrapped to [0, 2π)."""
        return np.mod(np.asarray(phase) - 2.0 * np.pi * (np.asarray(hkl_frame) @ self.tran), 2.0 * np.pi)


@dataclasses.dataclass(frozen=True)
class Reduced:
    """Merged, unique reflections in the input's setting (gemmi's ASU), and their place in the frame."""

    name: str
    cell6: np.ndarray
    spacegroup: gemmi.SpaceGroup  # in the input's setting
    hkl: np.ndarray  # (M, 3) int64, input setting
    value: np.ndarray  # (M,) merged F² (intensity data) or F (amplitude data)
    sigma: np.ndarray | None  # (M,) σ of `value`, None with unit weights
    amp: np.ndarray  # (M,) |F| estimate (French–Wilson or √)
    absent: np.ndarray  # (M,) bool, systematically absent in the group
    d: np.ndarray  # (M,) Å
    frame: Frame
    hkl_frame: np.ndarray  # (M, 3) the same reflections in the frame
    kind: str
    report: dict[str, Any]
    warnings: tuple[str, ...]

    @property
    def usable(self) -> np.ndarray:
        """Reflections that enter phasing: not absent."""
        return ~self.absent


def _sg_from_ops(ops: tuple[str, ...], where: str) -> gemmi.SpaceGroup:
    try:
        group = gemmi.GroupOps([gemmi.Op(o.lower().replace(" ", "")) for o in ops])
    except (RuntimeError, ValueError):
        raise ValueError(f"cannot read the symmetry operations of {where}") from None
    sg = gemmi.find_spacegroup_by_ops(group)
    if sg is None:
        raise ValueError(f"the {len(ops)} symmetry operations of {where} form no space group in gemmi's table")
    return sg


def _sg_from_symbol(symbol: str, where: str) -> gemmi.SpaceGroup:
    sg = gemmi.find_spacegroup_by_name(symbol.strip())
    if sg is None:
        try:
            sg = gemmi.find_spacegroup_by_ops(gemmi.symops_from_hall(symbol.strip()))
        except (RuntimeError, ValueError):
            sg = None
    if sg is None:
        raise ValueError(f"unknown space group {symbol!r} ({where}); give a Hermann-Mauguin symbol such as P21/c")
    return sg


def resolve_crystal(meas: Measured, cell: tuple[float, ...] | None = None,
                    spacegroup: str | None = None) -> tuple[np.ndarray, gemmi.SpaceGroup, dict[str, Any]]:
    """The cell and space group, from the file's operations, its symbol and the options, all agreeing.

    Raises:
        ValueError: no cell, no space group, an unknown symbol, or two sources that disagree.
    """
    cands: list[tuple[str, gemmi.SpaceGroup]] = []
    if meas.symops:
        cands.append((f"the symmetry operations of {meas.name}", _sg_from_ops(meas.symops, meas.name)))
    if meas.symbol:
        cands.append((f"the symbol {meas.symbol!r} in {meas.name}", _sg_from_symbol(meas.symbol, meas.name)))
    if spacegroup is not None:
        cands.append((f"--spacegroup {spacegroup}", _sg_from_symbol(spacegroup, "--spacegroup")))
    if not cands:
        raise ValueError(f"no space group: {meas.name} has no symmetry; give --spacegroup SYMBOL")
    (first, sg), rest = cands[0], cands[1:]
    for where, other in rest:
        if other.xhm() != sg.xhm():
            raise ValueError(f"contradictory space group: {first} give {sg.xhm()}, {where} gives {other.xhm()}")
    if meas.cell6 is None and cell is None:
        raise ValueError(f"no cell: {meas.name} has none (for a .hkl, put the .ins or .res beside it); "
                         "give --cell a b c alpha beta gamma")
    if meas.cell6 is not None and cell is not None and not np.allclose(meas.cell6, cell, rtol=1e-3, atol=1e-3):
        raise ValueError(f"contradictory cell: {meas.name} gives {list(meas.cell6)}, --cell gives {list(cell)}")
    cell6 = np.array(meas.cell6 if meas.cell6 is not None else cell, dtype=np.float64)
    if not gemmi.UnitCell(*cell6).is_crystal() or np.any(cell6[:3] <= 0):
        raise ValueError(f"the cell {cell6.tolist()} is not a valid unit cell")
    info = {"space_group": sg.xhm(), "number": sg.number, "hall": sg.hall, "from": first,
            "agreeing": [w for w, _ in rest], "cell": cell6.tolist(),
            "cell_from": meas.name if meas.cell6 is not None else "--cell"}
    return cell6, sg, info


def _weights(sigma: np.ndarray | None, n: int) -> tuple[np.ndarray, bool, list[str]]:
    """σ to merge with, whether the weights are unit weights, and the warnings (module docstring, step 3)."""
    if sigma is None or not np.any(sigma > 0):
        why = "missing" if sigma is None else "<= 0 on every reflection"
        return np.ones(n), True, [f"sigma {why}: unit weights in merging, no French-Wilson (|F| = sqrt(max(I,0))), "
                                  "sigma of merged values not reported"]
    bad = ~(sigma > 0)
    if not bad.any():
        return sigma, False, []
    fixed = sigma.copy()
    fixed[bad] = np.median(sigma[~bad])
    return fixed, False, [f"sigma <= 0 on {int(bad.sum())} of {n} reflections: set to the median sigma "
                          f"{fixed[bad][0]:.4g} of the others"]


def merge(cell6: np.ndarray, sg: gemmi.SpaceGroup, hkl: np.ndarray, value: np.ndarray,
          sigma: np.ndarray) -> dict[str, Any]:
    """σ-weighted merge of symmetry equivalents and Friedel mates (module docstring, step 2).

    Returns:
        dict(hkl (M, 3) in gemmi's ASU, value (M,), sigma (M,), n_obs (M,), r_int, n_in, n_unique, n_multiple).
    """
    it = gemmi.Intensities()
    it.set_data(gemmi.UnitCell(*cell6), sg, np.ascontiguousarray(hkl, dtype=np.int32),
                np.ascontiguousarray(value, dtype=np.float64), np.ascontiguousarray(sigma, dtype=np.float64))
    asu = np.array(it.miller_array, dtype=np.int64)
    if len(asu) != len(hkl):
        raise ValueError("gemmi dropped reflections while mapping to the ASU")  # never with sigma > 0
    uniq, inv, n_obs = np.unique(asu, axis=0, return_inverse=True, return_counts=True)
    inv = inv.ravel()
    w = 1.0 / sigma**2
    sw = np.bincount(inv, weights=w)
    mean = np.bincount(inv, weights=w * value) / sw
    multi = n_obs[inv] > 1
    num = float(np.abs(value - mean[inv])[multi].sum())
    den = float(np.abs(value[multi]).sum())
    return {"hkl": uniq, "value": mean, "sigma": 1.0 / np.sqrt(sw), "n_obs": n_obs, "inverse": inv,
            "r_int": num / den if den > 0 else None, "n_in": int(len(hkl)), "n_unique": int(len(uniq)),
            "n_multiple": int((n_obs > 1).sum())}


def frame_for(cell6: np.ndarray, sg: gemmi.SpaceGroup, transform: str | None = None) -> Frame:
    """The phasing frame: P 1 21/c 1 for space group 14 (via `builder.setting.standardise`, or the given
    `transform` triplet, e.g. the one CIF ingestion chose for the model), the input's own setting otherwise."""
    if sg.number != 14:
        return Frame(sg.xhm(), np.array(cell6, dtype=np.float64), np.eye(3), np.zeros(3), "x,y,z")
    if transform is None:
        op = standardise(gemmi.UnitCell(*cell6), sg).op
    else:
        op = gemmi.Op(transform)
    new = gemmi.UnitCell(*cell6).changed_basis_forward(op, False)
    m = np.array(op.float_seitz())
    return Frame(STANDARD_SETTING, np.array(new.parameters, dtype=np.float64), m[:3, :3], m[:3, 3], op.triplet())


def _amplitudes(merged: dict, sg: gemmi.SpaceGroup, cell6: np.ndarray, kind: str,
                unit: bool) -> tuple[np.ndarray, dict[str, Any]]:
    value, hkl = merged["value"], merged["hkl"]
    if kind == "amplitude":
        return np.maximum(value, 0.0), {"method": "amplitudes as given (negative set to 0)",
                                        "n_negative": int((value < 0).sum())}
    info: dict[str, Any] = {"n_negative": int((value < 0).sum())}
    if unit:
        info["method"] = "sqrt(max(I, 0)) (no sigma, so no French-Wilson)"
        return np.sqrt(np.maximum(value, 0.0)), info
    ops = sg.operations()
    h32 = np.ascontiguousarray(hkl, dtype=np.int32)
    eps = np.asarray(ops.epsilon_factor_without_centering_array(h32), dtype=np.float64)
    centric = np.asarray(ops.centric_flag_array(h32), dtype=bool)
    prior = shell_mean(value, stol2(cell6, hkl), eps)
    amp, _ = french_wilson(value, merged["sigma"], prior, centric)
    info.update(method="French-Wilson posterior mean (Wilson prior per resolution shell)",
                n_weak=int((value < 3 * merged["sigma"]).sum()), n_centric=int(centric.sum()))
    return amp, info


def _completeness(cell6: np.ndarray, sg: gemmi.SpaceGroup, d: np.ndarray, absent: np.ndarray,
                  d_min: float) -> float | None:
    possible = gemmi.count_reflections(gemmi.UnitCell(*cell6), sg, d_min - 1e-9)
    return round(float(((d >= d_min - 1e-9) & ~absent).sum()) / possible, 6) if possible else None


def _absences(hkl: np.ndarray, value: np.ndarray, sigma: np.ndarray | None, sg: gemmi.SpaceGroup,
              unit: bool) -> tuple[np.ndarray, dict[str, Any]]:
    absent = np.asarray(sg.operations().systematic_absences(np.ascontiguousarray(hkl, dtype=np.int32)), bool)
    ratio = value / sigma if (sigma is not None and not unit) else np.full(len(value), np.nan)
    viol = absent & (ratio > ABSENCE_SIGMA)
    worst = np.argsort(-np.where(viol, ratio, -np.inf))[: min(10, int(viol.sum()))]
    return absent, {"n_absent": int(absent.sum()), "n_violations": int(viol.sum()), "sigma_cut": ABSENCE_SIGMA,
                    "worst": [{"hkl": hkl[i].tolist(), "i_over_sigma": round(float(ratio[i]), 2)} for i in worst],
                    "checked": not unit}


def reduce_measured(meas: Measured, cell: tuple[float, ...] | None = None, spacegroup: str | None = None,
                    transform: str | None = None) -> Reduced:
    """All reduction steps of the module docstring on one input.

    Raises:
        ValueError: symmetry problems (`resolve_crystal`), no reflection other than 0 0 0, or all intensities
            ≤ 0.
    """
    cell6, sg, sym = resolve_crystal(meas, cell, spacegroup)
    keep = np.any(meas.hkl != 0, axis=1) & np.isfinite(meas.value)
    if not keep.any():
        raise ValueError(f"{meas.name} has no reflection other than 0 0 0")
    if not np.any(meas.value[keep] > 0):
        what = "intensities" if meas.kind == "intensity" else "amplitudes"
        raise ValueError(f"all {int(keep.sum())} {what} in {meas.name} are <= 0: nothing to phase")
    sig_in = None if meas.sigma is None else meas.sigma[keep]
    sigma, unit, warnings = _weights(sig_in, int(keep.sum()))
    merged = merge(cell6, sg, meas.hkl[keep], meas.value[keep], sigma)
    amp, amp_info = _amplitudes(merged, sg, cell6, meas.kind, unit)
    hkl = merged["hkl"]
    msig = None if unit else merged["sigma"]
    absent, abs_info = _absences(hkl, merged["value"], msig, sg, unit)
    if abs_info["n_violations"]:
        warnings.append(f"{abs_info['n_violations']} systematically absent reflections with I/sigma > "
                        f"{ABSENCE_SIGMA:g} in {sg.xhm()}: check the space group")
    d = d_spacing(cell6, hkl)
    frame = frame_for(cell6, sg, transform)
    report = {
        "symmetry": sym, "kind": meas.kind, "sigma": "unit weights" if unit else "as given",
        "merging": {k: merged[k] for k in ("n_in", "n_unique", "n_multiple")} | {
            "r_int": None if merged["r_int"] is None else round(merged["r_int"], 6),
            "mean_multiplicity": round(float(merged["n_obs"].mean()), 3)},
        "amplitudes": amp_info, "absences": abs_info,
        "resolution": {"d_max": round(float(d.max()), 4), "d_min": round(float(d.min()), 4),
                       "completeness": _completeness(cell6, sg, d, absent, float(d.min())),
                       "network_d_min": NETWORK_D_MIN,
                       "completeness_to_network_d_min": _completeness(cell6, sg, d, absent, NETWORK_D_MIN)},
        "frame": {"space_group": frame.name, "cell": [round(float(v), 5) for v in frame.cell6],
                  "transform": frame.transform},
    }
    return Reduced(name=meas.name, cell6=cell6, spacegroup=sg, hkl=hkl, value=merged["value"], sigma=msig,
                   amp=amp, absent=absent, d=d, frame=frame, hkl_frame=frame.hkl_to_frame(hkl), kind=meas.kind,
                   report=report, warnings=tuple(warnings))
