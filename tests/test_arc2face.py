"""The Arc2Face family on a tiny random replica of its Hub layout (loaded through the real from_pretrained code)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers_arc2face import clip_text_reference, write_kohya_lora
from synthface.errors import ConfigError, WeightsError
from synthface.generator.arc2face import (
    BASE_REPO,
    LICENCES,
    PROMPT,
    REPO,
    Arc2FaceGenerator,
    load_arc2face,
)
from synthface.generator.arc2face_testing import tiny_arc2face_model
from synthface.generator.families import load_model
from synthface.generator.pipeline import sample_batch
from synthface.generator.schedules import make_scheduler


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def replica(tmp_path_factory):
    return tiny_arc2face_model(tmp_path_factory.mktemp("a2f") / "model")


@pytest.fixture(scope="module")
def model(replica) -> Arc2FaceGenerator:
    return load_model(replica)  # type: ignore[return-value]


def identities(n: int, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(n, 512, generator=torch.Generator().manual_seed(seed)), dim=-1)


# --------------------------------------------------------------------------- references computed step by step


def reference_tokens(model: Arc2FaceGenerator, emb: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Token embeddings of the prompt with the `id` row replaced, and the `id` position, from scratch."""
    tok = model.tokenizer
    ids = tok(PROMPT, padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids[0]
    id_token = tok.convert_tokens_to_ids("id</w>")
    position = int((ids == id_token).nonzero()[0, 0])
    table = model.text_encoder.get_input_embeddings().weight
    tokens = table[ids].unsqueeze(0).repeat(len(emb), 1, 1).clone()
    width = table.shape[1]
    tokens[:, position] = torch.cat([emb / emb.norm(dim=-1, keepdim=True), torch.zeros(len(emb), width - 512)], -1)
    return tokens, position


def reference_sample(model, emb, seeds, guidance, steps, scheduler="dpmsolver++"):
    """The diffusion loop written out, one UNet call per branch (no batching of cond and uncond)."""
    sched = make_scheduler(scheduler, model.scheduler_config)
    sched.set_timesteps(steps)
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    x = torch.cat([torch.randn((1, *model.latent_shape), generator=g) for g in gens]) * sched.init_noise_sigma
    with torch.no_grad():
        cond = model.condition(emb)
        uncond = model.uncondition(len(seeds)) if guidance != 1.0 else None
        for t in sched.timesteps:
            inp = sched.scale_model_input(x, t)
            out = model.unet(inp, t, encoder_hidden_states=cond).sample
            if uncond is not None:
                u = model.unet(inp, t, encoder_hidden_states=uncond).sample
                out = u + guidance * (out - u)
            x = sched.step(out, t, x, generator=gens).prev_sample
        images = model.vae.decode(x / model.vae.config.scaling_factor).sample
    return (images / 2 + 0.5).clamp(0, 1)


# --------------------------------------------------------------------------- layout and loading


def test_replica_has_the_hub_layout_and_loads_as_arc2face(replica, model):
    for part in (
        "arc2face/config.json",
        "arc2face/diffusion_pytorch_model.safetensors",
        "encoder/config.json",
        "encoder/pytorch_model.bin",
        "arcface.onnx",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
        "tokenizer/vocab.json",
        "tokenizer/merges.txt",
        "scheduler/scheduler_config.json",
    ):
        assert (replica / part).is_file(), part
    keys = torch.load(replica / "encoder" / "pytorch_model.bin", weights_only=True)
    assert all(k.startswith("text_model.") for k in keys)  # the transformers 4.x checkpoint Arc2Face ships
    assert isinstance(model, Arc2FaceGenerator) and model.family == "arc2face"
    assert model.embedder == f"onnx:{replica / 'arcface.onnx'}"
    assert model.embedding_dim == 512 and model.image_size == 64 and model.latent_shape == (4, 8, 8)
    assert model.template_scale is None
    assert model.scheduler_config["beta_schedule"] == "scaled_linear"
    assert set(LICENCES) <= set(model.licences)
    assert "CreativeML OpenRAIL-M" in model.licences["stable-diffusion-v1-5"]["licence"]
    assert "non-commercial" in model.licences["arcface"]["licence"]


def test_conditioning_embedder_is_the_replicas_arcface_onnx(model):
    from synthface.faces.embedders import embed_aligned, get_embedder

    embedder = get_embedder(model.embedder, device="cpu")
    crops = np.random.default_rng(0).integers(0, 255, (2, 112, 112, 3), dtype=np.uint8)
    emb = embed_aligned(embedder, list(crops))
    assert embedder.dim == model.embedding_dim == emb.shape[1]
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)


def test_id_position_comes_from_the_tokenizer(tmp_path, model):
    shuffled = load_arc2face(tiny_arc2face_model(tmp_path / "shuffled", vocab_seed=7))
    for m in (model, shuffled):
        tokens = m.tokenizer.convert_ids_to_tokens(m.prompt_ids[0].tolist())
        assert tokens[: m.id_position + 2] == ["<|startoftext|>", "photo</w>", "of</w>", "a</w>", "id</w>", "person</w>"]
        assert m.id_token_id == m.tokenizer.convert_tokens_to_ids("id</w>")
    assert shuffled.id_token_id != model.id_token_id  # a different vocabulary, a different id: nothing hard-coded
    # Causal attention: rows before `id` do not depend on the identity; `id` and after do.
    a, b = model.condition(identities(1, 1)), model.condition(identities(1, 2))
    p = model.id_position
    torch.testing.assert_close(a[:, :p], b[:, :p], rtol=0, atol=1e-6)
    assert (a[:, p:] - b[:, p:]).abs().amax(dim=-1).min() > 1e-3


def test_conditioning_equals_the_step_by_step_reference(model):
    emb = identities(3) * torch.tensor([[1.0], [2.5], [0.3]])  # un-normalised input: the model normalises
    tokens, position = reference_tokens(model, emb)
    assert position == model.id_position
    with torch.no_grad():
        torch.testing.assert_close(model.token_embeddings(emb), tokens, rtol=0, atol=0)
        expected = clip_text_reference(model.text_encoder, tokens)
        got = model.condition(emb)
    assert got.shape == (3, model.tokenizer.model_max_length, 512)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_unconditional_branch_is_the_encoders_empty_prompt(model):
    tok = model.tokenizer
    ids = tok("", padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
    with torch.no_grad():
        expected = clip_text_reference(model.text_encoder, model.text_encoder.get_input_embeddings()(ids))
        got = model.uncondition(2)
    assert got.shape == (2, tok.model_max_length, 512)
    torch.testing.assert_close(got, expected.expand(2, -1, -1), rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- sampling through the one loop


def test_guidance_one_is_the_conditional_branch_alone(model, monkeypatch):
    emb, seeds = identities(2, 3), [11, 12]
    got = sample_batch(model, emb, seeds, steps=3, guidance_scale=1.0)
    expected = reference_sample(model, emb, seeds, 1.0, 3)
    torch.testing.assert_close(got, expected, rtol=0, atol=2e-4)
    # the unconditional branch is never computed at guidance 1
    monkeypatch.setattr(model, "uncondition", lambda batch: torch.full((batch, 77, 512), float("nan")))
    again = sample_batch(model, emb, seeds, steps=3, guidance_scale=1.0)
    assert torch.equal(again, got)


def test_cfg_at_the_published_guidance_matches_the_reference(model):
    emb, seeds = identities(2, 4), [5, 6]
    got = sample_batch(model, emb, seeds, steps=3, guidance_scale=3.0)
    torch.testing.assert_close(got, reference_sample(model, emb, seeds, 3.0, 3), rtol=0, atol=2e-4)
    assert (got - sample_batch(model, emb, seeds, steps=3, guidance_scale=1.0)).abs().max() > 1e-3


# --------------------------------------------------------------------------- LCM-LoRA fast mode


def test_lcm_lora_is_merged_into_the_unet(tmp_path, replica, model):
    pytest.importorskip("peft")
    base = {k: v.clone() for k, v in model.unet.state_dict().items()}
    deltas = write_kohya_lora(tmp_path / "lcm-lora", model.unet)
    fast = load_model(replica, options={"arc2face": {"lcm_lora": str(tmp_path / "lcm-lora")}})
    merged = fast.unet.state_dict()
    assert set(merged) == set(base)  # fused and unloaded: a plain UNet again
    for name, delta in deltas.items():
        torch.testing.assert_close(merged[f"{name}.weight"], base[f"{name}.weight"] + delta, rtol=1e-5, atol=1e-5)
    untouched = [k for k in base if not any(k == f"{n}.weight" for n in deltas)]
    assert all(torch.equal(merged[k], base[k]) for k in untouched)
    assert fast.lora == str(tmp_path / "lcm-lora") and "lora" in fast.licences
    images = sample_batch(fast, identities(2, 8), [1, 2], scheduler="lcm", steps=2, guidance_scale=1.0)
    assert images.shape == (2, 3, 64, 64) and torch.isfinite(images).all()


def test_lora_in_the_diffusers_layout_loads_too(tmp_path, model):
    pytest.importorskip("peft")
    from diffusers.loaders import StableDiffusionLoraLoaderMixin
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from synthface.generator.arc2face_testing import tiny_arc2face_model as make

    root = make(tmp_path / "m")
    fresh = load_arc2face(root)
    base = {k: v.clone() for k, v in fresh.unet.state_dict().items()}
    donor = load_arc2face(root).unet
    torch.manual_seed(0)
    donor.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_v"], init_lora_weights=False))
    layers = get_peft_model_state_dict(donor)
    StableDiffusionLoraLoaderMixin.save_lora_weights(
        tmp_path / "lora", unet_lora_layers=convert_state_dict_to_diffusers(layers), safe_serialization=True
    )
    fresh.load_lora(tmp_path / "lora" / "pytorch_lora_weights.safetensors")
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    delta = layers[f"{name}.lora_B.weight"] @ layers[f"{name}.lora_A.weight"]
    torch.testing.assert_close(fresh.unet.state_dict()[f"{name}.weight"], base[f"{name}.weight"] + delta)


# --------------------------------------------------------------------------- base model and offline errors


def test_base_model_from_another_directory(tmp_path):
    root = tiny_arc2face_model(tmp_path / "a2f", base_path=tmp_path / "sd15")
    assert not (root / "vae").exists() and (tmp_path / "sd15" / "vae").is_dir()
    m = load_model(root, options={"arc2face": {"base_model": str(tmp_path / "sd15")}})
    assert m.image_size == 64 and m.condition(identities(1)).shape == (1, 77, 512)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """HF_HUB_OFFLINE=1 with an empty cache: nothing can be fetched, nothing is cached."""
    import huggingface_hub.constants as constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))


def test_offline_hub_id_gives_one_line_error_naming_the_fix(offline_hub):
    with pytest.raises(WeightsError) as info:
        load_model(REPO)
    message = str(info.value)
    assert "\n" not in message
    assert REPO in message and "hf download FoivosPar/Arc2Face" in message and "--model" in message
    with pytest.raises(WeightsError) as info:
        load_arc2face("someone/arc2face-mirror")
    assert "someone/arc2face-mirror" in str(info.value) and "\n" not in str(info.value)


def test_offline_base_model_error_names_its_recipe_key(tmp_path, offline_hub):
    root = tiny_arc2face_model(tmp_path / "a2f", base_path=tmp_path / "sd15")
    with pytest.raises(WeightsError) as info:
        load_model(root)  # no vae/tokenizer/scheduler beside it: the SD 1.5 Hub base is needed
    message = str(info.value)
    assert BASE_REPO in message and "arc2face.base_model" in message and "\n" not in message


def test_unknown_family_option_is_a_config_error(replica):
    with pytest.raises(ConfigError, match="lcm_lorra"):
        load_model(replica, options={"arc2face": {"lcm_lorra": "x"}})


def test_replica_tokenizer_files_are_sd15_shaped(replica):
    config = json.loads((replica / "tokenizer" / "tokenizer_config.json").read_text())
    assert config["model_max_length"] == 77 and config["pad_token"] == "<|endoftext|>"
    vocab = json.loads((replica / "tokenizer" / "vocab.json").read_text())
    assert max(vocab.values()) == vocab["<|endoftext|>"] == len(vocab) - 1
