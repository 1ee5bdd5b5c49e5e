"""The Arc2Face family: Stable Diffusion 1.5 fine-tuned to draw a face from its ArcFace embedding.

Arc2Face (Paraperas Papantoniou et al., ECCV 2024) publishes two components on the Hugging Face Hub
in ``FoivosPar/Arc2Face``: ``arc2face/`` (a diffusers ``UNet2DConditionModel``) and ``encoder/`` (a
fine-tuned CLIP text encoder), plus ``arcface.onnx`` (the ArcFace network whose embeddings it takes).
The VAE, tokenizer and noise schedule come from the Stable Diffusion 1.5 base repository.

Conditioning: the prompt "photo of a id person" is tokenized; the input token embedding of ``id``
(its position found from the tokenizer) is replaced by the L2-normalised 512-d ArcFace embedding,
zero-padded to the text width, and the CLIP text transformer (position embeddings, causal
self-attention, final layer norm) runs on those token embeddings; its last hidden state is the
UNet's ``encoder_hidden_states``. The unconditional branch is what Arc2Face's published pipeline
uses when no negative embeddings are passed: the fine-tuned encoder's encoding of the empty prompt.

Everything samples through the one loop of :mod:`synthface.generator.pipeline`. Arc2Face's published
defaults are DPM-Solver++ with 25 steps and guidance 3.0; the fast mode loads the LCM-LoRA for SD 1.5
into the UNet and samples with the LCM scheduler in 2-4 steps at guidance 1.0.

Directories: a model directory holds ``arc2face/`` + ``encoder/`` (+ ``arcface.onnx``); when it also
holds ``vae/``, ``tokenizer/`` and ``scheduler/`` it is its own base, otherwise the base is
``stable-diffusion-v1-5/stable-diffusion-v1-5`` (or ``base_model``). Hub ids are fetched file by file
(only the folders named above) into the Hugging Face cache on first use.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F

from synthface.errors import ConfigError, InputError, WeightsError
from synthface.generator.families import Family, register_family
from synthface.hub import HubFiles, locate, status as hub_status
from synthface.generator.model import GeneratorModel

REPO = "FoivosPar/Arc2Face"
BASE_REPO = "stable-diffusion-v1-5/stable-diffusion-v1-5"
LCM_LORA_REPO = "latent-consistency/lcm-lora-sdv1-5"
PROMPT = "photo of a id person"
ID_WORD = "id"
ARCFACE_FILE = "arcface.onnx"
EMBEDDING_DIM = 512
UNET_FOLDER, ENCODER_FOLDER = "arc2face", "encoder"
BASE_FOLDERS = ("vae", "tokenizer", "scheduler")

# What each repository must provide: Hub ids fetch only the *_FILES; a usable copy (cached or a local
# directory) holds every *_REQUIRED entry ("a|b": either; Arc2Face ships its encoder as a .bin).
MODEL_FILES = (f"{UNET_FOLDER}/*", f"{ENCODER_FOLDER}/*")
MODEL_REQUIRED = (
    f"{UNET_FOLDER}/config.json", f"{UNET_FOLDER}/diffusion_pytorch_model.safetensors|{UNET_FOLDER}/diffusion_pytorch_model.bin",
    f"{ENCODER_FOLDER}/config.json", f"{ENCODER_FOLDER}/model.safetensors|{ENCODER_FOLDER}/pytorch_model.bin",
)  # fmt: skip
BASE_FILES = ("vae/config.json", "vae/diffusion_pytorch_model.safetensors", "tokenizer/*", "scheduler/*")
BASE_REQUIRED = (
    "vae/config.json", "vae/diffusion_pytorch_model.safetensors", "tokenizer/vocab.json", "tokenizer/merges.txt",
    "tokenizer/tokenizer_config.json", "scheduler/scheduler_config.json",
)  # fmt: skip
LORA_FILES = ("*.safetensors",)

# Arc2Face's published sampling settings, and those of its LCM-LoRA fast mode.
DEFAULT_SAMPLING = {"scheduler": "dpmsolver++", "steps": 25, "guidance_scale": 3.0}
LCM_SAMPLING = {"scheduler": "lcm", "steps": 4, "guidance_scale": 1.0}

LICENCES: dict[str, dict[str, str]] = {
    "arc2face": {
        "component": "Arc2Face UNet and CLIP text encoder (FoivosPar/Arc2Face)",
        "licence": "MIT",
        "url": "https://huggingface.co/FoivosPar/Arc2Face",
        "note": "trained on a restored WebFace42M (research use only), fine-tuned on FFHQ and CelebA-HQ",
    },
    "stable-diffusion-v1-5": {
        "component": "Stable Diffusion 1.5 VAE and tokenizer; Arc2Face is fine-tuned from SD 1.5",
        "licence": "CreativeML OpenRAIL-M",
        "url": "https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5",
        "note": "its use-based restrictions (Attachment A) pass on to derivatives and to the use of outputs",
    },
    "arcface": {
        "component": "ArcFace recognition network arcface.onnx (insightface-style, trained on WebFace42M)",
        "licence": "non-commercial research use only",
        "url": "https://github.com/deepinsight/insightface#license",
        "note": "insightface's pretrained models and WebFace42M are licensed for non-commercial research",
    },
}
LCM_LORA_LICENCE = {
    "component": "LCM-LoRA for SD 1.5 (latent-consistency/lcm-lora-sdv1-5)",
    "licence": "OpenRAIL++-M",
    "url": "https://huggingface.co/latent-consistency/lcm-lora-sdv1-5",
    "note": "fast-mode distillation adapter merged into the UNet",
}

# --------------------------------------------------------------------------- the model


class Arc2FaceGenerator(GeneratorModel):
    """Arc2Face as the sampling loop sees it (see the module docstring for the conditioning)."""

    family = "arc2face"
    template_scale = None  # faces are not on a fixed template: alignment detects them

    def __init__(
        self,
        unet: Any,
        text_encoder: Any,
        tokenizer: Any,
        vae: Any,
        scheduler_config: dict[str, Any],
        embedder: str = f"onnx:{REPO}/{ARCFACE_FILE}",
        source: str = "",
        licences: dict[str, dict[str, str]] | None = None,
    ) -> None:
        self.unet = unet
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.vae = vae
        self.scheduler_config = dict(scheduler_config)
        self.embedder = embedder
        self.embedding_dim = EMBEDDING_DIM
        self.source = source
        self.licences = dict(licences if licences is not None else LICENCES)
        self.lora: str | None = None
        width = int(text_encoder.config.hidden_size)
        if width < EMBEDDING_DIM:
            raise InputError(
                f"Arc2Face text encoder of {source or 'this model'} is {width} wide, narrower than the {EMBEDDING_DIM}-d "
                "ArcFace embedding it must carry: this is not an Arc2Face encoder"
            )
        self.text_width = width
        factor = 2 ** (len(vae.config.block_out_channels) - 1)
        size = unet.config.sample_size
        self.image_size = int(size if isinstance(size, int) else size[0]) * factor
        self.prompt_ids, self.id_token_id, self.id_position = prompt_tokens(tokenizer)
        self.uncond_ids = tokenizer(
            "", padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids
        self._uncond: torch.Tensor | None = None

    # ---- conditioning

    def token_embeddings(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, 512) ArcFace embeddings -> (B, T, C) input token embeddings of the prompt with ``id`` swapped."""
        ids = self.prompt_ids.to(self.text_encoder.device).expand(embeddings.shape[0], -1)
        tokens = self.text_encoder.get_input_embeddings()(ids)
        return self._swap(ids, tokens, self._padded(embeddings, tokens.dtype))

    def _padded(self, embeddings: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        emb = F.normalize(embeddings.float(), dim=-1)
        return F.pad(emb, (0, self.text_width - emb.shape[-1])).to(self.text_encoder.device, dtype)

    def _swap(self, ids: torch.Tensor, tokens: torch.Tensor, padded: torch.Tensor) -> torch.Tensor:
        mask = (ids == self.id_token_id).unsqueeze(-1)
        return torch.where(mask, padded[:, None, :].to(tokens.dtype), tokens)

    def condition(self, embeddings: torch.Tensor) -> torch.Tensor:
        if embeddings.ndim != 2 or embeddings.shape[-1] != EMBEDDING_DIM:
            raise ConfigError(f"Arc2Face takes (B, {EMBEDDING_DIM}) ArcFace embeddings, got {tuple(embeddings.shape)}")
        ids = self.prompt_ids.to(self.text_encoder.device).expand(embeddings.shape[0], -1)
        padded = self._padded(embeddings, self.text_encoder.dtype)

        def swap(_module: Any, _args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
            return self._swap(ids.reshape(output.shape[:-1]), output, padded)

        # The encoder's own forward (token embedding -> + positions -> causal transformer -> final
        # norm), with the token-embedding output of `id` replaced on its way in.
        handle = self.text_encoder.get_input_embeddings().register_forward_hook(swap)
        try:
            return self.text_encoder(input_ids=ids).last_hidden_state
        finally:
            handle.remove()

    def uncondition(self, batch: int) -> torch.Tensor:
        device = self.text_encoder.device
        if self._uncond is None or self._uncond.device != device or self._uncond.dtype != self.text_encoder.dtype:
            with torch.no_grad():
                self._uncond = self.text_encoder(input_ids=self.uncond_ids.to(device)).last_hidden_state
        return self._uncond.expand(batch, -1, -1)

    # ---- module handling

    def modules(self) -> list[torch.nn.Module]:
        return [m for m in (self.unet, self.text_encoder, self.vae) if m is not None]

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "Arc2FaceGenerator":
        for module in self.modules():
            first = next(module.parameters(), None)
            if first is None:
                continue
            if (device is not None and first.device != torch.device(device)) or (dtype is not None and first.dtype != dtype):
                module.to(device=device, dtype=dtype)
        self._uncond = None
        return self

    def eval(self) -> "Arc2FaceGenerator":
        for module in self.modules():
            module.eval()
        return self

    def num_parameters(self) -> int:
        return sum(p.numel() for m in self.modules() for p in m.parameters())

    def load_lora(self, spec: str | Path, scale: float = 1.0) -> "Arc2FaceGenerator":
        """Merge a UNet LoRA (e.g. the LCM-LoRA for SD 1.5) into the UNet's weights.

        ``spec`` is a Hub repo id, a directory holding the ``.safetensors`` LoRA file, or that file.
        The LoRA is fused, so sampling costs the same as without it.
        """
        from diffusers.utils import USE_PEFT_BACKEND

        if not USE_PEFT_BACKEND:
            raise WeightsError("loading a LoRA (the LCM fast mode) needs peft: pip install 'synthface[lcm]'")
        from diffusers.loaders import StableDiffusionLoraLoaderMixin as SDLora

        spec = str(spec)
        file = Path(spec).expanduser()
        if file.is_file():
            where, kwargs = file.parent, {"weight_name": file.name}
        else:
            where = locate(lora_files(spec))
            kwargs = {}
        try:
            with _quiet():
                state, alphas = SDLora.lora_state_dict(str(where), **kwargs)
        except (OSError, ValueError, RuntimeError) as exc:
            raise InputError(f"cannot read LoRA {spec}: {_first_line(exc)}") from None
        te = [k for k in state if k.startswith(("text_encoder.", "lora_te"))]
        if te:
            raise ConfigError(
                f"LoRA {spec} also adapts the text encoder ({len(te)} tensors): only UNet LoRAs such as "
                f"{LCM_LORA_REPO} are supported"
            )
        try:
            with _quiet():
                SDLora.load_lora_into_unet(state, alphas, unet=self.unet, adapter_name="synthface_lora")
                self.unet.fuse_lora(lora_scale=scale)
                self.unet.unload_lora()
        except (ValueError, RuntimeError, KeyError) as exc:
            raise InputError(f"LoRA {spec} does not fit this UNet: {_first_line(exc)}") from None
        self.lora = spec
        self.licences["lora"] = (
            dict(LCM_LORA_LICENCE)
            if spec == LCM_LORA_REPO
            else {
                "component": f"LoRA {spec} merged into the UNet",
                "licence": "unknown to synthface: see the LoRA's own model card",
                "url": "",
                "note": "",
            }
        )
        return self


def prompt_tokens(tokenizer: Any, prompt: str = PROMPT, word: str = ID_WORD) -> tuple[torch.Tensor, int, int]:
    """The prompt's padded token ids (1, T), the token id of ``word`` and its (single) position."""
    word_ids = tokenizer.encode(word, add_special_tokens=False)
    if len(word_ids) != 1:
        raise InputError(f"the Arc2Face tokenizer splits '{word}' into {len(word_ids)} tokens: use the SD 1.5 tokenizer")
    ids = tokenizer(
        prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids
    positions = (ids[0] == word_ids[0]).nonzero().flatten().tolist()
    if len(positions) != 1:
        raise InputError(f"'{word}' appears {len(positions)} times in the tokenized prompt '{prompt}'; expected once")
    return ids, int(word_ids[0]), int(positions[0])


# --------------------------------------------------------------------------- fetching and loading


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the libraries' loading progress bars and info logs (library code does not print)."""
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    bars = tlog.is_progress_bar_enabled()
    dverb, tverb = dlog.get_verbosity(), tlog.get_verbosity()
    tlog.disable_progress_bar()
    dlog.set_verbosity_error()
    tlog.set_verbosity_error()
    try:
        yield
    finally:
        if bars:
            tlog.enable_progress_bar()
        dlog.set_verbosity(dverb)
        tlog.set_verbosity(tverb)


def model_files(spec: str | Path = REPO) -> HubFiles:
    return HubFiles("Arc2Face model", str(spec), MODEL_FILES, MODEL_REQUIRED, "--model", suggest=(ARCFACE_FILE,))


def base_files(spec: str | Path = BASE_REPO) -> HubFiles:
    return HubFiles("Stable Diffusion 1.5 base", str(spec), BASE_FILES, BASE_REQUIRED, "--set arc2face.base_model=")


def lora_files(spec: str | Path = LCM_LORA_REPO) -> HubFiles:
    return HubFiles("LoRA", str(spec), LORA_FILES, LORA_FILES, "--set arc2face.lcm_lora=")


def _base_spec(root: Path | None, base_model: str | Path | None) -> str:
    """The SD 1.5 base: ``base_model``, else the model directory when it holds the base parts, else the Hub's."""
    if base_model:
        return str(base_model)
    return str(root) if root is not None and _is_base(root) else BASE_REPO


def _arcface_spec(spec: str, root: Path | None, arcface: str | None) -> str:
    """The conditioning ONNX file: ``arcface``, else the model directory's arcface.onnx, else the Hub repo's."""
    if arcface is not None:
        return arcface
    local = root / ARCFACE_FILE if root is not None else None
    hub_id = spec if not Path(spec).expanduser().exists() else None
    return str(local) if hub_id is None and local is not None and local.is_file() else f"{hub_id or REPO}/{ARCFACE_FILE}"


def needs(
    model: str | Path = REPO,
    *,
    base_model: str | Path | None = None,
    lcm_lora: str | Path | None = None,
    arcface: str | None = None,
) -> tuple[list[HubFiles], str]:
    """What :func:`load_arc2face` with these arguments reads: its repositories' files and the
    conditioning embedder's name (``onnx:...``). Decided as the loader decides, from what is on disk now."""
    spec = str(model)
    files = model_files(spec)
    root, _ = hub_status(files)
    out = [files, base_files(_base_spec(root, base_model))]
    if lcm_lora and not Path(str(lcm_lora)).expanduser().is_file():
        out.append(lora_files(lcm_lora))
    return out, f"onnx:{_arcface_spec(spec, root, arcface)}"


def is_arc2face(path: Path) -> bool:
    return (path / UNET_FOLDER / "config.json").is_file() and (path / ENCODER_FOLDER / "config.json").is_file()


def _is_base(path: Path) -> bool:
    return all((path / folder).is_dir() for folder in BASE_FOLDERS)


def load_arc2face(
    model: str | Path = REPO,
    *,
    base_model: str | Path | None = None,
    lcm_lora: str | Path | None = None,
    arcface: str | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Arc2FaceGenerator:
    """Load Arc2Face from a Hub id or directory (see the module docstring for the layout).

    ``base_model``: the SD 1.5 repo or directory giving VAE, tokenizer and scheduler (default: the
    model directory itself when it holds them, else ``stable-diffusion-v1-5/stable-diffusion-v1-5``).
    ``lcm_lora``: a LoRA to merge into the UNet (``latent-consistency/lcm-lora-sdv1-5`` for the fast
    mode). ``arcface``: the conditioning embedder's ONNX file (default: ``arcface.onnx`` of the model
    directory, else of ``FoivosPar/Arc2Face`` on the Hub).
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    spec = str(model)
    root = locate(model_files(spec))
    if not is_arc2face(root):
        raise InputError(f"{root} is not an Arc2Face model: it needs {UNET_FOLDER}/ and {ENCODER_FOLDER}/ (the {REPO} layout)")
    base_spec = _base_spec(root, base_model)
    base = locate(base_files(base_spec))
    if not _is_base(base):
        missing = [f for f in BASE_FOLDERS if not (base / f).is_dir()]
        raise InputError(
            f"SD 1.5 base {base_spec} lacks {', '.join(f + '/' for f in missing)}: pass a full SD 1.5 directory or repo"
        )
    try:
        with _quiet():
            unet = UNet2DConditionModel.from_pretrained(str(root), subfolder=UNET_FOLDER, torch_dtype=dtype)
            text_encoder = CLIPTextModel.from_pretrained(str(root), subfolder=ENCODER_FOLDER, torch_dtype=dtype)
            tokenizer = CLIPTokenizer.from_pretrained(str(base), subfolder="tokenizer")
            vae = AutoencoderKL.from_pretrained(str(base), subfolder="vae", torch_dtype=dtype)
            scheduler_config = dict(DDPMScheduler.load_config(str(base), subfolder="scheduler"))
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise InputError(f"cannot load Arc2Face from {spec} (base {base_spec}): {_first_line(exc)}") from None
    arcface = _arcface_spec(spec, root, arcface)
    generator = Arc2FaceGenerator(unet, text_encoder, tokenizer, vae, scheduler_config, embedder=f"onnx:{arcface}", source=spec)
    generator.to(device=torch.device(device)).eval()
    if lcm_lora:
        generator.load_lora(lcm_lora)  # fused where the UNet now lives
    return generator


def _load_family(path: Path | str, device: torch.device, dtype: torch.dtype, **options: Any) -> Arc2FaceGenerator:
    known = {"base_model", "lcm_lora", "arcface"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"unknown arc2face option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return load_arc2face(path, device=device, dtype=dtype, **{k: v for k, v in options.items() if v is not None})


register_family(
    Family(
        name="arc2face",
        detect=is_arc2face,
        load=_load_family,
        expects=f"{UNET_FOLDER}/ + {ENCODER_FOLDER}/ (the {REPO} layout)",
        hub_ids=(REPO.lower(),),
        needs=lambda target, **options: needs(target, **{k: v for k, v in options.items() if v is not None}),
    )
)
