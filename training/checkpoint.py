"""Checkpoints: the one reader, the atomic writer, resume checks and model loading for inference.

A checkpoint is data, never code. `read_checkpoint` is the only `torch.load` in the project and it always runs
with `weights_only=True`: tensors, plain containers and numbers load; a file whose unpickling would call any other
function (a downloaded "checkpoint" carrying code) is refused with one line, and nothing in it runs. The trainer
stores only such plain types (the rng state is a uint8 tensor, the loader position is JSON-like), so nothing needs
registering with `torch.serialization.add_safe_globals`.

Two layouts are read: the trainer's dict (`format` = CHECKPOINT_FORMAT, torchtitan-style keys `model`,
`optimizer`, `lr_scheduler`, `dataloader`, `train_state`, plus `config`, `rng`, `prior`, `hkl_sha256`) and a bare
PhAI state_dict as published (keys "net_a.1.weight", ...; DDP "module." and torch.compile "_orig_mod." prefixes
are stripped). `load_model` builds the network from the tensor shapes, so a bare state_dict of any preset loads.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from builder.reflections import hkl_hash, phai_hkl
from manifests.errors import os_error_line
from manifests.schema import ManifestError, package_version, partial_name, sha256_file
from training.config import RESUMABLE, TrainConfig, flat_dict
from training.data import resume_state
from training.model import ModelConfig, PhAINet, config_dict, preset

__all__ = ["CHECKPOINT_FORMAT", "CheckpointError", "read_checkpoint", "training_checkpoint", "save_checkpoint",
           "code_version", "check_resume", "LoadedModel", "config_from_state_dict", "load_model"]

CHECKPOINT_FORMAT = "phaseforge-checkpoint-1"
_PREFIXES = ("module.", "_orig_mod.")  # DDP and torch.compile wrappers
_MIXER = re.compile(r"^net_mixer_layers\.(\d+)\.0\.layer1\.weight$")
_CONV = re.compile(r"^net_convolution_layers\.(\d+)\.0\.conv1\.weight$")
_GLOBAL = re.compile(r"GLOBAL (\S+) was not an allowed global")


class CheckpointError(ManifestError):
    """A checkpoint that cannot be read, written or used; the message names the file and the way out."""


# ----------------------------------------------------------------------------- reading

def _why_unreadable(exc: BaseException) -> str:
    """A reason for a failed weights-only load that never passes on torch's advice to disable it."""
    text = " ".join(str(exc).split())
    if isinstance(exc, pickle.UnpicklingError):
        found = _GLOBAL.search(text)
        if found:
            return (f"refused: it holds Python objects other than tensors and plain data ({found.group(1)}), and "
                    "a checkpoint is loaded as data only, never as code; use a plain state_dict")
        return "not a torch checkpoint (neither torch's zip archive nor a pickle of tensors and plain data)"
    if isinstance(exc, EOFError):
        return "truncated (the pickle ends early)"
    if "central directory" in text or "zip archive" in text:
        return "truncated or corrupt (its zip archive is incomplete; was the copy or download interrupted?)"
    first = text.split(". ")[0][:200]
    return f"not a torch checkpoint ({type(exc).__name__}: {first})" if "weights_only" not in first else \
        f"not a torch checkpoint ({type(exc).__name__})"


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint as data (`torch.load(weights_only=True)`, on the CPU).

    Returns:
        The stored dict: a trainer checkpoint or a bare state_dict.

    Raises:
        CheckpointError: missing, empty, truncated, corrupt, not a dict, or holding anything but plain data.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} does not exist")
    if p.stat().st_size == 0:
        raise CheckpointError(f"cannot read checkpoint {p}: the file is empty (0 bytes; an interrupted write, "
                              "copy or download?)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols on files that are not its own
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch.load fails in many ways on a file that is not a checkpoint
        raise CheckpointError(f"cannot read checkpoint {p}: {_why_unreadable(exc)}") from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint {p} holds a {type(obj).__name__}, not a dict of tensors")
    return dict(obj)


def training_checkpoint(path: str | os.PathLike) -> dict:
    """A trainer checkpoint (for --resume): `read_checkpoint` plus the format check."""
    ck = read_checkpoint(path)
    if ck.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a {CHECKPOINT_FORMAT} file (a bare state_dict cannot be resumed)")
    return ck


# ----------------------------------------------------------------------------- writing

def save_checkpoint(path: str | os.PathLike, obj: dict) -> None:
    """torch.save to a temporary name in the same directory, fsync, rename: never a partial file under `path`.

    Raises:
        CheckpointError: the write failed (no space left, read-only, permission...); the temporary file is removed
        and an existing file at `path` is left as it was.
    """
    path = Path(path)
    tmp = partial_name(path)
    try:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        # torch.save reports a failed write (a full disk) as a RuntimeError raised while handling the OSError
        cause = exc if isinstance(exc, OSError) else exc.__context__
        if not isinstance(cause, OSError):
            raise
        raise CheckpointError("cannot write checkpoint " + os_error_line(
            cause, where=path, advice="free space or choose another --out, then rerun with --resume")) from None
    finally:
        tmp.unlink(missing_ok=True)


def code_version() -> dict:
    """The package version and a sha256 over every module of `training/` (name and bytes, sorted by name)."""
    h = hashlib.sha256()
    for f in sorted(Path(__file__).parent.glob("*.py")):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return {"package": package_version(), "training_sha256": h.hexdigest()}


# ----------------------------------------------------------------------------- models for inference

@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A network ready for inference, and what a report says about where it came from."""

    model: PhAINet
    config: ModelConfig
    info: dict[str, Any]  # name, sha256, format ("trainer" | "bare"), config, step (when known)


def _strip(sd: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in sd.items():
        for p in _PREFIXES:
            if k.startswith(p):
                k = k[len(p):]
        out[k] = v
    return out


def config_from_state_dict(sd: Mapping[str, torch.Tensor]) -> ModelConfig:
    """The ModelConfig whose PhAINet has exactly these parameter shapes (meta tensors work too).

    Raises:
        ValueError: the mapping is not a PhAI state_dict.
    """
    sd = _strip(sd)
    try:
        stem = sd["net_a.1.weight"].shape  # (filters, 1, k, k, k)
        proj = sd["net_projection_layer.1.weight"].shape  # (dim, n_grid)
        out = sd["net_output.3.weight"].shape  # (2 N, dim)
        conv = sorted(int(m.group(1)) for k in sd if (m := _CONV.match(k)))
        mixer = sorted(int(m.group(1)) for k in sd if (m := _MIXER.match(k)))
        token = sd["net_mixer_layers.0.0.layer1.weight"].shape  # (dim_token_exp, filters, 1)
        channel = sd["net_mixer_layers.0.1.layer1.weight"].shape  # (dim_exp, dim)
    except (KeyError, AttributeError) as exc:
        raise ValueError(f"not a PhAI state_dict (missing {exc})") from None
    n_grid = int(proj[1])
    m = next((m for m in range(1, 64) if (2 * m + 1) * (m + 1) ** 2 == n_grid), None)
    if m is None:
        raise ValueError(f"projection input {n_grid} is no (2m+1)(m+1)^2 grid")
    return ModelConfig(max_index=m, filters=int(stem[0]), kernel=int(stem[-1]), cnn_depth=len(conv),
                       dim=int(proj[0]), dim_exp=int(channel[0]), dim_token_exp=int(token[0]),
                       mlp_depth=len(mixer), reflections=int(out[0]) // 2)


def _stored_config(ckpt: Mapping[str, Any]) -> dict[str, Any] | None:
    """A ModelConfig-like dict stored in a trainer checkpoint, wherever the trainer put it."""
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    cfg = ckpt.get("config")
    for cand in (ckpt.get("model_config"), cfg.get("model") if isinstance(cfg, Mapping) else None, cfg):
        if isinstance(cand, Mapping) and names & set(cand):
            return {k: v for k, v in cand.items() if k in names}
    return None


def _weights(obj: Mapping[str, Any], info: dict) -> tuple[Mapping[str, Any], dict | None]:
    """The state_dict to load ("ema" weights preferred) and the stored model config; fills `info`."""
    key = next((k for k in ("ema", "model", "state_dict") if isinstance(obj.get(k), Mapping)), None)
    if key is None:
        info["format"] = "bare"
        return obj, None
    info["format"], info["weights"] = "trainer", key
    ts = obj.get("train_state")
    if isinstance(ts, Mapping) and isinstance(ts.get("step"), int):
        info["step"] = ts["step"]
    elif isinstance(obj.get("step"), int):
        info["step"] = obj["step"]
    if isinstance(obj.get("format"), str):
        info["checkpoint_format"] = obj["format"]
    return obj[key], _stored_config(obj)


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedModel:
    """A trainer checkpoint or a bare (published) PhAI state_dict, as a PhAINet in eval mode on `device`.

    The stored model config (trainer checkpoints) is cross-checked against the weights' shapes and "hkl_sha256"
    against the reflection list; "train_state"["step"] is reported.

    Raises:
        CheckpointError / ValueError: unreadable file, not a PhAI state_dict, or a stored config that disagrees.
    """
    p = Path(path)
    obj = read_checkpoint(p)
    info: dict[str, Any] = {"name": p.name, "sha256": sha256_file(p)}
    weights, stored = _weights(obj, info)
    sd = _strip(weights)
    cfg = config_from_state_dict(sd)
    if stored is not None:
        try:
            want = ModelConfig(**stored)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {p} stores an invalid model config: {exc}") from None
        if want != cfg:
            raise CheckpointError(f"checkpoint {p}: stored config {config_dict(want)} does not match the weights "
                                  f"{config_dict(cfg)}")
    hkl_sha = obj.get("hkl_sha256") if info["format"] == "trainer" else None
    if isinstance(hkl_sha, str) and hkl_sha != hkl_hash(phai_hkl(cfg.max_index)):
        raise CheckpointError(f"checkpoint {p} was trained on another reflection list (hkl_sha256 {hkl_sha[:16]}…)")
    model = PhAINet(cfg)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {p} does not load into PhAINet: {' '.join(str(exc).split())[:300]}") \
            from None
    info["config"] = config_dict(cfg)
    return LoadedModel(model=model.to(device).eval(), config=cfg, info=info)


# ----------------------------------------------------------------------------- resume

def check_resume(ck: dict, cfg: TrainConfig, sources_desc: list[dict], val_desc: dict, world: int) -> None:
    """A resume must continue the same run: same settings (but RESUMABLE), same data, more steps, and a number of
    processes its loader layout allows (any that divides its streams; a version-1 state: its own process count).

    Manifests are compared by content (sha256), so any spelling of their paths, from any working directory, is
    the same data.

    Raises:
        ValueError: what differs, and what may change on resume.
    """
    old, new = flat_dict(TrainConfig.from_dict(ck["config"]["train"])), flat_dict(cfg)
    skip = set(RESUMABLE) | {"train", "val"}
    diff = sorted(k for k in set(old) | set(new) if k not in skip and old.get(k) != new.get(k))
    if diff:
        raise ValueError(f"--resume: the checkpoint was trained with other settings ({', '.join(diff)}); "
                         f"only {', '.join(RESUMABLE)} may change on resume")
    was = [s["manifest_sha256"] for s in ck["config"]["sources"]]
    if was != [s["manifest_sha256"] for s in sources_desc]:
        raise ValueError("--resume: the training manifests are not the checkpoint's (their sha256 differ: other "
                         f"data, or another order); it trained on {', '.join(s['manifest'] for s in ck['config']['sources'])}")
    if ck["config"]["val"]["manifest_sha256"] != val_desc["manifest_sha256"]:
        raise ValueError(f"--resume: the validation manifest is not the checkpoint's ({ck['config']['val']['manifest']})")
    try:  # any number of processes that divides the loader's streams (training/data.py "Layout")
        resume_state(ck["dataloader"], cfg.data_config(world), world, cfg.workers)
    except ValueError as exc:
        raise ValueError(f"--resume: {exc} (the checkpoint ran on {ck['dataloader']['world']})") from None
    if ck["hkl_sha256"] != hkl_hash(phai_hkl(preset(cfg.preset).max_index)):
        raise ValueError("--resume: the checkpoint's reflection set is not this model's")
    if cfg.steps <= ck["train_state"]["step"]:
        raise ValueError(f"--resume: the checkpoint is at step {ck['train_state']['step']}; "
                         f"pass --steps larger than that to continue")
