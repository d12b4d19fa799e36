"""The PhAI network (Larsen, Rekis & Madsen, Science 385, 522-528, 2024), in one file.

PhAI (Larsen et al. 2024) reads two dense reciprocal-space grids, indexed [h + m, k, l] with m = max_index:
normalised amplitudes and phases in degrees (0 or -180). A 3-D CNN, a projection to ``filters`` tokens
and an MLP-mixer give two logits per reflection of the 1205-reflection index sphere:
class 1 = phase 0 deg, class 0 = phase 180 deg. Module and parameter names follow the published model,
so a published PhAI ``state_dict`` loads into ``PhAINet(paper())`` with ``strict=True``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from builder.reflections import phai_hkl

__all__ = [
    "ModelConfig", "paper", "small", "tiny", "PRESETS", "preset", "config_dict",
    "PhAINet", "seeded_model", "hkl_grid_index", "to_grid", "from_grid", "logits_to_phase_deg", "recycle",
    "unwrap",
]


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Hyperparameters of PhAI (Larsen et al. 2024); the defaults are the published ones."""

    max_index: int = 10        # index sphere |hkl| <= max_index; grid (2m+1, m+1, m+1)
    filters: int = 96          # CNN channels = number of mixer tokens
    kernel: int = 3            # Conv3d kernel (odd; zero "same" padding)
    cnn_depth: int = 6         # residual conv blocks
    dim: int = 1024            # token width after the projection
    dim_exp: int = 2048        # channel-mixing hidden width
    dim_token_exp: int = 512   # token-mixing hidden width
    mlp_depth: int = 8         # mixer layers (token + channel sublayer each)
    reflections: int = 1205    # output reflections = len(phai_hkl(max_index))

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"ModelConfig.{f.name} must be a positive int, got {v!r}")
        if self.kernel % 2 == 0:
            raise ValueError(f"ModelConfig.kernel must be odd (same padding), got {self.kernel}")
        n = len(phai_hkl(self.max_index))
        if self.reflections != n:
            raise ValueError(f"ModelConfig.reflections={self.reflections} but max_index={self.max_index} gives {n}")

    @property
    def grid_shape(self) -> tuple[int, int, int]:
        """(2m+1, m+1, m+1): the [h + m, k, l] grid."""
        m = self.max_index
        return (2 * m + 1, m + 1, m + 1)


def paper() -> ModelConfig:
    """PhAI as published (Larsen et al. 2024, Science; phai-facts.md "Architecture"): 42,443,882 parameters."""
    return ModelConfig()


def small() -> ModelConfig:
    """A few-million-parameter PhAI for single-GPU experiments (same layout, narrower and shallower)."""
    return dataclasses.replace(paper(), filters=32, cnn_depth=3, dim=256, dim_exp=512, dim_token_exp=128,
                               mlp_depth=4)


def tiny() -> ModelConfig:
    """A debug PhAI that trains in seconds on a 2-core CPU (tests, README smoke run)."""
    return dataclasses.replace(small(), filters=8, cnn_depth=1, dim=64, dim_exp=128, dim_token_exp=32,
                               mlp_depth=1)


PRESETS = {"tiny": tiny, "small": small, "paper": paper}


def preset(name: str) -> ModelConfig:
    """Return the named preset config.

    Raises:
        ValueError: unknown name.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; valid presets: {', '.join(PRESETS)}")
    return PRESETS[name]()


def config_dict(cfg: ModelConfig) -> dict[str, Any]:
    """Plain dict for checkpoints/manifests; ``ModelConfig(**config_dict(cfg)) == cfg``."""
    return dataclasses.asdict(cfg)


# ----------------------------------------------------------------------------- modules

class Transpose(nn.Module):
    """Swap two dimensions (parameter-free)."""

    def __init__(self, dim0: int, dim1: int) -> None:
        super().__init__()
        self.dim0, self.dim1 = dim0, dim1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(self.dim0, self.dim1)


def _stem(cfg: ModelConfig) -> nn.Sequential:
    """PhAI (Larsen et al. 2024) input stem: Conv3d(1 -> filters) -> GELU -> GroupNorm(filters groups)."""
    return nn.Sequential(
        nn.Unflatten(1, (1, cfg.grid_shape[0])),  # (B, H, K, L) -> (B, 1, H, K, L)
        nn.Conv3d(1, cfg.filters, cfg.kernel, padding=cfg.kernel // 2),
        nn.GELU(),
        nn.GroupNorm(cfg.filters, cfg.filters),
    )


class ConvBlock(nn.Module):
    """PhAI (Larsen et al. 2024) residual conv block: x + GN(GELU(Conv(GN(GELU(Conv(x))))))."""

    def __init__(self, filters: int, kernel: int) -> None:
        super().__init__()
        # registration order = published state_dict key order: conv1, conv2, norm1, norm2
        self.conv1 = nn.Conv3d(filters, filters, kernel, padding=kernel // 2)
        self.conv2 = nn.Conv3d(filters, filters, kernel, padding=kernel // 2)
        self.norm1 = nn.GroupNorm(filters, filters)
        self.norm2 = nn.GroupNorm(filters, filters)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, K, L)
        y = self.norm1(self.act(self.conv1(x)))
        y = self.norm2(self.act(self.conv2(y)))
        return x + y


class MixerSublayer(nn.Module):
    """PhAI (Larsen et al. 2024) pre-norm residual MLP over tokens ("token") or features ("channel").

    Input (B, T, D) with T = filters tokens of width D = dim. Both kinds normalise with GroupNorm(T, T),
    i.e. each token over its D features. Token mixing uses 1x1 Conv1d over the T axis (T -> hidden -> T);
    channel mixing uses Linear over the D axis (D -> hidden -> D).
    """

    def __init__(self, tokens: int, dim: int, hidden: int, kind: str) -> None:
        super().__init__()
        if kind not in ("token", "channel"):
            raise ValueError(f"kind must be 'token' or 'channel', got {kind!r}")
        self.norm1 = nn.GroupNorm(tokens, tokens)
        if kind == "token":
            self.layer1: nn.Module = nn.Conv1d(tokens, hidden, kernel_size=1)
            self.layer2: nn.Module = nn.Conv1d(hidden, tokens, kernel_size=1)
        else:
            self.layer1 = nn.Linear(dim, hidden)
            self.layer2 = nn.Linear(hidden, dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, T, D)
        return x + self.layer2(self.act(self.layer1(self.norm1(x))))


class PhAINet(nn.Module):
    """PhAI (Larsen et al. 2024, Fig. 1): amplitudes + phases on the hkl grid -> 2-class logits per reflection.

    The attribute names (net_a, net_p, net_convolution_layers, net_projection_layer, net_mixer_layers,
    net_output) and the Sequential indices match the published weights file.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        n_grid = int(np.prod(cfg.grid_shape))
        self.net_a = _stem(cfg)
        self.net_p = _stem(cfg)
        self.net_convolution_layers = nn.Sequential(
            *[nn.Sequential(ConvBlock(cfg.filters, cfg.kernel)) for _ in range(cfg.cnn_depth)])
        self.net_projection_layer = nn.Sequential(
            nn.Flatten(2),                       # (B, C, H, K, L) -> (B, C, H*K*L)
            nn.Linear(n_grid, cfg.dim),          # (B, C, H*K*L) -> (B, C, dim): C tokens of width dim
        )
        self.net_mixer_layers = nn.Sequential(
            *[nn.Sequential(MixerSublayer(cfg.filters, cfg.dim, cfg.dim_token_exp, "token"),
                            MixerSublayer(cfg.filters, cfg.dim, cfg.dim_exp, "channel"))
              for _ in range(cfg.mlp_depth)],
            nn.LayerNorm(cfg.dim),
        )
        self.net_output = nn.Sequential(
            Transpose(1, 2),                     # (B, T, D) -> (B, D, T)
            nn.AdaptiveAvgPool1d(1),             # (B, D, T) -> (B, D, 1): mean over tokens
            nn.Flatten(1),                       # (B, D, 1) -> (B, D)
            nn.Linear(cfg.dim, 2 * cfg.reflections),
            nn.Unflatten(1, (2, cfg.reflections)),  # (B, 2*N) -> (B, 2, N), class-major
        )
        # Not in the state_dict (persistent=False), so published weights still load strictly.
        idx = hkl_grid_index(phai_hkl(cfg.max_index), cfg.max_index)
        self.register_buffer("grid_index", idx, persistent=False)

    def forward(self, amplitudes: torch.Tensor, phases: torch.Tensor) -> torch.Tensor:
        """Run PhAI once.

        Args:
            amplitudes: (B, 2m+1, m+1, m+1) |F| / max|F| on the grid, 0 off the sphere and where unobserved.
            phases: (B, 2m+1, m+1, m+1) phases in degrees (0 or -180), 0 off the sphere.

        Returns:
            (B, 2, N) logits; class 1 = phase 0 deg, class 0 = phase 180 deg.
        """
        shape = self.cfg.grid_shape
        for name, t in (("amplitudes", amplitudes), ("phases", phases)):
            if t.dim() != 4 or tuple(t.shape[1:]) != shape:
                raise ValueError(f"{name} must have shape (B, {shape[0]}, {shape[1]}, {shape[2]}), "
                                 f"got {tuple(t.shape)}")
        x = self.net_a(amplitudes) + self.net_p(phases)  # (B, C, H, K, L)
        x = self.net_convolution_layers(x)               # (B, C, H, K, L)
        x = self.net_projection_layer(x)                 # (B, C, dim)
        x = self.net_mixer_layers(x)                     # (B, C, dim)
        return self.net_output(x)                        # (B, 2, N)


# ----------------------------------------------------------------------------- grid helpers

def seeded_model(cfg: ModelConfig, seed: int) -> "PhAINet":
    """A freshly initialised PhAINet whose weights depend only on `seed` (the global torch RNG is left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return PhAINet(cfg)


def hkl_grid_index(hkl: np.ndarray | torch.Tensor, max_index: int = 10) -> torch.Tensor:
    """Flat index of each reflection in the (2m+1, m+1, m+1) grid [h + m, k, l] (PhAI, Larsen et al. 2024).

    Args:
        hkl: (N, 3) integer Miller indices with |h| <= m, 0 <= k, l <= m.
        max_index: m.

    Returns:
        (N,) int64 tensor of flat indices into a C-ordered grid.

    Raises:
        ValueError: wrong shape or an index outside the grid.
    """
    h = hkl.detach().long().cpu() if isinstance(hkl, torch.Tensor) else torch.from_numpy(np.array(hkl, np.int64))
    if h.dim() != 2 or h.shape[1] != 3:
        raise ValueError(f"hkl must have shape (N, 3), got {tuple(h.shape)}")
    m = int(max_index)
    ok = (h[:, 0].abs() <= m) & (h[:, 1] >= 0) & (h[:, 1] <= m) & (h[:, 2] >= 0) & (h[:, 2] <= m)
    if not bool(ok.all()):
        raise ValueError(f"hkl has indices outside the max_index={m} grid")
    return ((h[:, 0] + m) * (m + 1) + h[:, 1]) * (m + 1) + h[:, 2]


def _scatter(values: torch.Tensor, index: torch.Tensor, max_index: int) -> torch.Tensor:
    m = max_index
    if values.dim() != 2 or values.shape[1] != index.numel():
        raise ValueError(f"values must have shape (B, {index.numel()}), got {tuple(values.shape)}")
    flat = values.new_zeros(values.shape[0], (2 * m + 1) * (m + 1) ** 2)  # (B, H*K*L)
    flat = flat.index_copy(1, index.to(values.device), values)
    return flat.view(values.shape[0], 2 * m + 1, m + 1, m + 1)           # (B, H, K, L)


def to_grid(values: torch.Tensor, hkl: np.ndarray | torch.Tensor, max_index: int = 10) -> torch.Tensor:
    """Scatter per-reflection values (B, N) into the (B, 2m+1, m+1, m+1) PhAI grid; zeros elsewhere.

    Raises:
        ValueError: shape mismatch, duplicate reflections or indices outside the grid.
    """
    index = hkl_grid_index(hkl, max_index)
    if index.unique().numel() != index.numel():
        raise ValueError("hkl contains duplicate reflections")
    return _scatter(values, index, int(max_index))


def from_grid(grid: torch.Tensor, hkl: np.ndarray | torch.Tensor, max_index: int = 10) -> torch.Tensor:
    """Gather (B, N) per-reflection values back from a (B, 2m+1, m+1, m+1) grid (inverse of `to_grid`)."""
    index = hkl_grid_index(hkl, max_index).to(grid.device)
    return grid.reshape(grid.shape[0], -1)[:, index]  # (B, H*K*L) -> (B, N)


def logits_to_phase_deg(logits: torch.Tensor) -> torch.Tensor:
    """(B, 2, N) logits -> (B, N) phases in degrees: 0 for class 1, -180 for class 0 (ties go to -180).

    Raises:
        ValueError: logits not of shape (B, 2, N).
    """
    if logits.dim() != 3 or logits.shape[1] != 2:
        raise ValueError(f"logits must have shape (B, 2, N), got {tuple(logits.shape)}")
    cls = logits.argmax(dim=1)  # (B, N)
    dtype = logits.dtype if logits.is_floating_point() else torch.float32
    return (cls.to(dtype) - 1.0) * 180.0


def unwrap(model: nn.Module) -> "PhAINet":
    """The PhAINet inside DistributedDataParallel (`.module`) and torch.compile (`._orig_mod`) wrappers."""
    while not isinstance(model, PhAINet):
        inner = getattr(model, "module", None)
        inner = getattr(model, "_orig_mod", None) if inner is None else inner
        if not isinstance(inner, nn.Module):
            raise ValueError(f"{type(model).__name__} is not a PhAINet or a DDP / torch.compile wrapper of one")
        model = inner
    return model


def recycle(model: nn.Module, amplitudes_grid: torch.Tensor, n_cycles: int,
            init_phases_grid: torch.Tensor | None = None) -> list[torch.Tensor]:
    """PhAI (Larsen et al. 2024) phase recycling: run the model ``n_cycles`` times, feeding back its phases.

    Cycle 1 sees ``init_phases_grid`` (zeros if None). Each later cycle sees the previous cycle's argmax
    phases (0 / -180) on the grid for all N reflections. The argmax blocks gradients, so all cycles but the
    last run under ``torch.no_grad()`` (returned detached); the last one runs in the caller's grad mode (and
    autocast, if the caller entered one). The one loop used by training, validation and the evaluation scan.

    Args:
        model: a PhAINet, or a DistributedDataParallel / torch.compile wrapper of one (called as given, so
            DDP's gradient hooks and the compiled graph are used).
        amplitudes_grid: (B, 2m+1, m+1, m+1) normalised amplitudes.
        n_cycles: number of passes, >= 1.
        init_phases_grid: optional (B, 2m+1, m+1, m+1) start phases in degrees.

    Returns:
        A list of ``n_cycles`` logits tensors, each (B, 2, N).

    Raises:
        ValueError: n_cycles < 1, or a model that is not (a wrapper of) a PhAINet.
    """
    if int(n_cycles) < 1:
        raise ValueError(f"n_cycles must be >= 1, got {n_cycles}")
    net = unwrap(model)
    phases = torch.zeros_like(amplitudes_grid) if init_phases_grid is None else init_phases_grid
    out: list[torch.Tensor] = []
    for cycle in range(int(n_cycles)):
        if cycle < n_cycles - 1:
            with torch.no_grad():
                logits = model(amplitudes_grid, phases)                  # (B, 2, N)
            phase_deg = logits_to_phase_deg(logits.float()).to(amplitudes_grid.dtype)  # (B, N)
            phases = _scatter(phase_deg, net.grid_index, net.cfg.max_index)  # (B, H, K, L)
        else:
            logits = model(amplitudes_grid, phases)
        out.append(logits)
    return out
