"""Crash safety: `synthface generate` killed with SIGKILL at random instants, then resumed, writes
exactly the dataset an uninterrupted run writes (same rows and image bytes, no duplicates, no gaps),
with one process and with two (accelerate launch)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from helpers_generate import make_tiny_model, read_rows

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]  # several launched runs, each allowed 600 s

ROOT = Path(__file__).resolve().parents[1]
SETS = [
    "identities.count=64",
    "images_per_identity=4",
    "shard_identities=2",
    "sampling.scheduler=ddpm",
    "sampling.steps=4",
    "sampling.batch_size=4",
    "sampling.dtype=fp32",
    "filter.enabled=false",
    "output.image_format=png",
    "output.image_size=16",
]
SHARDS, IMAGES = 32, 256
MIN_KILLS = 10


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _command(model: Path, out: Path, processes: int) -> list[str]:
    args = ["generate", "--model", str(model), "--out", str(out)] + [x for s in SETS for x in ("--set", s)]
    if processes == 1:
        return [sys.executable, "-m", "synthface", *args]
    accelerate = str(Path(sys.executable).parent / "accelerate")
    return [
        accelerate, "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
        "-m", "synthface", *args,
    ]  # fmt: skip


def _started(out: Path, since_ns: int) -> bool:
    """The run has locked the directory and written its config (config.yaml is rewritten each run)."""
    try:
        return (out / "config.yaml").stat().st_mtime_ns >= since_ns
    except FileNotFoundError:
        return False


def _kill_tree(proc: subprocess.Popen) -> None:
    try:
        tree = psutil.Process(proc.pid).children(recursive=True) + [psutil.Process(proc.pid)]
    except psutil.NoSuchProcess:
        tree = []
    for p in tree:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    proc.wait(timeout=60)
    psutil.wait_procs(tree, timeout=30)


def _committed(out: Path) -> int:
    return len(list((out / "data").glob(".train-*.json"))) if (out / "data").is_dir() else 0


def _run(
    model: Path, out: Path, processes: int, kill_after: float | None = None, after_commits: int = 0
) -> tuple[str | None, list[float]]:
    """Run once. With ``kill_after``, SIGKILL the whole process tree ``kill_after`` seconds after the
    run has started writing (``after_commits`` = 0) or after it has committed that many new shards.
    Returns (where the kill landed, or None if the run had already ended; commit times)."""
    since = time.time_ns() - 1
    proc = subprocess.Popen(
        _command(model, out, processes), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 600
    while not _started(out, since):
        if proc.poll() is not None:
            if proc.returncode == 0 and _committed(out) == SHARDS:  # a kill landed after the last commit: nothing left to do
                return None, []
            raise AssertionError(f"run exited before starting: {proc.stderr.read().decode()[-2000:]}")
        if time.monotonic() > deadline:
            _kill_tree(proc)
            raise AssertionError("run did not start within 600 s")
        time.sleep(0.02)
    base, commits, seen = _committed(out), [], _committed(out)
    began = time.monotonic()
    trigger = began if after_commits == 0 else None
    while proc.poll() is None:
        now = _committed(out)
        if now > seen:
            commits.extend([time.monotonic()] * (now - seen))
            seen = now
        if trigger is None and now - base >= after_commits:
            trigger = time.monotonic()
        if kill_after is not None and trigger is not None and time.monotonic() - trigger >= kill_after:
            break
        if time.monotonic() > deadline:
            break
        time.sleep(0.005)
    if kill_after is None:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err.decode()[-3000:]
        return None, commits
    alive = proc.poll() is None
    torn = list((out / "data").glob(".*.tmp")) if (out / "data").is_dir() else []
    _kill_tree(proc)
    if not alive:
        return None, commits
    phase = "writing a file" if torn else ("before any commit" if _committed(out) == base else "rendering")
    return f"{phase}, {_committed(out) - base} new shard(s)", commits


def _snapshot(out: Path) -> dict[str, bytes]:
    files = sorted((out / "data").glob("train-*.parquet")) + sorted((out / "data").glob(".train-*.json"))
    return {p.name: p.read_bytes() for p in files + [out / "identities.parquet"]}


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("resume") / "tiny")


@pytest.fixture(scope="module")
def reference(model, tmp_path_factory) -> tuple[Path, float]:
    out = tmp_path_factory.mktemp("reference") / "out"
    _, commits = _run(model, out, 1)
    assert len(commits) >= 2
    return out, float(np.median(np.diff(commits)))  # seconds per shard


@pytest.mark.parametrize("processes", [1, 2])
def test_killed_and_resumed_run_equals_uninterrupted_run(model, reference, tmp_path, processes):
    ref_out, shard_seconds = reference
    out = tmp_path / "out"
    rng = np.random.default_rng(processes)
    kills: list[str] = []
    for attempt in range(40):
        if len(kills) >= MIN_KILLS:
            break
        if attempt % 4 == 0:  # during start-up: lock, config, model load, identity plan
            landed, _ = _run(model, out, processes, kill_after=float(rng.uniform(0.0, 3.0)))
        else:  # mid-run: a random instant within about one shard after this run's first commit
            landed, _ = _run(model, out, processes, kill_after=float(rng.uniform(0.0, 1.5 * shard_seconds)), after_commits=1)
        if landed is not None:
            kills.append(f"{landed} ({_committed(out)}/{SHARDS} committed)")
    assert len(kills) >= MIN_KILLS, f"only {len(kills)} kills hit a running process"
    _run(model, out, processes)  # resume to the end
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == IMAGES and summary["processes"] == processes

    rows, expected = read_rows(out), read_rows(ref_out)
    keys = [(r["identity"], r["sample"]) for r in rows]
    assert len(keys) == len(set(keys)) == IMAGES, "duplicates or gaps"
    assert keys == [(i, j) for i in range(IMAGES // 4) for j in range(4)]
    assert rows == expected  # same labels, seeds and image bytes
    assert _snapshot(out) == _snapshot(ref_out)  # byte-identical shards, markers and identity table
    assert not list((out / "data").glob(".*.tmp")) and not list(out.glob(".*.tmp"))
    print(f"\n{processes} process(es), {len(kills)} kills:\n  " + "\n  ".join(kills))


def test_a_second_launch_on_a_directory_being_written_is_refused(model, tmp_path):
    """A real second launch (two processes, accelerate) while a first run holds the directory."""
    out = tmp_path / "out"
    big = [x for s in ["identities.count=400"] for x in ("--set", s)]
    since = time.time_ns() - 1
    first = subprocess.Popen(_command(model, out, 1) + big, cwd=ROOT, env=_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 600
        while not _started(out, since):
            assert first.poll() is None and time.monotonic() < deadline, "the first run did not start"
            time.sleep(0.05)
        second = subprocess.run(_command(model, out, 2) + big, cwd=ROOT, env=_env(), capture_output=True, timeout=600)
        assert first.poll() is None, "the first run ended before the second one was refused: make it longer"
    finally:
        _kill_tree(first)
    text = second.stderr.decode()
    assert second.returncode != 0
    assert "another synthface run is writing to" in text, text[-2000:]
    assert text.count("another synthface run is writing to") == 2  # both processes say why, none hangs
