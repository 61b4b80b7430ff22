"""Tiny random components for the IP-Adapter pipeline, built offline, written in the *full-size layouts*.

:func:`build_tiny_components` writes, under one directory::

    sd/                      a Stable Diffusion pipeline (``StableDiffusionPipeline.save_pretrained``):
                             tiny UNet2DConditionModel, AutoencoderKL, CLIPTextModel, CLIPTokenizer,
                             DDIMScheduler, no safety checker
    ip-adapter/models/ip-adapter-tiny-<variant>.safetensors
                             IP-Adapter weights with the key names of the released h94/IP-Adapter files
                             (``image_proj.*`` + ``ip_adapter.<n>.to_k_ip/to_v_ip.weight``)
    ip-adapter/models/image_encoder/
                             tiny CLIPVisionModelWithProjection (the IP-Adapter image encoder)
    clip/                    tiny CLIPModel + CLIPTokenizer + image processor (the CLIP-score filter)

so the code under test loads them exactly like the real checkpoints (``from_pretrained`` +
``load_ip_adapter(path, subfolder="models", weight_name=...)``): only the sizes differ. Nothing is
downloaded. The weights are random: the images are noise and the scores meaningless.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

TINY_CROSS_DIM = 32
TINY_VISION_HIDDEN = 32
TINY_VISION_IMAGE = 32
TINY_IMAGE_SIZE = 32  # generated image side (VAE with 2 blocks: latent side 16)
VARIANTS = ("plus-face", "full-face")


@dataclass(frozen=True)
class TinyComponents:
    """Paths of the tiny components, with the CLI arguments that load them."""

    root: Path
    sd: Path
    ip_adapter: Path
    ip_subfolder: str
    ip_weight: str
    clip: Path
    variant: str
    image_size: int = TINY_IMAGE_SIZE


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP's reversible byte -> printable-unicode table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def tiny_clip_tokenizer():
    """A character-level ``CLIPTokenizer`` (no merges): every byte, alone and word-final, + the 2 specials."""
    from transformers import CLIPTokenizer

    chars = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for c in chars:
        vocab[c] = len(vocab)
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    tok = CLIPTokenizer(vocab=vocab, merges=[])
    tok.model_max_length = 77
    return tok


def _text_config(vocab_size: int, bos: int, eos: int):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=TINY_CROSS_DIM,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=TINY_CROSS_DIM,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=eos,
    )


def _vision_config():
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=TINY_VISION_HIDDEN,
        image_size=TINY_VISION_IMAGE,
        patch_size=8,
        projection_dim=TINY_CROSS_DIM,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
    )


def _image_processor(size: int):
    from transformers import CLIPImageProcessorPil  # PIL backend: works without torchvision

    return CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def tiny_sd_pipeline(seed: int = 0):
    """A tiny random ``StableDiffusionPipeline`` (no safety checker, no IP-Adapter yet)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=TINY_IMAGE_SIZE // 2,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(8, 16),
        norm_num_groups=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TINY_CROSS_DIM,
        attention_head_dim=4,
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 16),
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=4,
        sample_size=TINY_IMAGE_SIZE,
    )
    tok = tiny_clip_tokenizer()
    text_encoder = CLIPTextModel(_text_config(len(tok), tok.bos_token_id, tok.eos_token_id)).eval()
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tok,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=_image_processor(TINY_VISION_IMAGE),
        image_encoder=None,
        requires_safety_checker=False,
    )


def _cross_attention_hidden_sizes(unet) -> list[int]:
    """Hidden size of every cross-attention layer, in ``unet.attn_processors`` order (IP-Adapter key order)."""
    sizes = []
    channels = list(unet.config.block_out_channels)
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        if name.startswith("mid_block"):
            sizes.append(channels[-1])
        elif name.startswith("up_blocks"):
            sizes.append(list(reversed(channels))[int(name[len("up_blocks.")])])
        else:
            sizes.append(channels[int(name[len("down_blocks.")])])
    return sizes


def tiny_ip_adapter_state_dict(unet, variant: str = "plus-face", seed: int = 0) -> dict[str, torch.Tensor]:
    """Random IP-Adapter weights for ``unet`` with the key names of the released checkpoints.

    * ``plus-face`` (like ``ip-adapter-plus-face_sd15``): a 4-layer perceiver resampler over the image
      encoder's penultimate hidden states (``image_proj.latents``, ``proj_in``, ``proj_out``, ``norm_out``,
      ``layers.<i>.0.{norm1,norm2,to_q,to_kv,to_out}``, ``layers.<i>.1.{0,1,3}``);
    * ``full-face`` (like ``ip-adapter-full-face_sd15``): an MLP over all hidden-state tokens
      (``image_proj.proj.{0,2,3}``).

    Both add ``ip_adapter.<1,3,5,…>.to_k_ip.weight`` / ``to_v_ip.weight`` for each cross-attention layer.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown tiny IP-Adapter variant {variant!r}; one of {VARIANTS}")
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * 0.05

    cross = unet.config.cross_attention_dim
    sd: dict[str, torch.Tensor] = {}
    emb = TINY_VISION_HIDDEN
    if variant == "plus-face":
        hidden, heads, dim_head, queries, ffn = 16, 1, 64, 4, 4
        inner = heads * dim_head
        sd["image_proj.latents"] = rnd(1, queries, hidden)
        sd["image_proj.proj_in.weight"], sd["image_proj.proj_in.bias"] = rnd(hidden, emb), rnd(hidden)
        sd["image_proj.proj_out.weight"], sd["image_proj.proj_out.bias"] = rnd(cross, hidden), rnd(cross)
        sd["image_proj.norm_out.weight"], sd["image_proj.norm_out.bias"] = torch.ones(cross), torch.zeros(cross)
        for i in range(4):  # diffusers builds the resampler with depth 4, like the released checkpoints
            p = f"image_proj.layers.{i}"
            for norm in ("norm1", "norm2"):
                sd[f"{p}.0.{norm}.weight"], sd[f"{p}.0.{norm}.bias"] = torch.ones(hidden), torch.zeros(hidden)
            sd[f"{p}.0.to_q.weight"] = rnd(inner, hidden)
            sd[f"{p}.0.to_kv.weight"] = rnd(2 * inner, hidden)
            sd[f"{p}.0.to_out.weight"] = rnd(hidden, inner)
            sd[f"{p}.1.0.weight"], sd[f"{p}.1.0.bias"] = torch.ones(hidden), torch.zeros(hidden)
            sd[f"{p}.1.1.weight"] = rnd(ffn * hidden, hidden)
            sd[f"{p}.1.3.weight"] = rnd(hidden, ffn * hidden)
    else:
        sd["image_proj.proj.0.weight"], sd["image_proj.proj.0.bias"] = rnd(emb, emb), rnd(emb)
        sd["image_proj.proj.2.weight"], sd["image_proj.proj.2.bias"] = rnd(cross, emb), rnd(cross)
        sd["image_proj.proj.3.weight"], sd["image_proj.proj.3.bias"] = torch.ones(cross), torch.zeros(cross)
    for n, size in enumerate(_cross_attention_hidden_sizes(unet)):
        key_id = 1 + 2 * n
        sd[f"ip_adapter.{key_id}.to_k_ip.weight"] = rnd(size, cross)
        sd[f"ip_adapter.{key_id}.to_v_ip.weight"] = rnd(size, cross)
    return sd


def tiny_image_encoder(seed: int = 0):
    from transformers import CLIPVisionModelWithProjection

    torch.manual_seed(seed + 1)
    return CLIPVisionModelWithProjection(_vision_config()).eval()


def tiny_clip_model(seed: int = 0):
    """A tiny random ``CLIPModel`` with its tokenizer and (PIL) image processor."""
    from transformers import CLIPConfig, CLIPModel

    tok = tiny_clip_tokenizer()
    torch.manual_seed(seed + 2)
    config = CLIPConfig(
        text_config=_text_config(len(tok), tok.bos_token_id, tok.eos_token_id).to_dict(),
        vision_config=_vision_config().to_dict(),
        projection_dim=TINY_CROSS_DIM,
    )
    return CLIPModel(config).eval(), tok, _image_processor(TINY_VISION_IMAGE)


def build_tiny_components(root: str | Path, variant: str = "plus-face", seed: int = 0) -> TinyComponents:
    """Write the tiny SD pipeline, IP-Adapter (+ image encoder) and CLIP model under ``root`` (idempotent)."""
    from safetensors.torch import save_file

    root = Path(root)
    weight = f"ip-adapter-tiny-{variant}.safetensors"
    out = TinyComponents(
        root=root,
        sd=root / "sd",
        ip_adapter=root / "ip-adapter",
        ip_subfolder="models",
        ip_weight=weight,
        clip=root / "clip",
        variant=variant,
    )
    stamp = root / "tiny.json"
    info = {"variant": variant, "seed": seed, "image_size": TINY_IMAGE_SIZE, "format": 1}
    if stamp.exists() and json.loads(stamp.read_text()) == info:
        return out
    pipe = tiny_sd_pipeline(seed)
    pipe.save_pretrained(out.sd, safe_serialization=True)
    models = out.ip_adapter / out.ip_subfolder
    models.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.contiguous() for k, v in tiny_ip_adapter_state_dict(pipe.unet, variant, seed).items()},
        str(models / weight),
    )
    tiny_image_encoder(seed).save_pretrained(models / "image_encoder")
    model, tok, proc = tiny_clip_model(seed)
    model.save_pretrained(out.clip)
    tok.save_pretrained(out.clip)
    proc.save_pretrained(out.clip)
    stamp.write_text(json.dumps(info))
    return out
