"""Arc2Face as upstream renders it: synthface's loop against diffusers' stock StableDiffusionPipeline.

The replica is full width where it matters: a CLIP text encoder 768 wide (so the 512-d ArcFace
embedding is zero-padded, as with the real encoder) and a UNet whose cross-attention takes 768. The
upstream side is what Arc2Face's README documents: the UNet and the encoder loaded with
``from_pretrained``, the SD 1.5 VAE, tokenizer and scheduler config, ``DPMSolverMultistepScheduler``
(or the LCM-LoRA with ``LCMScheduler``) made from that config, and ``pipeline(prompt_embeds=...)``
fed with the embeddings of :func:`upstream_prompt_embeds`, written from the README and model card:
normalise the embedding, zero-pad it to the encoder width, put it in place of the ``id`` token of
"photo of a id person" among the input token embeddings, run the text transformer on them.
The unconditional branch is the pipeline's own (it encodes the empty prompt itself).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from helpers_arc2face import clip_text_reference, write_kohya_lora
from synthface.generator.arc2face import Arc2FaceGenerator
from synthface.generator.arc2face_testing import tiny_arc2face_model
from synthface.generator.families import load_model
from synthface.generator.pipeline import sample_batch

pytestmark = pytest.mark.usefixtures("one_thread")

WIDTH = 768  # the width of SD 1.5's (and Arc2Face's) CLIP text encoder
STEPS = {"dpmsolver++": 5, "lcm": 3}
TOLERANCE = 5e-5  # images in [0, 1]; the loops differ only in the order of float operations (seen: ~1e-6)


@pytest.fixture(scope="module")
def replica(tmp_path_factory):
    return tiny_arc2face_model(tmp_path_factory.mktemp("a2f768") / "model", text_width=WIDTH, text_intermediate=3072)


@pytest.fixture(scope="module")
def lora(replica, tmp_path_factory):
    from diffusers import UNet2DConditionModel

    path = tmp_path_factory.mktemp("lcm") / "lcm-lora"
    write_kohya_lora(path, UNet2DConditionModel.from_pretrained(str(replica), subfolder="arc2face"), seed=3)
    return path


def identities(n: int, seed: int) -> torch.Tensor:
    """ArcFace-like embeddings, deliberately not unit length (upstream normalises them first)."""
    emb = torch.randn(n, 512, generator=torch.Generator().manual_seed(seed))
    return emb * torch.linspace(0.5, 20.0, n)[:, None]


# --------------------------------------------------------------------------- upstream, as documented


def upstream_pipeline(root, scheduler: str, lora=None):
    """Arc2Face's README pipeline: its UNet and encoder into SD 1.5's StableDiffusionPipeline."""
    from diffusers import (
        AutoencoderKL,
        DPMSolverMultistepScheduler,
        LCMScheduler,
        PNDMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTokenizer

    root = str(root)
    base_scheduler = PNDMScheduler.from_pretrained(root, subfolder="scheduler")  # SD 1.5's scheduler config
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL.from_pretrained(root, subfolder="vae"),
        text_encoder=CLIPTextModel.from_pretrained(root, subfolder="encoder"),
        tokenizer=CLIPTokenizer.from_pretrained(root, subfolder="tokenizer"),
        unet=UNet2DConditionModel.from_pretrained(root, subfolder="arc2face"),
        scheduler=base_scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    kind = {"dpmsolver++": DPMSolverMultistepScheduler, "lcm": LCMScheduler}[scheduler]
    pipe.scheduler = kind.from_config(pipe.scheduler.config)
    if lora is not None:
        pipe.load_lora_weights(str(lora))  # the README's LCM-LoRA step (kept as an adapter, not fused)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def upstream_prompt_embeds(pipe, id_emb: torch.Tensor) -> torch.Tensor:
    """(N, 512) ArcFace embeddings -> (N, 77, width) prompt embeddings, one identity at a time as upstream does."""
    tok, encoder = pipe.tokenizer, pipe.text_encoder
    id_emb = id_emb / torch.norm(id_emb, dim=1, keepdim=True)
    id_token = tok.encode("id", add_special_tokens=False)[0]
    ids = tok("photo of a id person", truncation=True, padding="max_length", max_length=tok.model_max_length, return_tensors="pt")
    ids = ids.input_ids
    out = []
    for emb in id_emb:
        tokens = encoder.get_input_embeddings()(ids).clone()
        tokens[ids == id_token] = F.pad(emb, (0, encoder.config.hidden_size - 512))
        out.append(clip_text_reference(encoder, tokens))
    return torch.cat(out)


def upstream_images(pipe, emb: torch.Tensor, seeds: list[int], steps: int, guidance: float) -> torch.Tensor:
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    return pipe(
        prompt_embeds=upstream_prompt_embeds(pipe, emb),
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=generators,
        output_type="pt",
    ).images


# --------------------------------------------------------------------------- the comparisons


def test_the_replica_is_full_width(replica):
    model = load_model(replica)
    assert isinstance(model, Arc2FaceGenerator)
    assert model.text_width == WIDTH and model.unet.config.cross_attention_dim == WIDTH
    padded = model.token_embeddings(identities(2, 0))[:, model.id_position]
    assert padded.shape == (2, WIDTH)
    assert torch.count_nonzero(padded[:, 512:]) == 0  # the embedding zero-padded 512 -> 768
    torch.testing.assert_close(padded[:, :512].norm(dim=-1), torch.ones(2))


def test_conditioning_equals_upstream_prompt_embeddings(replica):
    pipe = upstream_pipeline(replica, "dpmsolver++")
    model = load_model(replica)
    emb = identities(3, 1)
    with torch.no_grad():
        got = model.condition(emb)
        uncond = model.uncondition(1)
        _, upstream_uncond = pipe.encode_prompt(
            prompt=None, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True,
            prompt_embeds=got[:1],
        )  # fmt: skip
    assert got.shape == (3, 77, WIDTH)
    torch.testing.assert_close(got, upstream_prompt_embeds(pipe, emb), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(uncond, upstream_uncond, rtol=1e-5, atol=1e-5)  # the pipeline's own empty prompt


@pytest.mark.parametrize(
    "scheduler, guidance",
    [
        ("dpmsolver++", 3.0),  # Arc2Face's published default: CFG on
        ("dpmsolver++", 1.0),  # CFG off
        ("dpmsolver++", 0.5),  # diffusers turns CFG off at or below 1, and so does synthface
        ("lcm", 1.0),  # the README's fast mode
        ("lcm", 2.0),  # LCM with CFG on
    ],
)
def test_images_equal_diffusers_stable_diffusion_pipeline(replica, lora, scheduler, guidance):
    if scheduler == "lcm":
        pytest.importorskip("peft")
    adapter = lora if scheduler == "lcm" else None
    options = {"arc2face": {"lcm_lora": str(adapter)}} if adapter is not None else None
    model = load_model(replica, options=options)
    pipe = upstream_pipeline(replica, scheduler, adapter)
    emb, seeds, steps = identities(2, 2), [7, 1234], STEPS[scheduler]
    with torch.no_grad():
        expected = upstream_images(pipe, emb, seeds, steps, guidance)
    got = sample_batch(model, emb, seeds, scheduler=scheduler, steps=steps, guidance_scale=guidance)
    assert got.shape == expected.shape == (2, 3, 64, 64)
    torch.testing.assert_close(got, expected.float(), rtol=0, atol=TOLERANCE)
    # and the comparison can fail: another seed, or the other guidance, renders other images
    other = sample_batch(model, emb, [8, 1234], scheduler=scheduler, steps=steps, guidance_scale=guidance)
    assert (other[0] - expected[0]).abs().max() > 100 * TOLERANCE
    flipped = 1.0 if guidance > 1.0 else 3.0
    changed = sample_batch(model, emb, seeds, scheduler=scheduler, steps=steps, guidance_scale=flipped)
    assert (changed - expected).abs().max() > 100 * TOLERANCE
    if adapter is not None:  # the LoRA is in both renders: without it the images differ
        plain = sample_batch(load_model(replica), emb, seeds, scheduler=scheduler, steps=steps, guidance_scale=guidance)
        assert (plain - expected).abs().max() > 100 * TOLERANCE
