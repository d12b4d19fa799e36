"""CIF ingestion, P2₁/c standardisation, test-set selection and the shipped COD archive.

Fixtures are four real COD entries (tests/data/cif/README.md): cryolite 9004097 (P2₁/n, two atoms on
inversion centres), ferrocene 2101932 (P2₁/a, Fe on the origin), malonamide 1209222 (P2₁/c with acute β)
and talc 9008040 (C2/c, must be rejected).
"""
from __future__ import annotations

import io
import json
import lzma
import shutil
import tarfile
from pathlib import Path

import gemmi
import numpy as np
import pytest

from builder.reflections import d_spacing, phai_hkl
from builder.sf import sf_plan, structure_factors
from builder.symmetry import space_group_ops
from builder.compound import classify
from builder.setting import standardise
from evaluation.cif import Unusable, load_structure, parse_structure, reflections
from evaluation.testset import (
    build_testset, iter_testset_cifs, load_testset, selection_reason, write_archive, write_testset,
)

CIF_DIR = Path(__file__).parent / "data" / "cif"
SG14 = ["9004097", "2101932", "1209222"]


def _gemmi_structure(cod_id: str, uiso: np.ndarray) -> gemmi.SmallStructure:
    """The file as gemmi reads it, isotropic with our U values, occupancies made crystallographic."""
    st = gemmi.read_small_structure(str(CIF_DIR / f"{cod_id}.cif"))
    for site, u in zip(st.sites, uiso):
        site.aniso = gemmi.SMat33d(0, 0, 0, 0, 0, 0)
        site.u_iso = float(u)
    st.change_occupancies_to_crystallographic()
    return st


def _gemmi_f(st: gemmi.SmallStructure, hkl: np.ndarray) -> np.ndarray:
    calc = gemmi.StructureFactorCalculatorX(st.cell)  # st (and its cell) outlive calc: pitfall 1.6.1
    return np.array([calc.calculate_sf_from_small_structure(st, [int(v) for v in h]) for h in hkl])


def _sphere(cell6: np.ndarray, d_min: float) -> tuple[np.ndarray, np.ndarray]:
    """Every hkl ≠ 000 with d ≥ d_min (absences included) and its d."""
    lim = gemmi.UnitCell(*cell6).get_hkl_limits(d_min)
    grid = np.meshgrid(*[np.arange(-m, m + 1) for m in lim], indexing="ij")
    hkl = np.stack(grid, -1).reshape(-1, 3)
    hkl = hkl[(hkl != 0).any(1)]
    d = d_spacing(cell6, hkl)
    return hkl[d >= d_min].astype(np.int32), d[d >= d_min]


def _ours(ing, hkl: np.ndarray) -> np.ndarray:
    plan = sf_plan(space_group_ops("P 1 21/c 1"), hkl)
    return np.abs(structure_factors(plan, ing.cell6, ing.frac, ing.z, ing.occ, ing.uiso))


def _sorted_pairs(d: np.ndarray, f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    dr = np.round(d, 4)
    order = np.lexsort((f, dr))
    return dr[order], f[order]


@pytest.mark.parametrize("cod_id", SG14)
def test_standardisation_keeps_d_and_amplitude_multiset(cod_id: str) -> None:
    ing = load_structure(CIF_DIR / f"{cod_id}.cif")
    st = _gemmi_structure(cod_id, ing.uiso)
    hkl0, d0 = _sphere(np.array(st.cell.parameters), 1.0)
    hkl1, d1 = _sphere(ing.cell6, 1.0)
    da, fa = _sorted_pairs(d0, np.abs(_gemmi_f(st, hkl0)))  # gemmi, the file's own setting
    db, fb = _sorted_pairs(d1, _ours(ing, hkl1))  # builder.sf, our arrays in P 1 21/c 1
    assert len(da) == len(db) > 500
    np.testing.assert_allclose(da, db, atol=1e-4)
    np.testing.assert_allclose(fa, fb, rtol=1e-4, atol=1e-4 * fa.mean())


def test_multiset_check_catches_a_relabel_only_transform() -> None:
    """Negative control: the P2₁/n coordinates put unchanged into the new cell give other amplitudes."""
    ing = load_structure(CIF_DIR / "9004097.cif")
    st = gemmi.read_small_structure(str(CIF_DIR / "9004097.cif"))
    frac0 = np.array([[s.fract.x, s.fract.y, s.fract.z] for s in st.sites])
    hkl, d = _sphere(ing.cell6, 1.0)
    plan = sf_plan(space_group_ops("P 1 21/c 1"), hkl)
    good = _sorted_pairs(d, np.abs(structure_factors(plan, ing.cell6, ing.frac, ing.z, ing.occ, ing.uiso)))[1]
    bad = _sorted_pairs(d, np.abs(structure_factors(plan, ing.cell6, frac0, ing.z, ing.occ, ing.uiso)))[1]
    assert np.abs(good - bad).max() > 0.1 * good.mean()


@pytest.mark.parametrize("cod_id", SG14)
def test_builder_sf_matches_gemmi_per_reflection(cod_id: str) -> None:
    """builder.sf on the standardised arrays equals gemmi on the file, reflection by reflection (h = Mᵀh')."""
    ing = load_structure(CIF_DIR / f"{cod_id}.cif")
    st = _gemmi_structure(cod_id, ing.uiso)
    m = np.array(gemmi.Op(ing.transform).float_seitz())[:3, :3]
    hkl_new, _ = _sphere(ing.cell6, 1.0)
    hkl_old = np.rint(hkl_new @ m).astype(np.int32)  # h·x = h'·x' with x' = M x
    ref = np.abs(_gemmi_f(st, hkl_old))
    got = _ours(ing, hkl_new)
    strong = ref > 0.1 * ref.mean()
    assert strong.sum() > 500
    np.testing.assert_allclose(got[strong], ref[strong], rtol=1e-4)


@pytest.mark.parametrize("cod_id,setting,beta", [
    ("9004097", "P 1 21/n 1", None), ("2101932", "P 1 21/a 1", None), ("1209222", "P 1 21/c 1", 107.0),
])
def test_standard_setting_is_p21c_with_obtuse_beta(cod_id: str, setting: str, beta: float | None) -> None:
    ing = load_structure(CIF_DIR / f"{cod_id}.cif")
    assert ing.original_setting == setting
    assert ing.space_group == "P 1 21/c 1"
    a, b, c, alpha, be, gamma = ing.cell6
    assert be >= 90.0 and alpha == pytest.approx(90.0) and gamma == pytest.approx(90.0)
    if beta is not None:
        assert be == pytest.approx(beta)  # 73° in the file, flipped by -x,-y,z
    st = gemmi.read_small_structure(str(CIF_DIR / f"{cod_id}.cif"))
    assert ing.volume == pytest.approx(st.cell.volume, rel=1e-9)
    assert ((ing.frac >= 0) & (ing.frac < 1)).all()


def test_standardise_every_setting_of_group_14() -> None:
    """All nine gemmi settings of space group 14 come back to the same reduced P 1 21/c 1 cell with β ≥ 90° and the
    same |F| multiset."""
    ing = load_structure(CIF_DIR / "1209222.cif")
    ref_cell = gemmi.UnitCell(*ing.cell6)
    hkl, d = _sphere(ing.cell6, 1.5)
    want = _sorted_pairs(d, _ours(ing, hkl))
    settings = [sg for sg in gemmi.spacegroup_table() if sg.number == 14]
    assert len(settings) == 9
    ref_ops = gemmi.SpaceGroup("P 1 21/c 1").operations()
    for sg in settings:
        b = sg.basisop  # x_setting = b(x_reference)
        assert {(b * g * b.inverse()).wrap().triplet() for g in ref_ops} == {g.triplet() for g in sg.operations()}
        cell = ref_cell.changed_basis_forward(b, False)
        m = np.array(b.float_seitz())
        frac = ing.frac @ m[:3, :3].T + m[:3, 3]
        std = standardise(cell, sg)
        cell6, x = std.cell6, std.frac(frac)
        assert cell6[4] >= 90.0, sg.xhm()
        np.testing.assert_allclose(cell6, ing.cell6, atol=1e-9, err_msg=sg.xhm())  # one reduced cell per lattice
        hkl2, d2 = _sphere(cell6, 1.5)
        plan = sf_plan(space_group_ops("P 1 21/c 1"), hkl2)
        got = _sorted_pairs(d2, np.abs(structure_factors(plan, cell6, x, ing.z, ing.occ, ing.uiso)))
        np.testing.assert_allclose(got[0], want[0], atol=1e-4, err_msg=sg.xhm())
        np.testing.assert_allclose(got[1], want[1], rtol=1e-4, atol=1e-4 * want[1].mean(), err_msg=sg.xhm())


def test_fixture_chemistry_as_a_crystallographer_reads_it() -> None:
    cryolite = load_structure(CIF_DIR / "9004097.cif")  # Na3AlF6: Al 0,0,0 and Na1 0,0,1/2 on -1
    assert (cryolite.compound_class, cryolite.n_special, cryolite.n_atoms, cryolite.n_h) == ("s-block", 2, 6, 0)
    assert cryolite.labels == ("Al", "Na1", "Na2", "F1", "F2", "F3")
    assert cryolite.multiplicity.tolist() == [2, 2, 1, 1, 1, 1]
    np.testing.assert_allclose(cryolite.occ, [0.5, 0.5, 1, 1, 1, 1])
    assert cryolite.z.dtype == np.uint8 and cryolite.z.tolist() == [13, 11, 11, 9, 9, 9]

    ferrocene = load_structure(CIF_DIR / "2101932.cif")  # Fe(C5H5)2, Fe on the origin
    assert (ferrocene.compound_class, ferrocene.n_special, ferrocene.n_atoms, ferrocene.n_h) == ("d-block", 1, 11, 5)
    assert ferrocene.occ[0] == 0.5 and (ferrocene.occ[1:] == 1).all()
    assert ferrocene.notes and np.allclose(ferrocene.uiso, 0.05)  # the file gives no displacement parameters

    malonamide = load_structure(CIF_DIR / "1209222.cif")  # C3H6N2O2, Z' = 2
    assert (malonamide.compound_class, malonamide.n_special, malonamide.n_atoms) == ("organic", 0, 26)
    assert malonamide.n_h == 12 and sorted(set(malonamide.z.tolist())) == [1, 6, 7, 8]


def test_ueq_from_anisotropic_u() -> None:
    """U_eq = trace(U_cart)/3, computed here from the CIF's U_ij without gemmi's helper."""
    ing = load_structure(CIF_DIR / "9004097.cif")
    st = gemmi.read_small_structure(str(CIF_DIR / "9004097.cif"))
    orth = np.array(st.cell.orth.mat.tolist())
    recip = np.diag(np.linalg.norm(np.linalg.inv(orth), axis=1))  # a*, b*, c*
    for site, u in zip(st.sites, ing.uiso):
        a = site.aniso
        ustar = np.array([[a.u11, a.u12, a.u13], [a.u12, a.u22, a.u23], [a.u13, a.u23, a.u33]])
        ucart = orth @ recip @ ustar @ recip @ orth.T
        assert u == pytest.approx(np.trace(ucart) / 3, rel=1e-9)
        assert 0.001 < u < 0.1


@pytest.mark.parametrize("z,expected", [
    ([6, 1, 7, 8], "organic"), ([6, 1, 17, 16, 15, 9, 35, 53, 5, 14, 34], "organic"),
    ([6, 1, 11], "s-block"), ([6, 8, 12, 13], "s-block"), ([6, 1, 11, 26], "d-block"), ([30, 8], "d-block"),
    ([6, 1, 13], "other"), ([8, 14], "other"), ([6, 1, 57], "other"), ([6, 8, 57, 11], "s-block"), ([16], "other"),
])
def test_classify(z: list[int], expected: str) -> None:
    assert classify(np.array(z, dtype=np.uint8)) == expected


def _cif(body: str) -> bytes:
    head = ("data_t\n_cell_length_a 5\n_cell_length_b 6\n_cell_length_c 7\n_cell_angle_alpha 90\n"
            "_cell_angle_beta 100\n_cell_angle_gamma 90\n")
    return (head + body).encode()


_SYM = "_symmetry_space_group_name_H-M 'P 21/c'\n"
_ATOMS = "loop_\n_atom_site_label\n_atom_site_type_symbol\n_atom_site_fract_x\n_atom_site_fract_y\n" \
         "_atom_site_fract_z\nC1 C 0.1 0.2 0.3\n"


@pytest.mark.parametrize("data,reason", [
    (b"this is not a CIF \x00\xff at all", "unparsable"),
    (b"", "unparsable"),
    (_cif(_ATOMS), "no space group"),
    (_cif(_SYM), "no atoms"),
    (_cif(_SYM + _ATOMS.replace("0.1 0.2", "? 0.2")), "missing coordinates"),
    (_cif(_SYM + _ATOMS.replace("C1 C", "Q1 Q")), "unknown element"),
    (_cif("_symmetry_space_group_name_H-M 'P 21 21 21'\n" + _ATOMS), "another space group"),
])
def test_unusable_inputs_give_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(Unusable) as exc:
        parse_structure(data, "t")
    assert exc.value.reason == reason


def test_other_space_group_file_is_unusable() -> None:
    with pytest.raises(Unusable) as exc:
        load_structure(CIF_DIR / "9008040.cif")
    assert exc.value.reason == "another space group" and "15" in exc.value.detail


def test_reflections_on_the_phai_set() -> None:
    ing = load_structure(CIF_DIR / "9004097.cif")
    hkl = phai_hkl()
    amp, phase, obs = reflections(ing, hkl, d_min=1.0)
    assert amp.shape == phase.shape == obs.shape == (1205,)
    assert amp.dtype == phase.dtype == np.float32 and obs.dtype == bool
    assert set(np.unique(phase)) <= {0.0, np.float32(np.pi)}
    d = d_spacing(ing.cell6, hkl)
    absent = ((hkl[:, 1] == 0) & (hkl[:, 2] % 2 == 1)) | ((hkl[:, 0] == 0) & (hkl[:, 2] == 0) & (hkl[:, 1] % 2 == 1))
    np.testing.assert_array_equal(obs, (d >= 1.0) & ~absent)
    assert (amp[absent] < 1e-3).all() and amp[obs].mean() > 1.0
    amp2, _, obs2 = reflections(ing, hkl, d_min=2.0)
    assert obs2.sum() < obs.sum() and np.array_equal(amp, amp2)


@pytest.mark.parametrize("edges,small,large", [
    ((10.0, 10.0, 10.0), True, False), ((10.0 + 1e-9, 5.0, 5.0), True, False), ((4.0, 10.001, 5.0), False, True),
    ((19.999, 5.0, 5.0), False, True), ((20.0, 5.0, 5.0), False, False), ((12.0, 20.5, 5.0), False, False),
])
def test_selection_boundaries(edges: tuple[float, float, float], small: bool, large: bool) -> None:
    cell = (*edges, 90.0, 100.0, 90.0)
    assert (selection_reason(cell, "p21c-small") is None) is small
    assert (selection_reason(cell, "p21c-large") is None) is large
    with pytest.raises(ValueError):
        selection_reason(cell, "p21c-huge")


def test_build_testset_on_fixtures(tmp_path: Path) -> None:
    small = build_testset(CIF_DIR, "p21c-small", archive="fixtures.tar.xz")
    large = build_testset(CIF_DIR, "p21c-large")
    assert [e["id"] for e in small["entries"]] == ["9004097"]  # P2₁/n 5.40/5.60/7.76 -> c' = |a+c| = 9.43 Å
    assert small["entries"][0]["cell"][2] == pytest.approx(9.43, abs=0.01)
    assert [e["id"] for e in large["entries"]] == ["1209222", "2101932"]
    assert small["skipped_counts"] == {"another space group": 1, "cell out of the selected range": 2}
    e = small["entries"][0]
    assert (e["class"], e["n_special"], e["n_atoms"], e["setting"]) == ("s-block", 2, 6, "P 1 21/n 1")
    assert e["source"]["url"] == "https://www.crystallography.net/cod/9004097.cif"
    a, b = write_testset(small, tmp_path / "a.json"), write_testset(small, tmp_path / "b.json")
    assert a.read_bytes() == b.read_bytes()
    assert json.loads(a.read_text()) == small and list(json.loads(a.read_text())) == sorted(small)
    write_archive(CIF_DIR, [x["id"] for x in small["entries"]], tmp_path / "fixtures.tar.xz")
    got = list(iter_testset_cifs(a))  # finds the archive beside the JSON
    assert got == [("9004097", (CIF_DIR / "9004097.cif").read_bytes())]


def test_archive_is_byte_reproducible(tmp_path: Path) -> None:
    shutil.copytree(CIF_DIR, tmp_path / "cifs")
    ids = ["2101932", "9004097", "1209222"]
    a = write_archive(CIF_DIR, ids, tmp_path / "a.tar.xz").read_bytes()
    b = write_archive(tmp_path / "cifs", ids[::-1], tmp_path / "b.tar.xz").read_bytes()
    assert a == b
    with tarfile.open(fileobj=io.BytesIO(lzma.decompress(a))) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == ["1209222.cif", "2101932.cif", "9004097.cif"]
    assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 and m.uname == "" and not m.pax_headers for m in members)


@pytest.mark.parametrize("name,count", [("cod-p21c-small", 34), ("cod-p21c-large", 163)])
def test_shipped_archive_matches_manifest(name: str, count: int) -> None:
    ts = load_testset(name)
    assert ts["count"] == len(ts["entries"]) == count and ts["archive"] == "cod-p21c.tar.xz"
    by_id = {e["id"]: e for e in ts["entries"]}
    seen = []
    for cid, data in iter_testset_cifs(name):  # checks every sha256
        ing = parse_structure(data, cid)
        e = by_id[cid]
        assert selection_reason(ing.cell6, ts["select"]) is None
        np.testing.assert_allclose(ing.cell6, e["cell"], atol=1e-5)
        assert (ing.compound_class, ing.n_special, ing.n_atoms) == (e["class"], e["n_special"], e["n_atoms"])
        assert e["source"]["database"] == "COD" and len(e["source"]["source_commit"]) == 40
        seen.append(cid)
    assert seen == [e["id"] for e in ts["entries"]]


def test_tampered_manifest_hash_is_refused() -> None:
    ts = load_testset("cod-p21c-small")
    ts["entries"] = [dict(ts["entries"][0], sha256="0" * 64)]
    with pytest.raises(ValueError, match="sha256 mismatch"):
        list(iter_testset_cifs(ts))
