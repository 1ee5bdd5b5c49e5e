"""Per-image variation: identity jitter, guidance range and style start; deterministic and recorded."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from helpers_generate import IMAGE_SIZE, TINY_SETS, make_tiny_model, read_rows, tiny_recipe
from synthface.cli.app import app
from synthface.config import VariationSection
from synthface.errors import ConfigError
from synthface.generator.native import load_native
from synthface.generator.pipeline import sample_batch
from synthface.generator.run import generate_dataset
from synthface.generator.variation import draw, jitter


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("var") / "tiny")


@pytest.fixture(scope="module")
def model(model_dir):
    return load_native(model_dir)


def _unit(rows: int, dim: int = 128, seed: int = 0) -> np.ndarray:
    e = np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


@pytest.fixture()
def bank(tmp_path):
    from PIL import Image

    folder = tmp_path / "bank"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(folder / f"style{i}.png")
    return folder


# --------------------------------------------------------------------------- draws


@pytest.mark.parametrize("cosine", [0.95, 0.7, 0.0])
def test_jitter_lands_exactly_at_the_target_cosine_and_keeps_the_norm(cosine):
    e = _unit(1)[0] * 3.0
    moved = jitter(e, cosine, np.random.default_rng(1))
    assert np.linalg.norm(moved) == pytest.approx(3.0, rel=1e-5)
    assert float(moved @ e) / 9.0 == pytest.approx(cosine, abs=1e-5)
    other = jitter(e, cosine, np.random.default_rng(2))
    if cosine < 1:
        assert not np.allclose(moved, other)  # a random direction per draw


def test_jitter_of_one_is_the_identity_itself():
    e = _unit(1)[0]
    assert np.array_equal(jitter(e, 1.0, np.random.default_rng(0)), e)


def test_draws_depend_on_the_seed_only_and_each_control_on_its_own_stream():
    emb = _unit(4)
    both = VariationSection(identity_cosine=[0.8, 0.9], guidance_scale=[1.0, 4.0])
    a = draw(both, emb, [11, 12, 13, 14], 3.0, bank_size=5)
    b = draw(both, emb[::-1][::-1], [11, 12, 13, 14], 3.0, bank_size=5)
    assert np.array_equal(a.embeddings, b.embeddings) and np.array_equal(a.guidance, b.guidance)
    single = draw(both, emb[2:3], [13], 3.0, bank_size=5)  # a row drawn alone = the same row in a batch
    assert np.array_equal(single.embeddings[0], a.embeddings[2]) and single.style[0] == a.style[2]
    assert np.all((a.cosine >= 0.8) & (a.cosine <= 0.9)) and np.all((a.guidance >= 1) & (a.guidance <= 4))
    assert np.all((a.style >= 0) & (a.style < 5))
    cos = np.sum(a.embeddings * emb, axis=1)
    assert np.allclose(cos, a.cosine, atol=1e-5)
    jitter_only = draw(VariationSection(identity_cosine=[0.8, 0.9]), emb, [11, 12, 13, 14], 3.0)
    assert np.array_equal(jitter_only.embeddings, a.embeddings)  # the guidance range changed no jitter
    assert np.all(jitter_only.guidance == 3.0) and np.all(jitter_only.style == -1)


@pytest.mark.parametrize(
    "value, words",
    [
        ({"identity_cosine": [0.95, 0.9]}, "-1 < low <= high <= 1"),
        ({"identity_cosine": [0.9]}, "at least 2"),
        ({"guidance_scale": [3.0, 1.0]}, "0 <= low <= high"),
        ({"style_strength": 0.0}, "greater than 0"),
    ],
)
def test_bad_ranges_are_named(value, words):
    with pytest.raises(Exception, match=words):
        VariationSection(**value)


# --------------------------------------------------------------------------- sampling


def test_per_image_guidance_changes_only_its_own_image(model):
    emb = _unit(2)
    common = dict(scheduler="ddim", steps=3)
    plain = sample_batch(model, emb, [1, 2], guidance_scale=3.0, **common)
    same = sample_batch(model, emb, [1, 2], guidance_scale=[3.0, 3.0], **common)
    mixed = sample_batch(model, emb, [1, 2], guidance_scale=[3.0, 1.0], **common)
    assert torch.equal(plain, same)
    assert torch.allclose(plain[0], mixed[0], atol=1e-5) and not torch.allclose(plain[1], mixed[1], atol=1e-3)
    alone = sample_batch(model, emb[1:], [2], guidance_scale=1.0, **common)
    assert torch.allclose(alone[0], mixed[1], atol=1e-5)
    with pytest.raises(ConfigError, match="one per sample"):
        sample_batch(model, emb, [1, 2], guidance_scale=[3.0], **common)


@pytest.mark.parametrize("scheduler", ["ddim", "dpmsolver++"])
def test_a_style_start_depends_on_its_image_and_seed_only(model, scheduler):
    emb = _unit(2)
    g = torch.Generator().manual_seed(0)
    init = torch.rand((2, 3, IMAGE_SIZE, IMAGE_SIZE), generator=g)
    common = dict(scheduler=scheduler, steps=4, guidance_scale=2.0, strength=0.5)
    a = sample_batch(model, emb, [1, 2], init_images=init, **common)
    assert torch.equal(a, sample_batch(model, emb, [1, 2], init_images=init, **common))
    row = sample_batch(model, emb[1:], [2], init_images=init[1:], **common)
    assert torch.allclose(row[0], a[1], atol=1e-5)
    other = sample_batch(model, emb, [1, 2], init_images=init.flip(0), **common)
    assert not torch.allclose(other, a, atol=1e-3)
    noise = sample_batch(model, emb, [1, 2], scheduler=scheduler, steps=4, guidance_scale=2.0)
    assert not torch.allclose(noise, a, atol=1e-3)
    with pytest.raises(ConfigError, match="init_images must have shape"):
        sample_batch(model, emb, [1, 2], init_images=init[:1], **common)


# --------------------------------------------------------------------------- generate


VARIED = ["variation.identity_cosine=[0.85, 0.95]", "variation.guidance_scale=[1.0, 3.0]"]


def test_variation_is_recorded_per_image_and_reproducible(model_dir, tmp_path):
    a = generate_dataset(tiny_recipe(model_dir, *VARIED, "sampling.batch_size=1"), tmp_path / "a")
    b = generate_dataset(tiny_recipe(model_dir, *VARIED, "sampling.batch_size=8"), tmp_path / "b")
    rows_a, rows_b = read_rows(tmp_path / "a"), read_rows(tmp_path / "b")
    assert rows_a == rows_b and a["config_hash"] == b["config_hash"]
    assert all(0.85 <= r["condition_cosine"] <= 0.95 and 1.0 <= r["guidance_scale"] <= 3.0 for r in rows_a)
    assert all(r["style"] == -1 for r in rows_a)
    assert len({r["guidance_scale"] for r in rows_a}) == len(rows_a)  # drawn per image
    plain = generate_dataset(tiny_recipe(model_dir), tmp_path / "plain")
    plain_rows = read_rows(tmp_path / "plain")
    assert "condition_cosine" not in plain_rows[0]  # shards without variation keep their columns
    assert all(x["image"] != y["image"] for x, y in zip(rows_a, plain_rows))
    assert plain["config_hash"] != a["config_hash"]
    card = (tmp_path / "a" / "README.md").read_text()
    assert "condition_cosine" in card and "condition_cosine" not in (tmp_path / "plain" / "README.md").read_text()


def test_default_variation_keeps_the_hash_of_runs_started_before_it(model_dir, tmp_path):
    from synthface.config import config_dict, config_hash
    from synthface.config import resume_guard

    recipe = tiny_recipe(model_dir)
    old = config_dict(recipe)
    old.pop("variation")  # what a run written before the section existed recorded
    assert config_hash(resume_guard(config_dict(recipe))) == config_hash(resume_guard(old))


def test_a_style_bank_run_records_rows_and_refuses_a_changed_bank(model_dir, tmp_path, bank):
    from PIL import Image

    sets = [f"variation.style_bank={bank}", "variation.style_strength=0.5"]
    generate_dataset(tiny_recipe(model_dir, *sets), tmp_path / "out")
    rows = read_rows(tmp_path / "out")
    assert {r["style"] for r in rows} <= {0, 1, 2} and all(r["guidance_scale"] == 3.0 for r in rows)
    table = pq.read_table(next((tmp_path / "out" / "data").glob("train-*.parquet")))
    assert table.schema.field("style").type == "int64"
    (tmp_path / "out" / "data" / ".train-00001-of-00002.json").unlink()  # an unfinished run
    shard = tmp_path / "out" / "data" / "train-00001-of-00002.parquet"
    before = shard.read_bytes()
    Image.fromarray(np.zeros((24, 24, 3), np.uint8)).save(bank / "style1.png")
    result = CliRunner().invoke(
        app,
        [
            "generate",
            "--model",
            str(model_dir),
            "--out",
            str(tmp_path / "out"),
            *[x for s in [*TINY_SETS, *sets] for x in ("--set", s)],
        ],  # fmt: skip
    )
    assert result.exit_code == 2 and "variation.style_bank files changed" in result.output
    assert shard.read_bytes() == before


def test_a_missing_style_bank_is_one_line_and_creates_nothing(model_dir, tmp_path):
    args = ["generate", "--model", str(model_dir), "--out", str(tmp_path / "out")]
    sets = [*TINY_SETS, f"variation.style_bank={tmp_path / 'nowhere'}"]
    result = CliRunner().invoke(app, [*args, *[x for s in sets for x in ("--set", s)]])
    assert result.exit_code == 2 and "is not a folder" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_inspect_reports_the_draws_of_a_varied_run(model_dir, tmp_path):
    from synthface.dataset.html_report import metric_table
    from synthface.dataset.inspect import _read_shards
    from synthface.dataset.quality_report import variation_figures

    generate_dataset(tiny_recipe(model_dir, *VARIED), tmp_path / "varied")
    generate_dataset(tiny_recipe(model_dir), tmp_path / "plain")
    drawn = variation_figures(_read_shards(tmp_path / "varied")[1])
    assert 0.85 <= drawn["condition_cosine"]["min"] <= drawn["condition_cosine"]["max"] <= 0.95
    assert 1.0 <= drawn["guidance_scale"]["min"] < drawn["guidance_scale"]["max"] <= 3.0
    assert drawn["style_started"] == 0.0 and drawn["styles_used"] == 0
    assert variation_figures(_read_shards(tmp_path / "plain")[1]) is None
    rows = {r["metric"]: r["value"] for r in metric_table({"variation": drawn, "quality": {}})}
    assert rows["variation: guidance scale (max)"] == f"{drawn['guidance_scale']['max']:.2f}"
