"""Processes under torchrun: who this process is, its process group, and naming a rank that fails.

torchrun reports a failed worker only in the log of that worker's node (its rank, host and exit code, without
the error), and the other ranks only see their backend's "Connection closed by peer" (gloo) or a NCCL error.
So a rank whose run fails records one line in the job's c10d store before it leaves the process group, and a
rank whose collective breaks waits briefly for such a record: every node's log then names the rank that failed,
its node and host, and its error. A rank that is killed (SIGKILL, out of memory) records nothing; the others
then say so, and torchrun's summary on its node names it.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from typing import Iterator

import torch
import torch.distributed as dist

from manifests.errors import one_line

__all__ = ["dist_info", "rank_label", "error_prefix", "RankFailed", "process_group"]

_KEY = "phaseforge/failed/{}"
_PEER_WAIT_S = 5.0  # how long a survivor waits for the failed rank's record
_COMMS = ("connection closed", "connection reset", "broken pipe", "gloo", "nccl", "socket")


def dist_info() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) in a plain process."""
    return (int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
            int(os.environ.get("LOCAL_RANK", "0")))


def rank_label() -> str:
    """'rank R of W (node N, local rank L, host H)': N is torchrun's GROUP_RANK, the node rank the rendezvous gave."""
    rank, world, local = dist_info()
    node = os.environ.get("GROUP_RANK", os.environ.get("SLURM_NODEID", "?"))
    return f"rank {rank} of {world} (node {node}, local rank {local}, host {socket.gethostname()})"


def error_prefix() -> str:
    """What starts an error line of this process: its rank label when there are several ranks, else nothing."""
    return f"{rank_label()}: " if dist_info()[1] > 1 else ""


class RankFailed(RuntimeError):
    """This rank stopped because another rank failed or vanished; the message names it."""


def _store():
    get = getattr(dist.distributed_c10d, "_get_default_store", None)
    try:
        return get() if get is not None and dist.is_initialized() else None
    except (RuntimeError, ValueError):
        return None


def _is_comms(exc: BaseException) -> bool:
    dist_error = getattr(dist, "DistError", ())
    return isinstance(exc, dist_error) or (isinstance(exc, RuntimeError) and
                                           any(w in str(exc).lower() for w in _COMMS))


def _peer_record(store, me: int, world: int) -> str | None:
    """Another rank's failure line, if one appears in the store within _PEER_WAIT_S."""
    deadline = time.monotonic() + _PEER_WAIT_S
    while True:
        for r in range(world):
            try:
                if r != me and store.check([_KEY.format(r)]):
                    return json.loads(store.get(_KEY.format(r)))["line"]
            except (RuntimeError, ValueError, KeyError):  # the store went with its host
                return None
        if time.monotonic() > deadline:
            return None
        time.sleep(0.1)


def _on_failure(exc: BaseException) -> None:
    """Record this rank's own failure for the others, or raise RankFailed naming the rank that broke the run."""
    store = _store()
    rank, world, _ = dist_info()
    if store is None or isinstance(exc, (KeyboardInterrupt, RankFailed)):
        return
    if _is_comms(exc):
        peer = _peer_record(store, rank, world)
        if peer is not None:
            raise RankFailed(f"stopped because {peer}") from exc
        raise RankFailed(f"lost contact with the other ranks ({one_line(exc)[:160]}): a rank stopped without "
                         "reporting an error (killed? out of memory?); torchrun's summary on its node names its "
                         "rank and exit code") from exc
    with contextlib.suppress(RuntimeError, ValueError):
        store.set(_KEY.format(rank), json.dumps({"line": f"{rank_label()} failed: {one_line(exc)}"}))


@contextlib.contextmanager
def process_group(world: int, device: torch.device) -> Iterator[None]:
    """The default process group for `world` > 1 ranks (NCCL on GPUs, gloo on CPUs), destroyed on the way out
    if made here; a failure inside is recorded or attributed as described in the module docstring."""
    made = world > 1 and not dist.is_initialized()
    if made:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield
    except BaseException as exc:
        if world > 1:
            _on_failure(exc)
        raise
    finally:
        if made and dist.is_initialized():
            dist.destroy_process_group()
