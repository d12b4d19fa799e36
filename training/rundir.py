"""The run directory (`fit --out`): one writer at a time, and the metrics log that survives crashes.

Lock: `RunLock` holds an exclusive `filelock` lock on OUT/.train.lock (fcntl.flock, which the kernel releases when
the holder dies, and which NFS v4 and Lustre with `-o flock` honour across nodes) and records the holder's host,
pid and start time in OUT/.train.lock.json. A second `fit` on the same OUT is refused with one line naming that
holder. A record left by a holder that died without releasing is stale: it is replaced, with a note. Where the
filesystem has no flock at all, the record itself is the lock (created with O_EXCL); a stale one is recognised when
its pid no longer runs on this host, and one from another host is named so that a person can remove it.

Metrics: OUT/metrics.jsonl, one JSON object per line. A resume cuts it back to the checkpoint's step (a killed run
may have logged further); a torn last line (a crash in the middle of a write) is cut with a note.
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Callable

import filelock

from manifests.schema import ManifestError, partial_name, write_json_atomic

__all__ = ["RunLock", "RunLockedError", "LOCK_NAME", "OWNER_NAME", "open_metrics", "log_json", "tensorboard",
           "tb_log"]

LOCK_NAME, OWNER_NAME = ".train.lock", ".train.lock.json"


class RunLockedError(ManifestError):
    """Another process holds the run directory."""


def _owner_text(rec: dict | None) -> str:
    if not rec:
        return "another process (it has not recorded itself yet)"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(rec.get("started", 0)))
    return f"pid {rec.get('pid')} on host {rec.get('host')} (since {since})"


def _read_owner(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


class RunLock:
    """Exclusive use of a run directory by one trainer process (rank 0); a context manager.

    Raises (on entry):
        RunLockedError: another live process holds it (the message names its host and pid).
    """

    def __init__(self, out: Path, log: Callable[[str], None] = print) -> None:
        self.out, self.log = Path(out), log
        self.owner = self.out / OWNER_NAME
        self._lock: filelock.BaseFileLock | None = None
        self._soft = False

    def __enter__(self) -> "RunLock":
        self.out.mkdir(parents=True, exist_ok=True)
        lock = filelock.FileLock(str(self.out / LOCK_NAME), timeout=0)
        try:
            lock.acquire()
        except filelock.Timeout:
            raise RunLockedError(f"{self.out} is in use by {_owner_text(_read_owner(self.owner))}: wait for that "
                                 "run to finish, or choose another --out") from None
        except (NotImplementedError, OSError):  # a filesystem without flock: the owner record is the lock
            self._soft = True
            self._soft_acquire()
            return self
        self._lock = lock
        stale = _read_owner(self.owner)
        if stale is not None:
            self.log(f"note: {self.out}: replaced the stale lock of {_owner_text(stale)}, which ended without "
                     "releasing it")
        self._write_owner(exclusive=False)
        return self

    def _record(self) -> dict:
        return {"host": socket.gethostname(), "pid": os.getpid(), "started": round(time.time(), 3)}

    def _write_owner(self, exclusive: bool) -> None:
        if not exclusive:
            write_json_atomic(self.owner, self._record())
            return
        fd = os.open(self.owner, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "wb") as fh:
            fh.write(json.dumps(self._record(), sort_keys=True).encode())

    def _soft_acquire(self) -> None:
        for _ in range(2):
            try:
                self._write_owner(exclusive=True)
                return
            except FileExistsError:
                rec = _read_owner(self.owner)
            here = rec is not None and rec.get("host") == socket.gethostname()
            if here and not _alive(int(rec.get("pid", -1))):
                self.log(f"note: {self.out}: removed the stale lock of {_owner_text(rec)} (no longer running)")
                self.owner.unlink(missing_ok=True)
                continue
            hint = "" if here else f"; if that process is gone, remove {self.owner}"
            raise RunLockedError(f"{self.out} is in use by {_owner_text(rec)}: wait for that run to finish, or "
                                 f"choose another --out{hint}")
        raise RunLockedError(f"{self.out}: could not take the lock {self.owner}; remove it if no run uses {self.out}")

    def __exit__(self, *exc) -> None:
        rec = _read_owner(self.owner)
        if rec is not None and rec.get("pid") == os.getpid() and rec.get("host") == socket.gethostname():
            self.owner.unlink(missing_ok=True)
        if self._lock is not None:
            self._lock.release()
            self._lock = None


# ----------------------------------------------------------------------------- metrics.jsonl and tensorboard

def _kept_lines(path: Path, step: int, log: Callable[[str], None]) -> list[str]:
    lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    keep = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            if i == len(lines) - 1:
                log(f"note: {path}: cut a torn last line (the previous run stopped in the middle of writing it)")
                break
            raise ManifestError(f"{path}: line {i + 1} is not JSON; move the file away (or repair that line) "
                                "to resume") from None
        if rec.get("step", 0) <= step:
            keep.append(line)
    return keep


def open_metrics(path: Path, step: int, log: Callable[[str], None] = print):
    """metrics.jsonl for appending, cut back to `step` (the checkpoint's) when it already exists."""
    if path.exists():
        keep = _kept_lines(path, step, log)
        tmp = partial_name(path)
        tmp.write_text("".join(line + "\n" for line in keep), encoding="utf-8")
        os.replace(tmp, path)
    return open(path, "a", encoding="utf-8")


def log_json(fh, rec: dict) -> None:
    if fh is not None:
        fh.write(json.dumps(rec, sort_keys=True) + "\n")
        fh.flush()


def tensorboard(out: Path):
    """A SummaryWriter on OUT/tb, or None when tensorboard is not installed (it is optional)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # noqa: BLE001 - tensorboard is optional
        return None
    return SummaryWriter(str(out / "tb"))


def tb_log(writer, rec: dict) -> None:
    if writer is None:
        return
    for k, v in rec.items():
        if isinstance(v, (int, float)) and k != "step":
            writer.add_scalar(f"{rec['kind']}/{k}", v, rec["step"])
