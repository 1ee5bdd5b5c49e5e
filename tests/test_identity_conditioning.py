"""Conditioning that carries identity: centred embeddings, the class-embedding path, v-prediction with a
zero-terminal-SNR schedule, min-SNR weighting, and what training records about the condition's effect."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from synthface.errors import ConfigError, InputError
from synthface.generator import generate, load_model, sample_batch
from synthface.generator.native import NativeMeta, default_scheduler_config, prepare_condition, uses_class_embedding
from synthface.generator.training import train_generator
from synthface.generator.training.objective import loss_weights, training_target

from helpers_generate import CLASS_EMBEDDING_DIM as DIM
from helpers_generate import class_embedding_model as _model
from helpers_generate import shared_direction_embeddings as _embeddings


def test_prepare_condition_centres_and_scales():
    e = torch.from_numpy(_embeddings(6))
    mean = e.mean(dim=0)
    out = prepare_condition(e, mean)
    assert torch.allclose(out.norm(dim=-1), torch.full((6,), DIM**0.5), atol=1e-4)
    centred = (e - mean) / (e - mean).norm(dim=-1, keepdim=True)
    assert torch.allclose(out / DIM**0.5, centred, atol=1e-6)

    # centring spreads people apart: the mean pairwise cosine drops from ~0.8 to ~0
    def cos(x):
        n = torch.nn.functional.normalize(x, dim=-1)
        return (n @ n.T)[~torch.eye(6, dtype=bool)].mean()

    assert cos(e) > 0.5 and abs(float(cos(out))) < 0.3
    assert torch.equal(prepare_condition(e, None), e)


def test_identity_reaches_the_unet_through_the_class_embedding():
    model = _model()
    torch.nn.init.normal_(model.unet.class_embedding.linear_2.weight, std=1.0)
    emb = _embeddings(2, 2)
    # same tokens for both rows: only the class embedding can tell the identities apart
    model.projector.mlp[-1].weight.data.zero_()
    model.projector.mlp[-1].bias.data.zero_()
    a = sample_batch(model, emb[:1], [5], scheduler="ddim", steps=2, guidance_scale=1.0)
    b = sample_batch(model, emb[1:], [5], scheduler="ddim", steps=2, guidance_scale=1.0)
    assert not torch.equal(a, b)
    labels = model.class_labels(None, 3)
    assert labels.shape == (3, DIM) and not labels.any()


def test_round_trip_keeps_mean_schedule_and_images(tmp_path):
    model = _model()
    model.save(tmp_path / "m")
    meta = NativeMeta.read(tmp_path / "m")
    assert meta.condition_mean is not None and len(meta.condition_mean) == DIM
    loaded = load_model(tmp_path / "m")
    assert loaded.scheduler_config["prediction_type"] == "v_prediction"
    assert loaded.scheduler_config["rescale_betas_zero_snr"] and loaded.scheduler_config["timestep_spacing"] == "trailing"
    emb = _embeddings(2, 3)
    assert np.array_equal(
        generate(model, emb, [1, 2], scheduler="ddim", steps=2), generate(loaded, emb, [1, 2], scheduler="ddim", steps=2)
    )


def test_a_mean_of_the_wrong_size_is_refused(tmp_path):
    _model().save(tmp_path / "m")
    import json

    path = tmp_path / "m" / "synthface.json"
    data = json.loads(path.read_text())
    data["condition_mean"] = data["condition_mean"][:-1]
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match="condition_mean has 15 values"):
        load_model(tmp_path / "m")


def test_zero_terminal_snr_needs_v_prediction():
    with pytest.raises(ConfigError, match="v_prediction"):
        default_scheduler_config(True, "epsilon", None, True, "trailing")


def test_velocity_target_and_min_snr_weights():
    from diffusers import DDPMScheduler

    sched = DDPMScheduler.from_config(default_scheduler_config(False, "v_prediction", "squaredcos_cap_v2", True, "trailing"))
    assert float(sched.alphas_cumprod[-1]) == pytest.approx(0.0, abs=1e-6)  # the last step is pure noise
    x0, noise = torch.randn(3, 3, 4, 4), torch.randn(3, 3, 4, 4)
    t = torch.tensor([0, 500, 999])
    a = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
    assert torch.allclose(training_target(sched, x0, noise, t), a.sqrt() * noise - (1 - a).sqrt() * x0, atol=1e-5)
    w = loss_weights(sched, t, 5.0)
    snr = (a / (1 - a)).flatten().double()
    assert torch.allclose(w.double(), snr.clamp(max=5.0) / (snr + 1), atol=1e-5)
    assert loss_weights(sched, t, None) is None
    eps = DDPMScheduler.from_config(default_scheduler_config(False))
    we = loss_weights(eps, torch.tensor([10, 900]), 5.0)
    assert we[0] < 1.0 and we[1] == pytest.approx(1.0)  # low noise (high SNR) is down-weighted, high noise is not


def _faces(root, identities=4, per=3):
    rng = np.random.default_rng(0)
    for i in range(identities):
        colour = rng.integers(0, 255, 3)
        folder = root / f"p{i}"
        folder.mkdir(parents=True)
        for j in range(per):
            img = np.clip(colour + rng.normal(0, 20, (112, 112, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(folder / f"p{i}_{j}.png")
    return root


def test_training_with_the_identity_recipe_records_the_condition_effect(tmp_path):
    from synthface.config import TrainRecipe, load_recipe
    from helpers_train import tiny_train_sets
    from test_train import CountingEmbedder

    sets = tiny_train_sets("tiny", tmp_path / "cache") + [
        "model.class_embedding=true",
        "model.center_condition=true",
        "model.prediction_type=v_prediction",
        "model.zero_terminal_snr=true",
        "model.timestep_spacing=trailing",
        "train.snr_gamma=5",
        "train.batch_size=4",
        "train.max_steps=3",
        "train.sample_every=3",
        "train.sample_scheduler=ddim",
        "data.condition=image",
    ]
    config = load_recipe(TrainRecipe, None, sets)
    run = tmp_path / "run"
    train_generator(config, _faces(tmp_path / "faces"), run, embedder=CountingEmbedder())
    model = load_model(run / "model")
    assert uses_class_embedding(model.unet) and model.scheduler_config["prediction_type"] == "v_prediction"
    assert model.condition_mean is not None and model.condition_mean.shape == (CountingEmbedder.dim,)
    # the training embeddings travel with the model: the gallery strategy draws from them by default
    from synthface.config import IdentitiesSection
    from synthface.generator.planning import with_model_gallery
    from synthface.gallery import read_embeddings_parquet

    gallery = read_embeddings_parquet(run / "model" / "gallery.parquet")
    assert gallery.embedder == "tiny" and len(gallery.names) == 4 and len(gallery.embeddings) == 12
    cfg = with_model_gallery(IdentitiesSection(strategy="gallery"), model)
    assert cfg.gallery == str(run / "model" / "gallery.parquet")
    named = IdentitiesSection(strategy="gallery", gallery="elsewhere.parquet")
    assert with_model_gallery(named, model).gallery == "elsewhere.parquet"
    assert with_model_gallery(IdentitiesSection(strategy="uniform"), model).gallery is None
    with open(run / "samples" / "condition.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["step"] for r in rows] == ["3"] and float(rows[0]["cond_vs_uncond"]) >= 0.0
    grid = np.asarray(Image.open(run / "samples" / "step-0000003.png"))
    assert grid.shape[0] == grid.shape[1]  # 3 x 3 cells: 2 identity rows + the unconditional row; real + 2 seeds


def test_identity_guidance_runs_on_a_zero_terminal_snr_model():
    from synthface.testing import TinyEmbedder

    model = _model()
    guide = TinyEmbedder(DIM, seed=1)
    emb = _embeddings(2, 4)
    plain = sample_batch(model, emb, [1, 2], scheduler="ddim", steps=3, guidance_scale=2.0)
    guided = sample_batch(
        model, emb, [1, 2], scheduler="ddim", steps=3, guidance_scale=2.0, identity_scale=5.0, identity_guide=guide
    )
    assert torch.isfinite(guided).all() and not torch.equal(plain, guided)


def test_accelerator_path_renders_the_same_images_batched(monkeypatch):
    """Off the CPU the loop batches the conditioning, the linear layers and the VAE decode: the same images up to rounding."""
    from synthface.generator import pipeline

    model = _model(latent=True)
    emb, seeds = _embeddings(4, 2), np.array([21, 22, 23, 24])
    options = dict(scheduler="ddim", steps=3, guidance_scale=2.0)
    per_row = sample_batch(model, emb, seeds, **options)
    decodes = []
    handle = model.vae.decoder.register_forward_pre_hook(lambda m, args: decodes.append(args[0].shape[0]))
    monkeypatch.setattr(pipeline, "batch_invariant", lambda device: False)
    try:
        batched = sample_batch(model, emb, seeds, **options)
    finally:
        handle.remove()
    assert decodes == [4], "the batched path decodes the whole batch in one call"
    assert torch.allclose(batched, per_row, atol=1e-4), float((batched - per_row).abs().max())
    assert not hasattr(model.unet.class_embedding, "forward") or "forward" not in vars(model.unet.class_embedding)
