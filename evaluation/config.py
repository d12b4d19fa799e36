"""`EvalConfig`: the options of one `phaseforge-eval run`, checked before anything is read or written.

Every check raises ValueError with one line naming the option and the way out (the CLI prints it as
`error: …` and exits 2, manifests/errors.py).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from evaluation.charge_flipping import CFConfig
from evaluation.cif import STANDARD_SETTING
from evaluation.run import METHODS, MODEL_METHODS
from evaluation.testset import SELECTIONS

__all__ = ["EvalConfig"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """One evaluation run (the options of `phaseforge-eval run`, same names and defaults).

    `method` may be left None when a checkpoint is given (it then means "model"); after construction it is
    always one of `evaluation.run.METHODS`. For the model, `scan` holds the validated
    `evaluation.recycle.ScanConfig`; for charge flipping, `cf` the `CFConfig` used.
    """

    out: Path
    testset: str | None = None
    cifs: Path | None = None
    select: str | None = None
    checkpoint: Path | None = None
    method: str | None = None
    d_min: float = 1.0
    cycles: str = "1..10"
    random_starts: int = 4
    zero_start: bool = True
    fom: str = "confidence"
    seed: int = 0
    device: str = "auto"
    batch_size: int = 64
    workers: int = 1
    limit: int | None = None
    plots: bool = True
    scan: Any = dataclasses.field(default=None, init=False, repr=False)
    cf: CFConfig | None = dataclasses.field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self._check_inputs()
        self._resolve_method()
        if not self.d_min > 0:  # also refuses NaN
            raise ValueError(f"--d-min must be > 0, got {self.d_min}")
        for name, low in (("limit", 1), ("workers", 1)):
            v = getattr(self, name)
            if v is not None and v < low:
                raise ValueError(f"--{name} must be >= {low}, got {v}")
        out = Path(self.out)
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {out} exists and is not a directory")
        if self.method in MODEL_METHODS:
            from evaluation.recycle import ScanConfig, parse_cycles  # torch: only the model path needs it

            object.__setattr__(self, "scan", ScanConfig(
                cycles=parse_cycles(self.cycles), zero_start=self.zero_start, random_starts=self.random_starts,
                seed=self.seed, fom=self.fom, batch_size=self.batch_size))
        if self.method in ("charge-flipping", "model+cf"):
            object.__setattr__(self, "cf", CFConfig())

    def _check_inputs(self) -> None:
        if (self.testset is None) == (self.cifs is None):
            raise ValueError("give exactly one of --testset and --cifs")
        if self.select is not None:
            if self.cifs is None:
                raise ValueError("--select applies to --cifs only (a test set is already selected)")
            if self.select not in SELECTIONS:
                raise ValueError(f"unknown --select {self.select!r}: choose one of {', '.join(sorted(SELECTIONS))}")
        if self.cifs is not None and not Path(self.cifs).is_dir():
            raise ValueError(f"--cifs {self.cifs} is not a directory")

    def _resolve_method(self) -> None:
        if self.checkpoint is not None and self.method not in (None, *MODEL_METHODS):
            raise ValueError(f"--checkpoint runs the model, which --method {self.method} does not use: drop "
                             f"--checkpoint or choose --method {'|'.join(MODEL_METHODS)}")
        method = self.method or ("model" if self.checkpoint is not None else None)
        if method is None:
            raise ValueError("give --checkpoint or --method charge-flipping|random|true")
        if method not in METHODS:
            raise ValueError(f"unknown --method {method!r}; choose one of {', '.join(METHODS)}")
        if method in MODEL_METHODS and self.checkpoint is None:
            raise ValueError(f"--method {method} needs --checkpoint")
        object.__setattr__(self, "method", method)

    def settings(self) -> dict[str, Any]:
        """What report.json records under "settings" (before the model and reflection list add theirs)."""
        out: dict[str, Any] = {"d_min": self.d_min, "seed": self.seed, "limit": self.limit,
                               "space_group": STANDARD_SETTING}
        if self.scan is not None:
            out.update(cycles=list(self.scan.cycles), zero_start=self.zero_start, random_starts=self.random_starts,
                       starts=list(self.scan.start_names), fom=self.fom, batch_size=self.batch_size)
        if self.cf is not None:
            out["cf"] = dataclasses.asdict(self.cf)
        return out
