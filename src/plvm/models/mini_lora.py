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
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import LlavaForConditionalGeneration

LORA_KIND = "llava-mini lm lora"
ADAPTER = "default"


@dataclass(frozen=True)
class MiniLoraConfig:
    """Rank, scale and target layers of the stage-1 LM adapters (all of a Llama block's linears)."""

    r: int = 16
    lora_alpha: int = 32
    target_modules: tuple[str, ...] = field(
        default=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    )

    def peft(self) -> LoraConfig:
        return LoraConfig(r=self.r, lora_alpha=self.lora_alpha, target_modules=list(self.target_modules),
                          lora_dropout=0.0, bias="none")

    def metadata(self) -> dict[str, str]:
        return {"plvm": LORA_KIND, "r": str(self.r), "lora_alpha": str(self.lora_alpha),
                "target_modules": json.dumps(list(self.target_modules))}

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


def save_lora(tensors: dict[str, torch.Tensor], config: MiniLoraConfig, path: str | Path,
              metadata: dict[str, str] | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp),
              metadata={**config.metadata(), **(metadata or {})})
    tmp.replace(path)
    return path


def read_lora(path: str | Path) -> tuple[dict[str, torch.Tensor], MiniLoraConfig]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LoRA file not found: {path}")
    with safe_open(str(path), framework="pt") as handle:
        config = MiniLoraConfig.from_metadata(dict(handle.metadata() or {}))
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    return tensors, config


def merge_lora(model: LlavaForConditionalGeneration, path: str | Path) -> MiniLoraConfig:
    """Merge a saved adapter into ``model``'s language model in place; the result has plain linears."""
    tensors, config = read_lora(path)
    tuner = add_lora(model, config)
    load_lora_state_dict(tuner, tensors)
    with torch.no_grad():
        model.model.language_model = tuner.merge_and_unload()
    return config
