"""PNG plots of evaluation runs (matplotlib, Agg backend; no timestamps in the files).

* r vs cell volume coloured by compound class (Acta A 2026 Fig. 5 style),
* r vs cell volume coloured by number of occupied special positions (Fig. 6 style),
* histogram of r,
* for `compare`: the fraction of structures with r ≥ x, one curve per run,
* for `solve`: the phased map projected along the shortest axis with its peaks (Acta A 2026 Fig. 7 style).
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import gemmi
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from builder.symmetry import images, space_group_ops, wrap  # noqa: E402
from evaluation.metrics import SOLVED_R  # noqa: E402

__all__ = ["plot_r_vs_volume", "plot_r_hist", "plot_run", "plot_compare", "plot_map"]

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


# ----------------------------------------------------------------------------- solve: the phased map


def _plane(orth: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Orthonormal 2-D basis of the plane perpendicular to cell axis k."""
    n = orth[:, k] / np.linalg.norm(orth[:, k])
    i = [a for a in range(3) if a != k][0]
    e1 = orth[:, i] - (orth[:, i] @ n) * n
    e1 /= np.linalg.norm(e1)
    return e1, np.cross(n, e1)


def plot_map(path: str | os.PathLike, grid: gemmi.FloatGrid, peaks: list[dict], title: str) -> None:
    """The map summed along the shortest axis, drawn in Cartesian Å with the peaks of height ≥ 3 rms and all
    their symmetry images (`evaluation.maps.find_peaks` output; the .res lists every peak)."""
    cell = grid.unit_cell
    orth = np.array(cell.orth.mat.tolist())
    k = int(np.argmin([cell.a, cell.b, cell.c]))
    i, j = [a for a in range(3) if a != k]
    rho = np.asarray(grid.array, dtype=np.float64).sum(axis=k)  # (n_i, n_j)
    e1, e2 = _plane(orth, k)
    u, v = np.meshgrid(np.linspace(0, 1, rho.shape[0] + 1), np.linspace(0, 1, rho.shape[1] + 1), indexing="ij")
    xyz = u[..., None] * orth[:, i] + v[..., None] * orth[:, j]
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.pcolormesh(xyz @ e1, xyz @ e2, rho, cmap="Greys", shading="flat")
    peaks = [p for p in peaks if p["sigma"] >= 3.0]  # the picture shows the clear ones; the .res lists all
    if peaks:
        ops = space_group_ops(grid.spacegroup.xhm())
        img = wrap(images(ops.rot, ops.tran, np.array([[p["x"], p["y"], p["z"]] for p in peaks])))  # (P, G, 3)
        cart = img @ orth.T
        ax.scatter(cart.reshape(-1, 3) @ e1, cart.reshape(-1, 3) @ e2, s=14, facecolors="none",
                   edgecolors="tab:red", linewidths=0.8)
        for n, c in enumerate(cart[:, 0], start=1):
            ax.annotate(f"Q{n}", (c @ e1, c @ e2), fontsize=6, color="tab:red", xytext=(2, 2),
                        textcoords="offset points")
    names = "abc"
    ax.set_aspect("equal")
    ax.set_xlabel(f"Å (projection along {names[k]}; {names[i]} to the right)")
    ax.set_ylabel("Å")
    ax.set_title(title, fontsize=9)
    _save(fig, path)
