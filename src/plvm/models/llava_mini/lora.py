"""Optional LoRA on LLaVA-mini's language model, for stage 1 only (issue: "LoRA … only if projector-only
training cannot reach usable quality — measure both").

Stage 1 builds the *base* LVLM. When the projector alone cannot teach a frozen 135M LM to answer about
images, low-rank adapters (peft's ``LoraModel``) on SmolLM2's linear layers train together with the
projector. At load time the adapters are **merged** into the LM's weights
(``W ← W + (α/r)·B·A``, peft's ``merge_and_unload``), so LLaVA-mini stays a plain
``LlavaForConditionalGeneration`` with ordinary ``nn.Linear`` layers, which PLVM then keeps frozen like
any other base model.

File format (``lm_lora.safetensors``): peft's adapter state dict (keys
``layers.N.self_attn.q_proj.lora_A.weight`` … without the adapter name) and metadata
``{"plvm": "llava-mini lm lora", "r", "lora_alpha", "target_modules"}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import LoraConfig, LoraModel, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import save_file
from transformers import LlavaForConditionalGeneration

from plvm.validation import WeightFileError, read_weights

LORA_KEY = "lm_lora."
"""Prefix of the LoRA tensors in a stage-1 training checkpoint (``trainable.safetensors``)."""

LORA_KIND = "llava-mini lm lora"
ADAPTER = "default"
LORA_FILE = (
    "a LLaVA-mini LM LoRA file (safetensors with *.lora_A.weight / *.lora_B.weight tensors and "
    "r, lora_alpha, target_modules metadata, as plvm export writes)"
)


@dataclass(frozen=True)
class MiniLoraConfig:
    """Rank, scale and target layers of the stage-1 LM adapters (all of a Llama block's linears)."""

    r: int = 16
    lora_alpha: int = 32
    target_modules: tuple[str, ...] = field(
        default=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    )

    def peft(self) -> LoraConfig:
        return LoraConfig(
            r=self.r,
            lora_alpha=self.lora_alpha,
            target_modules=list(self.target_modules),
            lora_dropout=0.0,
            bias="none",
        )

    def metadata(self) -> dict[str, str]:
        return {
            "plvm": LORA_KIND,
            "r": str(self.r),
            "lora_alpha": str(self.lora_alpha),
            "target_modules": json.dumps(list(self.target_modules)),
        }

    @classmethod
    def from_metadata(cls, meta: dict[str, str]) -> MiniLoraConfig:
        if meta.get("plvm") != LORA_KIND:
            raise ValueError(f"not a LLaVA-mini LoRA file (metadata plvm={meta.get('plvm')!r})")
        return cls(int(meta["r"]), int(meta["lora_alpha"]), tuple(json.loads(meta["target_modules"])))


def add_lora(model: LlavaForConditionalGeneration, config: MiniLoraConfig) -> LoraModel:
    """Inject trainable adapters into ``model.model.language_model`` in place (B = 0: output unchanged).

    Returns peft's tuner; its ``lora_*`` parameters are the only ones with ``requires_grad``
    among the language model's.
    """
    return LoraModel(model.model.language_model, config.peft(), ADAPTER)


def lora_state_dict(tuner: LoraModel) -> dict[str, torch.Tensor]:
    """The adapter tensors (``lora_A``: ``[r, d_in]``, ``lora_B``: ``[d_out, r]`` per target layer)."""
    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(tuner, adapter_name=ADAPTER).items()}


def load_lora_state_dict(tuner: LoraModel, state: dict[str, torch.Tensor]) -> None:
    result = set_peft_model_state_dict(tuner, state, adapter_name=ADAPTER)
    missing = [k for k in result.missing_keys if "lora_" in k]
    if missing or result.unexpected_keys:
        raise ValueError(f"LoRA state does not fit: missing {missing[:3]}…, unexpected {result.unexpected_keys[:3]}…")


def lora_config_from_metadata(path: str | Path, meta: dict[str, str]) -> MiniLoraConfig:
    """:meth:`MiniLoraConfig.from_metadata`, refused with a one-line :class:`~plvm.validation.WeightFileError`
    naming ``path`` (the LoRA file, or the state.json recording the configuration) when malformed."""
    if meta.get("plvm") != LORA_KIND:
        raise WeightFileError(
            f"{path} is not a LLaVA-mini LoRA (metadata plvm={meta.get('plvm')!r}, expected "
            f"{LORA_KIND!r}); expected {LORA_FILE}"
        )
    try:
        config = MiniLoraConfig.from_metadata(meta)
        modules = config.target_modules
        valid = (
            config.r > 0
            and config.lora_alpha > 0
            and modules
            and all(isinstance(m, str) and m.isidentifier() for m in modules)
        )
    except (KeyError, TypeError, ValueError) as exc:  # a missing key, int('x'), target_modules not JSON
        raise WeightFileError(
            f"{path} has malformed LoRA metadata ({type(exc).__name__}: {exc}); expected "
            "r and lora_alpha (positive whole numbers) and target_modules (a JSON list of names)"
        ) from None
    if not valid:
        raise WeightFileError(
            f"{path} has invalid LoRA metadata (r={config.r}, lora_alpha={config.lora_alpha}, "
            f"target_modules={list(modules)}); expected positive r and lora_alpha and module names"
        )
    return config


def check_lora_tensors(
    path: str | Path, tensors: dict[str, torch.Tensor], config: MiniLoraConfig, prefix: str = ""
) -> None:
    """Every tensor a 2-D ``…<target>.lora_A.weight`` ``[r, d_in]`` or ``…<target>.lora_B.weight`` ``[d_out, r]``
    of a target module, each A with its B (``prefix``: how the names are written in ``path``, for messages)."""
    problems: list[str] = []
    pairs: dict[str, set[str]] = {}
    for key, tensor in tensors.items():
        stem, _, part = key.rpartition(".lora_")
        module = stem.rsplit(".", 1)[-1]
        if part not in ("A.weight", "B.weight") or module not in config.target_modules:
            problems.append(f"{prefix}{key} is not a LoRA tensor of {'/'.join(config.target_modules)}")
            continue
        pairs.setdefault(stem, set()).add(part[0])
        rank_dim = 0 if part[0] == "A" else 1
        if tensor.dim() != 2 or tensor.shape[rank_dim] != config.r:
            want = f"[{config.r}, d_in]" if part[0] == "A" else f"[d_out, {config.r}]"
            problems.append(f"{prefix}{key} has shape {tuple(tensor.shape)}, rank r={config.r} needs {want}")
    problems += [
        f"{prefix}{stem}.lora_{'AB'[sides == {'A'}]}.weight is missing"
        for stem, sides in pairs.items()
        if sides != {"A", "B"}
    ]
    if problems:
        more = f"; and {len(problems) - 4} more" if len(problems) > 4 else ""
        raise WeightFileError(
            f"LoRA tensors of {path} do not fit their configuration: " + "; ".join(problems[:4]) + more
        )


def save_lora(
    tensors: dict[str, torch.Tensor], config: MiniLoraConfig, path: str | Path, metadata: dict[str, str] | None = None
) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(
        {k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata={**config.metadata(), **(metadata or {})}
    )
    tmp.replace(path)
    return path


def read_lora(path: str | Path) -> tuple[dict[str, torch.Tensor], MiniLoraConfig]:
    """Tensors and configuration of a LoRA file, checked (:func:`plvm.validation.read_weights`: safetensors,
    finite floating-point tensors; the metadata; :func:`check_lora_tensors`); raises a one-line
    :class:`~plvm.validation.WeightFileError`."""
    path = Path(path)
    tensors, metadata = read_weights(path, LORA_FILE)
    config = lora_config_from_metadata(path, metadata)
    check_lora_tensors(path, tensors, config)
    return tensors, config


def merge_lora(model: LlavaForConditionalGeneration, path: str | Path) -> MiniLoraConfig:
    """Merge a saved adapter into ``model``'s language model in place; the result has plain linears."""
    tensors, config = read_lora(path)
    tuner = add_lora(model, config)
    try:
        load_lora_state_dict(tuner, tensors)
    except (RuntimeError, ValueError) as exc:  # names or shapes of another LM (torch: "size mismatch for …")
        detail = " ".join(str(exc).split())
        raise WeightFileError(
            f"LoRA file {path} does not fit this language model: "
            f"{detail[:300] + '...' if len(detail) > 300 else detail}"
        ) from None
    with torch.no_grad():
        model.model.language_model = tuner.merge_and_unload()
    return config
