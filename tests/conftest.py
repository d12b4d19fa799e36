"""Shared fixtures: tiny strategies and a gemmi reference path for structure factors."""
from __future__ import annotations

import gemmi
import numpy as np
import pytest

from builder.strategy import load_strategy


def gemmi_sf(cell, space_group, frac, z, occ_chemical, uiso, hkl) -> np.ndarray:
    """Reference F by gemmi's direct summation (IT92), after change_occupancies_to_crystallographic()."""
    st = gemmi.SmallStructure()
    st.cell = gemmi.UnitCell(*map(float, cell))
    st.spacegroup_hm = space_group
    st.determine_and_set_spacegroup("2")
    for i, (x, zz, o, u) in enumerate(zip(frac, z, occ_chemical, uiso)):
        site = gemmi.SmallStructure.Site()
        site.label = f"A{i}"
        site.element = gemmi.Element(int(zz))
        site.fract = gemmi.Fractional(*map(float, x))
        site.occ = float(o)
        site.u_iso = float(u)
        st.add_site(site)
    st.change_occupancies_to_crystallographic()
    calc = gemmi.StructureFactorCalculatorX(st.cell)  # st (and so st.cell) stays alive while calc is used
    return np.array([calc.calculate_sf_from_small_structure(st, [int(v) for v in h]) for h in hkl])


@pytest.fixture(scope="session")
def strategies():
    return {name: load_strategy(name) for name in ("lognormal-molecules", "lognormal-random",
                                                    "lognormal-random-equal", "uniform-edges-molecules",
                                                    "uniform-volume-random")}
