"""Helpers of the Arc2Face tests: CLIP's text transformer written out step by step, and a kohya-layout LoRA."""

from __future__ import annotations

import math

import torch


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


def clip_text_reference(encoder, tokens: torch.Tensor) -> torch.Tensor:
    """CLIP's text transformer written out: + positions, causal pre-norm blocks, final layer norm."""
    text = getattr(encoder, "text_model", encoder)  # transformers 4.x nests the modules, 5.x does not
    cfg = encoder.config
    b, t, c = tokens.shape
    heads = cfg.num_attention_heads
    d = c // heads
    x = tokens + text.embeddings.position_embedding.weight[:t]
    mask = torch.full((t, t), float("-inf")).triu(1)
    for layer in text.encoder.layers:
        y = layer.layer_norm1(x)
        att = layer.self_attn

        def split(z):
            return z.view(b, t, heads, d).transpose(1, 2)

        q, k, v = split(att.q_proj(y)), split(att.k_proj(y)), split(att.v_proj(y))
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d) + mask, dim=-1)
        x = x + att.out_proj((weights @ v).transpose(1, 2).reshape(b, t, c))
        x = x + layer.mlp.fc2(quick_gelu(layer.mlp.fc1(layer.layer_norm2(x))))
    return text.final_layer_norm(x)


def lora_targets(unet) -> list[str]:
    """The kinds of layers LCM-LoRA adapts: attention projections, feed-forward, resnet convs."""
    return [
        name
        for name, module in unet.named_modules()
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d))
        and name.split(".")[-1] in ("to_q", "to_k", "to_v", "0", "proj_in", "proj_out", "conv1", "conv2")
        and ("attentions" in name or "resnets" in name)
    ]


def write_kohya_lora(path, unet, rank=4, alpha=2.0, seed=0) -> dict[str, torch.Tensor]:
    """A LoRA in the kohya layout SD 1.5 LoRAs ship in (lora_unet_*.lora_down/lora_up/alpha); returns the deltas."""
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    state, deltas = {}, {}
    modules = dict(unet.named_modules())
    for name in lora_targets(unet):
        weight = modules[name].weight
        if weight.ndim == 4:
            down = torch.randn(rank, weight.shape[1], *weight.shape[2:], generator=gen) * 0.1
            up = torch.randn(weight.shape[0], rank, 1, 1, generator=gen) * 0.1
            delta = (up.flatten(1) @ down.flatten(1)).view(weight.shape)
        else:
            down = torch.randn(rank, weight.shape[1], generator=gen) * 0.1
            up = torch.randn(weight.shape[0], rank, generator=gen) * 0.1
            delta = up @ down
        key = "lora_unet_" + name.replace(".", "_")
        state[f"{key}.lora_down.weight"] = down
        state[f"{key}.lora_up.weight"] = up
        state[f"{key}.alpha"] = torch.tensor(alpha)
        deltas[name] = delta * (alpha / rank)
    path.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path / "pytorch_lora_weights.safetensors"))
    return deltas
