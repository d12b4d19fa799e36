"""Phasing measured data: phase transfer between reflection lists, network starts for charge flipping, the
setting round trip, each method on two measured COD structures, and the output files read back by gemmi."""
from __future__ import annotations

import csv
from pathlib import Path

import gemmi
import numpy as np
import pytest

from builder.reflections import phai_hkl
from builder.symmetry import images, space_group_ops
from evaluation.charge_flipping import _validate
from evaluation.p1grid import p1_data, phases_on_grid
from evaluation.cif import parse_structure, reflections
from evaluation.metrics import phase_r
from evaluation.outputs import write_solution
from evaluation.recycle import ScanConfig
from evaluation.reduce import reduce_measured
from evaluation.reflections_io import parse_ins, read_input, shelx_ops
from evaluation.solve import equivalent_index, move_solution, network_view, score_against_model, solve_reduced
from tests.test_hkl_io import measured_cif
from training.model import seeded_model, tiny

P21C = space_group_ops("P 1 21/c 1")


@pytest.fixture(scope="module")
def reduced() -> dict:
    """Two measured structures: 2242302 (P 1 21/c 1, C2H6OS) and 2241551 (P 1 21/n 1, 14 sites)."""
    out = {}
    for cid in ("2242302", "2241551"):
        meas = read_input(f"{cid}.cif", data=measured_cif(cid))
        out[cid] = (meas, reduce_measured(meas))
    return out


@pytest.fixture(scope="module")
def net():
    return seeded_model(tiny(), 1).eval()


@pytest.fixture(scope="module")
def cf(reduced) -> dict:
    """Charge flipping on every measured reflection of both structures (seed 0)."""
    return {cid: solve_reduced(red, "charge-flipping", seed=0) for cid, (_, red) in reduced.items()}


def frame_truth(meas, red) -> np.ndarray:
    """The deposited model's phases at the merged reflections, computed in the P2₁/c frame (builder)."""
    ing = parse_structure(meas.model, meas.name)
    _, phase, _ = reflections(ing, red.hkl_frame.astype(np.int32), 0.0)
    return phase.astype(np.float64)


def test_equivalent_index_moves_phases_by_the_symmetry_relation(reduced):
    meas, red = reduced["2241551"]
    ing = parse_structure(meas.model, meas.name)
    hkl = phai_hkl()
    _, ph_net, _ = reflections(ing, hkl, 0.0)
    truth = frame_truth(meas, red)
    src, shift, sign = equivalent_index(red.hkl_frame, hkl, P21C)
    moved = np.mod(sign * (ph_net[src] - shift), 2 * np.pi)
    amp, _ = network_view(red, hkl, 0.0)
    ok = (src >= 0) & (np.abs(np.cos(truth)) > 0.5)
    strong = ok & (red.amp > np.median(red.amp))
    assert strong.sum() > 200
    assert np.allclose(np.cos(moved[strong]), np.cos(truth[strong]), atol=1e-6)
    assert np.count_nonzero(amp) > 400


def test_charge_flip_start_phases_land_on_the_p1_grid(reduced):
    meas, _ = reduced["2241551"]
    hkl = phai_hkl()
    ing = parse_structure(meas.model, meas.name)
    amp, phase, mask = reflections(ing, hkl, 1.0)  # phases that obey the group, as a network's must
    c, h, a, m = _validate(ing.cell6, hkl, amp, mask)
    p1 = p1_data(c, h, a, m, P21C, True, 200, 2.0, 0.2)
    start = phases_on_grid(p1, h, phase[None], P21C)
    grid = np.zeros(int(np.prod(p1.grid.half_shape)), complex)
    grid[p1.obs] = np.exp(1j * start[0])
    back = np.angle(p1.grid.lookup(grid.reshape(p1.grid.half_shape), h))
    assert np.allclose(np.cos(back - phase)[mask], 1.0, atol=1e-9)


def test_setting_round_trip_p21n_equals_p21c(reduced, cf):
    meas, red = reduced["2241551"]
    assert red.spacegroup.xhm() == "P 1 21/n 1" and red.frame.transform == "-x+z,-y,z"
    (cf,), _ = cf["2241551"]
    r_input = score_against_model(red, meas.model, cf.phase)["r"]  # gemmi, P 1 21/n 1 indices
    sel = cf.phased
    phase_frame = np.mod(cf.phase[sel] + 2 * np.pi * (red.hkl_frame[sel] @ red.frame.tran), 2 * np.pi)
    r_frame, _, _ = phase_r(red.amp[sel], phase_frame, frame_truth(meas, red)[sel], red.hkl_frame[sel],
                            np.ones(sel.sum(), dtype=bool))
    assert r_input > 0.99 and r_frame == pytest.approx(r_input, abs=2e-4)


@pytest.mark.parametrize("cid", ["2242302", "2241551"])
def test_charge_flipping_on_measured_data(reduced, cf, cid):
    meas, red = reduced[cid]
    (cf,), picked = cf[cid]
    assert picked == "charge-flipping" and cf.phased.sum() == red.usable.sum()  # every measured reflection
    assert set(np.round(np.cos(cf.phase[cf.phased])).tolist()) <= {-1.0, 1.0}
    assert score_against_model(red, meas.model, cf.phase)["r"] > 0.99


@pytest.mark.slow
@pytest.mark.parametrize("cid", ["2242302", "2241551"])
def test_model_methods_and_the_pick(reduced, net, cid):
    meas, red = reduced[cid]
    small = ScanConfig(cycles=(1, 2, 3), random_starts=2)  # 3 starts: 3 network-seeded CF attempts
    results, picked = solve_reduced(red, "all", model=net, scan_cfg=small, seed=0)
    by = {r.method: r for r in results}
    assert set(by) == {"charge-flipping", "model", "model+cf"}
    amp, observed = network_view(red, phai_hkl(), 1.0)
    model = by["model"]
    assert 0 < model.phased.sum() <= observed.sum() and np.all(red.d[model.phased] >= 1.0 - 1e-9)
    assert 0.5 <= model.fom <= 1.0 and model.details["cycles"] in (1, 2, 3)
    r = {m: score_against_model(red, meas.model, x.phase)["r"] for m, x in by.items()}
    assert r["model+cf"] > 0.99  # charge flipping takes the (untrained) network's phases to the solution
    assert picked == max(results, key=lambda x: x.skewness).method and r[picked] > 0.99


def test_outputs_read_back_by_gemmi_and_overlay_the_model(reduced, cf, tmp_path: Path):
    meas, red = reduced["2242302"]
    (cf,), _ = cf["2242302"]
    fit = score_against_model(red, meas.model, cf.phase)
    phase = move_solution(red, cf.phase, fit["origin_shift"], fit["inverted"])
    summary = write_solution(tmp_path, red, phase, {"picked": "charge-flipping"}, method="charge-flipping",
                             n_peaks=10, wavelength=meas.wavelength, sfac=meas.sfac, unit=meas.unit)
    # .fcf: a small-molecule CIF that gemmi reads, with our amplitudes and phases in the input's indices
    block = gemmi.cif.read(str(tmp_path / "2242302.fcf")).sole_block()
    assert block.find_value("_shelx_refln_list_code") == "6"
    ops = gemmi.GroupOps([gemmi.Op(gemmi.cif.as_string(o)) for o in block.find_values("_space_group_symop_operation_xyz")])
    assert gemmi.find_spacegroup_by_ops(ops).xhm() == "P 1 21/c 1"
    cell = [gemmi.cif.as_number(block.find_value(f"_cell_{t}")) for t in ("length_a", "length_b", "length_c",
                                                                        "angle_alpha", "angle_beta", "angle_gamma")]
    assert cell == pytest.approx(red.cell6.tolist(), abs=1e-4)
    tab = block.find("_refln_", ["index_h", "index_k", "index_l", "F_calc", "phase_calc"])
    cols = np.array([[gemmi.cif.as_number(v) for v in tab.column(i)] for i in range(5)]).T
    assert len(cols) == summary["outputs"]["fcf"]["reflections"] == red.usable.sum()
    assert np.array_equal(cols[:, :3], red.hkl[red.usable])
    assert np.allclose(cols[:, 3], red.amp[red.usable], atol=0.006)
    assert np.allclose(np.cos(np.radians(cols[:, 4])), np.cos(phase[red.usable]), atol=1e-3)
    # .ccp4: gemmi reads the map back in the input's cell and group
    m = gemmi.read_ccp4_map(str(tmp_path / "2242302.ccp4"))
    assert m.grid.spacegroup.xhm() == "P 1 21/c 1" and m.grid.unit_cell.parameters == pytest.approx(tuple(red.cell6))
    # .res: SHELX cards whose operations gemmi turns into the same group; the Q peaks of peaks.csv
    ins = parse_ins((tmp_path / "2242302.res").read_text())
    gops = gemmi.GroupOps([gemmi.Op(o) for o in shelx_ops(ins["latt"], ins["symm"])])
    assert gemmi.find_spacegroup_by_ops(gops).xhm() == "P 1 21/c 1" and ins["sfac"] == ["C", "H", "O", "S"]
    q = [ln.split() for ln in (tmp_path / "2242302.res").read_text().splitlines() if ln.startswith("Q")]
    with (tmp_path / "2242302.peaks.csv").open() as fh:
        peaks = list(csv.DictReader(fh))
    assert len(q) == len(peaks) == 10 and all(float(a[2]) == pytest.approx(float(p["x"])) for a, p in zip(q, peaks))
    # the four highest peaks sit on the four non-H atoms of the deposited model (within 0.25 Å)
    st = gemmi.read_small_structure(str(_write(tmp_path / "model.cif", meas.model)))
    atoms = np.array([[s.fract.x, s.fract.y, s.fract.z] for s in st.sites if s.element.name != "H"])
    img = images(P21C.rot, P21C.tran, atoms).reshape(-1, 3)
    orth = np.array(st.cell.orth.mat.tolist())
    for p in peaks[:4]:
        d = np.array([float(p["x"]), float(p["y"]), float(p["z"])]) - img
        assert np.linalg.norm((d - np.round(d)) @ orth.T, axis=1).min() < 0.25
    assert (tmp_path / "2242302_map.png").stat().st_size > 5000


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
