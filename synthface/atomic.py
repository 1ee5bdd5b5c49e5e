"""Crash-safe files: every output is written to a temp file in its own folder, fsynced, then moved into place.

A reader never sees a half-written file, and a process killed at any instant leaves either the old
file or the new one, plus at most a temp file ``.NAME.XXXXXXXX.tmp`` that :func:`clean_temp` removes.
An output of several files (a report, an export) is written through :func:`staged_folder`: all of
them appear, or none.

This module is the one place in the package that writes files (tools/check_writes.py enforces it):
text, bytes, JSON, NumPy and torch files, copies, whole folders, and the one kind of write that is
not a replace, :func:`append_text` (a log that grows line by line).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, BinaryIO, Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()
_DIR_MODE = 0o777 & ~_umask()  # for folders made by tempfile.mkdtemp (0700) that become outputs


def fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[BinaryIO]:
    """A binary file to write ``path`` through: a temp file in the same directory (parents created)
    that, when the block succeeds, is flushed, fsynced and moved into place with ``os.replace`` (the
    directory fsynced too); when it fails, the temp file is removed and ``path`` is as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _FILE_MODE)  # mkstemp makes 0600; outputs should be as readable as any file
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError) and not exc.filename:
            raise named(exc, path) from exc
        raise
    fsync_dir(path.parent)


def named(exc: OSError, path: str | Path) -> OSError:
    """``exc`` naming ``path`` when it names no file (a write to an open handle on a full disk names
    none): the message then says which file could not be written, and why."""
    if exc.filename:
        return exc
    return OSError(exc.errno, exc.strerror or str(exc) or type(exc).__name__, str(path))


# how safetensors (Rust) reports an OS error: "... IoError(Os { code: 28, kind: StorageFull, message: "No space ..." })"
_RUST_OS_ERROR = re.compile(r'Os \{ code: (\d+), kind: \w+, message: "([^"]+)"')
_FULL = 1 << 20  # free bytes under which a failed write is put down to a full disk


@contextlib.contextmanager
def writing_to(path: str | Path) -> Iterator[None]:
    """Inside, an OSError that names no file is raised naming ``path`` (see :func:`named`); so is the
    error a library's own writer makes of an OS error (safetensors' ``IoError(Os { code: 28 ...})``,
    torch's ``PytorchStreamWriter failed writing file`` on a disk with no space left)."""
    try:
        yield
    except OSError as exc:
        if exc.filename:
            raise
        raise named(exc, path) from exc
    except Exception as exc:  # noqa: BLE001 - re-raised unchanged unless it is an OS error in disguise
        found = _RUST_OS_ERROR.search(str(exc))
        if found:
            raise OSError(int(found[1]), found[2], str(path)) from exc
        if _free_bytes(Path(path)) < _FULL:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from exc
        raise


def _free_bytes(path: Path) -> int:
    for folder in (path, *path.parents):
        if folder.exists():
            try:
                return shutil.disk_usage(folder).free
            except OSError:
                return _FULL
    return _FULL


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_file`)."""
    with atomic_file(path) as handle:
        handle.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, data: dict[str, Any]) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=2, sort_keys=True, default=str) + "\n").encode())


def atomic_save_npy(path: str | Path, array: Any) -> None:
    """``np.save`` of ``array`` to ``path`` atomically."""
    import numpy as np

    with atomic_file(path) as handle:
        np.save(handle, array)


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` of ``obj`` to ``path`` atomically.

    Serialised in memory first: torch's writer turns a full disk into a RuntimeError without the
    reason; a plain write raises the OSError (ENOSPC) that names it and, through atomic_file, the path.
    """
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_file(path) as handle:
        handle.write(buffer.getbuffer())


def atomic_copy(src: str | Path, dst: str | Path) -> None:
    """A copy of the file ``src`` at ``dst``, written atomically (the copy is complete or absent)."""
    with open(src, "rb") as source, atomic_file(dst) as handle:
        shutil.copyfileobj(source, handle, 1 << 20)


def copy_folder(src: str | Path, dst: str | Path) -> None:
    """A copy of the folder ``src`` in place of ``dst``, whole (see :func:`staged_folder` with ``replace``)."""
    with staged_folder(Path(dst), replace=True) as stage:
        shutil.copytree(src, stage, dirs_exist_ok=True)


def append_text(path: str | Path, text: str) -> None:
    """Append ``text`` to ``path`` (created with its parents), flushed and fsynced.

    The one write that is not a replace: a log that grows as a run goes. A kill can leave a torn
    last line; readers of such logs stop at it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8", newline="") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def move_into_place(src: str | Path, dst: str | Path) -> None:
    """Rename the complete file ``src`` to ``dst`` (same folder), fsynced before and after.

    For writers that must produce a file under their own temp name (an external tool, a library
    that takes a path); everything else uses :func:`atomic_file`.
    """
    src, dst = Path(src), Path(dst)
    fd = os.open(src, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(src, dst)
    fsync_dir(dst.parent)


@contextlib.contextmanager
def staged_folder(out: Path, *, replace: bool = False) -> Iterator[Path]:
    """A temp folder beside ``out`` to write into; what it holds reaches ``out`` only when the block
    succeeds, so a command that fails (a full disk, an error) leaves no partial output and no temp
    folder, and ``out`` as it was.

    On success the staged files are moved into ``out`` one by one (``os.replace``: a report of
    several files; other files in ``out`` stay), or, with ``replace``, the staged folder takes the
    place of ``out`` whole (renames in one folder: an earlier ``out`` is moved aside, then removed).
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        os.chmod(stage, _DIR_MODE)  # mkdtemp makes 0700; the folder may become the output itself
        yield stage
        if replace:
            replace_folder(stage, out)
        else:
            out.mkdir(parents=True, exist_ok=True)
            for item in sorted(stage.iterdir()):
                os.replace(item, out / item.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def replace_folder(new: Path, out: Path) -> None:
    """Put the complete folder ``new`` in place of ``out`` (both in the same folder), whole.

    Where the kernel can swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``) ``out``
    is never absent; elsewhere an earlier ``out`` is moved aside and the new one renamed in at once
    after it. The earlier folder is removed afterwards.
    """
    new, out = Path(new), Path(out)
    fsync_dir(new)
    if out.exists() and _exchange(new, out):
        shutil.rmtree(new, ignore_errors=True)  # ``new`` now names the earlier folder
        fsync_dir(out.parent)
        return
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.old")
        os.replace(out, old)
    os.replace(new, out)
    fsync_dir(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap the paths ``a`` and ``b`` atomically; False where the platform cannot."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


# what atomic_write_bytes leaves behind when killed: ".NAME." + mkstemp's 8 random characters + ".tmp"
_TEMP = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]{8}\.tmp$")


def clean_temp(directory: Path, names: re.Pattern[str]) -> int:
    """Remove temp files a killed writer left in ``directory``: only ours, ``.NAME.XXXXXXXX.tmp``
    with NAME a file synthface writes there (``names`` matches it whole); a user's ``.notes.tmp`` stays."""
    removed = 0
    if not directory.is_dir():
        return 0
    for tmp in directory.glob(".*.tmp"):
        match = _TEMP.match(tmp.name)
        if match is None or names.fullmatch(match["name"]) is None or not tmp.is_file():
            continue
        try:
            tmp.unlink()
            removed += 1
        except OSError:
            pass
    return removed
