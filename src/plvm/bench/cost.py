"""Table 7 of the paper, measured here: the Aligner's share of an LVLM's parameters and of its time.

Sizes:

* **LLaVA-1.5-7B at real size, random weights** — the architecture of ``llava-hf/llava-1.5-7b-hf`` written
  from its known sizes (no download): CLIP ViT-L/14 at 336 px (24 layers, width 1024, 577 tokens, features
  from the penultimate layer, CLS dropped → 576 image tokens), LLaVA-1.5's 2-layer GELU projector
  1024 → 4096 → 4096, and Llama-2-7B (32 layers, width 4096, MLP 11008, 32 heads, vocabulary 32 064 =
  32 000 + ``<image>`` + pad, untied LM head). The Aligner is the ``llava-1.5-7b`` preset on DINOv2-base
  (``facebook/dinov2-base`` sizes: 12 layers, width 768, 518 px position table, fed at 224 px → 257 tokens).
  Both are built on the meta device and materialised in bf16 by tiling a fixed random block into freshly
  allocated memory (norm weights 1, biases 0) — every page is really written, so the weights occupy ~14 GB
  of RAM like a real checkpoint, but nothing spends minutes in random initialisation.
* **LLaVA-mini** — the real model (``load_base("mini")``) and the ``mini`` Aligner on the packaged
  DINOv2-S/14 (its trainable weights random unless trained weights exist; timing does not depend on them).
* **tiny** (``--tiny``) — ``tiny_llava`` + a tiny Aligner, for the smoke test.

What is timed (compute only; image preprocessing excluded on both sides and reported apart):

* **LVLM** — one personalized answer's prefill and first token: the vision tower on the query image, the
  projector, the language model over the whole prompt (image tokens + ``<sks> is <t1>…<t16>.`` + the
  question, in the LLaVA-1.5 chat layout), the LM head plus the concept's logit column on the last
  position, and the argmax — exactly what :meth:`PersonalizedLVLM.generate` does before its first token.
* **Aligner** — one reference image → ``(e_word, e_weight, context)``: the frozen encoder's forward plus
  ``f_word``, ``f_weight`` and the resampler (``Aligner.forward(pixel_values=…)``).

The two are interleaved (one LVLM run, then the Aligner runs, per repeat) so that load changes hit both;
the reported time ratio is median(Aligner) / median(LVLM), with the range of per-repeat ratios.

The 7B timing prompt is tokenized with the tiny test tokenizer (the Llama tokenizer is not downloaded):
image (576) and concept (1 + 16, plus the name once more in the question) token counts are exact, the few
text tokens of the template and question differ from Llama's tokenizer by a handful (reported).
"""

from __future__ import annotations

import contextlib
import gc
import resource
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from ..aligner import Aligner
from ..config import get_preset
from .common import (
    NOT_MEASURED,
    BenchResult,
    Run,
    Stats,
    Table,
    command_line,
    eprint,
    fmt_int,
    fmt_pct,
    md_table,
)

# ---------------------------------------------------------------------- LLaVA-1.5-7B from its known sizes
LLAVA15_7B_VOCAB = 32064  # Llama-2's 32 000 + <image> (32 000) + <pad>, as in llava-hf/llava-1.5-7b-hf
LLAVA15_7B_IMAGE_TOKEN_ID = 32000
OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
PAPER_TABLE7 = {"time_ratio": 0.032, "param_ratio": 0.018}
SIZES = ("7b", "mini")


def clip_vit_l14_336_config() -> Any:
    """CLIP ViT-L/14 at 336 px (``openai/clip-vit-large-patch14-336``'s vision tower)."""
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=336,
        patch_size=14,
        projection_dim=768,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
    )


def llama2_7b_config(vocab_size: int = LLAVA15_7B_VOCAB) -> Any:
    """Llama-2-7B (``meta-llama/Llama-2-7b-hf``) with LLaVA-1.5's vocabulary of 32 064."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        hidden_act="silu",
        tie_word_embeddings=False,
    )


def llava15_7b_config(image_token_id: int = LLAVA15_7B_IMAGE_TOKEN_ID) -> Any:
    """``LlavaConfig`` of LLaVA-1.5-7B (``vision_feature_layer=-2``, ``default`` strategy → 576 tokens)."""
    from transformers import LlavaConfig

    return LlavaConfig(
        vision_config=clip_vit_l14_336_config(),
        text_config=llama2_7b_config(),
        image_token_id=image_token_id,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        image_seq_length=576,
        multimodal_projector_bias=True,
        tie_word_embeddings=False,
    )


def dinov2_base_config() -> Any:
    """``facebook/dinov2-base``: width 768, 12 layers, 12 heads, MLP ratio 4, 518 px position table."""
    from transformers import Dinov2Config

    return Dinov2Config(
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        mlp_ratio=4,
        image_size=518,
        patch_size=14,
        layerscale_value=1.0,
        use_swiglu_ffn=False,
    )


@contextlib.contextmanager
def empty_init() -> Iterator[None]:
    """Parameters on the meta device (no memory, no random init); buffers stay real (RoPE, position ids)."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        yield


def build_llava15_7b_meta(image_token_id: int = LLAVA15_7B_IMAGE_TOKEN_ID) -> nn.Module:
    """LLaVA-1.5-7B with every parameter on the meta device (instant; use :func:`materialize_`)."""
    from transformers import LlavaForConditionalGeneration

    with empty_init():
        return LlavaForConditionalGeneration(llava15_7b_config(image_token_id))


def build_aligner_meta(preset: str = "llava-1.5-7b") -> Aligner:
    """The preset's Aligner on a DINOv2-base encoder, parameters on the meta device."""
    from transformers import Dinov2Model

    config = get_preset(preset).aligner
    if config.d_enc != 768:
        raise ValueError(f"preset {preset!r} does not use DINOv2-base (d_enc={config.d_enc})")
    with empty_init():
        return Aligner(config, Dinov2Model(dinov2_base_config()))


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, (nn.LayerNorm, nn.GroupNorm)) or "norm" in type(module).__name__.lower()


def materialize_(module: nn.Module, dtype: torch.dtype = torch.bfloat16, seed: int = 0, block: int = 1_000_003) -> int:
    """Give every meta parameter real memory in ``dtype``, cheaply; returns the bytes allocated.

    Weights get a fixed random block (std 0.02, ``block`` a prime so rows differ) tiled over them, norm
    weights 1, biases 0, DINOv2 layer-scale 1 — values that keep activations finite; timing does not
    depend on them. Parameters shared between modules stay shared. Buffers are left alone.
    """
    generator = torch.Generator().manual_seed(seed)
    pattern = (torch.randn(block, generator=generator) * 0.02).to(dtype)
    done: dict[int, nn.Parameter] = {}
    allocated = 0
    for _, mod in module.named_modules():
        for pname, param in list(mod._parameters.items()):
            if param is None or param.device.type != "meta":
                continue
            if id(param) in done:
                mod._parameters[pname] = done[id(param)]
                continue
            tensor = torch.empty(param.shape, dtype=dtype)
            if _is_norm(mod) and pname == "weight":
                tensor.fill_(1.0)
            elif pname == "bias" or pname.endswith("_bias"):
                tensor.zero_()
            elif pname.startswith("lambda"):  # Dinov2LayerScale
                tensor.fill_(1.0)
            else:
                flat = tensor.view(-1)
                whole = flat.numel() // block
                if whole:
                    flat[: whole * block].view(whole, block).copy_(pattern.expand(whole, block))
                rest = flat.numel() - whole * block
                if rest:
                    flat[whole * block :].copy_(pattern[:rest])
            new = nn.Parameter(tensor, requires_grad=False)
            done[id(param)] = new
            mod._parameters[pname] = new
            allocated += tensor.numel() * tensor.element_size()
    return allocated


def llava15_timing_processor(tokenizer: Any = None) -> Any:
    """A ``LlavaProcessor`` laid out like LLaVA-1.5-7B's (CLIP 336 px preprocessing, 576 image tokens,
    ``USER: <image>\\n… ASSISTANT:``) on the tiny test tokenizer (no download)."""
    from transformers import CLIPImageProcessorPil, LlavaProcessor

    from ..models.tiny import LLAVA15_STYLE_TEMPLATE, tiny_tokenizer

    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": 336},
        crop_size={"height": 336, "width": 336},
        do_center_crop=True,
        image_mean=OPENAI_CLIP_MEAN,
        image_std=OPENAI_CLIP_STD,
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer or tiny_tokenizer(),
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA15_STYLE_TEMPLATE,
    )


# ---------------------------------------------------------------------- parameter counts
def _numel(module: nn.Module | None) -> int:
    if module is None:
        return 0
    seen: set[int] = set()
    total = 0
    for p in module.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def lvlm_param_counts(model: nn.Module) -> dict[str, int]:
    """Parameters of a ``LlavaForConditionalGeneration`` by part (works on the meta device)."""
    inner = model.model
    lm_head = model.get_output_embeddings()
    embed = model.get_input_embeddings()
    tied = lm_head is not None and embed is not None and lm_head.weight is embed.weight
    return {
        "total": _numel(model),
        "vision_tower": _numel(inner.vision_tower),
        "projector": _numel(inner.multi_modal_projector),
        "language_model": _numel(inner.language_model),
        "lm_head": 0 if tied else _numel(lm_head),
        "lm_head_tied": int(tied),
    }


def aligner_param_counts(aligner: Aligner) -> dict[str, int]:
    counts = aligner.num_trainable_parameters()
    encoder = _numel(aligner.encoder)
    return {
        "f_word": counts["f_word"],
        "f_weight": counts["f_weight"],
        "resampler": counts["resampler"],
        "trainable": counts["total"],
        "encoder": encoder,
        "with_encoder": counts["total"] + encoder,
    }


def param_summary(lvlm_counts: dict[str, int], aligner_counts: dict[str, int]) -> dict[str, Any]:
    total = lvlm_counts["total"]
    return {
        "lvlm": lvlm_counts,
        "aligner": aligner_counts,
        "ratio_trainable": aligner_counts["trainable"] / total,
        "ratio_with_encoder": aligner_counts["with_encoder"] / total,
    }


def params_7b() -> dict[str, Any]:
    """Exact parameter counts of LLaVA-1.5-7B and the ``llava-1.5-7b`` Aligner (meta device, instant)."""
    model = build_llava15_7b_meta()
    aligner = build_aligner_meta("llava-1.5-7b")
    return param_summary(lvlm_param_counts(model), aligner_param_counts(aligner))


# ---------------------------------------------------------------------- timing setups
@dataclass
class Setup:
    """A base LVLM + an Aligner to time against each other."""

    key: str
    label: str
    lvlm: Any  # PersonalizedLVLM
    aligner: Aligner
    reference_processor: Any
    dtype: torch.dtype
    params: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    build_s: float = 0.0
    weight_bytes: int = 0


def _noise_image(size: int, seed: int) -> Any:
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def setup_7b(dtype: torch.dtype = torch.bfloat16, seed: int = 0) -> Setup:
    """LLaVA-1.5-7B + the llava-1.5-7b Aligner, random weights in ``dtype`` (~14 GB in bf16)."""
    import time

    from ..injection import PersonalizedLVLM
    from ..pipeline import reference_image_processor

    t0 = time.perf_counter()
    processor = llava15_timing_processor()
    image_token_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    model = build_llava15_7b_meta(image_token_id)
    aligner = build_aligner_meta("llava-1.5-7b")
    params = param_summary(lvlm_param_counts(model), aligner_param_counts(aligner))
    need = (params["lvlm"]["total"] + params["aligner"]["with_encoder"]) * torch.finfo(dtype).bits // 8
    _check_memory(need)
    weight_bytes = materialize_(model, dtype, seed) + materialize_(aligner, dtype, seed + 1)
    model.eval()
    aligner.eval()
    preset = get_preset("llava-1.5-7b")
    lvlm = PersonalizedLVLM(model, processor, base_model=preset.base_model)
    return Setup(
        key="7b",
        label="LLaVA-1.5-7B + Aligner (DINOv2-base), random weights",
        lvlm=lvlm,
        aligner=aligner,
        reference_processor=reference_image_processor(preset.aligner.image_size),
        dtype=dtype,
        params=params,
        build_s=time.perf_counter() - t0,
        weight_bytes=weight_bytes,
        notes=[
            "7B prompt tokenized with the tiny test tokenizer: image and concept token counts are exact, "
            "template/question text tokens differ from Llama-2's tokenizer by a few."
        ],
    )


def _check_memory(need_bytes: int) -> None:
    from .common import _meminfo

    available = _meminfo().get("MemAvailable")
    if available is not None and available < need_bytes * 1.05 + 512 * 2**20:
        raise MemoryError(
            f"the 7B build needs ~{need_bytes / 2**30:.1f} GiB of weights; only {available / 2**30:.1f} GiB of RAM "
            "is available — close other programs or skip it with --sizes mini"
        )


def setup_mini(dtype: torch.dtype = torch.float32, seed: int = 0) -> Setup:
    """The real LLaVA-mini and the ``mini`` Aligner on the packaged DINOv2-S (trained weights if present)."""
    import time

    from ..injection import PersonalizedLVLM
    from ..models.base import find_mini_projector, load_base
    from ..pipeline import MINI_ALIGNER, load_aligner_weights, load_reference_encoder

    t0 = time.perf_counter()
    preset = get_preset("mini")
    model, processor = load_base("mini", dtype=dtype)
    lvlm = PersonalizedLVLM(model, processor, base_model=preset.base_model)
    encoder, ref_proc = load_reference_encoder(preset.aligner)
    torch.manual_seed(seed)
    aligner = Aligner(preset.aligner, encoder)
    trained = MINI_ALIGNER.exists()
    if trained:
        load_aligner_weights(aligner, MINI_ALIGNER)
    aligner = aligner.to(dtype).eval()
    notes = [
        f"LLaVA-mini projector: {'trained' if find_mini_projector() else 'RANDOM (not trained yet)'}; "
        f"Aligner weights: {'trained' if trained else 'random'} (timing does not depend on weights)."
    ]
    return Setup(
        key="mini",
        label="LLaVA-mini + Aligner (DINOv2-S)",
        lvlm=lvlm,
        aligner=aligner,
        reference_processor=ref_proc,
        dtype=dtype,
        params=param_summary(lvlm_param_counts(model), aligner_param_counts(aligner)),
        build_s=time.perf_counter() - t0,
        notes=notes,
    )


def setup_tiny(seed: int = 0) -> Setup:
    """``tiny_llava`` (LLaVA-1.5 layout) + a tiny Aligner on a 2-layer DINOv2 — the smoke-test setup."""
    from transformers import Dinov2Model

    from ..injection import PersonalizedLVLM
    from ..models.tiny import tiny_aligner_config, tiny_dinov2_config, tiny_llava
    from ..pipeline import reference_image_processor

    model, processor = tiny_llava(template="llava15", seed=seed)
    lvlm = PersonalizedLVLM(model, processor, base_model="tiny")
    config = tiny_aligner_config(lvlm.hidden_size)
    torch.manual_seed(seed + 1)
    aligner = Aligner(config, Dinov2Model(tiny_dinov2_config())).eval()
    return Setup(
        key="tiny",
        label="tiny LLaVA + tiny Aligner (smoke)",
        lvlm=lvlm,
        aligner=aligner,
        reference_processor=reference_image_processor(config.image_size),
        dtype=torch.float32,
        params=param_summary(lvlm_param_counts(model), aligner_param_counts(aligner)),
    )


# ---------------------------------------------------------------------- timing
def prompt_composition(lvlm: Any, batch: Any) -> dict[str, int]:
    """Token counts of a prepared one-prompt batch: image, concept (name + context slots), other text."""
    ids = batch.ids[0, : batch.lengths[0]]
    slot = batch.slot[0, : batch.lengths[0]]
    image = int((ids == lvlm.image_token_id).sum())
    concept = int((slot != -1).sum())
    total = int(batch.lengths[0])
    return {"total": total, "image": image, "concept": concept, "text": total - image - concept}


@torch.no_grad()
def prefill_first_token(lvlm: Any, batch: Any, tensors: Any) -> int:
    """Prefill (with KV cache, as generation does) + LM head with concept columns on the last position."""
    hidden, _cache = lvlm.hidden_states(batch, tensors, use_cache=True)
    logits = lvlm.logits_from_hidden(hidden[:, -1], tensors)
    return int(logits[0].float().argmax())


def time_setup(setup: Setup, repeats: int, warmup: int, aligner_runs: int = 3, seed: int = 0) -> dict[str, Any]:
    """Interleaved timing of the LVLM's prefill + first token and the Aligner's encode (see module doc)."""
    import time

    from ..conversation import single_turn

    lvlm, aligner = setup.lvlm, setup.aligner
    image_size = _image_side(lvlm.processor)
    query, reference = _noise_image(image_size, seed), _noise_image(setup.aligner.config.image_size, seed + 1)
    t0 = time.perf_counter()
    pixels = setup.reference_processor(images=[reference], return_tensors="pt")["pixel_values"]
    ref_prep_s = time.perf_counter() - t0
    with torch.no_grad():
        concept = aligner.make_concepts(["sks"], pixel_values=pixels)[0]
    concept.base_model = lvlm.base_model_id
    conv = single_turn("Is <sks> in this photo?", [concept], image=query)
    t0 = time.perf_counter()
    batch, tensors = lvlm.prepare([conv])
    prepare_s = time.perf_counter() - t0
    composition = prompt_composition(lvlm, batch)

    def run_aligner() -> None:
        with torch.no_grad():
            aligner(pixel_values=pixels)

    def run_encoder() -> None:
        aligner.encode_reference(pixels)

    for _ in range(max(0, warmup)):
        prefill_first_token(lvlm, batch, tensors)
        run_aligner()
        run_encoder()
    lvlm_s, aligner_s, encoder_s, ratios = [], [], [], []
    for r in range(max(1, repeats)):
        t = time.perf_counter()
        prefill_first_token(lvlm, batch, tensors)
        lvlm_s.append(time.perf_counter() - t)
        runs = []
        for _ in range(max(1, aligner_runs)):
            t = time.perf_counter()
            run_aligner()
            runs.append(time.perf_counter() - t)
        t = time.perf_counter()
        run_encoder()
        encoder_s.append(time.perf_counter() - t)
        aligner_s += runs
        ratios.append(float(np.median(runs)) / lvlm_s[-1])
        eprint(
            f"  [{setup.key}] repeat {r + 1}/{repeats}: LVLM {lvlm_s[-1]:.3f} s, Aligner {np.median(runs) * 1e3:.1f} ms"
        )
    lvlm_stats, aligner_stats = Stats.of(lvlm_s), Stats.of(aligner_s)
    return {
        "prompt_tokens": composition,
        "lvlm_s": lvlm_stats.to_dict(),
        "aligner_s": aligner_stats.to_dict(),
        "encoder_only_s": Stats.of(encoder_s).to_dict(),
        "time_ratio": aligner_stats.median / lvlm_stats.median,
        "time_ratio_per_repeat": Stats.of(ratios, unit="").to_dict(),
        "preprocess_s": {"lvlm_prepare": prepare_s, "reference_image": ref_prep_s},
        "image_side": image_size,
        "reference_side": setup.aligner.config.image_size,
    }


def _image_side(processor: Any) -> int:
    ip = processor.image_processor
    crop = getattr(ip, "crop_size", None) or {}
    size = getattr(ip, "size", None) or {}
    for d in (crop, size):
        if isinstance(d, dict):
            for key in ("height", "shortest_edge"):
                if d.get(key):
                    return int(d[key])
    return 224


def _peak_rss_bytes() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


# ---------------------------------------------------------------------- the benchmark
def bench_cost(
    sizes: Sequence[str] = SIZES,
    repeats: int = 3,
    warmup: int = 1,
    aligner_runs: int = 3,
    threads: int | None = None,
    dtype_7b: str = "bfloat16",
    dtype_mini: str = "float32",
    params_only: bool = False,
    tiny: bool = False,
    seed: int = 0,
) -> BenchResult:
    """Parameters and time of the Aligner vs its LVLM (Table 7). ``tiny`` times the tiny setup instead."""
    sizes = ["tiny"] if tiny else [s for s in sizes]
    unknown = [s for s in sizes if s not in SIZES + ("tiny",)]
    if unknown:
        raise ValueError(f"unknown size(s) {unknown}; choose from {', '.join(SIZES)}")
    command = command_line(
        "plvm bench cost",
        [
            ("--tiny", tiny),
            ("--sizes", None if tiny else list(sizes)),
            ("--params-only", params_only),
            ("--repeats", repeats),
            ("--warmup", warmup),
            ("--aligner-runs", aligner_runs),
            ("--threads", threads),
            ("--dtype-7b", dtype_7b if dtype_7b != "bfloat16" else None),
            ("--dtype-mini", dtype_mini if dtype_mini != "float32" else None),
        ],
    )
    run = Run(
        "cost",
        command,
        {
            "sizes": list(sizes),
            "repeats": repeats,
            "warmup": warmup,
            "aligner_runs": aligner_runs,
            "dtype_7b": dtype_7b,
            "dtype_mini": dtype_mini,
            "params_only": params_only,
            "seed": seed,
        },
        threads,
        tiny,
    )
    result = run.result
    data: dict[str, Any] = {"params": {}, "timing": {}}
    # exact counts of the paper's configuration, always (meta device, no memory)
    data["params"]["7b"] = params_7b()
    errors: dict[str, str] = {}
    for size in sizes:
        if params_only and size == "7b":
            continue
        dtype = getattr(torch, dtype_7b if size == "7b" else dtype_mini)
        eprint(f"cost: building {size} ({dtype}) …")
        try:
            setup = {
                "7b": lambda: setup_7b(dtype, seed),
                "mini": lambda: setup_mini(dtype, seed),
                "tiny": lambda: setup_tiny(seed),
            }[size]()
        except (MemoryError, OSError, RuntimeError) as exc:  # e.g. not enough RAM for 7B: keep the other sizes
            errors[size] = f"{type(exc).__name__}: {exc}"
            eprint(f"cost: {size} failed: {errors[size]}")
            gc.collect()
            continue
        data["params"][size] = setup.params
        result.notes += setup.notes
        if not params_only:
            torch.set_flush_denormal(True)
            try:
                timing = time_setup(setup, repeats, warmup, aligner_runs, seed)
            finally:
                torch.set_flush_denormal(False)
            timing.update(
                dtype=str(dtype).replace("torch.", ""),
                build_s=round(setup.build_s, 2),
                weight_bytes=setup.weight_bytes,
                peak_rss_bytes=_peak_rss_bytes(),
                label=setup.label,
            )
            data["timing"][size] = timing
        del setup
        gc.collect()  # give the 7B weights back before the next size
    if errors:
        data["errors"] = errors
        result.notes += [f"**{LABELS.get(k, k)} could not be run:** {v}" for k, v in errors.items()]
    result.data = data
    result.tables = cost_tables(data, tiny)
    result.notes.append(
        "Time ratio = median Aligner encode / median LVLM prefill + first token, both compute only "
        "(preprocessing reported separately in the JSON); flush-to-zero was on for denormals."
    )
    return run.finish()


LABELS = {"7b": "LLaVA-1.5-7B", "mini": "LLaVA-mini", "tiny": "tiny (smoke)"}


def cost_tables(data: dict[str, Any], tiny: bool = False) -> list[Table]:
    params, timing = data.get("params", {}), data.get("timing", {})
    rows = []
    for key in ("7b", "mini", "tiny"):
        p = params.get(key)
        if p is None:
            if key == "mini" and not tiny:
                rows.append([LABELS[key]] + [NOT_MEASURED] + ["-"] * 5)
            continue
        rows.append(
            [
                LABELS[key],
                fmt_int(p["lvlm"]["total"]),
                fmt_int(p["aligner"]["trainable"]),
                fmt_pct(p["ratio_trainable"]),
                fmt_int(p["aligner"]["encoder"]),
                fmt_int(p["aligner"]["with_encoder"]),
                fmt_pct(p["ratio_with_encoder"]),
            ]
        )
    rows.append(["paper, Table 7 (LLaVA-1.5-7B)", "-", "-", "≈ 1.8 %", "-", "-", "-"])
    param_table = Table(
        "Parameters: Aligner vs LVLM (Table 7)",
        md_table(
            [
                "model",
                "LVLM params (total)",
                "Aligner trainable",
                "ratio",
                "reference encoder",
                "Aligner incl. encoder",
                "ratio",
            ],
            rows,
        ),
    )

    time_rows = []
    for key in ("7b", "mini", "tiny"):
        t = timing.get(key)
        if t is None:
            if key != "tiny" and not tiny:
                time_rows.append([LABELS[key], "-", NOT_MEASURED, "-", "-", "-", "-"])
            continue
        tok = t["prompt_tokens"]
        lv, al, enc = (
            Stats.from_dict(t["lvlm_s"]),
            Stats.from_dict(t["aligner_s"]),
            Stats.from_dict(t["encoder_only_s"]),
        )
        rr = Stats.from_dict(t["time_ratio_per_repeat"])
        time_rows.append(
            [
                f"{LABELS[key]} ({t['dtype']})",
                f"{tok['total']} ({tok['image']} image + {tok['concept']} concept + {tok['text']} text)",
                lv.fmt(3 if lv.median < 10 else 1),
                al.scaled(1e3, "ms").fmt(1),
                enc.scaled(1e3, "ms").fmt(1),
                f"**{fmt_pct(t['time_ratio'])}**",
                f"{fmt_pct(rr.min)} – {fmt_pct(rr.max)}",
            ]
        )
    time_rows.append(["paper, Table 7 (LLaVA-1.5-7B)", "-", "-", "-", "-", "≈ 3.2 %", "-"])
    time_table = Table(
        "Time: Aligner encode vs one personalized answer's prefill + first token (Table 7)",
        md_table(
            [
                "model",
                "prompt tokens",
                "LVLM prefill + 1st token (min / **median** / max)",
                "Aligner encode",
                "of which encoder",
                "time ratio (medians)",
                "per-repeat ratios",
            ],
            time_rows,
        ),
    )
    return [param_table, time_table]


__all__ = [
    "LLAVA15_7B_VOCAB",
    "Setup",
    "aligner_param_counts",
    "bench_cost",
    "build_aligner_meta",
    "build_llava15_7b_meta",
    "clip_vit_l14_336_config",
    "cost_tables",
    "dinov2_base_config",
    "llama2_7b_config",
    "llava15_7b_config",
    "llava15_timing_processor",
    "lvlm_param_counts",
    "materialize_",
    "params_7b",
    "prefill_first_token",
    "setup_7b",
    "setup_mini",
    "setup_tiny",
    "time_setup",
]
