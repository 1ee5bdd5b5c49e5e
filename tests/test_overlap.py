"""Overlap of sampling with selection, encoding and writing (sampling.overlap): the same bytes as
the serial path, errors raised in the run, a clean stop on SIGTERM/SIGINT and a resume after it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from helpers_generate import make_tiny_model, read_rows, tiny_recipe
from test_filter_support import PROJ, ProjEmbedder, filtered_recipe, register_proj
from synthface.generator.overlap import Inline, Worker, make_stage
from synthface.generator.run import generate_dataset

ROOT = Path(__file__).resolve().parents[1]


def _files(out: Path) -> dict[str, bytes]:
    """Every file a run wrote under data/ and filter/, by relative path."""
    return {
        str(p.relative_to(out)): p.read_bytes() for d in ("data", "filter") for p in sorted((out / d).glob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("overlap") / "model")


# --------------------------------------------------------------------------- the stage itself


def test_worker_runs_tasks_in_order_behind_the_caller() -> None:
    seen: list[int] = []
    gate = threading.Event()

    def task(i: int) -> None:
        gate.wait(5)
        seen.append(i)

    with make_stage(True, depth=2) as stage:
        assert isinstance(stage, Worker)
        for i in range(2):
            stage.submit(task, i)  # the caller runs ahead while the worker waits
        assert seen == []
        gate.set()
        for i in range(2, 20):
            stage.submit(task, i)
    assert seen == list(range(20))
    assert isinstance(make_stage(False), Inline)


def test_a_task_error_reaches_the_caller_and_stops_later_tasks() -> None:
    seen: list[int] = []

    def task(i: int) -> None:
        if i == 3:
            raise ValueError("task 3 failed")
        seen.append(i)

    with pytest.raises(ValueError, match="task 3"):
        with Worker(depth=1) as stage:
            for i in range(50):
                stage.submit(task, i)
                time.sleep(0.002)
    assert seen == [0, 1, 2]


def test_a_caller_error_cancels_what_was_not_started() -> None:
    seen: list[int] = []
    started = threading.Event()

    def slow(i: int) -> None:
        started.set()
        time.sleep(0.2)
        seen.append(i)

    with pytest.raises(KeyboardInterrupt):
        with Worker(depth=4) as stage:
            for i in range(4):
                stage.submit(slow, i)
            started.wait(5)
            raise KeyboardInterrupt
    assert seen == [0]  # the task in progress finished; the queued ones never ran


# --------------------------------------------------------------------------- runs


@pytest.mark.parametrize(
    "batch, sets", [(3, []), (5, []), (3, ["variation.identity_cosine=[0.9,1.0]", "variation.guidance_scale=[2.0,3.0]"])]
)
def test_overlap_writes_the_bytes_of_the_serial_run(model_dir, tmp_path, batch, sets) -> None:
    """Filtered runs (oversampling, identities dropped, several shards; with per-image variation) with overlap on and off."""
    register_proj()
    outs = {}
    for overlap in (True, False):
        recipe = filtered_recipe(model_dir, f"sampling.batch_size={batch}", f"sampling.overlap={str(overlap).lower()}", *sets)
        outs[overlap] = tmp_path / f"out-{overlap}"
        summary = generate_dataset(recipe, outs[overlap])
        assert summary["shards_written"] == 3
    on, off = _files(outs[True]), _files(outs[False])
    assert sorted(on) == sorted(off) and len(on) >= 9  # 3 shards, their markers and filter records
    assert on == off
    assert (outs[True] / "identities.parquet").read_bytes() == (outs[False] / "identities.parquet").read_bytes()


def test_an_error_in_the_writer_thread_stops_the_run_and_resume_finishes(model_dir, tmp_path, monkeypatch) -> None:
    from synthface.faces.embedders import register_embedder

    register_proj()
    reference = tmp_path / "reference"
    generate_dataset(filtered_recipe(model_dir, "sampling.overlap=false"), reference)

    class Failing(ProjEmbedder):
        calls = 0

        def embed(self, images, landmarks, boxes=None):
            Failing.calls += 1
            if Failing.calls == 4:  # the filter of the 4th identity: in the second shard
                raise RuntimeError("embedder failed")
            return super().embed(images, landmarks, boxes)

    register_embedder(PROJ, lambda device="auto", weights=None: Failing())
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="embedder failed"):
        generate_dataset(filtered_recipe(model_dir), out)
    assert not list((out / "data").glob(".*.tmp")) and not list((out / "data").glob("*.tmp"))
    assert len(list((out / "data").glob("train-*.parquet"))) == 1  # the first shard only, committed
    register_proj()
    summary = generate_dataset(filtered_recipe(model_dir), out)
    assert summary["shards_skipped"] == 1 and summary["shards_written"] == 2
    assert _files(out) == _files(reference)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


SETS = ["identities.count=40", "images_per_identity=2", "shard_identities=2", "sampling.scheduler=ddpm",
        "sampling.steps=2", "sampling.batch_size=2", "sampling.dtype=fp32", "filter.enabled=false",
        "output.image_format=png", "output.image_size=16", "sampling.overlap=true"]  # fmt: skip


def _generate(model: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "synthface", "generate", "--model", str(model), "--out", str(out)] + [
        x for s in SETS for x in ("--set", s)
    ]


@pytest.mark.timeout(1800)  # a signalled run (120 s) then its resume (600 s)
@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stops_the_run_cleanly_and_resume_ends_in_the_same_files(model_dir, tmp_path, sig, code) -> None:
    """A real process, signalled after its first committed shard: it exits with the signal's code,
    leaves no temp file and no half-written shard, and a resumed run ends in the uninterrupted run's bytes."""
    from synthface.config import GenerateRecipe, load_recipe

    reference = tmp_path / "reference"
    generate_dataset(load_recipe(GenerateRecipe, None, [f"model={model_dir}", *SETS]), reference)
    out = tmp_path / "out"
    proc = subprocess.Popen(_generate(model_dir, out), cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while not list((out / "data").glob(".train-*.json")):
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended before its first shard: make it longer"
            time.sleep(0.02)
        proc.send_signal(sig)
        output = proc.communicate(timeout=120)[0].decode()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, output
    assert "interrupted" in output
    data = out / "data"
    assert not [p.name for p in data.iterdir() if p.name.endswith(".tmp")]
    committed = sorted(p.name for p in data.glob("train-*.parquet"))
    assert 1 <= len(committed) < 20, "the signal landed after the run ended: make it longer"
    reference_files = _files(reference)
    for name in committed:  # every shard on disk is complete
        assert (data / name).read_bytes() == reference_files[f"data/{name}"]
    resumed = subprocess.run(_generate(model_dir, out), cwd=ROOT, env=_env(), capture_output=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout.decode()[-2000:]
    assert _files(out) == reference_files
    assert read_rows(out) == read_rows(reference)


def test_overlap_is_free_to_change_on_resume(model_dir, tmp_path) -> None:
    out = tmp_path / "out"
    generate_dataset(tiny_recipe(model_dir, "sampling.overlap=false"), out)
    summary = generate_dataset(tiny_recipe(model_dir, "sampling.overlap=true"), out)
    assert summary["resumed"] and summary["shards_written"] == 0
