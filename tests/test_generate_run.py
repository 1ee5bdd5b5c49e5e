"""The generate run's own types: the per-image draws, the null Draws, the run summary and the fault hook."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from synthface.config import VariationSection
from synthface.dataset.writer import ShardRows
from synthface.generator.records import RunSummary
from synthface.generator.run import RunHooks
from synthface.generator.variation import Draws, ImageDraw, NoDraws, draw, draws_for

PROCESS_KEYS = ["rank", "shards_written", "shards_skipped", "images_rendered", "rows_written", "seconds", "timings"]


def _unit(rows: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    e = np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def test_no_variation_is_the_null_draws_the_identity_vectors_at_the_recipe_scale():
    embeddings, seeds = _unit(3), [5, 6, 7]
    draws = draws_for(VariationSection(), embeddings, seeds, 3.5, bank_size=4)
    assert isinstance(draws, NoDraws)
    assert draws.embeddings is embeddings and draws.guidance == 3.5  # one scale: sample_batch gets what it got before
    assert [draws.image(k) for k in range(3)] == [None, None, None]
    assert draws.style_images(bank=None) is None


def test_an_active_section_draws_as_before_and_names_each_images_values():
    section = VariationSection(identity_cosine=[0.8, 0.9], guidance_scale=[2.0, 4.0])
    embeddings, seeds = _unit(4), [1, 2, 3, 4]
    draws = draws_for(section, embeddings, seeds, 3.0, bank_size=5)
    same = draw(section, embeddings, seeds, 3.0, 5)
    assert isinstance(draws, Draws) and np.array_equal(draws.embeddings, same.embeddings)
    for k in range(4):
        drawn = draws.image(k)
        assert isinstance(drawn, ImageDraw)
        assert drawn == (float(same.cosine[k]), float(same.guidance[k]), int(same.style[k]))
        assert 0.8 <= drawn.cosine <= 0.9 and 2.0 <= drawn.guidance <= 4.0 and 0 <= drawn.style < 5


def _table(variations: list) -> pa.Table:
    rows = ShardRows(with_variation=variations[0] is not None)
    for k, variation in enumerate(variations):
        rows.add(
            image=b"x", path=f"{k}.png", label=0, identity=0, sample=k, seed=k, id_score=0.5, det_score=0.9, variation=variation
        )
    return rows.table()


def test_rows_from_the_null_draws_are_those_of_a_run_without_variation():
    null = NoDraws(_unit(2), 3.0)
    assert _table([null.image(k) for k in range(2)]).equals(_table([None, None]))
    assert not set(_table([None, None]).column_names) & {"condition_cosine", "guidance_scale", "style"}


def test_rows_from_named_draws_are_those_of_plain_tuples():
    named = [ImageDraw(0.9, 2.5, 3), ImageDraw(0.8, 3.5, -1)]
    assert _table(named).equals(_table([tuple(v) for v in named]))


def test_every_process_returns_the_same_shape():
    other = RunSummary(rank=1, shards_written=2, images_rendered=8, rows_written=8, seconds=1.5, timings={"render": 1.0})
    finished_elsewhere = RunSummary(rank=3)
    assert list(other.as_dict()) == PROCESS_KEYS and list(finished_elsewhere.as_dict()) == PROCESS_KEYS
    assert other.as_dict()["shards_written"] == 2 and finished_elsewhere.as_dict()["images_rendered"] == 0
    record = {"out": "o", "images": 8, "shards": 2}
    main = RunSummary(rank=0, shards_written=2, record=record)
    assert main.as_dict() == record and main.as_dict() is not record
    assert list(main.counts()) == PROCESS_KEYS  # what process 0 gathers is the same shape too


def test_the_default_hooks_do_nothing():
    assert RunHooks().before_write(object()) is None
