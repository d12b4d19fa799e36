"""Figures and markdown of `builder.compare`: the paper's Figs 1–4 with our data, and compare.md.

`write_figures` draws fig1_volume.png, fig2_edges.png, fig3_monoclinic.png, fig4_distances.png (and
fig1b_volume_wide.png with the wide-edge panel); `markdown` renders a compare.json document as compare.md.
PNGs are written without a timestamp (matplotlib's Software metadata left out).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import stats as sps

from builder.compare_sampling import (CELL_KEYS, DIST_KEYS, QUANTITIES, SHORT_RANGE, Database, Sampled, cell_key,
                                      uniform_edges_lnv_pdf, uniform_edges_volume_cdf, uniform_edges_volume_pdf)

__all__ = ["FIGURES", "WIDE_FIGURE", "write_figures", "fmt_ks", "markdown"]

FIGURES = ["fig1_volume.png", "fig2_edges.png", "fig3_monoclinic.png", "fig4_distances.png"]
WIDE_FIGURE = "fig1b_volume_wide.png"

_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]


def _groups(sampled: list[Sampled]) -> list[tuple[str, list[Sampled]]]:
    """Strategies with the same cell configuration draw cells from the same distribution: one curve per group."""
    out: dict[str, list[Sampled]] = {}
    for s in sampled:
        out.setdefault(cell_key(s.strategy.cell), []).append(s)
    res = []
    for group in out.values():
        cfg = group[0].strategy.cell
        label = {"uniform-edges": f"uniform edges U({cfg.a_min:g}, {cfg.a_max:g}) Å",
                 "uniform-volume": f"uniform V U({cfg.v_min:g}, {cfg.v_max:g}) Å³",
                 "lognormal": f"log-normal V ({cfg.mu:g}, {cfg.sigma:g})"}[cfg.sampler]
        res.append((f"{label}: {', '.join(s.name for s in group)}", group))
    return res


def _db_hist(ax, values: np.ndarray | None, hist: dict | None, bins: np.ndarray, label: str,
             transform=None) -> None:
    if values is not None and len(values):
        ax.hist(values, bins=bins, density=True, color="0.78", edgecolor="0.6", label=label)
    elif hist is not None:  # a stats file without per-structure values: draw its own histogram
        counts = np.asarray(hist["counts"], dtype=np.float64)
        e = np.linspace(hist["lo"], hist["hi"], len(counts) + 1)
        x = transform(e) if transform is not None else e
        w = np.diff(x)
        ax.bar(x[:-1], counts / max(counts.sum(), 1) / w, width=w, align="edge", color="0.78", edgecolor="0.6",
               label=label)


def write_figures(sampled: list[Sampled], db: Database, out: Path, n_label: str, wide: dict | None = None,
                  db_wide: Database | None = None) -> None:
    """FIGURES into `out` (and WIDE_FIGURE when `wide`, from `compare_sampling.wide_volume`, is given)."""
    _fig1(sampled, db, out / FIGURES[0], n_label)
    _fig2(sampled, db, out / FIGURES[1], n_label)
    _fig3(sampled, db, out / FIGURES[2], n_label)
    _fig4(sampled, db, out / FIGURES[3])
    if wide is not None:
        _fig1_wide(wide, db_wide, out / WIDE_FIGURE)


def _save(fig, path: Path) -> None:
    fig.savefig(path, dpi=110, metadata={"Software": None})


def _fig1(sampled: list[Sampled], db: Database, out: Path, n_label: str) -> None:
    from matplotlib.figure import Figure

    vmax = max([float(np.max(s.volume)) for s in sampled] + ([float(np.max(db.values["volume"]))]
                                                             if db.values is not None else []))
    vmax = min(vmax, 4 * max(float(np.percentile(s.volume, 99)) for s in sampled)) * 1.05
    bins = np.linspace(0.0, vmax, 37)
    fig = Figure(figsize=(13, 6.4))
    ax, ax2 = fig.subplots(1, 2)
    _db_hist(ax, None if db.values is None else db.values["volume"], db.hist("volume"), bins,
             f"database (n = {db.n})", transform=np.exp)
    fit = db.doc["cell"]["volume"]["lognormal_fit"]
    v = np.linspace(1.0, vmax, 800)
    ax.plot(v, sps.lognorm.pdf(v, fit["sigma"], scale=math.exp(fit["mu"])), "k--", lw=1.6,
            label=f"database log-normal fit (μ = {fit['mu']:.3f}, σ = {fit['sigma']:.3f})")
    for k, (label, group) in enumerate(_groups(sampled)):
        col = _COLOURS[k % len(_COLOURS)]
        vals = np.concatenate([s.volume for s in group])
        ax.hist(vals, bins=bins, density=True, histtype="step", lw=1.6, color=col, label=f"{label} ({n_label})")
        ax2.plot(np.sort(vals), np.arange(1, len(vals) + 1) / len(vals), color=col, lw=1.6, label=label)
        cfg = group[0].strategy.cell
        if cfg.sampler == "uniform-edges":
            ax.plot(v, uniform_edges_volume_pdf(v, cfg.a_min, cfg.a_max), color=col, lw=2.0, ls=":",
                    label=f"analytic f_V, a_n ~ U({cfg.a_min:g}, {cfg.a_max:g}) Å (eqs 1–5)")
            ax2.plot(v, uniform_edges_volume_cdf(v, cfg.a_min, cfg.a_max), color=col, lw=2.0, ls=":",
                     label="analytic F_V (eqs 1–5)")
    if db.values is not None:
        dv = np.sort(db.values["volume"])
        ax2.step(dv, np.arange(1, len(dv) + 1) / len(dv), where="post", color="k", lw=1.6, label="database")
    ax.set(xlabel="cell volume V (Å³)", ylabel="probability density (Å⁻³)", xlim=(0, vmax),
           title="Fig. 1 — cell volume")
    ax2.set(xlabel="cell volume V (Å³)", ylabel="cumulative fraction", xlim=(0, vmax), ylim=(0, 1.01),
            title="cumulative distributions (KS D = largest vertical gap)")
    ax.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.13), frameon=False)
    ax2.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.13), frameon=False)
    fig.tight_layout()
    _save(fig, out)


def _fig1_wide(wide: dict, db: Database, out: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 5.6))
    ax = fig.subplots()
    bins = np.linspace(math.log(wide["a_min"] ** 3), math.log(wide["a_max"] ** 3), 61)
    ax.hist(np.log(wide["_db"]), bins=bins, density=True, color="0.78", edgecolor="0.6",
            label=f"database, {wide['a_min']:g} ≤ a_n ≤ {wide['a_max']:g} Å (n = {wide['n_database']})")
    fit = wide["database_lognormal_fit"]
    x = np.linspace(bins[0], bins[-1], 600)
    ax.plot(x, sps.norm.pdf(x, fit["mu"], fit["sigma"]), "k--", lw=1.6,
            label=f"database log-normal fit (μ = {fit['mu']:.3f}, σ = {fit['sigma']:.3f})")
    ax.hist(np.log(wide["_gen"]), bins=bins, density=True, histtype="step", lw=1.6, color=_COLOURS[2],
            label=f"a_n ~ U({wide['a_min']:g}, {wide['a_max']:g}) Å (n = {wide['n_generated']})")
    c, f, _ = uniform_edges_lnv_pdf(wide["a_min"], wide["a_max"])
    ax.plot(c, f, color=_COLOURS[2], lw=2.0, ls=":", label="analytic f_lnV (eqs 1–5)")
    ticks = [100, 1000, 10000, 100000]
    ax.set_xticks([math.log(t) for t in ticks], [f"{t:,}" for t in ticks])
    ax.set(xlabel="cell volume V (Å³, log scale)", ylabel="probability density per ln V",
           title=f"Fig. 1 (right) — edges up to {wide['a_max']:g} Å, database {db.path.stem}")
    ax.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.13), frameon=False)
    fig.tight_layout()
    _save(fig, out)


def _fig2(sampled: list[Sampled], db: Database, out: Path, n_label: str) -> None:
    from matplotlib.figure import Figure

    all_e = np.concatenate([s.edges for s in sampled])
    a3 = np.concatenate([all_e[:, 2], db.values["largest_edge"] if db.values is not None else []])
    lo, hi = math.floor(float(np.min(a3))), math.ceil(float(np.max(a3)))
    specs = [("largest_edge", "largest edge a3 (Å)", np.arange(lo, hi + 0.25, 0.25), lambda e: e[:, 2]),
             ("ratio_a3_a2", "a3/a2", np.arange(1.0, 2.55, 0.05), lambda e: e[:, 2] / e[:, 1]),
             ("ratio_a2_a1", "a2/a1", np.arange(1.0, 2.55, 0.05), lambda e: e[:, 1] / e[:, 0])]
    fig = Figure(figsize=(15, 5.6))
    axes = fig.subplots(1, 3)
    for ax, (key, xlabel, bins, fn) in zip(axes, specs):
        _db_hist(ax, None if db.values is None else db.values[key], db.hist(key), bins, f"database (n = {db.n})")
        for k, (label, group) in enumerate(_groups(sampled)):
            vals = np.concatenate([fn(s.edges) for s in group])
            ax.hist(vals, bins=bins, density=True, histtype="step", lw=1.6, color=_COLOURS[k % len(_COLOURS)],
                    label=f"{label} ({n_label})")
        if key.startswith("ratio"):
            fit = db.doc["cell"]["edge_ratios"]["a2_a1" if key == "ratio_a2_a1" else "a3_a2"]["exponential_fit"]
            if fit.get("scale"):
                x = np.linspace(1.0, bins[-1], 400)
                ax.plot(x, sps.expon.pdf(x - 1.0, scale=fit["scale"]), "k--", lw=1.4,
                        label="database: exponential fit of ratio − 1")
                ax.text(0.97, 0.95, f"database fit: ratio − 1 ~ Exp(scale {fit['scale']:.3f})",
                        transform=ax.transAxes, ha="right", va="top", fontsize=8)
        ax.set(xlabel=xlabel, ylabel="probability density", title=f"Fig. 2 — {xlabel}")
    handles, labels = axes[1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    _save(fig, out)


def _fig3(sampled: list[Sampled], db: Database, out: Path, n_label: str) -> None:
    from matplotlib.figure import Figure

    groups = [(label, g) for label, g in _groups(sampled) if g[0].beta]
    fig = Figure(figsize=(5.2 * max(1, len(groups)), 5.2))
    axes = np.atleast_1d(fig.subplots(1, max(1, len(groups))))
    lo, hi = 90.0, max([s.strategy.cell.beta_max for _, g in groups for s in g] + [120.0])
    if db.values is not None and len(db.values["monoclinic_angle"]):
        hi = max(hi, float(np.max(db.values["monoclinic_angle"])))
    bins = np.arange(lo, math.ceil(hi / 2.5) * 2.5 + 1.25, 2.5)  # 2.5° bins; β_max = 125° is an edge
    for ax, (label, group) in zip(axes, groups):
        _db_hist(ax, None if db.values is None else db.values["monoclinic_angle"], db.hist("monoclinic_angle"), bins,
                 f"database (n = {db.n})")
        bmax = group[0].strategy.cell.beta_max
        for flag, col, text in ((False, "#d62728", "generated: s3 ~ U[tan(90° − β_max), 0]"),
                                (True, "#1f77b4", "generated (adjusted): s3 lower bound also −(a_max²/a3² − 1)^½, "
                                                  "eq. 15")):
            vals = np.concatenate([s.beta[flag] for s in group])
            ax.hist(vals, bins=bins, density=True, histtype="step", lw=1.7, color=col, label=f"{text} ({n_label})")
        ax.set(xlabel="monoclinic angle β (°)", ylabel="probability density",
               title=f"Fig. 3 — {label.split(':')[0]}, β_max = {bmax:g}°")
        ax.text(0.97, 0.95, "strategies: " + ", ".join(s.name for s in group), transform=ax.transAxes, ha="right",
                va="top", fontsize=8, color="0.25")
        ax.set_ylim(top=ax.get_ylim()[1] * 1.12)
    if groups:
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=1, fontsize=8, frameon=False)
        fig.tight_layout(rect=(0, 0.16, 1, 1))
    else:
        axes[0].text(0.5, 0.5, "no monoclinic strategy", ha="center", transform=axes[0].transAxes)
    _save(fig, out)


def _rebin(density: Sequence[float], x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    d = np.asarray(density, dtype=np.float64)
    n = len(d) // k * k
    return x[:n].reshape(-1, k).mean(axis=1), d[:n].reshape(-1, k).mean(axis=1)


def _fig4(sampled: list[Sampled], db: Database, out: Path) -> None:
    from matplotlib.figure import Figure

    dist = db.doc["distances"]
    w = float(dist["width"])
    k = max(1, int(round(0.06 / w)))  # drawn on 0.06 Å bins (the stored 0.02 Å bins averaged in threes)
    x = np.arange(len(dist["all_atoms"]["density"] if dist.get("all_atoms") else [])) * w + dist["lo"] + w / 2
    fig = Figure(figsize=(13, 9.4))
    axes = fig.subplots(2, 2)
    styles = {"molecules": "-", "random": "--", "random-equal": ":"}
    colour = {s.name: _COLOURS[j % len(_COLOURS)] for j, (_, g) in enumerate(_groups(sampled)) for s in g}
    for col, (sub, title) in enumerate((("all_atoms", "all atom pairs"), ("non_h", "non-H pairs"))):
        for row, xmax in enumerate((float(dist["hi"]), SHORT_RANGE + 0.2)):
            ax = axes[row, col]
            blk = dist.get(sub)
            if blk and blk.get("density"):
                xs, dens = _rebin(blk["density"], x, k)
                ax.fill_between(xs, dens, color="0.8", step="mid",
                                label=f"database (n = {blk['n_structures']} structures)")
                ax.plot(xs, dens, color="0.4", lw=0.8, drawstyle="steps-mid")
            for s in sampled:
                g = s.distances.get(sub)
                if g and g.get("density"):
                    xs, dens = _rebin(g["density"], x, k)
                    ax.plot(xs, dens, color=colour[s.name], lw=1.5,
                            ls=styles.get(s.strategy.fill.filler, "-"),
                            label=f"{s.name} ({s.strategy.fill.filler} filler, n = {g['n_structures']})")
            if row == 1:
                curves = [b for b in [blk] + [s.distances.get(sub) for s in sampled] if b and b.get("density")]
                tops = [float(np.max(d[xs < xmax])) for xs, d in (_rebin(b["density"], x, k) for b in curves)]
                if tops and max(tops) > 0:
                    ax.set_ylim(0, max(tops) * 1.15)
            ax.set(xlabel="interatomic distance (Å)", ylabel="probability density (Å⁻¹; 0–6 Å has unit area)",
                   xlim=(0, xmax), title=f"Fig. 4 — interatomic distances, {title}" + (" (0–3 Å)" if row else ""))
            ax.legend(fontsize=7.5, loc="upper left")
    fig.tight_layout()
    _save(fig, out)


# ------------------------------------------------------------------------------------------------- report

def fmt_ks(ks: dict | None) -> str:
    """A KS result as "D (p)"; "–" when there is none."""
    if not ks or ks.get("statistic") is None:
        return "–"
    p = ks["pvalue"]
    return f"{ks['statistic']:.3f} ({p:.1e})" if p < 1e-3 else f"{ks['statistic']:.3f} ({p:.3f})"


def _table(strategies: dict, keys: list[str]) -> list[str]:
    keys = [k for k in keys if any(k in s["ks"] for s in strategies.values())]
    lines = ["| strategy | cells | filler | " + " | ".join(QUANTITIES[k][0] for k in keys) + " |",
             "|---|---|---|" + "---|" * len(keys)]
    for name, s in strategies.items():
        lines.append(f"| {name} | {s['cell_sampler']} | {s['filler']} | "
                     + " | ".join(fmt_ks(s["ks"].get(k)) for k in keys) + " |")
    return lines


def markdown(doc: dict) -> str:
    """compare.md from a compare.json document."""
    src, strategies = doc["database"], doc["strategies"]
    lines = [
        "# Generated vs database distributions",
        "",
        f"Database: `{src['file']}` — {src['n_structures']} structures, selection `{src['selection']}` "
        f"({src['rule']}); derived from `{src['source_dir']}` ({src['n_files']} files). "
        f"Generated: structures 0–{doc['count'] - 1} of each strategy, root seed {doc['seed']}"
        f" (distances from the first {doc['distance_count']}).",
        "",
        f"Command: `{doc['command']}`",
        "",
        "Entries: two-sample Kolmogorov–Smirnov statistic D (p-value) of the generated distribution against the "
        "database; smaller D = closer. A p-value tests \"same distribution\": with thousands of generated structures "
        "a small D can still be significant, and with a small database a large D can still have a moderate p.",
        "",
        "## Cells (Figs 1–3)",
        "",
        ("Exact two-sample tests on the database's per-structure values (`values` in the stats file). "
         if src["per_structure_values"] else
         "Binned KS on the stats file's histograms (the file has no per-structure `values`). ")
        + "β adjusted / unadjusted: the same cells redrawn from each sample's cell stream with the eq. 15 s3 bound "
          "on / off (the strategies' own cells are the `adjusted_s3` ones).",
        "",
        *_table(strategies, CELL_KEYS),
        "",
        "## Interatomic distances (Fig. 4)",
        "",
        "The database side is a histogram (0.02 Å bins), so D is taken between the binned CDFs; p uses the numbers "
        "of structures as sample sizes (pairs within a structure are not independent), so it is indicative only. "
        "0–3 Å: the distances below 3 Å alone (each curve renormalised there), where the bond peak and the trough "
        "after it are; over 0–6 Å the r² growth of the pair count dominates every CDF.",
        "",
        *_table(strategies, DIST_KEYS),
        "",
        "## Closest to the database (smallest D) per quantity",
        "",
    ]
    for k in CELL_KEYS + DIST_KEYS:
        ranked = sorted(((s["ks"][k]["statistic"], n) for n, s in strategies.items()
                         if s["ks"].get(k, {}).get("statistic") is not None))
        if ranked:
            lines.append(f"* {QUANTITIES[k][0]}: " + " < ".join(f"{n} ({d:.3f})" for d, n in ranked))
    if doc.get("analytic_fv"):
        lines += ["", "## Analytic f_V (eqs 1–5) against the generated uniform-edges volumes (one-sample KS)", ""]
        for name, a in doc["analytic_fv"].items():
            lines.append(f"* {name}: a_n ~ U({a['a_min']:g}, {a['a_max']:g}) Å, ∫ f_V dV = {a['integral']:.6f}, "
                         f"D = {a['ks_statistic']:.4f}, p = {a['ks_pvalue']:.3f} (n = {a['n']})")
    if doc.get("wide_volume"):
        w = doc["wide_volume"]
        ks = w["ks_uniform_edges"]
        lines += ["", f"## Fig. 1 (right): edges up to {w['a_max']:g} Å", "",
                  f"Database `{w['database']}` cells with {w['a_min']:g} ≤ a_n ≤ {w['a_max']:g} Å: n = {w['n_database']}, "
                  f"log-normal fit μ = {w['database_lognormal_fit']['mu']:.3f}, σ = {w['database_lognormal_fit']['sigma']:.3f} "
                  f"(KS D of ln V against it {w['ks_lognormal_fit']['statistic']:.3f}); a_n ~ U({w['a_min']:g}, "
                  f"{w['a_max']:g}) Å against the database: D = {ks['statistic']:.3f} (p = {ks['pvalue']:.2g})."]
    fit = doc["database"]["lognormal_fit"]
    lines += ["", f"Database log-normal fit: μ = {fit['mu']:.4f}, σ = {fit['sigma']:.4f} "
                  f"(KS of the database against its own fit: D = {fit.get('ks_statistic', float('nan')):.3f}, "
                  f"p = {fit.get('ks_pvalue', float('nan')):.3f}, optimistic as μ, σ come from the same data). "
                  "Generated medians and ln V moments per strategy are in compare.json (`summary`).",
              "", "Figures: " + ", ".join(f"[{f}]({f})" for f in doc["figures"]), ""]
    return "\n".join(lines)
