"""Filtering inside `generate`: consistency, oversampling, min_images, separation, labels, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from helpers_generate import decode, make_tiny_model, read_rows, tiny_recipe
from test_filter_support import PROJ, PROJ_DIM, filtered_recipe, make_filtered_dataset, register_proj
from synthface.config import GenerateRecipe, load_recipe
from synthface.filtering import (
    DROPPED,
    KEPT,
    LOW_IDENTITY,
    SURPLUS,
    Scored,
    choose_best,
    judge,
    robust_centre,
)
from synthface.dataset.filter_records import read_records
from synthface.faces.embedders import default_threshold
from synthface.filter_settings import FilterSettings
from synthface.embeddings import fixed_list

SETS = ("filter.threshold=0.15", "filter.merge_threshold=0.2")


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_robust_centre_flags_the_other_people() -> None:
    rng = np.random.default_rng(0)
    person = _unit(rng.standard_normal(32))
    own = _unit(person + 0.08 * rng.standard_normal((20, 32)))
    others = _unit(rng.standard_normal((4, 32)))  # 4 of 24 are someone else
    x = np.concatenate([own, others])
    centre, scores = robust_centre(x, threshold=0.5)
    assert (scores[:20] >= 0.5).all() and (scores[20:] < 0.5).all()
    assert float(centre @ person) > 0.95
    # leave-one-out: a lone outlier's score is its cosine to the mean of the others, never to itself
    assert scores[-1] < 0.5
    c1, s1 = robust_centre(x[:1], 0.5)
    assert s1.tolist() == [1.0]


def test_choose_best_is_score_then_sample_order() -> None:
    passed = np.array([True, True, False, True, True])
    scores = np.array([0.5, 0.9, 0.99, 0.5, 0.7])
    samples = np.arange(5)
    assert choose_best(passed, scores, samples, 3).tolist() == [0, 1, 4]  # 0 beats 3 on the tie


def _settings(**kw) -> FilterSettings:
    base = dict(embedder=PROJ, threshold=0.5, detector_threshold=0.0, oversample=2.0, min_images=2,
                images_per_identity=2, anchor="identity", merge_threshold=0.5, leakage=0.5, gallery=None,
                image_size=16)  # fmt: skip
    base.update(kw)
    return FilterSettings(**base)


def test_judge_oversampling_and_min_images() -> None:
    anchor = np.array([1.0, 0.0, 0.0])
    emb = _unit(np.array([[1, 0.1, 0], [1, 1, 0], [1, 0.3, 0], [0, 1, 0], [1, 0.2, 0]], np.float32))
    ok = np.array([True, True, True, True, False])
    emb[~ok] = np.nan
    scored = Scored(np.arange(5), np.full(5, np.nan, np.float32), ok, emb, np.zeros((5, 5, 2)), ["", "", "", "", "detector"])
    record, keep = judge(7, scored, anchor, _settings())
    assert keep.tolist() == [0, 2]  # the two best of the three passing ones
    assert record.status == [KEPT, SURPLUS, KEPT, LOW_IDENTITY, "detector"]
    assert record.kept == 2 and record.passed == 3 and record.reason == ""
    assert np.isnan(record.id_scores[4])
    record, keep = judge(7, scored, anchor, _settings(threshold=0.97, min_images=2))
    assert len(keep) == 0 and record.kept == 0 and "min_images is 2" in record.reason
    assert record.status[0] == DROPPED


def test_settings_defaults_and_anchor() -> None:
    r = load_recipe(GenerateRecipe, None, ["filter.embedder=dlib", "images_per_identity=10"])
    s = FilterSettings.from_recipe(r, "onnx:arcface.onnx")
    assert s.anchor == "centre" and s.threshold == default_threshold("dlib") and s.min_images == 10
    assert s.candidates(10) == 15 and s.merge_threshold == s.threshold
    s = FilterSettings.from_recipe(load_recipe(GenerateRecipe, None, ["filter.embedder=dlib"]), "dlib")
    assert s.anchor == "identity" and s.leakage == r.identities.leakage
    from synthface.errors import ConfigError

    with pytest.raises(ConfigError, match="filter.anchor=identity"):
        FilterSettings.from_recipe(load_recipe(GenerateRecipe, None, ["filter.anchor=identity"]), "sface")


@pytest.fixture(scope="module")
def filtered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_filtered_dataset(tmp_path_factory.mktemp("filtered"), *SETS)


def test_filter_keeps_the_best_images_per_identity(filtered: Path) -> None:
    rows = read_rows(filtered)
    records = read_records(filtered)
    assert records is not None
    by_id = {r["identity"]: r for r in records.to_pylist()}
    ident = pq.read_table(filtered / "identities.parquet").to_pylist()
    kept_ids = [r["index"] for r in ident if r["kept"]]
    assert kept_ids, "the recipe must keep some identities"
    # every kept identity has exactly images_per_identity rows: its best passing candidates
    for i in kept_ids:
        mine = [r for r in rows if r["identity"] == i]
        assert len(mine) == 2
        rec = by_id[i]
        assert rec["candidates"] == 4
        scores = np.array(rec["id_scores"], np.float64)
        passing = np.flatnonzero(scores >= 0.15)
        best = sorted(passing[np.lexsort((passing, -scores[passing]))][:2].tolist())
        assert sorted(r["sample"] for r in mine) == best
        for r in mine:
            assert r["id_score"] >= 0.15
            assert r["id_score"] == pytest.approx(scores[r["sample"]], abs=1e-6)
            assert decode(r["image"]["bytes"]).shape == (16, 16, 3)
    # labels are contiguous over kept identities, in identity order
    assert sorted({r["label"] for r in rows}) == list(range(len(kept_ids)))
    assert [next(r["label"] for r in rows if r["identity"] == i) for i in kept_ids] == list(range(len(kept_ids)))
    assert [r["label"] for r in ident if r["kept"]] == list(range(len(kept_ids)))
    assert all(r["label"] == -1 and r["reason"] for r in ident if not r["kept"])


def test_filter_drops_and_records_why(filtered: Path) -> None:
    ident = {r["index"]: r for r in pq.read_table(filtered / "identities.parquet").to_pylist()}
    records = read_records(filtered)
    centres = fixed_list(records.column("centre"))
    passed = dict(zip(records.column("identity").to_pylist(), records.column("passed").to_pylist()))
    reasons = [r["reason"].split(":")[0] for r in ident.values() if not r["kept"]]
    assert "filter" in reasons and "separation" in reasons  # this recipe exercises both
    for i, r in ident.items():
        if r["reason"].startswith("filter:"):
            assert passed[i] < 2 and r["filter_passed"] == passed[i]
    # separation: sequential in plan order against kept identities only
    kept: list[int] = []
    for i in sorted(ident):
        if passed[i] < 2:
            continue
        cos = [float(centres[i] @ centres[j]) for j in kept]
        if cos and max(cos) > 0.2:
            assert ident[i]["reason"].startswith("separation:") and not ident[i]["kept"]
            assert ident[i]["nearest_identity"] == kept[int(np.argmax(cos))]
        else:
            assert ident[i]["kept"], ident[i]["reason"]
            kept.append(i)
    summary = json.loads((filtered / "summary.json").read_text())
    assert summary["filter"]["identities_kept"] == len(kept) == summary["identities_kept"]
    assert summary["images"] == 2 * len(kept)
    # the markers agree with the rewritten shards
    from synthface.dataset.writer import marker_path

    for shard in sorted((filtered / "data").glob("train-*.parquet")):
        info = json.loads(marker_path(shard).read_text())
        table = pq.read_table(shard)
        assert info["rows"] == table.num_rows
        assert info["identities_kept"] == sorted(set(table.column("identity").to_pylist()))
        assert (filtered / info["filter"]["file"]).is_file()


def test_identity_anchor_scores_against_the_identity_embedding(tmp_path: Path) -> None:
    from synthface.generator.run import generate_dataset

    emb = register_proj()
    model = make_tiny_model(tmp_path / "model", embedder=PROJ, embedding_dim=PROJ_DIM)
    recipe = filtered_recipe(model, "identities.count=2", "filter.threshold=-1", "filter.merge_threshold=1",
                             "output.store_full_resolution=true")  # fmt: skip
    summary = generate_dataset(recipe, tmp_path / "out")
    assert summary["filter"]["settings"]["anchor"] == "identity"
    ident = pq.read_table(tmp_path / "out" / "identities.parquet")
    vectors = fixed_list(ident.column("embedding")).astype(np.float64)
    for row in read_rows(tmp_path / "out"):
        full = decode(row["image_full"]["bytes"])
        e = emb.embed([full], np.zeros((1, 5, 2)))[0].astype(np.float64)
        assert row["id_score"] == pytest.approx(
            float(e @ vectors[row["identity"]] / np.linalg.norm(vectors[row["identity"]])), abs=1e-5
        )


def _table_rows(out: Path) -> list[dict]:
    return [{k: v for k, v in r.items()} for r in read_rows(out)]


def test_resume_after_kills_equals_uninterrupted(tmp_path: Path, filtered: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import synthface.dataset.writer as writer
    from synthface.generator.run import RunHooks, generate_dataset

    register_proj()
    model = filtered.parent / "model"
    recipe = filtered_recipe(model, *SETS)
    out = tmp_path / "out"

    # 1) killed after the first shard is committed
    calls = {"n": 0}

    def dying_write(shard):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generate_dataset(recipe, out, hooks=RunHooks(before_write=dying_write))

    # 2) killed during the relabel pass: a shard's Parquet replaced, its marker not yet
    real_json = writer.atomic_write_json
    state = {"armed": True}

    def dying_json(path, data):
        if state["armed"] and data.get("relabelled"):
            state["armed"] = False
            raise KeyboardInterrupt
        return real_json(path, data)

    monkeypatch.setattr(writer, "atomic_write_json", dying_json)
    with pytest.raises(KeyboardInterrupt):
        generate_dataset(recipe, out)
    assert not state["armed"], "the relabel pass should have been interrupted"
    monkeypatch.setattr(writer, "atomic_write_json", real_json)

    summary = generate_dataset(recipe, out)
    assert summary["resumed"]
    assert _table_rows(out) == _table_rows(filtered)
    a = pq.read_table(out / "identities.parquet").drop(["embedding"]).to_pylist()
    b = pq.read_table(filtered / "identities.parquet").drop(["embedding"]).to_pylist()
    assert json.dumps(a, default=str) == json.dumps(b, default=str)
    for f in sorted((filtered / "data").iterdir()):
        assert (out / "data" / f.name).read_bytes() == f.read_bytes()


def test_filter_on_a_plain_run_is_resumable_without_rewrites(filtered: Path) -> None:
    """A second run over a finished filtered dataset changes nothing (the final pass is idempotent)."""
    from synthface.generator.run import generate_dataset

    register_proj()
    before = {p.name: p.read_bytes() for p in (filtered / "data").iterdir()}
    identities = pq.read_table(filtered / "identities.parquet")
    summary = generate_dataset(filtered_recipe(filtered.parent / "model", *SETS), filtered)
    assert summary["shards_written"] == 0 and summary["filter"]["shards_relabelled"] == 0
    assert {p.name: p.read_bytes() for p in (filtered / "data").iterdir()} == before
    after = pq.read_table(filtered / "identities.parquet")
    assert after.schema == identities.schema
    assert json.dumps(after.to_pylist(), default=str) == json.dumps(identities.to_pylist(), default=str)  # NaN-aware


def test_card_has_a_hub_header(filtered: Path) -> None:
    from synthface.dataset.card import read_header

    header = read_header(filtered / "README.md")
    assert header["license"] and header["task_categories"] == ["image-classification"]
    assert header["size_categories"] == ["n<1K"]
    files = header["configs"][0]["data_files"][0]["path"]
    nonempty = sorted(f"data/{p.name}" for p in (filtered / "data").glob("train-*.parquet") if pq.read_metadata(p).num_rows)
    assert files == nonempty  # this recipe empties a shard, which `datasets` cannot read: the card lists the others
    text = (filtered / "README.md").read_text()
    assert "Leakage report" in text and "not automatically private" in text and PROJ in text


def test_card_loads_with_datasets(filtered: Path) -> None:
    datasets = pytest.importorskip("datasets")
    ds = datasets.load_dataset(str(filtered), split="train")
    rows = read_rows(filtered)
    assert len(ds) == len(rows)
    assert sorted(ds["label"]) == sorted(r["label"] for r in rows)
    assert ds[0]["image"].size == (16, 16)


def test_leakage_check_uses_the_gallery_the_model_carries(tmp_path):
    """Identities drawn from a native model's own gallery.parquet are checked for leakage against it too."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from helpers_generate import make_tiny_model
    from synthface.generator.native import GALLERY_FILE
    from synthface.generator.run import generate_dataset
    from test_filter_support import PROJ, PROJ_DIM, filtered_recipe, register_proj

    register_proj()
    model = make_tiny_model(tmp_path / "model", embedding_dim=PROJ_DIM, embedder=PROJ)
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((12, PROJ_DIM)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    table = pa.table({"key": [f"{i}.png" for i in range(12)], "identity": [f"p{i // 2}" for i in range(12)],
                      "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), PROJ_DIM)})  # fmt: skip
    table = table.replace_schema_metadata({"synthface": json.dumps({"embedder": PROJ, "dim": PROJ_DIM})})
    pq.write_table(table, model / GALLERY_FILE)
    recipe = filtered_recipe(model, "identities.strategy=gallery", "filter.leakage=1.0")
    summary = generate_dataset(recipe, tmp_path / "out")
    leakage = summary["filter"]["leakage"]
    assert leakage["gallery"] == str(model / GALLERY_FILE) and leakage["persons"] == 6
    import yaml

    config = yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())
    assert config["identities"]["gallery"] is None  # the run's config is the recipe as given
    again = generate_dataset(recipe, tmp_path / "out")  # so a rerun is the same run
    assert again["config_hash"] == summary["config_hash"]


def test_card_says_what_was_done(tmp_path: Path) -> None:
    """Unfiltered tiny run: no detector ran, renders kept at the model's size, paths relative, label a ClassLabel."""
    import yaml

    from helpers_generate import make_tiny_model
    from synthface.dataset.card import read_header
    from synthface.generator.run import generate_dataset

    model = make_tiny_model(tmp_path / "model")
    out = tmp_path / "out"
    summary = generate_dataset(tiny_recipe(model.resolve(), "output.image_size=32"), out)
    text = (out / "README.md").read_text()
    assert "112x112" not in text and "mtcnn" not in text.lower()
    assert "16x16 on the model's loose crop" in text and "resized to 32x32" in text
    assert str(tmp_path) not in text and "model: ../model" in text
    header = read_header(out / "README.md")
    label = next(f for f in header["dataset_info"]["features"] if f["name"] == "label")
    rows = read_rows(out)
    assert label["dtype"]["class_label"]["names"] == {str(r["label"]): f"id-{r['identity']:07d}" for r in rows}
    config_header = (out / "config.yaml").read_text().splitlines()[0]
    assert summary["config_yaml_hash"] in config_header and "sampling.batch_size" in summary["config_hash_covers"]
    assert yaml.safe_load((out / "config.yaml").read_text())["model"] == str(model.resolve())
    datasets = pytest.importorskip("datasets")
    ds = datasets.load_dataset(str(out), split="train")
    assert ds.features["label"].names[rows[0]["label"]] == f"id-{rows[0]['identity']:07d}"
