"""The shared sampling loop and the native model: determinism, CFG batching, guidance, save/load."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers_generate import EMBED_DIM, IMAGE_SIZE, make_tiny_model
from synthface.errors import InputError, ModelMismatchError, WeightsError
from synthface.generator import generate, load_model, sample_batch
from synthface.generator.native import IdentityProjector, load_native
from synthface.generator.pipeline import shared_timestep
from synthface.testing import TinyEmbedder, tiny_native


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def model(model_dir):
    return load_model(model_dir)


def _embeddings(n: int, seed: int = 0) -> np.ndarray:
    e = np.random.default_rng(seed).standard_normal((n, EMBED_DIM)).astype(np.float32)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def test_cfg_runs_cond_and_uncond_in_one_batched_unet_call(model):
    calls = []
    handle = model.unet.register_forward_pre_hook(lambda m, args, kwargs: calls.append(args[0].shape[0]), with_kwargs=True)
    try:
        sample_batch(model, _embeddings(3), [1, 2, 3], scheduler="ddim", steps=4, guidance_scale=3.0)
        assert calls == [6, 6, 6, 6]
        calls.clear()
        sample_batch(model, _embeddings(3), [1, 2, 3], scheduler="ddim", steps=2, guidance_scale=1.0)
        assert calls == [3, 3]  # no guidance, no unconditional rows
    finally:
        handle.remove()


def test_guidance_at_or_below_one_is_the_conditional_branch_alone_as_in_diffusers(model):
    emb, seeds = _embeddings(3), [1, 2, 3]
    options = dict(scheduler="ddim", steps=2)
    calls = []
    handle = model.unet.register_forward_pre_hook(lambda m, args, kwargs: calls.append(args[0].shape[0]), with_kwargs=True)
    try:
        plain = sample_batch(model, emb, seeds, guidance_scale=1.0, **options)
        for scale in (0.0, 0.5, [0.0, 0.7, 1.0]):
            calls.clear()
            assert torch.equal(sample_batch(model, emb, seeds, guidance_scale=scale, **options), plain), scale
            assert calls == [3, 3]  # never an unconditional row: nothing pushes towards the unconditional output
    finally:
        handle.remove()
    # a scale below 1 beside a guided one renders as 1 would in that batch
    mixed = sample_batch(model, emb, seeds, guidance_scale=[3.0, 0.5, 2.0], **options)
    same = sample_batch(model, emb, seeds, guidance_scale=[3.0, 1.0, 2.0], **options)
    assert torch.equal(mixed, same)


def test_guidance_changes_images_and_unconditional_ignores_identity(model):
    emb, seeds = _embeddings(2), [5, 6]
    plain = sample_batch(model, emb, seeds, scheduler="ddim", steps=2, guidance_scale=1.0)
    guided = sample_batch(model, emb, seeds, scheduler="ddim", steps=2, guidance_scale=4.0)
    assert not torch.equal(plain, guided)
    u1 = sample_batch(model, None, seeds, scheduler="ddim", steps=2, unconditional=True)
    u2 = sample_batch(model, _embeddings(2, seed=9), seeds, scheduler="ddim", steps=2, unconditional=True)
    assert torch.equal(u1, u2)


def test_timestep_sharing_matches_the_plain_unet(model):
    x = torch.randn(4, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0))
    h = model.condition(torch.from_numpy(_embeddings(4)))
    t = torch.tensor(500)
    with torch.no_grad():
        plain = model.unet(x, t, encoder_hidden_states=h).sample
        with shared_timestep(model.unet):
            shared = model.unet(x, t, encoder_hidden_states=h).sample
    torch.testing.assert_close(shared, plain, rtol=1e-4, atol=1e-5)


def test_identity_guidance_pulls_samples_towards_the_identity(model):
    guide = TinyEmbedder(dim=EMBED_DIM, seed=3)
    emb, seeds = _embeddings(3, seed=4), [21, 22, 23]
    options = dict(scheduler="ddpm", steps=4, guidance_scale=1.0)
    base = sample_batch(model, emb, seeds, **options)
    pulled = sample_batch(model, emb, seeds, identity_scale=300.0, identity_guide=guide, **options)
    target = torch.from_numpy(emb)
    with torch.no_grad():
        before = torch.nn.functional.cosine_similarity(guide(base), target).mean().item()
        after = torch.nn.functional.cosine_similarity(guide(pulled), target).mean().item()
    assert after > before + 0.2, (before, after)
    with pytest.raises(Exception, match="identity guide"):
        sample_batch(model, emb, seeds, identity_scale=1.0, **options)


def test_wrong_embedding_dimension_is_refused(model):
    with pytest.raises(ModelMismatchError, match="dimension 64 .* expects 128"):
        sample_batch(model, np.zeros((2, 64), np.float32), [1, 2], steps=1)


def test_native_model_round_trip(tmp_path, model):
    path = tmp_path / "m"
    model_in = tiny_native(embedding_dim=EMBED_DIM, image_size=IMAGE_SIZE, seed=5)
    model_in.save(path)
    meta = json.loads((path / "synthface.json").read_text())
    assert meta["embedder"] == "dlib" and meta["embedding_dim"] == EMBED_DIM and meta["format_version"] == 1
    assert (path / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert (path / "projector" / "diffusion_pytorch_model.safetensors").is_file()
    assert (path / "scheduler" / "scheduler_config.json").is_file()
    loaded = load_native(path)
    emb = _embeddings(2)
    assert torch.equal(
        sample_batch(model_in, emb, [1, 2], steps=2, scheduler="ddpm"),
        sample_batch(loaded, emb, [1, 2], steps=2, scheduler="ddpm"),
    )
    assert sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) < 5_000_000


def test_latent_model_with_vae(tmp_path):
    path = make_tiny_model(tmp_path / "latent", latent=True)
    model = load_model(path)
    assert model.vae is not None and model.latent_shape == (4, IMAGE_SIZE // 2, IMAGE_SIZE // 2)
    emb = _embeddings(3)
    a = generate(model, emb, [1, 2, 3], batch_size=3, steps=2, scheduler="ddpm")
    b = generate(model, emb, [1, 2, 3], batch_size=2, steps=2, scheduler="ddpm")
    assert a.shape == (3, IMAGE_SIZE, IMAGE_SIZE, 3) and np.array_equal(a, b)


def test_bf16_sampling_runs(model_dir):
    model = load_model(model_dir, dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    out = sample_batch(model, _embeddings(2), [1, 2], steps=2, scheduler="dpmsolver++")
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_projector_condition_dropout_swaps_in_null_tokens():
    proj = IdentityProjector(embedding_dim=8, num_tokens=3, token_dim=16)
    emb = torch.randn(4, 8)
    tokens = proj(emb, drop_mask=torch.tensor([True, False, True, False]))
    assert tokens.shape == (4, 3, 16)
    assert torch.equal(tokens[0], proj.null_tokens) and torch.equal(tokens[2], proj.null_tokens)
    torch.testing.assert_close(tokens[1], proj(emb[1:2])[0])


def test_model_resolution_errors(tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="expected .*native: synthface.json"):
        load_model(tmp_path / "empty")
    with pytest.raises(InputError, match="not found"):
        load_model(tmp_path / "missing")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(WeightsError, match="hf download nobody-here/no-such-model"):
        load_model("nobody-here/no-such-model")


def test_saved_model_lists_every_file_with_its_sha256_and_loading_checks_them(tmp_path):
    import hashlib

    path = tiny_native(embedding_dim=EMBED_DIM, image_size=IMAGE_SIZE, seed=5, latent=True).save(tmp_path / "m")
    files = json.loads((path / "synthface.json").read_text())["files"]
    on_disk = sorted(f.relative_to(path).as_posix() for f in path.rglob("*") if f.is_file() and f.name != "synthface.json")
    assert sorted(files) == on_disk and "vae/diffusion_pytorch_model.safetensors" in files
    for name, entry in files.items():
        data = (path / name).read_bytes()
        assert entry == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    load_native(path)  # intact: loads

    weights = path / "unet" / "diffusion_pytorch_model.safetensors"
    original = weights.read_bytes()
    damaged = bytearray(original)
    damaged[-1] ^= 1  # same size, one bit flipped
    weights.write_bytes(bytes(damaged))
    with pytest.raises(InputError, match=r"unet/diffusion_pytorch_model.safetensors does not match its sha256"):
        load_native(path)
    weights.write_bytes(original[:-10])
    with pytest.raises(InputError, match=r"has \d+ bytes where synthface.json says \d+ \(changed or truncated\)"):
        load_native(path)
    weights.unlink()
    with pytest.raises(InputError, match="is missing"):
        load_native(path)


def test_half_precision_weights_load_back_to_nearly_the_same_images(tmp_path):
    model = tiny_native(embedding_dim=EMBED_DIM, image_size=IMAGE_SIZE, seed=5, latent=True)
    full = model.save(tmp_path / "fp32")
    half = model.save(tmp_path / "fp16", weights_dtype=torch.float16)
    size = lambda p: sum(f.stat().st_size for f in (p / "unet").rglob("*.safetensors"))  # noqa: E731
    assert size(half) < 0.6 * size(full)
    assert next(model.unet.parameters()).dtype == torch.float32  # saving did not change the model in memory
    a, b = load_native(full), load_native(half)
    assert next(b.unet.parameters()).dtype == torch.float32 and next(b.projector.parameters()).dtype == torch.float32
    emb = _embeddings(2)
    x, y = (sample_batch(m, emb, [1, 2], steps=2, scheduler="ddim") for m in (a, b))
    assert not torch.equal(x, y) and (x - y).abs().max() < 0.05
