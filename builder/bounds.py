"""Physical ranges of strategy values, and the bound on the work one structure may cost.

A strategy is refused before any work when a value is not a finite number of the right kind or lies outside the
range below (one line naming the value and the bound). Why each bound is where it is:

* edges 2–100 Å: no crystal at ambient pressure has a lattice translation under 2 Å (the shortest, in metals such as Be, are
  ~2.3 Å); the PhAI set (|h| ≤ 10) resolves an edge a only to a/10, so beyond 100 Å it holds no atomic detail.
* V_atom ≥ 5 Å³ per non-H atom: diamond, the densest packing of non-H atoms, has 5.7 Å³ (the paper: 7–22).
* x_H ≤ 0.9: nine H per non-H atom, already beyond methane's four (the paper: 0.3–0.6).
* U_iso ≤ 1 Å² (B ≈ 79 Å²): there the Debye–Waller factor exp(−8π²U s²) leaves 3·10⁻⁹ of |F| at 1 Å.
* d_min ≤ 5 Å, bond and band factors ≤ 3 R_Σ: interatomic contacts in crystals lie below these.
* tries ≤ 100 per atom (the paper: 10 and 20), atoms ≤ 5,000 per cell: each try checks the candidate against
  every placed image, so one structure costs about atoms × tries × atoms; at the bounds a structure takes
  seconds (benchmarks/bench_generator.py measures the largest allowed cell), not hours, and its scratch
  arrays stay in megabytes.
"""
from __future__ import annotations

import dataclasses
import math

__all__ = ["EDGE", "V_ATOM_MIN", "X_H_MAX", "U_ISO_MAX", "D_MIN_MAX", "FACTOR_MAX", "MAX_TRIES",
           "MAX_ATOMS_PER_CELL", "check_range", "check_count", "check_finite"]

EDGE = (2.0, 100.0)  # Å
V_ATOM_MIN = 5.0  # Å³
X_H_MAX = 0.9
U_ISO_MAX = 1.0  # Å²
D_MIN_MAX = 5.0  # Å
FACTOR_MAX = 3.0  # × R_Σ
MAX_TRIES = 100
MAX_ATOMS_PER_CELL = 5000


def check_range(name: str, value: float, lo: float, hi: float, unit: str = "", lo_open: bool = False,
                hi_open: bool = False) -> None:
    """Raise ValueError unless `value` is a finite number in the interval (open where asked), naming the bound."""
    v = float(value)
    inside = math.isfinite(v) and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    if not inside:
        interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        raise ValueError(f"{name} = {value!r} must be a finite number in {interval}{' ' + unit if unit else ''}")


def check_count(name: str, value: int, lo: int, hi: int) -> None:
    """Raise ValueError unless `value` is an integer (not a bool, not 2.5 or 1e12) in [lo, hi]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} = {value!r} must be an integer in [{lo}, {hi}]")
    if not lo <= value <= hi:
        raise ValueError(f"{name} = {value} must be an integer in [{lo}, {hi}]")


def check_finite(section: str, cfg) -> None:
    """Every number of a config dataclass is finite (NaN and ±inf reach no manifest: JSON has no such numbers)."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        for v in value if isinstance(value, tuple) else (value,):
            v = v[1] if isinstance(v, tuple) else v  # element tables: (symbol, frequency)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isfinite(v):
                raise ValueError(f"{section} {f.name} holds {v!r}: every value must be a finite number")
