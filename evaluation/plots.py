"""PNG plots of evaluation runs (matplotlib, Agg backend; no timestamps in the files).

* r vs cell volume coloured by compound class (Acta A 2026 Fig. 5 style),
* r vs cell volume coloured by number of occupied special positions (Fig. 6 style),
* histogram of r,
* for `compare`: the fraction of structures with r ≥ x, one curve per run.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from evaluation.metrics import SOLVED_R  # noqa: E402

__all__ = ["plot_r_vs_volume", "plot_r_hist", "plot_run", "plot_compare"]

CLASS_COLOURS = {"organic": "#1f77b4", "s-block": "#2ca02c", "d-block": "#d62728", "other": "#7f7f7f"}
_META = {"Software": None}  # no version string either: the PNG depends only on the data


def _save(fig: Any, path: str | os.PathLike) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata=_META)
    plt.close(fig)


def _r_axis(ax: Any, rows: Sequence[Mapping[str, Any]], key: str) -> None:
    lo = min([0.0] + [float(row[key]) for row in rows])
    ax.set_ylim(min(-0.05, lo - 0.05), 1.05)
    ax.axhline(SOLVED_R, color="k", lw=0.8, ls="--")
    ax.set_ylabel("r")
    ax.set_xlabel("cell volume (Å³)")


def plot_r_vs_volume(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike, by: str = "class",
                     key: str = "r", title: str = "") -> None:
    """Scatter r against V, coloured by `by` ("class" or "n_special")."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    if by == "class":
        groups = [(c, col) for c, col in CLASS_COLOURS.items() if any(row["class"] == c for row in rows)]
        for c, col in groups:
            sel = [row for row in rows if row["class"] == c]
            ax.scatter([row["volume"] for row in sel], [row[key] for row in sel], s=14, c=col,
                       label=f"{c} ({len(sel)})", alpha=0.8, edgecolors="none")
    elif by == "n_special":
        cmap = plt.get_cmap("viridis")
        values = sorted({int(row["n_special"]) for row in rows})
        for i, k in enumerate(values):
            sel = [row for row in rows if int(row["n_special"]) == k]
            ax.scatter([row["volume"] for row in sel], [row[key] for row in sel], s=14,
                       color=cmap(i / max(1, len(values) - 1)), label=f"{k} special ({len(sel)})", alpha=0.85,
                       edgecolors="none")
    else:
        raise ValueError(f"by must be 'class' or 'n_special', got {by!r}")
    _r_axis(ax, rows, key)
    if rows:
        ax.legend(fontsize=8, loc="lower left")
    ax.set_title(title, fontsize=10)
    _save(fig, path)


def plot_r_hist(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike, key: str = "r",
                title: str = "") -> None:
    """Histogram of r in bins of 0.05 from min(r, −0.2) to 1."""
    r = [float(row[key]) for row in rows]
    lo = min([-0.2] + r)
    n_bins = max(1, int(round((1.0 - lo) / 0.05)))
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.hist(r, bins=n_bins, range=(1.0 - n_bins * 0.05, 1.0 + 1e-9), color="#4c72b0", edgecolor="white")
    ax.axvline(SOLVED_R, color="k", lw=0.8, ls="--")
    ax.set_xlabel("r")
    ax.set_ylabel("structures")
    ax.set_title(title, fontsize=10)
    _save(fig, path)


def plot_run(rows: Sequence[Mapping[str, Any]], out_dir: str | os.PathLike, title: str = "") -> None:
    """The three plots of a run into `out_dir`."""
    out = Path(out_dir)
    plot_r_vs_volume(rows, out / "r_vs_volume_class.png", by="class", title=title)
    plot_r_vs_volume(rows, out / "r_vs_volume_special.png", by="n_special", title=title)
    plot_r_hist(rows, out / "r_hist.png", title=title)


def plot_compare(curves: Sequence[tuple[str, Sequence[float]]], path: str | os.PathLike) -> None:
    """Fraction of structures with r ≥ x against x, one step curve per run."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, r in curves:
        if not r:
            continue
        xs = sorted(r)
        n = len(xs)
        ax.step(xs, [1.0 - i / n for i in range(n)], where="post", label=f"{label} (n={n})")
    ax.axvline(SOLVED_R, color="k", lw=0.8, ls="--")
    ax.set_xlabel("r threshold x")
    ax.set_ylabel("fraction of structures with r ≥ x")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8, loc="lower left")
    _save(fig, path)
