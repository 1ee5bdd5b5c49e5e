"""`synthface generate` end to end on a tiny random model: shards, resume, refusals, determinism."""

from __future__ import annotations

import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from helpers_generate import IMAGE_SIZE, TINY_SETS, make_tiny_model, read_rows, tiny_recipe
from synthface.cli.app import app
from synthface.dataset.locks import RunLock
from synthface.errors import InputError, ModelMismatchError
from synthface.generator.run import generate_dataset

RECIPE_SETS = TINY_SETS


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("gen") / "tiny")


def _cli(*args: str):
    result = CliRunner().invoke(app, ["generate", *args])
    text = result.output + (getattr(result, "stderr", "") if result.stderr_bytes is not None else "")
    return result.exit_code, " ".join(text.split())


def _args(model_dir, out, *extra: str) -> list[str]:
    sets = [x for s in RECIPE_SETS for x in ("--set", s)]
    return ["--model", str(model_dir), "--out", str(out), *sets, *extra]


@pytest.fixture(scope="module")
def first_run(model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    summary_path = out.parent / "summary.json"
    code, text = _cli(*_args(model_dir, out, "--json", str(summary_path)))
    assert code == 0, text
    return out, json.loads(summary_path.read_text()), text


def test_generate_writes_the_dataset_layout(first_run):
    out, summary, text = first_run
    assert "wrote 8 images of 4 identities in 2 shards" in text
    assert "generating: 8/8 (" in text and "accepted=" not in text  # filter off: every image is kept, no count
    assert summary["images"] == 8 and summary["identities_kept"] == 4 and summary["shards_written"] == 2
    assert (out / "config.yaml").is_file() and (out / "identities.parquet").is_file() and (out / "summary.json").is_file()
    names = sorted(p.name for p in (out / "data").iterdir())
    assert names == [
        ".train-00000-of-00002.json", ".train-00001-of-00002.json",
        "train-00000-of-00002.parquet", "train-00001-of-00002.parquet",
    ]  # fmt: skip
    rows = read_rows(out)
    assert [(r["identity"], r["sample"]) for r in rows] == [(i, j) for i in range(4) for j in range(2)]
    assert [r["label"] for r in rows] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert len({r["seed"] for r in rows}) == 8 and all(r["id_score"] is None for r in rows)
    ids = pq.read_table(out / "identities.parquet")
    assert ids.column("kept").to_pylist() == [True] * 4 and ids.schema.field("embedding").type.list_size == 128
    marker = json.loads((out / "data" / ".train-00001-of-00002.json").read_text())
    assert marker["rows"] == 4 and marker["identities"] == [2, 4] and marker["config_hash"] == summary["config_hash"]


def test_one_of_each_is_singular(model_dir, tmp_path):
    sets = [x for s in RECIPE_SETS if not s.startswith(("identities.count", "images_per"))
            for x in ("--set", s)]  # fmt: skip
    code, text = _cli("--model", str(model_dir), "--out", str(tmp_path / "one"), *sets, "--set", "identities.count=1",
                      "--set", "images_per_identity=1")  # fmt: skip
    assert code == 0 and "wrote 1 image of 1 identity in 1 shard (" in text, text


def test_dataset_loads_with_hugging_face_datasets(first_run):
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    out, _, _ = first_run
    ds = datasets.load_dataset("parquet", data_dir=str(out / "data"), split="train")
    assert len(ds) == 8
    assert isinstance(ds[0]["image"], Image.Image) and ds[0]["image"].size == (IMAGE_SIZE, IMAGE_SIZE)
    assert sorted(set(ds["label"])) == [0, 1, 2, 3] and all(isinstance(x, int) for x in ds["label"])


def test_rerun_resumes_without_rewriting(first_run, model_dir):
    out, summary, _ = first_run
    before = {p.name: p.read_bytes() for p in (out / "data").glob("*.parquet")}
    code, text = _cli(*_args(model_dir, out, "--set", "sampling.batch_size=5"))  # batch size may change
    assert code == 0, text
    assert "resumed 8 images" in text and "0 written now, 2 already done" in text
    assert {p.name: p.read_bytes() for p in (out / "data").glob("*.parquet")} == before


def test_resume_with_another_config_names_the_differing_keys(first_run, model_dir):
    out, _, _ = first_run
    code, text = _cli(*_args(model_dir, out, "--set", "seed=5", "--set", "sampling.steps=3"))
    assert code == 2
    assert re.search(r"differs in: sampling\.steps, seed\)", text), text
    assert "--overwrite" in text and "Traceback" not in text


def test_a_second_run_on_a_locked_directory_is_refused(first_run, model_dir):
    out, _, _ = first_run
    with RunLock(out):
        code, text = _cli(*_args(model_dir, out))
    assert code == 2 and "another synthface run is writing to" in text


def test_torn_shard_is_redone_and_overwrite_starts_over(model_dir, tmp_path):
    out = tmp_path / "out"
    recipe = tiny_recipe(model_dir)
    generate_dataset(recipe, out)
    rows = read_rows(out)
    shard = out / "data" / "train-00001-of-00002.parquet"
    shard.write_bytes(shard.read_bytes()[:100])  # a torn write that somehow got a marker
    (out / "data" / ".train-00001-of-00002.parquet.a1b2c3d4.tmp").write_bytes(b"partial")  # a killed writer's temp file
    summary = generate_dataset(recipe, out)
    assert summary["shards_written"] == 1 and summary["shards_skipped"] == 1 and summary["resumed"]
    assert read_rows(out) == rows and not list((out / "data").glob(".*.tmp"))
    summary = generate_dataset(recipe, out, overwrite=True)
    assert summary["shards_written"] == 2 and not summary["resumed"] and read_rows(out) == rows


def test_batch_size_does_not_change_the_dataset(model_dir, tmp_path):
    a = generate_dataset(tiny_recipe(model_dir, "sampling.batch_size=1"), tmp_path / "a")
    b = generate_dataset(tiny_recipe(model_dir, "sampling.batch_size=8"), tmp_path / "b")
    assert a["config_hash"] == b["config_hash"]
    assert read_rows(tmp_path / "a") == read_rows(tmp_path / "b")  # same PNG bytes, seeds, labels
    c = generate_dataset(tiny_recipe(model_dir, "seed=1"), tmp_path / "c")
    assert c["config_hash"] != a["config_hash"]
    images_a = [r["image"]["bytes"] for r in read_rows(tmp_path / "a")]
    images_c = [r["image"]["bytes"] for r in read_rows(tmp_path / "c")]
    assert all(x != y for x, y in zip(images_a, images_c))


def test_wrong_embedding_dimension_is_refused(model_dir, tmp_path):
    emb = np.random.default_rng(0).standard_normal((10, 64)).astype(np.float32)
    table = pa.table({"path": [f"{i}.jpg" for i in range(10)], "identity": [str(i) for i in range(10)],
                      "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), 64)})  # fmt: skip
    pq.write_table(table, tmp_path / "gallery.parquet")
    recipe = tiny_recipe(model_dir, "identities.strategy=gallery", f"identities.gallery={tmp_path / 'gallery.parquet'}")
    with pytest.raises(ModelMismatchError, match="64-d embeddings but the model expects 128"):
        generate_dataset(recipe, tmp_path / "out")
    code, text = _cli(*_args(model_dir, tmp_path / "out2", "--set", "identities.embedder=facenet-vggface2"))
    assert code == 2 and "conditioned on 'dlib' embeddings but the recipe asks for 'facenet-vggface2'" in text


def test_unknown_model_directory_is_a_one_line_error(tmp_path):
    (tmp_path / "junk").mkdir()
    code, text = _cli("--model", str(tmp_path / "junk"), "--out", str(tmp_path / "out"), "--set", "filter.enabled=false")
    assert code == 2 and "is not a generator model this synthface knows (expected" in text and "native: synthface.json" in text
    with pytest.raises(InputError):
        generate_dataset(tiny_recipe(tmp_path / "missing"), tmp_path / "out2")


def test_data_without_config_is_not_adopted(model_dir, tmp_path):
    out = tmp_path / "out"
    generate_dataset(tiny_recipe(model_dir), out)
    (out / "config.yaml").unlink()
    with pytest.raises(InputError, match="is not a synthface generate output"):
        generate_dataset(tiny_recipe(model_dir), out)


def test_rerun_of_a_finished_run_loads_no_model(model_dir, tmp_path, monkeypatch):
    from synthface.generator import run

    out = tmp_path / "out"
    recipe = tiny_recipe(model_dir)
    first = generate_dataset(recipe, out)
    rows = read_rows(out)

    def no_model(*args, **kwargs):
        raise AssertionError("a finished run must not load its model again")

    monkeypatch.setattr(run, "load_model", no_model)
    again = generate_dataset(recipe, out)
    assert again["resumed"] and again["shards_written"] == 0 and again["shards_skipped"] == first["shards"] == 2
    assert again["images"] == first["images"] and read_rows(out) == rows
    assert json.loads((out / "summary.json").read_text())["shards_written"] == 0
    (out / "data" / ".train-00001-of-00002.json").unlink()  # a shard left to do: the model is needed again
    with pytest.raises(AssertionError, match="must not load"):
        generate_dataset(recipe, out)
