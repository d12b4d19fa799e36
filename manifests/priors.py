"""Generator priors from a stats file, and the stats-file format (manifests/stats/README.md).

A stats file (`phaseforge-build stats`; `builder.stats_summary` computes it) is sorted-key JSON with no timestamps,
floats rounded to 6 significant digits, lists of plain values on one line. Its ``priors`` block is the contract
with the generator (`builder.strategy` reads it through `load_priors`; this module needs neither click nor scipy)::

    "priors": {"elements_general": {"C": f, ...},            # non-H atoms on general positions
               "elements_special": {...},                    # the default special-position table, = the next one
               "special_default": "inversion-all",
               "special_tables": {"inversion-all": {...}, "inversion-selected": {...}, "special-selected": {...}},
               "lognormal_mu": μ, "lognormal_sigma": σ, "v_atom_range": [p5, p95], "x_h_range": [p5, p95]}

Element tables map symbols to fractions ≥ 0 that sum to 1 (hydrogen excluded). `SPECIAL_TABLES` says what each
special-position table counts; a strategy picks one with ``[priors] special_table = NAME``.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

__all__ = ["SCHEMA", "READABLE_SCHEMAS", "STATS_DIR", "SPECIAL_TABLES", "DEFAULT_SPECIAL", "stats_path",
           "load_priors", "special_table", "prior_fractions", "rounded", "dumps", "write_json"]

SCHEMA = "phaseforge.stats/2"  # 2: space group 14 in the reduced P 1 21/c 1 cell; named special tables
READABLE_SCHEMAS = ("phaseforge.stats/1", SCHEMA)
STATS_DIR = Path(__file__).resolve().parent / "stats"
SPECIAL_TABLES = {
    "inversion-all": "non-H atoms on inversion centres in every usable centrosymmetric structure of the folder "
                     "(whatever the selection; any element, any space group): what real structures put on "
                     "inversion centres, the kind of special position the generator fills in P2₁/c",
    "inversion-selected": "non-H atoms on inversion centres in the selected centrosymmetric structures",
    "special-selected": "non-H atoms on any special position (inversion centres, mirrors, axes) in the selected "
                        "structures",
}
DEFAULT_SPECIAL = "inversion-all"


def stats_path(ref: str | os.PathLike, base: str | os.PathLike | None = None) -> Path:
    """A stats file by committed name (``cod-molecular`` = manifests/stats/cod-molecular.json) or by path
    (relative to `base`, e.g. a strategy TOML's folder); ValueError (one line) when there is no such file."""
    ref = str(ref)
    builtin = "/" not in ref and not ref.endswith(".json")
    p = STATS_DIR / f"{ref}.json" if builtin else Path(ref)
    if not builtin and not p.is_absolute() and base is not None:
        p = Path(base) / p
    if not p.is_file():
        raise ValueError(f"stats file {ref!r} not found: name one of manifests/stats "
                         f"({', '.join(sorted(x.stem for x in STATS_DIR.glob('*.json')))}) or give a .json path")
    return p


def _check_table(p: Path, key: str, t: object) -> None:
    if not isinstance(t, dict) or not all(isinstance(v, (int, float)) and v >= 0 for v in t.values()):
        raise ValueError(f"{p}: priors.{key} must map element symbols to fractions ≥ 0")
    if t and abs(sum(t.values()) - 1.0) > 1e-4:
        raise ValueError(f"{p}: priors.{key} sums to {sum(t.values()):.6f}, not 1")
    if "H" in t or "D" in t:
        raise ValueError(f"{p}: priors.{key} must exclude hydrogen")


def load_priors(path: str | os.PathLike) -> dict:
    """The `priors` block of a stats file, checked; ValueError (one line) when it is missing or malformed."""
    p = Path(path)
    try:
        pri = json.loads(p.read_text(encoding="utf-8"))["priors"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{p}: not a stats file with a 'priors' block ({type(exc).__name__}: {exc}); "
                         "make one with `phaseforge-build stats`") from None
    if not isinstance(pri, dict):
        raise ValueError(f"{p}: 'priors' is empty (no structures were selected)")
    for key in ("elements_general", "elements_special"):
        _check_table(p, key, pri.get(key))
    tables = pri.get("special_tables", {})
    if not isinstance(tables, dict):
        raise ValueError(f"{p}: priors.special_tables must map table names to element tables")
    for name, t in tables.items():
        _check_table(p, f"special_tables.{name}", t)
    for key in ("lognormal_mu", "lognormal_sigma"):
        if not isinstance(pri.get(key), (int, float)):
            raise ValueError(f"{p}: priors.{key} must be a number")
    for key in ("v_atom_range", "x_h_range"):
        v = pri.get(key)
        if not (isinstance(v, list) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v) and v[0] <= v[1]):
            raise ValueError(f"{p}: priors.{key} must be [lo, hi] with lo ≤ hi")
    return pri


def special_table(priors: dict, name: str | None = None) -> dict[str, float]:
    """The special-position element table `name` of a priors block (None: the file's default)."""
    if name is None:
        return priors["elements_special"]
    tables = priors.get("special_tables", {})
    if name not in tables:
        have = ", ".join(sorted(tables)) or "none (an older stats file: regenerate it with `phaseforge-build stats`)"
        raise ValueError(f"special_table {name!r} is not in the stats file; it has: {have}")
    return tables[name]


def prior_fractions(frac: dict[str, float]) -> dict[str, float]:
    """Rounded to 6 decimals, then the largest entry set so that the rounded values sum to 1."""
    out = {k: round(v, 6) for k, v in frac.items() if round(v, 6) > 0}
    if out:
        top = max(out, key=out.get)
        out[top] = round(1.0 - sum(v for k, v in out.items() if k != top), 6)
    return dict(sorted(out.items()))


def rounded(x: object) -> object:
    """Floats to 6 significant digits, recursively (numpy scalars and arrays too); NaN and inf become None."""
    if hasattr(x, "tolist") and not isinstance(x, (str, bytes)):  # numpy scalar or array
        x = x.tolist()
    if isinstance(x, bool) or x is None or isinstance(x, (int, str)):
        return x
    if isinstance(x, float):
        return float(f"{x:.6g}") if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): rounded(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [rounded(v) for v in x]
    return x


def dumps(obj: object, indent: int = 0) -> str:
    """Sorted-key JSON, one key per line, lists of plain values kept on one line (histograms stay readable)."""
    pad, inner = " " * indent, " " * (indent + 1)
    if isinstance(obj, dict) and obj:
        items = [f"{inner}{json.dumps(str(k), ensure_ascii=False)}: {dumps(obj[k], indent + 1)}" for k in sorted(obj)]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, list) and any(isinstance(v, (dict, list)) for v in obj):
        return "[\n" + ",\n".join(inner + dumps(v, indent + 1) for v in obj) + "\n" + pad + "]"
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, allow_nan=False, separators=(", ", ": "))


def write_json(doc: dict, out: str | os.PathLike) -> None:
    """Write `doc` in this format, atomically (temporary file in the same folder, then rename)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(dumps(doc) + "\n")
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a manifest is meant to be shared
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
