"""No tracked file names an absolute path of a development machine: every figure is re-checkable from a clone."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# home folders and the development box's work tree; /data/... in examples is a user's path, not ours
MACHINE_PATH = re.compile(r"(?<![\w.~-])/(?:work|root|home/[\w.-]+)/[\w.-]")


def test_no_tracked_file_holds_an_absolute_path_of_a_development_machine():
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout: the tracked files are unknown")
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout.split(b"\0")
    found = []
    for name in filter(None, files):
        path = REPO / name.decode()
        if not path.is_file() or path.stat().st_size > 5_000_000:
            continue
        data = path.read_bytes()
        if b"\0" in data[:4096]:  # binary (images, weights)
            continue
        for number, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
            if MACHINE_PATH.search(line):
                found.append(f"{name.decode()}:{number}: {line.strip()[:120]}")
    assert not found, "absolute machine paths (use repository-relative paths, $VARS or flags):\n" + "\n".join(found[:20])
