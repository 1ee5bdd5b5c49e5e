"""`synthface generate --part I/N` (job arrays): parts, then a plain final run, write exactly the
dataset of one uninterrupted run; parts share --out; bad parts and foreign configs are refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from helpers_generate import TINY_SETS, make_tiny_model, tiny_recipe
from synthface.cli.app import app
from synthface.config import write_resolved
from synthface.dataset.locks import PartLock, RunLock
from synthface.errors import ConfigError, InputError
from synthface.generator.run import generate_dataset, parse_part

SETS = ["identities.count=6"]  # 3 shards of 2 identities x 2 images
CLI_SETS = [*TINY_SETS, *SETS]  # the later identities.count wins


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("parts") / "tiny")


@pytest.fixture(scope="module")
def reference(model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "out"
    summary = generate_dataset(tiny_recipe(model_dir, *SETS), out)
    assert summary["shards"] == 3 and summary["images"] == 12
    return out


def _files(out: Path) -> dict[str, bytes]:
    """Shards, their markers and identities.parquet, byte for byte."""
    files = {p.name: p.read_bytes() for p in (out / "data").iterdir() if not p.name.endswith(".tmp")}
    files["identities.parquet"] = (out / "identities.parquet").read_bytes()
    return files


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["generate", *args])
    return result.exit_code, " ".join(result.output.split())


def _args(model_dir: Path, out: Path, *extra: str) -> list[str]:
    """The CLI form of ``tiny_recipe(model_dir, *SETS)``."""
    sets = [x for s in CLI_SETS for x in ("--set", s)]
    return ["--model", str(model_dir), "--out", str(out), *sets, *extra]


def test_parts_then_a_plain_run_equal_one_uninterrupted_run(model_dir, reference, tmp_path):
    out = tmp_path / "out"
    code, text = _cli(*_args(model_dir, out, "--part", "0/3", "--json", str(tmp_path / "part0.json")))
    assert code == 0, text
    assert "part 0/3: 1 of its shards committed (1 written now, 0 already done; 3 shards in all)" in text
    assert "with the same arguments and no --part to finish the dataset" in text
    part0 = json.loads((tmp_path / "part0.json").read_text())
    assert part0["part"] == "0/3" and part0["part_shards"] == 1 and part0["rows_written"] == 4
    for part in ("1/3", "2/3"):
        summary = generate_dataset(tiny_recipe(model_dir, *SETS), out, part=part)
        assert summary["part_shards"] == 1 and summary["shards_written"] == 1 and summary["shards"] == 3
    assert not (out / "identities.parquet").exists() and not (out / "summary.json").exists()
    assert sorted(p.name for p in (out / "data").glob("*.parquet")) == [f"train-0000{s}-of-00003.parquet" for s in range(3)]
    again = generate_dataset(tiny_recipe(model_dir, *SETS), out, part="1/3")  # a rerun part resumes
    assert again["shards_written"] == 0 and again["shards_skipped"] == 1

    final = generate_dataset(tiny_recipe(model_dir, *SETS), out)
    assert final["resumed"] and final["shards_written"] == 0 and final["shards_skipped"] == 3 and final["images"] == 12
    assert final["images_rendered"] == 0 and (out / "summary.json").is_file()
    assert _files(out) == _files(reference)


def test_parts_running_at_the_same_time_share_the_output(model_dir, reference, tmp_path):
    # two OS processes, as a job array runs them (threads would share torch/accelerate global state)
    out = tmp_path / "out"
    sets = [arg for s in CLI_SETS for arg in ("--set", s)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "synthface",
                "generate",
                "--model",
                str(model_dir),
                *sets,
                "--out",
                str(out),
                "--part",
                part,
                "--json",
                str(tmp_path / f"part{part[0]}.json"),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for part in ("0/2", "1/2")
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    results = [json.loads((tmp_path / f"part{i}.json").read_text()) for i in (0, 1)]
    assert sum(r["shards_written"] for r in results) == 3
    assert not (out / "identities.parquet").exists()
    generate_dataset(tiny_recipe(model_dir, *SETS), out)
    assert _files(out) == _files(reference)


def test_locks_parts_beside_parts_but_not_beside_a_plain_run(model_dir, tmp_path):
    out = tmp_path / "out"
    recipe = tiny_recipe(model_dir, *SETS)
    with RunLock(out):
        with pytest.raises(InputError, match="a synthface run without --part is writing to"):
            generate_dataset(recipe, out, part="0/2")
    other = PartLock(out, 1, 2)
    other.acquire()
    try:
        with pytest.raises(InputError, match="another synthface run is writing to"):
            generate_dataset(recipe, out)
        same = PartLock(out, 1, 2)
        with pytest.raises(InputError, match=r"another job is writing part 1/2 to"):
            same.acquire()
        beside = PartLock(out, 0, 2)
        beside.acquire()  # another part of the same array runs side by side
        beside.release()
    finally:
        other.release()
    with RunLock(out):  # everything released
        pass


@pytest.mark.parametrize("value", ["x", "3", "3/3", "5/3", "0/0", "-1/3", "1/3/4", "a/b"])
def test_bad_part_is_a_one_line_error(model_dir, tmp_path, value):
    with pytest.raises(InputError):
        parse_part(value)
    code, text = _cli(*_args(model_dir, tmp_path / "out", "--part", value))
    assert code == 2 and "--part" in text and "Traceback" not in text, text
    assert not (tmp_path / "out").exists()


def test_parse_part_and_overwrite_with_part(model_dir, tmp_path):
    assert parse_part("0/1") == (0, 1) and parse_part(" 7/8 ") == (7, 8)
    code, text = _cli(*_args(model_dir, tmp_path / "out", "--part", "0/2", "--overwrite"))
    assert code == 2 and "--overwrite cannot be combined with --part" in text


def test_a_part_with_another_recipe_is_refused(model_dir, tmp_path):
    out = tmp_path / "out"
    write_resolved(tiny_recipe(model_dir, *SETS), out)  # what the first part job writes
    with pytest.raises(ConfigError, match=r"differs in: sampling\.steps, seed\)"):
        generate_dataset(tiny_recipe(model_dir, *SETS, "seed=5", "sampling.steps=3"), out, part="1/3")
    code, text = _cli(*_args(model_dir, out, "--part", "2/3", "--set", "seed=5"))
    assert code == 2 and "was written by a different config (differs in: seed)" in text and "Traceback" not in text
    assert not (out / "data").exists()
