"""Sample i of a dataset as a pure function of (resolved strategy, root seed, i) (DESIGN.md "Determinism").

Each sample gets independent random streams addressed as SeedSequence(root_seed, spawn_key=(strategy_id, i,
stream)), one per purpose, so any sample can be rebuilt alone and adding a step never shifts the others.
"""
from __future__ import annotations

import gemmi
import numpy as np

from builder.cell import sample_cell
from builder.fill import fill_atoms
from builder.reflections import PHAI_SET
from builder.sf import reflections_of
from builder.strategy import Strategy
from builder.structure import Structure
from manifests.seeds import seeded_rng

__all__ = ["STREAM_CELL", "STREAM_ATOMS", "sample_key", "generate_structure", "generate_sample"]

STREAM_CELL, STREAM_ATOMS = 0, 1


def sample_key(index: int) -> str:
    """The webdataset key: the 12-digit global index, which is the seed address."""
    return f"{int(index):012d}"


MAX_REDRAWS = 1000


def generate_structure(strategy: Strategy, root_seed: int, index: int) -> Structure:
    """Cell, then atoms. A structure left without non-H atoms (a cell of ~100 Å³ whose one heavy atom clashes with
    its own images, leaving nothing or only hydrogens placed at random) is no artificial molecule and has almost
    nothing to diffract: it is redrawn, cell and all, from the same two streams."""
    sid = strategy.strategy_id
    rng_cell = seeded_rng(root_seed, sid, index, STREAM_CELL)
    rng_atoms = seeded_rng(root_seed, sid, index, STREAM_ATOMS)
    for _ in range(MAX_REDRAWS):
        s = fill_atoms(rng_atoms, sample_cell(rng_cell, strategy.cell), strategy.space_group, strategy.fill)
        if s.n_atoms > s.n_hydrogen:
            return s
    raise ValueError(f"strategy {strategy.name} gave {MAX_REDRAWS} structures without non-H atoms in a row: raise V or lower V_atom")


def generate_sample(strategy: Strategy, root_seed: int, index: int, with_reflections: bool = True) -> dict:
    """The shard record of sample `index` (DESIGN.md "Sample schema")."""
    s = generate_structure(strategy, root_seed, index)
    rec = {
        "__key__": sample_key(index),
        "cell": s.cell,
        "frac": s.frac,
        "z": s.z,
        "occ": s.occ,
        "uiso": s.uiso,
        "meta": {
            "space_group": s.space_group,
            "strategy": strategy.name,
            "n_atoms": s.n_atoms,
            "n_hydrogen": s.n_hydrogen,
            "n_special": s.n_special,
            "volume": round(gemmi.UnitCell(*map(float, s.cell)).volume, 6),
        },
    }
    if with_reflections:
        rec["amplitude"], rec["phase"] = reflections_of(s)
        rec["meta"]["reflections"] = PHAI_SET
    return rec
