"""Locks on an output folder, released by the OS if the holder dies.

A plain run (or a training run) holds :class:`RunLock`, ``.synthface.lock``, exclusively; the
jobs of a ``generate --part`` array hold it shared, each with its own part lock beside it
(:class:`PartLock`), so parts run side by side while a plain run cannot run beside them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from synthface.errors import InputError

LOCK_NAME = ".synthface.lock"


class RunLock:
    """An exclusive lock on an output directory (released by the OS if the holder dies)."""

    def __init__(self, directory: Path) -> None:
        from filelock import FileLock

        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self._lock = FileLock(str(self.path), timeout=0)

    def acquire(self) -> None:
        from filelock import Timeout

        self.directory.mkdir(parents=True, exist_ok=True)
        try:  # a lock file that cannot be created is not a lock someone holds: say which it is
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644))
        except OSError as exc:
            raise InputError(
                f"cannot create the lock file {self.path} ({exc.strerror}): choose a folder you can write to"
            ) from None
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            raise InputError(
                f"another synthface run is writing to {self.directory} (lock {self.path} is held): "
                "wait for it to finish or choose another --out"
            ) from None

    def release(self) -> None:
        if self._lock.is_locked:
            self._lock.release()

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


class PartLock:
    """Part I/N's hold on --out: ``.synthface.part-I-of-N.lock`` exclusively (one job per part) and
    the run lock ``.synthface.lock`` shared, so part jobs run side by side while a plain run (which
    takes the run lock exclusively) cannot run beside them. The OS releases both if the holder dies;
    on a filesystem without flock support the part jobs go on unguarded."""

    def __init__(self, out: Path, index: int, parts: int) -> None:
        import fcntl

        self.out = out
        self.locks = [
            (out / LOCK_NAME, fcntl.LOCK_SH, "a synthface run without --part is writing to"),
            (out / f".synthface.part-{index}-of-{parts}.lock", fcntl.LOCK_EX, f"another job is writing part {index}/{parts} to"),
        ]
        self.fds: list[int] = []

    def acquire(self) -> None:
        import fcntl

        self.out.mkdir(parents=True, exist_ok=True)
        for path, mode, who in self.locks:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                self.release()
                raise InputError(
                    f"{who} {self.out} (lock {path} is held): wait for it to finish or choose another --out"
                ) from None
            except OSError:  # no flock here
                os.close(fd)
                continue
            self.fds.append(fd)

    def release(self) -> None:
        while self.fds:
            os.close(self.fds.pop())
