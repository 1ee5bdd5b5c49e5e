"""TAEF2 as the latent space of native models: the real weights (checksums, shapes, reconstruction),
its error messages, and a tiny random TinyAutoencoder through build -> save -> load -> generate."""

from __future__ import annotations

from pathlib import Path

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import TAEF2, taef2_missing

from synthface.errors import WeightsError
from synthface.generator import generate, load_model, sample_batch
from synthface.generator.native import build_native, load_native
from synthface.fingerprint import file_sha256
from synthface.generator.taef2 import (
    DECODER_FILE,
    ENCODER_FILE,
    KNOWN_SHA256,
    TinyAutoencoder,
    is_taef2_folder,
    load_taef2,
    vae_class,
    vae_downscale_factor,
)
from synthface.testing import TinyEmbedder, tiny_native
from synthface.generator.training.latents import load_vae

TAEF2_DIR = TAEF2
EMBED_DIM = 128
IMAGE_SIZE = 32


@pytest.fixture(scope="module")
def taef2_dir():
    if not all((TAEF2_DIR / name).is_file() for name in (ENCODER_FILE, DECODER_FILE)):
        pytest.skip(taef2_missing(TAEF2_DIR))
    return TAEF2_DIR


# The generator that ships in the repository carries TAEF2 (fp16, bit-exact to the published files):
# the tests of the real network run from a clone without the separate folder.
SHIPPED_VAE = Path(__file__).resolve().parents[1] / "models" / "synthface-lfw-latent-128" / "vae"


@pytest.fixture(scope="module")
def taef2():
    if all((TAEF2_DIR / name).is_file() for name in (ENCODER_FILE, DECODER_FILE)):
        return load_taef2(TAEF2_DIR)
    if (SHIPPED_VAE / "config.json").is_file():
        return vae_class(SHIPPED_VAE).from_pretrained(SHIPPED_VAE, torch_dtype=torch.float32)
    pytest.skip(taef2_missing(TAEF2_DIR))


def _centre_crop(path, size: int = 128) -> torch.Tensor:
    from PIL import Image

    image = np.asarray(Image.open(path).convert("RGB"))
    top, left = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
    crop = np.ascontiguousarray(image[top : top + size, left : left + size])
    return torch.from_numpy(crop).permute(2, 0, 1)[None].float().div(127.5).sub(1)


# --------------------------------------------------------------------------- the real weights


def test_published_checksums_match_the_files(taef2_dir):
    for name in (ENCODER_FILE, DECODER_FILE):
        assert file_sha256(taef2_dir / name) == KNOWN_SHA256[name]


def test_real_taef2_shapes_and_interface(taef2, one_thread):
    assert taef2.config.latent_channels == 32 and taef2.config.scaling_factor == 1.0 and taef2.config.shift_factor == 0.0
    assert vae_downscale_factor(taef2) == 8 and taef2.dtype == torch.float32
    assert sum(p.numel() for p in taef2.encoder.parameters()) == pytest.approx(1.34e6, rel=0.01)
    x = torch.rand(2, 3, 128, 128) * 2 - 1
    with torch.no_grad():
        out = taef2.encode(x)
        z = out.latent_dist.mean
        assert z.shape == (2, 32, 16, 16)
        assert torch.equal(out.latent_dist.sample(), z) and torch.equal(out.latent_dist.mode(), z)
        assert taef2.decode(z).sample.shape == (2, 3, 128, 128)
        assert taef2.encode(torch.zeros(1, 3, 112, 112)).latent_dist.mean.shape == (1, 32, 14, 14)


def test_real_face_round_trip_psnr(taef2, lfw_images, one_thread):
    path = lfw_images / "Aaron_Eckhart" / "Aaron_Eckhart_0001.jpg"
    if not path.is_file():
        pytest.skip(f"{path} not found (README, section 'LFW')")
    x = _centre_crop(path)
    with torch.no_grad():
        y = taef2.decode(taef2.encode(x).latent_dist.mean).sample.clamp(-1, 1)
    mse = (y - x).div(2).pow(2).mean().item()
    psnr = 10 * np.log10(1.0 / mse)
    assert psnr > 28, psnr


def test_load_vae_accepts_a_taef2_folder(taef2_dir):
    vae = load_vae(str(taef2_dir), torch.device("cpu"))
    assert isinstance(vae, TinyAutoencoder) and not any(p.requires_grad for p in vae.parameters())


def test_tampered_file_is_a_named_checksum_error(taef2_dir, tmp_path):
    for name in (ENCODER_FILE, DECODER_FILE):
        shutil.copy(taef2_dir / name, tmp_path / name)
    data = bytearray((tmp_path / DECODER_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / DECODER_FILE).write_bytes(bytes(data))
    with pytest.raises(
        WeightsError,
        match=rf"{DECODER_FILE} has sha256 [0-9a-f]{{64}} but the published {DECODER_FILE} has {KNOWN_SHA256[DECODER_FILE]}",
    ) as info:
        load_taef2(tmp_path)
    assert "\n" not in str(info.value) and "madebyollin/taesd" in str(info.value)


def test_folder_missing_a_file_is_a_named_error(taef2_dir, tmp_path):
    shutil.copy(taef2_dir / ENCODER_FILE, tmp_path / ENCODER_FILE)
    assert is_taef2_folder(tmp_path)
    with pytest.raises(WeightsError, match=rf"lacks {DECODER_FILE}: fetch {DECODER_FILE} from .*madebyollin/taesd") as info:
        load_vae(str(tmp_path), torch.device("cpu"))
    assert "\n" not in str(info.value)


def test_wrong_file_under_a_taef2_name_is_a_clear_error(tmp_path):
    torch.save({"0.weight": torch.zeros(16, 3, 3, 3), "14.weight": torch.zeros(8, 16, 3, 3)}, tmp_path / ENCODER_FILE)
    torch.save({"1.weight": torch.zeros(16, 8, 3, 3)}, tmp_path / DECODER_FILE)
    with pytest.raises(WeightsError, match="does not fit the TAEF2 architecture"):
        load_taef2(tmp_path, verify=False)
    with pytest.raises(WeightsError, match="has sha256"):
        load_taef2(tmp_path)


# --------------------------------------------------------------------------- a tiny random TinyAutoencoder


def _tiny_taef2(seed: int = 1) -> TinyAutoencoder:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TinyAutoencoder(latent_channels=8, width=16, scaling_factor=0.8, shift_factor=0.1).eval()


def _tiny_latent_native(seed: int = 0):
    return build_native(
        embedder="dlib",
        embedding_dim=EMBED_DIM,
        image_size=IMAGE_SIZE,
        block_out_channels=(16, 32),
        id_tokens=4,
        token_dim=32,
        layers_per_block=1,
        attention_head_dim=8,
        norm_num_groups=8,
        vae=_tiny_taef2(),
        seed=seed,
    )


def _embeddings(n: int, seed: int = 0) -> np.ndarray:
    e = np.random.default_rng(seed).standard_normal((n, EMBED_DIM)).astype(np.float32)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def test_tiny_autoencoder_save_pretrained_round_trip(tmp_path, one_thread):
    vae = _tiny_taef2()
    vae.save_pretrained(tmp_path / "vae", safe_serialization=True)
    config = json.loads((tmp_path / "vae" / "config.json").read_text())
    assert config["_class_name"] == "TinyAutoencoder" and config["latent_channels"] == 8
    assert (tmp_path / "vae" / "diffusion_pytorch_model.safetensors").is_file()
    assert vae_class(tmp_path / "vae") is TinyAutoencoder
    loaded = TinyAutoencoder.from_pretrained(tmp_path / "vae")
    assert loaded.config.scaling_factor == 0.8 and loaded.config.shift_factor == 0.1
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(vae(x).sample, loaded(x).sample)
    # training's load_vae reads the saved folder (and a model's vae/ sub-folder) back as a TinyAutoencoder
    assert isinstance(load_vae(str(tmp_path / "vae"), torch.device("cpu")), TinyAutoencoder)
    assert isinstance(load_vae(str(tmp_path), torch.device("cpu")), TinyAutoencoder)


def test_downscale_factor_of_both_vae_kinds():
    assert vae_downscale_factor(_tiny_taef2()) == 8
    assert vae_downscale_factor(tiny_native(image_size=16, latent=True).vae) == 2


def test_native_model_with_taef2_round_trips_and_generates_identically(tmp_path, one_thread):
    model = _tiny_latent_native()
    assert model.latent_shape == (8, IMAGE_SIZE // 8, IMAGE_SIZE // 8)
    path = model.save(tmp_path / "m")
    assert json.loads((path / "vae" / "config.json").read_text())["_class_name"] == "TinyAutoencoder"
    loaded = load_model(path)
    assert isinstance(loaded.vae, TinyAutoencoder) and isinstance(load_native(path).vae, TinyAutoencoder)
    assert loaded.vae.config.scaling_factor == 0.8
    emb, seeds = _embeddings(3), [1, 2, 3]
    options = dict(steps=2, scheduler="ddpm", guidance_scale=2.0)
    before = generate(model, emb, seeds, batch_size=2, **options)
    after = generate(loaded, emb, seeds, batch_size=3, **options)
    assert before.shape == (3, IMAGE_SIZE, IMAGE_SIZE, 3) and np.array_equal(before, after)


def test_taef2_decode_is_differentiable(one_thread):
    model = _tiny_latent_native()
    z = torch.randn(1, *model.latent_shape, requires_grad=True)
    model.decode(z).sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    # and identity guidance runs through it
    guide = TinyEmbedder(dim=EMBED_DIM, seed=3)
    out = sample_batch(model, _embeddings(2), [5, 6], steps=2, scheduler="ddpm", identity_scale=10.0, identity_guide=guide)
    assert out.shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE) and torch.isfinite(out).all()
