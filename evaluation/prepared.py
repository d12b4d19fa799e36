"""A structure ready for a method, and the one loop that prepares inputs (evaluation.run for CIF models,
evaluation.measured for measured data): each input becomes a `Prepared` or a skipped entry with a reason; an
input that cannot be used never stops the run."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from builder.cifsites import Unusable

__all__ = ["Prepared", "prepare_each", "short_error"]


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A usable structure: its descriptors and its data on the reflection list."""

    id: str
    cell6: np.ndarray
    volume: float
    compound_class: str
    n_special: int
    n_atoms: int
    amp: np.ndarray  # (N,) |F|
    phase: np.ndarray  # (N,) true phases, radians
    observed: np.ndarray  # (N,) bool
    n_u_fallback: int = 0  # sites whose U was unusable and set to the default (evaluation.cif.DEFAULT_UISO)
    amp_calc: np.ndarray | None = None  # (N,) the model's |F| when `amp` is measured (evaluation.measured)
    completeness: float | None = None  # measured share of the observable list reflections

    @classmethod
    def of(cls, ing: Any, amp: np.ndarray, phase: np.ndarray, observed: np.ndarray, **extra: Any) -> Prepared:
        """From an `evaluation.cif.Ingested` structure and its data on the list."""
        return cls(id=ing.id, cell6=ing.cell6, volume=ing.volume, compound_class=ing.compound_class,
                   n_special=ing.n_special, n_atoms=ing.n_atoms, amp=amp, phase=np.asarray(phase, np.float64),
                   observed=observed, n_u_fallback=ing.n_u_fallback, **extra)

    def descriptors(self) -> dict[str, Any]:
        return {"id": self.id, "volume": self.volume, "class": self.compound_class,
                "n_special": self.n_special, "n_atoms": self.n_atoms, "n_u_fallback": self.n_u_fallback}


def short_error(exc: BaseException) -> str:
    """One line naming an unexpected failure (type and message, at most 200 characters of message)."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"


def prepare_each(items: Sequence[tuple[str, bytes | Unusable]], prepare: Callable[[str, bytes], Prepared],
                 failure: str, limit: int | None = None) -> tuple[list[Prepared], list[dict[str, str]]]:
    """`prepare(id, bytes)` for each of the first `limit` items.

    Returns:
        (prepared, skipped): an `Unusable` item or one that `prepare` refuses with `Unusable` is skipped with its
        reason; any other exception with the reason `failure` and the error as detail.
    """
    good, skipped = [], []
    for sid, data in items[:limit]:
        try:
            if isinstance(data, Unusable):
                raise data
            good.append(prepare(sid, data))
        except Unusable as exc:
            skipped.append({"id": sid, "reason": exc.reason, "detail": exc.detail})
        except Exception as exc:  # noqa: BLE001 (one odd file must not stop the run; it is listed instead)
            skipped.append({"id": sid, "reason": failure, "detail": short_error(exc)})
    return good, skipped
