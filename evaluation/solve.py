"""Phasing a crystallographer's reduced data: charge flipping, the network, the network + CF, or all of them.

Methods (each returns phases on the merged reflections, in the input's own setting):
  * ``charge-flipping``: `evaluation.charge_flipping.charge_flip` on every measured, not absent reflection, in the
    phasing frame (P 1 21/c 1 for space group 14, the input's setting otherwise), in any space group: 0/π
    phases with an inversion centre at the origin, continuous ones otherwise (in a non-centrosymmetric group
    either hand of the structure: |F| cannot tell them apart). Figure of merit: the final R_CF (lowest wins).
  * ``model``: the recycling scan of `evaluation.recycle` on the network's reflection list (|h| ≤ 10 in
    P 1 21/c 1, d ≥ d_min), picked by the scan's figure of merit (the network's |F|²-weighted confidence by
    default); only reflections the network was given get phases. Space group 14 only.
  * ``model+cf``: charge flipping started from the network's phases (in the spirit of AI-PhaSeed, J. Appl.
    Cryst. 2025): one CF attempt per scan start, each from that start's best run by the figure of merit; the
    measured reflections outside the network's list start from seeded random phases.
  * ``all``: each of the above that applies; the pick is the highest skewness of the E-map over the
    reflections every method phased (the map form of the Σ2 triplet sum: a figure of merit that needs no true
    phases and means the same for every method).

Phases move between reflection lists by F(hR) = F(h) exp(−2πi h·τ) (and Friedel), `equivalent_index`.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any

import gemmi
import numpy as np

from builder.symmetry import SymOps, space_group_ops
from evaluation.charge_flipping import charge_flip
from evaluation.maps import e_values, phased_map, skewness
from evaluation.metrics import phase_r_any_group
from evaluation.recycle import ScanConfig, ScanInput, pick_runs, scan
from evaluation.reduce import NETWORK_D_MIN, Reduced
from manifests.seeds import seeded_rng, stable_id

__all__ = ["METHODS", "MethodResult", "equivalent_index", "network_view", "check_method", "solve_reduced",
           "score_against_model", "move_solution"]

METHODS = ("charge-flipping", "model", "model+cf", "all")
_CF_KEY, _FILL_KEY = 5, 6  # spawn-key purposes: CF random starts, random phases outside the network's list


@dataclasses.dataclass(frozen=True)
class MethodResult:
    """One method's phases and figures."""

    method: str
    phase: np.ndarray  # (M,) radians on Reduced.hkl (input setting); NaN where not phased
    fom_name: str
    fom: float  # the method's own figure of merit
    seconds: float
    details: dict[str, Any]
    skewness: float | None = None  # the common figure of merit of `all`

    @property
    def phased(self) -> np.ndarray:
        return np.isfinite(self.phase)


def _keys(h: np.ndarray) -> np.ndarray:
    h = np.asarray(h, dtype=np.int64) + 512  # |h| < 512 for any real data set
    return (h[:, 0] * 1024 + h[:, 1]) * 1024 + h[:, 2]


def equivalent_index(h_to: np.ndarray, h_from: np.ndarray, ops: SymOps) -> tuple[np.ndarray, ...]:
    """For each row of `h_to`, a row of `h_from` equivalent to it under the group and Friedel.

    Returns:
        (src (T,) int64, −1 where none; shift (T,) 2π h_from·τ_g; sign (T,) ±1) such that
        φ_to = sign · (φ_from[src] − shift), from F(hR) = F(h) exp(−2πi h·τ) and F(−h) = conj F(h).
    """
    h_to, h_from = np.asarray(h_to, dtype=np.int64), np.asarray(h_from, dtype=np.int64)
    key = _keys(h_to)
    order = np.argsort(key, kind="stable")
    skey = key[order]
    src = np.full(len(h_to), -1, dtype=np.int64)
    shift, sign = np.zeros(len(h_to)), np.ones(len(h_to))
    rot = np.rint(ops.rot).astype(np.int64)
    for g in range(len(rot)):
        tau = 2.0 * np.pi * (h_from @ ops.tran[g])
        for s in (1, -1):
            k = _keys(s * (h_from @ rot[g]))
            pos = np.minimum(np.searchsorted(skey, k), len(skey) - 1)
            hit = np.flatnonzero(skey[pos] == k)
            rows = order[pos[hit]]
            new = src[rows] < 0
            rows, hit = rows[new], hit[new]
            src[rows], shift[rows], sign[rows] = hit, tau[hit], s
    return src, shift, sign


def _transfer(phase_from: np.ndarray, src: np.ndarray, shift: np.ndarray, sign: np.ndarray) -> np.ndarray:
    out = np.full(len(src), np.nan)
    ok = src >= 0
    out[ok] = np.mod(sign[ok] * (phase_from[src[ok]] - shift[ok]), 2.0 * np.pi)
    return out


def network_view(red: Reduced, hkl_net: np.ndarray, d_min: float = NETWORK_D_MIN) -> tuple[np.ndarray, ...]:
    """The measured |F| on the network's list (frame setting): (amp (N,), observed (N,) bool).

    Observed = an equivalent was measured, is not absent and has d ≥ d_min."""
    ops = space_group_ops(red.frame.name)
    use = np.flatnonzero(red.usable & (red.d >= d_min - 1e-9))
    src, _, _ = equivalent_index(hkl_net, red.hkl_frame[use], ops)
    observed = src >= 0
    amp = np.where(observed, red.amp[use][np.maximum(src, 0)], 0.0)
    return amp, observed


def check_method(method: str, red: Reduced, have_model: bool) -> None:
    """Refuse what cannot run, in one line (ValueError)."""
    if method not in METHODS:
        raise ValueError(f"unknown --method {method!r}; choose one of {', '.join(METHODS)}")
    needs_net = method in ("model", "model+cf")
    if needs_net and red.spacegroup.number != 14:
        raise ValueError(f"--method {method}: the network is P2_1/c-only and this is {red.spacegroup.xhm()} "
                         f"(space group {red.spacegroup.number}); charge flipping works in any group: use "
                         "--method charge-flipping")
    if needs_net and not have_model:
        raise ValueError(f"--method {method} needs --checkpoint")


def _charge_flip(red: Reduced, rng: np.random.Generator, start: np.ndarray | None = None) -> Any:
    """The one call into the CF baseline (its options live there)."""
    use = red.usable
    return charge_flip(red.frame.cell6, red.hkl_frame[use], red.amp[use], np.ones(int(use.sum()), dtype=bool),
                       space_group=red.frame.name, rng=rng, start_phases=start)


def _to_input(red: Reduced, phase_frame_usable: np.ndarray) -> np.ndarray:
    out = np.full(len(red.hkl), np.nan)
    use = red.usable
    out[use] = red.frame.phase_to_input(red.hkl_frame[use], phase_frame_usable)
    return out


def _cf_result(method: str, red: Reduced, res: Any, t0: float, extra: dict | None = None) -> MethodResult:
    return MethodResult(method=method, phase=_to_input(red, res.phase_polished), fom_name="R_CF", fom=res.r_cf,
                        seconds=time.perf_counter() - t0,
                        details={"cycles": res.cycles, "converged": res.converged, "attempts": res.attempts,
                                 "best_attempt": res.best_attempt, "grid": list(res.grid),
                                 "n_reflections": int(red.usable.sum()), **(extra or {})})


def _run_scan(red: Reduced, model: Any, cfg: ScanConfig, d_min: float) -> tuple[Any, ...]:
    from builder.reflections import phai_hkl

    hkl_net = phai_hkl(model.cfg.max_index)
    amp, observed = network_view(red, hkl_net, d_min)
    if observed.sum() < 10:
        raise ValueError(f"only {int(observed.sum())} measured reflections on the network's list at d >= {d_min} A")
    res = next(iter(scan(model, hkl_net, [ScanInput(red.name, amp, observed)], cfg)))
    return hkl_net, observed, res


def _model(red: Reduced, model: Any, cfg: ScanConfig, d_min: float) -> MethodResult:
    t0 = time.perf_counter()
    hkl_net, observed, res = _run_scan(red, model, cfg, d_min)
    s, c = pick_runs(res, np.zeros_like(res.confidence))[cfg.fom]  # no true phases: only the FOM picks count
    phase_net = np.where(observed, np.radians(res.phase_deg[s, c].astype(np.float64)), np.nan)
    use = red.usable
    src, shift, sign = equivalent_index(red.hkl_frame[use], hkl_net[observed], space_group_ops(red.frame.name))
    phase = _to_input(red, _transfer(phase_net[observed], src, shift, sign))
    return MethodResult(method="model", phase=phase, fom_name=cfg.fom, fom=float(getattr(res, cfg.fom)[s, c]),
                        seconds=time.perf_counter() - t0,
                        details={"cycles": cfg.cycles[c], "start": cfg.start_names[s],
                                 "n_reflections": int(observed.sum()), "passes": cfg.passes})


def _model_cf(red: Reduced, model: Any, cfg: ScanConfig, d_min: float, seed: int) -> MethodResult:
    t0 = time.perf_counter()
    hkl_net, observed, res = _run_scan(red, model, cfg, d_min)
    fom = getattr(res, cfg.fom)  # (S, C)
    best_c = np.argmax(fom, axis=1)  # per start, its best run by the figure of merit
    starts = np.radians(res.phase_deg[np.arange(len(best_c)), best_c].astype(np.float64))  # (S, N)
    use = red.usable
    src, shift, sign = equivalent_index(red.hkl_frame[use], hkl_net[observed], space_group_ops(red.frame.name))
    fill = seeded_rng(seed, _FILL_KEY, stable_id(red.name)).uniform(0, 2 * np.pi, size=(len(starts), int(use.sum())))
    start = np.stack([np.where(src >= 0, _transfer(p[observed], src, shift, sign), f) for p, f in zip(starts, fill)])
    cf = _charge_flip(red, seeded_rng(seed, _CF_KEY, stable_id(red.name)), start=np.nan_to_num(start))
    return _cf_result("model+cf", red, cf, t0, {"start_cycles": [cfg.cycles[c] for c in best_c],
                                                "from_network": int((src >= 0).sum())})


def _skewness(red: Reduced, phase: np.ndarray, common: np.ndarray) -> float:
    e = e_values(red.cell6, red.spacegroup, red.hkl[common], red.amp[common])
    return skewness(phased_map(red.cell6, red.spacegroup, red.hkl[common], e, phase[common]))


def solve_reduced(red: Reduced, method: str, *, model: Any = None, scan_cfg: ScanConfig | None = None,
                  seed: int = 0, d_min: float = NETWORK_D_MIN) -> tuple[list[MethodResult], str]:
    """Run `method` ("all": every method that applies) and pick one.

    Returns:
        (results, picked method name).

    Raises:
        ValueError: a method that cannot run on this input (`check_method`).
    """
    check_method(method, red, model is not None)
    todo = [method] if method != "all" else ["charge-flipping"] + (
        ["model", "model+cf"] if model is not None and red.spacegroup.number == 14 else [])
    cfg = scan_cfg or ScanConfig(seed=seed)
    results = []
    for m in todo:
        if m == "charge-flipping":
            t0 = time.perf_counter()
            results.append(_cf_result(m, red, _charge_flip(red, seeded_rng(seed, _CF_KEY, stable_id(red.name))), t0))
        elif m == "model":
            results.append(_model(red, model, cfg, d_min))
        else:
            results.append(_model_cf(red, model, cfg, d_min, seed))
    common = np.logical_and.reduce([r.phased for r in results])
    results = [dataclasses.replace(r, skewness=_skewness(red, r.phase, common)) for r in results]
    picked = max(results, key=lambda r: r.skewness).method if len(results) > 1 else results[0].method
    return results, picked


def score_against_model(red: Reduced, model_cif: bytes, phase: np.ndarray) -> dict[str, Any] | None:
    """r and MPE of `phase` against the deposited model's phases (gemmi direct summation, input setting).

    r is free of origin and hand (`evaluation.metrics.phase_r_any_group`): maximised over the group's
    permissible origin shifts (continuous along a polar axis) and, where the inverted structure obeys the group
    too, over the two hands, which |F| cannot tell apart. In P2₁/c these are the 8 shifts {0, ½}³.
    """
    doc = gemmi.cif.read_string(model_cif.decode("utf-8", errors="replace"))
    block = next((b for b in doc if len(b.find_values("_atom_site_fract_x")) > 0), None)
    if block is None:
        return None
    st = gemmi.make_small_structure_from_block(block)
    st.cell = gemmi.UnitCell(*red.cell6)
    st.setup_cell_images()
    st.change_occupancies_to_crystallographic()
    calc = gemmi.StructureFactorCalculatorX(st.cell)  # st stays alive while calc is used
    sel = np.flatnonzero(np.isfinite(phase) & red.usable)
    f = np.array([calc.calculate_sf_from_small_structure(st, [int(v) for v in red.hkl[i]]) for i in sel])
    g = phase_r_any_group(red.amp[sel], phase[sel], np.angle(f), red.hkl[sel], red.spacegroup.xhm())
    hands = " and both hands" if g.hands == 2 and not red.spacegroup.is_centrosymmetric() else ""
    return {"r": round(g.r, 6), "mpe_deg": round(g.mpe, 3), "n": int(len(sel)),
            "origin_shift": [round(float(v), 6) for v in g.shift], "inverted": g.inverted,
            "note": "against the phases of the deposited model (gemmi), |F| from the measurements; best over the "
                    f"permissible origins{hands}"}


def move_solution(red: Reduced, phase: np.ndarray, shift: Any, inverted: bool = False) -> np.ndarray:
    """The same solution moved by x -> s·x + t (φ -> s·φ + 2π h·t; s = −1 when `inverted`): with the
    transformation `score_against_model` found, map and peaks overlay the deposited model."""
    s = -1.0 if inverted else 1.0
    return np.mod(s * phase + 2.0 * np.pi * (red.hkl @ np.asarray(shift, dtype=np.float64)), 2.0 * np.pi)
