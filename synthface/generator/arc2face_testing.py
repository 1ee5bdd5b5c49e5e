"""A tiny random replica of the Arc2Face Hub layout, for tests and smoke runs (no downloads, seconds on a CPU).

It writes what ``FoivosPar/Arc2Face`` holds (``arc2face/`` UNet in safetensors, ``encoder/`` CLIP text
encoder as a ``pytorch_model.bin`` with ``text_model.`` keys, ``arcface.onnx``) and the SD 1.5 parts
Arc2Face borrows (``vae/``, ``tokenizer/`` with vocab.json + merges.txt, ``scheduler/``), each in the
files and formats of the real repositories, so it loads through the same ``from_pretrained`` code
as the Hub model::

    python -c "from synthface.generator.arc2face_testing import tiny_arc2face_model; tiny_arc2face_model('tiny-a2f')"
    synthface generate --model tiny-a2f --recipe recipes/arc2face-quickstart.yaml --out runs/a2f \\
        --set filter.enabled=false --set sampling.dtype=fp32

Its images are noise-like (random weights): it proves the mechanics, not the quality.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from synthface.generator.arc2face import ARCFACE_FILE, EMBEDDING_DIM, ENCODER_FOLDER, PROMPT, UNET_FOLDER

SPECIALS = ("<|startoftext|>", "<|endoftext|>")

# SD 1.5's scheduler/scheduler_config.json
SD15_SCHEDULER = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}


def clip_vocabulary(words: Sequence[str], seed: int | None = None) -> tuple[dict[str, int], list[str]]:
    """A CLIP BPE vocabulary (token -> id) and merges that spell ``words`` as one token each.

    Holds every lower-case letter (alone and word-final, ``x</w>``), the merges building each word
    left to right, and the two CLIP specials last (as in CLIP, where they are 49406 and 49407).
    ``seed`` shuffles the ids of the ordinary tokens.
    """
    tokens: list[str] = []
    merges: list[str] = []

    def add(token: str) -> None:
        if token not in tokens:
            tokens.append(token)

    letters = "abcdefghijklmnopqrstuvwxyz"
    for c in letters:
        add(c)
    for c in letters:
        add(c + "</w>")
    for word in words:
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        current = parts[0]
        for part in parts[1:]:
            merge = f"{current} {part}"
            if merge not in merges:
                merges.append(merge)
            current += part
            add(current)
    if seed is not None:
        order = np.random.default_rng(seed).permutation(len(tokens))
        tokens = [tokens[i] for i in order]
    vocab = {t: i for i, t in enumerate(tokens)}
    for special in SPECIALS:
        vocab[special] = len(vocab)
    return vocab, merges


def write_tokenizer(path: Path, words: Sequence[str], seed: int | None = None, max_length: int = 77) -> Path:
    """SD 1.5's tokenizer/ layout: vocab.json, merges.txt, special_tokens_map.json, tokenizer_config.json."""
    path.mkdir(parents=True, exist_ok=True)
    vocab, merges = clip_vocabulary(words, seed)
    (path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    specials = {"bos_token": SPECIALS[0], "eos_token": SPECIALS[1], "unk_token": SPECIALS[1], "pad_token": SPECIALS[1]}
    (path / "special_tokens_map.json").write_text(json.dumps(specials, indent=2), encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": max_length,
        "do_lower_case": True,
        "add_prefix_space": False,
        "errors": "replace",
        **specials,
    }
    (path / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return path


def write_arcface_onnx(path: Path, dim: int = EMBEDDING_DIM, seed: int = 0) -> Path:
    """A tiny ArcFace-shaped ONNX network: (N, 3, 112, 112) -> (N, dim), conv + linear, random weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    conv_w = rng.normal(0, 0.05, (4, 3, 16, 16)).astype(np.float32)
    conv_b = np.zeros(4, np.float32)
    fc_w = rng.normal(0, 0.1, (4 * 7 * 7, dim)).astype(np.float32)
    fc_b = np.zeros(dim, np.float32)
    nodes = [
        helper.make_node("Conv", ["input.1", "conv_w", "conv_b"], ["conv"], kernel_shape=[16, 16], strides=[16, 16]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("Flatten", ["relu"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["embedding"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_arcface",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["None", 3, 112, 112])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["None", dim])],
        initializer=[
            numpy_helper.from_array(conv_w, "conv_w"),
            numpy_helper.from_array(conv_b, "conv_b"),
            numpy_helper.from_array(fc_w, "fc_w"),
            numpy_helper.from_array(fc_b, "fc_b"),
        ],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="synthface")
    proto.ir_version = 8
    onnx.checker.check_model(proto)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path))
    return path


def write_tiny_base(path: str | Path, seed: int = 0, vocab_seed: int | None = None) -> Path:
    """The SD 1.5 parts Arc2Face uses, tiny and random: vae/ (8x downscale), tokenizer/, scheduler/."""
    from diffusers import AutoencoderKL

    path = Path(path)
    write_tokenizer(path / "tokenizer", PROMPT.split(), seed=vocab_seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(8, 8, 16, 16),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=8,
            sample_size=64,
            scaling_factor=0.18215,
        )
    vae.save_pretrained(path / "vae", safe_serialization=True)
    (path / "scheduler").mkdir(parents=True, exist_ok=True)
    (path / "scheduler" / "scheduler_config.json").write_text(json.dumps(SD15_SCHEDULER, indent=2), encoding="utf-8")
    return path


def tiny_arc2face_model(
    path: str | Path,
    seed: int = 0,
    base_path: str | Path | None = None,
    vocab_seed: int | None = None,
    text_layers: int = 2,
    text_width: int = EMBEDDING_DIM,
    text_intermediate: int = 64,
) -> Path:
    """Write a tiny random Arc2Face replica (a few MB, seeded) to ``path`` and return the path.

    The SD 1.5 parts go into ``path`` too (so the directory is its own base), or into ``base_path``
    when given (to exercise ``base_model``). ``vocab_seed`` shuffles the tokenizer's ids.
    64 px images from 8 px latents, a ``text_layers``-layer CLIP text encoder ``text_width`` wide
    (at least the 512 of the ArcFace embedding; 768 with ``text_intermediate`` 3072 is the real
    encoder's width, where the embedding is zero-padded) in heads of 64, and a 2-level UNet whose
    cross-attention takes that width.
    """
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    base = write_tiny_base(base_path if base_path is not None else path, seed, vocab_seed)
    vocab = json.loads((base / "tokenizer" / "vocab.json").read_text(encoding="utf-8"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            block_out_channels=(32, 64),
            layers_per_block=1,
            cross_attention_dim=text_width,
            attention_head_dim=8,
            norm_num_groups=8,
        )
        config = CLIPTextConfig(
            vocab_size=len(vocab),
            hidden_size=text_width,
            intermediate_size=text_intermediate,
            num_hidden_layers=text_layers,
            num_attention_heads=text_width // 64,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            projection_dim=text_width,
            # SD 1.5's text encoder config carries these (pre-#24773) ids; the pooled output is unused here
            bos_token_id=0,
            eos_token_id=2,
            pad_token_id=1,
        )
        encoder = CLIPTextModel(config)
        with torch.no_grad():  # CLIP-like scale: token embeddings ~0.02, so a unit ArcFace vector stands out
            encoder.get_input_embeddings().weight.normal_(0.0, 0.02)
    unet.save_pretrained(path / UNET_FOLDER, safe_serialization=True)
    # Arc2Face ships the encoder as transformers 4.x saved it: pytorch_model.bin, keys under text_model.
    enc_dir = path / ENCODER_FOLDER
    enc_dir.mkdir(parents=True, exist_ok=True)
    state = {f"text_model.{k}": v.contiguous() for k, v in encoder.state_dict().items()}
    torch.save(state, enc_dir / "pytorch_model.bin")
    enc_config = config.to_dict()
    enc_config["architectures"] = ["CLIPTextModelWrapper"]
    (enc_dir / "config.json").write_text(json.dumps(enc_config, indent=2, default=str), encoding="utf-8")
    write_arcface_onnx(path / ARCFACE_FILE, seed=seed)
    return path
