"""A whole `generate` run with the Arc2Face family (tiny replica) writes a valid, aligned dataset."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from synthface.config import GenerateRecipe, load_recipe
from synthface.dataset.writer import marker_path
from synthface.generator.arc2face_testing import tiny_arc2face_model

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


pytestmark = pytest.mark.usefixtures("one_thread")


def decode(cell: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(cell["bytes"])).convert("RGB"))


def test_generate_run_with_arc2face_writes_a_valid_dataset(tmp_path):
    from synthface.dataset.reader import ShardFaces
    from synthface.generator.families import load_model
    from synthface.generator.pipeline import generate
    from synthface.generator.run import generate_dataset
    from synthface.identities import IdentityPlan, sample_seeds

    model_dir = tiny_arc2face_model(tmp_path / "a2f")
    sets = [
        f"model={model_dir}",
        "identities.count=3",
        "identities.separation=0.5",
        "images_per_identity=2",
        "shard_identities=2",
        "sampling.steps=2",
        "sampling.batch_size=4",
        "sampling.dtype=fp32",
        "filter.enabled=false",
        "output.image_format=png",
        "output.store_full_resolution=true",
    ]
    recipe = load_recipe(GenerateRecipe, RECIPES / "arc2face-quickstart.yaml", sets)
    assert recipe.sampling.scheduler == "dpmsolver++" and recipe.sampling.guidance_scale == 3.0
    out = tmp_path / "run"
    summary = generate_dataset(recipe, out)
    assert summary["family"] == "arc2face"
    assert summary["embedder"] == f"onnx:{model_dir / 'arcface.onnx'}"
    assert summary["images"] == 6 and summary["identities_kept"] == 3 and summary["shards"] == 2

    shards = sorted((out / "data").glob("train-*.parquet"))
    assert [p.name for p in shards] == ["train-00000-of-00002.parquet", "train-00001-of-00002.parquet"]
    for shard in shards:
        marker = json.loads(marker_path(shard).read_text())
        assert marker["rows"] == pq.read_metadata(shard).num_rows
        features = json.loads(pq.read_schema(shard).metadata[b"huggingface"])["info"]["features"]
        assert features["image"] == features["image_full"] == {"_type": "Image"}
    table = pq.read_table(shards)
    rows = table.to_pylist()
    assert [r["identity"] for r in rows] == [0, 0, 1, 1, 2, 2] and [r["label"] for r in rows] == [0, 0, 1, 1, 2, 2]
    for r in rows:
        assert decode(r["image"]).shape == (112, 112, 3)  # the alignment step's 112 template size
        assert decode(r["image_full"]).shape == (64, 64, 3)  # the replica's render, as generated
        assert r["det_score"] >= 0.0  # measured by the alignment step (0: no face found in noise)

    # The stored renders are exactly what the one sampling loop gives for the planned identities and seeds.
    plan = IdentityPlan.from_table(pq.read_table(out / "identities.parquet"))
    assert plan.embeddings.shape == (3, 512)
    seeds = np.concatenate([sample_seeds(recipe.seed, i, 2) for i in range(3)])
    assert [r["seed"] for r in rows] == seeds.tolist()
    model = load_model(model_dir)
    expected = generate(model, np.repeat(plan.embeddings, 2, axis=0), seeds, batch_size=4, steps=2,
                        scheduler="dpmsolver++", guidance_scale=3.0)  # fmt: skip
    assert np.array_equal(np.stack([decode(r["image_full"]) for r in rows]), expected)

    faces = ShardFaces(out)  # the training reader accepts the shards
    assert len(faces) == 6

    again = generate_dataset(recipe, out)  # resume: everything is committed already
    assert again["shards_skipped"] == 2 and again["shards_written"] == 0


@pytest.mark.lfw
def test_alignment_step_warps_a_real_face_to_the_template(lfw_images):
    from synthface.faces.align import load_image
    from synthface.generator.selection import AlignAll
    from synthface.selection import Candidate

    image = load_image(next(iter(sorted(lfw_images.glob("*/*.jpg")))))
    blank = np.full((250, 250, 3), 127, np.uint8)
    selected = AlignAll(112, device="cpu").select(0, [Candidate(0, 0, 1, image), Candidate(0, 1, 2, blank)])
    assert selected[0].image.shape == (112, 112, 3) and selected[0].det_score > 0.9
    assert selected[1].image.shape == (112, 112, 3) and selected[1].det_score == 0.0


def test_recipes_load_and_name_the_published_settings():
    quick = load_recipe(GenerateRecipe, RECIPES / "arc2face-quickstart.yaml")
    full = load_recipe(GenerateRecipe, RECIPES / "arc2face-10k-x-50.yaml")
    fast = load_recipe(GenerateRecipe, RECIPES / "arc2face-lcm-quickstart.yaml")
    for r in (quick, full, fast):
        assert r.model == "FoivosPar/Arc2Face" and r.output.image_size == 112
        assert r.filter.embedder != "onnx:FoivosPar/Arc2Face/arcface.onnx"  # the filter uses its own ruler
        assert r.sampling.dtype == "fp16"  # the precision Arc2Face publishes and runs on CUDA
    assert (quick.sampling.scheduler, quick.sampling.steps, quick.sampling.guidance_scale) == ("dpmsolver++", 25, 3.0)
    assert full.identities.count * full.images_per_identity == 500_000
    assert fast.arc2face.lcm_lora == "latent-consistency/lcm-lora-sdv1-5"
    assert (fast.sampling.scheduler, fast.sampling.guidance_scale) == ("lcm", 1.0) and fast.sampling.steps <= 4
