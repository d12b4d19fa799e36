"""Strategies: cell sampler × atom filler × space group, as TOML files (DESIGN.md "Strategies").

A TOML names its sampler and filler parameters and a stats file whose `priors` block supplies element
frequencies (and, on request, the log-normal volume parameters and the V_atom / x_H ranges). Resolution embeds
every value in one plain dict, which goes into the manifest; the strategy id is a hash of that dict, so sample i
of a dataset depends only on (resolved strategy, root seed, i).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import tomllib
import typing
from pathlib import Path

from builder.bounds import MAX_ATOMS_PER_CELL
from builder.cell import CellConfig
from builder.fill import FillConfig
from builder.symmetry import space_group_ops
from manifests.priors import STATS_DIR, load_priors, special_table, stats_path
from manifests.seeds import stable_id

__all__ = ["Strategy", "STRATEGY_DIR", "STATS_DIR", "builtin_strategies", "load_strategy", "canonical_json",
           "PRIOR_KINDS"]

_MANIFESTS = Path(__file__).resolve().parent.parent / "manifests"
STRATEGY_DIR = _MANIFESTS / "strategies"
PRIOR_KINDS = ("elements", "volume", "v_atom", "x_h")
_TOP_KEYS = {"name", "description", "space_group", "cell", "fill", "priors"}
_PRIOR_KEYS = {"stats", "use", "special_table"}


def canonical_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Strategy:
    name: str
    description: str = ""
    space_group: str = "P 1 21/c 1"
    cell: CellConfig
    fill: FillConfig
    priors: dict = dataclasses.field(default_factory=dict)  # provenance: stats file name, sha256, kinds used

    def validate(self) -> None:
        ops = space_group_ops(self.space_group)
        need = {"triclinic": "triclinic", "monoclinic": "monoclinic", "orthorhombic": "none"}.get(ops.crystal_system)
        if need is None:
            raise ValueError(f"space group {self.space_group!r} is {ops.crystal_system}: the cell samplers make "
                             "triclinic, monoclinic or orthorhombic cells only")
        if self.cell.skew != need:
            raise ValueError(f"space group {ops.name} needs cell skew = {need!r}, not {self.cell.skew!r}")
        self.cell.validate()
        self.fill.validate()
        v_max = self.cell.max_volume()
        if self.fill.v_atom[0] * ops.n > v_max:
            raise ValueError(f"fill v_atom[0] = {self.fill.v_atom[0]} Å³ × {ops.n} operations exceeds the largest cell "
                             f"({v_max:.0f} Å³): every structure would be empty; lower v_atom or raise a_max")
        atoms = self.fill.max_atoms(v_max)
        if atoms > MAX_ATOMS_PER_CELL:
            raise ValueError(f"cells of up to {v_max:.3g} Å³ with v_atom ≥ {self.fill.v_atom[0]:g} Å³ and x_h ≤ "
                             f"{self.fill.x_h[1]:g} hold up to {atoms:.3g} atoms; the bound is {MAX_ATOMS_PER_CELL} "
                             "atoms per cell (builder/bounds.py): lower a_max or v_max, or raise v_atom")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["fill"]["elements_general"] = dict(self.fill.elements_general)
        d["fill"]["elements_special"] = dict(self.fill.elements_special)
        try:
            return json.loads(canonical_json(d))  # tuples -> lists, exactly as stored in a manifest
        except ValueError:
            raise ValueError(f"strategy {self.name} holds NaN or infinity, which a manifest cannot record: "
                             "give finite values") from None

    @classmethod
    def from_dict(cls, d: dict) -> "Strategy":
        """The strategy a manifest holds, checked as strictly as a TOML file (a manifest is data from outside)."""
        _check_keys("manifest strategy [cell]", d["cell"], {f.name for f in dataclasses.fields(CellConfig)})
        _check_keys("manifest strategy [fill]", d["fill"], {f.name for f in dataclasses.fields(FillConfig)})
        _check_types("manifest strategy [cell]", d["cell"], CellConfig)
        _check_types("manifest strategy [fill]", d["fill"], FillConfig)
        cell = CellConfig(**d["cell"])
        f = dict(d["fill"])
        for key in ("v_atom", "x_h", "u_iso", "bond", "forbidden"):
            f[key] = tuple(f[key])
        for key in ("elements_general", "elements_special"):
            f[key] = tuple(sorted((str(k), float(v)) for k, v in dict(f[key]).items()))
        strat = cls(name=d["name"], description=d.get("description", ""), space_group=d["space_group"],
                    cell=cell, fill=FillConfig(**f), priors=d.get("priors", {}))
        strat.validate()
        return strat

    @functools.cached_property
    def strategy_id(self) -> int:
        """Stable 64-bit id: sha256 of the resolved strategy (never Python's hash())."""
        return stable_id(canonical_json(self.to_dict()))


def builtin_strategies() -> dict[str, Path]:
    return {p.stem: p for p in sorted(STRATEGY_DIR.glob("*.toml"))}


def _check_keys(where: str, given: dict, allowed: set[str]) -> None:
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(unknown)} in {where}; allowed: {', '.join(sorted(allowed))}")


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_value(name: str, value, kind) -> None:
    """One value against its field's type, as TOML or a manifest's JSON spells it."""
    if kind is bool:
        ok, want = isinstance(value, bool), "true or false"
    elif kind is int:
        ok, want = isinstance(value, int) and not isinstance(value, bool), "an integer"
    elif kind is float:
        ok, want = _is_number(value), "a finite number"
    elif kind is str:
        ok, want = isinstance(value, str), "a string"
    elif kind == tuple[float, float]:
        ok = isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_number(v) for v in value)
        want = "a two-number list [lo, hi] of finite numbers"
    else:  # element tables
        ok = isinstance(value, dict) and all(isinstance(k, str) and _is_number(v) for k, v in value.items())
        want = "a table of element symbol = finite frequency"
    if not ok:
        text = repr(value)
        raise ValueError(f"{name} = {text if len(text) <= 60 else text[:57] + '...'} must be {want}")


def _check_types(where: str, raw: dict, cls) -> None:
    """Every value of a [cell] or [fill] table has its field's type before anything converts it: a bool is
    true/false (not "no"), a count an integer (not 2.5 or 1e12), a number finite (not nan or inf)."""
    kinds = typing.get_type_hints(cls)
    for key, value in raw.items():
        _check_value(f"{where} {key}", value, kinds[key])


def load_strategy(ref: str | Path) -> Strategy:
    """A built-in strategy name or a TOML path → resolved, validated Strategy (ValueError on bad input)."""
    builtins = builtin_strategies()
    path = builtins.get(str(ref)) or Path(ref)
    if not path.is_file():
        raise ValueError(f"unknown strategy {str(ref)!r}: use one of {', '.join(builtins)} or a .toml path")
    try:
        doc = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: malformed TOML ({exc})") from None
    _check_keys(f"{path.name}", doc, _TOP_KEYS)
    cell_kw, fill_kw, prior_kw = doc.get("cell", {}), doc.get("fill", {}), doc.get("priors", {})
    _check_keys(f"{path.name} [cell]", cell_kw, {f.name for f in dataclasses.fields(CellConfig)})
    _check_keys(f"{path.name} [fill]", fill_kw, {f.name for f in dataclasses.fields(FillConfig)})
    _check_keys(f"{path.name} [priors]", prior_kw, _PRIOR_KEYS)
    for key in ("name", "description", "space_group"):
        if key in doc:
            _check_value(f"{path.name} {key}", doc[key], str)
    _check_types(f"{path.name} [cell]", cell_kw, CellConfig)
    _check_types(f"{path.name} [fill]", fill_kw, FillConfig)
    for key in ("v_atom", "x_h", "u_iso", "bond", "forbidden"):
        if key in fill_kw:
            fill_kw[key] = tuple(float(v) for v in fill_kw[key])
    for key in ("elements_general", "elements_special"):
        if key in fill_kw:
            fill_kw[key] = tuple(sorted((str(k), float(v)) for k, v in dict(fill_kw[key]).items()))

    provenance = {}
    if prior_kw:
        stats = stats_path(str(prior_kw.get("stats", "cod-molecular")), path.parent)
        use = list(prior_kw.get("use", ["elements"]))
        bad = sorted(set(use) - set(PRIOR_KINDS))
        if bad:
            raise ValueError(f"{path.name} [priors] use: unknown kind(s) {', '.join(bad)}; allowed: "
                             f"{', '.join(PRIOR_KINDS)}")
        pri = load_priors(stats)
        table = prior_kw.get("special_table")  # which special-position table (manifests/priors.py); None: default
        if table is not None and "elements" not in use:
            raise ValueError(f"{path.name} [priors] special_table needs \"elements\" in use")
        taken = {
            "elements": ("fill", {"elements_general": pri["elements_general"],
                                  "elements_special": special_table(pri, None if table is None else str(table))}),
            "volume": ("cell", {"mu": pri["lognormal_mu"], "sigma": pri["lognormal_sigma"]}),
            "v_atom": ("fill", {"v_atom": pri["v_atom_range"]}),
            "x_h": ("fill", {"x_h": pri["x_h_range"]}),
        }
        for kind in use:
            section, values = taken[kind]
            target = fill_kw if section == "fill" else cell_kw
            clash = sorted(set(values) & set(target))
            if clash:
                raise ValueError(f"{path.name}: [{section}] {', '.join(clash)} also comes from [priors] use = "
                                 f"{kind!r}; remove one of them")
            for k, v in values.items():
                target[k] = tuple(sorted((s, float(p)) for s, p in v.items())) if isinstance(v, dict) else \
                    (tuple(float(x) for x in v) if isinstance(v, list) else float(v))
        provenance = {"stats": stats.name, "sha256": hashlib.sha256(stats.read_bytes()).hexdigest(), "use": use}
        if "elements" in use:
            provenance["special_table"] = str(table or pri.get("special_default", "elements_special"))
    try:
        strat = Strategy(name=str(doc.get("name", path.stem)), description=str(doc.get("description", "")),
                         space_group=str(doc.get("space_group", "P 1 21/c 1")), cell=CellConfig(**cell_kw),
                         fill=FillConfig(**fill_kw), priors=provenance)
    except TypeError as exc:
        raise ValueError(f"{path.name}: {exc}") from None
    strat = dataclasses.replace(strat, space_group=space_group_ops(strat.space_group).name)
    strat.validate()
    return strat
