"""Locks on an output folder, released by the OS if the holder dies.

A plain run (or a training run) holds :class:`RunLock`, ``.synthface.lock``, exclusively; the
jobs of a ``generate --part`` array hold it shared, each with its own part lock beside it
(:class:`PartLock`), so parts run side by side while a plain run cannot run beside them.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Any, Iterator

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
        for _ in range(3):
            try:
                self._lock.acquire(timeout=0)
            except Timeout:
                raise InputError(
                    f"another synthface run is writing to {self.directory} (lock {self.path} is held): "
                    "wait for it to finish or choose another --out"
                ) from None
            if self._current():
                return
            # the folder was replaced whole (an export) between opening the lock file and locking it:
            # the lock is on the old folder's file; take the new one's
            self._lock.release()
        raise InputError(f"{self.directory} keeps being replaced by another synthface run: wait for it to finish")

    def _current(self) -> bool:
        """True when the locked file is still the one at ``self.path``."""
        fd = getattr(getattr(self._lock, "_context", None), "lock_file_fd", None)
        if fd is None:
            return True
        try:
            return os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except OSError:
            return False

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

    def __enter__(self) -> "PartLock":
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


LOCK_FILES = re.compile(r"^\.synthface(\.part-\d+-of-\d+)?\.lock$")


@contextlib.contextmanager
def output_lock(out: Path) -> Iterator[RunLock]:
    """Hold ``out``'s :class:`RunLock` (the lock ``generate`` takes) for a command's whole run, so a
    second command writing the same folder is refused instead of overwriting the first's files. A
    folder the lock had to create is removed again when the run fails before writing anything else
    into it (a failed start leaves no folder)."""
    out = Path(out)
    created = not out.exists()
    lock = RunLock(out)
    lock.acquire()
    try:
        yield lock
    except BaseException:
        lock.release()
        if created:
            remove_if_unused(out)
        raise
    lock.release()


def remove_if_unused(out: Path) -> None:
    """Remove ``out`` when it holds nothing but synthface's lock files."""
    try:
        entries = list(out.iterdir())
        if all(LOCK_FILES.match(p.name) and p.is_file() for p in entries):
            for path in entries:
                path.unlink()
            out.rmdir()
    except OSError:
        pass
