"""Claims between concurrent writers of one directory (processes on one host or on a cluster's shared disk).

A `Claim` is an exclusive lock on `DIR/.locks/NAME.lock` taken with the `filelock` package (flock(2); on a
filesystem without flock filelock falls back to a marker file that records host and pid and is broken when
its owner is dead). The kernel (or the NFS server, for NFSv4 and lockd) drops a lock when its holder dies,
so a killed writer never leaves a claim behind. While it holds a claim, the holder's "host pid" is written
beside it (`NAME.owner`), so that a waiting process can say whom it waits for.

Temporary files are named `.NAME.partial-HOST-PID` (`manifests.schema.partial_name`); `remove_debris` deletes
only those whose owner is dead: the holder of a shard's claim may delete that shard's debris, anyone may
delete debris of a pid that no longer runs on this host, and nobody touches a live process's file.
"""
from __future__ import annotations

import os
from pathlib import Path

from filelock import FileLock, Timeout

from manifests.schema import host_name

__all__ = ["LOCK_DIR", "Claim", "owner_alive", "remove_debris"]

LOCK_DIR = ".locks"


class Claim:
    """An exclusive, non-reentrant claim on `name` within `directory`; use `try_acquire` or `acquire`."""

    def __init__(self, directory: str | Path, name: str) -> None:
        self.dir = Path(directory) / LOCK_DIR
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self._lock = FileLock(str(self.dir / f"{name}.lock"))

    def try_acquire(self) -> bool:
        """Take the claim if it is free; False while another process (or another Claim object) holds it."""
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            return False
        self._note_owner()
        return True

    def acquire(self, timeout: float | None = None) -> bool:
        """Wait for the claim (at most `timeout` seconds; None: as long as it takes). True once held."""
        try:
            self._lock.acquire(timeout=-1 if timeout is None else timeout, poll_interval=0.1)
        except Timeout:
            return False
        self._note_owner()
        return True

    def release(self) -> None:
        if self._lock.is_locked:
            self._lock.release()

    def holder(self) -> str:
        """The last recorded holder, "HOST pid PID" (informational: read without the lock)."""
        try:
            host, pid = (self.dir / f"{self.name}.owner").read_text().split()
            return f"{host} pid {pid}"
        except (OSError, ValueError):
            return "another process"

    def _note_owner(self) -> None:
        try:
            (self.dir / f"{self.name}.owner").write_text(f"{host_name()} {os.getpid()}\n")
        except OSError:
            pass  # only a message depends on it

    def __enter__(self) -> Claim:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def owner_alive(partial: Path) -> bool:
    """Whether the writer named by a `.NAME.partial-HOST-PID` file may still be running. A pid on this host is
    checked; another host's writer (or an unparsable name) counts as alive: never delete what may be live."""
    tag = partial.name.rsplit(".partial-", 1)[-1]
    host, _, pid = tag.rpartition("-")
    if not pid.isdigit() or host != host_name():  # another host's, or an old `.partial-PID` name: unknown
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def remove_debris(directory: Path, pattern: str, claimed: bool = False) -> int:
    """Remove temporary files matching `pattern` in `directory` left by dead writers. With `claimed` (the caller
    holds the claim of the file they belong to) every match is a dead writer's. Returns how many went."""
    n = 0
    for debris in sorted(Path(directory).glob(pattern)):
        if claimed or not owner_alive(debris):
            debris.unlink(missing_ok=True)
            n += 1
    return n
