"""`synthface train`: data preparation, the training loop, condition dropout, resume, export, CLI errors.

Tiny models (about 0.3M parameters) at 16 px on generated faces; one torch thread per run.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from synthface.cli.app import app
from synthface.config import TrainRecipe, load_recipe
from synthface.errors import ConfigError, InputError
from synthface.testing import TinyEmbedder
from synthface.generator.training import checkpoints, load_faces, train_generator
from synthface.generator.training.data import crop_box, model_crop
from synthface.generator.training.loop import Trainer
from synthface.generator.training.objective import drop_mask, step_generator
from synthface.training import EpochSampler

from helpers_train import tiny_train_sets

IDENTITIES, PER_ID = 4, 4


class CountingEmbedder:
    """The Embedder protocol over a tiny random network; counts the images it embeds."""

    name = "tiny"
    dim = 16

    def __init__(self) -> None:
        self.net = TinyEmbedder(self.dim, seed=3)
        self.calls = 0

    def embed(self, images, landmarks, boxes=None):
        self.calls += len(images)
        return self.net.embed_images(list(images))


def _face(rng: np.random.Generator, colours: np.ndarray) -> np.ndarray:
    """A 112x112 'face': identity colours for background, face disc and eyes, plus per-image jitter."""
    yy, xx = np.mgrid[:112, :112]
    img = np.empty((112, 112, 3), np.float32)
    img[:] = colours[0]
    img[(xx - 56) ** 2 + (yy - 60) ** 2 < 34**2] = colours[1]
    for ex in (38, 74):
        img[(xx - ex) ** 2 + (yy - 52) ** 2 < 6**2] = colours[2]
    img += rng.normal(0, 6, img.shape)
    return img.clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def faces_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faces")
    rng = np.random.default_rng(0)
    for i in range(IDENTITIES):
        colours = rng.integers(0, 255, (3, 3)).astype(np.float32)
        folder = root / f"person_{i}"
        folder.mkdir()
        for j in range(PER_ID):
            Image.fromarray(_face(rng, colours)).save(folder / f"person_{i}_{j:04d}.png")
    (root / "person_0" / "broken.png").write_bytes(b"not an image")
    return root


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def tiny_recipe(cache: Path, *extra: str) -> TrainRecipe:
    sets = tiny_train_sets("tiny", cache) + [
        "train.batch_size=4",
        "train.max_steps=4",
        "train.lr=1e-3",
        "train.checkpoint_every=2",
        "train.sample_every=1000",
        "train.log_every=1",
    ]
    return load_recipe(TrainRecipe, None, sets + list(extra))


def _fixed_batch_loss(model, x0: torch.Tensor, cond: torch.Tensor) -> float:
    from diffusers import DDPMScheduler

    sched = DDPMScheduler.from_config(model.scheduler_config)
    gen = torch.Generator().manual_seed(123)
    noise = torch.randn(x0.shape, generator=gen)
    t = torch.linspace(50, 900, x0.shape[0]).long()
    with torch.no_grad():
        hidden = model.projector(cond)
        pred = model.unet(sched.add_noise(x0, noise, t), t, encoder_hidden_states=hidden).sample
    return float(torch.nn.functional.mse_loss(pred, noise))


# --------------------------------------------------------------------------- data


def test_load_faces_skips_bad_images_and_caches(faces_dir, tmp_path):
    emb = CountingEmbedder()
    kw = dict(image_size=16, crop="tight", model_scale=0.6, cache_dir=tmp_path, workers=0)
    faces = load_faces(faces_dir, "tiny", embedder=emb, **kw)
    assert len(faces) == IDENTITIES * PER_ID and faces.num_identities == IDENTITIES
    assert faces.counts["unreadable"] == 1 and faces.form == "tight" and faces.template_scale == 1.0
    assert faces.crops.shape == (16, 16, 16, 3) and faces.crops.dtype == np.uint8
    # identity conditioning = the L2-normalised mean of the identity's image embeddings
    mean = faces.image_embeddings[faces.labels == 2].mean(0)
    np.testing.assert_allclose(faces.conditions("identity")[faces.labels == 2][0], mean / np.linalg.norm(mean), atol=1e-6)
    assert emb.calls == IDENTITIES * PER_ID
    again = load_faces(faces_dir, "tiny", embedder=emb, **kw)  # from the cache: nothing re-embedded
    assert emb.calls == IDENTITIES * PER_ID
    np.testing.assert_array_equal(again.crops, faces.crops)
    np.testing.assert_array_equal(again.image_embeddings, faces.image_embeddings)


def test_embed_per_identity_embeds_a_few_and_trains_on_all(faces_dir, tmp_path):
    emb = CountingEmbedder()
    faces = load_faces(
        faces_dir,
        "tiny",
        image_size=16,
        crop="tight",
        model_scale=0.6,
        cache_dir=tmp_path,
        workers=0,
        embedder=emb,
        embed_per_identity=2,
    )
    # person_0's two picks (first and last of its sorted files) include the unreadable one
    assert emb.calls == 2 * IDENTITIES - 1 and len(faces) == IDENTITIES * PER_ID
    assert np.isfinite(faces.image_embeddings).all(axis=1).sum() == 2 * IDENTITIES - 1
    assert np.isfinite(faces.conditions("identity")).all()
    with pytest.raises(ConfigError, match="embed_per_identity"):
        faces.conditions("image")


def test_tight_data_cannot_make_loose_crops(faces_dir, tmp_path):
    with pytest.raises(ConfigError, match="model.crop=tight"):
        load_faces(
            faces_dir, "tiny", image_size=16, crop="loose", model_scale=0.6, cache_dir=tmp_path, embedder=CountingEmbedder()
        )


def test_loose_to_tighter_crop_takes_the_centre():
    assert crop_box(128, 0.6, 0.6) == (0.0, 0.0, 128.0, 128.0)
    lo, _, hi, _ = crop_box(128, 0.6, 1.0)
    assert hi - lo == pytest.approx(128 * 0.6) and lo == pytest.approx(64 - 128 * 0.3)
    img = np.zeros((128, 128, 3), np.uint8)
    img[40:88, 40:88] = 255
    out = model_crop(img, 0.6, 1.0, 32)  # the central 76.8 px fill the 32 px output
    assert out[16, 16].mean() > 200 and out[0, 0].mean() < 30


def test_sampler_resumes_its_order():
    a = EpochSampler(10, seed=4)
    first = torch.cat([a.take(4) for _ in range(5)])  # crosses two epoch boundaries
    assert sorted(first[:10].tolist()) == list(range(10)) and sorted(first[10:20].tolist()) == list(range(10))
    b = EpochSampler(10, seed=4)
    b.take(4)
    b.take(4)
    c = EpochSampler(10, seed=4)
    c.load_state_dict(b.state_dict())
    assert torch.equal(torch.cat([c.take(4) for _ in range(3)]), first[8:20])


def test_drop_mask_rate():
    gen = step_generator(0, 0, 0, 0)
    assert drop_mask(20000, 0.3, gen).float().mean().item() == pytest.approx(0.3, abs=0.015)
    assert not drop_mask(1000, 0.0, gen).any()


# --------------------------------------------------------------------------- training


def test_training_lowers_loss_and_exports_a_loadable_model(faces_dir, cache_dir, tmp_path):
    from synthface.generator.families import load_model
    from synthface.generator.native import NativeMeta
    from synthface.generator.pipeline import generate

    config = tiny_recipe(
        cache_dir,
        "train.max_steps=12",
        "train.lr=2e-3",
        "train.ema_decay=0",
        "train.checkpoint_every=100",
        "train.sample_every=12",
        "train.cond_dropout=0.1",
    )
    run = tmp_path / "run"
    trainer = Trainer(config, faces_dir, run, embedder=CountingEmbedder())
    faces = trainer.prepare_data(torch.device("cpu"))
    initial = trainer.make_model(faces, None)
    summary = train_generator(config, faces_dir, run, embedder=CountingEmbedder())
    assert summary["steps"] == 12 and summary["data"]["skipped"]["unreadable"] == 1

    model = load_model(run / "model")
    assert model.family == "native" and model.embedder == "tiny" and model.image_size == 16
    meta = NativeMeta.read(run / "model")
    assert meta.template_scale == 1.0 and meta.extra["crop"] == "tight" and meta.extra["train_steps"] == 12

    x0 = torch.from_numpy(faces.crops[:8]).permute(0, 3, 1, 2).float() / 127.5 - 1
    cond = torch.from_numpy(faces.conditions("identity")[:8])
    before, after = _fixed_batch_loss(initial, x0, cond), _fixed_batch_loss(model, x0, cond)
    assert after < 0.8 * before, (before, after)

    images = generate(model, faces.identity_embeddings[:2], [1, 2], scheduler="ddim", steps=3, guidance_scale=2.0)
    assert images.shape == (2, 16, 16, 3) and images.dtype == np.uint8
    assert (run / "loss.png").is_file() and (run / "samples" / "step-0000012.png").is_file()
    with open(run / "loss.csv", newline="") as f:
        assert [int(float(r["step"])) for r in csv.DictReader(f)] == list(range(1, 13))
    assert (run / "config.yaml").is_file() and (run / "train.json").is_file()


def test_exported_model_runs_through_generate_dataset(faces_dir, cache_dir, tmp_path):
    from synthface.config import GenerateRecipe
    from synthface.generator.run import generate_dataset

    run = tmp_path / "run"
    train_generator(tiny_recipe(cache_dir, "train.max_steps=2"), faces_dir, run, embedder=CountingEmbedder())
    recipe = load_recipe(
        GenerateRecipe,
        None,
        [
            f"model={run / 'model'}",
            "identities.count=2",
            "identities.separation=0.9",
            "images_per_identity=2",
            "shard_identities=2",
            "sampling.steps=2",
            "sampling.dtype=fp32",
            "sampling.batch_size=4",
            "filter.enabled=false",
            "output.image_format=png",
            "output.image_size=16",
        ],
    )
    summary = generate_dataset(recipe, tmp_path / "synth")
    shards = sorted((tmp_path / "synth" / "data").glob("*.parquet"))
    assert shards and summary
    import pyarrow.parquet as pq

    assert pq.read_table(shards[0]).num_rows == 4


class _SpyTrainer(Trainer):
    """Records what the UNet receives as identity tokens, and the projector's null tokens at that moment."""

    seen: list[tuple[torch.Tensor, torch.Tensor]]

    def make_model(self, faces, vae):
        model = super().make_model(faces, vae)
        self.seen = []
        projector = model.projector

        def spy(module, args, kwargs):
            if module.training:  # not the sample grids
                self.seen.append((kwargs["encoder_hidden_states"].detach().clone(), projector.null_tokens.detach().clone()))

        model.unet.register_forward_pre_hook(spy, with_kwargs=True)
        return model


def test_condition_dropout_feeds_null_tokens_at_the_configured_rate(faces_dir, cache_dir, tmp_path):
    config = tiny_recipe(
        cache_dir,
        "train.max_steps=100",
        "train.batch_size=12",
        "train.cond_dropout=0.5",
        "train.checkpoint_every=100",
        "train.sample_every=100",
    )
    trainer = _SpyTrainer(config, faces_dir, tmp_path / "run", embedder=CountingEmbedder())
    trainer.run(stop_at_step=4)
    rows = dropped = 0
    for hidden, null in trainer.seen:
        rows += hidden.shape[0]
        dropped += sum(torch.equal(h, null) for h in hidden)
    assert rows == 48
    # Binomial(48, 0.5): 24 +- 3.5; the interval is 4 sigma wide on each side
    assert 10 <= dropped <= 38, dropped
    config = tiny_recipe(cache_dir, "train.max_steps=3", "train.cond_dropout=0", "train.sample_every=100")
    trainer = _SpyTrainer(config, faces_dir, tmp_path / "run0", embedder=CountingEmbedder())
    trainer.run(stop_at_step=2)
    assert not any(torch.equal(h, null) for hidden, null in trainer.seen for h in hidden)


def test_resume_after_a_crash_equals_an_uninterrupted_run(faces_dir, cache_dir, tmp_path):
    from safetensors.torch import load_file

    config = tiny_recipe(cache_dir)
    train_generator(config, faces_dir, tmp_path / "straight", embedder=CountingEmbedder())

    crashed = tmp_path / "crashed"
    partial = train_generator(config, faces_dir, crashed, embedder=CountingEmbedder(), stop_at_step=3)
    assert partial["stopped_at"] == 3 and not (crashed / "model").exists()
    assert [p.name for p in checkpoints(crashed)] == ["step-0000002"]
    with pytest.raises(InputError, match="--resume"):
        train_generator(config, faces_dir, crashed, embedder=CountingEmbedder())
    resumed = train_generator(config, faces_dir, crashed, embedder=CountingEmbedder(), resume=True)
    assert resumed["start_step"] == 2 and resumed["steps"] == 4

    def rows(run: Path) -> list[tuple[int, float]]:
        with open(run / "loss.csv", newline="") as f:
            return [(int(float(r["step"])), float(r["loss"])) for r in csv.DictReader(f)]

    assert [s for s, _ in rows(crashed)] == list(range(1, 5))  # step 3 of the crashed run was dropped
    np.testing.assert_allclose([v for _, v in rows(crashed)], [v for _, v in rows(tmp_path / "straight")], rtol=1e-5)
    for part in ("unet", "projector"):
        a = load_file(tmp_path / "straight" / "model" / part / "diffusion_pytorch_model.safetensors")
        b = load_file(crashed / "model" / part / "diffusion_pytorch_model.safetensors")
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    assert len(checkpoints(crashed)) == 2  # keep_checkpoints

    changed = tiny_recipe(cache_dir, "train.lr=5e-4")
    with pytest.raises(ConfigError, match="train.lr"):
        train_generator(changed, faces_dir, crashed, embedder=CountingEmbedder(), resume=True)

    # extending a finished run: a larger max_steps (and a time limit) continue from its last step
    longer = tiny_recipe(cache_dir, "train.max_steps=6", "train.max_minutes=30")
    extended = train_generator(longer, faces_dir, crashed, embedder=CountingEmbedder(), resume=True)
    assert extended["start_step"] == 4 and extended["steps"] == 6
    assert [s for s, _ in rows(crashed)] == list(range(1, 7))
    with pytest.raises(ConfigError, match="not shorten it: train.max_steps 5 < 6"):
        train_generator(tiny_recipe(cache_dir, "train.max_steps=5"), faces_dir, crashed, embedder=CountingEmbedder(), resume=True)


# --------------------------------------------------------------------------- CLI


@pytest.mark.parametrize("kind", ["missing", "empty", "file"])
def test_bad_data_folder_is_a_one_line_error(tmp_path, kind):
    data = tmp_path / "data"
    if kind == "empty":
        data.mkdir()
    elif kind == "file":
        data.write_text("x")
    result = CliRunner().invoke(app, ["train", "--data", str(data), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert "Traceback" not in result.output


def test_unknown_form_asks_to_state_it(tmp_path):
    folder = tmp_path / "data" / "someone"
    folder.mkdir(parents=True)
    Image.fromarray(np.zeros((250, 200, 3), np.uint8)).save(folder / "a.jpg")
    result = CliRunner().invoke(app, ["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "data.form" in result.output


def test_latent_model_trains_on_cached_latents_and_exports_its_vae(faces_dir, cache_dir, tmp_path):
    from synthface.generator.families import load_model
    from synthface.testing import tiny_native

    vae_dir = tmp_path / "vae"
    tiny_native(image_size=16, latent=True).vae.save_pretrained(vae_dir)
    config = tiny_recipe(
        cache_dir,
        "model.latent=true",
        f"model.vae={vae_dir}",
        "train.max_steps=2",
        "train.augment=[flip]",
        "train.sample_every=2",
    )
    summary = train_generator(config, faces_dir, tmp_path / "run", embedder=CountingEmbedder())
    assert summary["steps"] == 2 and list((cache_dir).glob("latents-*.npy"))
    model = load_model(tmp_path / "run" / "model")
    assert model.vae is not None and model.latent_shape == (4, 8, 8)


# --------------------------------------------------------------------------- fine-tuning and the CPU budget


def test_init_from_starts_from_that_models_weights_and_records_it(faces_dir, cache_dir, tmp_path):
    from synthface.generator.native import NativeMeta, load_native

    first = tmp_path / "first"
    train_generator(tiny_recipe(cache_dir, "train.ema_decay=0"), faces_dir, first, embedder=CountingEmbedder())
    source = load_native(first / "model")

    config = tiny_recipe(cache_dir, f"train.init_from={first / 'model'}")
    trainer = Trainer(config, faces_dir, tmp_path / "second", embedder=CountingEmbedder())
    faces = trainer.prepare_data(torch.device("cpu"))
    fresh = trainer.make_model(faces, None)
    assert any(not torch.equal(a, b) for a, b in zip(fresh.unet.state_dict().values(), source.unet.state_dict().values()))
    start = trainer._init_weights(fresh)
    for part in ("unet", "projector"):
        for key, value in getattr(source, part).state_dict().items():
            torch.testing.assert_close(getattr(fresh, part).state_dict()[key], value, rtol=0, atol=0)
    assert start["path"] == str(first / "model") and len(start["unet_sha256"]) == 64

    # a fine-tuned run begins at the source's loss, not a fresh model's, and its model names its start
    x0 = torch.from_numpy(faces.crops[:8]).permute(0, 3, 1, 2).float() / 127.5 - 1
    cond = torch.from_numpy(faces.conditions("identity")[:8])
    assert _fixed_batch_loss(fresh, x0, cond) == pytest.approx(_fixed_batch_loss(source, x0, cond), rel=1e-6)
    train_generator(config, faces_dir, tmp_path / "second", embedder=CountingEmbedder())
    assert NativeMeta.read(tmp_path / "second" / "model").extra["init_from"]["unet_sha256"] == start["unet_sha256"]


def test_init_from_a_missing_or_different_model_is_a_one_line_error(faces_dir, cache_dir, tmp_path):
    with pytest.raises(InputError, match="is not a folder"):
        train_generator(
            tiny_recipe(cache_dir, f"train.init_from={tmp_path / 'nowhere'}"),
            faces_dir,
            tmp_path / "a",
            embedder=CountingEmbedder(),
        )
    assert not (tmp_path / "a").exists()  # refused before the run folder is made
    first = tmp_path / "first"
    train_generator(tiny_recipe(cache_dir, "train.max_steps=1"), faces_dir, first, embedder=CountingEmbedder())
    wider = tiny_recipe(cache_dir, f"train.init_from={first / 'model'}", "model.block_out_channels=[16,48]")
    with pytest.raises(ConfigError, match="does not match the recipe's model section"):
        train_generator(wider, faces_dir, tmp_path / "b", embedder=CountingEmbedder())
    assert not (tmp_path / "b" / "model").exists()


def test_max_cpu_minutes_stops_the_run_and_adds_up_over_resumes(faces_dir, cache_dir, tmp_path):
    import json

    run = tmp_path / "run"
    summary = train_generator(
        tiny_recipe(cache_dir, "train.max_steps=3", "train.max_cpu_minutes=1e-6"), faces_dir, run, embedder=CountingEmbedder()
    )
    assert summary["stopped_by_time_limit"] and summary["steps"] == 1
    assert summary["train_cpu_seconds"] > 0 and (run / "model").is_dir()
    spent = json.loads((checkpoints(run)[-1] / "trainer.json").read_text())["cpu_seconds"]
    assert spent > 0
    # a larger budget continues the run; its CPU time counts from what was spent before
    more = train_generator(
        tiny_recipe(cache_dir, "train.max_steps=3", "train.max_cpu_minutes=100"),
        faces_dir,
        run,
        embedder=CountingEmbedder(),
        resume=True,
    )
    assert more["start_step"] == 1 and more["steps"] == 3 and more["train_cpu_seconds"] > spent


def test_prepare_only_needs_no_identity_head_but_training_does(faces_dir, cache_dir, tmp_path):
    config = tiny_recipe(cache_dir, "train.identity_loss.weight=0.1", "train.identity_loss.through=head")
    run = tmp_path / "run"
    summary = train_generator(config, faces_dir, run, embedder=CountingEmbedder(), prepare_only=True)
    assert summary["prepared_only"] and (run / "config.yaml").is_file()
    with pytest.raises(ConfigError, match="synthface train-head"):
        train_generator(config, faces_dir, run, embedder=CountingEmbedder())
    assert not (run / "model").exists() and not checkpoints(run)
