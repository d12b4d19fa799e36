"""Compound classes of a structure from its elements: the one vocabulary of database statistics and evaluation.

Paper Fig. 5 splits the test structures into organic, s-block and d-block compounds. The class is decided from the
atomic numbers alone, by precedence:

* ``d-block`` if any element of groups 3-12 is present (Sc-Zn, Y-Cd, Hf-Hg, Rf-Cn; La and Ac count as f-block);
* else ``s-block`` if any s-block metal (Li, Na, K, Rb, Cs, Fr, Be, Mg, Ca, Sr, Ba, Ra);
* else ``organic`` if carbon is present and every element is in `ORGANIC_ELEMENTS`
  (H, B, C, N, O, F, Si, P, S, Cl, As, Se, Br, Te, I);
* else ``other``: p-block metals and semimetals outside that list (Al, Ga, Ge, In, Sn, Sb, Tl, Pb, Bi, Po, At),
  f-block elements (La-Lu, Ac-Lr) without a d- or s-block element, noble gases, and carbon-free compounds of
  non-metals. The paper reports the first three only.

*Molecular* (`is_molecular`) is not a class but a selection of the database statistics: the atoms include C and H
(D counts as H), which keeps structures without hydrogen out of the x_H prior.
"""
from __future__ import annotations

from collections.abc import Iterable

__all__ = ["CLASSES", "ORGANIC_ELEMENTS", "S_BLOCK", "D_BLOCK", "F_BLOCK", "classify", "is_molecular"]

CLASSES = ("organic", "s-block", "d-block", "other")
ORGANIC_ELEMENTS = frozenset({1, 5, 6, 7, 8, 9, 14, 15, 16, 17, 33, 34, 35, 52, 53})
S_BLOCK = frozenset({3, 4, 11, 12, 19, 20, 37, 38, 55, 56, 87, 88})
D_BLOCK = frozenset([*range(21, 31), *range(39, 49), *range(72, 81), *range(104, 113)])
F_BLOCK = frozenset([*range(57, 72), *range(89, 104)])


def _present(z: Iterable) -> set[int]:
    return {int(v) for v in getattr(z, "ravel", lambda: z)()}


def classify(z: Iterable) -> str:
    """Compound class (one of `CLASSES`) of a structure from its atomic numbers (D as 1)."""
    present = _present(z)
    if present & D_BLOCK:
        return "d-block"
    if present & S_BLOCK:
        return "s-block"
    if 6 in present and present <= ORGANIC_ELEMENTS:
        return "organic"
    return "other"


def is_molecular(z: Iterable) -> bool:
    """The atoms include carbon and hydrogen (the `molecular` selection of the database statistics)."""
    present = _present(z)
    return 6 in present and 1 in present
